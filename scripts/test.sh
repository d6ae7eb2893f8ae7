#!/usr/bin/env bash
# Install what the tests need (Debian's chromium, coturn and nginx, the test extra in .venv), then lint, type-check
# and run the whole suite, inside a loopback-only network namespace when the machine allows it.
# Arguments go to pytest:  scripts/test.sh -k browser
source "$(dirname "$0")/bootstrap.sh"
cd "$ROOT"

apt_install chromium coturn nftables nginx
ensure_venv test

apt_install janus  # the fan-out tests (tests/janus_lab.py)
echo "== ruff"; "$VENV/bin/ruff" check . && "$VENV/bin/ruff" format --check .
echo "== mypy"; "$VENV/bin/mypy"
echo "== pytest"
pytest=("$VENV/bin/python" -m pytest "$@")
# A private network namespace whose only interface is lo: WebRTC, mDNS and the browser's own
# traffic cannot leave 127.0.0.0/8 and ports collide with nothing (see ../shared/TESTING.md).
if unshare -n true 2>/dev/null; then
  exec unshare -n sh -c 'ip link set lo up && exec "$@"' sh "${pytest[@]}"
elif unshare -rn true 2>/dev/null; then
  exec unshare -rn sh -c 'ip link set lo up && exec "$@"' sh "${pytest[@]}"
else
  echo "peercam: no network namespace here; tests still use loopback addresses only" >&2
  exec "${pytest[@]}"
fi
