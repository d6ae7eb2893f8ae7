"""WebKitGTK (Debian's): a browser without WebRTC falls back to the JPEG canvas by itself.

Debian builds WebKitGTK without WebRTC (no ``RTCPeerConnection``), like the embedded browsers
of many devices: the page must see that, say so, and show moving JPEG pictures on its canvas.
Driven by selenium through Debian's ``WebKitWebDriver`` (package webkit2gtk-driver), which
starts WebKitGTK's MiniBrowser in automation mode on a private Xvfb display (there is no
display here, and WebKitGTK has no headless mode).
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.support.wait import WebDriverWait
from selenium.webdriver.webkitgtk.options import Options
from selenium.webdriver.webkitgtk.service import Service

from tests.browser import TIMEBAR_JS
from tests.conftest import ServerFactory

pytestmark = [
    pytest.mark.browser,
    # selenium 4.51's own WebKitGTK driver passes the address the way it deprecates: not ours.
    pytest.mark.filterwarnings(
        "ignore:setting remote_server_addr in RemoteConnection:DeprecationWarning"
    ),
]

DRIVER = "/usr/bin/WebKitWebDriver"
MINIBROWSER_GLOB = "/usr/lib/*/webkit2gtk-4.*/MiniBrowser"

#: The element's state and what its canvas shows: the capture time decoded from the test
#: pattern's bar (``readTimebar``), so "moving pictures" means pictures of later moments.
STATE_JS = (
    TIMEBAR_JS
    + """
const el = document.querySelector("peercam-view");
if (!el || !el.info) return null;
const canvas = el.shadowRoot.querySelector("canvas");
let captured = null;
if (!canvas.hidden && canvas.width && canvas.height) {
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, 24).data;
  captured = readTimebar(data, canvas.width, 24);
}
return { ...el.info, hasWebRTC: typeof RTCPeerConnection !== "undefined",
         canvas: [canvas.hidden, canvas.width, canvas.height], captured,
         overlay: el.shadowRoot.querySelector(".overlay").textContent };
"""
)


def _minibrowser() -> str:
    found = os.environ.get("PEERCAM_MINIBROWSER") or next(iter(glob.glob(MINIBROWSER_GLOB)), "")
    if not (os.access(DRIVER, os.X_OK) and found and os.access(found, os.X_OK)):
        pytest.fail(
            "WebKitGTK not found: apt-get install --no-install-recommends webkit2gtk-driver "
            "(scripts/test.sh does)",
            pytrace=False,
        )
    return found


@pytest.fixture(scope="module")
def display() -> Iterator[str]:
    """A private Xvfb display (``:N``); Xvfb tells the number once it accepts clients."""
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        pytest.fail("Xvfb not found: apt-get install xvfb (scripts/test.sh does)", False)
    read, write = os.pipe()
    process = subprocess.Popen(
        [xvfb, "-displayfd", str(write), "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
        pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(write)
    try:
        with os.fdopen(read) as ready:
            number = ready.readline().strip()  # blocks until Xvfb is ready (or exits)
        if not number:
            pytest.fail(f"Xvfb did not start (exit {process.wait(10)})", False)
        yield f":{number}"
    finally:
        process.terminate()
        process.wait(10)


def _watch(url: str, display: str, log: Path) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Open ``url`` in WebKitGTK; return the page's state once it shows JPEG pictures, and
    again once 15 more were drawn, with the browser's version."""
    options = Options()
    options.binary_location = _minibrowser()
    options.add_argument("--automation")
    service = Service(
        executable_path=DRIVER, env={**os.environ, "DISPLAY": display}, log_output=str(log)
    )
    driver = webdriver.WebKitGTK(options=options, service=service)
    try:
        driver.get(url)
        wait = WebDriverWait(driver, timeout=30, poll_frequency=0.2)
        first: dict[str, Any] = wait.until(
            lambda d: (s := d.execute_script(STATE_JS)) and s["framesDrawn"] >= 5
            and s["captured"] is not None and s,
            message="no JPEG picture on the canvas",
        )  # fmt: skip
        later: dict[str, Any] = wait.until(
            lambda d: (s := d.execute_script(STATE_JS)) and s["captured"] is not None
            and s["framesDrawn"] >= first["framesDrawn"] + 15 and s,
            message="the pictures stopped",
        )  # fmt: skip
        return first, later, str(driver.capabilities.get("browserVersion"))
    finally:
        driver.quit()


async def test_webkitgtk_without_webrtc_shows_moving_jpeg_pictures(
    make_server: ServerFactory, display: str, tmp_path: Path
) -> None:
    """No RTCPeerConnection: the page goes to JPEG at once, with reason ``no-webrtc`` in the
    overlay, and its canvas shows pictures of later and later moments."""
    server = await make_server()
    url = str(server.make_url("/"))
    first, later, version = await asyncio.to_thread(
        _watch, url, display, tmp_path / "webkitwebdriver.log"
    )
    assert first["hasWebRTC"] is False, "this WebKitGTK has WebRTC: the test proves nothing"
    assert (later["mode"], later["fallbackReason"], later["state"]) == (
        "JPEG", "no-webrtc", "playing",
    ), later  # fmt: skip
    assert "this browser has no WebRTC" in later["overlay"]
    assert later["error"] == ""
    assert later["canvas"] == [False, 640, 480]
    # 15 pictures later at 30 fps: at least a few hundred ms of the source's time.
    assert later["captured"] - first["captured"] >= 200, (first, later)
    assert version
