# Quickstart: `make demo` (the main job) and `make test` (the whole suite). Both create
# .venv from the pinned requirements when it is missing or older than them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.evit_ros_installed
SHARED ?= ../shared

.PHONY: venv test lint demo bench clean

venv: $(STAMP)

$(STAMP): requirements.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -rs test

lint: $(STAMP)
	$(PY) -m pytest -q test/test_flake8.py test/test_pep257.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
