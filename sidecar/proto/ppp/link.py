"""The PPP link: phases (RFC 1661 §3), both roles, and the data path.

What lives here: the phase walk Dead -> Establish (LCP) -> Authenticate -> Network (CCP first when
MPPE is wanted, then IPCP and IPV6CP) -> Terminate -> Dead; the dispatch of received frames to the
automata, the authentication machine and the MPPE codec; the keepalive; the one ``LinkUp`` and the
one ``LinkDown`` event. The hallway (``sidecar/tunnel.py``) uses only :class:`PppLink`.

What does not: option details (``lcp.py``, ``ipcp.py``, ``ipv6cp.py``, ``ccp.py``), the automaton
(``fsm.py``), authentication (``auth/``), encryption (``mppe.py``), GRE, sockets, clocks, logging.
Role knowledge is limited to: who authenticates whom, and which addresses the authenticator hands
out.

Theory of operation: every entry point (:meth:`start`, :meth:`receive`, :meth:`timeout`,
:meth:`close`) feeds one automaton or machine, then :meth:`_settle` drains the automata's packets
and layer signals until nothing moves: a signal may open the next layer, whose first packets are
then drained in the same pass. Frames to send and events are collected and handed out by
:meth:`frames_to_send` and :meth:`events`.

Security rule: with MPPE REQUIRE, IPCP is not even opened before CCP agreed on MPPE, so no IP packet
can pass in the clear. Once MPPE is up, a received unencrypted IPv4/IPv6 frame is dropped and
counted, never delivered.

The data path (:meth:`receive` for IP frames, :meth:`send_ip`) reads protocol bytes directly and
builds no objects per packet beyond the bytes themselves.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Final

from sidecar.proto.errors import PppError
from sidecar.proto.ppp import frame as F
from sidecar.proto.ppp.auth.base import (
    Authenticator,
    AuthFailure,
    AuthMethod,
    AuthPeer,
    AuthSuccess,
    make_authenticator,
    make_peer,
)
from sidecar.proto.ppp.ccp import REFUSED_REASON, CcpHandler
from sidecar.proto.ppp.fsm import Automaton, FsmConfig, NegotiationFailed, Signal, State
from sidecar.proto.ppp.ipcp import IpcpHandler
from sidecar.proto.ppp.ipv6cp import Ipv6cpHandler, link_local
from sidecar.proto.ppp.lcp import Keepalive, LcpHandler, protocol_reject
from sidecar.proto.ppp.mppe import MppeCodec, MppeKeySource, MppePolicy
from sidecar.proto.secret import Secret

MPPE_OVERHEAD: Final = 4  # MPPE header (2) + the encrypted protocol field (2)
RESET_RETRY: Final = 1.0
"""Seconds after which a stateful receiver still waiting for a flushed packet asks again (on the next
packet that fails): a lost Reset-Request or flushed packet then costs about a second, not
``restart_interval`` (pppd, too, waits about a second for the Reset-Ack)."""
_MAX_HELD: Final = 4  # NCP packets kept while their layer waits for its turn


class LinkRole(enum.Enum):
    PEER = "peer"  # the sidecar: is authenticated, gets its address
    AUTHENTICATOR = "authenticator"  # the embedded server: authenticates, assigns addresses


class Phase(enum.Enum):
    DEAD = "Dead"
    ESTABLISH = "Establish"
    AUTHENTICATE = "Authenticate"
    NETWORK = "Network"
    TERMINATE = "Terminate"


@dataclass
class LinkConfig:
    mru: int = 1400
    auth_methods: tuple[AuthMethod, ...] = (AuthMethod.MSCHAP_V2,)
    username: str = ""
    password: Secret | None = field(default=None, repr=False)  # peer role
    lookup_secret: Callable[[str], Secret | None] | None = field(default=None, repr=False)  # authenticator
    local_name: str = "pptp-sidecar"
    mppe: MppePolicy = MppePolicy.REQUIRE
    mppe_key_bits: frozenset[int] = frozenset({128, 56, 40})
    mppe_stateful: bool = False
    local_ip: IPv4Address | None = None  # authenticator: its own address
    peer_ip: IPv4Address | None = None  # authenticator: the address it assigns
    dns: tuple[IPv4Address, ...] = ()  # authenticator: DNS servers it hands out
    ipv6: bool = False
    echo_interval: float = 10.0
    echo_failures: int = 3
    restart_interval: float = 3.0
    max_configure: int = 10
    max_terminate: int = 2
    max_failure: int = 5


# -- events -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhaseChanged:
    phase: Phase


@dataclass(frozen=True)
class LcpUp:
    mru: int  # what we receive at most
    peer_mru: int  # what we send at most


@dataclass(frozen=True)
class Authenticated:
    method: AuthMethod
    peer_name: str


@dataclass(frozen=True)
class AuthFailed:
    reason: str
    bad_credentials: bool

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True)
class EncryptionUp:
    key_bits: int
    stateful: bool


@dataclass(frozen=True)
class EncryptionOff:
    reason: str = ""


@dataclass(frozen=True)
class LinkUp:
    local_ip: IPv4Address
    peer_ip: IPv4Address | None
    dns: tuple[IPv4Address, ...]
    mtu: int
    encryption: str  # "MPPE-128 stateless", "MPPE-40 stateful" or "none"
    ipv6_local: IPv6Address | None = None
    ipv6_peer: IPv6Address | None = None


@dataclass(frozen=True)
class EchoRtt:
    seconds: float


@dataclass(frozen=True)
class LinkDown:
    reason: str
    bad_credentials: bool = False

    def __str__(self) -> str:
        return self.reason


LinkEvent = (
    PhaseChanged
    | LcpUp
    | Authenticated
    | AuthFailed
    | EncryptionUp
    | EncryptionOff
    | LinkUp
    | EchoRtt
    | LinkDown
)


@dataclass
class LinkCounters:
    rx_frames: int = 0
    rx_malformed: int = 0
    rx_ip: int = 0
    tx_ip: int = 0
    rx_not_ready: int = 0  # data before the network layer is up
    rx_unencrypted_dropped: int = 0  # clear IP frames while MPPE is in force
    rx_decrypt_dropped: int = 0  # MPPE refused the frame (see the codec's counters for why)
    rx_discarded: int = 0  # control frames not allowed in the current phase
    tx_dropped: int = 0  # send_ip before the link is up / unknown IP version
    protocol_rejects_sent: int = 0
    reset_requests_sent: int = 0
    echo_requests_sent: int = 0


class PppLink:
    """One PPP link over one PPTP call. See the module docstring."""

    def __init__(self, role: LinkRole, config: LinkConfig, rng: random.Random) -> None:
        self.role = role
        self.config = config
        self.rng = rng
        self._other = "server" if role is LinkRole.PEER else "client"
        authenticator = role is LinkRole.AUTHENTICATOR
        if authenticator:
            if config.auth_methods and config.lookup_secret is None:
                raise ValueError("the authenticator role needs lookup_secret to check passwords")
            if config.local_ip is None:
                raise ValueError("the authenticator role needs local_ip (its own tunnel address)")
        self._fsm_config = FsmConfig(
            restart_interval=config.restart_interval,
            max_configure=config.max_configure,
            max_terminate=config.max_terminate,
            max_failure=config.max_failure,
        )
        self._lcp_h = LcpHandler(
            authenticator=authenticator, auth_methods=config.auth_methods, mru=config.mru, rng=rng
        )
        self.lcp = Automaton(self._lcp_h, self._fsm_config)
        self._ipcp_h = IpcpHandler(
            authenticator=authenticator, local_ip=config.local_ip, peer_ip=config.peer_ip, dns=config.dns
        )
        self.ipcp = Automaton(self._ipcp_h, self._fsm_config)
        self._ipv6cp_h = Ipv6cpHandler(rng)
        self.ipv6cp = Automaton(self._ipv6cp_h, self._fsm_config)
        self._ccp_h: CcpHandler | None = None
        self.ccp: Automaton | None = None
        if config.mppe is not MppePolicy.REFUSE:
            self._ccp_h = CcpHandler(
                policy=config.mppe,
                key_bits=config.mppe_key_bits,
                stateful=config.mppe_stateful,
                other=self._other,
            )
            self.ccp = Automaton(self._ccp_h, self._fsm_config)
        self._ncps: dict[int, Automaton] = {}  # the NCP automata that are running
        self._held: dict[int, list[bytes]] = {}  # NCP packets that arrived before their turn
        self.keepalive = Keepalive(config.echo_interval, config.echo_failures)
        self.auth: AuthPeer | Authenticator | None = None
        self.auth_result: AuthSuccess | AuthFailure | None = None
        self._keys: MppeKeySource | None = None
        self.codec: MppeCodec | None = None
        self.encryption = "none"
        self._lcp_was_up = False
        self._ccp_decided = False
        self._ipv6_decided = not config.ipv6
        self._ip_up = False
        self._ipv6_up = False
        self._up_reported = False
        self._down_reported = False
        self.down_reason: str | None = None
        self.link_up: LinkUp | None = None
        self._reset_sent_at: float | None = None
        self._reset_requests_seen = 0
        self._tx_acfc = False
        self._tx_pfc = False
        self._hdr_ip4 = F.frame_header(F.IPV4, acfc=False, pfc=False)
        self._hdr_ip6 = F.frame_header(F.IPV6, acfc=False, pfc=False)
        self._hdr_mppe = F.frame_header(F.COMPRESSED, acfc=False, pfc=False)
        self.phase = Phase.DEAD
        self.counters = LinkCounters()
        self._out: list[bytes] = []
        self._events: list[LinkEvent] = []

    # -- the hallway's API ------------------------------------------------------------------------------
    def start(self, now: float) -> None:
        """The lower layer (the PPTP call) is up: begin LCP."""
        if self.phase is not Phase.DEAD or self._down_reported:
            return
        self._set_phase(Phase.ESTABLISH)
        self.lcp.open(now)
        self.lcp.up(now)
        self._settle(now)

    def assign_peer_ip(self, address: IPv4Address) -> None:
        """Authenticator: the address to give the client in IPCP, when it is known only after the
        link exists (e.g. chosen per user during authentication). Must come before IPCP starts."""
        if self.role is not LinkRole.AUTHENTICATOR:
            raise ValueError("only the authenticator assigns the peer's address")
        if F.IPCP in self._ncps:
            raise ValueError("IPCP has already started; assign the peer address before authentication ends")
        self.config.peer_ip = address
        self._ipcp_h.config_peer = address

    def frames_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def events(self) -> list[LinkEvent]:
        out, self._events = self._events, []
        return out

    def close(self, now: float, reason: str) -> None:
        """Administrative close: LCP Terminate-Request carrying ``reason``."""
        self._go_down(now, reason)
        self._settle(now)

    def next_deadline(self) -> float | None:
        """The earliest timer of LCP, the keepalive, the running NCPs and authentication (the hallway
        asks after every batch: no lists built)."""
        best = self.lcp.next_deadline()
        d = self.keepalive.next_deadline()
        if d is not None and (best is None or d < best):
            best = d
        for fsm in self._ncps.values():
            d = fsm.next_deadline()
            if d is not None and (best is None or d < best):
                best = d
        if self.auth is not None and not self._down_reported:
            d = self.auth.next_deadline()
            if d is not None and (best is None or d < best):
                best = d
        return best

    def timeout(self, now: float) -> None:
        self.lcp.timeout(now)
        for fsm in list(self._ncps.values()):
            fsm.timeout(now)
        if self.auth is not None and not self._down_reported:
            self._send_auth(self.auth.timeout(now))
            self._check_auth(now)
        if self.keepalive.due(now):
            ident = self.lcp.next_identifier()
            self.keepalive.sent(ident, now, self.counters.rx_ip)
            if self.keepalive.dead:
                self.keepalive.stop()
                self._go_down(now, f"the {self._other} stopped answering LCP echo requests")
            else:
                self.counters.echo_requests_sent += 1
                self._out.append(
                    F.encode_frame(F.LCP, self._lcp_h.echo_request(ident), acfc=False, pfc=False)
                )
        self._settle(now)

    # -- receive: the hot path first --------------------------------------------------------------------
    def receive(self, frame: bytes | memoryview, now: float) -> list[bytes]:
        """One PPP frame from GRE. Returns the IP packets it delivers (zero or one)."""
        c = self.counters
        c.rx_frames += 1
        n = len(frame)
        i = 0
        if n >= 2 and frame[0] == 0xFF:
            if frame[1] != 0x03:
                c.rx_malformed += 1
                return []
            i = 2
        if i >= n:
            c.rx_malformed += 1
            return []
        p = frame[i]
        if p & 1:
            protocol = p
            i += 1
        elif i + 1 < n and frame[i + 1] & 1:
            protocol = (p << 8) | frame[i + 1]
            i += 2
        else:
            c.rx_malformed += 1
            return []
        if protocol == F.COMPRESSED:
            return self._receive_mppe(frame, i, now)
        if protocol == F.IPV4 or protocol == F.IPV6:
            return self._receive_clear_ip(protocol, frame, i, now)
        try:
            self._receive_control(protocol, memoryview(frame)[i:], now)
        except PppError:
            c.rx_malformed += 1
        return []

    def _receive_mppe(self, frame: bytes | memoryview, i: int, now: float) -> list[bytes]:
        codec = self.codec
        c = self.counters
        if codec is None:
            c.rx_not_ready += 1
            return []
        plain = codec.decrypt(memoryview(frame)[i:])
        if plain is None:
            c.rx_decrypt_dropped += 1
            if codec.needs_reset or (
                codec.resync_pending
                and (
                    self._reset_sent_at is None
                    or now - self._reset_sent_at >= min(RESET_RETRY, self.config.restart_interval)
                )
            ):
                self._send_reset_request(now)
            return []
        n = len(plain)
        if n and plain[0] & 1:
            protocol, j = plain[0], 1
        elif n >= 2:
            protocol, j = (plain[0] << 8) | plain[1], 2
        else:
            c.rx_malformed += 1
            return []
        if (protocol == F.IPV4 and self._ip_up) or (protocol == F.IPV6 and self._ipv6_up):
            c.rx_ip += 1
            return [plain[j:]]
        c.rx_not_ready += 1
        return []

    def _receive_clear_ip(self, protocol: int, frame: bytes | memoryview, i: int, now: float) -> list[bytes]:
        c = self.counters
        if self.codec is not None:
            c.rx_unencrypted_dropped += 1  # MPPE is in force: never deliver clear text
            return []
        if (protocol == F.IPV4 and self._ip_up) or (protocol == F.IPV6 and self._ipv6_up):
            c.rx_ip += 1
            return [bytes(frame[i:])]
        if protocol == F.IPV6 and not self.config.ipv6 and self.lcp.is_opened:
            self._protocol_reject(protocol, memoryview(frame)[i:])
            self._settle(now)
            return []
        c.rx_not_ready += 1
        return []

    def send_ip(self, packet: bytes, now: float) -> bytes | None:
        """The PPP frame carrying ``packet`` (MPPE applied when in force), or None (dropped, counted)."""
        if not packet or not self._ip_up:
            self.counters.tx_dropped += 1
            return None
        version = packet[0] >> 4
        if version == 4:
            header, field_ = self._hdr_ip4, b"\x00\x21"
        elif version == 6 and self._ipv6_up:
            header, field_ = self._hdr_ip6, b"\x00\x57"
        else:
            self.counters.tx_dropped += 1
            return None
        self.counters.tx_ip += 1
        codec = self.codec
        if codec is not None:
            return codec.encrypt(field_ + packet, self._hdr_mppe)
        return header + packet

    # -- control frames ---------------------------------------------------------------------------------
    def _receive_control(self, protocol: int, info: memoryview, now: float) -> None:
        if protocol == F.LCP:
            self.lcp.receive(info, now)
            self._settle(now)
            return
        if not self.lcp.is_opened or self._down_reported:
            self.counters.rx_discarded += 1  # RFC 1661 §3.4: only LCP before LCP is Opened
            return
        if protocol in (F.PAP, F.CHAP):
            if self.auth is not None and protocol == self.auth.protocol:
                self._send_auth(self.auth.receive(bytes(info), now))
                self._check_auth(now)
            else:
                self._protocol_reject(protocol, info)
            self._settle(now)
            return
        fsm = self._ncps.get(protocol)
        if fsm is not None:
            fsm.receive(info, now)
            self._settle(now)
            return
        if self._will_run(protocol):
            held = self._held.setdefault(protocol, [])
            held.append(bytes(info))
            del held[:-_MAX_HELD]
            self.counters.rx_discarded += 1
            return
        self._protocol_reject(protocol, info)
        self._settle(now)

    def _will_run(self, protocol: int) -> bool:
        """An NCP we run but have not started yet (waiting for authentication or for CCP)."""
        if self.phase not in (Phase.AUTHENTICATE, Phase.NETWORK, Phase.ESTABLISH):
            return False
        if protocol == F.IPCP:
            return True
        if protocol == F.IPV6CP:
            return self.config.ipv6 and not self._ipv6_decided
        if protocol == F.CCP:
            return self.ccp is not None and not self._ccp_decided
        return False

    def _protocol_reject(self, protocol: int, info: bytes | memoryview) -> None:
        self.counters.protocol_rejects_sent += 1
        packet = protocol_reject(self.lcp.next_identifier(), protocol, info, self._lcp_h.tx_mru)
        self._out.append(F.encode_frame(F.LCP, packet, acfc=False, pfc=False))

    def _send_auth(self, packets: list[bytes]) -> None:
        if self.auth is None:
            return
        for p in packets:
            self._out.append(F.encode_frame(self.auth.protocol, p, acfc=self._tx_acfc, pfc=self._tx_pfc))

    def _send_reset_request(self, now: float) -> None:
        if self.codec is None or self.ccp is None:
            return
        self.codec.needs_reset = False
        self._reset_sent_at = now
        self.counters.reset_requests_sent += 1
        packet = F.encode_control(F.RESET_REQUEST, self.ccp.next_identifier())
        self._out.append(F.encode_frame(F.CCP, packet, acfc=self._tx_acfc, pfc=self._tx_pfc))

    # -- settling: drain packets and layer signals until nothing moves ----------------------------------
    def _automata(self) -> list[tuple[int, Automaton]]:
        return [(F.LCP, self.lcp), *self._ncps.items()]

    def _settle(self, now: float) -> None:
        for _ in range(64):
            moved = False
            for protocol, fsm in self._automata():
                for packet in fsm.take_packets():
                    self._out.append(F.encode_frame(protocol, packet, acfc=self._tx_acfc, pfc=self._tx_pfc))
                for signal in fsm.take_signals():
                    moved = True
                    self._on_signal(protocol, fsm, signal, now)
            moved |= self._lcp_extras(now)
            if not moved:
                return

    def _lcp_extras(self, now: float) -> bool:
        h = self._lcp_h
        moved = False
        while h.echo_replies:
            ident, _data = h.echo_replies.pop(0)
            rtt = self.keepalive.answered(ident, now)
            if rtt is not None:
                self._events.append(EchoRtt(rtt))
        while h.rejected_protocols:
            moved = True
            self._peer_rejected(h.rejected_protocols.pop(0), now)
        ccp_h = self._ccp_h
        if ccp_h is not None and ccp_h.reset_requests != self._reset_requests_seen:
            self._reset_requests_seen = ccp_h.reset_requests
            if self.codec is not None:
                self.codec.reset_requested()
        return moved

    def _peer_rejected(self, protocol: int, now: float) -> None:
        if self._down_reported:
            return
        if protocol == F.IPCP:
            self._go_down(now, f"the {self._other} rejected IPCP: it will not carry IPv4")
        elif protocol == F.IPV6CP:
            self._ncps.pop(F.IPV6CP, None)
            self._ipv6_decided = True
            self._ipv6_up = False
            self._maybe_link_up()
        elif protocol == F.CCP:
            self._ncps.pop(F.CCP, None)
            self._ccp_failed(now, REFUSED_REASON)
        elif protocol in (F.PAP, F.CHAP) and self.auth is not None and self.auth_result is None:
            self._go_down(now, f"the {self._other} rejected {self.auth.method.label} authentication")

    def _on_signal(self, protocol: int, fsm: Automaton, signal: Signal, now: float) -> None:
        if protocol == F.LCP:
            self._on_lcp(signal, now)
        elif protocol == F.CCP:
            self._on_ccp(fsm, signal, now)
        elif protocol == F.IPCP:
            self._on_ipcp(signal, now)
        elif protocol == F.IPV6CP:
            self._on_ipv6cp(signal)

    # -- LCP and authentication -------------------------------------------------------------------------
    def _on_lcp(self, signal: Signal, now: float) -> None:
        if signal is Signal.UP:
            self._lcp_opened(now)
        elif signal is Signal.DOWN:
            self.keepalive.stop()
            self._stop_network()
            if not self._down_reported:
                self._go_down(now, self._lcp_reason("renegotiated LCP"))
        elif signal is Signal.FINISHED:
            self.keepalive.stop()
            self._stop_network()
            if not self._down_reported:
                self._go_down(now, self._lcp_reason("closed LCP"))
            self._set_phase(Phase.DEAD)

    def _lcp_reason(self, what: str) -> str:
        lcp = self.lcp
        refusal = self._lcp_h.auth_refusal_reason() if not self._lcp_was_up else None
        if refusal is not None:
            # the server gave up (or went silent) after we refused its authentication method
            said = f" (the server said: {lcp.terminate_text})" if lcp.terminate_text else ""
            return refusal + said
        if lcp.peer_terminated:
            text = lcp.terminate_text
            return f"the {self._other} closed the link" + (f": {text}" if text else "")
        return lcp.reason or f"the {self._other} {what}"

    def _lcp_opened(self, now: float) -> None:
        h = self._lcp_h
        self._lcp_was_up = True
        if self._down_reported:
            return
        self._tx_acfc, self._tx_pfc = h.tx_acfc, h.tx_pfc
        self._hdr_ip4 = F.frame_header(F.IPV4, acfc=h.tx_acfc, pfc=h.tx_pfc)
        self._hdr_ip6 = F.frame_header(F.IPV6, acfc=h.tx_acfc, pfc=h.tx_pfc)
        self._hdr_mppe = F.frame_header(F.COMPRESSED, acfc=h.tx_acfc, pfc=h.tx_pfc)
        self._events.append(LcpUp(mru=h.rx_mru, peer_mru=h.tx_mru))
        self.keepalive.start(now)
        method = h.auth_demanded if self.role is LinkRole.AUTHENTICATOR else h.auth_required
        if method is None:
            refusal = h.withdrawn_auth_reason if self.role is LinkRole.PEER else None
            if refusal is not None:
                # The server asked for a method we refused, then dropped its request instead of
                # offering another: pppd does this and hangs up ("peer refused to authenticate")
                # once LCP is open. Go down with what to change rather than a later, vaguer reason.
                self._go_down(now, refusal)
                return
            self._enter_network(now)
            return
        cfg = self.config
        if self.role is LinkRole.PEER:
            if cfg.password is None:
                self._go_down(
                    now, f"the server requires {method.label} authentication but no password is configured"
                )
                return
            self.auth = make_peer(
                method,
                cfg.username,
                cfg.password,
                self.rng,
                restart_interval=cfg.restart_interval,
                max_transmits=cfg.max_configure,
            )
        else:
            assert cfg.lookup_secret is not None
            self.auth = make_authenticator(
                method,
                cfg.lookup_secret,
                cfg.local_name,
                self.rng,
                restart_interval=cfg.restart_interval,
                max_transmits=cfg.max_configure,
            )
        self._set_phase(Phase.AUTHENTICATE)
        self._send_auth(self.auth.start(now))
        self._check_auth(now)

    def _check_auth(self, now: float) -> None:
        auth = self.auth
        if auth is None or self.auth_result is not None or auth.result is None:
            return
        result = auth.result
        self.auth_result = result
        if isinstance(result, AuthSuccess):
            self._events.append(Authenticated(result.method, result.peer_name))
            self._keys = result.keys
            self._enter_network(now)
        else:
            detail = result.reason.removeprefix("authentication failed: ")  # said once, below
            self._events.append(AuthFailed(detail, result.bad_credentials))
            self._go_down(
                now, f"{result.method.label} authentication failed: {detail}", result.bad_credentials
            )

    # -- the network phase ------------------------------------------------------------------------------
    def _enter_network(self, now: float) -> None:
        if self._down_reported:
            return
        self._set_phase(Phase.NETWORK)
        policy = self.config.mppe
        if policy is MppePolicy.REFUSE or self.ccp is None:
            self._ccp_decided = True
            self._events.append(EncryptionOff("MPPE is refused by configuration"))
            self._open_ip_layers(now)
            return
        if self._keys is None:
            method = self.auth_result.method.label if self.auth_result is not None else "no authentication"
            reason = f"MPPE needs MS-CHAPv1 or MS-CHAPv2 keys and the link used {method}"
            self._ccp_failed(now, reason)
            return
        self._start_ncp(F.CCP, self.ccp, now)

    def _start_ncp(self, protocol: int, fsm: Automaton, now: float) -> None:
        self._ncps[protocol] = fsm
        fsm.open(now)
        fsm.up(now)
        for packet in self._held.pop(protocol, []):
            fsm.receive(packet, now)

    def _open_ip_layers(self, now: float) -> None:
        if self._down_reported or F.IPCP in self._ncps:
            return
        peer_ip = self._ipcp_h.config_peer
        if self.role is LinkRole.AUTHENTICATOR and (peer_ip is None or peer_ip == IPv4Address(0)):
            self._go_down(now, "no IPv4 address to assign to the client")
            return
        self._start_ncp(F.IPCP, self.ipcp, now)
        if self.config.ipv6 and not self._ipv6_decided:
            self._start_ncp(F.IPV6CP, self.ipv6cp, now)

    def _ccp_failed(self, now: float, reason: str) -> None:
        """CCP will not give us MPPE: fail (REQUIRE) or run in the clear (OPTIONAL)."""
        if self._ccp_decided or self._down_reported:
            return
        self._ccp_decided = True
        self._held.pop(F.CCP, None)
        if self.config.mppe is MppePolicy.REQUIRE:
            self._go_down(now, reason)
            return
        if F.CCP in self._ncps and self.ccp is not None and self.ccp.state is not State.OPENED:
            # stop our CCP quietly; the peer's CCP packets now get a Protocol-Reject
            del self._ncps[F.CCP]
        self._events.append(EncryptionOff(reason))
        self._open_ip_layers(now)

    def _on_ccp(self, fsm: Automaton, signal: Signal, now: float) -> None:
        h = self._ccp_h
        assert h is not None
        if signal is Signal.UP:
            if self._ccp_decided:
                return
            try:
                agreed = h.agreement()
            except NegotiationFailed as exc:
                self._ccp_failed(now, exc.reason)
                return
            if agreed is None:
                self._ccp_failed(now, h.off_reason or REFUSED_REASON)
                return
            key_bits, stateful = agreed
            assert self._keys is not None
            send_key, recv_key = self._keys.start_keys(
                key_bits, is_server=self.role is LinkRole.AUTHENTICATOR
            )
            self.codec = MppeCodec(send_key, recv_key, key_bits, stateful)
            self.encryption = f"MPPE-{key_bits} {'stateful' if stateful else 'stateless'}"
            self._ccp_decided = True
            self._events.append(EncryptionUp(key_bits, stateful))
            self._open_ip_layers(now)
        elif signal is Signal.DOWN:
            if self.codec is not None and not self._down_reported:
                self._go_down(now, f"the {self._other} renegotiated CCP; the MPPE session cannot continue")
        elif signal is Signal.FINISHED and not self._ccp_decided:
            reason = fsm.reason or REFUSED_REASON
            if fsm.timed_out:
                # the peer may have opened CCP with MPPE while our side gave up: running on
                # would black-hole traffic (it encrypts, we do not), so this is fatal even
                # when MPPE is optional
                self._go_down(now, f"{reason}; the encryption state is unknown, so the link cannot continue")
                return
            if not fsm.failed and self.config.mppe is MppePolicy.REQUIRE:
                reason = f"{reason}; {REFUSED_REASON}"
            self._ccp_failed(now, reason)

    def _on_ipcp(self, signal: Signal, now: float) -> None:
        if signal is Signal.UP:
            local = self._ipcp_h.local_ip
            if local is None or local == IPv4Address(0):
                self._go_down(now, f"the {self._other} did not assign an IPv4 address")
                return
            self._ip_up = True
            self._maybe_link_up()
        elif signal is Signal.DOWN:
            self._ip_up = False
            if self._up_reported and not self._down_reported:
                self._go_down(now, f"the {self._other} renegotiated IPCP")
        elif signal is Signal.FINISHED and not self._down_reported:
            self._go_down(now, self.ipcp.reason or f"IPCP with the {self._other} finished")

    def _on_ipv6cp(self, signal: Signal) -> None:
        if signal is Signal.UP:
            self._ipv6_up = True
            self._ipv6_decided = True
            self._maybe_link_up()
        elif signal is Signal.DOWN:
            self._ipv6_up = False
        elif signal is Signal.FINISHED:
            self._ipv6_up = False
            self._ipv6_decided = True
            self._ncps.pop(F.IPV6CP, None)
            self._maybe_link_up()

    def _maybe_link_up(self) -> None:
        if self._up_reported or self._down_reported or not self._ip_up or not self._ipv6_decided:
            return
        local = self._ipcp_h.local_ip
        assert local is not None
        mtu = min(self._lcp_h.tx_mru, self._lcp_h.rx_mru) - (MPPE_OVERHEAD if self.codec is not None else 0)
        v6 = self._ipv6_up
        up = LinkUp(
            local_ip=local,
            peer_ip=self._ipcp_h.peer_ip,
            dns=self._ipcp_h.dns if self.role is LinkRole.PEER else self.config.dns,
            mtu=mtu,
            encryption=self.encryption,
            ipv6_local=link_local(self._ipv6cp_h.local_id) if v6 else None,
            ipv6_peer=link_local(self._ipv6cp_h.peer_id) if v6 else None,
        )
        self._up_reported = True
        self.link_up = up
        self._events.append(up)

    # -- going down -------------------------------------------------------------------------------------
    def _stop_network(self) -> None:
        self._ip_up = self._ipv6_up = False
        self._ncps.clear()
        self._held.clear()
        self.codec = None

    def _go_down(self, now: float, reason: str, bad_credentials: bool = False) -> None:
        """The one way down: report LinkDown once, then terminate LCP politely with the reason."""
        if not self._down_reported:
            self._down_reported = True
            self.down_reason = reason
            self._events.append(LinkDown(reason, bad_credentials))
        self.keepalive.stop()
        self._stop_network()
        if self.lcp.state in (State.REQ_SENT, State.ACK_RCVD, State.ACK_SENT, State.OPENED):
            self.lcp.close(now, reason)
            self._set_phase(Phase.TERMINATE)
        elif self.lcp.state is State.STOPPING or self.lcp.state is State.CLOSING:
            self._set_phase(Phase.TERMINATE)
        elif self.lcp.state is State.STARTING:
            self.lcp.close(now, reason)
            self._set_phase(Phase.DEAD)
        else:
            self._set_phase(Phase.DEAD)

    def _set_phase(self, phase: Phase) -> None:
        if phase is not self.phase:
            self.phase = phase
            self._events.append(PhaseChanged(phase))
