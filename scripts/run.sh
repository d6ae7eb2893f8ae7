#!/usr/bin/env bash
# Install peercam into .venv (first run only) and start it. Flags go to the server:
#   scripts/run.sh --source /dev/video74 --host 0.0.0.0
source "$(dirname "$0")/bootstrap.sh"
ensure_venv
exec "$VENV/bin/peercam" "$@"
