"""The raw GRE socket between two namespaces over veth: batches, IHL stripping, source filtering,
server mode, and DF (no fragmentation)."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest
import trio

from sidecar.kernel.gre_socket import GreSocket
from tests.netns import nslib

OTHER_IP = IPv4Address("198.51.100.2")  # a second source inside the server namespace


def gre(call_id: int, seq: int, payload: bytes = b"") -> bytes:
    """An enhanced GRE header (K and S set, version 1) + payload: realistic bytes, built by hand."""
    return struct.pack("!HHHHI", 0x3001, 0x880B, len(payload), call_id, seq) + payload


@pytest.fixture
def pair(hosts: nslib.TwoHosts) -> Iterator[tuple[nslib.TwoHosts, GreSocket, GreSocket]]:
    hosts.server.ip("addr", "add", f"{OTHER_IP}/32", "dev", "lo")
    with hosts.client.enter():
        client = GreSocket(hosts.server_ip)
    with hosts.server.enter():
        server = GreSocket(None, bind=hosts.server_ip)
    try:
        yield hosts, client, server
    finally:
        client.close()
        server.close()


def wait_rx(ns: nslib.Netns, ifname: str, count: int) -> None:
    assert nslib.wait_for(lambda: ns.link_stats(ifname).rx_packets >= count), "packets did not arrive"


def test_client_drains_a_batch_until_eagain(pair: tuple[nslib.TwoHosts, GreSocket, GreSocket]) -> None:
    h, client, server = pair
    base = h.client.link_stats(h.client_if).rx_packets
    sent = [gre(7, i, bytes([i]) * (i + 1)) for i in range(50)]
    for packet in sent:
        assert server.send(packet, dest=h.client_ip)
    wait_rx(h.client, h.client_if, base + 50)

    first = client.recv_batch(max=10)
    rest = client.recv_batch(max=64)
    assert client.recv_batch() == []  # drained: EAGAIN, no blocking
    got = first + rest
    assert len(first) == 10 and len(rest) == 40
    assert [p for _, p in got] == sent  # IP header stripped, bytes intact, order kept
    assert {src for src, _ in got} == {h.server_ip}
    assert client.counters.rx_packets == 50
    assert client.counters.rx_bytes == sum(map(len, sent))


def test_wait_readable_wakes_once_for_a_burst(pair: tuple[nslib.TwoHosts, GreSocket, GreSocket]) -> None:
    h, client, server = pair

    async def main() -> list[bytes]:
        received: list[bytes] = []
        async with trio.open_nursery() as nursery:

            async def reader() -> None:
                while len(received) < 20:
                    await client.wait_readable()
                    received.extend(p for _, p in client.recv_batch())

            nursery.start_soon(reader)
            await trio.sleep(0.01)
            for i in range(20):
                server.send(gre(1, i), dest=h.client_ip)
            with trio.fail_after(3):
                while len(received) < 20:
                    await trio.sleep(0.005)
        return received

    received = trio.run(main)
    assert received == [gre(1, i) for i in range(20)]


def test_ip_options_are_stripped_by_ihl(pair: tuple[nslib.TwoHosts, GreSocket, GreSocket]) -> None:
    h, client, _ = pair
    with h.server.enter():
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, 47)
    try:
        raw.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, b"\x01\x01\x01\x00")  # NOP NOP NOP EOL: IHL 6
        raw.bind((str(h.server_ip), 0))
        base = h.client.link_stats(h.client_if).rx_packets
        raw.sendto(gre(9, 1, b"payload"), (str(h.client_ip), 0))
        wait_rx(h.client, h.client_if, base + 1)
    finally:
        raw.close()
    assert client.recv_batch() == [(h.server_ip, gre(9, 1, b"payload"))]


def test_connected_client_never_sees_other_sources(pair: tuple[nslib.TwoHosts, GreSocket, GreSocket]) -> None:
    h, client, server = pair
    with h.server.enter():
        other = GreSocket(None, bind=OTHER_IP)
    try:
        base = h.client.link_stats(h.client_if).rx_packets
        other.send(gre(7, 1, b"spoof"), dest=h.client_ip)
        server.send(gre(7, 2, b"real"), dest=h.client_ip)
        wait_rx(h.client, h.client_if, base + 2)
    finally:
        other.close()
    assert client.recv_batch() == [(h.server_ip, gre(7, 2, b"real"))]


def test_unconnected_client_drops_and_counts_other_sources(hosts: nslib.TwoHosts) -> None:
    h = hosts
    h.server.ip("addr", "add", f"{OTHER_IP}/32", "dev", "lo")
    with h.client.enter():
        client = GreSocket(h.server_ip, connect=False)
    with h.server.enter():
        server = GreSocket(None, bind=h.server_ip)
        other = GreSocket(None, bind=OTHER_IP)
    try:
        base = h.client.link_stats(h.client_if).rx_packets
        other.send(gre(7, 1, b"spoof"), dest=h.client_ip)
        server.send(gre(7, 2, b"real"), dest=h.client_ip)
        other.send(gre(7, 3, b"spoof"), dest=h.client_ip)
        wait_rx(h.client, h.client_if, base + 3)
        assert client.recv_batch() == [(h.server_ip, gre(7, 2, b"real"))]
        assert client.counters.rx_foreign == 2
        # and the unconnected client still sends to the server
        assert client.send(gre(8, 1, b"up"))
        assert nslib.wait_for(lambda: len(server.recv_batch()) == 1)
    finally:
        for s in (client, server, other):
            s.close()


def test_server_mode_sees_every_source_and_answers_by_dest(hosts: nslib.TwoHosts) -> None:
    h = hosts
    with h.server.enter():
        # bound to the address clients connect to, or replies leave with the route's source address
        # and the (connected) client ignores them
        server = GreSocket(None, bind=h.server_ip)
    with h.client.enter():
        client = GreSocket(h.server_ip)
    try:
        base = h.server.link_stats(h.server_if).rx_packets
        assert client.send(gre(5, 1, b"hello"))
        wait_rx(h.server, h.server_if, base + 1)
        batch = server.recv_batch()
        assert batch == [(h.client_ip, gre(5, 1, b"hello"))]
        with pytest.raises(ValueError, match="needs dest"):
            server.send(b"x")
        base = h.client.link_stats(h.client_if).rx_packets
        assert server.send(gre(6, 1, b"back"), dest=batch[0][0])
        wait_rx(h.client, h.client_if, base + 1)
        assert client.recv_batch() == [(h.server_ip, gre(6, 1, b"back"))]
    finally:
        client.close()
        server.close()


def test_oversized_packet_is_refused_not_fragmented(
    pair: tuple[nslib.TwoHosts, GreSocket, GreSocket],
) -> None:
    h, client, server = pair
    tx_before = h.client.link_stats(h.client_if).tx_bytes
    assert not client.send(gre(7, 1, b"x" * 1600))  # veth MTU 1500, DF set
    assert client.counters.tx_too_big == 1 and client.counters.tx_packets == 0
    assert h.client.link_stats(h.client_if).tx_bytes - tx_before < 1000  # nothing of it left, no fragments
    assert client.send(gre(7, 2, b"x" * 1400))  # fits: 20 + 16 + 1400 < 1500
    assert nslib.wait_for(lambda: len(server.recv_batch()) == 1)


def test_send_batch_sends_in_order_and_drops_only_what_does_not_fit(
    pair: tuple[nslib.TwoHosts, GreSocket, GreSocket],
) -> None:
    _h, client, server = pair
    batch = [gre(7, 1, b"a" * 100), gre(7, 2, b"x" * 1600), gre(7, 3, b"c" * 1400)]  # the 2nd > MTU
    assert client.send_batch(batch) == 2
    assert client.counters.tx_packets == 2 and client.counters.tx_too_big == 1
    assert client.counters.tx_bytes == len(batch[0]) + len(batch[2])
    got: list[bytes] = []

    def both_arrived() -> bool:
        got.extend(p for _, p in server.recv_batch())
        return len(got) >= 2

    assert nslib.wait_for(both_arrived)
    assert got == [batch[0], batch[2]]


def test_server_send_batch_to_a_destination_sends_in_order_and_counts_once(
    pair: tuple[nslib.TwoHosts, GreSocket, GreSocket],
) -> None:
    """The server role: one batch to one client (the address resolved once), an oversized packet in
    the middle refused and counted, the others arriving in order from the server's address."""
    h, client, server = pair
    batch = [gre(5, 1, b"a" * 200), gre(5, 2, b"x" * 1600), gre(5, 3, b"c" * 1000), gre(5, 4)]
    assert server.send_batch(batch, dest=h.client_ip) == 3
    assert server.counters.tx_packets == 3 and server.counters.tx_too_big == 1
    assert server.counters.tx_bytes == len(batch[0]) + len(batch[2]) + len(batch[3])
    got: list[tuple[IPv4Address, bytes]] = []

    def all_arrived() -> bool:
        got.extend(client.recv_batch())
        return len(got) >= 3

    assert nslib.wait_for(all_arrived)
    assert got == [(h.server_ip, batch[0]), (h.server_ip, batch[2]), (h.server_ip, batch[3])]
    with pytest.raises(ValueError, match="needs dest"):
        server.send_batch(batch)


def test_protocol_unreachable_from_the_server_is_transient(hosts: nslib.TwoHosts) -> None:
    """A server with no GRE socket (or an overflowing one) answers ICMP protocol unreachable; Linux
    reports it on the client's next read as ENOPROTOOPT. That must be counted, not end the session."""
    h = hosts
    with h.client.enter():
        client = GreSocket(h.server_ip)
    try:
        base = h.client.link_stats(h.client_if).rx_packets
        assert client.send(gre(7, 1, b"nobody listens"))  # no raw GRE socket in the server namespace
        wait_rx(h.client, h.client_if, base + 1)  # the ICMP error came back
        assert client.recv_batch() == []
        assert client.counters.icmp_errors == 1
        # and the socket still works afterwards
        with h.server.enter():
            server = GreSocket(None, bind=h.server_ip)
        try:
            server.send(gre(7, 2, b"back"), dest=h.client_ip)
            assert nslib.wait_for(lambda: client.recv_batch() == [(h.server_ip, gre(7, 2, b"back"))])
        finally:
            server.close()
    finally:
        client.close()


def test_receive_buffer_is_forced_past_rmem_max(hosts: nslib.TwoHosts) -> None:
    with hosts.client.enter():
        client = GreSocket(hosts.server_ip)
    try:
        # the kernel doubles the value it is given; the 208 KiB default rmem_max would cap it
        assert client._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 4 * 1024 * 1024
    finally:
        client.close()
