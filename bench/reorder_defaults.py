"""Choose the reorder queue's defaults by measurement: simulated reordering links, several window/timeout
pairs, figures side by side. Prints numbers, never pass/fail.

Links (each ~2000 packets/s for ``--seconds``, 1 in 3 packets large):
  small-overtakes-large  large packets (1400 B) take 1.5-3 ms longer than small ones, so small packets
                         overtake the last 3-6 large ones (the reason this project exists)
  bursts                 every ~0.5 s a burst of 5-30 packets arrives reversed (path flap / LAG)
  lossy                  small-overtakes-large plus 1 % random loss
  burst+loss             bursts plus 1 % random loss
  late-stragglers        0.5 % of packets are held back 40-200 ms (a slow path), plus 0.5 % loss

Columns: delivered = fraction of sent packets handed up (always in order), extra_loss = packets the
network did deliver but the queue dropped or gave up (the cost of too small a window or timeout),
latency added by the queue (mean / p99 / max, ms), with the caller calling ``timeout`` on time.

Run: .venv/bin/python bench/reorder_defaults.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable

from sidecar.proto.reorder import ReorderQueue

RATE = 2000.0  # packets/s; main() also runs every link at 100 packets/s (interactive traffic)
Arrivals = list[tuple[float, int]]  # (arrival time, seq) sorted by time


_rate = RATE


def _base(rng: random.Random, seconds: float) -> list[tuple[float, int, bool]]:
    out = []
    t = 0.0
    seq = 0
    while t < seconds:
        t += rng.expovariate(_rate)
        out.append((t, seq, rng.random() < 1 / 3))
        seq += 1
    return out


def small_overtakes_large(rng: random.Random, seconds: float, loss: float = 0.0) -> Arrivals:
    arr = []
    for t, seq, large in _base(rng, seconds):
        if rng.random() < loss:
            continue
        delay = 0.010 + (rng.uniform(0.0015, 0.003) if large else 0.0) + rng.uniform(0, 0.0002)
        arr.append((t + delay, seq))
    return sorted(arr)


def bursts(rng: random.Random, seconds: float, loss: float = 0.0) -> Arrivals:
    base = _base(rng, seconds)
    times = [t + 0.010 for t, _, _ in base]
    seqs = [s for _, s, _ in base]
    i = 0
    while i < len(seqs):
        i += int(rng.expovariate(2 / _rate))  # ~every 0.5 s
        k = rng.randint(5, 30)
        seqs[i : i + k] = reversed(seqs[i : i + k])
        i += k
    return [(t, s) for t, s in zip(times, seqs, strict=True) if rng.random() >= loss]


def late_stragglers(rng: random.Random, seconds: float) -> Arrivals:
    arr = []
    for t, seq, _ in _base(rng, seconds):
        r = rng.random()
        if r < 0.005:
            continue
        extra = rng.uniform(0.040, 0.200) if r < 0.010 else 0.0
        arr.append((t + 0.010 + extra, seq))
    return sorted(arr)


LINKS: dict[str, Callable[[random.Random, float], Arrivals]] = {
    "small-overtakes-large": small_overtakes_large,
    "bursts": bursts,
    "lossy": lambda r, s: small_overtakes_large(r, s, loss=0.01),
    "burst+loss": lambda r, s: bursts(r, s, loss=0.01),
    "late-stragglers": late_stragglers,
}


def run(
    arrivals: Arrivals, sent: int, window: int, timeout: float
) -> tuple[float, float, float, float, float]:
    q: ReorderQueue[tuple[int, float]] = ReorderQueue(window, timeout)
    waits: list[float] = []
    delivered = 0

    def take(items: list[tuple[int, float]], at: float) -> None:
        nonlocal delivered
        for _, arrived in items:
            waits.append(at - arrived)
        delivered += len(items)

    for t, seq in arrivals:
        dl = q.next_deadline()
        while dl is not None and dl <= t:
            take(q.timeout(dl), dl)
            dl = q.next_deadline()
        take(q.push(seq, (seq, t), t), t)
    take(q.flush(), arrivals[-1][0])
    arrived = len({s for _, s in arrivals})
    waits.sort()
    mean = sum(waits) / len(waits)
    p99 = waits[int(0.99 * (len(waits) - 1))]
    return delivered / sent, (arrived - delivered) / sent, mean * 1e3, p99 * 1e3, waits[-1] * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    pairs = [
        (0, 0.0),
        (4, 0.3),
        (16, 0.05),
        (16, 0.3),
        (30, 0.05),
        (30, 0.1),
        (30, 0.3),
        (30, 1.0),
        (64, 0.1),
        (64, 0.3),
        (128, 0.3),
    ]
    global _rate
    for rate, name in [(r, n) for r in (RATE, 100.0) for n in LINKS]:
        _rate = rate
        make = LINKS[name]
        rng = random.Random(args.seed)
        arrivals = make(rng, args.seconds if rate == RATE else args.seconds * 10)
        sent = max(s for _, s in arrivals) + 1
        net_loss = 1 - len(arrivals) / sent
        print(f"\n{name} @ {rate:.0f} pps: {sent} packets sent, network loss {net_loss:.2%}")
        print(
            f"  {'window':>6} {'timeout':>7} {'delivered':>9} {'extra_loss':>10} "
            f"{'mean_ms':>8} {'p99_ms':>8} {'max_ms':>8}"
        )
        for window, timeout in pairs:
            d, extra, mean, p99, mx = run(arrivals, sent, window, timeout)
            print(
                f"  {window:>6} {timeout:>7.2f} {d:>9.2%} {extra:>10.2%} {mean:>8.2f} {p99:>8.2f} {mx:>8.1f}"
            )


if __name__ == "__main__":
    main()
