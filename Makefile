# The two commands of the quick start:  make demo  and  make test.
# Everything else (virtualenv, packages, services, browser) is set up by the targets themselves.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint schema bench bench-quick clean

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

# The API's OpenAPI schema, committed: the test suite fails when the API changes without it.
schema: $(VENV)/.installed
	DJANGO_SETTINGS_MODULE=imdsweb.settings $(PY) manage.py spectacular --validate --fail-on-warn --file docs/api/openapi.yaml

bench: $(VENV)/.installed
	bash scripts/bench.sh

bench-quick: $(VENV)/.installed
	bash scripts/bench.sh --quick

clean:
	rm -rf var $(VENV)
