#!/usr/bin/env bash
# Install the real coding-agent CLIs the client tests (tests/clients) drive, at pinned versions,
# into the project-local .clients/node_modules (ignored by git). Idempotent: a matching install is kept.
# The tests run them with no network and telemetry off; only this install step reaches the npm registry.
set -euo pipefail
cd "$(dirname "$0")/.."

CLAUDE_CODE_VERSION="2.1.332"
CODEX_VERSION="0.171.0"
GEMINI_CLI_VERSION="0.61.0"

if ! command -v npm >/dev/null 2>&1; then
    echo "npm is missing: the client tests that drive the Claude Code, Codex and Gemini CLIs will be skipped." >&2
    exit 0
fi
prefix=".clients"
stamp="$prefix/.installed-claude-code-$CLAUDE_CODE_VERSION-codex-$CODEX_VERSION-gemini-cli-$GEMINI_CLI_VERSION"
if [ -f "$stamp" ]; then
    exit 0
fi
mkdir -p "$prefix"
npm install --prefix "$prefix" --no-save --no-audit --no-fund --loglevel=error \
    "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION" "@openai/codex@$CODEX_VERSION" \
    "@google/gemini-cli@$GEMINI_CLI_VERSION"
touch "$stamp"
