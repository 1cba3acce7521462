"""TUN device + netconf: addresses, MTU, routes, the server host route, and full restoration (also
after a failed start), compared with `ip addr` / `ip route` snapshots."""

from __future__ import annotations

import json
import socket
import struct
import sys
import time
from ipaddress import IPv4Address, IPv4Network

import pytest

from sidecar.kernel.netconf import NetConf, NetConfError
from sidecar.kernel.tun import TunDevice, TunError
from tests.netns import nslib

LOCAL = IPv4Address("10.77.0.2")
PEER = IPv4Address("10.77.0.1")


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def udp_packet(src: IPv4Address, dst: IPv4Address, sport: int, dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload  # checksum 0: none (IPv4)
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, src.packed, dst.packed)
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + udp


def route_get(ns: nslib.Netns, dest: IPv4Address) -> dict[str, object]:
    return dict(json.loads(ns.ip("-j", "route", "get", str(dest)))[0])


def test_tun_is_created_up_with_mtu_and_vanishes_on_close(ns: nslib.Netns) -> None:
    name = nslib.unique("t")
    with ns.enter():
        tun = TunDevice(name, 1380)
    try:
        assert ns.link_mtu(name) == 1380
        assert "UP" in ns.ip("link", "show", name)
        assert tun.mtu == 1380
    finally:
        tun.close()
    assert name not in ns.links()


def _ipv6_state(ns: nslib.Netns, name: str) -> tuple[str, str]:
    """(the device's IPv6 addresses, its disable_ipv6 sysctl) as the kernel reports them."""
    addresses = ns.ip("-6", "-br", "addr", "show", "dev", name).split()[2:]
    sysctl = ns.run(["cat", f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6"]).stdout.strip()
    return " ".join(addresses), sysctl


def test_tun_comes_up_without_ipv6_and_sends_nothing_into_the_tunnel(ns: nslib.Netns) -> None:
    """Without the sidecar's doing, link-up gives a TUN device a link-local address and the kernel
    at once sends a Router Solicitation into it (NOARP: no DAD wait); IPv6 is off before it is up."""
    name = nslib.unique("t")
    with ns.enter():
        tun = TunDevice(name, 1400)
    try:
        time.sleep(0.3)
        assert tun.read_batch(16) == []
        assert _ipv6_state(ns, name) == ("", "1")
    finally:
        tun.close()


_READ_ONLY_PROC_SYS = """
import time
from sidecar.kernel.tun import TunDevice
tun = TunDevice({name!r}, 1400)
time.sleep(0.3)
print(len(tun.read_batch(16)))
import subprocess
for argv in (["ip", "-d", "link", "show", {name!r}], ["ip", "-6", "-br", "addr", "show", "dev", {name!r}]):
    print(subprocess.run(argv, capture_output=True, text=True).stdout)
"""


def test_with_a_read_only_proc_sys_as_in_a_container_netlink_keeps_ipv6_off(ns: nslib.Netns) -> None:
    """Containers mount /proc/sys read-only: the sysctl cannot be written, so no link-local address
    is generated instead (netlink), and still nothing is sent into the tunnel."""
    name = nslib.unique("t")
    script = _READ_ONLY_PROC_SYS.format(name=name)
    shell = (
        "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && "
        "! sh -c 'echo 1 > /proc/sys/net/ipv6/conf/lo/disable_ipv6' 2>/dev/null && "
        f'exec {sys.executable} -c "$SCRIPT"'
    )
    out = ns.run(["env", f"SCRIPT={script}", "unshare", "-m", "sh", "-c", shell]).stdout.splitlines()
    assert out[0] == "0", out  # nothing read from the device
    assert "addrgenmode none" in "\n".join(out), out
    assert not any("fe80" in line for line in out), out


def test_tun_rejects_bad_names_and_mtus(ns: nslib.Netns) -> None:
    with pytest.raises(TunError, match="bad interface name"):
        TunDevice("x" * 16, 1400)
    with ns.enter(), pytest.raises(TunError, match="bad MTU"):
        TunDevice(nslib.unique("t"), 20)
    assert [link for link in ns.links() if link.startswith("t")] == []


def test_tun_reads_app_packets_in_a_batch_and_writes_packets_to_apps(ns: nslib.Netns) -> None:
    name = nslib.unique("t")
    with ns.enter():
        tun = TunDevice(name, 1400)
        nc = NetConf()
        app = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        nc.add_point_to_point(name, LOCAL, PEER)
        app.bind((str(LOCAL), 0))
        app.setblocking(False)
        for i in range(5):
            app.sendto(b"ping%d" % i, (str(PEER), 9))
        packets: list[bytes] = []

        def read_ipv4() -> bool:  # the kernel also sends IPv6 router solicitations: not ours
            packets.extend(p for p in tun.read_batch() if p[0] >> 4 == 4)
            return len(packets) >= 5

        assert nslib.wait_for(read_ipv4)
        assert len(packets) == 5
        for i, packet in enumerate(packets):
            assert packet[0] >> 4 == 4 and packet[16:20] == PEER.packed  # raw IPv4, no PI header
            assert packet[28:] == b"ping%d" % i
        assert [p for p in tun.read_batch() if p[0] >> 4 == 4] == []
        assert tun.counters.rx_packets >= 5

        port = app.getsockname()[1]
        assert tun.write(udp_packet(PEER, LOCAL, 9, port, b"pong"))
        assert nslib.wait_for(lambda: _recv(app) == b"pong")
        assert tun.counters.tx_packets == 1 and tun.counters.tx_bytes == 20 + 8 + 4
        # a batch with a packet the kernel refuses (not IP: EINVAL): the others go, it is counted
        b1, b2 = udp_packet(PEER, LOCAL, 9, port, b"b1"), udp_packet(PEER, LOCAL, 9, port, b"b2")
        batch = [b1, b"\x00" * 28, b2]
        assert tun.write_batch(batch) == 2
        assert tun.counters.tx_packets == 3 and tun.counters.tx_dropped == 1
        assert tun.counters.tx_bytes == 32 + 2 * 30
        assert nslib.wait_for(lambda: _recv(app) == b"b1") and nslib.wait_for(lambda: _recv(app) == b"b2")
    finally:
        app.close()
        nc.restore()
        nc.close()
        tun.close()


def _recv(sock: socket.socket) -> bytes | None:
    try:
        return sock.recv(100)
    except BlockingIOError:
        return None


def test_routes_move_into_the_tunnel_and_everything_is_restored(hosts: nslib.TwoHosts) -> None:
    h = hosts
    addr_before, route_before = h.client.addr_snapshot(), h.client.route_snapshot()
    name = nslib.unique("t")
    with h.client.enter():
        tun = TunDevice(name, 1400)
        nc = NetConf()
    try:
        via = nc.add_server_host_route(h.server_ip)
        assert via.gateway == h.gateway_ip and via.ifname == h.client_if and via.mtu == 1500
        nc.add_point_to_point(name, LOCAL, PEER)
        assert nc.route_through(name, "default") == [IPv4Network("0.0.0.0/1"), IPv4Network("128.0.0.0/1")]

        assert route_get(h.client, h.outside_ip)["dev"] == name  # Internet -> tunnel
        assert route_get(h.client, PEER)["dev"] == name  # the peer route the kernel added
        server_route = route_get(h.client, h.server_ip)  # the server stays on the uplink
        assert server_route["dev"] == h.client_if and server_route["gateway"] == str(h.gateway_ip)
        assert f"{LOCAL} peer {PEER}/32" in h.client.ip("addr", "show", name)
    finally:
        failures = nc.restore()
        nc.close()
        tun.close()
    assert failures == []
    assert h.client.addr_snapshot() == addr_before
    assert h.client.route_snapshot() == route_before


def test_split_routes_and_restore_after_the_device_is_gone(hosts: nslib.TwoHosts) -> None:
    h = hosts
    route_before = h.client.route_snapshot()
    name = nslib.unique("t")
    split = (IPv4Network("172.30.0.0/16"), IPv4Network("192.168.77.0/24"))
    with h.client.enter():
        tun = TunDevice(name, 1400)
        nc = NetConf()
    try:
        nc.add_server_host_route(h.server_ip)
        nc.add_point_to_point(name, LOCAL, PEER)
        assert nc.route_through(name, split) == list(split)
        assert route_get(h.client, IPv4Address("172.30.1.1"))["dev"] == name
        assert route_get(h.client, h.outside_ip)["dev"] == h.client_if  # not split: uplink
    finally:
        tun.close()  # the device (and its routes) go first: the undo must not trip over that
        failures = nc.restore()
        nc.close()
    assert failures == []
    assert h.client.route_snapshot() == route_before


def test_failed_start_is_fully_undone(hosts: nslib.TwoHosts) -> None:
    h = hosts
    addr_before, route_before = h.client.addr_snapshot(), h.client.route_snapshot()
    name = nslib.unique("t")
    with h.client.enter():
        tun = TunDevice(name, 1400)
        nc = NetConf()
    try:
        nc.add_server_host_route(h.server_ip)
        nc.add_point_to_point(name, LOCAL, PEER)
        nc.route_through(name, "default")
        nc.set_mtu(h.client_if, 1400)  # something on the uplink too: it must come back to 1500
        with pytest.raises(NetConfError, match="no interface"):
            nc.route_through("nosuchif0", "default")  # the start fails half-way
    finally:
        failures = nc.restore()
        nc.close()
        tun.close()
    assert failures == []
    assert h.client.link_mtu(h.client_if) == 1500
    assert h.client.addr_snapshot() == addr_before
    assert h.client.route_snapshot() == route_before


def test_existing_host_route_is_left_alone(hosts: nslib.TwoHosts) -> None:
    h = hosts
    h.client.ip("route", "add", f"{h.server_ip}/32", "via", str(h.gateway_ip), "mtu", "1300")
    before = h.client.route_snapshot()
    with h.client.enter():
        nc = NetConf()
    try:
        via = nc.route_to(h.server_ip)
        assert via.mtu == 1300  # the route's MTU metric beats the link's 1500
        nc.add_server_host_route(h.server_ip, via)  # identical route exists: not ours to remove
        assert len(nc.journal) == 0
    finally:
        nc.restore()
        nc.close()
    assert h.client.route_snapshot() == before


def test_on_link_server_gets_a_device_route(hosts: nslib.TwoHosts) -> None:
    h = hosts
    before = h.client.route_snapshot()
    with h.client.enter():
        nc = NetConf()
    try:
        via = nc.add_server_host_route(h.gateway_ip)  # on-link: no gateway
        assert via.gateway is None
        assert f"{h.gateway_ip} dev {h.client_if} proto static" in h.client.ip("route")
    finally:
        nc.restore()
        nc.close()
    assert h.client.route_snapshot() == before
