#!/usr/bin/env bash
# Install everything, then run the whole test suite (lint, types, unit, privileged).
set -euo pipefail
. "$(dirname "$0")/_root.sh"
cd "$(dirname "$0")/.."
scripts/install.sh
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff"; ruff check
echo "== mypy"; mypy
echo "== lint-imports"; lint-imports --no-cache --no-logo
echo "== pytest"
exec pytest "$@"
