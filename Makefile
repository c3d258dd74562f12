# The two commands of the quick start:  make demo  and  make test.
# Everything else (virtualenv, packages, services, browser) is set up by the targets themselves.
#
# Installs are reproducible: the exact versions (with their hashes) are in requirements/*.txt,
# written by `make lock` with uv from pyproject.toml and installed by uv (itself pinned, and
# hash-checked by pip, in requirements/tools.txt):
#   requirements/demo.txt  the project and the simulator: make demo (and the Docker image)
#   requirements/dev.txt   that plus the test tools: make test, make test-fast, CI
# After changing the dependencies in pyproject.toml, run `make lock` and commit requirements/.
# `make lock` keeps every pin it can; `make lock LOCK_FLAGS=--upgrade` moves all to the newest.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
# uv installs into the virtualenv made with $(PYTHON) and never downloads an interpreter.
export UV_PYTHON_DOWNLOADS := never
LOCK := $(UV) pip compile --quiet --universal --python-version 3.11 --generate-hashes \
	--custom-compile-command "make lock" $(LOCK_FLAGS)

.PHONY: demo test test-fast lint lock schema bench bench-quick clean

# The virtualenv and the pinned installer (pip checks its hashes).
$(VENV)/.tools: requirements/tools.txt
	@echo "install: a virtualenv in $(VENV) and the pinned installer (requirements/tools.txt)"
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --disable-pip-version-check --progress-bar on --require-hashes --no-deps \
		-r requirements/tools.txt
	touch $@

# What the demo needs: the project and the simulator, added to whatever is there.
$(VENV)/.demo: $(VENV)/.tools requirements/demo.txt pyproject.toml
	@echo "install: the project and the simulator, as requirements/demo.txt pins them (first time: about a minute)"
	$(UV) pip install --python $(PY) --require-hashes -r requirements/demo.txt
	$(UV) pip install --python $(PY) --no-deps --no-build-isolation -e .
	touch $@

# What the tests need: exactly the dev lock (anything else in the virtualenv is removed).
$(VENV)/.installed: $(VENV)/.tools requirements/dev.txt pyproject.toml
	@echo "install: the project and its test tools, exactly as requirements/dev.txt pins them (first time: about a minute)"
	$(UV) pip sync --python $(PY) --require-hashes requirements/dev.txt requirements/tools.txt
	$(UV) pip install --python $(PY) --no-deps --no-build-isolation -e .
	touch $@

demo: $(VENV)/.demo
	$(PY) scripts/demo.py

# The whole suite: lint, migrations, PostgreSQL (unit, live stack, browser, quick start), SQLite.
test: $(VENV)/.installed
	bash scripts/test.sh

# The unit tier: lint and the tests that start no live stack and no browser (not marked slow).
test-fast: $(VENV)/.installed
	bash scripts/test.sh --fast

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

# The API's OpenAPI schema, committed: the test suite fails when the API changes without it.
schema: $(VENV)/.installed
	DJANGO_SETTINGS_MODULE=imdsweb.settings $(PY) manage.py spectacular --validate --fail-on-warn --file docs/api/openapi.yaml

# Re-resolve the locks from pyproject.toml (and requirements/tools.in); the demo's pins are the
# dev lock's, so both install the same version of every package they share.
lock: $(VENV)/.tools
	$(LOCK) requirements/tools.in -o requirements/tools.txt
	$(LOCK) pyproject.toml --extra dev -o requirements/dev.txt
	$(LOCK) pyproject.toml --extra sim --constraint requirements/dev.txt -o requirements/demo.txt

bench: $(VENV)/.installed
	bash scripts/bench.sh

bench-quick: $(VENV)/.installed
	bash scripts/bench.sh --quick

clean:
	rm -rf var $(VENV)
