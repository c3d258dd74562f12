# The two commands of the quick start:  make demo  and  make test.
# Everything else (virtualenv, packages, services, browser) is set up by the targets themselves.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint bench bench-quick clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(PY) scripts/demo.py

test: $(VENV)/.installed
	bash scripts/test.sh

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

bench: $(VENV)/.installed
	bash scripts/bench.sh

bench-quick: $(VENV)/.installed
	bash scripts/bench.sh --quick

clean:
	rm -rf var $(VENV)
