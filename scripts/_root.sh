# Sourced by the entry scripts: packages, namespaces and NFLOG need root, so re-run the
# calling script through sudo where there is one.
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 && exec sudo -E "$0" "$@"
  echo "$(basename "$0"): run as root (it installs packages and captures NFLOG)" >&2
  exit 1
fi
