"""Bundled demo workloads (YAML package data), read with ``nexus_lab.demo.workload_path(name)``.

Data only: no code depends on anything here except through that path.
"""
