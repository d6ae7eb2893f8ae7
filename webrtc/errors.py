"""Exceptions of the media side.

PeercamMediaError
├── SourceError          a source cannot be parsed, opened or read
└── NegotiationError     an offer or candidate that WebRTC cannot accept
    └── NoUdpPort        every port of ``--udp-ports`` is taken
"""


class PeercamMediaError(Exception):
    """Root of every error raised by ``webrtc``."""


class SourceError(PeercamMediaError):
    """A source spec is invalid, or the source cannot be opened."""


class NegotiationError(PeercamMediaError):
    """The remote description or a candidate was refused.

    ``code`` is the wire error code that the signaling layer sends back.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class NoUdpPort(NegotiationError):
    """No port of the configured UDP range is free on an address ICE announces."""

    def __init__(self, message: str) -> None:
        super().__init__("no-udp-port", message)
