from nexus_lab.bench import main_for

if __name__ == "__main__":
    main_for("deployment")
