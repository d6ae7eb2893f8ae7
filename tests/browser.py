"""Headless Chromium for the browser tests: Debian's binary driven by Playwright (docs/TESTING §3).

Never ``playwright install``: the tests use the system Chromium, chosen by ``PEERCAM_CHROMIUM``
(default ``/usr/bin/chromium``). A missing browser fails the tests; it does not skip them, so a
CI image without Chromium cannot pass by testing nothing.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, Playwright, async_playwright
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

DEFAULT_CHROMIUM = "/usr/bin/chromium"

CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Without this Chromium gathers no ICE candidates on loopback.
    "--allow-loopback-in-peer-connection",
    # Without this it hides its host candidates behind mDNS names and never connects.
    "--disable-features=WebRtcHideLocalIpsWithMdns",
)


def chromium_path() -> Path:
    """The Chromium executable to drive; fails the calling test if there is none."""
    path = Path(os.environ.get("PEERCAM_CHROMIUM") or DEFAULT_CHROMIUM)
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"Chromium not found at {path}: install Debian's chromium "
            "(apt-get install --no-install-recommends chromium) or set PEERCAM_CHROMIUM "
            "to a Chromium executable. Do not use `playwright install`.",
            pytrace=False,
        )
    return path


async def launch_chromium(playwright: Playwright) -> Browser:
    """Launch headless Chromium with the flags loopback WebRTC needs."""
    return await playwright.chromium.launch(
        executable_path=chromium_path(), headless=True, args=list(CHROMIUM_ARGS)
    )


#: ``readTimebar(data, width, height)``: the capture-time bar decoder, for page scripts.
TIMEBAR_JS = (Path(__file__).resolve().parent / "timebar.js").read_text()


@pytest.fixture
async def playwright() -> AsyncIterator[Playwright]:
    """Playwright's driver, in the test's event loop."""
    async with async_playwright() as p:
        yield p


@pytest.fixture
async def browser(playwright: Playwright) -> AsyncIterator[Browser]:
    """Headless Chromium with the loopback WebRTC flags; fails (never skips) if it is missing."""
    chromium = await launch_chromium(playwright)
    yield chromium
    await chromium.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_browser() -> AsyncIterator[Browser]:
    """One headless Chromium for a whole module whose tests share the module's event loop
    (a launch costs about a second); function-scoped tests use ``browser``."""
    async with async_playwright() as p:
        chromium = await launch_chromium(p)
        yield chromium
        await chromium.close()


async def wait_for(
    page: Page, predicate: str, *, timeout_s: float, what: str, diagnosis_js: str,
    polling: float | None = None,
) -> Any:  # fmt: skip
    """Wait until the JS function ``predicate`` returns a truthy value, and return that value;
    on timeout, fail with ``what`` and the page's own account (``diagnosis_js``).

    Without ``polling`` the predicate runs in the page every animation frame and must be
    synchronous. With ``polling`` (seconds) it is evaluated from here that often and may be
    async (Playwright's own wait takes a returned promise for a truthy value).
    """
    try:
        if polling is None:
            handle = await page.wait_for_function(predicate, timeout=timeout_s * 1000)
            return await handle.json_value()
        async with asyncio.timeout(timeout_s):
            while True:
                value = await page.evaluate(predicate)
                if value:
                    return value
                await asyncio.sleep(polling)  # polling the page's state: no event exists
    except (PlaywrightTimeoutError, TimeoutError):
        pytest.fail(
            f"not within {timeout_s:g} s: {what}; page: {await page.evaluate(diagnosis_js)}"
        )


#: What ``<peercam-view>`` shows, as one object: its ``info`` (mode, codec, state, error,
#: fallbackReason, framesDrawn…), ``state``, the overlay's text, and from the peer
#: connection's stats ``framesDecoded`` and the codec's ``mimeType``. Async (``getStats``);
#: null before the element exists. Shared by the Playwright tests and tests/firefox/view.mjs.
VIEW_JS = """async () => {
  const el = document.querySelector("peercam-view");
  if (!el || !el.info) return null;
  const info = el.info;
  let framesDecoded = 0, mimeType = null;
  if (el.peerConnection) {
    const report = await el.peerConnection.getStats();
    report.forEach((r) => {
      if (r.type === "inbound-rtp" && r.kind === "video") {
        framesDecoded = r.framesDecoded || 0;
        mimeType = report.get(r.codecId)?.mimeType ?? null;
      }
    });
  }
  return { ...info, state: el.dataset.state, framesDecoded, mimeType,
           overlay: el.shadowRoot.querySelector(".overlay").textContent };
}"""


async def view_until(page: Page, done: str, *, timeout_s: float, what: str) -> dict[str, Any]:
    """Poll the element (``VIEW_JS``) until the JS expression ``done`` over it (``v``) holds,
    and return what it showed then; fail with the last state seen."""
    predicate = f"async () => {{ const v = await ({VIEW_JS})(); return v && ({done}) ? v : null; }}"
    view: dict[str, Any] = await wait_for(
        page, predicate, timeout_s=timeout_s, what=what, diagnosis_js=VIEW_JS, polling=0.1
    )
    return view
