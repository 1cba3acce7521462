"""PPP authentication: what every method shares (RFC 1334 PAP, RFC 1994 CHAP and its MS variants).

What lives here: :class:`AuthMethod` (and its LCP Auth-Protocol option data), the results
(:class:`AuthSuccess`, :class:`AuthFailure`), the packet codec for the PPP information field
(code, identifier, length, data; no PPP protocol field), the timer/retransmission skeleton shared by
all machines, and the factories :func:`make_peer` / :func:`make_authenticator`.

Roles: the *peer* proves who it is (the sidecar, a PPTP client); the *authenticator* checks (the
embedded server), given ``lookup(username) -> Secret | None``. Each method module writes one small
machine per role on top of :class:`AuthPeer` / :class:`Authenticator`.

Rules: pure (no clock, no I/O, no logging). ``now`` comes in; packets to send come out; the outcome
is :attr:`result`. A malformed or unexpected packet is dropped and counted, never raised. Passwords
are :class:`~sidecar.proto.secret.Secret` and are revealed only where they are hashed; no repr, str,
reason or exception message carries a password, a hash or a key.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Final

from sidecar.proto.errors import PppError
from sidecar.proto.secret import Secret

if TYPE_CHECKING:
    from sidecar.proto.ppp.mppe import MppeKeySource

PAP_PROTOCOL: Final = 0xC023
CHAP_PROTOCOL: Final = 0xC223

DEFAULT_RESTART_INTERVAL: Final = 3.0
DEFAULT_MAX_TRANSMITS: Final = 10

SecretLookup = Callable[[str], Secret | None]


class AuthMethod(enum.Enum):
    PAP = "pap"
    CHAP_MD5 = "chap-md5"
    MSCHAP_V1 = "mschap-v1"
    MSCHAP_V2 = "mschap-v2"

    @property
    def protocol(self) -> int:
        return PAP_PROTOCOL if self is AuthMethod.PAP else CHAP_PROTOCOL

    @property
    def label(self) -> str:
        return _LABELS[self]

    def option_data(self) -> bytes:
        """LCP Authentication-Protocol option data (RFC 1661 §6.2, RFC 1994 §3, RFC 2433/2759)."""
        return _OPTION_DATA[self]

    @classmethod
    def from_option_data(cls, data: bytes | memoryview) -> AuthMethod | None:
        """The method for an Authentication-Protocol option, or None if we do not speak it."""
        return _BY_OPTION_DATA.get(bytes(data))


_OPTION_DATA: Final = {
    AuthMethod.PAP: b"\xc0\x23",
    AuthMethod.CHAP_MD5: b"\xc2\x23\x05",
    AuthMethod.MSCHAP_V1: b"\xc2\x23\x80",
    AuthMethod.MSCHAP_V2: b"\xc2\x23\x81",
}
_BY_OPTION_DATA: Final = {v: k for k, v in _OPTION_DATA.items()}
_LABELS: Final = {
    AuthMethod.PAP: "PAP",
    AuthMethod.CHAP_MD5: "CHAP-MD5",
    AuthMethod.MSCHAP_V1: "MS-CHAPv1",
    AuthMethod.MSCHAP_V2: "MS-CHAPv2",
}


@dataclass(frozen=True)
class AuthSuccess:
    """Authentication succeeded. ``peer_name``: for the peer role, the authenticator's name (CHAP
    Name field, "" for PAP); for the authenticator role, the user name the peer proved."""

    method: AuthMethod
    peer_name: str
    message: str = ""
    keys: MppeKeySource | None = field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        who = f" ({self.peer_name})" if self.peer_name else ""
        return f"authenticated with {self.method.label}{who}"


@dataclass(frozen=True)
class AuthFailure:
    method: AuthMethod
    reason: str
    bad_credentials: bool = False

    def __str__(self) -> str:
        return f"{self.method.label}: {self.reason}"


AuthResult = AuthSuccess | AuthFailure


# --- packets -------------------------------------------------------------------------------------


def encode_packet(code: int, identifier: int, data: bytes = b"") -> bytes:
    """PPP information field of an authentication packet: code, identifier, length, data."""
    length = 4 + len(data)
    if length > 0xFFFF:
        raise PppError(f"authentication packet too long ({length} octets)")
    return bytes((code & 0xFF, identifier & 0xFF, length >> 8, length & 0xFF)) + data


def decode_packet(packet: bytes | memoryview) -> tuple[int, int, bytes]:
    """(code, identifier, data). Octets beyond the Length field are padding and ignored."""
    if len(packet) < 4:
        raise PppError(f"authentication packet too short ({len(packet)} octets, need at least 4)")
    length = (packet[2] << 8) | packet[3]
    if length < 4:
        raise PppError(f"authentication packet Length field {length} is below the minimum of 4")
    if length > len(packet):
        raise PppError(f"authentication packet truncated: Length says {length}, got {len(packet)} octets")
    return packet[0], packet[1], bytes(packet[4:length])


def printable(text: bytes | str, limit: int = 200) -> str:
    """A server-supplied message, safe to show in a log line (no control characters, bounded)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in text)
    return cleaned if len(cleaned) <= limit else cleaned[:limit] + "..."


# --- machines ------------------------------------------------------------------------------------


@dataclass
class AuthCounters:
    sent: int = 0
    retransmits: int = 0
    received: int = 0
    bad_packets: int = 0  # malformed: dropped
    unexpected: int = 0  # well-formed but wrong code/identifier/state: dropped


class _AuthMachine:
    """Timers, counters and the result: the skeleton both roles share."""

    METHOD: ClassVar[AuthMethod]  # each concrete machine names its method
    method: AuthMethod

    def __init__(self, rng: random.Random, restart_interval: float, max_transmits: int) -> None:
        if restart_interval <= 0:
            raise ValueError("restart_interval must be positive")
        if max_transmits < 1:
            raise ValueError("max_transmits must be at least 1")
        self.method = self.METHOD
        self._rng = rng
        self.restart_interval = restart_interval
        self.max_transmits = max_transmits
        self.result: AuthSuccess | AuthFailure | None = None
        self.counters = AuthCounters()
        self._deadline: float | None = None

    @property
    def protocol(self) -> int:
        return self.method.protocol

    @property
    def done(self) -> bool:
        return self.result is not None

    def next_deadline(self) -> float | None:
        return self._deadline

    def start(self, now: float) -> list[bytes]:
        raise NotImplementedError

    def receive(self, packet: bytes | memoryview, now: float) -> list[bytes]:
        """Feed one packet (PPP information field). Returns packets to send."""
        self.counters.received += 1
        try:
            code, identifier, data = decode_packet(packet)
        except PppError:
            self.counters.bad_packets += 1
            return []
        try:
            out = self._handle(code, identifier, data, now)
        except PppError:
            self.counters.bad_packets += 1
            return []
        self.counters.sent += len(out)
        return out

    def timeout(self, now: float) -> list[bytes]:
        if self._deadline is None or now < self._deadline:
            return []
        out = self._on_timeout(now)
        self.counters.sent += len(out)
        return out

    def _handle(self, code: int, identifier: int, data: bytes, now: float) -> list[bytes]:
        raise NotImplementedError

    def _on_timeout(self, now: float) -> list[bytes]:
        raise NotImplementedError

    def _succeed(self, peer_name: str, message: str = "", keys: MppeKeySource | None = None) -> None:
        self.result = AuthSuccess(self.method, peer_name, message, keys)
        self._deadline = None

    def _fail(self, reason: str, bad_credentials: bool = False) -> None:
        self.result = AuthFailure(self.method, reason, bad_credentials)
        self._deadline = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.method.label}, result={self.result!r})"


class AuthPeer(_AuthMachine):
    """The side that proves its identity (the sidecar). Holds the password as a Secret."""

    def __init__(
        self,
        username: str,
        password: Secret,
        rng: random.Random,
        *,
        restart_interval: float = DEFAULT_RESTART_INTERVAL,
        max_transmits: int = DEFAULT_MAX_TRANSMITS,
    ) -> None:
        super().__init__(rng, restart_interval, max_transmits)
        if not isinstance(password, Secret):
            raise TypeError("password must be a Secret")
        self.username = username
        self._password = password


class Authenticator(_AuthMachine):
    """The side that checks the peer's identity (the server), given a secret lookup."""

    def __init__(
        self,
        lookup: SecretLookup,
        name: str,
        rng: random.Random,
        *,
        restart_interval: float = DEFAULT_RESTART_INTERVAL,
        max_transmits: int = DEFAULT_MAX_TRANSMITS,
    ) -> None:
        super().__init__(rng, restart_interval, max_transmits)
        self.name = name
        self._lookup = lookup

    def _lookup_secret(self, username: str) -> Secret | None:
        secret = self._lookup(username)
        if secret is not None and not isinstance(secret, Secret):
            raise TypeError("lookup must return a Secret or None")
        return secret


def make_peer(
    method: AuthMethod,
    username: str,
    password: Secret,
    rng: random.Random,
    *,
    restart_interval: float = DEFAULT_RESTART_INTERVAL,
    max_transmits: int = DEFAULT_MAX_TRANSMITS,
) -> AuthPeer:
    """The peer-role machine for ``method``. Pass ``random.SystemRandom()`` as rng in production."""
    from sidecar.proto.ppp.auth import chap, mschap, pap

    classes: dict[AuthMethod, Callable[..., AuthPeer]] = {
        AuthMethod.PAP: pap.PapPeer,
        AuthMethod.CHAP_MD5: chap.ChapMd5Peer,
        AuthMethod.MSCHAP_V1: mschap.MsChapV1Peer,
        AuthMethod.MSCHAP_V2: mschap.MsChapV2Peer,
    }
    return classes[method](
        username, password, rng, restart_interval=restart_interval, max_transmits=max_transmits
    )


def make_authenticator(
    method: AuthMethod,
    lookup: SecretLookup,
    name: str,
    rng: random.Random,
    *,
    restart_interval: float = DEFAULT_RESTART_INTERVAL,
    max_transmits: int = DEFAULT_MAX_TRANSMITS,
) -> Authenticator:
    """The authenticator-role machine for ``method``; challenges come from ``rng``."""
    from sidecar.proto.ppp.auth import chap, mschap, pap

    classes: dict[AuthMethod, Callable[..., Authenticator]] = {
        AuthMethod.PAP: pap.PapAuthenticator,
        AuthMethod.CHAP_MD5: chap.ChapMd5Authenticator,
        AuthMethod.MSCHAP_V1: mschap.MsChapV1Authenticator,
        AuthMethod.MSCHAP_V2: mschap.MsChapV2Authenticator,
    }
    return classes[method](lookup, name, rng, restart_interval=restart_interval, max_transmits=max_transmits)
