"""Fuzz target for one whole session (``sidecar/stack.py``: ControlConnection + GreSession + PppLink
wired together), a client stack against a server stack over a fuzzed wire: injected TCP bytes and
GRE packets (raw, or well-formed for the live call), loss, replays, timers, ``send_ip``, ``close``."""

from __future__ import annotations

import contextlib
import random
from ipaddress import IPv4Address

from fuzz.common import InvariantError, Reader, blob, check, check_counters, check_deadline, u8, u16
from fuzz.t_link import _configs
from sidecar.proto.errors import GreError
from sidecar.proto.gre import decode_header, encode_packet
from sidecar.proto.ppp.link import LinkRole, PppLink
from sidecar.proto.pptp import ControlConfig, ControlConnection, Role, StreamDecoder
from sidecar.stack import Outcome, SessionStack


class _Side:
    def __init__(self, stack: SessionStack, name: str) -> None:
        self.stack = stack
        self.name = name
        self.out = StreamDecoder()
        self.outcome: Outcome | None = None
        self.tcp: list[bytes] = []  # bytes this side sent, not yet delivered
        self.gre: list[bytes] = []

    def collect(self, now: float) -> None:
        s = self.stack
        data = s.control_to_send()
        if data:
            _, err = self.out.feed_partial(data)
            check(err is None, f"{self.name} stack sent bytes that are not PPTP: {err}")
            self.tcp.append(data)
        for p in s.gre_to_send(now):
            try:
                decode_header(p)
            except GreError as exc:
                raise InvariantError(f"{self.name} stack sent a bad GRE packet {p.hex()}: {exc}") from exc
            self.gre.append(p)
        for ev in s.events(now):
            try:
                str(ev).encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvariantError(f"{type(ev).__name__} text is not encodable as UTF-8: {exc}") from exc

    def state(self) -> None:
        s = self.stack
        check_deadline(s.next_deadline(), f"{self.name} stack")
        check_counters(s.counters, f"{self.name} stack.counters")
        if self.outcome is not None:
            check(s.outcome == self.outcome, f"{self.name} outcome changed: {self.outcome} -> {s.outcome}")
        self.outcome = s.outcome
        if s.gre is not None:
            check(len(s.gre.reorder) <= s.gre.reorder.window, f"{self.name} reorder buffer over its window")
        check(isinstance(s.finished(), bool), "finished() is not a bool")


def _stack(role: Role, link: PppLink, seed: int, window: int) -> SessionStack:
    control = ControlConnection(role, ControlConfig(echo_interval=5.0, call_timeout=3.0), random.Random(seed))
    return SessionStack(control, lambda: link, reorder_window=window, reorder_timeout=0.1)


def target_stack(data: bytes) -> None:
    """Two SessionStacks (client, server) over a fuzzed wire. Nothing escapes; the outcome, once
    set, never changes; what each side sends decodes; deadlines finite; counters >= 0."""
    r = Reader(data)
    setup = r.u8()
    extra = r.u8()
    seed = r.u16()
    client_cfg, server_cfg = _configs(setup & 0x7E, extra & 0x3F)
    window = (0, 4, 30, 64)[(setup >> 6) & 3]
    client = _stack(Role.CLIENT, PppLink(LinkRole.PEER, client_cfg, random.Random(seed)), seed, window)
    server = _stack(
        Role.SERVER, PppLink(LinkRole.AUTHENTICATOR, server_cfg, random.Random(seed + 1)), seed + 2, window
    )
    sides = [_Side(client, "client"), _Side(server, "server")]
    now = 100.0
    client.start(now)
    server.start(now)
    history: list[bytes] = []

    def pump(rounds: int, drop: int = 0) -> None:
        for i in range(rounds):
            for a, b in ((sides[0], sides[1]), (sides[1], sides[0])):
                a.collect(now)
                for chunk in a.tcp:
                    b.stack.control_received(chunk, now)
                a.tcp.clear()
                for k, p in enumerate(a.gre):
                    history.append(p)
                    if not (drop >> ((i + k) % 8)) & 1:
                        b.stack.gre_received(p, now)
                a.gre.clear()
        del history[:-24]

    pump(r.u8() % 16)  # how far the session gets before the fuzzed operations
    for side in sides:
        side.state()
    for op in r.ops(11):
        target = sides[r.u8() & 1]
        s = target.stack
        if op == 0:
            s.control_received(r.blob(), now)
        elif op == 1:
            s.gre_received(r.blob(), now)
        elif op == 2:  # a well-formed GRE packet for the live call, fuzzed numbers and payload
            if s.gre is not None:
                flags = r.u8()
                seq = r.u32() if flags & 1 else None
                ack = r.u32() if flags & 2 or seq is None else None
                payload = r.blob() if seq is not None else b""
                s.gre_received(encode_packet(s.gre.local_call_id, payload, seq, ack), now)
        elif op == 3:
            pump(1 + r.u8() % 4, drop=r.u8())
        elif op == 4:
            now += r.u16() / 1000.0
            for side in sides:
                side.stack.timeout(now)
        elif op == 5:
            d = s.next_deadline()
            if d is not None:
                now = max(now, d)
            for side in sides:
                side.stack.timeout(now)
        elif op == 6:
            for p in s.send_ip(b"\x45" + r.blob(), now):
                other = sides[1] if target is sides[0] else sides[0]
                other.stack.gre_received(p, now)
        elif op == 7:
            s.close(now, "fuzz close", grace=r.u8() / 50.0)
        elif op == 8:
            s.control_received(b"", now)  # the peer closed the TCP connection
        elif op == 9:
            if history:
                s.gre_received(history[r.u8() % len(history)], now)
        else:
            s.send_room()
            if r.u8() & 1:
                s.window_stalled()
            if r.u8() & 1 and target is sides[1]:
                # documented ValueError once IPCP has started (a caller error, not network input)
                with contextlib.suppress(ValueError):
                    s.set_peer_ip(IPv4Address(r.u32()))
        for side in sides:
            side.collect(now)
            side.state()


def seeds() -> dict[str, list[bytes]]:
    out: list[bytes] = []
    for setup in (0x00, 0x02, 0x08, 0x10, 0x40, 0x80, 0xC0, 0x4A):
        for extra in (0, 1, 3):
            for rounds in (0, 3, 8, 15):
                ops = u8(3) + u8(0) + u8(3) + u8(0) + u8(6) + u8(0) + blob(b"\x00\x00\x14" + bytes(17))
                ops += (
                    u8(6)
                    + u8(1)
                    + blob(b"\x00\x00\x14")
                    + u8(4)
                    + u8(0)
                    + u16(2000)
                    + u8(3)
                    + u8(1)
                    + u8(2)
                    + u8(0)
                )
                ops += (
                    u8(2)
                    + u8(1)
                    + u8(1)
                    + u8(0)
                    + u8(0)
                    + u8(0)
                    + u8(9)
                    + blob(b"\x21abc")
                    + u8(9)
                    + u8(0)
                    + u8(3)
                )
                ops += (
                    u8(7)
                    + u8(rounds & 1)
                    + u8(90)
                    + u8(3)
                    + u8(0)
                    + u8(2)
                    + u8(0)
                    + u8(5)
                    + u8(0)
                    + u8(3)
                    + u8(1)
                    + u8(0)
                )
                out.append(u8(setup) + u8(extra) + u16(setup + extra) + u8(rounds) + ops)
    return {"stack": out}
