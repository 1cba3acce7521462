"""Anti-spoofing and destination lookup on the server's data path (packets built with scapy)."""

from __future__ import annotations

from ipaddress import IPv4Address as A

from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6

from sidecar.server.ipcheck import Verdict, check_from_client, ipv4_destination

ME = A("10.77.0.10").packed


def test_own_source_passes_others_are_spoofed() -> None:
    assert check_from_client(bytes(IP(src="10.77.0.10", dst="10.0.0.1") / UDP()), ME) is Verdict.OK
    assert check_from_client(bytes(IP(src="10.77.0.11", dst="10.0.0.1") / UDP()), ME) is Verdict.SPOOFED
    assert check_from_client(bytes(IP(src="0.0.0.0", dst="10.0.0.1")), ME) is Verdict.SPOOFED


def test_ipv6_and_truncated() -> None:
    assert check_from_client(bytes(IPv6(src="fe80::1", dst="fe80::2")), ME) is Verdict.NOT_IPV4
    assert check_from_client(bytes(IP(src="10.77.0.10"))[:19], ME) is Verdict.TRUNCATED
    assert ipv4_destination(bytes(IPv6())) is None and ipv4_destination(b"\x45" * 10) is None


@given(st.ip_addresses(v=4), st.ip_addresses(v=4))
def test_destination_matches_scapy(src: A, dst: A) -> None:
    packet = bytes(IP(src=str(src), dst=str(dst)) / UDP() / b"x")
    assert ipv4_destination(packet) == dst.packed
    assert check_from_client(packet, src.packed) is Verdict.OK
    # judged against another client's address, it passes only if that address is the source
    assert (check_from_client(packet, dst.packed) is Verdict.OK) == (src == dst)
