"""Fuzz targets for PPP: the frame / control packet / option codecs, the RFC 1661 automaton with a
toy option handler, the real LCP / IPCP / IPV6CP / CCP handlers driven through the automaton against
a twin, and each handler's option judgement alone."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from functools import partial
from ipaddress import IPv4Address

from fuzz.common import (
    InvariantError,
    Reader,
    blob,
    check,
    check_counters,
    check_deadline,
    decoder_guard,
    u8,
    u16,
)
from sidecar.proto.errors import PppError
from sidecar.proto.ppp import frame as F
from sidecar.proto.ppp.auth.base import AuthMethod
from sidecar.proto.ppp.ccp import CcpHandler
from sidecar.proto.ppp.frame import ControlPacket, Option
from sidecar.proto.ppp.fsm import (
    Automaton,
    Event,
    FsmConfig,
    Judgement,
    NegotiationFailed,
    OptionHandler,
    Signal,
    State,
    Verdict,
)
from sidecar.proto.ppp.ipcp import IpcpHandler
from sidecar.proto.ppp.ipv6cp import Ipv6cpHandler
from sidecar.proto.ppp.lcp import LcpHandler
from sidecar.proto.ppp.mppe import MppePolicy, parse_mppe_option

# -- codecs -------------------------------------------------------------------------------------------


def target_ppp_frame(data: bytes) -> None:
    """decode_frame, decode_control, decode_options: only PppError; round trips are stable."""
    got = decoder_guard(lambda: F.decode_frame(data))
    if got is not None:
        protocol, info = got
        for acfc in (False, True):
            for pfc in (False, True):
                try:
                    wire = F.encode_frame(protocol, info, acfc=acfc, pfc=pfc)
                    p2, i2 = F.decode_frame(wire)
                except PppError as exc:
                    raise InvariantError(
                        f"frame round trip: encode_frame/decode_frame fail on a frame decode_frame accepted"
                        f" (protocol 0x{protocol:04x}, acfc={acfc}, pfc={pfc}): {exc}"
                    ) from exc
                check(
                    (p2, bytes(i2)) == (protocol, bytes(info)),
                    f"frame round trip: re-encoding changed the frame (acfc={acfc}, pfc={pfc}):"
                    f" 0x{protocol:04x}/{bytes(info).hex()} -> 0x{p2:04x}/{bytes(i2).hex()}",
                )
    packet = decoder_guard(lambda: F.decode_control(data))
    if packet is not None:
        str(packet)
        try:
            wire = F.encode_control(packet.code, packet.identifier, packet.data)
        except PppError as exc:
            raise InvariantError(f"decode_control accepted a packet encode_control refuses: {exc}") from exc
        check(F.decode_control(wire) == packet, "control packet round trip changed the packet")
        check(wire == bytes(data[: packet.length]), "control packet re-encoding differs from the input")
        _options_round_trip(packet.data)
    _options_round_trip(data)


def _options_round_trip(data: bytes) -> None:
    options = decoder_guard(lambda: F.decode_options(data))
    if options is None:
        return
    try:
        wire = F.encode_options(options)
    except (PppError, ValueError) as exc:
        raise InvariantError(f"decode_options accepted options encode_options refuses: {exc}") from exc
    check(wire == bytes(data), "option list re-encoding differs from the input")
    check(F.decode_options(wire) == options, "option list round trip changed the options")


# -- handlers -----------------------------------------------------------------------------------------


class ToyHandler(OptionHandler):
    """Exercises every automaton path: Acks, Naks (with hints), Rejects, extra codes, failures."""

    name = "TOY"
    extra_codes = frozenset({9, 10, 11, 14, 15})

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.want = {1: b"\x05\xdc", 5: b"\x00\x00\x00\x01", 7: b""}

    def build_request(self) -> list[Option]:
        return [Option(t, d) for t, d in sorted(self.want.items())]

    def on_nak(self, options: list[Option]) -> None:
        for o in options:
            if o.type in self.want:
                self.want[o.type] = o.data[:8]

    def on_reject(self, options: list[Option]) -> None:
        for o in options:
            if o.type == 1:
                raise NegotiationFailed("TOY: option 1 is essential")
            self.want.pop(o.type, None)

    def judge(self, options: list[Option]) -> list[Judgement]:
        out: list[Judgement] = []
        for o in options:
            kind = o.type % 4
            if kind == 0 or (kind == 1 and o.data == b"\x01"):
                out.append(Verdict.ACK)
            elif kind == 1:
                out.append(Option(o.type, b"\x01"))
            elif kind == 2:
                out.append(Verdict.REJECT)
            elif o.type == 0xFF:
                raise NegotiationFailed("TOY: option 255 ends it")
            else:
                out.append(Verdict.ACK)
        return out

    def hints(self, options: list[Option]) -> list[Option]:
        return [Option(9, b"\x01")] if all(o.type != 9 for o in options) and len(options) == 3 else []

    def classify_extra(self, packet: ControlPacket) -> Event | None:
        return {9: Event.RXR, 10: Event.RXR, 11: None, 14: Event.RXJ_PLUS, 15: Event.RXJ_MINUS}[packet.code]

    def on_rxr(self, packet: ControlPacket) -> list[bytes]:
        return [F.encode_control(10, packet.identifier, packet.data[:16])] if packet.code == 9 else []


PairMaker = Callable[[Reader], tuple[OptionHandler, OptionHandler]]


def _toy_pair(r: Reader) -> tuple[OptionHandler, OptionHandler]:
    return ToyHandler(random.Random(1)), ToyHandler(random.Random(2))


_METHOD_SETS: tuple[tuple[AuthMethod, ...], ...] = (
    (AuthMethod.MSCHAP_V2,),
    (AuthMethod.MSCHAP_V2, AuthMethod.MSCHAP_V1, AuthMethod.CHAP_MD5, AuthMethod.PAP),
    (AuthMethod.PAP,),
    (),
    (AuthMethod.CHAP_MD5, AuthMethod.MSCHAP_V1),
)


def _lcp_pair(r: Reader) -> tuple[OptionHandler, OptionHandler]:
    s = r.u8()
    ours = _METHOD_SETS[s % len(_METHOD_SETS)]
    theirs = _METHOD_SETS[(s >> 3) % len(_METHOD_SETS)]
    we_authenticate = bool(s & 0x80)
    mru = 128 + r.u16() % (0x10000 - 128)
    rng = random.Random(r.u16())
    a = LcpHandler(authenticator=we_authenticate, auth_methods=ours, mru=mru, rng=rng)
    b = LcpHandler(authenticator=not we_authenticate, auth_methods=theirs, mru=1400, rng=random.Random(7))
    return a, b


def _ipcp_pair(r: Reader) -> tuple[OptionHandler, OptionHandler]:
    s = r.u8()
    local, peer = IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2")
    dns = (IPv4Address("9.9.9.9"), IPv4Address("1.1.1.1"))[: s % 3]
    server = IpcpHandler(authenticator=True, local_ip=local, peer_ip=peer if s & 4 else None, dns=dns)
    client = IpcpHandler(authenticator=False, request_dns=bool(s & 8))
    return (server, client) if s & 0x80 else (client, server)


def _ipv6cp_pair(r: Reader) -> tuple[OptionHandler, OptionHandler]:
    seed = r.u16()
    return Ipv6cpHandler(random.Random(seed)), Ipv6cpHandler(random.Random(seed if seed & 1 else seed + 1))


_KEY_SETS = (
    frozenset({128, 56, 40}),
    frozenset({128}),
    frozenset({40}),
    frozenset({56, 40}),
)


def _ccp_pair(r: Reader) -> tuple[OptionHandler, OptionHandler]:
    s = r.u8()
    policies = (MppePolicy.REQUIRE, MppePolicy.OPTIONAL)
    a = CcpHandler(
        policy=policies[s & 1], key_bits=_KEY_SETS[(s >> 1) % 4], stateful=bool(s & 8), other="server"
    )
    b = CcpHandler(
        policy=policies[(s >> 4) & 1],
        key_bits=_KEY_SETS[(s >> 5) % 4],
        stateful=bool(s & 0x80),
        other="client",
    )
    return a, b


_TIMER_STATES = frozenset({State.CLOSING, State.STOPPING, State.REQ_SENT, State.ACK_RCVD, State.ACK_SENT})


class _FsmWatch:
    def __init__(self, fsm: Automaton, what: str) -> None:
        self.fsm = fsm
        self.what = what
        self.last_request: ControlPacket | None = None

    def packets(self) -> list[bytes]:
        out = self.fsm.take_packets()
        for p in out:
            check(isinstance(p, bytes), f"{self.what} produced {type(p).__name__}, not bytes")
            try:
                packet = F.decode_control(p)
            except PppError as exc:
                raise InvariantError(f"{self.what} sent a malformed control packet {p.hex()}: {exc}") from exc
            check(packet.length == len(p), f"{self.what} sent a packet with trailing bytes: {p.hex()}")
            if packet.code in (F.CONFIGURE_REQUEST, F.CONFIGURE_ACK, F.CONFIGURE_NAK, F.CONFIGURE_REJECT):
                try:
                    F.decode_options(packet.data)
                except PppError as exc:
                    raise InvariantError(f"{self.what} sent bad options in {packet}: {exc}") from exc
            if packet.code == F.CONFIGURE_REQUEST:
                self.last_request = packet
        return out

    def state(self) -> None:
        fsm = self.fsm
        for s in fsm.take_signals():
            check(isinstance(s, Signal), f"{self.what} signal {s!r}")
        check(isinstance(fsm.state, State), f"{self.what} state {fsm.state!r}")
        check_deadline(fsm.next_deadline(), self.what)
        check_counters(fsm.counters, f"{self.what}.counters")
        if fsm.state not in _TIMER_STATES:
            check(fsm.next_deadline() is None, f"{self.what} in {fsm.state.name} has a deadline")
        else:
            check(
                fsm.next_deadline() is not None,
                f"{self.what} in {fsm.state.name} has no restart timer: it would wait forever",
            )
        if fsm.reason is not None:
            check(isinstance(fsm.reason, str), f"{self.what}.reason is {fsm.reason!r}")


def _admin(fsm: Automaton, which: int, now: float) -> None:
    """Administrative events: a PppError for an event the table lacks is the documented answer
    (the link must not send it); it must leave the state unchanged."""
    before = fsm.state
    try:
        if which == 0:
            fsm.up(now)
        elif which == 1:
            fsm.down(now)
        elif which == 2:
            fsm.open(now)
        else:
            fsm.close(now, "fuzz close")
    except PppError:
        check(fsm.state is before, f"illegal admin event changed the state {before.name} -> {fsm.state.name}")


def _random_options(r: Reader) -> bytes:
    n = r.u8() % 6
    out = b""
    for _ in range(n):
        t = r.u8()
        d = r.take(r.u8() % 12)
        out += Option(t, d).encode()
    return out


def negotiation_target(make_pair: PairMaker, protocol_name: str) -> Callable[[bytes], None]:
    def target(data: bytes) -> None:
        r = Reader(data)
        setup = r.u8()
        cfg = FsmConfig(
            restart_interval=1.0,
            max_configure=1 + setup % 10,
            max_terminate=1 + (setup >> 4) % 3,
            max_failure=(setup >> 6) % 4,
        )
        ha, hb = make_pair(r)
        a, b = Automaton(ha, cfg), Automaton(hb, FsmConfig())
        wa, wb = _FsmWatch(a, f"{protocol_name} A"), _FsmWatch(b, f"{protocol_name} B")
        now = 0.0
        b.open(now)
        b.up(now)
        if setup & 0x08:
            a.open(now)
            a.up(now)
        to_a: list[bytes] = wb.packets()
        history: list[bytes] = list(to_a)
        wb.state()
        wa.state()
        for op in r.ops(11):
            if op == 0:
                a.receive(r.blob(), now)
            elif op == 1:
                code = r.u8() % 17
                ident = r.u8()
                if r.u8() & 1 and wa.last_request is not None:
                    ident = wa.last_request.identifier
                a.receive(F.encode_control(code, ident, _random_options(r)), now)
            elif op == 2:  # the peer acks our last request exactly
                if wa.last_request is not None:
                    req = wa.last_request
                    a.receive(F.encode_control(F.CONFIGURE_ACK, req.identifier, req.data), now)
            elif op == 3:  # Nak / Reject of our last request, with fuzzed values
                if wa.last_request is not None:
                    req = wa.last_request
                    opts = F.decode_options(req.data)
                    pick = r.u8()
                    chosen = [o for i, o in enumerate(opts) if pick >> (i % 8) & 1]
                    code = F.CONFIGURE_NAK if r.u8() & 1 else F.CONFIGURE_REJECT
                    if code == F.CONFIGURE_NAK:
                        chosen = [Option(o.type, r.take(len(o.data))) for o in chosen]
                    a.receive(F.encode_control(code, req.identifier, F.encode_options(chosen)), now)
            elif op == 4:
                _admin(a, r.u8() % 4, now)
            elif op == 5:
                now += r.u8() / 50.0
                a.timeout(now)
                b.timeout(now)
            elif op == 6:
                d = a.next_deadline()
                if d is not None:
                    now = max(now, d)
                a.timeout(now)
                b.timeout(now)
            elif op == 7:  # one exchange with the twin
                for p in to_a:
                    a.receive(p, now)
                to_a = []
                for p in wa.packets():
                    b.receive(p, now)
                to_a = wb.packets()
                history += to_a
                del history[:-16]
            elif op == 8:  # an extra-code packet (Echo, Discard, Protocol-Reject, Reset...)
                codes = sorted(ha.extra_codes) or [9]
                code = codes[r.u8() % len(codes)]
                a.receive(F.encode_control(code, r.u8(), r.blob()), now)
            elif op == 9:  # a retransmission / duplicate of something the twin sent earlier
                if history:
                    a.receive(history[r.u8() % len(history)], now)
            else:
                _admin(b, r.u8() % 4, now)
                to_a += wb.packets()
            if op != 7:
                for p in wa.packets():  # what A sends reaches B (unless the fuzzer drops it)
                    if not r.u8() & 0x80:
                        b.receive(p, now)
                to_a += wb.packets()
            wa.state()
            wb.state()
            _handler_invariants(ha, a)

    target.__name__ = f"target_{protocol_name.lower()}"
    target.__doc__ = (
        f"{protocol_name} options through the RFC 1661 automaton against a twin: raw and structured "
        "packets, Acks/Naks/Rejects of our requests, admin events, timers, duplicates."
    )
    return target


def _handler_invariants(h: OptionHandler, fsm: Automaton) -> None:
    if isinstance(h, LcpHandler):
        check(h.tx_mru >= 128 and h.rx_mru >= 128, f"LCP MRU below 128: tx {h.tx_mru}, rx {h.rx_mru}")
    elif isinstance(h, CcpHandler):
        for side in (h.tx, h.rx):
            if side is not None:
                check(not side.mppc, "CCP agreed to MPPC compression, which we refuse")


# -- option judgement alone ---------------------------------------------------------------------------


def _all_handlers(seed: int) -> list[OptionHandler]:
    rng = random.Random(seed)
    hs: list[OptionHandler] = []
    for methods in _METHOD_SETS:
        for auth in (False, True):
            hs.append(LcpHandler(authenticator=auth, auth_methods=methods, mru=1400, rng=rng))
    local, peer = IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2")
    hs.append(IpcpHandler(authenticator=True, local_ip=local, peer_ip=peer, dns=(local, peer)))
    hs.append(IpcpHandler(authenticator=True, local_ip=local))
    hs.append(IpcpHandler(authenticator=False))
    hs.append(Ipv6cpHandler(rng))
    for policy in (MppePolicy.REQUIRE, MppePolicy.OPTIONAL):
        for keys in _KEY_SETS:
            for stateful in (False, True):
                hs.append(CcpHandler(policy=policy, key_bits=keys, stateful=stateful))
    return hs


def target_ppp_options(data: bytes) -> None:
    """Every option handler's judge / hints / on_nak / on_reject / on_peer_ack with any option list,
    plus parse_mppe_option and AuthMethod.from_option_data. Only NegotiationFailed (documented) may
    come out; Nak suggestions must be encodable options."""
    r = Reader(data)
    seed = r.u8()
    options = decoder_guard(lambda: F.decode_options(r.data[r.pos :]))
    if options is None:
        return
    for o in options:
        decoder_guard(partial(parse_mppe_option, o.data))
        AuthMethod.from_option_data(o.data)
    for h in _all_handlers(seed):
        try:
            verdicts = h.judge(options)
        except NegotiationFailed as exc:
            check(bool(exc.reason), f"{h.name}: NegotiationFailed without a reason")
            continue
        check(
            len(verdicts) == len(options), f"{h.name}.judge gave {len(verdicts)} verdicts for {len(options)}"
        )
        for v in verdicts:
            if isinstance(v, Option):
                check(len(v.data) <= 253, f"{h.name} Naks with an option too long to encode")
                v.encode()
            else:
                check(v in (Verdict.ACK, Verdict.REJECT), f"{h.name} verdict {v!r}")
        for nak in h.hints(options):
            nak.encode()
        acked = [o for o, v in zip(options, verdicts, strict=True) if v is Verdict.ACK]
        if len(acked) == len(options):
            h.on_peer_ack(acked)
        for method in (h.on_nak, h.on_reject):
            with contextlib.suppress(NegotiationFailed):
                method(options)
        for o in h.build_request():
            o.encode()


# -- seeds --------------------------------------------------------------------------------------------


def seeds() -> dict[str, list[bytes]]:
    lcp_req = F.encode_control(
        F.CONFIGURE_REQUEST,
        1,
        F.encode_options(
            [Option(1, b"\x05\x78"), Option(3, b"\xc2\x23\x81"), Option(5, b"\x12\x34\x56\x78")]
        ),
    )
    frames = [
        F.encode_frame(F.LCP, lcp_req, acfc=False, pfc=False),
        F.encode_frame(F.IPCP, F.encode_control(1, 2, Option(3, bytes(4)).encode()), acfc=True, pfc=True),
        F.encode_frame(F.IPV4, b"\x45\x00\x00\x14" + bytes(16), acfc=True, pfc=True),
        F.encode_frame(F.COMPRESSED, b"\x90\x00\x01\x02\x03", acfc=False, pfc=True),
        F.encode_frame(
            F.CCP, F.encode_control(1, 3, Option(18, b"\x01\x00\x00\x40").encode()), acfc=False, pfc=False
        ),
    ]
    negotiation: list[bytes] = []
    for setup in (0x08, 0x09, 0x4B, 0x88, 0xC8):
        for pair_byte in (0x00, 0x81, 0x0C, 0x9A):
            ops = (u8(7) * 6) + u8(3) + u8(0xFF) + u8(1) + b"\x00\x05\xdc" + u8(7) * 3
            ops += u8(6) + u8(6) + u8(5) + u8(200) + u8(8) + u8(1) + blob(b"\x00\x00\x00\x00") + u8(9) + u8(1)
            negotiation.append(u8(setup) + u8(pair_byte) + u16(1400) + u16(1) + ops)
    options = [
        u8(0) + F.encode_options([Option(1, b"\x05\xdc"), Option(3, b"\xc0\x23"), Option(5, bytes(4))]),
        u8(1)
        + F.encode_options([Option(3, bytes(4)), Option(129, bytes(4)), Option(131, b"\x08\x08\x08\x08")]),
        u8(2) + F.encode_options([Option(18, b"\x01\x00\x00\x60"), Option(26, b"\x0f")]),
        u8(3) + F.encode_options([Option(1, b"\x01\x02\x03\x04\x05\x06\x07\x08")]),
    ]
    return {
        "ppp_frame": [*frames, lcp_req],
        "ppp_fsm": negotiation,
        "lcp": negotiation,
        "ipcp": negotiation,
        "ipv6cp": negotiation,
        "ccp": negotiation,
        "ppp_options": options,
    }


target_ppp_fsm = negotiation_target(_toy_pair, "FSM")
target_lcp = negotiation_target(_lcp_pair, "LCP")
target_ipcp = negotiation_target(_ipcp_pair, "IPCP")
target_ipv6cp = negotiation_target(_ipv6cp_pair, "IPV6CP")
target_ccp = negotiation_target(_ccp_pair, "CCP")
