"""Superseded TCP acks (sidecar.proto.ackfilter): which pure acks a batch may leave out, judged by
scapy's independent builder and dissector."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, IPOption
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from sidecar.proto.ackfilter import drop_superseded_acks, pure_ack

TS = [("NOP", None), ("NOP", None), ("Timestamp", (1000, 2000))]
SLOW = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def ack4(
    ack: int,
    *,
    src: str = "10.0.0.2",
    dst: str = "10.0.0.1",
    sport: int = 5201,
    dport: int = 40000,
    flags: str = "A",
    options: Any = TS,
    payload: bytes = b"",
    **ip: Any,
) -> bytes:
    return bytes(
        IP(src=src, dst=dst, **ip)
        / TCP(sport=sport, dport=dport, flags=flags, seq=7, ack=ack, window=500, options=options)
        / Raw(payload)
    )


def ack6(ack: int, *, sport: int = 5201, flags: str = "A", options: Any = TS) -> bytes:
    return bytes(
        IPv6(src="fd00::2", dst="fd00::1")
        / TCP(sport=sport, dport=40000, flags=flags, ack=ack, options=options)
    )


def _with_offset_bits(packet: bytes, bits: int) -> bytes:
    """``packet`` (IPv4, no options) with the low nibble of the TCP data-offset byte set: the
    reserved bits and AE (scapy keeps the checksum it computed; the filter never looks at it)."""
    out = bytearray(packet)
    out[20 + 12] |= bits
    return bytes(out)


def test_a_run_of_acks_of_one_connection_keeps_only_the_newest() -> None:
    batch = [ack4(1000 * i) for i in range(1, 9)]
    assert drop_superseded_acks(batch) == [batch[-1]]


def test_data_and_other_connections_stay_in_order_around_the_newest_ack() -> None:
    data = ack4(0, flags="PA", payload=b"x" * 1300, sport=22)
    a1, a2 = ack4(100), ack4(200)
    other = ack4(150, sport=5202)  # another connection: its own newest
    back = ack4(50, src="10.0.0.1", dst="10.0.0.2", sport=40000, dport=5201)  # the reverse direction
    batch = [a1, data, other, back, a2]
    assert drop_superseded_acks(batch) == [data, other, back, a2]


def test_duplicate_acks_and_window_updates_are_all_kept() -> None:
    batch = [ack4(500), ack4(500), ack4(500)]  # equal ack numbers: dup acks drive fast retransmit
    assert drop_superseded_acks(batch) == batch


def test_ack_numbers_compare_across_the_2_32_wrap() -> None:
    old, new = ack4(2**32 - 100), ack4(50)
    assert drop_superseded_acks([old, new]) == [new]
    assert drop_superseded_acks([new, old]) == [new, old]  # an older number later: both kept


def test_what_is_never_dropped() -> None:
    later = ack4(10_000)
    keep = {
        "SACK blocks": ack4(100, options=[("NOP", None), ("NOP", None), ("SAck", (300, 400))]),
        "PSH": ack4(100, flags="PA"),
        "FIN": ack4(100, flags="FA"),
        "ECE": ack4(100, flags="AE"),
        "CWR": ack4(100, flags="AC"),
        "payload": ack4(100, payload=b"abc"),
        "ECN codepoint": ack4(100, tos=1),
        "IP options": bytes(
            IP(src="10.0.0.2", dst="10.0.0.1", options=[IPOption(b"\x01\x01\x01\x00")])
            / TCP(sport=5201, dport=40000, flags="A", ack=100)
        ),
        "fragment": bytes(
            IP(src="10.0.0.2", dst="10.0.0.1", flags="MF") / TCP(sport=5201, dport=40000, flags="A", ack=100)
        ),
        "unknown option": ack4(100, options=[("MSS", 1400)]),
        "AE bit (AccECN)": _with_offset_bits(ack4(100), 0x01),
        "reserved bits": _with_offset_bits(ack4(100), 0x08),
    }
    for name, packet in keep.items():
        assert drop_superseded_acks([packet, later]) == [packet, later], name
    # the newer one must be pure too, or it supersedes nothing
    for name, packet in keep.items():
        if name in ("ECN codepoint", "IP options", "fragment"):
            continue
        assert drop_superseded_acks([ack4(50), packet]) == [ack4(50), packet], name


def test_ipv6_acks_are_filtered_the_same_way() -> None:
    batch = [ack6(10), ack6(20), ack6(15, sport=1), ack6(30)]
    assert drop_superseded_acks(batch) == [batch[2], batch[3]]
    assert drop_superseded_acks([ack6(10, flags="PA"), ack6(20)]) == [ack6(10, flags="PA"), ack6(20)]


def test_a_truncated_or_lying_header_is_never_taken_for_an_ack() -> None:
    good = ack4(100)
    assert pure_ack(good) is not None
    assert pure_ack(good[:-1]) is None  # shorter than its IP total length
    assert pure_ack(good + b"\x00") is None  # longer
    no_ts_room = bytearray(ack4(100, options=[("NOP", None), ("NOP", None), ("NOP", None), ("NOP", None)]))
    no_ts_room[-4:] = b"\x08\x0a\x00\x00"  # a timestamp option that would run past the header
    assert pure_ack(bytes(no_ts_room)) is None


def test_nothing_to_drop_returns_the_same_list() -> None:
    batch = [ack4(1), ack4(1, sport=9)]
    assert drop_superseded_acks(batch) is batch
    assert drop_superseded_acks([]) == []


# -- properties: scapy decides what a pure ack is, the filter must agree --------------------------------
def _scapy_pure_ack(packet: bytes) -> tuple[Any, int] | None:
    if packet[0] >> 4 == 4:
        ip: Any = IP(packet)
        if ip.ihl != 5 or ip.flags.MF or ip.frag or ip.tos & 3 or ip.len != len(packet):
            return None
        key: Any = (ip.src, ip.dst)
    else:
        ip = IPv6(packet)
        if ip.nh != 6 or ip.tc & 3 or ip.plen + 40 != len(packet):
            return None
        key = (ip.src, ip.dst)
    tcp = ip[TCP]
    if (
        str(tcp.flags) != "A"  # scapy's flags include AE (its "N")
        or tcp.reserved
        or len(tcp.payload)
        or any(k not in ("NOP", "EOL", "Timestamp") for k, _ in tcp.options)
    ):
        return None
    return (*key, tcp.sport, tcp.dport), tcp.ack


@st.composite
def batches(draw: st.DrawFn) -> list[bytes]:
    out = []
    for _ in range(draw(st.integers(0, 24))):
        v6 = draw(st.booleans())
        sport = draw(st.sampled_from([5201, 5202]))
        ack = (
            draw(st.sampled_from([0, 1, 2**31, 2**32 - 1]))
            if draw(st.booleans())
            else draw(st.integers(0, 40))
        )
        flags = draw(st.sampled_from(["A", "A", "A", "PA", "AE", "FA"]))
        options = draw(st.sampled_from([TS, [], [("SAck", (5, 9))], [("NOP", None)] * 4]))
        if v6:
            out.append(ack6(ack, sport=sport, flags=flags, options=options))
        else:
            payload = draw(st.sampled_from([b"", b"", b"", b"data"]))
            reverse = draw(st.booleans())
            kw = {"src": "10.0.0.1", "dst": "10.0.0.2"} if reverse else {}
            out.append(ack4(ack, sport=sport, flags=flags, options=options, payload=payload, **kw))
    return out


@SLOW
@given(batches())
def test_only_acks_that_a_later_ack_of_their_connection_covers_are_dropped(batch: list[bytes]) -> None:
    kept = drop_superseded_acks(batch)
    judged = [_scapy_pure_ack(p) for p in batch]
    expected = []
    for i, packet in enumerate(batch):
        mine = judged[i]
        if mine is not None:
            # the last pure ack of the same connection in the batch, if it acks strictly more
            last = [j for j in judged[i + 1 :] if j is not None and j[0] == mine[0]]
            if last and 0 < (last[-1][1] - mine[1]) % 2**32 < 2**31:
                continue
        expected.append(packet)
    assert kept == expected


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=110), max_size=8), st.data())
def test_arbitrary_bytes_never_raise_and_only_drop_real_acks(batch: list[bytes], data: st.DataObject) -> None:
    # a real ack among the junk, with random bytes flipped, so the parser sees near-misses too
    base = bytearray(ack4(data.draw(st.integers(0, 2**32 - 1))))
    for _ in range(data.draw(st.integers(0, 3))):
        base[data.draw(st.integers(0, len(base) - 1))] = data.draw(st.integers(0, 255))
    batch = [*batch, bytes(base), ack4(5)]
    kept = drop_superseded_acks(batch)
    dropped = [p for p in batch if p not in kept]
    assert all(_scapy_pure_ack(p) is not None for p in dropped)


# -- the stack and the setting ------------------------------------------------------------------------
@pytest.mark.parametrize("on", [True, False])
def test_the_stack_leaves_superseded_acks_out_of_a_batch_and_counts_them(on: bool) -> None:
    from tests.unit.test_stack import Pair

    p = Pair()
    p.client.ack_filter = on
    p.up()
    data = ack4(0, flags="PA", payload=b"d" * 100, sport=22)
    batch = [ack4(100), ack4(200), data, ack4(300)]
    gre_packets, taken = p.client.send_ips(batch, p.now)
    expected = [data, ack4(300)] if on else batch
    assert p.server.gre_received_batch(gre_packets, p.now) == expected
    assert taken == sum(map(len, expected))
    c = p.client.counters
    assert (c.acks_superseded, c.ip_out, c.ip_out_dropped) == (2 if on else 0, len(expected), 0)


@pytest.mark.parametrize(
    ("value", "up_on", "serve_on"),
    [(None, False, True), ("on", True, True), ("off", False, False), (" OFF ", False, False)],
)
def test_tcp_ack_filter_setting(tmp_path: Any, value: str | None, up_on: bool, serve_on: bool) -> None:
    """Off by default for the client (thinned acks make the server's TCP burstier, which a reordering
    path turns into reorder-window overflows), on by default for the embedded server."""
    from sidecar.config import build_serve_settings, build_up_settings
    from sidecar.server.wiring import stack_factory
    from sidecar.stack import client_stack

    env = {} if value is None else {"PPTP_TCP_ACK_FILTER": value}
    secrets = tmp_path / "chap-secrets"
    secrets.write_text("alice * pw *\n")
    serve = build_serve_settings({"secrets": str(secrets)}, env)
    up = build_up_settings({}, {"PPTP_SERVER": "192.0.2.1", "PPTP_USER": "u", "PPTP_PASSWORD": "p", **env})
    assert serve.tcp_ack_filter is serve_on and up.tcp_ack_filter is up_on
    assert client_stack(up).ack_filter is up_on
    assert stack_factory(serve)(None, lambda user: None).ack_filter is serve_on


def test_tcp_ack_filter_setting_rejects_other_values() -> None:
    from sidecar.config import ConfigError, build_up_settings

    env = {"PPTP_SERVER": "192.0.2.1", "PPTP_USER": "u", "PPTP_PASSWORD": "p", "PPTP_TCP_ACK_FILTER": "auto"}
    with pytest.raises(ConfigError, match="PPTP_TCP_ACK_FILTER='auto': expected one of on, off"):
        build_up_settings({}, env)
