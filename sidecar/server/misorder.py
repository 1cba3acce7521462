"""Deliberate reordering of the GRE data packets the server sends (``serve --test-reorder F``).

Rules: a test aid, off by default; pure (time comes in as ``now``, randomness from a seeded
``random.Random``, so a run is reproducible from its seed). It only changes the order in which
packets leave, never their content, and never loses one.

Theory of operation: each packet is held back with probability ``fraction``. Held packets wait in
arrival order; the next packet that is not held goes out first, immediately followed by every held
one. The receiver therefore sees e.g. ``2, 1`` or ``4, 2, 3``: real reordering of depth up to
``max_held``, which is what a kernel without netem cannot produce for a test. Nothing is held for
longer than ``hold_timeout`` (a quiet link, a lone ping): :meth:`timeout` releases it, in order, so
a held packet is late but never stuck. When ``max_held`` packets are already waiting the next one
is not held (bounded depth; the receiver's reorder window must be at least ``max_held``). The very
first packet is never held: a receiver takes the first sequence number it sees as the start.

Counters: ``sent`` packets given to :meth:`send`; ``held`` of those held back; ``released_late``
held packets that went out after a later one (real reorder events); ``released_by_timeout`` held
packets released by the timer with nothing overtaking them (delayed, not reordered).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final

_FLAG_S: Final = 0x10  # GRE byte 0: sequence number present
_FLAG_A: Final = 0x80  # GRE byte 1: acknowledgement number present


def is_data_packet(packet: bytes | memoryview) -> bool:
    """True for an enhanced GRE packet that carries a PPP network-layer datagram (IP, or MPPE's
    0x00FD): the packets to reorder. PPP control (LCP, auth, CCP, IPCP: protocols 0x8000 and up),
    ack-only packets and anything unparsable are False and go out untouched, so negotiation is
    never disturbed (RFC 1661 §2: protocol values 0x0xxx-0x3xxx are network-layer datagrams)."""
    if len(packet) < 8 or not packet[0] & _FLAG_S:
        return False
    offset = 12 + (4 if packet[1] & _FLAG_A else 0)
    if len(packet) < offset + 1:
        return False
    if packet[offset : offset + 2] == b"\xff\x03":
        offset += 2
    if len(packet) <= offset:
        return False
    first = packet[offset]
    if first & 1:  # compressed one-byte protocol field (RFC 1661 §6.5)
        return True  # one-byte protocols are all below 0x100: network layer
    if len(packet) < offset + 2:
        return False
    return (first << 8 | packet[offset + 1]) < 0x4000


@dataclass
class MisorderCounters:
    sent: int = 0
    held: int = 0
    released_late: int = 0
    released_by_timeout: int = 0


class DeliberateReorderer:
    def __init__(
        self,
        fraction: float,
        rng: random.Random,
        *,
        hold_timeout: float = 0.05,
        max_held: int = 4,
    ) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"reorder fraction must be between 0 and 1, not {fraction}")
        if max_held < 1:
            raise ValueError("max_held must be at least 1")
        self.fraction = fraction
        self.hold_timeout = hold_timeout
        self.max_held = max_held
        self._rng = rng
        self._held: list[bytes] = []
        self._held_since: float | None = None
        self.counters = MisorderCounters()

    @property
    def enabled(self) -> bool:
        return self.fraction > 0.0

    def send(self, packet: bytes, now: float) -> list[bytes]:
        """Packets to put on the wire now, in this order (possibly none: this one is held)."""
        self.counters.sent += 1
        if self.fraction <= 0.0:
            return [packet]
        # One draw per packet, always, so the hold decision for packet n depends only on the seed.
        draw = self._rng.random()
        first = self.counters.sent == 1
        if draw < self.fraction and len(self._held) < self.max_held and not first:
            if not self._held:
                self._held_since = now
            self._held.append(packet)
            self.counters.held += 1
            return []
        if not self._held:
            return [packet]
        out = [packet, *self._held]
        self.counters.released_late += len(self._held)
        self._held = []
        self._held_since = None
        return out

    def next_deadline(self) -> float | None:
        if self._held_since is None:
            return None
        return self._held_since + self.hold_timeout

    def timeout(self, now: float) -> list[bytes]:
        deadline = self.next_deadline()
        if deadline is None or now < deadline:
            return []
        return self.flush()

    def flush(self) -> list[bytes]:
        """Everything held, in order (used by the timer and at teardown)."""
        out = self._held
        self.counters.released_by_timeout += len(out)
        self._held = []
        self._held_since = None
        return out
