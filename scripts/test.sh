#!/usr/bin/env bash
# The whole test suite: on the real PostgreSQL and Redis, and the model/sync part on SQLite
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

# The SQLite tier (its own database file) runs beside the PostgreSQL unit tier, which pytest-xdist
# spreads over the cores (each worker on a test database of its own, test_<name>_gw0, _gw1 ...);
# the slow tier (live stacks, browser, quick start: timing assertions) then has the machine alone.
# Arguments (a path, -k ...) run one PostgreSQL pass over what they name, as before.
JOBS=${IMDSWEB_TEST_JOBS:-$(nproc)}
PG_URL=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/imdsweb}
PYTEST=($PY -m pytest -q -p no:cacheprovider)
SQLITE_TESTS=(fleet/tests/test_sync.py fleet/tests/test_models.py
    fleet/tests/test_commands.py fleet/tests/test_posture.py fleet/tests/test_views_changes.py
    fleet/tests/test_views_overview.py fleet/tests/test_apply_pacing.py fleet/tests/test_instance_pages.py
    fleet/tests/test_fail_closed.py fleet/tests/test_history.py fleet/tests/test_notifications.py
    fleet/tests/test_sources_sync.py fleet/tests/test_source_changes.py fleet/tests/test_managed_owner.py
    fleet/tests/test_waivers.py
    fleet/tests/test_rollout.py
    fleet/tests/test_expansion.py fleet/tests/test_schema.py)

if [ $# -gt 0 ]; then
    echo "== test suite on PostgreSQL$LABEL: $*"
    DATABASE_URL=$PG_URL "${PYTEST[@]}" ${TIER[@]+"${TIER[@]}"} "$@"
    exit
fi

echo "== models, sync, commands, posture and the change service on SQLite (the embedded default)$LABEL," \
    "beside the PostgreSQL unit tier; its output follows that tier's"
rm -f var/test-sqlite.sqlite3
DATABASE_URL=sqlite:///var/test-sqlite.sqlite3 \
    "${PYTEST[@]}" ${TIER[@]+"${TIER[@]}"} "${SQLITE_TESTS[@]}" >var/test-sqlite.log 2>&1 &
SQLITE_PID=$!
trap 'kill $SQLITE_PID 2>/dev/null || true' EXIT

echo "== test suite on PostgreSQL: the unit tier (not slow), in $JOBS processes"
unit=0
DATABASE_URL=$PG_URL "${PYTEST[@]}" -m "not slow" -n "$JOBS" --dist loadfile || unit=$?

sqlite=0
wait $SQLITE_PID || sqlite=$?
trap - EXIT
echo "== models, sync, commands, posture and the change service on SQLite (the embedded default)$LABEL"
cat var/test-sqlite.log
if [ $unit -ne 0 ] || [ $sqlite -ne 0 ]; then
    echo "failed: PostgreSQL unit tier exit $unit, SQLite tier exit $sqlite"; exit 1
fi

if [ -z "$LABEL" ]; then
    echo "== test suite on PostgreSQL: the slow tier (live stacks, browser, quick start)"
    DATABASE_URL=$PG_URL "${PYTEST[@]}" -m slow
fi
