#!/usr/bin/env bash
# Set up and run Tokenbudget on the embedded default: SQLite, no Redis, jobs in-process,
# the built-in mock LLM upstream (unless a provider key is configured) and demo data.
# Install and seeding output goes to var/run.log (shown only if a step fails), demo e-mails to
# the file outbox var/outbox/, and the last lines printed say where to go and how to sign in.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p var
log=var/run.log
: >"$log"

quietly() {  # run a step with its output in the log; on failure show the log and stop
    if ! "$@" >>"$log" 2>&1; then
        echo "Failed: $*  (output below, also in $log)" >&2
        cat "$log" >&2
        exit 1
    fi
}

echo "Installing and seeding demo data (log: $log) ..."
quietly scripts/setup.sh
py=.venv/bin/python

# Demo mail (alerts, statements, approvals) goes to files a person can open, not the console.
if [ -z "${TB_EMAIL_BACKEND:-}" ]; then
    export TB_EMAIL_BACKEND=django.core.mail.backends.filebased.EmailBackend
    export TB_EMAIL_FILE_PATH="${TB_EMAIL_FILE_PATH:-$PWD/var/outbox}"
fi
# One demo password kept across runs, so the sign-in line below stays true.
if [ -z "${TB_DEMO_PASSWORD:-}" ]; then
    [ -s var/demo-password ] || $py -c 'import secrets; print(secrets.token_urlsafe(9))' >var/demo-password
    TB_DEMO_PASSWORD=$(cat var/demo-password)
    export TB_DEMO_PASSWORD
fi

quietly $py manage.py migrate --noinput -v 0
quietly $py manage.py collectstatic --noinput -v 0
quietly $py manage.py seed_demo_history  # seed_demo plus months of usage and closed months

host="${TB_HOST:-127.0.0.1}"
port="${TB_PORT:-8000}"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

notes=()
if [ -z "${OPENAI_API_KEY:-}" ] && [ -z "${ANTHROPIC_API_KEY:-}" ]; then
    mock_port="${TB_MOCK_UPSTREAM_URL:-http://127.0.0.1:8001}"
    mock_port="${mock_port##*:}"
    $py manage.py mock_upstream --host 127.0.0.1 --port "${mock_port%%/*}" >>"$log" 2>&1 &
    pids+=($!)
    notes+=("Mock LLM upstream on 127.0.0.1:${mock_port%%/*} (no provider key configured)")
fi

if [ -z "${CELERY_BROKER_URL:-}${REDIS_URL:-}" ]; then
    # No broker: the periodic jobs (rollups, month close, alerts, sweeps) run in-process.
    $py manage.py run_jobs >>"$log" 2>&1 &
    pids+=($!)
fi

.venv/bin/uvicorn config.asgi:application --host "$host" --port "$port" \
    --workers "${TB_WORKERS:-1}" --no-access-log --log-level warning &
pids+=($!)

# Wait for the server to answer, so the sign-in lines are the last thing on the screen.
for _ in $(seq 1 100); do
    $py -c "import socket,sys; socket.create_connection(('$host', $port), 0.2)" 2>/dev/null && break
    sleep 0.2
done

key_line=$(grep -h "Demo API key" "$log" || true)
for note in "${notes[@]}"; do echo "$note"; done
[ -n "$key_line" ] && echo "$key_line"
[ "${TB_EMAIL_BACKEND}" = django.core.mail.backends.filebased.EmailBackend ] &&
    echo "Demo e-mails: ${TB_EMAIL_FILE_PATH}"
echo
echo "Tokenbudget is running: open http://$host:$port/"
echo "Sign in with password ${TB_DEMO_PASSWORD} as one of:"
echo "  admin  (administrator)   grace  (manager, Engineering)   frank  (finance)"
echo "  ada, alan, mary  (employees)"
echo "API docs: http://$host:$port/api/docs/   proxy: http://$host:$port/v1/   Ctrl-C stops."
wait -n
