"""Fuzz target for the PPP link (``PppLink``): both roles, every phase, against a real twin link of
the other role; raw frames, structured control frames for every protocol, encrypted data, replays,
timers, ``send_ip`` and ``close``."""

from __future__ import annotations

import contextlib
import random
from ipaddress import IPv4Address

from fuzz.common import InvariantError, Reader, blob, check, check_counters, check_deadline, u8, u16
from sidecar.proto.errors import PppError
from sidecar.proto.ppp import frame as F
from sidecar.proto.ppp.auth.base import AuthMethod
from sidecar.proto.ppp.frame import Option
from sidecar.proto.ppp.link import (
    Authenticated,
    AuthFailed,
    EchoRtt,
    EncryptionOff,
    EncryptionUp,
    LcpUp,
    LinkConfig,
    LinkDown,
    LinkRole,
    LinkUp,
    Phase,
    PhaseChanged,
    PppLink,
)
from sidecar.proto.ppp.mppe import MppePolicy
from sidecar.proto.secret import Secret

USER = "alice"
PASSWORD = "fuzz-link-Pa55word"
METHOD_SETS = (
    (AuthMethod.MSCHAP_V2,),
    (AuthMethod.MSCHAP_V1,),
    (AuthMethod.CHAP_MD5,),
    (AuthMethod.PAP,),
    (AuthMethod.MSCHAP_V2, AuthMethod.PAP),
    (),
)
POLICIES = (MppePolicy.REQUIRE, MppePolicy.OPTIONAL, MppePolicy.REFUSE)
PROTOCOLS = (F.LCP, F.PAP, F.CHAP, F.CCP, F.IPCP, F.IPV6CP, F.IPV4, F.IPV6, F.COMPRESSED, 0x8281, 0x002D)
EVENT_TYPES = (
    PhaseChanged,
    LcpUp,
    Authenticated,
    AuthFailed,
    EncryptionUp,
    EncryptionOff,
    LinkUp,
    EchoRtt,
    LinkDown,
)
# prelude: how many twin round trips before the fuzzed operations (0 = not even started)
PRELUDE_ROUNDS = (0, 1, 2, 3, 4, 6, 9, 14)


def _configs(setup: int, extra: int, assign_later: bool = False) -> tuple[LinkConfig, LinkConfig]:
    methods = METHOD_SETS[extra % len(METHOD_SETS)]
    server_methods = METHOD_SETS[(extra >> 3) % len(METHOD_SETS)] if extra & 0x40 else methods
    policy = POLICIES[(setup >> 1) % 3]
    server_policy = POLICIES[(extra >> 1) % 3] if extra & 0x80 else policy
    ipv6 = bool(setup & 0x08)
    stateful = bool(setup & 0x10)
    client = LinkConfig(
        username=USER,
        password=Secret(PASSWORD),
        auth_methods=methods,
        mppe=policy,
        mppe_stateful=stateful,
        ipv6=ipv6,
        echo_interval=2.0 if setup & 0x20 else 0,
        restart_interval=1.0,
        max_configure=4,
    )
    server = LinkConfig(
        lookup_secret=lambda name: Secret(PASSWORD) if name == USER else None,
        local_name="fuzzsrv",
        auth_methods=server_methods,
        local_ip=IPv4Address("10.7.0.1"),
        peer_ip=None if assign_later else IPv4Address("10.7.0.2"),
        dns=(IPv4Address("10.7.0.53"),),
        mppe=server_policy,
        mppe_stateful=stateful,
        ipv6=ipv6,
        echo_interval=2.0 if setup & 0x40 else 0,
        restart_interval=1.0,
        max_configure=4,
    )
    return client, server


class _LinkWatch:
    def __init__(self, link: PppLink, what: str) -> None:
        self.link = link
        self.what = what
        self.ups = 0
        self.downs = 0

    def frames(self) -> list[bytes]:
        out = self.link.frames_to_send()
        for fr in out:
            try:
                protocol, info = F.decode_frame(fr)
                if protocol in (F.LCP, F.CCP, F.IPCP, F.IPV6CP, F.PAP, F.CHAP):
                    F.decode_control(info)
            except PppError as exc:
                raise InvariantError(f"{self.what} sent a malformed frame {fr.hex()}: {exc}") from exc
        return out

    def events(self) -> None:
        for ev in self.link.events():
            check(isinstance(ev, EVENT_TYPES), f"{self.what} event {ev!r}")
            text = str(ev) + repr(ev)
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvariantError(f"{type(ev).__name__} text is not encodable as UTF-8: {exc}") from exc
            check(PASSWORD not in text, f"{self.what} event shows the password: {type(ev).__name__}")
            if isinstance(ev, LinkUp):
                self.ups += 1
                check(self.ups == 1, f"{self.what} reported LinkUp twice")
                check(self.downs == 0, f"{self.what} reported LinkUp after LinkDown")
                check(ev.mtu > 0, f"{self.what} LinkUp with MTU {ev.mtu}")
                if self.link.config.mppe is MppePolicy.REQUIRE:
                    check(ev.encryption != "none", f"{self.what} came up unencrypted under MPPE REQUIRE")
            elif isinstance(ev, LinkDown):
                self.downs += 1
                check(self.downs == 1, f"{self.what} reported LinkDown twice")
                check(bool(ev.reason), f"{self.what} LinkDown without a reason")

    def delivered(self, frame: bytes, packets: list[bytes]) -> None:
        check(isinstance(packets, list), f"{self.what}.receive returned {type(packets).__name__}")
        if not packets:
            return
        check(len(packets) == 1, f"{self.what} delivered {len(packets)} packets from one frame")
        check(all(isinstance(p, bytes) for p in packets), f"{self.what} delivered non-bytes")
        if self.link.config.mppe is MppePolicy.REQUIRE:
            protocol, _ = F.decode_frame(frame)
            check(
                protocol == F.COMPRESSED,
                f"{self.what} delivered a clear-text IP packet (protocol 0x{protocol:04x})"
                " under MPPE REQUIRE",
            )

    def state(self) -> None:
        link = self.link
        check(isinstance(link.phase, Phase), f"{self.what} phase {link.phase!r}")
        check_deadline(link.next_deadline(), self.what)
        check_counters(link.counters, f"{self.what}.counters")
        for name in ("lcp", "ipcp", "ipv6cp", "ccp"):
            fsm = getattr(link, name, None)
            if fsm is not None:
                check_counters(fsm.counters, f"{self.what}.{name}.counters")
        if link.codec is not None:
            check_counters(link.codec.counters, f"{self.what}.codec.counters")
        if link.auth is not None:
            check_counters(link.auth.counters, f"{self.what}.auth.counters")


def _control_frame(r: Reader, protocol: int) -> bytes:
    code = r.u8() % 16
    ident = r.u8()
    kind = r.u8() % 3
    if kind == 0:
        data = r.blob()
    elif kind == 1:  # an option list
        data = b"".join(Option(r.u8() % 32, r.take(r.u8() % 10)).encode() for _ in range(r.u8() % 5))
    else:  # a typical LCP/NCP option with fuzzed value
        data = Option((1, 3, 5, 7, 8, 18, 129)[r.u8() % 7], r.take(r.u8() % 9)).encode()
    return F.encode_frame(protocol, F.encode_control(code, ident, data), acfc=bool(r.u8() & 1), pfc=False)


def target_link(data: bytes) -> None:
    """PppLink.receive / timeout / send_ip / close in both roles and every phase. Nothing escapes;
    LinkUp / LinkDown at most once each; no clear-text IP delivered or link up unencrypted under
    MPPE REQUIRE; our frames decode; counters >= 0; deadlines finite; no password in events."""
    r = Reader(data)
    setup = r.u8()
    extra = r.u8()
    seed = r.u16()
    client_cfg, server_cfg = _configs(setup, extra, assign_later=bool(seed & 0x8000))
    test_client = bool(setup & 1)
    client = PppLink(LinkRole.PEER, client_cfg, random.Random(seed))
    server = PppLink(LinkRole.AUTHENTICATOR, server_cfg, random.Random(seed + 1))
    link, twin = (client, server) if test_client else (server, client)
    watch = _LinkWatch(link, "client link" if test_client else "server link")
    twin_watch = _LinkWatch(twin, "twin link")
    now = 0.0
    rounds = PRELUDE_ROUNDS[(setup >> 5) & 7] if not setup & 0x80 else PRELUDE_ROUNDS[extra & 7]
    pending: list[bytes] = []  # frames from the twin not yet delivered to the link
    history: list[bytes] = []
    if rounds:
        link.start(now)
        twin.start(now)
        pending = twin_watch.frames()
        for _ in range(rounds):
            for fr in pending:
                watch.delivered(fr, link.receive(fr, now))
            for fr in watch.frames():
                twin.receive(fr, now)
            pending = twin_watch.frames()
            history += pending
            now += 0.01
        watch.events()
        twin_watch.events()
    watch.state()
    for op in r.ops(12):
        if op == 0:
            fr = r.blob()
            watch.delivered(fr, link.receive(fr, now))
        elif op == 1:
            fr = _control_frame(r, PROTOCOLS[r.u8() % len(PROTOCOLS)])
            watch.delivered(fr, link.receive(fr, now))
        elif op == 2:  # the twin's frames reach us, ours reach the twin
            for fr in pending:
                watch.delivered(fr, link.receive(fr, now))
            for fr in watch.frames():
                twin.receive(fr, now)
            pending = twin_watch.frames()
            history += pending
        elif op == 3:
            now += r.u16() / 1000.0
            link.timeout(now)
            twin.timeout(now)
            pending += twin_watch.frames()
        elif op == 4:
            d = link.next_deadline()
            if d is not None:
                now = max(now, d)
            link.timeout(now)
        elif op == 5:
            sent = link.send_ip(r.blob(), now)
            if sent is not None:
                check(isinstance(sent, bytes), "send_ip returned non-bytes")
                F.decode_frame(sent)
                twin.receive(sent, now)
        elif op == 6:
            link.close(now, "fuzz close")
        elif op == 7:  # data from the twin (encrypted when MPPE is up), maybe damaged
            data_frame = twin.send_ip(b"\x45" + r.blob(), now)
            if data_frame is not None:
                damage = r.u8()
                if damage & 1 and len(data_frame) > 2:
                    b = bytearray(data_frame)
                    b[(damage >> 1) % len(b)] ^= 0x5A
                    data_frame = bytes(b)
                watch.delivered(data_frame, link.receive(data_frame, now))
        elif op == 8:  # replay something the twin sent before
            if history:
                fr = history[r.u8() % len(history)]
                watch.delivered(fr, link.receive(fr, now))
        elif op == 9:
            link.start(now)
        elif op == 10:  # the authenticator learns the client's address late (per-user pools)
            address = IPv4Address(r.u32())
            for side in (link, twin):
                with contextlib.suppress(ValueError):  # documented: wrong role, or IPCP already started
                    side.assign_peer_ip(address)
        else:  # a frame with a random protocol number and payload
            try:
                fr = F.encode_frame(r.u16() | 1, r.blob(), acfc=bool(r.u8() & 1), pfc=True)
            except PppError:
                continue
            watch.delivered(fr, link.receive(fr, now))
        del history[:-24]
        watch.events()
        twin_watch.events()
        watch.state()


def seeds() -> dict[str, list[bytes]]:
    out: list[bytes] = []
    for setup in (0x01, 0x00, 0x03, 0x0B, 0x15, 0x21, 0xE1, 0x60, 0x41, 0xC0):
        for extra in (0, 1, 2, 3, 5, 0x47):
            ops = (
                u8(2) * 4
                + u8(5)
                + blob(b"\x45\x00\x00\x14" + bytes(16))
                + u8(7)
                + blob(b"\x00\x00\x14")
                + u8(0)
            )
            ops += (
                u8(3)
                + u16(1500)
                + u8(2)
                + u8(8)
                + u8(0)
                + u8(1)
                + u8(0)
                + u8(9)
                + u8(1)
                + u8(2)
                + u8(0)
                + blob(b"")
            )
            ops += u8(4) + u8(6) + u8(2)
            out.append(u8(setup) + u8(extra) + u16(setup * 7 + extra) + ops)
    # an established link (9 or 14 prelude rounds), then what moves it: damaged encrypted data
    # (Reset-Request), renegotiation of each NCP, Protocol-Rejects, echoes, terminate, timers
    after_up = [
        u8(7) + blob(b"\x00\x00\x14") + u8(5),  # data from the twin, MPPE count damaged (loss)
        u8(7) + blob(b"\x00\x00\x14") + u8(7) + u8(2) + u8(7) + blob(b"\x00") + u8(0),
        u8(1) + u8(4) + u8(1) + u8(77) + u8(0) + blob(b"\x03\x06\x0a\x07\x00\x02"),  # IPCP Configure-Request
        u8(1) + u8(3) + u8(1) + u8(78) + u8(0) + blob(b"\x12\x06\x01\x00\x00\x40"),  # CCP Configure-Request
        u8(1) + u8(5) + u8(5) + u8(79) + u8(0) + blob(b"bye"),  # IPV6CP Terminate-Request
        u8(1) + u8(4) + u8(5) + u8(80) + u8(0) + blob(b"bye"),  # IPCP Terminate-Request
        u8(1)
        + u8(0)
        + u8(8)
        + u8(81)
        + u8(0)
        + blob(b"\x80\x57\x01\x01\x00\x04"),  # LCP Protocol-Reject IPV6CP
        u8(1) + u8(0) + u8(8) + u8(82) + u8(0) + blob(b"\x80\xfd\x01\x01\x00\x04"),  # ... CCP
        u8(1) + u8(0) + u8(8) + u8(83) + u8(0) + blob(b"\x80\x21\x01\x01\x00\x04"),  # ... IPCP
        u8(1) + u8(0) + u8(9) + u8(84) + u8(0) + blob(b"\x00\x00\x00\x00ping"),  # LCP Echo-Request
        u8(1) + u8(3) + u8(14) + u8(85) + u8(0) + blob(b""),  # CCP Reset-Request
        u8(1) + u8(0) + u8(5) + u8(86) + u8(0) + blob(b"bye"),  # LCP Terminate-Request
        u8(3) + u16(2500) + u8(3) + u16(2500) + u8(3) + u16(2500) + u8(2),  # keepalive, timers
        u8(6) + u8(2) + u8(4) + u8(2),  # close
    ]
    # setup bit 7: the prelude depth comes from ``extra``: 6 -> 9 rounds with MS-CHAPv2, 7 -> 14 with
    # MS-CHAPv1 (both give MPPE keys); the other setup bits pick role, MPPE policy/mode, IPv6, echo
    for setup in range(0x80, 0x100, 3):
        for i, tail in enumerate(after_up):
            if (setup + i) % 4 == 0:
                extra = 6 + (i & 1)
                script = u8(2) * 2 + tail + u8(2) + u8(5) + blob(b"\x45" * 20)
                out.append(u8(setup) + u8(extra) + u16(setup) + script)
    for setup in range(0x90, 0x100, 2):  # stateful MPPE (bit 4) with a damaged count: Reset-Request
        if setup & 0x10:
            for tail in after_up[:2]:
                out.append(
                    u8(setup | 1) + u8(6) + u16(setup) + u8(2) * 2 + tail + tail + u8(2) + u8(3) + u16(3500)
                )
    return {"link": out}
