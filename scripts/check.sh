#!/usr/bin/env bash
# The contributor's loop, as a normal user in well under a minute: ruff, mypy (package and
# tests), the import contracts and every unprivileged test. Needs only the Python packages
# of requirements-dev.txt: no root, no apt, no compiled core (the tests that need it skip;
# they run in scripts/test.sh). Extra arguments go to pytest: scripts/check.sh -x -k summary
set -euo pipefail
cd "$(dirname "$0")/.."
# The tools of the active virtualenv, else of ./.venv; the package from this tree, unbuilt.
if [ -z "${VIRTUAL_ENV:-}" ] && [ -x .venv/bin/python ]; then
  export PATH="$PWD/.venv/bin:$PATH"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
for tool in ruff mypy lint-imports pytest; do
  if ! command -v "$tool" >/dev/null; then
    echo "check.sh: no '$tool'; set up with: python3 -m venv .venv &&" \
         ".venv/bin/pip install -r requirements-dev.txt" >&2
    exit 1
  fi
done
echo "== ruff"; ruff check
echo "== mypy"; mypy
echo "== lint-imports"; lint-imports --no-cache --no-logo
echo "== pytest (unprivileged)"
exec pytest -q -m "not privileged and not kernel and not strongswan" "$@"
