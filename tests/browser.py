"""Headless Chromium for the browser tests: Debian's binary driven by Playwright (docs/TESTING §3).

Never ``playwright install``: the tests use the system Chromium, chosen by ``PEERCAM_CHROMIUM``
(default ``/usr/bin/chromium``). A missing browser fails the tests; it does not skip them, so a
CI image without Chromium cannot pass by testing nothing.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
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


async def wait_for(
    page: Page, predicate: str, *, timeout_s: float, what: str, diagnosis_js: str
) -> Any:
    """Wait until the JS function ``predicate`` returns a truthy value, and return that value;
    on timeout, fail with ``what`` and the page's own account (``diagnosis_js``)."""
    try:
        handle = await page.wait_for_function(predicate, timeout=timeout_s * 1000)
    except PlaywrightTimeoutError:
        pytest.fail(
            f"not within {timeout_s:g} s: {what}; page: {await page.evaluate(diagnosis_js)}"
        )
    return await handle.json_value()
