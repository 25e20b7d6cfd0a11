#!/usr/bin/env bash
# Create .venv with Python >= 3.12 and install Tokenbudget with its test tools.
# Usage: scripts/setup.sh [extra ...]   (extras from pyproject.toml, e.g. "test")
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
    for candidate in "${TB_PYTHON:-}" python3.13 python3.12 python3 \
        "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.13*/bin/python3 \
        "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

if [ ! -x .venv/bin/python ]; then
    python=$(find_python) || { echo "Tokenbudget needs Python 3.12 or newer (set TB_PYTHON)." >&2; exit 1; }
    echo "Creating .venv with $python"
    "$python" -m venv .venv
fi

extras="${1:-}"
spec="."
[ -n "$extras" ] && spec=".[$extras]"
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)-${extras:-base}"
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$spec"
    touch "$stamp"
fi
# The identity browser tests' OIDC provider (npm, pinned, into a git-ignored node_modules).
case ",$extras," in *,test,*) scripts/install-identity.sh ;; esac
# Test mode: the real client CLIs the tests/clients suite drives (pinned, project-local).
if [ "$extras" = "test" ]; then
    scripts/install-clients.sh
fi
