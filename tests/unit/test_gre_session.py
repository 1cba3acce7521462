"""GreSession: call-ID/flag filtering, ack piggybacking, delayed ack-only, wrap-around, reordering."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.l2 import GRE_PPTP
from scapy.packet import Raw

from sidecar.proto.errors import GreError
from sidecar.proto.gre import NO_WINDOW, GreSession, decode_header, encode_packet
from sidecar.proto.serial import SERIAL_MASK, serial_add, serial_diff

LOCAL, PEER = 0x1111, 0x2222


def session(**kw: float | int) -> GreSession:
    args: dict[str, float | int] = {"reorder_window": 16, "reorder_timeout": 0.3, "ack_delay": 0.01}
    args.update(kw)
    return GreSession(LOCAL, PEER, **args)  # type: ignore[arg-type]


def data(seq: int, payload: bytes = b"frame", ack: int | None = None, call_id: int = LOCAL) -> bytes:
    return encode_packet(call_id, payload, seq, ack)


def error_total(s: GreSession) -> int:
    c = s.counters
    return c.bad_version + c.bad_protocol + c.bad_flags + c.bad_call_id + c.truncated + c.bad_length


# -- receive filtering --------------------------------------------------------------------------------


def test_receive_delivers_payload_and_counts() -> None:
    s = session()
    assert s.receive(data(5, b"abc"), 0.0) == [b"abc"]
    assert (s.counters.rx_packets, s.counters.rx_bytes) == (1, 3)
    assert error_total(s) == 0


def _scapy(**kw: int) -> bytes:
    g = GRE_PPTP(call_id=LOCAL, seqnum_present=1, sequence_number=1)
    for name, value in kw.items():
        setattr(g, name, value)
    return bytes(g / Raw(b"xy"))


@pytest.mark.parametrize(
    ("raw", "counter"),
    [
        (_scapy(call_id=PEER), "bad_call_id"),
        (_scapy(call_id=0), "bad_call_id"),
        (_scapy(version=0), "bad_version"),
        (_scapy(proto=0x0800), "bad_protocol"),
        (_scapy(chksum_present=1), "bad_flags"),
        (_scapy(key_present=0), "bad_flags"),
        (_scapy(flags=1), "bad_flags"),
        (_scapy(payload_len=9), "truncated"),
        (_scapy()[:5], "truncated"),
        (_scapy(payload_len=1), "bad_length"),
    ],
)
def test_bad_packets_dropped_and_counted(raw: bytes, counter: str) -> None:
    s = session()
    assert s.receive(raw, 0.0) == []
    assert getattr(s.counters, counter) == 1
    assert error_total(s) == 1
    assert s.counters.rx_packets == 0
    assert not s.ack_owed  # nothing acked for a dropped packet
    assert s.reorder.expected is None  # and the stream state is untouched
    assert s.receive(data(1, b"ok"), 0.0) == [b"ok"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=5))
def test_receive_never_raises_and_counts_each_packet_once(packets: list[bytes]) -> None:
    s = session()
    for i, raw in enumerate(packets):
        s.receive(raw, float(i))
        s.receive(memoryview(raw), float(i))
    assert s.counters.rx_packets + error_total(s) == 2 * len(packets)


@settings(max_examples=200, deadline=None)
@given(
    flips=st.lists(st.tuples(st.integers(0, 30), st.integers(0, 255)), min_size=1, max_size=3),
    cut=st.integers(0, 40),
)
def test_mutated_packets_never_raise(flips: list[tuple[int, int]], cut: int) -> None:
    s = session()
    buf = bytearray(data(3, b"0123456789", ack=0))
    for pos, val in flips:
        if pos < len(buf):
            buf[pos] = val
    s.receive(bytes(buf[:cut]), 0.0)
    assert s.counters.rx_packets + error_total(s) == 1


@settings(max_examples=500, deadline=None)
@given(
    flags=st.sampled_from([0x3081, 0x3001, 0x2081, 0x2001, 0x3080, 0x3082, 0x3089, 0xB081, 0x3181])
    | st.integers(0, 0xFFFF),
    proto=st.sampled_from([0x880B, 0x0800]),
    call_id=st.sampled_from([LOCAL, PEER]),
    seq=st.integers(0, SERIAL_MASK),
    ack=st.integers(0, SERIAL_MASK),
    payload=st.binary(max_size=24),
    length_error=st.sampled_from([0, 0, 0, 1, -1, 4, -4]),
    as_view=st.booleans(),
)
def test_receive_agrees_with_the_full_decoder(
    flags: int, proto: int, call_id: int, seq: int, ack: int, payload: bytes, length_error: int, as_view: bool
) -> None:
    """The receive fast path (usual header shapes) and the full validation accept and reject the same
    packets: whatever the header, receive() does what decode_header() says it should."""
    head = flags.to_bytes(2, "big") + proto.to_bytes(2, "big")
    head += max(0, len(payload) + length_error).to_bytes(2, "big") + call_id.to_bytes(2, "big")
    raw = (
        head
        + (seq.to_bytes(4, "big") if flags & 0x1000 else b"")
        + (ack.to_bytes(4, "big") if flags & 0x80 else b"")
    )
    raw += payload
    s = session()
    s.send(b"x", 0.0)  # one number of ours sent: ack 0 is valid, anything else is ignored
    got = s.receive(memoryview(raw) if as_view else raw, 0.0)
    try:
        header, body = decode_header(raw)
    except GreError:
        assert got == [] and error_total(s) == 1 and s.counters.rx_packets == 0
        return
    if header.call_id != LOCAL:
        assert got == [] and s.counters.bad_call_id == 1 and s.counters.rx_packets == 0
        return
    assert error_total(s) == 0 and s.counters.rx_packets == 1
    assert s.peer_ack == (0 if header.ack == 0 else None)
    if header.seq is None:
        assert got == [] and s.counters.rx_ack_only == 1
    else:
        assert got == ([bytes(body)] if len(body) else [])
        assert all(type(frame) is bytes for frame in got)
        assert s.highest_received == header.seq and s.ack_owed


# -- acks ---------------------------------------------------------------------------------------------


def test_send_sequence_numbers_and_no_ack_when_nothing_owed() -> None:
    s = session(initial_seq=41)
    for expected_seq in (41, 42, 43):
        hdr, body = decode_header(s.send(b"out", 0.0))
        assert (hdr.call_id, hdr.seq, hdr.ack, bytes(body)) == (PEER, expected_seq, None, b"out")
    assert (s.counters.tx_packets, s.counters.tx_bytes) == (3, 9)


def test_ack_piggybacks_on_data_once() -> None:
    s = session()
    s.receive(data(100), 0.0)
    s.receive(data(101), 0.001)
    assert s.ack_owed
    hdr, _ = decode_header(s.send(b"reply", 0.002))
    assert hdr.ack == 101 and hdr.seq == 0
    g = GRE_PPTP(s.send(b"again", 0.003))  # nothing new to ack
    assert g.acknum_present == 0
    s.receive(data(102), 0.004)
    assert GRE_PPTP(s.send(b"x", 0.005)).ack_number == 102
    assert s.counters.tx_ack_only == 0
    assert s.timeout(1.0) == ([], [])  # piggybacked: no ack-only packet later


def test_ack_only_after_delay_only_when_owed() -> None:
    s = session(ack_delay=0.01)
    assert s.next_deadline() is None
    assert s.timeout(5.0) == ([], [])  # nothing received: nothing owed
    s.receive(data(7), 10.0)
    s.receive(data(8), 10.004)  # the clock runs from the first unacked arrival
    assert s.next_deadline() == pytest.approx(10.01)
    assert s.timeout(10.009) == ([], [])
    frames, packets = s.timeout(10.01)
    assert frames == [] and len(packets) == 1
    g = GRE_PPTP(packets[0])
    assert (g.seqnum_present, g.acknum_present, g.payload_len, g.call_id, g.ack_number) == (0, 1, 0, PEER, 8)
    assert s.counters.tx_ack_only == 1 and s.counters.tx_packets == 1
    assert s.next_deadline() is None
    assert s.timeout(11.0) == ([], [])  # acked once, not again


def test_duplicates_and_late_packets_are_not_re_acked() -> None:
    s = session()
    s.receive(data(1), 0.0)
    s.send(b"x", 0.0)
    s.receive(data(1), 0.1)
    s.receive(data(0), 0.1)
    assert not s.ack_owed
    assert s.reorder.counters.duplicate == 2


def test_ack_covers_buffered_packets() -> None:
    s = session()
    s.receive(data(1), 0.0)
    assert s.receive(data(3), 0.0) == []  # buffered behind the gap at 2
    hdr, _ = decode_header(s.send(b"x", 0.0))
    assert hdr.ack == 3  # highest accepted, as RFC 2637 "highest numbered packet received"


def test_peer_acks_tracked() -> None:
    s = session(initial_seq=SERIAL_MASK - 1)
    for _ in range(4):
        s.send(b"x", 0.0)  # seqs 2**32-2, 2**32-1, 0, 1
    assert s.last_sent_seq == 1
    assert s.unacked == 4
    s.receive(encode_packet(LOCAL, b"", None, SERIAL_MASK), 0.0)
    assert s.peer_ack == SERIAL_MASK and s.unacked == 2
    assert s.counters.rx_ack_only == 1
    s.receive(encode_packet(LOCAL, b"", None, SERIAL_MASK - 1), 0.0)  # older ack: ignored silently
    assert s.peer_ack == SERIAL_MASK
    s.receive(encode_packet(LOCAL, b"", None, 2), 0.0)  # never sent
    assert s.peer_ack == SERIAL_MASK and s.counters.ack_ignored == 1
    s.receive(data(9, ack=1), 0.0)
    assert s.peer_ack == 1 and s.unacked == 0


# -- sequence wrap and reordering ---------------------------------------------------------------------


@pytest.mark.parametrize("start", [SERIAL_MASK - 4, 0x7FFFFFFF - 3, 0x7FFFFFFF, 0])
def test_wraparound_between_two_sessions(start: int) -> None:
    a = GreSession(1, 2, reorder_window=8, reorder_timeout=0.3, initial_seq=start)
    b = GreSession(2, 1, reorder_window=8, reorder_timeout=0.3)
    pkts = [a.send(f"m{i}".encode(), 0.0) for i in range(12)]
    assert [decode_header(p)[0].seq for p in pkts] == [serial_add(start, i) for i in range(12)]
    order = [0, 2, 1, 3, 5, 4, 7, 6, 10, 8, 9, 11]
    got: list[bytes] = []
    for i in order:
        got += b.receive(pkts[i], 0.0)
    assert got == [f"m{i}".encode() for i in range(12)]
    assert b.highest_received == serial_add(start, 11)
    reply = b.send(b"r", 0.0)
    assert decode_header(reply)[0].ack == serial_add(start, 11)
    assert a.unacked == 12
    assert a.receive(reply, 0.0) == [b"r"]
    assert a.peer_ack == serial_add(start, 11) and a.unacked == 0


def test_reorder_timeout_via_session_timeout() -> None:
    s = session(reorder_timeout=0.3, ack_delay=1.0)
    s.receive(data(10, b"a"), 0.0)
    s.receive(data(12, b"c"), 0.1)
    assert s.next_deadline() == pytest.approx(0.4)
    frames, packets = s.timeout(0.4)
    assert frames == [b"c"] and packets == []
    assert s.reorder.counters.lost == 1


def test_empty_sequenced_payload_consumes_number_but_yields_no_frame() -> None:
    s = session()
    assert s.receive(data(1, b""), 0.0) == []
    assert s.receive(data(2, b"x"), 0.0) == [b"x"]
    assert s.reorder.counters.in_order == 2


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="local_call_id"):
        GreSession(70000, 1, reorder_window=1, reorder_timeout=1)
    with pytest.raises(ValueError, match="initial_seq"):
        GreSession(1, 1, reorder_window=1, reorder_timeout=1, initial_seq=-1)
    with pytest.raises(ValueError, match="ack_delay"):
        GreSession(1, 1, reorder_window=1, reorder_timeout=1, ack_delay=-1)


# -- a bidirectional exchange -------------------------------------------------------------------------


def _exchange(rate_a: float, rate_b: float, seconds: float, seed: int) -> tuple[GreSession, GreSession]:
    """Two sessions exchanging Poisson traffic over a link with jittered delay (so some reordering)."""
    rng = random.Random(seed)
    a = GreSession(1, 2, reorder_window=16, reorder_timeout=0.3)
    b = GreSession(2, 1, reorder_window=16, reorder_timeout=0.3)
    events: list[tuple[float, int, str, bytes]] = []  # (time, tiebreak, kind, packet)
    n = 0
    for who, rate in (("a", rate_a), ("b", rate_b)):
        t = 0.0
        while True:
            t += rng.expovariate(rate)
            if t > seconds:
                break
            events.append((t, n, "send-" + who, b""))
            n += 1
    events.sort()
    delivered = {"a": 0, "b": 0}
    sent = {"a": 0, "b": 0}
    i = 0
    now = 0.0
    while i < len(events):
        events.sort()
        now, _, kind, pkt = events[i]
        i += 1
        for s, name, other in ((a, "a", "b"), (b, "b", "a")):
            dl = s.next_deadline()
            if dl is not None and dl <= now:
                frames, outs = s.timeout(now)
                delivered[name] += len(frames)
                for o in outs:
                    events.append((now + 0.02 + rng.uniform(0, 0.004), n, "recv-" + other, o))
                    n += 1
        if kind.startswith("send-"):
            name = kind[5:]
            s = a if name == "a" else b
            sent[name] += 1
            events.append(
                (
                    now + 0.02 + rng.uniform(0, 0.004),
                    n,
                    "recv-" + ("b" if name == "a" else "a"),
                    s.send(b"p" * 100, now),
                )
            )
            n += 1
        else:
            name = kind[5:]
            s = a if name == "a" else b
            delivered[name] += len(s.receive(pkt, now))
    for s, name in ((a, "a"), (b, "b")):
        frames, _ = s.timeout(now + 10)
        delivered[name] += len(frames)
    assert delivered == {"a": sent["b"], "b": sent["a"]}  # jitter reorders, the queue restores all
    return a, b


def test_bidirectional_exchange_has_few_ack_only_packets() -> None:
    a, b = _exchange(rate_a=500, rate_b=500, seconds=2.0, seed=1)
    for s in (a, b):
        frac = s.counters.tx_ack_only / s.counters.tx_packets
        assert frac < 0.05, frac
    assert a.reorder.counters.buffered > 0  # the jitter really reordered packets


def test_one_way_flow_is_still_acked_every_ack_delay() -> None:
    a, b = _exchange(rate_a=1000, rate_b=0.001, seconds=1.0, seed=2)
    # b sends almost no data: its acks go out as ack-only packets, about one per ack_delay (10 ms).
    assert 60 <= b.counters.tx_ack_only <= 110
    assert a.peer_ack is not None
    assert serial_diff(a.last_sent_seq or 0, a.peer_ack) < 50


def test_a_one_way_flow_is_acked_every_ack_every_packets_not_only_after_the_delay() -> None:
    # A peer that honours our receive window (64, RFC 2637 §4.2) would otherwise get credit only
    # every ack_delay: 64 packets per 10 ms. Found against pptpd (see tests/interop).
    from sidecar.proto.gre import ACK_EVERY

    s = session(ack_delay=0.010)
    now = 5.0
    for seq in range(ACK_EVERY - 1):
        s.receive(data(seq), now)
    assert s.next_deadline() == pytest.approx(now + 0.010)
    assert s.timeout(now)[1] == []
    s.receive(data(ACK_EVERY - 1), now)
    deadline = s.next_deadline()
    assert deadline is not None and deadline <= now
    (ack,) = s.timeout(now)[1]
    header, payload = decode_header(ack)
    assert (header.seq, header.ack, bytes(payload)) == (None, ACK_EVERY - 1, b"")
    parsed = GRE_PPTP(ack)  # scapy agrees: ack-only, acknowledging the last packet
    assert parsed.seqnum_present == 0 and parsed.ack_number == ACK_EVERY - 1
    for seq in range(ACK_EVERY, 2 * ACK_EVERY - 1):  # the count starts over after an ack
        s.receive(data(seq), now)
    assert s.timeout(now)[1] == []


# -- the peer's receive window (RFC 2637 §4.2) --------------------------------------------------------


def test_send_room_counts_packets_in_flight_against_the_peer_window() -> None:
    assert session().send_room() == NO_WINDOW  # no window from the call setup: not paced
    s = session(peer_window=4)
    assert s.send_room() == 4
    for i in range(4):
        s.send(b"x", 0.0)
        assert s.send_room() == 3 - i
    s.receive(encode_packet(LOCAL, b"", None, 1), 0.0)  # the peer acks our first two (0 and 1)
    assert s.send_room() == 2
    s.receive(encode_packet(LOCAL, b"", None, 3), 0.0)
    assert s.send_room() == 4


def test_window_stalled_takes_lost_acks_as_acked_or_stops_pacing_a_silent_peer() -> None:
    s = session(peer_window=2)
    s.send(b"x", 0.0)
    s.receive(encode_packet(LOCAL, b"", None, 0), 0.0)
    s.send(b"x", 0.0)
    s.send(b"x", 0.0)
    assert s.send_room() == 0
    s.window_stalled()  # the ack for 1 and 2 got lost
    assert s.send_room() == 2 and s.peer_window == 2
    silent = session(peer_window=2)
    silent.send(b"x", 0.0)
    silent.send(b"x", 0.0)
    silent.window_stalled()  # never acked anything: a peer that does not ack is not paced
    assert silent.peer_window == 0 and silent.send_room() == NO_WINDOW
