#!/usr/bin/env bash
# Set up and run Tokenbudget on the embedded default: SQLite, no Redis, jobs in-process,
# the built-in mock LLM upstream (unless a provider key is configured) and demo data.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
py=.venv/bin/python
$py manage.py migrate --noinput -v 0
$py manage.py collectstatic --noinput -v 0
$py manage.py seed_demo_history  # seed_demo plus months of usage and closed months

host="${TB_HOST:-127.0.0.1}"
port="${TB_PORT:-8000}"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

if [ -z "${OPENAI_API_KEY:-}" ] && [ -z "${ANTHROPIC_API_KEY:-}" ]; then
    mock_port="${TB_MOCK_UPSTREAM_URL:-http://127.0.0.1:8001}"
    mock_port="${mock_port##*:}"
    $py manage.py mock_upstream --host 127.0.0.1 --port "${mock_port%%/*}" &
    pids+=($!)
    echo "Mock LLM upstream on 127.0.0.1:${mock_port%%/*} (no provider key configured)"
fi

if [ -z "${CELERY_BROKER_URL:-}${REDIS_URL:-}" ]; then
    # No broker: the periodic jobs (rollups, month close, alerts, sweeps) run in-process.
    $py manage.py run_jobs &
    pids+=($!)
fi

echo "Tokenbudget on http://$host:$port  (admin: /admin/, API docs: /api/docs/, proxy: /v1/)"
.venv/bin/uvicorn config.asgi:application --host "$host" --port "$port" \
    --workers "${TB_WORKERS:-1}" --no-access-log --log-level warning &
pids+=($!)
wait -n
