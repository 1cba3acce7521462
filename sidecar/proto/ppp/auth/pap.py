"""PAP, the Password Authentication Protocol (RFC 1334 §2), both roles.

Theory of operation: the peer sends Authenticate-Request (Peer-ID, Password) and resends it on its
restart timer, with a new Identifier each time (RFC 1334 §2.2.1), until an Ack or Nak for one of its
Identifiers arrives or it has sent ``max_transmits`` requests. The authenticator has no timer of its
own besides a wait limit; it answers every request, and after its verdict it answers repeated
requests with the same verdict (the Ack may have been lost). The password crosses the wire in the
clear: PAP is here for completeness and for old servers, MS-CHAPv2 is the default.
"""

from __future__ import annotations

import hmac
import random
from typing import Final

from sidecar.proto.errors import PppError
from sidecar.proto.ppp.auth.base import (
    DEFAULT_MAX_TRANSMITS,
    DEFAULT_RESTART_INTERVAL,
    Authenticator,
    AuthMethod,
    AuthPeer,
    AuthSuccess,
    SecretLookup,
    encode_packet,
    printable,
)
from sidecar.proto.secret import Secret

AUTHENTICATE_REQUEST: Final = 1
AUTHENTICATE_ACK: Final = 2
AUTHENTICATE_NAK: Final = 3


def encode_authenticate_request(identifier: int, peer_id: bytes, password: bytes) -> bytes:
    if len(peer_id) > 255 or len(password) > 255:
        raise PppError("PAP Peer-ID and Password must each be at most 255 octets")
    data = bytes((len(peer_id),)) + peer_id + bytes((len(password),)) + password
    return encode_packet(AUTHENTICATE_REQUEST, identifier, data)


def decode_authenticate_request(data: bytes) -> tuple[bytes, bytes]:
    """(peer_id, password) from the data of an Authenticate-Request."""
    if not data:
        raise PppError("PAP Authenticate-Request has no Peer-ID Length octet")
    n = data[0]
    if len(data) < 1 + n + 1:
        raise PppError("PAP Authenticate-Request truncated in Peer-ID or Passwd-Length")
    peer_id = data[1 : 1 + n]
    m = data[1 + n]
    if len(data) < 2 + n + m:
        raise PppError("PAP Authenticate-Request truncated in Password")
    return peer_id, data[2 + n : 2 + n + m]


def encode_reply(code: int, identifier: int, message: bytes) -> bytes:
    message = message[:255]
    return encode_packet(code, identifier, bytes((len(message),)) + message)


def decode_reply_message(data: bytes) -> bytes:
    """Message of an Ack/Nak. Lenient: an absent or short Msg-Length yields what is there."""
    if not data:
        return b""
    return data[1 : 1 + data[0]]


class PapPeer(AuthPeer):
    METHOD = AuthMethod.PAP

    def __init__(
        self,
        username: str,
        password: Secret,
        rng: random.Random,
        *,
        restart_interval: float = DEFAULT_RESTART_INTERVAL,
        max_transmits: int = DEFAULT_MAX_TRANSMITS,
    ) -> None:
        super().__init__(
            username, password, rng, restart_interval=restart_interval, max_transmits=max_transmits
        )
        if len(username.encode()) > 255:
            raise ValueError("PAP user name must be at most 255 octets (UTF-8)")
        if len(password.reveal().encode()) > 255:
            raise ValueError("PAP password must be at most 255 octets (UTF-8)")
        self._identifier = rng.randrange(256)
        self._sent_ids: set[int] = set()
        self._transmits = 0

    def _request(self, now: float) -> list[bytes]:
        self._identifier = (self._identifier + 1) & 0xFF
        self._sent_ids.add(self._identifier)
        self._transmits += 1
        self._deadline = now + self.restart_interval
        return [
            encode_authenticate_request(
                self._identifier, self.username.encode(), self._password.reveal().encode()
            )
        ]

    def start(self, now: float) -> list[bytes]:
        out = self._request(now)
        self.counters.sent += len(out)
        return out

    def _on_timeout(self, now: float) -> list[bytes]:
        if self.result is not None:
            self._deadline = None
            return []
        if self._transmits >= self.max_transmits:
            self._fail(
                f"the server did not answer our PAP Authenticate-Request after {self._transmits} tries "
                f"({self._transmits * self.restart_interval:g} s)"
            )
            return []
        self.counters.retransmits += 1
        return self._request(now)

    def _handle(self, code: int, identifier: int, data: bytes, now: float) -> list[bytes]:
        if code not in (AUTHENTICATE_ACK, AUTHENTICATE_NAK) or identifier not in self._sent_ids:
            self.counters.unexpected += 1
            return []
        if self.result is not None:
            return []  # a late duplicate answer
        message = printable(decode_reply_message(data))
        if code == AUTHENTICATE_ACK:
            self._succeed("", message)
        else:
            said = f" (server says: {message})" if message else ""
            self._fail(f"authentication failed: wrong user name or password{said}", bad_credentials=True)
        return []


class PapAuthenticator(Authenticator):
    METHOD = AuthMethod.PAP

    def __init__(
        self,
        lookup: SecretLookup,
        name: str,
        rng: random.Random,
        *,
        restart_interval: float = DEFAULT_RESTART_INTERVAL,
        max_transmits: int = DEFAULT_MAX_TRANSMITS,
        ack_message: str = "Access granted",
        nak_message: str = "Authentication failed",
    ) -> None:
        super().__init__(lookup, name, rng, restart_interval=restart_interval, max_transmits=max_transmits)
        self._ack = ack_message.encode()
        self._nak = nak_message.encode()

    def start(self, now: float) -> list[bytes]:
        self._deadline = now + self.restart_interval * self.max_transmits
        return []

    def _on_timeout(self, now: float) -> list[bytes]:
        if self.result is None:
            self._fail(
                "the peer sent no PAP Authenticate-Request within "
                f"{self.restart_interval * self.max_transmits:g} s"
            )
        self._deadline = None
        return []

    def _handle(self, code: int, identifier: int, data: bytes, now: float) -> list[bytes]:
        if code != AUTHENTICATE_REQUEST:
            self.counters.unexpected += 1
            return []
        peer_id, password = decode_authenticate_request(data)
        if self.result is not None:  # our answer was lost: repeat the verdict
            ok = isinstance(self.result, AuthSuccess)
            return [
                encode_reply(
                    AUTHENTICATE_ACK if ok else AUTHENTICATE_NAK, identifier, self._ack if ok else self._nak
                )
            ]
        username = peer_id.decode("utf-8", "replace")
        secret = self._lookup_secret(username)
        if secret is None:
            self._fail(f"unknown user {printable(username)!r}", bad_credentials=True)
            return [encode_reply(AUTHENTICATE_NAK, identifier, self._nak)]
        if not hmac.compare_digest(secret.reveal().encode(), password):
            self._fail(f"wrong password for user {printable(username)!r}", bad_credentials=True)
            return [encode_reply(AUTHENTICATE_NAK, identifier, self._nak)]
        self._succeed(username, "")
        return [encode_reply(AUTHENTICATE_ACK, identifier, self._ack)]
