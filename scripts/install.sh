#!/usr/bin/env bash
# Install everything ipsec_nflog needs on Debian/Ubuntu (as root): system packages, a
# virtualenv in .venv, and the package built in place with its compiled core.
set -euo pipefail
. "$(dirname "$0")/_root.sh"
cd "$(dirname "$0")/.."

pkgs=$(grep -v '^\s*#' scripts/apt-packages.txt | grep -v '^\s*$' | tr '\n' ' ')
export DEBIAN_FRONTEND=noninteractive
# tshark asks whether non-root users may capture; answer it up front.
echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
stamp=/var/lib/apt/periodic/ipsec-nflog-update
if [ -z "$(find "$stamp" -mmin -360 2>/dev/null)" ]; then
  apt-get update -q
  mkdir -p "$(dirname "$stamp")" && touch "$stamp"
fi
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $pkgs >/dev/null

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
.venv/bin/python -c 'import ipsec_nflog, sys; print("ipsec_nflog", ipsec_nflog.__version__, "installed in", sys.prefix)'
