"""GRE hot path: packets/s for decapsulate(+reorder) and encapsulate of 1400-byte frames, side by side
with bare-``struct`` baselines. Prints figures, never pass/fail.

Run: .venv/bin/python bench/gre_hotpath.py [--n 200000]
"""

from __future__ import annotations

import argparse
import struct
import time
from collections.abc import Callable

from sidecar.proto.gre import GreSession, encode_packet

PAYLOAD = bytes(1400)


def rate(fn: Callable[[int], None], n: int) -> float:
    t = time.perf_counter()
    fn(n)
    return n / (time.perf_counter() - t)


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

    def bare_unpack(k: int) -> None:
        for p in in_order[:k]:
            hdr.unpack_from(p, 0)
            bytes(memoryview(p)[16:])

    def bare_pack(k: int) -> None:
        for i in range(k):
            hdr.pack(0x30, 0x81, 0x880B, 1400, 1, i, i) + PAYLOAD

    def receive(pkts: list[bytes]) -> Callable[[int], None]:
        def go(k: int) -> None:
            s = GreSession(1, 2, reorder_window=30, reorder_timeout=0.3)
            for p in pkts[:k]:
                s.receive(p, 0.0)

        return go

    def send(ack_each: bool) -> Callable[[int], None]:
        def go(k: int) -> None:
            s = GreSession(1, 2, reorder_window=30, reorder_timeout=0.3)
            for i in range(k):
                if ack_each:
                    s.receive(in_order[i], 0.0)
                s.send(PAYLOAD, 0.0)

        return go

    rows = [
        ("baseline: struct unpack_from + payload copy", bare_unpack),
        ("GreSession.receive, in order", receive(in_order)),
        ("GreSession.receive, pairs swapped (reorder)", receive(swapped)),
        ("baseline: struct pack + concatenate", bare_pack),
        ("GreSession.send, no ack owed", send(False)),
        ("GreSession.receive+send (ack piggybacked)", send(True)),
    ]
    print(f"{n} packets of {len(PAYLOAD)} bytes, best of 3")
    for name, fn in rows:
        best = max(rate(fn, n) for _ in range(3))
        print(f"  {name:<46} {best / 1e3:8.0f} k packets/s  {1e6 / best:6.2f} us/packet")


if __name__ == "__main__":
    main()
