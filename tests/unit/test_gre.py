"""Enhanced GRE codec: RFC 2637 §4.1 layout, round trips against scapy's GRE_PPTP, fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.l2 import GRE_PPTP
from scapy.packet import Raw

from sidecar.proto.errors import GreError
from sidecar.proto.gre import (
    GreBadFlags,
    GreBadLength,
    GreBadProtocol,
    GreBadVersion,
    GreHeader,
    GreTruncated,
    decode_header,
    encode_packet,
)
from sidecar.proto.serial import SERIAL_MASK

U32 = st.integers(0, SERIAL_MASK)
U16 = st.integers(0, 0xFFFF)
OPT_U32 = st.one_of(st.none(), U32, st.sampled_from([0, 0x7FFFFFFF, 0x80000000, SERIAL_MASK]))
PAYLOAD = st.binary(max_size=200)


def test_layout_by_hand() -> None:
    # RFC 2637 §4.1: K|S = 0x30, A|ver1 = 0x81, 0x880B, length, call ID, seq, ack.
    pkt = encode_packet(0x1234, b"\xff\x03\xc0\x21", 0xDEADBEEF, 0x01020304)
    assert pkt.hex() == "3081880b00041234deadbeef01020304ff03c021"
    assert encode_packet(7, b"", None, 5).hex() == "2081880b0000000700000005"
    assert encode_packet(7, b"ab", 9, None).hex() == "3001880b0002000700000009" + "6162"
    hdr, payload = decode_header(bytes.fromhex("3081880b00041234deadbeef01020304ff03c021"))
    assert hdr == GreHeader(call_id=0x1234, payload_len=4, seq=0xDEADBEEF, ack=0x01020304)
    assert hdr.header_len == 16
    assert bytes(payload) == b"\xff\x03\xc0\x21"


@settings(max_examples=120, deadline=None)
@given(call_id=U16, seq=OPT_U32, ack=OPT_U32, payload=PAYLOAD)
def test_ours_parsed_by_scapy(call_id: int, seq: int | None, ack: int | None, payload: bytes) -> None:
    if seq is None:
        payload = b""
        if ack is None:
            ack = 0
    pkt = encode_packet(call_id, payload, seq, ack)
    g = GRE_PPTP(pkt)
    assert g.chksum_present == 0
    assert g.routing_present == 0
    assert g.key_present == 1
    assert g.seqnum_present == (seq is not None)
    assert g.strict_route_source == 0
    assert g.recursion_control == 0
    assert g.acknum_present == (ack is not None)
    assert g.flags == 0
    assert g.version == 1
    assert g.proto == 0x880B
    assert g.payload_len == len(payload)
    assert g.call_id == call_id
    if seq is not None:
        assert g.sequence_number == seq
    if ack is not None:
        assert g.ack_number == ack
    assert bytes(g.payload) == payload


@settings(max_examples=120, deadline=None)
@given(call_id=U16, seq=OPT_U32, ack=OPT_U32, payload=PAYLOAD)
def test_scapy_parsed_by_ours(call_id: int, seq: int | None, ack: int | None, payload: bytes) -> None:
    if seq is None:
        payload = b""
        if ack is None:
            ack = 0
    g = GRE_PPTP(call_id=call_id, seqnum_present=int(seq is not None), acknum_present=int(ack is not None))
    if seq is not None:
        g.sequence_number = seq
    if ack is not None:
        g.ack_number = ack
    raw = bytes(g / Raw(payload)) if payload else bytes(g)
    hdr, body = decode_header(raw)
    assert hdr == GreHeader(call_id, len(payload), seq, ack)
    assert bytes(body) == payload
    assert encode_packet(call_id, payload, seq, ack) == raw  # byte-identical builds


def _scapy(**kw: int) -> bytes:
    g = GRE_PPTP(call_id=1, seqnum_present=1, sequence_number=1)
    for name, value in kw.items():
        setattr(g, name, value)
    return bytes(g / Raw(b"xy"))


@pytest.mark.parametrize(
    ("raw", "exc", "words"),
    [
        (_scapy(version=0), GreBadVersion, "version 0"),
        (_scapy(version=2), GreBadVersion, "version 2"),
        (_scapy(proto=0x0800), GreBadProtocol, "0x0800"),
        (_scapy(chksum_present=1), GreBadFlags, "flags"),
        (_scapy(routing_present=1), GreBadFlags, "flags"),
        (_scapy(key_present=0), GreBadFlags, "K set"),
        (_scapy(strict_route_source=1), GreBadFlags, "flags"),
        (_scapy(recursion_control=3), GreBadFlags, "flags"),
        (_scapy(flags=4), GreBadFlags, "flags"),
        (_scapy(seqnum_present=0, acknum_present=1, ack_number=5), GreBadLength, "without a sequence"),
        (bytes(GRE_PPTP(call_id=1)), GreBadFlags, "neither"),
        (_scapy(payload_len=3), GreTruncated, "truncated"),
        (_scapy(payload_len=1), GreBadLength, "beyond"),
        (_scapy()[:7], GreTruncated, "shorter than the 8-byte"),
        (_scapy()[:10], GreTruncated, "sequence"),
        (bytes(GRE_PPTP(call_id=1, acknum_present=1, ack_number=3))[:10], GreTruncated, "acknowledgement"),
        (b"", GreTruncated, "0 bytes"),
    ],
)
def test_bad_headers_name_the_problem(raw: bytes, exc: type[GreError], words: str) -> None:
    with pytest.raises(exc, match=words):
        decode_header(raw)
    assert issubclass(exc, GreError)


def test_decode_accepts_memoryview_and_bytearray() -> None:
    pkt = encode_packet(3, b"payload", 1, 2)
    for buf in (memoryview(pkt), bytearray(pkt), memoryview(b"junk" + pkt)[4:]):
        hdr, body = decode_header(buf)
        assert hdr.seq == 1 and bytes(body) == b"payload"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ((70000, b"", 1, None), "call ID"),
        ((1, b"x" * 70000, 1, None), "65535"),
        ((1, b"x", None, 3), "needs a sequence"),
        ((1, b"", None, None), "sequence number, an acknowledgement"),
        ((1, b"", 1 << 32, None), "sequence number"),
        ((1, b"", 1, -1), "acknowledgement number"),
    ],
)
def test_encode_rejects_bad_arguments(args: tuple[int, bytes, int | None, int | None], words: str) -> None:
    with pytest.raises(GreError, match=words):
        encode_packet(*args)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_random_bytes_raise_only_gre_error(raw: bytes) -> None:
    try:
        hdr, body = decode_header(raw)
    except GreError:
        return
    assert len(body) == hdr.payload_len == len(raw) - hdr.header_len


@settings(max_examples=300, deadline=None)
@given(
    seq=OPT_U32,
    ack=OPT_U32,
    payload=st.binary(max_size=20),
    flips=st.lists(st.tuples(st.integers(0, 60), st.integers(0, 255)), max_size=4),
    cut=st.integers(0, 60),
)
def test_mutated_packets_raise_only_gre_error(
    seq: int | None, ack: int | None, payload: bytes, flips: list[tuple[int, int]], cut: int
) -> None:
    if seq is None:
        payload, ack = b"", ack or 0
    buf = bytearray(encode_packet(9, payload, seq, ack))
    for pos, val in flips:
        if pos < len(buf):
            buf[pos] = val
    del buf[cut:]
    try:
        hdr, body = decode_header(bytes(buf))
    except GreError:
        return
    # Whatever survives must be self-consistent and agree with scapy.
    g = GRE_PPTP(bytes(buf))
    assert (g.call_id, g.payload_len) == (hdr.call_id, hdr.payload_len)
    assert bool(g.seqnum_present) == (hdr.seq is not None)
    assert bool(g.acknum_present) == (hdr.ack is not None)
    assert len(body) == hdr.payload_len
