#!/usr/bin/env bash
# Install everything ipsec_nflog needs on Debian/Ubuntu (as root): system packages, a
# virtualenv in .venv, and the package built in place with its compiled core.
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then
  # Packages, namespaces and NFLOG need root: re-run through sudo where there is one.
  command -v sudo >/dev/null 2>&1 && exec sudo -E "$0" "$@"
  echo "$(basename "$0"): run as root (it installs packages and captures NFLOG)" >&2
  exit 1
fi
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
