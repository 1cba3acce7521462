"""CHAP (RFC 1994): the challenge/response exchange shared by CHAP-MD5 and MS-CHAP, and CHAP-MD5.

Theory of operation (RFC 1994 §4): the authenticator sends Challenge (Identifier, random Value, its
Name) and resends the *same* Challenge on its restart timer until a Response with that Identifier
arrives or ``max_transmits`` is reached. It answers the Response with Success or Failure and, because
that answer may be lost, answers a repeated Response with the same Identifier with the same packet.
The peer answers every Challenge (a repeated one with the same stored Response), and while it waits
for Success/Failure it resends its Response on its own timer (bounded), so that a lost Success is
recovered from either side. A peer that never sees a Challenge gives up after
``restart_interval * max_transmits`` seconds.

:class:`ChapPeer` / :class:`ChapAuthenticator` hold that exchange; a method (CHAP-MD5 here, MS-CHAPv1/v2
in ``mschap.py``) only says how a response is computed and checked and how Success/Failure read.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Final

from sidecar.proto.errors import PppError
from sidecar.proto.ppp.auth.base import (
    Authenticator,
    AuthMethod,
    AuthPeer,
    encode_packet,
    printable,
)
from sidecar.proto.ppp.mppe import MppeKeySource

CHALLENGE: Final = 1
RESPONSE: Final = 2
SUCCESS: Final = 3
FAILURE: Final = 4

MD5_CHALLENGE_LENGTH: Final = 16


def encode_value_name(code: int, identifier: int, value: bytes, name: bytes) -> bytes:
    """Challenge or Response: Value-Size, Value, Name (RFC 1994 §4.1)."""
    if not 1 <= len(value) <= 255:
        raise PppError(f"CHAP Value must be 1..255 octets, got {len(value)}")
    return encode_packet(code, identifier, bytes((len(value),)) + value + name)


def decode_value_name(data: bytes) -> tuple[bytes, bytes]:
    """(value, name) from the data of a Challenge or Response."""
    if not data:
        raise PppError("CHAP Challenge/Response has no Value-Size octet")
    size = data[0]
    if size == 0:
        raise PppError("CHAP Value-Size is 0")
    if len(data) < 1 + size:
        raise PppError(f"CHAP Value truncated: Value-Size {size}, {len(data) - 1} octets present")
    return data[1 : 1 + size], data[1 + size :]


def chap_md5_response(identifier: int, secret: bytes, challenge: bytes) -> bytes:
    """RFC 1994 §2 with MD5 (RFC 1321): MD5(Identifier || secret || Challenge)."""
    return hashlib.md5(bytes((identifier & 0xFF,)) + secret + challenge).digest()


@dataclass(frozen=True)
class Verdict:
    """What a method's check of a Response decided (authenticator side)."""

    ok: bool
    message: bytes  # Success/Failure message field
    reason: str = ""  # failure reason for our own AuthFailure (never shown to the peer)
    bad_credentials: bool = False
    keys: MppeKeySource | None = None


class ChapPeer(AuthPeer):
    """The CHAP exchange, peer role. Subclasses: _response_value, _accept_success, _read_failure."""

    challenge_length: int | None = None  # required challenge length, None = any
    # Per-exchange state, set as the exchange goes (immutable values: class defaults are safe, and
    # the constructor stays AuthPeer's).
    server_name = ""
    _challenge: tuple[int, bytes] | None = None  # (identifier, value) we answered
    _response: bytes | None = None
    _transmits = 0

    # --- method hooks ---
    def _response_value(self, identifier: int, challenge: bytes) -> bytes:
        raise NotImplementedError

    def _accept_success(self, message: bytes) -> None:
        """Set the result from a Success message (MS-CHAPv2 checks the authenticator response)."""
        self._succeed(self.server_name, printable(message))

    def _read_failure(self, message: bytes) -> tuple[str, bool]:
        text = printable(message)
        said = f" (server says: {text})" if text else ""
        return f"authentication failed: wrong user name or password{said}", True

    # --- the exchange ---
    def start(self, now: float) -> list[bytes]:
        self._deadline = now + self.restart_interval * self.max_transmits
        return []

    def _handle(self, code: int, identifier: int, data: bytes, now: float) -> list[bytes]:
        if code == CHALLENGE:
            return self._on_challenge(identifier, data, now)
        if code in (SUCCESS, FAILURE):
            if self._challenge is None or identifier != self._challenge[0] or self.result is not None:
                self.counters.unexpected += 1
                return []
            if code == SUCCESS:
                self._accept_success(data)
            else:
                reason, bad = self._read_failure(data)
                self._fail(reason, bad)
            return []
        self.counters.unexpected += 1
        return []

    def _on_challenge(self, identifier: int, data: bytes, now: float) -> list[bytes]:
        value, name = decode_value_name(data)
        if self.challenge_length is not None and len(value) != self.challenge_length:
            raise PppError(
                f"{self.method.label} Challenge must be {self.challenge_length} octets, got {len(value)}"
            )
        if self._challenge == (identifier, value) and self._response is not None:
            self.counters.retransmits += 1
            return [self._response]  # the authenticator did not get our Response
        self.server_name = printable(name, 255)
        self._challenge = (identifier, value)
        self._response = encode_value_name(
            RESPONSE, identifier, self._response_value(identifier, value), self.username.encode()
        )
        if self.result is None:
            self._transmits = 1
            self._deadline = now + self.restart_interval
        return [self._response]

    def _on_timeout(self, now: float) -> list[bytes]:
        if self.result is not None:
            self._deadline = None
            return []
        if self._response is None:
            self._fail(
                f"the server sent no CHAP Challenge within {self.restart_interval * self.max_transmits:g} s"
            )
            return []
        if self._transmits >= self.max_transmits:
            self._fail(
                f"the server did not answer our {self.method.label} Response after {self._transmits} tries"
            )
            return []
        self._transmits += 1
        self.counters.retransmits += 1
        self._deadline = now + self.restart_interval
        return [self._response]


class ChapAuthenticator(Authenticator):
    """The CHAP exchange, authenticator role. Subclasses: _new_challenge, _check."""

    # Per-exchange state (immutable values: class defaults are safe; the constructor is Authenticator's).
    _identifier = 0
    _challenge = b""
    _challenge_packet = b""
    _verdict_packet: bytes | None = None
    _transmits = 0

    # --- method hooks ---
    def _new_challenge(self) -> bytes:
        raise NotImplementedError

    def _check(self, identifier: int, challenge: bytes, value: bytes, username: str) -> Verdict:
        raise NotImplementedError

    # --- the exchange ---
    def start(self, now: float) -> list[bytes]:
        self._identifier = self._rng.randrange(256)
        self._challenge = self._new_challenge()
        self._challenge_packet = encode_value_name(
            CHALLENGE, self._identifier, self._challenge, self.name.encode()
        )
        self._transmits = 1
        self._deadline = now + self.restart_interval
        self.counters.sent += 1
        return [self._challenge_packet]

    def _on_timeout(self, now: float) -> list[bytes]:
        if self.result is not None:
            self._deadline = None
            return []
        if self._transmits >= self.max_transmits:
            self._fail(
                f"the peer did not answer our {self.method.label} Challenge after {self._transmits} tries"
            )
            return []
        self._transmits += 1
        self.counters.retransmits += 1
        self._deadline = now + self.restart_interval
        return [self._challenge_packet]

    def _handle(self, code: int, identifier: int, data: bytes, now: float) -> list[bytes]:
        if code != RESPONSE or identifier != self._identifier or not self._challenge_packet:
            self.counters.unexpected += 1
            return []
        value, name = decode_value_name(data)
        if self._verdict_packet is not None:
            self.counters.retransmits += 1
            return [self._verdict_packet]  # the peer did not get our Success/Failure
        if self.result is not None:
            # We already gave up (no Response in time): a late Response must not turn the reported
            # failure into a success. Nothing more goes out; the link is going down.
            self.counters.unexpected += 1
            return []
        username = name.decode("utf-8", "replace")
        verdict = self._check(identifier, self._challenge, value, username)
        code_out = SUCCESS if verdict.ok else FAILURE
        self._verdict_packet = encode_packet(code_out, identifier, verdict.message)
        if verdict.ok:
            self._succeed(username, verdict.message.decode("utf-8", "replace"), verdict.keys)
        else:
            self._fail(verdict.reason, verdict.bad_credentials)
        return [self._verdict_packet]


class ChapMd5Peer(ChapPeer):
    METHOD = AuthMethod.CHAP_MD5

    def _response_value(self, identifier: int, challenge: bytes) -> bytes:
        return chap_md5_response(identifier, self._password.reveal().encode(), challenge)


class ChapMd5Authenticator(ChapAuthenticator):
    METHOD = AuthMethod.CHAP_MD5

    def _new_challenge(self) -> bytes:
        return self._rng.randbytes(MD5_CHALLENGE_LENGTH)

    def _check(self, identifier: int, challenge: bytes, value: bytes, username: str) -> Verdict:
        secret = self._lookup_secret(username)
        if secret is None:
            return Verdict(False, b"Authentication failed", f"unknown user {printable(username)!r}", True)
        expected = chap_md5_response(identifier, secret.reveal().encode(), challenge)
        if not hmac.compare_digest(expected, value):
            return Verdict(
                False, b"Authentication failed", f"wrong password for user {printable(username)!r}", True
            )
        return Verdict(True, b"Access granted")
