#!/usr/bin/env bash
# The whole test suite: on the real PostgreSQL and Redis, then the model/sync part on SQLite
# (the embedded default). Called by `make test` and by .ci/run.
#
# --fast (make test-fast): the unit tier only, the same checks without the tests marked slow
# (those start a live stack, a browser or a clean clone). Other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

TIER=() LABEL=""
if [ "${1:-}" = "--fast" ]; then
    shift
    TIER=(-m "not slow") LABEL=" (unit tier: not slow)"
fi

bash scripts/services.sh
if [ -z "$LABEL" ]; then bash scripts/browser.sh; fi
bash scripts/oidc.sh  # the test identity provider (npm, pinned)

export DJANGO_SETTINGS_MODULE=imdsweb.settings
PY=.venv/bin/python
mkdir -p var

echo "== lint"
.venv/bin/ruff check .

echo "== migrations match the models"
$PY manage.py makemigrations --check --dry-run >/dev/null
$PY manage.py collectstatic --noinput -v 0

echo "== the API's OpenAPI schema matches the committed docs/api/openapi.yaml"
$PY manage.py spectacular --validate --fail-on-warn --file var/openapi.yaml
diff -u docs/api/openapi.yaml var/openapi.yaml || {
    echo "The API changed: run 'make schema' and commit docs/api/openapi.yaml"; exit 1; }

echo "== test suite on PostgreSQL$LABEL"
DATABASE_URL=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/imdsweb} \
    $PY -m pytest -q -p no:cacheprovider ${TIER[@]+"${TIER[@]}"} "$@"

echo "== models, sync, commands, posture and the change service on SQLite (the embedded default)$LABEL"
rm -f var/test-sqlite.sqlite3
DATABASE_URL=sqlite:///var/test-sqlite.sqlite3 \
    $PY -m pytest -q -p no:cacheprovider ${TIER[@]+"${TIER[@]}"} fleet/tests/test_sync.py fleet/tests/test_models.py \
    fleet/tests/test_commands.py fleet/tests/test_posture.py fleet/tests/test_views_changes.py \
    fleet/tests/test_views_overview.py fleet/tests/test_apply_pacing.py fleet/tests/test_instance_pages.py \
    fleet/tests/test_fail_closed.py fleet/tests/test_history.py fleet/tests/test_notifications.py \
    fleet/tests/test_sources_sync.py fleet/tests/test_source_changes.py fleet/tests/test_managed_owner.py \
    fleet/tests/test_waivers.py \
    fleet/tests/test_rollout.py \
    fleet/tests/test_expansion.py
