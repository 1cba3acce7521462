"""End to end with TUN offload (docs/offload.md): ``sidecar up`` against ``sidecar serve`` in
namespaces, a multi-megabyte TCP transfer each way through the tunnel, with offload on (the TUN
counters must show super-packets both read and written, at both ends) and off (none)."""

from __future__ import annotations

import select
import socket
import subprocess
import sys
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from tests.netns import nslib
from tests.netns import serve_helpers as sh
from tests.netns.serve_helpers import SERVER_TUN_IP, Proc, is_up, star, write_secrets

pytest.importorskip("sidecar.supervisor", reason="the client (sidecar.supervisor) has not landed yet")

SIZE = 6_000_000
PORT = 5301

# Listens once; receives SIZE bytes then sends SIZE bytes back; prints both digests.
PEER = r"""
import hashlib, random, socket, sys
host, size, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((host, port)); ls.listen(1); print("ready", flush=True)
s, _ = ls.accept()
h = hashlib.sha256(); n = 0
while n < size:
    b = s.recv(min(65536, size - n))
    if not b: break
    h.update(b); n += len(b)
data = random.Random(2).randbytes(size)
s.sendall(data); s.shutdown(socket.SHUT_WR)
print(h.hexdigest(), n, hashlib.sha256(data).hexdigest(), flush=True)
s.recv(1)
"""

# Connects, sends SIZE bytes, then receives until EOF; prints both digests.
APP = r"""
import hashlib, random, socket, sys
host, size, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.create_connection((host, port), timeout=60)
data = random.Random(1).randbytes(size)
s.sendall(data)
h = hashlib.sha256(); n = 0
while True:
    b = s.recv(65536)
    if not b: break
    h.update(b); n += len(b)
print(hashlib.sha256(data).hexdigest(), h.hexdigest(), n, flush=True)
"""


def counters(status: dict[str, Any]) -> dict[str, int]:
    return dict(status.get("counters", {}))


def start_pair(topo: Any, tmp: Path, mode: str) -> tuple[Proc, Proc]:
    """``sidecar serve`` and ``sidecar up`` with PPTP_TUN_OFFLOAD (the variable form of
    ``--tun-offload``), which the helpers' start_server/start_client do not pass on."""
    secrets = write_secrets(tmp / "chap-secrets", [("alice", "*", "alice secret", "*")])
    argv = ["serve", "--local-ip", str(SERVER_TUN_IP), "--pool", sh.POOL, "--interface", "pptps0",
            "--http", f"127.0.0.1:{sh.SERVER_HTTP_PORT}", "--log-level", "debug"]  # fmt: skip
    env = {"PPTP_SECRETS": str(secrets), "PPTP_TUN_OFFLOAD": mode}
    server = sh._spawn(topo.server, argv, tmp / "server.log", "server", env, sh.SERVER_HTTP_PORT)
    server.wait_log("serving PPTP on", 15)
    password = tmp / "password"
    password.write_text("alice secret")
    argv = ["up", "--server", str(topo.server_ips[0]), "--user", "alice", "--interface", "pptp0",
            "--http", f"127.0.0.1:{sh.STATUS_PORT}", "--no-dns", "--log-level", "debug"]  # fmt: skip
    env = {"PPTP_PASSWORD_FILE": str(password), "PPTP_TUN_OFFLOAD": mode}
    client = sh._spawn(topo.clients[0], argv, tmp / "client.log", "client", env, sh.STATUS_PORT)
    return server, client


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_bulk_tcp_both_ways(tmp_path: Path, mode: str) -> None:
    with star(1) as topo:
        server, client = start_pair(topo, tmp_path, mode)
        try:
            client.wait_status(is_up, 15)
            peer = topo.server.popen(
                [sys.executable, "-c", PEER, str(SERVER_TUN_IP), str(SIZE), str(PORT)], stdout=subprocess.PIPE
            )
            assert peer.stdout is not None
            assert peer.stdout.readline().strip() == b"ready"
            sent, received, n = (
                topo.clients[0]
                .run([sys.executable, "-c", APP, str(SERVER_TUN_IP), str(SIZE), str(PORT)], timeout=120)
                .stdout.split()
            )
            got, count, echoed = peer.stdout.readline().decode().split()
            peer.wait(10)
            assert (got, int(count)) == (sent, SIZE)  # client -> server intact
            assert (received, int(n)) == (echoed, SIZE)  # server -> client intact
            c = counters(client.wait_status(lambda s: counters(s).get("bytes_in", 0) >= SIZE, 5))
            s = counters(server.wait_status(lambda s: counters(s).get("tun_tx_bytes", 0) >= SIZE, 5))
            supers = [c[f"tun_{d}_super_packets"] for d in ("rx", "tx")]
            supers += [s[f"tun_{d}_super_packets"] for d in ("rx", "tx")]
            if mode == "auto":
                assert "TUN offload on" in client.text() and "TUN offload on" in server.text()
                assert all(n > 0 for n in supers), (c, s)
                assert c["tun_rx_segments"] > c["tun_rx_super_packets"]
                assert s["tun_tx_coalesced"] > s["tun_tx_super_packets"]
            else:
                assert "TUN offload on" not in client.text() + server.text()
                assert supers == [0, 0, 0, 0], (c, s)
            assert c["tun_rx_offload_errors"] == s["tun_rx_offload_errors"] == 0
        finally:
            assert client.stop() == 0
            assert server.stop() == 0


def _tcp_in_csum_errors(ns: nslib.Netns) -> int:
    lines = [
        ln.split() for ln in ns.run(["cat", "/proc/net/snmp"]).stdout.splitlines() if ln.startswith("Tcp:")
    ]
    return int(lines[1][lines[0].index("InCsumErrors")])


def test_kernel_verifies_a_super_packet_for_the_local_address(ns: nslib.Netns) -> None:
    """A damaged segment for the device's own address is never merged (the two before it are):
    it is written alone, the kernel drops it and takes the intact retransmission."""
    from scapy.layers.inet import IP, TCP

    from sidecar.kernel.tun import TunDevice

    local, peer = "10.9.0.1", "10.9.0.2"
    with ns.enter():
        tun = TunDevice("pto0", 1400, offload=True)
        listener = socket.socket()
    try:
        assert tun.offload
        ns.ip("addr", "add", local, "peer", peer, "dev", "pto0")
        tun.set_local_addresses([IPv4Address(local)])
        listener.bind((local, 7000))
        listener.listen(1)
        listener.settimeout(10)

        def ip(seq: int, ack: int, flags: str, ident: int, data: bytes = b"") -> bytes:
            tcp = TCP(sport=5555, dport=7000, seq=seq, ack=ack, flags=flags, window=8192)
            return bytes(IP(src=peer, dst=local, id=ident, flags="DF") / tcp / data)

        assert tun.write(ip(1000, 0, "S", 1))
        synack = None
        while synack is None:  # the kernel's answer (ignoring anything else it sends)
            assert select.select([tun.fileno()], [], [], 10)[0], "no SYN-ACK from the kernel"
            for packet in tun.read_batch():
                got = IP(packet)
                if TCP in got and got[TCP].flags == "SA":
                    synack = got[TCP]
        ack = synack.seq + 1
        assert tun.write(ip(1001, ack, "A", 2))
        conn, _ = listener.accept()
        conn.settimeout(10)
        data = bytes(range(256)) * 16  # 4096 bytes: 4 segments of 1024
        good = [
            ip(1001 + i * 1024, ack, "PA" if i == 3 else "A", 3 + i, data[i * 1024 : (i + 1) * 1024])
            for i in range(4)
        ]
        damaged = list(good)
        broken = bytearray(damaged[2])
        broken[-100] ^= 0xFF
        damaged[2] = bytes(broken)
        before = _tcp_in_csum_errors(ns)
        assert tun.write_batch(damaged) == 4  # segments 0-1 merged, the damaged 2 and then 3 alone...
        assert tun.counters.tx_super_packets == 1 and tun.counters.tx_coalesced == 2
        assert tun.write_batch(good) == 4  # ...and the intact retransmission as one super-packet
        assert tun.counters.tx_super_packets == 2 and tun.counters.tx_coalesced == 6
        received = b""
        while len(received) < len(data):
            received += conn.recv(65536)
        assert received == data  # the damaged bytes never reached the socket
        assert _tcp_in_csum_errors(ns) == before + 1
        conn.close()
    finally:
        listener.close()
        tun.close()
