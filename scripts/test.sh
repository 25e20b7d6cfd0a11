#!/usr/bin/env bash
# Set up and run the whole test suite: on SQLite and on PostgreSQL, the two side by side.
# PostgreSQL: TB_TEST_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/test);
# set TB_TEST_POSTGRES_URL=skip to run on SQLite only (never under CI).
# TB_TEST_LANES=serial runs the PostgreSQL lane after the SQLite one instead of beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
scripts/install-browser.sh
export PYTHONUNBUFFERED=1

.venv/bin/ruff check .
.venv/bin/ruff format --check .
# Type checks (django-stubs, djangorestframework-stubs; config in pyproject.toml) on the packages
# typed so far.
.venv/bin/mypy billing budgets/selectors.py budgets/cost_center_pages.py budgets/employee_pages.py \
    budgets/onboarding.py config/celery.py config/management identity \
    metering/apis.py metering/catalog_services.py metering/quota metering/selectors.py \
    metering/serializers.py metering/services.py metering/deployments.py \
    metering/providers metering/proxy metering/body.py

# With no pytest arguments, each lane runs the date-sensitive tests (marker `clock`) again, each
# test starting at a hard instant in a zone far from UTC: the first minute of a month, the last
# minute of a 30-day month, New Year, a leap day, and the last day of a fiscal year that starts
# in April.
clock_passes() {
    local instant zone fiscal
    while read -r instant zone fiscal; do
        echo "== Clock $instant $zone (fiscal year from month $fiscal) =="
        TB_TEST_CLOCK="$instant" TB_TIME_ZONE="$zone" TB_FISCAL_YEAR_START_MONTH="$fiscal" \
            .venv/bin/pytest -m clock -q -p no:cacheprovider || return 1
    done <<'INSTANTS'
2026-12-01T00:00:30 Pacific/Auckland 1
2027-04-30T23:59:00 America/Los_Angeles 1
2027-01-01T00:05:00 Asia/Kolkata 1
2028-02-29T12:00:00 Europe/Berlin 1
2027-03-31T23:30:00 America/New_York 4
INSTANTS
}

# A lane: the whole suite on one database, then (with no pytest arguments) its clock passes.
# Each lane has its own three Redis databases on the shared server (TB_REDIS_TEST_URL: the quota
# tests; TB_TEST_REDIS_BATCH_URL: the usage batch tests; TB_TEST_REDIS_URL: the Celery worker
# tests), its own test database (named by its pid) and its own free ports; the tests that stop
# or restart Redis start their own server. So the two lanes run side by side.
lane() {
    local name="$1" redis_first="$2"; shift 2
    export TB_REDIS_TEST_URL="redis://127.0.0.1:6379/$redis_first"
    export TB_TEST_REDIS_BATCH_URL="redis://127.0.0.1:6379/$((redis_first + 1))"
    export TB_TEST_REDIS_URL="redis://127.0.0.1:6379/$((redis_first + 2))"
    echo "== $name =="
    .venv/bin/pytest -p no:cacheprovider "$@" || return 1
    if [ "$#" -eq 0 ]; then
        clock_passes || return 1
    fi
}
sqlite_lane() { unset DATABASE_URL; lane SQLite 2 "$@"; }
postgres_lane() { export DATABASE_URL="$pg"; lane PostgreSQL 12 "$@"; }

pg="${TB_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
if [ "$pg" = "skip" ] && [ -z "${CI:-}" ]; then
    sqlite_lane "$@"
    echo "== PostgreSQL skipped (TB_TEST_POSTGRES_URL=skip) =="
    exit 0
fi
if [ "${TB_TEST_LANES:-}" = "serial" ]; then
    sqlite_lane "$@"
    postgres_lane "$@"
    exit 0
fi
# Side by side, each line of output prefixed by its lane; the run fails when either lane fails.
(sqlite_lane "$@") 2>&1 | sed -u 's/^/[sqlite] /' &
sqlite_pid=$!
status=0
(postgres_lane "$@") 2>&1 | sed -u 's/^/[postgres] /' || status=1
wait "$sqlite_pid" || status=1
if [ "$status" -eq 0 ]; then echo "== Both lanes passed =="; else echo "== A lane failed =="; fi
exit "$status"
