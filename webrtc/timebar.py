"""A machine-readable capture time drawn into the picture itself.

The bar is 64 blocks along the top edge: 48 bits of the capture time in milliseconds since the
epoch, then a 16-bit check word (CRC-32 of those 6 bytes, low 16 bits), most significant bit
first, white for 1. A receiver decodes it from the picture it shows and subtracts from its own
clock: that is glass-to-glass latency, honestly measured, for any kind of client. The check word
rejects bars damaged by compression. The browser tests carry the same decoder in JS.
"""

from __future__ import annotations

import zlib

from .frames import Image

BITS = 64
TIME_BITS = 48


def block_size(width: int) -> int:
    """Width and height in pixels of one bar block for a picture ``width`` wide."""
    return max(4, width // 80)


def _check_word(millis: int) -> int:
    return zlib.crc32(millis.to_bytes(6, "big")) & 0xFFFF


def stamp(image: Image, millis: int) -> None:
    """Draw the bar for ``millis`` into the top rows of a BGR ``image``, in place."""
    size = block_size(image.shape[1])
    word = ((millis & ((1 << TIME_BITS) - 1)) << 16) | _check_word(millis)
    image[: size * 2, : size * (BITS + 2)] = 0  # a black margin keeps the bar readable
    for i in range(BITS):
        if word >> (BITS - 1 - i) & 1:
            x = size * (i + 1)
            image[size // 2 : size // 2 + size, x : x + size] = 255


def read(image: Image) -> int | None:
    """Decode the bar from a BGR or grey ``image``; None if absent or damaged.

    The picture may be the one stamped, or one scaled down from it (a lower rung of the
    ladder): there a block is ``width / 80`` pixels, a fraction, when the stamped width was a
    multiple of 80 (640: 4.8 pixels at 384 wide, 2.4 at 192).
    """
    width = image.shape[1]
    exact = block_size(width)
    for size in (exact, width / 80) if width / 80 != exact else (exact,):
        millis = _read_at(image, size)
        if millis is not None:
            return millis
    return None


def _read_at(image: Image, size: float) -> int | None:
    if size < 2 or image.shape[0] < size * 2 or image.shape[1] < size * (BITS + 2):
        return None
    # Average the middle half of each block: robust against ringing at block edges.
    top = round(size / 2 + size / 4)
    rows = image[top : max(round(size / 2 + size * 3 / 4), top + 1)]
    if rows.ndim == 3:
        rows = rows.mean(axis=2)
    column = rows.mean(axis=0)
    word = 0
    for i in range(BITS):
        x = size * (i + 1)
        lo, hi = round(x + size / 4), round(x + size * 3 / 4)
        word = (word << 1) | int(column[lo : max(hi, lo + 1)].mean() > 128)
    millis = word >> 16
    if word & 0xFFFF != _check_word(millis):
        return None
    return millis
