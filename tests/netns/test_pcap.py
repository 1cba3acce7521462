"""``sidecar up --pcap`` end to end: the client (a subprocess in its namespace) against ``sidecar serve``,
a few packets through the tunnel, then the capture read back with scapy's ``rdpcap``: LCP and IPCP
both ways, the IP packets that were sent (payloads matching), and never the password."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.ppp import DIR_PPP, PPP, PPP_PAP_Request
from scapy.packet import Packet, Raw
from scapy.utils import rdpcap

from sidecar.observe.pcap import DIR_IN, DIR_OUT, PAP_MASK
from tests.netns.serve_helpers import (
    SERVER_TUN_IP,
    is_up,
    ping,
    star,
    start_client,
    start_server,
    write_secrets,
)

pytest.importorskip("sidecar.supervisor", reason="the client (sidecar.supervisor) has not landed yet")

PASSWORD = "pcap-Secret-789"
USERS = [("alice", "*", PASSWORD, "*")]
LCP, PAP, CHAP, CCP, IPCP = 0xC021, 0xC023, 0xC223, 0x80FD, 0x8021

SEND_UDP = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(3):
    s.sendto(b"pcap-payload-%d" % i, (sys.argv[1], 9))
"""


def _dir(record: Packet) -> int:
    value: int = record[DIR_PPP].getfieldval("direction")  # (Packet.direction is pcapng metadata)
    return value


@pytest.fixture
def one() -> Any:
    with star(1) as topo:
        yield topo


@pytest.mark.parametrize(("method", "mppe"), [("mschapv2", "require"), ("pap", "refuse")])
def test_capture_of_a_session(one: Any, tmp_path: Path, method: str, mppe: str) -> None:
    capture = tmp_path / "tunnel.pcap"
    secrets = write_secrets(tmp_path / "chap-secrets", USERS)
    server = start_server(one.server, tmp_path, secrets=secrets, args=["--auth", method, "--mppe", mppe])
    client = start_client(
        one.clients[0], tmp_path, server=one.server_ips[0], user="alice", password=PASSWORD,
        args=["--auth", method, "--mppe", mppe, "--pcap", str(capture)],
    )  # fmt: skip
    try:
        client.wait_status(is_up, 15)
        one.clients[0].run([sys.executable, "-c", SEND_UDP, str(SERVER_TUN_IP)])
        result = ping(one.clients[0], SERVER_TUN_IP, count=2)
        assert result.returncode == 0, result.stdout
    finally:
        assert client.stop() == 0
        server.stop()

    raw = capture.read_bytes()
    assert PASSWORD.encode() not in raw
    assert capture.stat().st_mode & 0o077 == 0
    records = rdpcap(str(capture))
    seen = {(_dir(p), p[PPP].proto) for p in records}
    for direction in (DIR_IN, DIR_OUT):
        assert (direction, LCP) in seen and (direction, IPCP) in seen, seen
    if mppe == "require":
        assert (DIR_OUT, CCP) in seen and (DIR_IN, CCP) in seen and (DIR_OUT, CHAP) in seen
        assert not any(p[PPP].proto == 0x00FD for p in records), "MPPE ciphertext is never written"
    else:
        requests = [p for p in records if p.haslayer(PPP_PAP_Request)]
        assert requests and all(p[PPP_PAP_Request].password == PAP_MASK for p in requests)
        assert requests[0][PPP_PAP_Request].username == b"alice"
    # the UDP datagrams we sent, decrypted, outbound, payloads intact
    udp = [bytes(p[Raw].load) for p in records if _dir(p) == DIR_OUT and p.haslayer(UDP) and p.haslayer(Raw)]
    assert [b for b in udp if b.startswith(b"pcap-payload-")] == [b"pcap-payload-%d" % i for i in range(3)]
    # the pings both ways: requests out, replies in
    icmp = [(_dir(p), p[ICMP].type) for p in records if p.haslayer(ICMP) and p[IP].src != p[IP].dst]
    assert icmp.count((DIR_OUT, 8)) >= 2 and icmp.count((DIR_IN, 0)) >= 2, icmp
    replies = [p for p in records if p.haslayer(ICMP) and p[ICMP].type == 0]
    assert all(p[IP].src == str(SERVER_TUN_IP) for p in replies)
