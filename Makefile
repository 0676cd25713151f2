# The README's commands. Every target installs what it needs into .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo bench lab lint clean

$(STAMP): pyproject.toml extension/package.json extension/yarn.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch==2.13.0 is a CPU wheel on this machine's disk; a bare "torch" could pull a multi-GB CUDA build.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(VENV)/bin/ruff check .

test: install lint
	# the Nexus panel's TypeScript unit tests (jest); `pip install` above already built the extension with jlpm
	cd extension && ../$(VENV)/bin/jlpm install && ../$(VENV)/bin/jlpm test
	$(PY) -m pytest -q -n 2 -m "not serial" tests
	$(PY) -m pytest -q -m serial tests

demo: install
	$(VENV)/bin/nexus-lab demo

bench: install
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

lab: install
	$(VENV)/bin/jupyter lab notebooks

clean:
	rm -rf $(VENV) build dist .pytest_cache .ruff_cache extension/node_modules extension/lib nexus_lab/labextension
