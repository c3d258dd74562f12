#!/usr/bin/env bash
# The whole test suite: on the real PostgreSQL and Redis, then the model/sync part on SQLite
# (the embedded default). Called by `make test` and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/services.sh
bash scripts/browser.sh

export DJANGO_SETTINGS_MODULE=imdsweb.settings
PY=.venv/bin/python

echo "== lint"
.venv/bin/ruff check .

echo "== migrations match the models"
$PY manage.py makemigrations --check --dry-run >/dev/null
$PY manage.py collectstatic --noinput -v 0

echo "== test suite on PostgreSQL"
DATABASE_URL=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/imdsweb} \
    $PY -m pytest -q -p no:cacheprovider "$@"

echo "== models and sync on SQLite"
DATABASE_URL=sqlite:///var/test-sqlite.sqlite3 \
    $PY -m pytest -q -p no:cacheprovider fleet/tests/test_sync.py fleet/tests/test_models.py fleet/tests/test_commands.py
