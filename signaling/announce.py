"""What peercam says at start: every URL it can be watched at, and a QR code for a phone.

The URLs go to the log (the one place the token is logged). The QR code goes to standard
output only when that is a terminal: segno's compact drawing uses the Unicode half blocks
``▀ ▄ █`` and spaces, never colour escapes, which many terminals, ``journalctl`` and log files
lose or garble. A pipe or a log file gets the URLs alone.
"""

from __future__ import annotations

import io
import ipaddress
import logging
from collections.abc import Sequence
from typing import TextIO
from urllib.parse import urlsplit

import segno

logger = logging.getLogger("peercam")

#: Quiet zone around the code, in modules: 2 scans reliably and keeps it small on screen.
QR_BORDER = 2


def qr_text(url: str) -> str:
    """``url`` as a QR code of half-block characters, two modules per text line."""
    out = io.StringIO()
    segno.make(url, error="l").terminal(out=out, compact=True, border=QR_BORDER)
    return out.getvalue()


def phone_url(urls: Sequence[str]) -> str | None:
    """The first URL another device can open (not loopback), else the first one."""
    for url in urls:
        host = urlsplit(url).hostname or ""
        try:
            if not ipaddress.ip_address(host).is_loopback:
                return url
        except ValueError:  # a host name: reachable as far as we know
            return url
    return urls[0] if urls else None


def announce(urls: Sequence[str], description: str, out: TextIO) -> None:
    """Log every URL; on a terminal, also draw the QR code of :func:`phone_url`."""
    for url in urls:
        logger.info("open %s to watch %s", url, description)
    target = phone_url(urls)
    if target is None or not out.isatty():
        return
    parts = urlsplit(target)
    shown = f"{parts.scheme}://{parts.netloc}/" + (" (token included)" if parts.query else "")
    out.write(f"{qr_text(target)}scan with a phone to open {shown}\n")
    out.flush()
