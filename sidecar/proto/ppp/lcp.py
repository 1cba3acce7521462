"""LCP options and extra codes (RFC 1661 §5.7-5.9, §6) and the Echo keepalive.

What lives here: how LCP builds our Configure-Request (MRU, Authentication-Protocol for the
authenticator, Magic-Number, PFC, ACFC), how it judges the peer's, the Authentication-Protocol policy,
loopback detection, Echo-Request/Reply, Discard-Request and Protocol-Reject. The automaton itself is
``fsm.py``; the phases are ``link.py``.

Roles, as PPTP uses them: the *peer* (the sidecar, a client) is authenticated and never asks the
server to authenticate; it accepts only methods in its allowed list and Naks anything else with its
preferred method. The *authenticator* (the embedded server) asks for the first method of its list and
moves down the list when the client Naks. This is the only role knowledge in the module.

ACCM (option 2) is accepted and ignored: PPTP carries PPP synchronously, there is nothing to escape.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from typing import Final

from sidecar.proto.ppp import frame as F
from sidecar.proto.ppp.auth.base import AuthMethod
from sidecar.proto.ppp.frame import ControlPacket, Option
from sidecar.proto.ppp.fsm import Event, Judgement, NegotiationFailed, OptionHandler, Verdict

OPT_MRU: Final = 1
OPT_ACCM: Final = 2
OPT_AUTH: Final = 3
OPT_QUALITY: Final = 4
OPT_MAGIC: Final = 5
OPT_PFC: Final = 7
OPT_ACFC: Final = 8

DEFAULT_MRU: Final = 1500
MIN_MRU: Final = 128
MAX_LOOPBACK: Final = 5
MAX_DISALLOWED_OFFERS: Final = 4

_U16: Final = struct.Struct("!H")
_U32: Final = struct.Struct("!I")

# The names --auth / PPTP_AUTH take (sidecar.config.AUTH_NAMES): the advice must be usable as given.
AUTH_FLAG_NAMES: Final[dict[AuthMethod, str]] = {
    AuthMethod.PAP: "pap",
    AuthMethod.CHAP_MD5: "chap",
    AuthMethod.MSCHAP_V1: "mschap",
    AuthMethod.MSCHAP_V2: "mschapv2",
}


def _random_magic(rng: random.Random) -> int:
    return rng.randrange(1, 1 << 32)


class LcpHandler(OptionHandler):
    """LCP's options for one link. ``authenticator`` picks the role (see the module docstring)."""

    name = "LCP"
    extra_codes = frozenset({F.PROTOCOL_REJECT, F.ECHO_REQUEST, F.ECHO_REPLY, F.DISCARD_REQUEST})

    def __init__(
        self,
        *,
        authenticator: bool,
        auth_methods: tuple[AuthMethod, ...],
        mru: int,
        rng: random.Random,
        request_compression: bool = True,
    ) -> None:
        if not MIN_MRU <= mru <= 0xFFFF:
            raise ValueError(f"MRU {mru} out of range {MIN_MRU}..65535")
        self.authenticator = authenticator
        self.auth_methods = auth_methods
        self.rng = rng
        self._want_mru = mru
        self._request_compression = request_compression
        self.magic = _random_magic(rng)
        self._reset()

    def _reset(self) -> None:
        # our request, as it evolves through Naks and Rejects
        self._send_mru: int | None = self._want_mru
        self._send_magic = True
        self._send_pfc = self._request_compression
        self._send_acfc = self._request_compression
        self._auth_index = 0 if (self.authenticator and self.auth_methods) else -1
        # results: what the peer acked of ours / what we acked of the peer's
        self.rx_mru = DEFAULT_MRU  # what we receive at most (our MRU as acked)
        self.tx_mru = DEFAULT_MRU  # what we may send at most (the peer's MRU)
        self.tx_pfc = False  # the peer can receive compressed protocol fields
        self.tx_acfc = False
        self.peer_magic = 0
        self.auth_demanded: AuthMethod | None = None  # authenticator: the method the peer acked
        self.auth_required: AuthMethod | None = None  # peer: the method the server asked us to use
        self._loop_suspicions = 0
        self._disallowed_offers: list[str] = []
        self._last_disallowed: tuple[AuthMethod | None, str] | None = None
        self.withdrawn_auth_reason: str | None = None
        self.rejected_protocols: list[int] = []  # Protocol-Rejects received (the link drains)
        self.echo_replies: list[tuple[int, bytes]] = []  # (identifier, data) of Echo-Replies
        self.looped_echo = 0
        self.discards = 0

    def on_layer_started(self) -> None:
        self._reset()

    # -- our request ------------------------------------------------------------------------------------
    @property
    def _auth_method(self) -> AuthMethod | None:
        if 0 <= self._auth_index < len(self.auth_methods):
            return self.auth_methods[self._auth_index]
        return None

    def build_request(self) -> list[Option]:
        opts: list[Option] = []
        if self._send_mru is not None:
            opts.append(Option(OPT_MRU, _U16.pack(self._send_mru)))
        method = self._auth_method
        if method is not None:
            opts.append(Option(OPT_AUTH, method.option_data()))
        if self._send_magic:
            opts.append(Option(OPT_MAGIC, _U32.pack(self.magic)))
        if self._send_pfc:
            opts.append(Option(OPT_PFC))
        if self._send_acfc:
            opts.append(Option(OPT_ACFC))
        return opts

    def on_ack(self, options: list[Option]) -> None:
        self.rx_mru = DEFAULT_MRU
        self.auth_demanded = None
        for o in options:
            if o.type == OPT_MRU:
                self.rx_mru = _U16.unpack(o.data)[0]
            elif o.type == OPT_AUTH:
                self.auth_demanded = AuthMethod.from_option_data(o.data)

    def on_nak(self, options: list[Option]) -> None:
        for o in options:
            if o.type == OPT_MRU and len(o.data) == 2 and self._send_mru is not None:
                value = _U16.unpack(o.data)[0]
                if value >= MIN_MRU:
                    self._send_mru = value
            elif o.type == OPT_MAGIC and self._send_magic:
                self.magic = _random_magic(self.rng)  # RFC 1661 §6.4: pick another
            elif o.type == OPT_AUTH and self._auth_method is not None:
                self._next_auth_method(AuthMethod.from_option_data(o.data))

    def _next_auth_method(self, suggested: AuthMethod | None) -> None:
        if suggested is not None and suggested in self.auth_methods:
            self._auth_index = self.auth_methods.index(suggested)
            return
        self._auth_index += 1
        if self._auth_method is None:
            offered = ", ".join(m.label for m in self.auth_methods)
            wanted = suggested.label if suggested is not None else "a method we do not support"
            raise NegotiationFailed(
                f"the client will not authenticate with any method we allow ({offered}); "
                f"it asked for {wanted}"
            )

    def on_reject(self, options: list[Option]) -> None:
        for o in options:
            if o.type == OPT_MRU:
                self._send_mru = None
            elif o.type == OPT_MAGIC:
                self._send_magic = False
            elif o.type == OPT_PFC:
                self._send_pfc = False
            elif o.type == OPT_ACFC:
                self._send_acfc = False
            elif o.type == OPT_AUTH and self._auth_method is not None:
                raise NegotiationFailed("the client refused to authenticate (it rejected Auth-Protocol)")

    # -- the peer's request -----------------------------------------------------------------------------
    def judge(self, options: list[Option]) -> list[Judgement]:
        return [self._judge_one(o) for o in options]

    def _judge_one(self, o: Option) -> Judgement:
        t, data = o.type, o.data
        if t == OPT_MRU and len(data) == 2:
            if _U16.unpack(data)[0] >= MIN_MRU:
                return Verdict.ACK
            return Option(OPT_MRU, _U16.pack(MIN_MRU))
        if t == OPT_ACCM and len(data) == 4:
            return Verdict.ACK  # synchronous link: accepted and ignored
        if t == OPT_AUTH and len(data) >= 2:
            return self._judge_auth(data)
        if t == OPT_MAGIC and len(data) == 4:
            value = _U32.unpack(data)[0]
            if value == 0:
                return Option(OPT_MAGIC, _U32.pack(_random_magic(self.rng)))
            if self._send_magic and value == self.magic:
                self._loop_suspicions += 1
                if self._loop_suspicions >= MAX_LOOPBACK:
                    raise NegotiationFailed(
                        "the link appears looped back: the peer keeps sending our own Magic-Number"
                    )
                suggestion = _random_magic(self.rng)
                while suggestion == self.magic:
                    suggestion = _random_magic(self.rng)
                return Option(OPT_MAGIC, _U32.pack(suggestion))
            return Verdict.ACK
        if t in (OPT_PFC, OPT_ACFC) and not data:
            return Verdict.ACK
        return Verdict.REJECT  # unknown options, quality protocol, callback, MRRU, bad lengths

    def _judge_auth(self, data: bytes) -> Judgement:
        if self.authenticator:
            return Verdict.REJECT  # we authenticate the client; we do not prove ourselves to it
        method = AuthMethod.from_option_data(data)
        if method is not None and method in self.auth_methods:
            return Verdict.ACK
        offered = method.label if method is not None else f"authentication protocol 0x{data[:2].hex()}"
        if not self.auth_methods:
            raise NegotiationFailed(f"the server requires {offered} and no authentication method is allowed")
        repeated = offered in self._disallowed_offers
        self._disallowed_offers.append(offered)
        self._last_disallowed = (method, offered)
        if repeated or len(self._disallowed_offers) >= MAX_DISALLOWED_OFFERS:
            raise NegotiationFailed(self._insists_reason(method, offered))
        return Option(OPT_AUTH, self.auth_methods[0].option_data())

    def auth_refusal_reason(self) -> str | None:
        """Why LCP cannot agree, when the last thing we did was refuse the server's auth method."""
        if not self._disallowed_offers or self._last_disallowed is None:
            return None
        return self._insists_reason(*self._last_disallowed)

    def _insists_reason(self, method: AuthMethod | None, offered: str) -> str:
        allowed = ", ".join(m.label for m in self.auth_methods)
        if method is None:
            return (
                f"the server requires {offered}, which pptp-sidecar does not implement (allowed: {allowed})"
            )
        flag = AUTH_FLAG_NAMES[method]
        return (
            f"the server requires {offered}, which is not allowed (allowed: {allowed}): "
            f"add {flag} to --auth to permit it"
        )

    def on_peer_ack(self, options: list[Option]) -> None:
        self.tx_mru = DEFAULT_MRU
        self.tx_pfc = self.tx_acfc = False
        self.peer_magic = 0
        self.auth_required = None
        for o in options:
            if o.type == OPT_MRU:
                self.tx_mru = _U16.unpack(o.data)[0]
            elif o.type == OPT_MAGIC:
                self.peer_magic = _U32.unpack(o.data)[0]
            elif o.type == OPT_PFC:
                self.tx_pfc = True
            elif o.type == OPT_ACFC:
                self.tx_acfc = True
            elif o.type == OPT_AUTH:
                self.auth_required = AuthMethod.from_option_data(o.data)
        # The peer asked for a method we refused, then dropped its request instead of offering
        # another (pppd does this, then hangs up once LCP is open): keep why, with the fix.
        self.withdrawn_auth_reason = (
            self._insists_reason(*self._last_disallowed)
            if self.auth_required is None and self._disallowed_offers and self._last_disallowed is not None
            else None
        )
        self._disallowed_offers.clear()

    # -- extra codes ------------------------------------------------------------------------------------
    def classify_extra(self, packet: ControlPacket) -> Event | None:
        if packet.code == F.PROTOCOL_REJECT:
            if len(packet.data) < 2:
                return None
            protocol = _U16.unpack_from(packet.data)[0]
            if protocol == F.LCP:
                return Event.RXJ_MINUS
            self.rejected_protocols.append(protocol)
            return Event.RXJ_PLUS
        return Event.RXR

    def on_rxr(self, packet: ControlPacket) -> list[bytes]:
        """Opened only (the table's ``ser``): answer Echo-Request, collect Echo-Reply."""
        their_magic = _U32.unpack_from(packet.data)[0] if len(packet.data) >= 4 else 0
        looped = self._send_magic and their_magic == self.magic and self.magic != 0
        if packet.code == F.ECHO_REQUEST:
            if looped:
                self.looped_echo += 1
                return []
            ours = _U32.pack(self.magic if self._send_magic else 0)
            return [F.encode_control(F.ECHO_REPLY, packet.identifier, ours + packet.data[4:])]
        if packet.code == F.ECHO_REPLY:
            if looped:
                self.looped_echo += 1
            else:
                self.echo_replies.append((packet.identifier, packet.data))
        elif packet.code == F.DISCARD_REQUEST:
            self.discards += 1
        return []

    def echo_request(self, identifier: int) -> bytes:
        return F.encode_control(F.ECHO_REQUEST, identifier, _U32.pack(self.magic if self._send_magic else 0))


def protocol_reject(identifier: int, protocol: int, information: bytes | memoryview, mru: int) -> bytes:
    """An LCP Protocol-Reject for a frame of ``protocol``; the information is truncated to fit ``mru``."""
    room = max(0, mru - 6)
    return F.encode_control(F.PROTOCOL_REJECT, identifier, _U16.pack(protocol) + bytes(information[:room]))


@dataclass
class Keepalive:
    """LCP Echo keepalive: an Echo-Request every ``interval``; dead after ``failures`` intervals in a
    row with neither an Echo-Reply nor any data from the peer.

    Data counts as a sign of life (like pppd's ``lcp-echo-adaptive``): on a lossy path that still
    carries traffic, losing a few echoes in a row must not tear down a working link. The caller passes
    a count of the data packets the peer delivered (``heard``); a count that moved since the last
    request clears the misses, just as a reply does.

    Sans-IO: :meth:`due` says when to send (the caller builds the packet with its own identifier and
    calls :meth:`sent`), :meth:`answered` takes Echo-Replies and returns the round-trip time.
    """

    interval: float
    failures: int
    running: bool = False
    missed: int = 0
    _deadline: float | None = None
    _outstanding: dict[int, float] | None = None
    _heard: int = -1

    def start(self, now: float) -> None:
        if self.interval <= 0 or self.failures <= 0:
            return
        self.running = True
        self.missed = 0
        self._heard = -1
        self._outstanding = {}
        self._deadline = now + self.interval

    def stop(self) -> None:
        self.running = False
        self._deadline = None
        self._outstanding = None

    def next_deadline(self) -> float | None:
        return self._deadline

    @property
    def dead(self) -> bool:
        return self.running and self.missed >= self.failures

    def due(self, now: float) -> bool:
        """True when an Echo-Request should go now (then call :meth:`sent`)."""
        return self.running and self._deadline is not None and now >= self._deadline

    def sent(self, identifier: int, now: float, heard: int = -1) -> None:
        """An Echo-Request went with ``identifier``; ``heard`` counts the peer's data packets so far
        (-1: not tracked)."""
        assert self._outstanding is not None
        if heard >= 0 and heard != self._heard:
            self.missed = 0  # the peer's data arrived during the interval: it is alive
        elif self._outstanding:
            self.missed += 1  # the previous request went unanswered for a whole interval, in silence
        self._heard = heard
        self._outstanding[identifier] = now
        while len(self._outstanding) > 8:
            self._outstanding.pop(next(iter(self._outstanding)))
        self._deadline = now + self.interval

    def answered(self, identifier: int, now: float) -> float | None:
        if not self.running or self._outstanding is None or identifier not in self._outstanding:
            return None
        sent_at = self._outstanding.pop(identifier)
        self._outstanding.clear()
        self.missed = 0
        return max(0.0, now - sent_at)
