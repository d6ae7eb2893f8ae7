"""The media side of peercam: sources, the newest-frame primitive, shared encoders and peers.

Nothing in this package imports aiohttp: it is driven by ``signaling`` and tested without HTTP.
"""
