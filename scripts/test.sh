#!/usr/bin/env bash
# Install what the tests need (Debian's chromium, firefox-esr, WebKitGTK's driver, coturn, nginx,
# caddy and systemd (systemd-analyze), the test extra in .venv, puppeteer-core for the Firefox tests and the WHEP players),
# then lint, type-check and run the whole suite, inside a loopback-only network namespace when
# the machine allows it.
# Arguments go to pytest:  scripts/test.sh -k browser
source "$(dirname "$0")/bootstrap.sh"
cd "$ROOT"

apt_install chromium coturn nftables nginx caddy firefox-esr webkit2gtk-driver xvfb
# The RTSP camera of the pass-through tests (tests/rtsp_server.py, run by the system python3).
apt_install python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 gir1.2-gst-rtsp-server-1.0 \
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly
# systemd-analyze, for the unit's check (tests/test_deploy_units.py).
apt_install systemd
ensure_venv test
npm_install "$ROOT/tests/whep"  # the WHEP players (whip-whep, Eyevinn's), bundled by the test
npm_install "$ROOT/tests/firefox"  # puppeteer-core

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
