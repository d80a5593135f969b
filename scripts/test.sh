#!/usr/bin/env bash
# Install everything, then run the whole test suite (lint, types, unit, privileged).
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then
  # Packages, namespaces and NFLOG need root: re-run through sudo where there is one.
  command -v sudo >/dev/null 2>&1 && exec sudo -E "$0" "$@"
  echo "$(basename "$0"): run as root (it installs packages and captures NFLOG)" >&2
  exit 1
fi
cd "$(dirname "$0")/.."
scripts/install.sh
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff"; ruff check
echo "== mypy"; mypy
echo "== pytest"
exec pytest "$@"
