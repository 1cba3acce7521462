"""ReorderQueue: scenarios and hypothesis properties (order, completeness, bounds, counter sums)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.proto.reorder import FAR_AHEAD_MIN, RESYNC_AFTER, ReorderQueue
from sidecar.proto.serial import SERIAL_MASK, serial_add, serial_diff

U32 = st.integers(0, SERIAL_MASK)
# Starts that put the interesting part of a stream across the 2**32 wrap or the 2**31 midpoint.
STARTS = st.one_of(
    U32,
    st.integers(SERIAL_MASK - 40, SERIAL_MASK),
    st.integers(0x7FFFFFFF - 40, 0x7FFFFFFF + 40),
    st.just(0),
)


def primed(window: int, timeout: float, start: int) -> ReorderQueue[int]:
    """A queue whose expected number is ``start`` (``start - 1`` already delivered)."""
    q: ReorderQueue[int] = ReorderQueue(window, timeout)
    assert q.push(serial_add(start, -1), -1, 0.0) == [-1]
    return q


def push_total(q: ReorderQueue[int]) -> int:
    c = q.counters
    return c.in_order + c.buffered + c.late + c.duplicate + c.over_window


# -- scenarios ----------------------------------------------------------------------------------------


def test_gap_fill_delivers_in_order() -> None:
    q = primed(8, 1.0, 100)
    assert q.push(102, 102, 0.0) == []
    assert q.push(101, 101, 0.0) == []
    assert len(q) == 2
    assert q.push(100, 100, 0.1) == [100, 101, 102]
    assert q.next_deadline() is None
    c = q.counters
    assert (c.in_order, c.buffered, c.from_buffer, c.lost, c.timeouts) == (2, 2, 2, 0, 0)


def test_first_push_sets_expected() -> None:
    q: ReorderQueue[str] = ReorderQueue(4, 1.0)
    assert q.expected is None
    assert q.push(7, "a", 0.0) == ["a"]
    assert q.expected == 8
    assert q.push(6, "old", 0.0) == []
    assert q.counters.duplicate == 1


def test_timeout_gives_up_gap_and_counts_lost() -> None:
    q = primed(8, 0.3, 10)
    q.push(12, 12, 1.0)
    q.push(13, 13, 1.1)
    assert q.next_deadline() == pytest.approx(1.3)
    assert q.timeout(1.29) == []
    assert q.timeout(1.3) == [12, 13]
    c = q.counters
    assert (c.lost, c.timeouts, c.from_buffer) == (2, 1, 2)
    assert q.expected == 14
    assert q.next_deadline() is None
    # The given-up packets arriving afterwards are late, not duplicates.
    assert q.push(11, 11, 1.4) == []
    assert q.push(10, 10, 1.4) == []
    assert q.push(13, 13, 1.4) == []
    assert (q.counters.late, q.counters.duplicate) == (2, 1)


def test_timeout_is_per_gap_from_oldest_waiter() -> None:
    q = primed(16, 0.3, 0)
    q.push(2, 2, 0.0)  # waits behind gap {0,1}
    q.push(5, 5, 0.2)  # waits behind gap {3,4}
    assert q.next_deadline() == pytest.approx(0.3)
    assert q.timeout(0.3) == [2]  # first gap given up; 5 has waited only 0.1 s
    assert q.counters.timeouts == 1
    assert q.next_deadline() == pytest.approx(0.5)  # the second gap's clock: arrival of 5
    assert q.push(3, 3, 0.4) == [3]
    assert q.next_deadline() == pytest.approx(0.5)
    assert q.timeout(0.5) == [5]
    assert (q.counters.lost, q.counters.timeouts) == (3, 2)


def test_old_waiters_give_up_all_expired_gaps_at_once() -> None:
    q = primed(16, 0.3, 0)
    q.push(2, 2, 0.0)
    q.push(4, 4, 0.0)
    q.push(7, 7, 0.25)
    assert q.timeout(0.31) == [2, 4]  # both gaps in front of 2 and 4 waited 0.3 s
    assert q.next_deadline() == pytest.approx(0.55)
    assert q.counters.timeouts == 2


def test_push_also_expires_overdue_gaps() -> None:
    q = primed(8, 0.3, 0)
    q.push(2, 2, 0.0)
    assert q.push(3, 3, 5.0) == [2, 3]  # caller never called timeout(); nothing is stuck
    assert q.counters.lost == 2  # 0 and 1


def test_gap_filler_arriving_at_deadline_is_delivered_not_lost() -> None:
    q = primed(8, 0.3, 0)
    q.push(1, 1, 0.0)
    assert q.push(0, 0, 0.3) == [0, 1]
    assert q.counters.lost == 0


def test_duplicate_of_buffered_packet() -> None:
    q = primed(8, 1.0, 0)
    q.push(3, 3, 0.0)
    assert q.push(3, 33, 0.0) == []
    assert q.counters.duplicate == 1
    assert len(q) == 1
    assert q.push(0, 0, 0.0) == [0]
    q.push(1, 1, 0.0)
    assert q.push(2, 2, 0.0) == [2, 3]  # the first copy of 3 is kept


def test_duplicate_of_delivered_packet() -> None:
    q = primed(8, 1.0, 50)
    q.push(50, 50, 0.0)
    assert q.push(50, 50, 0.0) == []
    assert q.push(49, 49, 0.0) == []
    assert (q.counters.duplicate, q.counters.late) == (2, 0)


def test_window_overflow_gives_up_front_gap() -> None:
    q = primed(4, 10.0, 0)
    assert q.push(2, 2, 0.0) == []
    assert q.push(4, 4, 0.0) == []  # d == window: buffered
    assert q.push(6, 6, 0.0) == [2]  # d == window + 2: gaps 0,1 given up, 2 delivered, 3 still awaited
    assert q.expected == 3
    assert (q.counters.overflows, q.counters.lost, q.counters.buffered) == (1, 2, 3)
    assert len(q) == 2
    assert q.push(3, 3, 0.0) == [3, 4]
    assert q.push(10, 10, 0.0) == [6]  # target 6: skip 5, deliver 6; 7, 8, 9 awaited
    assert q.counters.lost == 3


def test_window_overflow_that_closes_the_gap_delivers_at_once() -> None:
    q = primed(2, 10.0, 0)
    q.push(1, 1, 0.0)
    q.push(2, 2, 0.0)
    assert q.push(3, 3, 0.0) == [1, 2, 3]  # target 1: skip 0; 1, 2 drain; 3 is next
    assert (q.counters.in_order, q.counters.lost, len(q)) == (2, 1, 0)


def test_beyond_far_dropped_and_counted() -> None:
    q = primed(4, 1.0, 0)
    far = 4 + FAR_AHEAD_MIN
    assert q.push(far + 1, 0, 0.0) == []
    assert q.counters.over_window == 1
    assert len(q) == 0 and q.expected == 0
    assert q.push(far, 1, 0.0) == []  # within far: overflow, buffered at the window edge
    assert q.expected == far - 4 and q.counters.lost == far - 4


def test_single_far_packet_does_not_disturb_stream() -> None:
    q = primed(8, 1.0, 0)
    assert q.push(1_000_000, 0, 0.0) == []
    assert q.push(0, 0, 0.0) == [0]
    assert q.push(1, 1, 0.0) == [1]
    assert q.counters.over_window == 1


def test_genuine_jump_resyncs_after_a_run() -> None:
    q = primed(8, 1.0, 0)
    q.push(3, 3, 0.0)  # buffered behind gap {0,1,2}
    out: list[int] = []
    for i in range(RESYNC_AFTER):
        out += q.push(1000 + i, 1000 + i, 0.1)
    assert out == [3, 1000 + RESYNC_AFTER - 1]
    assert q.counters.over_window == RESYNC_AFTER - 1
    assert q.expected == 1000 + RESYNC_AFTER
    assert q.push(1000 + RESYNC_AFTER, 0, 0.1) == [0]
    # lost: 0,1,2 and 4..1000+RESYNC_AFTER-2
    assert q.counters.lost == 3 + (1000 + RESYNC_AFTER - 1 - 4)


def test_scattered_far_packets_do_not_resync() -> None:
    q = primed(8, 1.0, 0)
    for i in range(10):
        q.push(10_000 * (i + 1), 0, 0.0)
    assert q.counters.over_window == 10
    assert q.expected == 0


def test_window_zero_delivers_immediately_and_never_backwards() -> None:
    q = primed(0, 1.0, 0)
    assert q.push(2, 2, 0.0) == [2]
    assert q.push(1, 1, 0.0) == []  # older than delivered: dropped
    assert q.push(0, 0, 0.0) == []
    assert q.push(3, 3, 0.0) == [3]
    assert q.next_deadline() is None
    c = q.counters
    assert (c.in_order, c.late, c.lost, c.buffered) == (3, 2, 2, 0)


def test_window_zero_far_guard() -> None:
    q = primed(0, 1.0, 0)
    assert q.push(FAR_AHEAD_MIN + 1, 0, 0.0) == []
    assert q.counters.over_window == 1
    assert q.push(FAR_AHEAD_MIN, 1, 0.0) == [1]


def test_wraparound_near_2_32() -> None:
    start = SERIAL_MASK - 4  # 2**32 - 5
    q = primed(8, 1.0, start)
    seqs = [serial_add(start, i) for i in range(10)]
    order = [seqs[i] for i in (1, 0, 3, 2, 6, 5, 4, 8, 9, 7)]
    out: list[int] = []
    for s in order:
        out += q.push(s, s, 0.0)
    assert out == seqs
    assert seqs[5] == 0


def test_around_0x7fffffff() -> None:
    start = 0x7FFFFFFF - 2
    q = primed(4, 1.0, start)
    out: list[int] = []
    for i in (2, 1, 0, 4, 3):
        out += q.push(start + i, start + i, 0.0)
    assert out == [start + i for i in range(5)]


def test_flush_delivers_everything_in_order() -> None:
    q = primed(8, 1.0, 0)
    q.push(5, 5, 0.0)
    q.push(2, 2, 0.0)
    assert q.flush() == [2, 5]
    assert q.counters.lost == 4
    assert q.next_deadline() is None


@pytest.mark.parametrize("window", [-1, 1 << 30, 1.5])
def test_bad_window_rejected(window: object) -> None:
    with pytest.raises(ValueError, match="window"):
        ReorderQueue(window, 1.0)  # type: ignore[arg-type]


def test_bad_timeout_rejected() -> None:
    with pytest.raises(ValueError, match="timeout"):
        ReorderQueue(4, -0.1)
    with pytest.raises(ValueError, match="timeout"):
        ReorderQueue(4, float("nan"))


# -- properties ---------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(start=STARTS, window=st.integers(1, 40), data=st.data())
def test_any_permutation_within_window_is_complete_and_in_order(
    start: int, window: int, data: st.DataObject
) -> None:
    n = data.draw(st.integers(1, window + 1), label="n")
    perm = data.draw(st.permutations(range(n)), label="perm")
    q = primed(window, 1.0, start)
    out: list[int] = []
    for t, i in enumerate(perm):
        out += q.push(serial_add(start, i), i, t * 1e-3)
        assert len(q) <= window
    assert out == list(range(n))
    assert len(q) == 0 and q.next_deadline() is None
    c = q.counters
    assert c.lost == c.late == c.duplicate == c.over_window == c.timeouts == 0


# One step of a random stream: ("push", offset from a moving cursor, time step) or ("timeout", time step).
_STEP = st.one_of(
    st.tuples(st.just("push"), st.integers(-12, 20), st.floats(0, 0.2)),
    st.tuples(st.just("far"), st.integers(50, 5000), st.floats(0, 0.2)),
    st.tuples(st.just("timeout"), st.just(0), st.floats(0, 0.5)),
)


@settings(max_examples=200, deadline=None)
@given(
    start=STARTS,
    window=st.integers(0, 16),
    timeout=st.sampled_from([0.0, 0.05, 0.3, 10.0]),
    steps=st.lists(_STEP, min_size=1, max_size=120),
)
def test_random_stream_invariants(
    start: int, window: int, timeout: float, steps: list[tuple[str, int, float]]
) -> None:
    q: ReorderQueue[int] = ReorderQueue(window, timeout)
    now = 0.0
    cursor = start
    pushes = 0
    pushed: set[int] = set()
    delivered: list[int] = []  # since the start, or since the queue went back to an old stream
    total = 0  # every delivery
    went_back = False  # an unconfirmed far jump was undone (no confirm() here: the PPP layer's job)
    for kind, off, dt in steps:
        now += dt
        reverted_before = q.counters.reverted
        if kind == "timeout":
            got = q.timeout(now)
            dl = q.next_deadline()
            assert dl is None or dl > now  # nothing left overdue
        else:
            seq = serial_add(cursor, off)
            cursor = serial_add(cursor, max(off, 0) if kind == "push" else 0)
            pushes += 1
            pushed.add(seq)
            got = q.push(seq, seq, now)
            if kind == "push" and off >= 0:
                cursor = serial_add(cursor, 1)
        if q.counters.reverted != reverted_before:
            went_back = True
            delivered.clear()  # ordering is judged again from the old stream on
        for s in got:
            assert s in pushed
            if delivered:
                assert serial_diff(s, delivered[-1]) > 0, "out-of-order or duplicate delivery"
            delivered.append(s)
        total += len(got)
        assert len(q) <= window
        c = q.counters
        assert push_total(q) == pushes
        assert c.buffered == c.from_buffer + c.discarded + len(q)
        assert c.in_order + c.from_buffer == total
        if delivered and not went_back:
            # every number from the first one up to expected - 1 was delivered or counted lost
            assert q.expected is not None
            assert c.lost + len(delivered) == serial_diff(q.expected, delivered[0])
    assert len(set(delivered)) == len(delivered)
    final = q.flush()
    assert len(q) == 0
    for s in final:
        assert not delivered or serial_diff(s, delivered[-1]) > 0
        delivered.append(s)
    c = q.counters
    assert c.in_order + c.from_buffer == total + len(final)
    if delivered and not went_back:
        assert c.lost == serial_diff(delivered[-1], delivered[0]) + 1 - len(delivered)


@settings(max_examples=80, deadline=None)
@given(start=STARTS, window=st.integers(1, 16), data=st.data())
def test_lossless_bounded_displacement_needs_no_timeout(start: int, window: int, data: st.DataObject) -> None:
    """A stream where every packet is displaced by less than ``window`` positions comes out whole."""
    n = 60
    keys = [i + data.draw(st.floats(0, window * 0.99), label=f"k{i}") for i in range(n)]
    order = sorted(range(n), key=lambda i: keys[i])
    q = primed(window, 1e9, start)
    out: list[int] = []
    for i in order:
        out += q.push(serial_add(start, i), i, 0.0)
        assert len(q) <= window
    assert out == list(range(n))


def test_counters_are_a_dataclass_for_metrics() -> None:
    q = primed(2, 1.0, 0)
    assert set(dataclasses.asdict(q.counters)) == {
        "in_order",
        "buffered",
        "from_buffer",
        "late",
        "duplicate",
        "over_window",
        "lost",
        "timeouts",
        "overflows",
        "reverted",
        "discarded",
    }


def test_unconfirmed_far_jump_is_undone_when_the_old_stream_goes_on() -> None:
    """Four spoofed packets far ahead make the queue jump; the next genuine packet of the old stream
    takes it back (nothing confirmed the jump), and the stream carries on in order."""
    q = primed(30, 0.1, 100)
    spoofed = [1_000_000 + i for i in range(4)]
    got = [x for s in spoofed for x in q.push(s, s, 0.0)]
    assert got == [spoofed[-1]]  # the jump happened (the fourth is delivered: PPP/MPPE drops it)
    real = [q.push(s, s, 0.0) for s in range(100, 110)]
    assert real == [[s] for s in range(100, 110)]  # no real packet lost
    assert q.counters.reverted == 1


def test_confirmed_far_jump_stands() -> None:
    """After a genuine jump (a long loss burst) the layer above confirms the new stream: a straggler
    of the old one is then only late, not a reason to go back."""
    q = primed(30, 0.1, 100)
    for s in range(5000, 5004):
        q.push(s, s, 0.0)
    q.confirm()
    assert q.push(101, 101, 0.0) == []
    assert q.push(5004, 5004, 0.0) == [5004]
    assert q.counters.reverted == 0
