"""The start-up banner: every URL in the log, and a QR code a phone can scan on a terminal."""

from __future__ import annotations

import io
import logging
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from signaling.announce import announce, phone_url, qr_text

ROOT = Path(__file__).resolve().parent.parent
URL = "http://192.168.1.20:9000/?token=Zm9vYmFyYmF6cXV4cXV1eHF1dXg"
URLS = ["http://127.0.0.1:9000/?token=t", "http://192.168.1.20:9000/?token=t"]


def _decode(text: str) -> str:
    """Scan the drawing as a phone would: pixels from the half blocks, then OpenCV's decoder.
    The drawing is for dark terminals: a full block is a light pixel pair, a space a dark one."""
    lines = text.rstrip("\n").split("\n")
    width = max(map(len, lines))
    rows = []
    for line in lines:
        line = line.ljust(width)
        rows.append([255 if c in "█▀" else 0 for c in line])
        rows.append([255 if c in "█▄" else 0 for c in line])
    modules = np.array(rows, np.uint8).repeat(8, axis=0).repeat(8, axis=1)
    image = cv2.copyMakeBorder(modules, 32, 32, 32, 32, cv2.BORDER_CONSTANT, value=255)
    decoded, _, _ = cv2.QRCodeDetector().detectAndDecode(image)
    return str(decoded)


def test_qr_is_half_blocks_only_and_scans_back_to_the_url() -> None:
    """Colour escapes are lost by many terminals and logs; the drawing must survive them."""
    text = qr_text(URL)
    assert "\x1b" not in text
    assert set(text) <= {"█", "▀", "▄", " ", "\n"}
    lines = text.splitlines()
    assert len({len(line) for line in lines}) == 1  # a rectangle
    assert len(lines) <= 25  # fits a phone-held laptop's terminal: two modules a line
    assert _decode(text) == URL


def test_the_qr_names_a_url_a_phone_can_reach() -> None:
    assert phone_url(URLS) == URLS[1]
    assert phone_url(["https://[::1]:9000/", "https://cam.example.org:9000/"]) == (
        "https://cam.example.org:9000/"
    )
    assert phone_url(URLS[:1]) == URLS[0]  # only loopback (--host 127.0.0.1): still shown
    assert phone_url([]) is None


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_urls_are_logged_and_the_qr_drawn(caplog: pytest.LogCaptureFixture) -> None:
    out = _Terminal()
    with caplog.at_level(logging.INFO, logger="peercam"):
        announce(URLS, "test pattern", out)
    assert [r.getMessage() for r in caplog.records] == [
        f"open {url} to watch test pattern" for url in URLS
    ]
    drawn = out.getvalue()
    qr, last = drawn.rstrip("\n").rsplit("\n", 1)
    assert _decode(qr) == URLS[1]
    assert last == "scan with a phone to open http://192.168.1.20:9000/ (token included)"


def test_not_a_terminal_gets_the_urls_alone(caplog: pytest.LogCaptureFixture) -> None:
    out = io.StringIO()
    with caplog.at_level(logging.INFO, logger="peercam"):
        announce(URLS, "test pattern", out)
    assert out.getvalue() == ""
    assert len(caplog.records) == 2


def test_the_server_draws_the_qr_on_a_real_terminal() -> None:
    """`peercam` on a pty (what an interactive shell gives it) prints the code at start."""
    main, child = pty.openpty()
    command = [sys.executable, str(ROOT / "server.py"), "--source", "test", "--port", "0"]
    process = subprocess.Popen(
        [*command, "--token", "qr-test-token"],
        stdin=subprocess.DEVNULL,
        stdout=child,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    os.close(child)
    seen = b""
    try:
        deadline = time.monotonic() + 60
        while b"scan with a phone" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 1.0)
            if ready:
                try:
                    seen += os.read(main, 65536)
                except OSError:  # the child closed the terminal: it exited
                    break
    finally:
        process.terminate()
        process.wait(timeout=30)
        os.close(main)
    text = seen.decode().replace("\r\n", "\n")
    assert "scan with a phone to open http://" in text, text
    qr = text.split("scan with a phone")[0].strip("\n")
    assert re.fullmatch(r"http://[0-9.]+:[0-9]+/\?token=qr-test-token", _decode(qr)), qr
