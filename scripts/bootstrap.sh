# Shared by scripts/run.sh and scripts/test.sh (sourced, not run): a Python >= 3.11 virtual
# environment in .venv with peercam installed in it, plus Debian packages passed as arguments.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${PEERCAM_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "peercam: need root (or sudo) to run: $*" >&2; return 1; fi
}

apt_updated=
apt_install() {  # apt_install PACKAGE... — installs only what is missing
  local missing=()
  for pkg in "$@"; do
    # A command of the package's name counts too: npm comes inside NodeSource's nodejs,
    # whose package conflicts with Debian's npm.
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
      || command -v "$pkg" >/dev/null || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "peercam: installing Debian packages: ${missing[*]}" >&2
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

ensure_venv() {  # ensure_venv [EXTRAS]
  local extras=${1:-}
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "peercam: needs Python >= 3.11 as '$PYTHON' (set PYTHON=...)" >&2; return 1
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
      # Debian and Ubuntu ship venv separately.
      rm -rf "$VENV"
      apt_install "python3-venv"
      "$PYTHON" -m venv "$VENV"
    fi
  fi
  local spec="$ROOT"
  [ -n "$extras" ] && spec="$ROOT[$extras]"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$spec"
}

npm_install() {  # npm_install DIR — DIR's package-lock.json into DIR/node_modules
  apt_install nodejs npm
  if [ ! -f "$1/node_modules/.package-lock.json" ] || [ "$1/package-lock.json" -nt "$1/node_modules/.package-lock.json" ]; then
    (cd "$1" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}
