#!/usr/bin/env bash
# Install everything, then run a real capture demo in throwaway network namespaces.
set -euo pipefail
. "$(dirname "$0")/_root.sh"
cd "$(dirname "$0")/.."
scripts/install.sh
exec .venv/bin/ipsec-nflog demo "$@"
