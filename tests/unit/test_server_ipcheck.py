"""Anti-spoofing and destination lookup on the server's data path (packets built with scapy)."""

from __future__ import annotations

from ipaddress import IPv4Address as A

from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6

from sidecar.server.ipcheck import Verdict, admit_from_client, check_from_client, group_by_destination

ME = A("10.77.0.10").packed


def test_own_source_passes_others_are_spoofed() -> None:
    assert check_from_client(bytes(IP(src="10.77.0.10", dst="10.0.0.1") / UDP()), ME) is Verdict.OK
    assert check_from_client(bytes(IP(src="10.77.0.11", dst="10.0.0.1") / UDP()), ME) is Verdict.SPOOFED
    assert check_from_client(bytes(IP(src="0.0.0.0", dst="10.0.0.1")), ME) is Verdict.SPOOFED


def test_ipv6_and_truncated() -> None:
    assert check_from_client(bytes(IPv6(src="fe80::1", dst="fe80::2")), ME) is Verdict.NOT_IPV4
    assert check_from_client(bytes(IP(src="10.77.0.10"))[:19], ME) is Verdict.TRUNCATED
    runs, not_ipv4, no_owner = group_by_destination([bytes(IPv6()), b"\x45" * 10], {ME: "me"})
    assert runs == [] and not_ipv4 == 2 and no_owner == 0


def test_admit_a_batch() -> None:
    good = [bytes(IP(src="10.77.0.10", dst="10.0.0.1") / UDP() / bytes([n])) for n in range(3)]
    spoofed = bytes(IP(src="10.77.0.11", dst="10.0.0.1") / UDP())
    v6 = bytes(IPv6(src="fe80::1", dst="fe80::2"))
    admitted: list[bytes] = [b"before"]
    verdicts = admit_from_client([good[0], spoofed, good[1], v6, good[2][:19], good[2]], ME, admitted)
    assert admitted == [b"before", good[0], good[1], good[2]]  # appended, in order
    assert verdicts == [Verdict.SPOOFED, Verdict.NOT_IPV4, Verdict.TRUNCATED]


def test_destination_runs_in_order() -> None:
    def to(dst: str, n: int) -> bytes:
        return bytes(IP(src="10.0.0.1", dst=dst) / UDP() / bytes([n]))

    owners = {A("10.77.0.10").packed: "alice", A("10.77.0.11").packed: "bob"}
    batch = [to("10.77.0.10", 1), to("10.77.0.10", 2), to("10.77.0.99", 3), to("10.77.0.11", 4),
             to("10.77.0.10", 5)]  # fmt: skip
    runs, not_ipv4, no_owner = group_by_destination(batch, owners)
    assert runs == [("alice", batch[:2]), ("bob", [batch[3]]), ("alice", [batch[4]])]
    assert not_ipv4 == 0 and no_owner == 1


@given(st.ip_addresses(v=4), st.ip_addresses(v=4))
def test_destination_matches_scapy(src: A, dst: A) -> None:
    packet = bytes(IP(src=str(src), dst=str(dst)) / UDP() / b"x")
    assert group_by_destination([packet], {dst.packed: "it"}) == ([("it", [packet])], 0, 0)
    assert check_from_client(packet, src.packed) is Verdict.OK
    # judged against another client's address, it passes only if that address is the source
    assert (check_from_client(packet, dst.packed) is Verdict.OK) == (src == dst)
    admitted: list[bytes] = []
    assert (admit_from_client([packet], dst.packed, admitted) == []) == (src == dst)
    assert (admitted == [packet]) == (src == dst)
