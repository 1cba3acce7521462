"""End to end with TUN offload (docs/offload.md): ``sidecar up`` against ``sidecar serve`` in
namespaces, a multi-megabyte TCP transfer each way through the tunnel, with offload on (the TUN
counters must show super-packets both read and written, at both ends) and off (none)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

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
