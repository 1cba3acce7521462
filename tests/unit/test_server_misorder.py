"""The deliberate reorderer behind `serve --test-reorder`: deterministic, fraction honoured,
never loses or changes a packet, nothing stuck."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.proto.reorder import ReorderQueue
from sidecar.server.misorder import DeliberateReorderer, is_data_packet


def run(fraction: float, seed: int, n: int, *, max_held: int = 4) -> list[bytes]:
    r = DeliberateReorderer(fraction, random.Random(seed), max_held=max_held)
    out: list[bytes] = []
    for i in range(n):
        out += r.send(i.to_bytes(4, "big"), now=i * 0.001)
    out += r.flush()
    return out


def test_off_is_identity() -> None:
    r = DeliberateReorderer(0.0, random.Random(1))
    assert [r.send(bytes([i]), 0.0) for i in range(5)] == [[bytes([i])] for i in range(5)]
    assert r.next_deadline() is None and r.counters.held == 0


def test_deterministic_given_seed() -> None:
    assert run(0.3, 42, 500) == run(0.3, 42, 500)
    assert run(0.3, 42, 500) != run(0.3, 43, 500)


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.25, 0.5])
def test_fraction_honoured(fraction: float) -> None:
    n = 20000
    r = DeliberateReorderer(fraction, random.Random(7), max_held=64)
    for i in range(n):
        r.send(i.to_bytes(4, "big"), 0.0)
    held = r.counters.held / n
    assert abs(held - fraction) < 0.02, held
    assert r.counters.released_late + len(r.flush()) == r.counters.held


def test_held_packet_goes_after_the_next_one() -> None:
    class Fixed(random.Random):
        def __init__(self, draws: list[float]) -> None:
            super().__init__(0)
            self.draws = draws

        def random(self) -> float:
            return self.draws.pop(0)

    r = DeliberateReorderer(0.5, Fixed([0.1, 0.1, 0.1, 0.9, 0.9]))  # the first is never held
    assert r.send(b"1", 0.0) == [b"1"]
    assert r.send(b"2", 0.0) == []
    assert r.send(b"3", 0.0) == []
    assert r.send(b"4", 0.0) == [b"4", b"2", b"3"]
    assert r.send(b"5", 0.0) == [b"5"]
    assert r.counters.released_late == 2 and r.counters.held == 2


def test_timeout_releases_in_order() -> None:
    r = DeliberateReorderer(1.0, random.Random(0), hold_timeout=0.05, max_held=3)
    assert r.send(b"first", 9.0) == [b"first"]
    assert r.send(b"a", 10.0) == [] and r.send(b"b", 10.01) == []
    assert r.next_deadline() == pytest.approx(10.05)
    assert r.timeout(10.04) == []
    assert r.timeout(10.05) == [b"a", b"b"]
    assert r.next_deadline() is None and r.counters.released_by_timeout == 2


def test_max_held_bounds_depth() -> None:
    r = DeliberateReorderer(1.0, random.Random(0), max_held=2)
    assert r.send(b"first", 0) == [b"first"]
    assert r.send(b"a", 0) == [] and r.send(b"b", 0) == []
    assert r.send(b"c", 0) == [b"c", b"a", b"b"]


def test_bad_fraction() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        DeliberateReorderer(1.5, random.Random(0))


@given(st.floats(0.0, 1.0), st.integers(0, 2**32), st.integers(0, 300))
def test_permutation_absorbed_by_a_reorder_queue(fraction: float, seed: int, n: int) -> None:
    out = run(fraction, seed, n)
    assert sorted(out) == [i.to_bytes(4, "big") for i in range(n)]  # nothing lost, changed or added
    # the receiver's reorder queue (window >= max_held) puts it back in order with nothing lost
    q: ReorderQueue[bytes] = ReorderQueue(window=8, timeout=1.0)
    delivered: list[bytes] = []
    for pkt in out:
        delivered += q.push(int.from_bytes(pkt, "big"), pkt, now=0.0)
    assert delivered == [i.to_bytes(4, "big") for i in range(n)]
    assert q.counters.lost == 0 and q.counters.late == 0


@pytest.mark.parametrize(
    ("protocol", "acfc", "pfc", "data"),
    [
        (0x0021, False, False, True),  # IPv4
        (0x0021, True, True, True),
        (0x00FD, False, False, True),  # MPPE
        (0x00FD, True, True, True),
        (0x0057, False, True, True),  # IPv6
        (0xC021, False, False, False),  # LCP
        (0xC021, True, False, False),
        (0xC223, False, False, False),  # CHAP
        (0x80FD, False, False, False),  # CCP
        (0x8021, True, False, False),  # IPCP
    ],
)
@pytest.mark.parametrize("ack", [None, 77])
def test_is_data_packet(protocol: int, acfc: bool, pfc: bool, data: bool, ack: int | None) -> None:
    from scapy.layers.l2 import GRE_PPTP

    frame = b"" if acfc else b"\xff\x03"
    frame += bytes([protocol]) if pfc and protocol < 0x100 else protocol.to_bytes(2, "big")
    frame += b"\x01\x02\x03\x04"
    gre = GRE_PPTP(call_id=9, seqnum_present=1, sequence_number=3, acknum_present=int(ack is not None),
                   ack_number=ack or 0) / frame  # fmt: skip
    assert is_data_packet(bytes(gre)) is data


def test_ack_only_and_garbage_are_not_data() -> None:
    from scapy.layers.l2 import GRE_PPTP

    assert is_data_packet(bytes(GRE_PPTP(call_id=9, acknum_present=1, ack_number=5))) is False
    assert is_data_packet(b"") is False and is_data_packet(b"\x30\x81\x88\x0b\x00\x04\x00\x01") is False
