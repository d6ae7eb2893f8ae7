# peercam in a container. Build from the repository root (the build context):
#   docker build -t peercam .
# Run with the camera passed through and WebRTC on the host's addresses (docs/deploy.md):
#   docker run --rm --network host --device /dev/video0 \
#     --group-add "$(getent group video | cut -d: -f3)" -e PEERCAM_TOKEN=… peercam
# tests/test_deploy_units.py checks this file without a Docker daemon.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    XDG_STATE_HOME=/var/lib

WORKDIR /opt/peercam
COPY pyproject.toml README.md server.py ./
COPY webrtc/ webrtc/
COPY signaling/ signaling/
COPY static/ static/
# Editable: the page (static/) is served from beside the packages, as in a checkout.
RUN pip install -e . \
 && useradd --system --uid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin peercam \
 && install -d -o peercam -g peercam /var/lib/peercam

# Not root: the camera is reached through the host's video group (--group-add).
USER peercam
EXPOSE 9000/tcp
ENTRYPOINT ["peercam"]
CMD ["--source", "auto", "--port", "9000"]
