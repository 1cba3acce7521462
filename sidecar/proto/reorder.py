"""The GRE reorder queue: puts packets that a network delivered out of order back in sequence.

Rules: this module knows sequence numbers (32-bit, RFC 1982 via :mod:`sidecar.proto.serial`), arrival
times and opaque items; it does not know GRE, PPP or who the peer is. Sans-IO: time comes in as
``now``; the caller asks :meth:`ReorderQueue.next_deadline` and calls :meth:`ReorderQueue.timeout`.

Theory of operation
-------------------
``expected`` is the next sequence number to deliver; the first pushed packet sets it. For a pushed
packet at forward distance ``d = seq - expected``:

* ``d == 0``: delivered at once, followed by every buffered packet that is now contiguous.
* ``1 <= d <= window``: buffered (counted ``buffered``), waiting for the gap in front of it. A
  second copy of a buffered packet is dropped (``duplicate``); the first copy stays.
* ``window < d <= far`` with ``far = window + max(window, FAR_AHEAD_MIN)``: the window overflows. The
  gaps at the front are given up (waiting packets delivered, missing ones ``lost``, ``overflows``
  counts the event) until the packet fits, then it is buffered. A packet that far ahead means the
  front gap has been overtaken by more than ``window`` packets: waiting longer would only drop more.
* ``d > far``: dropped (``over_window``). This is the DoS guard: one stray far-ahead packet can
  neither grow the buffer nor make us skip more than ``far - window`` numbers. A genuine jump (a burst
  of loss longer than ``far``) is recognised when :data:`RESYNC_AFTER` consecutive far-ahead packets
  are each close (within ``far``) to the previous one: the queue then gives up everything in front of
  the newest one (buffered packets are delivered first, in order; the missing ones count as ``lost``)
  and continues from it. Such a jump stays *unconfirmed* until the layer above accepts a packet
  after it (:meth:`ReorderQueue.confirm`: the stack calls it when PPP/MPPE delivered an IP packet,
  which a blind spoofer cannot produce under MPPE). While unconfirmed, a packet of the stream we
  jumped away from (near the old expected number) takes the queue back there (``reverted``): four
  spoofed far-ahead packets cost a glitch, not the tunnel.
* ``d < 0``: dropped. It is ``late`` when it is one we already gave up on (remembered for the last
  :data:`LOST_HISTORY` give-ups), otherwise ``duplicate`` (we already delivered it).

A gap is given up after ``timeout`` seconds, measured from the arrival of the oldest packet waiting
behind it: the waiting packets up to the next gap are delivered, the missing ones count as ``lost``
and ``timeouts`` counts the give-up. If another gap follows, its clock is again the arrival of the
oldest packet still waiting behind it, so a second gap whose packets have already waited
``timeout`` is given up in the same call (no packet ever waits much longer than ``timeout``).
``push`` also gives up expired gaps, so a caller that is late calling ``timeout`` loses nothing.

Window 0 means no buffering: a packet up to ``far`` ahead of ``expected`` is delivered at once (the
skipped numbers count as ``lost``, the packet as ``in_order``); older packets and duplicates are still
dropped, so an older packet is never delivered after a newer one, in any mode.

Counters: every pushed packet lands in exactly one of ``in_order``, ``buffered``, ``late``,
``duplicate``, ``over_window``. ``from_buffer`` counts deliveries out of the buffer; ``lost`` counts
sequence numbers skipped; ``timeouts`` counts gaps given up by the timer, ``overflows`` gaps given up
because the window overflowed. At any moment ``buffered == from_buffer + len(queue)`` and every
number from the first one pushed up to ``expected - 1`` was either delivered or counted ``lost``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from sidecar.proto.serial import SERIAL_HALF, SERIAL_MASK, serial_add, serial_diff

T = TypeVar("T")

DEFAULT_REORDER_WINDOW: Final = 30
"""Chosen by bench/reorder_defaults.py (see docs/gre-reorder.md)."""
DEFAULT_REORDER_TIMEOUT: Final = 0.1
"""Seconds; chosen by bench/reorder_defaults.py (see docs/gre-reorder.md)."""
RESYNC_AFTER: Final = 4
"""Consecutive, mutually close far-ahead packets after which the queue jumps to them."""
FAR_AHEAD_MIN: Final = 32
"""``far = window + max(window, FAR_AHEAD_MIN)``: beyond ``far`` ahead a packet is dropped."""
LOST_HISTORY: Final = 32
"""How many given-up gaps are remembered to tell ``late`` from ``duplicate``."""


@dataclass
class ReorderCounters:
    in_order: int = 0
    buffered: int = 0
    from_buffer: int = 0
    late: int = 0
    duplicate: int = 0
    over_window: int = 0
    lost: int = 0
    timeouts: int = 0
    overflows: int = 0
    reverted: int = 0  # unconfirmed far jumps undone because the old stream went on (spoofing?)
    discarded: int = 0  # buffered packets of an undone jump's numbering, dropped


class ReorderQueue(Generic[T]):
    """Bounded reorder buffer over 32-bit sequence numbers; holds at most ``window`` items."""

    __slots__ = (
        "_arrival",
        "_buf",
        "_expected",
        "_far",
        "_gap_since",
        "_lost_ranges",
        "_pre_jump",
        "_resync_count",
        "_resync_last",
        "counters",
        "timeout_s",
        "window",
    )

    def __init__(self, window: int, timeout: float) -> None:
        if not isinstance(window, int) or window < 0 or window >= SERIAL_HALF // 2:
            raise ValueError(f"reorder window must be an integer 0..{SERIAL_HALF // 2 - 1}, got {window!r}")
        if not timeout >= 0:
            raise ValueError(f"reorder timeout must be >= 0 seconds, got {timeout!r}")
        self.window: int = window
        self._far: int = window + max(window, FAR_AHEAD_MIN)
        self.timeout_s: float = float(timeout)
        self.counters = ReorderCounters()
        self._expected: int | None = None
        self._buf: dict[int, T] = {}
        self._arrival: dict[int, float] = {}
        self._gap_since: float | None = None
        self._lost_ranges: deque[tuple[int, int]] = deque(maxlen=LOST_HISTORY)
        self._resync_last: int = 0
        self._resync_count: int = 0
        self._pre_jump: int | None = None  # expected number before an unconfirmed far jump

    # -- introspection -------------------------------------------------------------------------
    @property
    def expected(self) -> int | None:
        """Next sequence number to deliver (None before the first push)."""
        return self._expected

    def __len__(self) -> int:
        return len(self._buf)

    def next_deadline(self) -> float | None:
        if self._gap_since is None:
            return None
        return self._gap_since + self.timeout_s

    # -- entry points --------------------------------------------------------------------------
    def push(self, seq: int, item: T, now: float) -> list[T]:
        """Offer one packet; returns the items now deliverable, in sequence order."""
        expected = self._expected
        if seq == expected and not self._buf:
            # The fast path: in order, nothing waiting.
            self._expected = (seq + 1) & SERIAL_MASK
            self._resync_count = 0
            self.counters.in_order += 1
            return [item]
        if expected is None:
            self._expected = (seq + 1) & SERIAL_MASK
            self.counters.in_order += 1
            return [item]
        d = ((seq - expected + SERIAL_HALF) & SERIAL_MASK) - SERIAL_HALF
        out: list[T]
        if d < 0:
            pre = self._pre_jump
            if pre is not None and -self.window <= serial_diff(seq, pre) <= self._far:
                # The stream we jumped away from goes on and nothing confirmed the jump: it was a
                # spoofed or stray burst. Go back; what waits behind the burst's numbers is dropped.
                self._pre_jump = None
                self._resync_count = 0
                self.counters.reverted += 1
                self.counters.discarded += len(self._buf)  # numbered by the burst: dropped
                self._buf.clear()
                self._arrival.clear()
                self._gap_since = None
                self._expected = pre
                return self.push(seq, item, now)
            self._drop_old(seq)
            out = []
        elif d == 0:
            self._resync_count = 0
            self.counters.in_order += 1
            self._expected = (seq + 1) & SERIAL_MASK
            out = [item]
            self._drain(out)
        elif self.window == 0:
            if d > self._far:
                if not self._resync(seq):
                    self.counters.over_window += 1
                    return []
                self._pre_jump = expected  # until the layer above confirms the new stream
            self._resync_count = 0
            self._skip(expected, d)
            self.counters.in_order += 1
            self._expected = (seq + 1) & SERIAL_MASK
            return [item]
        elif d <= self.window:
            self._resync_count = 0
            if seq in self._buf:
                self.counters.duplicate += 1
            else:
                self._buf[seq] = item
                self._arrival[seq] = now
                self.counters.buffered += 1
                if self._gap_since is None or now < self._gap_since:
                    self._gap_since = now
            out = []
        elif d <= self._far:
            self._resync_count = 0
            out = []
            self._overflow(serial_add(seq, -self.window), out)
            self.counters.overflows += 1
            if self._expected == seq:  # everything in between was waiting: the gap is gone
                self.counters.in_order += 1
                self._expected = (seq + 1) & SERIAL_MASK
                out.append(item)
                self._drain(out)
            else:
                self.counters.buffered += 1
                self._buf[seq] = item
                self._arrival[seq] = now
                if self._gap_since is None or now < self._gap_since:
                    self._gap_since = now
        elif self._resync(seq):
            # A genuine jump: deliver what waits (it is older), skip to this packet.
            out = []
            self._pre_jump = expected  # until the layer above confirms the new stream
            self._flush_all(out)
            assert self._expected is not None
            self._skip(self._expected, serial_diff(seq, self._expected))
            self.counters.in_order += 1
            self._expected = (seq + 1) & SERIAL_MASK
            out.append(item)
            return out
        else:
            self.counters.over_window += 1
            out = []
        if self._gap_since is not None and now >= self._gap_since + self.timeout_s:
            self._expire(now, out)
        return out

    def confirm(self) -> None:
        """The layer above accepted a packet (e.g. MPPE decrypted it): the current numbering is real,
        a far jump made before this stands."""
        self._pre_jump = None

    def timeout(self, now: float) -> list[T]:
        """Give up every gap whose oldest waiting packet has waited ``timeout``; returns deliveries."""
        out: list[T] = []
        if self._gap_since is not None and now >= self._gap_since + self.timeout_s:
            self._expire(now, out)
        return out

    def flush(self) -> list[T]:
        """Deliver everything buffered (gaps counted lost), e.g. when the session ends."""
        out: list[T] = []
        self._flush_all(out)
        return out

    # -- internals -----------------------------------------------------------------------------
    def _drop_old(self, seq: int) -> None:
        for start, count in self._lost_ranges:
            if 0 <= serial_diff(seq, start) < count:
                self.counters.late += 1
                return
        self.counters.duplicate += 1

    def _resync(self, seq: int) -> bool:
        """Track a run of over-window packets; True when the run is long enough to jump to ``seq``."""
        if self._resync_count and abs(serial_diff(seq, self._resync_last)) <= self._far:
            self._resync_count += 1
        else:
            self._resync_count = 1
        self._resync_last = seq
        if self._resync_count >= RESYNC_AFTER:
            self._resync_count = 0
            return True
        return False

    def _skip(self, start: int, count: int) -> None:
        """Give up ``count`` sequence numbers from ``start`` (count lost, remember for ``late``)."""
        if count > 0:
            self.counters.lost += count
            self._lost_ranges.append((start, count))

    def _drain(self, out: list[T]) -> None:
        """Move every contiguous buffered item at ``expected`` to ``out``; fix the gap clock."""
        buf = self._buf
        if not buf:
            return
        expected = self._expected
        assert expected is not None
        arrival = self._arrival
        n = 0
        while expected in buf:
            out.append(buf.pop(expected))
            del arrival[expected]
            expected = (expected + 1) & SERIAL_MASK
            n += 1
        self._expected = expected
        self.counters.from_buffer += n
        if n:
            self._gap_since = min(arrival.values()) if arrival else None

    def _expire(self, now: float, out: list[T]) -> None:
        while self._gap_since is not None and now >= self._gap_since + self.timeout_s:
            self._give_up_gap(out)
            self.counters.timeouts += 1

    def _give_up_gap(self, out: list[T]) -> None:
        """Skip the gap at ``expected`` to the oldest-numbered buffered packet and deliver from there."""
        expected = self._expected
        assert expected is not None and self._buf
        nearest = min(self._buf, key=lambda s: serial_diff(s, expected))
        self._skip(expected, serial_diff(nearest, expected))
        self._expected = nearest
        self._drain(out)

    def _overflow(self, target: int, out: list[T]) -> None:
        """Give up gaps until ``expected`` reaches ``target``, delivering what waits in front of it."""
        while self._buf:
            exp = self._expected
            assert exp is not None
            nearest = min(self._buf, key=lambda s: serial_diff(s, exp))
            if serial_diff(nearest, target) >= 0:
                break
            self._give_up_gap(out)
        expected = self._expected
        assert expected is not None
        ahead = serial_diff(target, expected)
        if ahead > 0:
            self._skip(expected, ahead)
            self._expected = target
            self._drain(out)

    def _flush_all(self, out: list[T]) -> None:
        while self._buf:
            self._give_up_gap(out)
