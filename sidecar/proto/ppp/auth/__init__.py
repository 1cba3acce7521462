"""PPP authentication, both roles: PAP (RFC 1334), CHAP-MD5 (RFC 1994), MS-CHAPv1 (RFC 2433),
MS-CHAPv2 (RFC 2759). See ``base.py`` for the shared shape and the factories."""

from sidecar.proto.ppp.auth.base import (
    CHAP_PROTOCOL,
    PAP_PROTOCOL,
    AuthCounters,
    Authenticator,
    AuthFailure,
    AuthMethod,
    AuthPeer,
    AuthResult,
    AuthSuccess,
    SecretLookup,
    make_authenticator,
    make_peer,
)

__all__ = [
    "CHAP_PROTOCOL",
    "PAP_PROTOCOL",
    "AuthCounters",
    "AuthFailure",
    "AuthMethod",
    "AuthPeer",
    "AuthResult",
    "AuthSuccess",
    "Authenticator",
    "SecretLookup",
    "make_authenticator",
    "make_peer",
]
