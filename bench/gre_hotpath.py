"""GRE hot path: microseconds per packet for our data-path objects, side by side with bare-``struct``
baselines. Prints figures, never pass/fail.

Run: flock /tmp/pptp-bench.lock .venv/bin/python bench/gre_hotpath.py [--n 200000]

Rows:

- GRE alone: ``GreSession.receive`` (in order; every pair swapped, so half the packets wait in the
  reorder queue) and ``GreSession.send`` of 1400-byte frames, against ``struct`` unpack/pack plus
  the payload copy;
- GRE + PPP: ``SessionStack.gre_received`` (GRE, reorder, ``PppLink.receive`` of a clear IPv4
  frame) and ``SessionStack.send_ip``, on a client stack brought up against a server stack
  in-process (PPTP control, MS-CHAPv2, no MPPE);
- what a hallway does once per batch: ``next_deadline()`` of the stack, and the whole set of calls
  after an input (``gre_to_send``, ``control_pending``, ``events``, ``finished``, ``next_deadline``).

Compare two trees by running this file with ``PYTHONPATH`` pointing at each (it uses only the
public API both have), in one locked run.
"""

from __future__ import annotations

import argparse
import random
import struct
import time
from collections.abc import Callable
from ipaddress import IPv4Address

from sidecar.proto.gre import GreSession, encode_packet
from sidecar.proto.ppp.link import LinkConfig, LinkRole, PppLink
from sidecar.proto.ppp.mppe import MppePolicy
from sidecar.proto.pptp import ControlConfig, ControlConnection, Role
from sidecar.proto.secret import Secret
from sidecar.stack import SessionStack

PAYLOAD = bytes(1400)
IP_PACKET = b"\x45\x00\x05\x78" + bytes(1396)  # an IPv4 packet of 1400 bytes, as far as PPP looks
SECRET = Secret("gre hot path bench")


Round = Callable[[], None]  # one timed round
Factory = Callable[[int], Round]  # builds a round of k packets, outside the clock


def rate(make: Factory, k: int) -> float:
    run = make(k)
    t = time.perf_counter()
    run()
    return k / (time.perf_counter() - t)


def stacks() -> tuple[SessionStack, SessionStack]:
    """A client and a server SessionStack with the call established and the link up (no MPPE)."""
    client_link = PppLink(
        LinkRole.PEER,
        LinkConfig(username="bench", password=SECRET, mppe=MppePolicy.REFUSE, echo_interval=0),
        random.Random(1),
    )
    server_link = PppLink(
        LinkRole.AUTHENTICATOR,
        LinkConfig(
            lookup_secret=lambda user: SECRET,
            local_ip=IPv4Address("10.99.0.1"),
            peer_ip=IPv4Address("10.99.0.2"),
            mppe=MppePolicy.REFUSE,
            echo_interval=0,
        ),
        random.Random(2),
    )
    pair = (
        SessionStack(ControlConnection(Role.CLIENT, ControlConfig(), random.Random(3)), lambda: client_link),
        SessionStack(ControlConnection(Role.SERVER, ControlConfig(), random.Random(4)), lambda: server_link),
    )
    now = 0.0
    for s in pair:
        s.start(now)
    while not (client_link.link_up and server_link.link_up):
        now += 0.01
        if now > 60:
            raise SystemExit("the in-process stacks did not come up")
        for a, b in (pair, pair[::-1]):
            data = a.control_to_send()
            if data:
                b.control_received(data, now)
            for packet in a.gre_to_send(now) + a.timeout(now)[1]:
                b.gre_received(packet, now)
            a.events(now)
    return pair


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    args = ap.parse_args()
    n = args.n
    in_order = [encode_packet(1, PAYLOAD, i, i) for i in range(n)]
    swapped = list(in_order)
    for i in range(0, n - 1, 2):  # every pair swapped: half the packets go through the buffer
        swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
    hdr = struct.Struct("!BBHHHII")

    def bare_unpack(k: int) -> Round:
        def go() -> None:
            for p in in_order[:k]:
                hdr.unpack_from(p, 0)
                bytes(memoryview(p)[16:])

        return go

    def bare_pack(k: int) -> Round:
        def go() -> None:
            for i in range(k):
                hdr.pack(0x30, 0x81, 0x880B, 1400, 1, i, i) + PAYLOAD

        return go

    def receive(pkts: list[bytes]) -> Factory:
        def make(k: int) -> Round:
            s = GreSession(1, 2, reorder_window=30, reorder_timeout=0.3)

            def go() -> None:
                for p in pkts[:k]:
                    s.receive(p, 0.0)

            return go

        return make

    def send(ack_each: bool) -> Factory:
        def make(k: int) -> Round:
            s = GreSession(1, 2, reorder_window=30, reorder_timeout=0.3)

            def go() -> None:
                for i in range(k):
                    if ack_each:
                        s.receive(in_order[i], 0.0)
                    s.send(PAYLOAD, 0.0)

            return go

        return make

    client, server = stacks()
    assert client.gre is not None and server.gre is not None
    call_id, frame = client.gre.local_call_id, b"\xff\x03\x00\x21" + IP_PACKET
    next_seq = [(server.gre.last_sent_seq or 0) + 1]  # the server's numbering, continued per round

    def stack_receive(k: int) -> Round:
        first = next_seq[0]
        next_seq[0] = first + k
        packets = [encode_packet(call_id, frame, (first + i) & 0xFFFFFFFF, None) for i in range(k)]

        def go() -> None:
            received, before = client.gre_received, client.counters.ip_in
            for p in packets:
                received(p, 1.0)
            if client.counters.ip_in - before != k:
                raise SystemExit("SessionStack.gre_received did not deliver every packet")

        return go

    def stack_send(k: int) -> Round:
        def go() -> None:
            send_ip = client.send_ip
            for _ in range(k):
                send_ip(IP_PACKET, 1.0)

        return go

    def deadline(k: int) -> Round:
        def go() -> None:
            next_deadline = client.next_deadline
            for _ in range(k):
                next_deadline()

        return go

    def after_input(k: int) -> Round:
        def go() -> None:
            s = client
            for _ in range(k):
                s.gre_to_send(1.0)
                s.control_pending()
                s.events(1.0)
                s.finished()
                s.next_deadline()

        return go

    rows: list[tuple[str, Factory, int]] = [
        ("baseline: struct unpack_from + payload copy", bare_unpack, n),
        ("GreSession.receive, in order", receive(in_order), n),
        ("GreSession.receive, pairs swapped (reorder)", receive(swapped), n),
        ("baseline: struct pack + concatenate", bare_pack, n),
        ("GreSession.send, no ack owed", send(False), n),
        ("GreSession.receive+send (ack piggybacked)", send(True), n),
        ("SessionStack.gre_received (GRE+PPP, clear IP)", stack_receive, n),
        ("SessionStack.send_ip (PPP+GRE, clear IP)", stack_send, n),
        ("SessionStack.next_deadline()", deadline, n),
        ("per batch: gre_to_send..next_deadline", after_input, n // 4),
    ]
    print(f"{n} packets of {len(PAYLOAD)} bytes, best of 3")
    for name, make, k in rows:
        best = max(rate(make, k) for _ in range(3))
        print(f"  {name:<46} {best / 1e3:8.0f} k/s  {1e6 / best:6.2f} us each")


if __name__ == "__main__":
    main()
