"""The kill switch in a namespace: an app's packets to the outside never leave the uplink, while the
control connection (TCP 1723) and GRE to the server, the tunnel interface, allowed subnets and the
HTTP port still pass. Removal gives the namespace back."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network

import pytest

from sidecar.kernel import firewall
from sidecar.kernel.gre_socket import GreSocket
from sidecar.kernel.netconf import NetConf
from sidecar.kernel.tun import TunDevice
from tests.netns import nslib

HTTP_PORT = 8080
COUNTERS = """
table inet pst_count {
  counter outside {}
  counter control {}
  counter gre {}
  chain pre {
    type filter hook prerouting priority -300;
    ip daddr %(outside)s counter name outside
    ip daddr %(server)s tcp dport 1723 counter name control
    ip daddr %(server)s ip protocol gre counter name gre
  }
}
"""


def counter(ns: nslib.Netns, name: str) -> int:
    data = ns.nft_json("list", "counter", "inet", "pst_count", name)
    for item in data["nftables"]:  # type: ignore[index]
        if "counter" in item:
            return int(item["counter"]["packets"])
    raise AssertionError(f"no counter {name}")


@pytest.fixture
def walled(hosts: nslib.TwoHosts) -> Iterator[tuple[nslib.TwoHosts, str]]:
    """Kill switch on in the client namespace; counters on the server side of the veth."""
    h = hosts
    h.server.nft(COUNTERS % {"outside": h.outside_ip, "server": h.server_ip})
    tun_name = nslib.unique("t")
    rules = firewall.KillSwitchRules(
        server=h.server_ip,
        interface=tun_name,
        allow_subnets=(IPv4Network(f"{h.gateway_ip}/32"),),
        http_port=HTTP_PORT,
    )
    with h.client.enter():
        firewall.apply(rules)
        assert firewall.is_installed()
    assert not firewall.is_installed()  # only in the client namespace, never on the host
    yield h, tun_name


def udp_from(ns: nslib.Netns) -> socket.socket:
    with ns.enter():
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


def test_outside_traffic_never_leaves_the_uplink(walled: tuple[nslib.TwoHosts, str]) -> None:
    h, _ = walled
    app = udp_from(h.client)
    try:
        for _ in range(5):
            with pytest.raises(PermissionError):  # nft drop in OUTPUT: EPERM to the app
                app.sendto(b"leak", (str(h.outside_ip), 53))
        with h.client.enter():
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.settimeout(0.3)
        with pytest.raises(OSError):
            tcp.connect((str(h.outside_ip), 443))
        tcp.close()
    finally:
        app.close()
    assert counter(h.server, "outside") == 0
    with h.client.enter():
        assert firewall.blocked_counts()["output"] >= 6

    with h.client.enter():
        firewall.remove()
        firewall.remove()  # idempotent
        assert not firewall.is_installed()
    app = udp_from(h.client)
    try:
        app.sendto(b"now it goes", (str(h.outside_ip), 53))  # the counter can count: proof
    finally:
        app.close()
    assert nslib.wait_for(lambda: counter(h.server, "outside") == 1)


def test_control_and_gre_to_the_server_pass(walled: tuple[nslib.TwoHosts, str]) -> None:
    h, _ = walled
    with h.server.enter():
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server_gre = GreSocket(None, bind=h.server_ip)
    with h.client.enter():
        control = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client_gre = GreSocket(h.server_ip)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((str(h.server_ip), 1723))
        listener.listen()
        control.settimeout(2)
        control.connect((str(h.server_ip), 1723))
        peer, _ = listener.accept()
        peer.sendall(b"reply")  # input: established
        assert control.recv(10) == b"reply"
        peer.close()

        assert client_gre.send(b"\x30\x01\x88\x0b\x00\x00\x00\x07\x00\x00\x00\x01")
        assert nslib.wait_for(lambda: len(server_gre.recv_batch()) == 1)
        assert server_gre.send(b"\x30\x01\x88\x0b\x00\x00\x00\x08\x00\x00\x00\x01", dest=h.client_ip)
        assert nslib.wait_for(lambda: len(client_gre.recv_batch()) == 1)  # input: GRE from the server
    finally:
        for s in (listener, control, server_gre, client_gre):
            s.close()
    assert counter(h.server, "control") >= 1 and counter(h.server, "gre") == 1


def test_tunnel_interface_and_allowed_subnets_pass(walled: tuple[nslib.TwoHosts, str]) -> None:
    h, tun_name = walled
    with h.client.enter():
        tun = TunDevice(tun_name, 1400)
        nc = NetConf()
    app = udp_from(h.client)
    try:
        nc.add_point_to_point(tun_name, IPv4Address("10.77.0.2"), IPv4Address("10.77.0.1"))
        nc.add_route(IPv4Network(f"{h.outside_ip}/32"), ifname=tun_name)
        app.sendto(b"via tunnel", (str(h.outside_ip), 53))
        got: list[bytes] = []

        def tunnelled() -> bool:
            got.extend(tun.read_batch())
            return any(b"via tunnel" in p for p in got)

        assert nslib.wait_for(tunnelled)
        # allowed subnet (the gateway /32): a datagram reaches the server namespace
        with h.server.enter():
            rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind((str(h.gateway_ip), 0))
        rx.settimeout(2)
        app.sendto(b"cluster", (str(h.gateway_ip), rx.getsockname()[1]))
        assert rx.recv(100) == b"cluster"
        rx.close()
    finally:
        app.close()
        nc.restore()
        nc.close()
        tun.close()
    assert counter(h.server, "outside") == 0


def test_inbound_only_to_the_http_port(walled: tuple[nslib.TwoHosts, str]) -> None:
    h, _ = walled
    with h.client.enter():
        http = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        other = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        for s, port in ((http, HTTP_PORT), (other, HTTP_PORT + 1)):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((str(h.client_ip), port))
            s.listen()
        with h.server.enter():
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            blocked = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.settimeout(2)
        probe.connect((str(h.client_ip), HTTP_PORT))  # health probe: in, and its replies out
        conn, _ = http.accept()
        conn.sendall(b"ok")
        assert probe.recv(10) == b"ok"
        conn.close()
        probe.close()
        blocked.settimeout(0.3)
        with pytest.raises(OSError):
            blocked.connect((str(h.client_ip), HTTP_PORT + 1))
        blocked.close()
    finally:
        http.close()
        other.close()
