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

echo "== SQLite =="
env -u DATABASE_URL .venv/bin/pytest "$@"

pg="${TB_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
if [ "$pg" = "skip" ] && [ -z "${CI:-}" ]; then
    echo "== PostgreSQL skipped (TB_TEST_POSTGRES_URL=skip) =="
    exit 0
fi
echo "== PostgreSQL =="
DATABASE_URL="$pg" .venv/bin/pytest "$@"
