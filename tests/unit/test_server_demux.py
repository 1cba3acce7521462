"""GRE demultiplexer: (source address, call ID) -> session; everything else dropped and counted.
Packets are built with scapy's independent GRE_PPTP layer."""

from __future__ import annotations

from ipaddress import IPv4Address as A

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import GRE
from scapy.layers.l2 import GRE_PPTP

from sidecar.server.demux import GreDemux


def pptp(call_id: int, payload: bytes = b"\xff\x03\x00\x21data", seq: int | None = 1) -> bytes:
    pkt = GRE_PPTP(call_id=call_id, seqnum_present=int(seq is not None), sequence_number=seq or 0)
    return bytes(pkt / payload)


def test_routes_by_source_and_call_id() -> None:
    d: GreDemux[str] = GreDemux()
    d.add(A("192.0.2.1"), 100, "alice")
    d.add(A("192.0.2.2"), 100, "bob")  # same call ID, another client address
    d.add(A("192.0.2.1"), 200, "carol")  # same address (NAT), another call
    assert d.route(A("192.0.2.1"), pptp(100)) == "alice"
    assert d.route(A("192.0.2.2"), pptp(100)) == "bob"
    assert d.route(A("192.0.2.1"), pptp(200, seq=None)) == "carol"
    # bob's call ID from alice's address belongs to nobody: dropped, not given to bob
    assert d.route(A("192.0.2.1"), pptp(300)) is None
    assert d.route(A("192.0.2.3"), pptp(100)) is None
    assert d.counters.routed == 3 and d.counters.unknown_call == 2
    d.remove(A("192.0.2.1"), 100)
    assert d.route(A("192.0.2.1"), pptp(100)) is None
    assert len(d) == 2


def test_duplicate_route_refused() -> None:
    d: GreDemux[str] = GreDemux()
    d.add(A("192.0.2.1"), 7, "a")
    with pytest.raises(KeyError, match="already routed"):
        d.add(A("192.0.2.1"), 7, "b")


def test_not_pptp_and_truncated() -> None:
    d: GreDemux[str] = GreDemux()
    d.add(A("192.0.2.1"), 5, "a")
    plain_gre = bytes(GRE(proto=0x0800) / (b"\x45" + b"\x00" * 30))  # version 0, no key
    assert d.route(A("192.0.2.1"), plain_gre) is None
    wrong_proto = bytearray(pptp(5))
    wrong_proto[2:4] = b"\x08\x00"
    assert d.route(A("192.0.2.1"), bytes(wrong_proto)) is None
    assert d.route(A("192.0.2.1"), pptp(5)[:7]) is None
    assert d.counters.not_pptp == 2 and d.counters.truncated == 1 and d.counters.routed == 0


@given(st.integers(0, 0xFFFF), st.booleans())
def test_call_id_matches_scapy(call_id: int, with_seq: bool) -> None:
    d: GreDemux[str] = GreDemux()
    d.add(A("192.0.2.1"), call_id, "a")
    assert d.route(A("192.0.2.1"), pptp(call_id, seq=5 if with_seq else None)) == "a"
    assert d.route(A("192.0.2.1"), pptp(call_id ^ 1, seq=5 if with_seq else None)) is None


def test_batch_in_runs_per_session() -> None:
    """A batch comes back in order as runs of consecutive packets for one session; a source
    matches by value (another object of the same address), and dropped packets end no run."""
    d: GreDemux[str] = GreDemux()
    d.add(A("192.0.2.1"), 1, "alice")
    d.add(A("192.0.2.2"), 1, "bob")
    alice, bob = A("192.0.2.1"), A("192.0.2.2")  # not the objects the routes were added with
    batch = [
        (alice, pptp(1, b"a1")),
        (alice, pptp(1, b"a2")),
        (bob, pptp(9, b"lost")),  # nobody's call: dropped
        (alice, pptp(1, b"a3")),
        (bob, pptp(1, b"b1")),
        (alice, pptp(1, b"a4")),
    ]
    runs = d.route_batch(batch)
    assert [(who, [p[-2:] for p in packets]) for who, packets in runs] == [
        ("alice", [b"a1", b"a2", b"a3"]),
        ("bob", [b"b1"]),
        ("alice", [b"a4"]),
    ]
    assert d.counters.routed == 5 and d.counters.unknown_call == 1
    d.remove(A("192.0.2.1"), 1)
    assert d.route_batch(batch[:2]) == [] and d.route(bob, pptp(1)) == "bob" and len(d) == 1


@given(st.binary(max_size=40))
def test_garbage_never_raises(data: bytes) -> None:
    d: GreDemux[str] = GreDemux()
    d.add(A("192.0.2.1"), 1, "a")
    d.route(A("192.0.2.1"), data)
    c = d.counters
    assert c.routed + c.truncated + c.not_pptp + c.unknown_call == 1
