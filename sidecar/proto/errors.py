"""The one exception type the protocol wing raises.

Rules: every decoder and every machine entry point in ``sidecar.proto`` raises only
:class:`ProtocolError` (or a subclass) on bad input; the message names the problem in words an
operator can act on. Nothing here ever includes a secret in a message.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Malformed or unexpected protocol input. The message says what was wrong."""


class PptpError(ProtocolError):
    """RFC 2637 control-channel error."""


class GreError(ProtocolError):
    """RFC 2637 §4 enhanced GRE error."""


class PppError(ProtocolError):
    """PPP framing, negotiation, authentication or MPPE error."""
