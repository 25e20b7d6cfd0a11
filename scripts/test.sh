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
    metering/providers metering/proxy metering/body.py metering/price_catalog.py \
    metering/upstream.py

# With no pytest arguments, the date-sensitive tests (marker `clock`) run again on each
# database, each test starting at a hard instant in a zone far from UTC: the first minute of a
# month, the last minute of a 30-day month, New Year, a leap day, and the last day of a fiscal
# year that starts in April.
INSTANTS=(
    "2026-12-01T00:00:30 Pacific/Auckland 1"
    "2027-04-30T23:59:00 America/Los_Angeles 1"
    "2027-01-01T00:05:00 Asia/Kolkata 1"
    "2028-02-29T12:00:00 Europe/Berlin 1"
    "2027-03-31T23:30:00 America/New_York 4"
)
# clock_passes FIRST LAST: the instants FIRST..LAST (1-based) on the database of DATABASE_URL.
clock_passes() {
    local instant zone fiscal i db=SQLite
    if [ -n "${DATABASE_URL:-}" ]; then db=PostgreSQL; fi
    for ((i = $1; i <= $2; i++)); do
        read -r instant zone fiscal <<<"${INSTANTS[i - 1]}"
        echo "== Clock $instant $zone (fiscal year from month $fiscal) on $db =="
        TB_TEST_CLOCK="$instant" TB_TIME_ZONE="$zone" TB_FISCAL_YEAR_START_MONTH="$fiscal" \
            .venv/bin/pytest -m clock -q -p no:cacheprovider || return 1
    done
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
    if [ "$#" -eq 0 ] && [ "$side_by_side" = 1 ]; then
        # The tests that measure latency under load (marker `alone`) wait for both lanes.
        .venv/bin/pytest -p no:cacheprovider -m "not alone" || return 1
    else
        .venv/bin/pytest -p no:cacheprovider "$@" || return 1
    fi
    if [ "$#" -eq 0 ]; then
        if [ "$side_by_side" = 0 ]; then
            clock_passes 1 5 || return 1
        elif [ "$name" = SQLite ]; then
            # The PostgreSQL lane is the longer one: this lane takes two of its clock passes.
            clock_passes 1 5 || return 1
            (export DATABASE_URL="$pg"; clock_passes 4 5) || return 1
        else
            clock_passes 1 3 || return 1
        fi
    fi
}
alone_tests() {
    echo "== $1: the tests that measure latency (marker alone), one lane at a time =="
    .venv/bin/pytest -p no:cacheprovider -m alone -q || return 1
}
sqlite_lane() { unset DATABASE_URL; lane SQLite 2 "$@"; }
postgres_lane() { export DATABASE_URL="$pg"; lane PostgreSQL 12 "$@"; }

pg="${TB_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
side_by_side=0
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
side_by_side=1
(sqlite_lane "$@") 2>&1 | sed -u 's/^/[sqlite] /' &
sqlite_pid=$!
status=0
(postgres_lane "$@") 2>&1 | sed -u 's/^/[postgres] /' || status=1
wait "$sqlite_pid" || status=1
if [ "$status" -ne 0 ]; then
    echo "== A lane failed =="
    exit 1
fi
if [ "$#" -eq 0 ]; then
    (unset DATABASE_URL; alone_tests SQLite)
    (export DATABASE_URL="$pg"; alone_tests PostgreSQL)
fi
echo "== Both lanes passed =="
