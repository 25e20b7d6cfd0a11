#!/usr/bin/env bash
# Set up and run the whole test suite: once on SQLite, once on PostgreSQL.
# PostgreSQL: TB_TEST_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/test);
# set TB_TEST_POSTGRES_URL=skip to run on SQLite only (never under CI).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
scripts/install-browser.sh
export TB_REDIS_TEST_URL="${TB_REDIS_TEST_URL:-redis://127.0.0.1:6379/9}"

.venv/bin/ruff check .
.venv/bin/ruff format --check .
# Type checks (django-stubs, djangorestframework-stubs; config in pyproject.toml) on the packages
# typed so far.
.venv/bin/mypy billing budgets/selectors.py budgets/cost_center_pages.py budgets/employee_pages.py \
    budgets/onboarding.py config/celery.py config/management identity \
    metering/apis.py metering/catalog_services.py metering/quota metering/selectors.py \
    metering/serializers.py metering/services.py metering/deployments.py \
    metering/providers metering/proxy metering/body.py

echo "== SQLite =="
env -u DATABASE_URL .venv/bin/pytest "$@"

# With no pytest arguments: the date-sensitive tests (marker `clock`) again, each test starting
# at a hard instant in a zone far from UTC: the first minute of a month, the last minute of a
# 30-day month, New Year, a leap day, and the last day of a fiscal year that starts in April.
clock_pass() {
    local instant="$1" zone="$2" fiscal="$3"; shift 3
    echo "== Clock $instant $zone (fiscal year from month $fiscal) =="
    TB_TEST_CLOCK="$instant" TB_TIME_ZONE="$zone" TB_FISCAL_YEAR_START_MONTH="$fiscal" \
        "$@" .venv/bin/pytest -m clock -q
}
clock_passes() {
    clock_pass 2026-12-01T00:00:30 Pacific/Auckland 1 "$@"
    clock_pass 2027-04-30T23:59:00 America/Los_Angeles 1 "$@"
    clock_pass 2027-01-01T00:05:00 Asia/Kolkata 1 "$@"
    clock_pass 2028-02-29T12:00:00 Europe/Berlin 1 "$@"
    clock_pass 2027-03-31T23:30:00 America/New_York 4 "$@"
}
if [ "$#" -eq 0 ]; then
    clock_passes env -u DATABASE_URL
fi

pg="${TB_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
if [ "$pg" = "skip" ] && [ -z "${CI:-}" ]; then
    echo "== PostgreSQL skipped (TB_TEST_POSTGRES_URL=skip) =="
    exit 0
fi
echo "== PostgreSQL =="
DATABASE_URL="$pg" .venv/bin/pytest "$@"
if [ "$#" -eq 0 ]; then
    clock_passes env DATABASE_URL="$pg"
fi
