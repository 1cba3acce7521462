"""TUN offload (sidecar.proto.offload): segmentation, checksum completion and coalescing, judged by
scapy's independent builder and dissector."""

from __future__ import annotations

import contextlib
import struct
from collections import defaultdict
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw
from scapy.utils import checksum as scapy_checksum

from sidecar.proto.offload import (
    GSO_TCPV4,
    GSO_TCPV6,
    MAX_PACKET,
    NEEDS_CSUM,
    VNET_HDR_LEN,
    ZERO_HEADER,
    Coalescer,
    OffloadError,
    VnetHeader,
    checksum,
    segment,
)

TS = [("NOP", None), ("NOP", None), ("Timestamp", (123456, 654321))]
DEST4, DEST6 = bytes([10, 0, 9, 9]), bytes.fromhex("fd00" + "00" * 12 + "0099")
SLOW = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def word_sum_checksum(data: bytes) -> int:
    """RFC 1071 the long way: 16-bit words, end-around carry."""
    if len(data) & 1:
        data += b"\0"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ip_layer(v6: bool, ident: int = 1, src: int = 1) -> Any:
    if v6:
        return IPv6(src=f"fd00::{src}", dst="fd00::99", hlim=61, fl=7)
    return IP(src=f"10.0.0.{src}", dst="10.0.9.9", id=ident & 0xFFFF, flags="DF", ttl=61, tos=0x10)


def flow(sizes: list[int], *, v6: bool = False, seq: int = 1000, ident: int = 7, src: int = 1,
         push_last: bool = True, ece: bool = False) -> list[bytes]:  # fmt: skip
    """In-order data segments of one TCP flow, the way a sender without TSO emits them."""
    out = []
    for i, size in enumerate(sizes):
        flags = "A" + ("P" if push_last and i == len(sizes) - 1 else "") + ("E" if ece else "")
        payload = bytes((seq + j) & 0xFF for j in range(size))
        tcp = TCP(
            sport=40000 + src, dport=5201, seq=seq & 0xFFFFFFFF, ack=77, flags=flags, window=501, options=TS
        )
        out.append(bytes(ip_layer(v6, ident + i, src) / tcp / Raw(payload)))
        seq += size
    return out


def flow_sizes(mss: int, total: int) -> list[int]:
    return [min(mss, total - off) for off in range(0, total, mss)]


def unframe(frames: list[tuple[bytes, int, int]]) -> list[bytes]:
    out: list[bytes] = []
    for frame, count, size in frames:
        packets = segment(VnetHeader.unpack(frame), frame[VNET_HDR_LEN:])
        assert len(packets) == count and sum(map(len, packets)) == size
        out.extend(packets)
    return out


def by_flow(packets: list[bytes]) -> dict[bytes, list[bytes]]:
    """Packets grouped by flow (TCP 4-tuple, else one group per unparsed packet kind)."""
    groups: dict[bytes, list[bytes]] = defaultdict(list)
    for p in packets:
        pkt = IP(p) if p[0] >> 4 == 4 else IPv6(p)
        key = bytes(str(pkt.src) + str(pkt.dst), "ascii")
        if TCP in pkt:
            key += struct.pack("!HH", pkt[TCP].sport, pkt[TCP].dport)
        groups[key].append(p)
    return groups


def assert_valid(packet: bytes) -> Any:
    """scapy re-dissects the packet and recomputes lengths and checksums: they must match ours."""
    v4 = packet[0] >> 4 == 4
    pkt = IP(packet) if v4 else IPv6(packet)
    rebuilt = pkt.copy()
    if v4:
        del rebuilt[IP].chksum, rebuilt[IP].len
    else:
        del rebuilt[IPv6].plen
    del rebuilt[TCP].chksum
    assert bytes(rebuilt) == packet
    return pkt


# -- checksums ------------------------------------------------------------------------------------
@given(st.binary(max_size=3000))
def test_checksum_matches_scapy_and_the_word_loop(data: bytes) -> None:
    if any(data):  # all-zero data: +0 vs -0, never the case with a pseudo-header (protocol != 0)
        assert checksum(data) == word_sum_checksum(data) == scapy_checksum(data)


def test_checksum_known_vector() -> None:
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")  # RFC 1071-style example
    assert checksum(header) == 0xB861


# -- the header -------------------------------------------------------------------------------------
@given(st.tuples(*[st.integers(0, 255)] * 2, *[st.integers(0, 0xFFFF)] * 4))
def test_header_round_trip(fields: tuple[int, ...]) -> None:
    hdr = VnetHeader(*fields)
    assert len(hdr.pack()) == VNET_HDR_LEN and VnetHeader.unpack(hdr.pack()) == hdr


def test_short_header_is_an_offload_error() -> None:
    with pytest.raises(OffloadError):
        VnetHeader.unpack(b"\0" * 9)
    assert VnetHeader.unpack(ZERO_HEADER) == VnetHeader()


# -- read direction: the kernel's super-packets -----------------------------------------------------
def super_packet(total: int, mss: int, *, v6: bool, flags: str, seq: int) -> tuple[VnetHeader, bytes, bytes]:
    """A TSO frame as the kernel hands it over: full length, checksum field = pseudo-header sum."""
    payload = bytes((i * 7) & 0xFF for i in range(total))
    tcp = TCP(sport=33000, dport=80, seq=seq, ack=9, flags=flags, window=1000, options=TS, chksum=0)
    packet = bytearray(bytes(ip_layer(v6, 0xFFFE) / tcp / Raw(payload)))
    ip_hl = 40 if v6 else 20
    addrs = packet[8:40] if v6 else packet[12:20]
    pseudo = addrs + struct.pack("!HH", 6, len(packet) - ip_hl)
    struct.pack_into("!H", packet, ip_hl + 16, ~checksum(pseudo) & 0xFFFF)
    hdr = VnetHeader(NEEDS_CSUM, GSO_TCPV6 if v6 else GSO_TCPV4, ip_hl + 32, mss, ip_hl, 16)
    return hdr, bytes(packet), payload


@SLOW
@given(
    total=st.integers(1, 20000),
    mss=st.integers(1, 1460),
    v6=st.booleans(),
    flags=st.sampled_from(["A", "PA", "FPA", "CA", "CPA", "EA"]),
    seq=st.integers(0, 0xFFFFFFFF),
)
def test_segment_super_packet(total: int, mss: int, v6: bool, flags: str, seq: int) -> None:
    hdr, packet, payload = super_packet(total, mss, v6=v6, flags=flags, seq=seq)
    segs = segment(hdr, packet)
    assert len(segs) == -(-total // mss)
    got = b""
    for i, raw in enumerate(segs):
        pkt = assert_valid(raw)
        tcp = pkt[TCP]
        assert tcp.seq == (seq + len(got)) & 0xFFFFFFFF
        data = bytes(tcp.payload)
        assert len(data) == (mss if i < len(segs) - 1 else total - mss * (len(segs) - 1))
        if not v6:
            assert pkt[IP].id == (0xFFFE + i) & 0xFFFF and pkt[IP].flags == "DF"
        last, first = i == len(segs) - 1, i == 0
        assert bool(tcp.flags & 0x01) == (last and "F" in flags)
        assert bool(tcp.flags & 0x08) == (last and "P" in flags)
        assert bool(tcp.flags & 0x80) == (first and "C" in flags)
        assert bool(tcp.flags & 0x40) == ("E" in flags)
        got += data
    assert got == payload


@given(size=st.integers(0, 3000), v6=st.booleans(), udp=st.booleans())
@settings(deadline=None)
def test_partial_checksum_is_completed(size: int, v6: bool, udp: bool) -> None:
    payload = bytes((i * 13 + 1) & 0xFF for i in range(size))
    l4 = UDP(sport=53, dport=999) if udp else TCP(sport=1, dport=2, seq=5, flags="PA")
    complete = bytes(ip_layer(v6) / l4 / Raw(payload))
    ip_hl, offset = (40 if v6 else 20), (6 if udp else 16)
    partial = bytearray(complete)
    addrs = partial[8:40] if v6 else partial[12:20]
    pseudo = addrs + struct.pack("!HH", 17 if udp else 6, len(partial) - ip_hl)
    struct.pack_into("!H", partial, ip_hl + offset, ~checksum(pseudo) & 0xFFFF)
    hdr = VnetHeader(NEEDS_CSUM, 0, 0, 0, ip_hl, offset)
    assert segment(hdr, bytes(partial)) == [complete]


def test_plain_frame_passes_through() -> None:
    packet = bytes(IP(dst="10.1.1.1") / UDP() / Raw(b"x" * 100))
    assert segment(VnetHeader(), packet) == [packet]


@given(header=st.binary(min_size=10, max_size=10), packet=st.binary(max_size=200))
def test_random_frames_raise_only_offload_error(header: bytes, packet: bytes) -> None:
    try:
        out = segment(VnetHeader.unpack(header), packet)
    except OffloadError:
        return
    assert all(isinstance(p, bytes) for p in out)


@given(
    header=st.builds(
        VnetHeader,
        flags=st.sampled_from([0, NEEDS_CSUM]),
        gso_type=st.sampled_from([0, GSO_TCPV4, GSO_TCPV6, 3, 0x81]),
        hdr_len=st.integers(0, 100),
        gso_size=st.integers(0, 1500),
        csum_start=st.integers(0, 80),
        csum_offset=st.integers(0, 30),
    ),
    cut=st.integers(0, 200),
    flip=st.integers(0, 199),
)
@settings(deadline=None)
def test_mangled_tcp_frames_raise_only_offload_error(header: VnetHeader, cut: int, flip: int) -> None:
    packet = bytearray(flow([150])[0])
    packet[flip % len(packet)] ^= 0x5A
    with contextlib.suppress(OffloadError):
        segment(header, bytes(packet[:cut]))


# -- write direction: coalescing ------------------------------------------------------------------
@SLOW
@given(
    mss=st.integers(1, 1460),
    total=st.integers(1, 40000),
    v6=st.booleans(),
    push_last=st.booleans(),
    ece=st.booleans(),
    seq=st.integers(0, 0xFFFFFFFF),
    ident=st.integers(0, 0xFFFF),
    local=st.booleans(),
)
def test_segment_of_coalesce_is_identity(
    mss: int, total: int, v6: bool, push_last: bool, ece: bool, seq: int, ident: int, local: bool
) -> None:
    packets = flow(flow_sizes(mss, total), v6=v6, seq=seq, ident=ident, push_last=push_last, ece=ece)
    coalescer = Coalescer(local=[DEST6 if v6 else DEST4] if local else ())
    frames = coalescer.coalesce(packets)
    assert unframe(frames) == packets
    for frame, count, _ in frames:
        assert len(frame) - VNET_HDR_LEN <= MAX_PACKET
        hdr = VnetHeader.unpack(frame)
        if count > 1:
            assert hdr.flags == (0 if local else NEEDS_CSUM)
            if local:  # a complete checksum, derived without summing the payload
                assert_valid(frame[VNET_HDR_LEN:])
    if len(packets) > 1:  # a flow of full-sized segments always merges
        assert coalescer.counters.super_packets >= 1
        assert len(frames) < len(packets)
    c = coalescer.counters
    assert c.coalesced + c.passed == len(packets) and c.super_packets + c.passed == len(frames)


def test_super_frame_shape() -> None:
    packets = flow([1000, 1000, 1000, 400])
    ((frame, count, size),) = Coalescer().coalesce(packets)
    assert count == 4 and size == sum(map(len, packets))
    hdr = VnetHeader.unpack(frame)
    assert (hdr.flags, hdr.gso_type, hdr.gso_size, hdr.csum_start, hdr.csum_offset) == (
        NEEDS_CSUM, GSO_TCPV4, 1000, 20, 16,
    )  # fmt: skip
    assert hdr.hdr_len == 20 + 32
    pkt = IP(frame[VNET_HDR_LEN:])
    assert pkt.len == 20 + 32 + 3400 and pkt.id == 7 and pkt.flags == "DF"
    assert pkt[TCP].flags == "PA" and pkt[TCP].seq == 1000
    rebuilt = IP(frame[VNET_HDR_LEN:])
    del rebuilt.chksum
    assert IP(bytes(rebuilt)).chksum == pkt.chksum  # a valid IPv4 header checksum


other_packet = st.sampled_from(
    [
        bytes(IP(src="10.0.0.1", dst="10.0.9.9") / UDP(sport=5, dport=6) / Raw(b"u" * 300)),
        bytes(IP(src="10.0.0.1", dst="10.0.9.9", flags="DF") / TCP(sport=40001, dport=5201, flags="A")),
        bytes(IP(src="10.0.9.9", dst="10.0.0.1") / TCP(sport=5201, dport=40001, flags="A", ack=5)),
        bytes(IP(src="10.0.0.1", dst="10.0.9.9", flags="MF") / Raw(b"f" * 64)),
        b"\x45\x00\x00",
        b"\x60" + b"\0" * 50,
    ]
)


@SLOW
@given(
    a=st.integers(1, 30),
    b=st.integers(1, 30),
    mss=st.integers(100, 1400),
    extras=st.lists(other_packet, max_size=6),
    order=st.randoms(use_true_random=False),
)
def test_interleaved_flows_keep_their_order(
    a: int, b: int, mss: int, extras: list[bytes], order: Any
) -> None:
    one = flow([mss] * a, src=1)
    two = flow([mss] * b, src=2, v6=True)
    # random interleaving that keeps each list's own order
    sources = [one, two, extras]
    positions = [0, 0, 0]
    mixed: list[bytes] = []
    while any(positions[i] < len(s) for i, s in enumerate(sources)):
        i = order.choice([i for i, s in enumerate(sources) if positions[i] < len(s)])
        mixed.append(sources[i][positions[i]])
        positions[i] += 1
    out = unframe(Coalescer().coalesce(mixed))
    assert sorted(out) == sorted(mixed)
    parsable = [p for p in mixed if len(p) >= 40]
    assert by_flow([p for p in out if len(p) >= 40]) == by_flow(parsable)
    # packets no flow can be told from stay in place relative to everything
    for junk in (p for p in mixed if len(p) < 40):
        assert out.index(junk) == mixed.index(junk)


@given(st.lists(st.binary(max_size=120), max_size=20))
def test_random_packets_pass_through_unchanged(packets: list[bytes]) -> None:
    coalescer = Coalescer()
    frames = coalescer.coalesce(packets)
    assert frames == [(ZERO_HEADER + p, 1, len(p)) for p in packets]
    assert coalescer.counters.passed == len(packets)


def test_damaged_segment_is_not_vouched_for() -> None:
    packets = flow([500] * 4)
    bad = bytearray(packets[2])
    bad[-1] ^= 1  # payload damaged in the tunnel: its TCP checksum no longer matches
    packets[2] = bytes(bad)
    frames = Coalescer().coalesce(packets)
    assert frames[1] == (ZERO_HEADER + packets[2], 1, len(packets[2]))  # as it was: the kernel drops it
    assert unframe(frames) == packets


def test_damaged_segments_for_a_local_destination_are_never_merged() -> None:
    packets = flow([501, 501, 501, 501, 20])  # odd sizes: parts at odd offsets
    good = Coalescer(local=[DEST4]).coalesce(packets)
    assert len(good) == 1
    assert_valid(good[0][0][VNET_HDR_LEN:])
    # two damaged segments: a summed super-packet checksum lets such a pair through when the errors
    # cancel (the fuzzer found one); so each is checked alone and passed unmerged for the kernel to drop
    bad2, bad3 = bytearray(packets[2]), bytearray(packets[3])
    bad2[-8] = (bad2[-8] + 1) % 256
    bad3[-8] = (bad3[-8] - 1) % 256
    packets[2], packets[3] = bytes(bad2), bytes(bad3)
    frames = Coalescer(local=[DEST4]).coalesce(packets)
    singles = [frame[VNET_HDR_LEN:] for frame, count, _ in frames if count == 1]
    assert packets[2] in singles and packets[3] in singles
    assert all(frame[:VNET_HDR_LEN] == ZERO_HEADER for frame, count, _ in frames if count == 1)
    assert sum(count for _, count, _ in frames) == len(packets)


@pytest.mark.parametrize(
    "change",
    ["id_gap", "no_df", "ttl", "window", "ack", "seq_gap", "short_middle", "push_middle", "fin", "options"],
)
def test_segments_that_would_not_round_trip_are_not_merged(change: str) -> None:
    packets = flow([600] * 4)
    pkt = IP(packets[2])
    if change == "id_gap":
        pkt.id += 5
    elif change == "no_df":
        pkt.flags = 0
    elif change == "ttl":
        pkt.ttl = 3
    elif change == "window":
        pkt[TCP].window = 9
    elif change == "ack":
        pkt[TCP].ack = 1
    elif change == "seq_gap":
        pkt[TCP].seq += 1
    elif change == "short_middle":
        pkt[TCP].remove_payload()
        pkt = pkt / Raw(b"s" * 100)
    elif change == "push_middle":
        pkt[TCP].flags = "PA"
    elif change == "fin":
        pkt[TCP].flags = "FA"
    elif change == "options":
        pkt[TCP].options = [("NOP", None), ("NOP", None), ("Timestamp", (1, 1))]
    del pkt.chksum, pkt.len, pkt[TCP].chksum
    packets[2] = bytes(pkt)
    coalescer = Coalescer()
    frames = coalescer.coalesce(packets)
    assert unframe(frames) == packets
    assert len(frames) >= 2


def test_coalesced_size_is_capped() -> None:
    packets = flow([1400] * 100)
    frames = Coalescer().coalesce(packets)
    assert unframe(frames) == packets
    assert all(len(f) - VNET_HDR_LEN <= MAX_PACKET for f, _, _ in frames)
    assert len(frames) == 3  # 46 + 46 + 8 segments of 1400 bytes


# -- the setting ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "on"), [(None, False), ("auto", True), ("off", False), (" AUTO ", True)])
def test_tun_offload_setting(tmp_path: Any, value: str | None, on: bool) -> None:
    from sidecar.config import build_serve_settings, build_up_settings

    env = {} if value is None else {"PPTP_TUN_OFFLOAD": value}
    secrets = tmp_path / "chap-secrets"
    secrets.write_text("alice * pw *\n")
    assert build_serve_settings({"secrets": str(secrets)}, env).tun_offload is on
    up_env = {"PPTP_SERVER": "192.0.2.1", "PPTP_USER": "u", "PPTP_PASSWORD": "p", **env}
    assert build_up_settings({}, up_env).tun_offload is on


def test_tun_offload_setting_rejects_other_values() -> None:
    from sidecar.config import ConfigError, build_up_settings

    env = {"PPTP_SERVER": "192.0.2.1", "PPTP_USER": "u", "PPTP_PASSWORD": "p", "PPTP_TUN_OFFLOAD": "on"}
    with pytest.raises(ConfigError, match="PPTP_TUN_OFFLOAD='on': expected one of auto, off"):
        build_up_settings({}, env)
