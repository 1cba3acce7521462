"""Hot-path micro-benchmark: the data path alone, no network, in packets per second, side by side with
bare baselines (``struct`` + RC4/SHA-1 only: the least Python work the same protocol needs).
Prints figures, never pass/fail.

Run: .venv/bin/python bench/hotpath.py [--packets 20000] [--size 1300] [--repeat 3]

What is timed, per packet, with the real protocol objects (two ``PppLink``s brought up in-process,
peer against authenticator, MS-CHAPv2 and CCP included, then a ``GreSession`` on each side):

- in:  GRE packet -> ``GreSession.receive`` (decapsulate, call-id check, ack bookkeeping, reorder
       queue) -> ``PppLink.receive`` (PPP, MPPE decrypt) -> ``os.write`` to /dev/null (the TUN write);
- out: ``os.read`` from /dev/zero (the TUN read; the bytes are ignored, a ready IP packet is sent)
       -> ``PppLink.send_ip`` (PPP, MPPE encrypt) -> ``GreSession.send`` -> ``os.write`` to /dev/null
       (the raw-socket send).

Modes: no MPPE, MPPE-128 stateful, MPPE-128 stateless, and stateless with every pair of packets
swapped (half of them wait in the reorder queue). The MPPE rows run once per RC4 backend that
matters (``sidecar.proto.ppp.mppe.RC4_BACKENDS``): the one the codec picks for the mode (marked
"default") and the other fast one, our objects and the baseline both on the row's backend.
Baselines do the same syscalls and the minimum crypto of the mode: stateful = one kept RC4 context;
stateless = SHA-1 + two new RC4 contexts (the RFC 3078 rekey: interim key, RC4 of it, then the
session cipher) per packet. ``ours/baseline`` shows what our objects cost on top; the gap to the
baseline is the room a rewrite of the objects has, the baseline itself is the floor for that RC4
backend.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import random
import struct
import time
from collections.abc import Callable
from functools import partial
from ipaddress import IPv4Address

from sidecar.proto.gre import GreSession
from sidecar.proto.ppp.link import LinkConfig, LinkRole, PppLink
from sidecar.proto.ppp.mppe import RC4_BACKENDS, RC4_FRESH, RC4_KEPT, MppeCodec, MppePolicy, Rc4Backend
from sidecar.proto.secret import Secret

USER = "bench"
SECRET = Secret("hot path bench password")
GRE_SA = struct.Struct("!BBHHHII")  # flags, version+A, protocol, payload length, call id, seq, ack
GRE_S = struct.Struct("!BBHHHI")
PPP_IP = b"\xff\x03\x00\x21"
PPP_MPPE = b"\xff\x03\x00\xfd"
PAD1, PAD2 = b"\x00" * 40, b"\xf2" * 40
Run = Callable[[], tuple[float, int]]  # one timed round: (seconds, packets through)
Factory = Callable[[], Run]  # builds a round (set-up outside the clock)


def ip_packet(size: int, i: int) -> bytes:
    """An IPv4 packet of ``size`` bytes (header fields only as far as the link looks at them)."""
    return b"\x45\x00" + size.to_bytes(2, "big") + i.to_bytes(4, "big") + bytes(size - 8)


# -- the real objects ------------------------------------------------------------------------------------
def bring_up(mode: str, rc4: Rc4Backend | None = None) -> tuple[PppLink, PppLink]:
    """(peer, authenticator) with LinkUp on both sides, in fake time; with ``rc4``, both codecs use
    that RC4 backend instead of the mode's default."""
    policy = MppePolicy.REFUSE if mode == "none" else MppePolicy.REQUIRE
    stateful = mode == "stateful"
    peer = PppLink(
        LinkRole.PEER,
        LinkConfig(username=USER, password=SECRET, mppe=policy, mppe_stateful=stateful, echo_interval=0),
        random.Random(1),
    )
    auth = PppLink(
        LinkRole.AUTHENTICATOR,
        LinkConfig(
            lookup_secret=lambda u: SECRET if u == USER else None,
            local_ip=IPv4Address("10.99.0.1"),
            peer_ip=IPv4Address("10.99.0.2"),
            mppe=policy,
            mppe_stateful=stateful,
            echo_interval=0,
        ),
        random.Random(2),
    )
    now = 0.0
    peer.start(now)
    auth.start(now)
    for _ in range(2000):
        moved = False
        for a, b in ((peer, auth), (auth, peer)):
            for frame in a.frames_to_send():
                b.receive(frame, now)
                moved = True
        if peer.link_up and auth.link_up and not moved:
            break
        if not moved:
            now += 0.5
            peer.timeout(now)
            auth.timeout(now)
    if not (peer.link_up and auth.link_up):
        raise SystemExit(f"the in-process links did not come up ({mode}): {peer.events()} {auth.events()}")
    want = "none" if mode == "none" else f"MPPE-128 {'stateful' if stateful else 'stateless'}"
    got = peer.link_up.encryption
    if got.lower() != want.lower():
        raise SystemExit(f"negotiated {got!r}, wanted {want!r}")
    if rc4 is not None:
        for link in (peer, auth):
            link.codec = on_backend(link.codec, rc4)
    return peer, auth


def on_backend(codec: MppeCodec | None, rc4: Rc4Backend) -> MppeCodec:
    """The same fresh codec (no data packet went through yet) on another RC4 backend. Reads the
    start keys from the codec's private state: the link builds its codec on the default backend."""
    assert codec is not None and codec.counters.encrypted == codec.counters.decrypted == 0
    return MppeCodec(codec._tx.start, codec._rx.start, codec.key_bits, codec.stateful, rc4=rc4)


def ours_in(mode: str, rc4: Rc4Backend | None, n: int, size: int, swapped: bool) -> Run:
    """Set-up outside the clock: the server side produces n GRE packets; the timed part receives them."""
    client, server = bring_up("stateless" if mode == "reorder" else mode, rc4)
    cgre = GreSession(1, 2, reorder_window=30, reorder_timeout=0.1)
    sgre = GreSession(2, 1, reorder_window=30, reorder_timeout=0.1)
    packets = []
    for i in range(n):
        frame = server.send_ip(ip_packet(size, i), 0.0)
        assert frame is not None
        packets.append(sgre.send(frame, 0.0))
    if swapped:
        for i in range(2, n - 1, 2):  # the first one stays first: it sets the expected number
            packets[i], packets[i + 1] = packets[i + 1], packets[i]

    def run() -> tuple[float, int]:
        fd = os.open(os.devnull, os.O_WRONLY)
        write, receive, link_receive = os.write, cgre.receive, client.receive
        delivered = 0
        try:
            t = time.perf_counter()
            for p in packets:
                for frame in receive(p, 0.0):
                    for ip in link_receive(frame, 0.0):
                        write(fd, ip)
                        delivered += 1
            return time.perf_counter() - t, delivered
        finally:
            os.close(fd)

    return run


def ours_out(mode: str, rc4: Rc4Backend | None, n: int, size: int) -> Run:
    client, _server = bring_up(mode, rc4)
    cgre = GreSession(1, 2, reorder_window=30, reorder_timeout=0.1)
    packet = ip_packet(size, 7)

    def run() -> tuple[float, int]:
        zero, null = os.open("/dev/zero", os.O_RDONLY), os.open(os.devnull, os.O_WRONLY)
        read, write, send_ip, send = os.read, os.write, client.send_ip, cgre.send
        sent = 0
        try:
            t = time.perf_counter()
            for _ in range(n):
                read(zero, size)
                frame = send_ip(packet, 0.0)
                if frame is not None:
                    write(null, send(frame, 0.0))
                    sent += 1
            return time.perf_counter() - t, sent
        finally:
            os.close(zero)
            os.close(null)

    return run


# -- baselines: struct + the mode's minimum crypto on the row's RC4 backend -------------------------------
def base_in(mode: str, rc4: Rc4Backend | None, n: int, size: int) -> Run:
    payload = os.urandom(size + 2)  # (MPPE: protocol field + IP packet, "encrypted")
    if mode == "none":
        packets = [
            GRE_SA.pack(0x30, 0x81, 0x880B, size + 4, 1, i, i) + PPP_IP + payload[2:] for i in range(n)
        ]
    else:
        packets = [
            GRE_SA.pack(0x30, 0x81, 0x880B, size + 8, 1, i, i) + PPP_MPPE + bytes((0x90, i & 0xFF)) + payload
            for i in range(n)
        ]
    start = bytes(range(16))
    new, crypt, buffers = (rc4 or RC4_KEPT)[1:]

    def run() -> tuple[float, int]:
        fd = os.open(os.devnull, os.O_WRONLY)
        write, unpack, sha1 = os.write, GRE_SA.unpack_from, hashlib.sha1
        ctx = new(start)
        session = start
        try:
            t = time.perf_counter()
            for p in packets:
                unpack(p)  # the header fields a receiver looks at
                if mode == "none":
                    write(fd, memoryview(p)[20:])
                    continue
                if mode == "stateless":
                    interim = sha1(start + PAD1 + session + PAD2).digest()[:16]
                    session = crypt(new(interim), interim)
                    ctx = new(session)
                plain = crypt(ctx, memoryview(p)[22:] if buffers else p[22:])
                write(fd, memoryview(plain)[2:])
            return time.perf_counter() - t, n
        finally:
            os.close(fd)

    return run


def base_out(mode: str, rc4: Rc4Backend | None, n: int, size: int) -> Run:
    packet = b"\x00\x21" + ip_packet(size, 7)
    start = bytes(range(16))
    new, crypt, _ = (rc4 or RC4_KEPT)[1:]

    def run() -> tuple[float, int]:
        zero, null = os.open("/dev/zero", os.O_RDONLY), os.open(os.devnull, os.O_WRONLY)
        read, write, pack, sha1 = os.read, os.write, GRE_S.pack, hashlib.sha1
        ctx = new(start)
        session = start
        try:
            t = time.perf_counter()
            for i in range(n):
                read(zero, size)
                if mode == "none":
                    write(null, pack(0x30, 0x01, 0x880B, size + 4, 2, i) + PPP_IP + packet[2:])
                    continue
                if mode == "stateless":
                    interim = sha1(start + PAD1 + session + PAD2).digest()[:16]
                    session = crypt(new(interim), interim)
                    ctx = new(session)
                body = bytes((0x90, i & 0xFF)) + crypt(ctx, packet)
                write(null, pack(0x30, 0x01, 0x880B, size + 8, 2, i) + PPP_MPPE + body)
            return time.perf_counter() - t, n
        finally:
            os.close(zero)
            os.close(null)

    return run


# -- report ------------------------------------------------------------------------------------------------
def best_rate(make: Factory, n: int, repeat: int) -> float:
    """Packets per second, best of ``repeat`` fresh set-ups (MPPE state cannot be replayed)."""
    best = 0.0
    for _ in range(repeat):
        run = make()
        gc.collect()
        seconds, done = run()
        if done != n:
            raise SystemExit(f"only {done} of {n} packets went through: the path is broken, not slow")
        best = max(best, n / seconds)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=20_000)
    ap.add_argument("--size", type=int, default=1300, help="IP packet size in bytes [1300]")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    n, size, repeat = args.packets, args.size, args.repeat
    print(f"hot path, {size}-byte IP packets, {n} per round, best of {repeat}; one core, no network\n")
    print(
        "| direction | mode | RC4 | ours k pkt/s | us/pkt | baseline k pkt/s | us/pkt | ours/base "
        "| ours Mbit/s |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    rows: list[tuple[str, str, str, Factory, Factory]] = []
    for direction in ("in", "out"):
        for mode, label, rc4 in row_plan(direction):
            name = "-" if mode == "none" else (rc4.name if rc4 else f"{default_rc4(mode).name} (default)")
            base_mode = "stateless" if mode == "reorder" else mode
            ours: Factory
            base: Factory
            if direction == "in":
                ours = partial(ours_in, mode, rc4, n, size, mode == "reorder")
                base = partial(base_in, base_mode, rc4 or default_rc4(mode), n, size)
            else:
                ours = partial(ours_out, mode, rc4, n, size)
                base = partial(base_out, base_mode, rc4 or default_rc4(mode), n, size)
            rows.append((direction, label, name, ours, base))
    for direction, label, name, ours, base in rows:
        r_ours = best_rate(ours, n, repeat)
        r_base = best_rate(base, n, repeat)
        print(
            f"| {direction} | {label} | {name} | {r_ours / 1e3:.0f} | {1e6 / r_ours:.1f} "
            f"| {r_base / 1e3:.0f} | {1e6 / r_base:.1f} | {r_base / r_ours:.2f}x "
            f"| {r_ours * size * 8 / 1e6:.0f} |",
            flush=True,
        )


def default_rc4(mode: str) -> Rc4Backend:
    return RC4_KEPT if mode == "stateful" else RC4_FRESH


def row_plan(direction: str) -> list[tuple[str, str, Rc4Backend | None]]:
    """(mode, label, RC4 backend or None for the codec's default): every MPPE mode on its default
    backend, then stateful and stateless on the other fast backend when it is installed."""
    plan: list[tuple[str, str, Rc4Backend | None]] = [
        ("none", "none", None),
        ("stateful", "stateful", None),
        ("stateless", "stateless", None),
    ]
    if direction == "in":
        plan.append(("reorder", "stateless, pairs swapped", None))
    for mode in ("stateful", "stateless"):
        for other in ("arc4", "cryptography-binding"):
            if other in RC4_BACKENDS and other != default_rc4(mode).name:
                plan.append((mode, mode, RC4_BACKENDS[other]))
    return plan


if __name__ == "__main__":
    main()
