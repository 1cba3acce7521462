"""End to end: ``sidecar up`` (client namespace) against ``sidecar serve`` (server namespace) over veth,
both as real subprocesses with real TUN devices, raw GRE sockets and TCP."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.netns.serve_helpers import (
    FIRST,
    SERVER_TUN_IP,
    Proc,
    is_up,
    ping,
    star,
    start_client,
    start_server,
    write_secrets,
)

pytest.importorskip("sidecar.supervisor", reason="the client (sidecar.supervisor) has not landed yet")
pytest.importorskip("sidecar.proto.ppp.link", reason="the PPP link has not landed yet")

USERS = [("alice", "pptpd", "alice secret", "*"), ("bob", "*", "bob pw", "*")]
FAST_KEEPALIVE = ["--echo-interval", "1", "--echo-timeout", "1", "--lcp-echo-interval", "0.5",
                  "--lcp-echo-failures", "2"]  # fmt: skip


def counters(status: dict[str, Any]) -> dict[str, int]:
    return dict(status.get("counters", {}))


@pytest.fixture
def one() -> Any:
    with star(1) as topo:
        yield topo


@pytest.mark.parametrize(
    ("method", "mppe"),
    [("mschapv2", "require"), ("mschap", "require"), ("chap", "refuse"), ("pap", "refuse")],
)
def test_auth_method_and_ping(one: Any, tmp_path: Path, method: str, mppe: str) -> None:
    secrets = write_secrets(tmp_path / "chap-secrets", USERS)
    pcap = tmp_path / "server.pcap"
    server = start_server(
        one.server, tmp_path, secrets=secrets, args=["--auth", method, "--mppe", mppe, "--pcap", str(pcap)]
    )
    client = start_client(
        one.clients[0], tmp_path, server=one.server_ips[0], user="alice", password="alice secret",
        args=["--auth", method, "--mppe", mppe],
    )  # fmt: skip
    try:
        status = client.wait_status(is_up, 15)
        assert status["local_ip"] == str(FIRST) and status["peer_ip"] == str(SERVER_TUN_IP)
        assert status["dns"] == ["10.77.0.53"]
        result = ping(one.clients[0], SERVER_TUN_IP)
        assert result.returncode == 0, result.stdout + result.stderr
        log = server.wait_log("address assigned")
        label = {"mschapv2": "MS-CHAPv2", "mschap": "MS-CHAPv1", "chap": "CHAP-MD5", "pap": "PAP"}[method]
        assert f"authenticated as 'alice' ({label})" in log
        assert "alice secret" not in log and "alice secret" not in client.text()
    finally:
        assert client.stop() == 0
        assert server.stop() == 0
    # --pcap: the server captured the negotiation and the ping, with the password masked
    from scapy.utils import rdpcap

    records = [bytes(p) for p in rdpcap(str(pcap))]
    protocols = {r[3:5] for r in records}  # direction byte, FF 03, protocol
    assert b"\xc0\x21" in protocols and b"\x80\x21" in protocols and b"\x00\x21" in protocols
    assert not any(b"alice secret" in r for r in records)
    assert pcap.stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    ("server_args", "client_args", "expect"),
    [
        (["--mppe", "require"], ["--mppe", "require"], ("128", "stateless")),
        (
            ["--mppe", "require", "--mppe-stateful"],
            ["--mppe", "require", "--mppe-stateful"],
            ("128", "stateful"),
        ),
        (
            ["--mppe", "require", "--mppe-bits", "40"],
            ["--mppe", "require", "--mppe-bits", "40"],
            ("40", "stateless"),
        ),
        (
            ["--mppe", "require", "--mppe-bits", "56"],
            ["--mppe", "require", "--mppe-bits", "56"],
            ("56", "stateless"),
        ),
        (["--mppe", "optional"], ["--mppe", "refuse"], None),
    ],
)
def test_mppe_modes(
    one: Any, tmp_path: Path, server_args: list[str], client_args: list[str], expect: Any
) -> None:
    secrets = write_secrets(tmp_path / "chap-secrets", USERS)
    server = start_server(one.server, tmp_path, secrets=secrets, args=server_args)
    client = start_client(
        one.clients[0], tmp_path, server=one.server_ips[0], user="bob", password="bob pw", args=client_args
    )
    try:
        status = client.wait_status(is_up, 15)
        encryption = str(status["encryption"]).lower()
        log = server.wait_log("address assigned")
        if expect is None:
            assert "mppe" not in encryption or "none" in encryption or "off" in encryption, encryption
            assert "MPPE off" in log
        else:
            bits, mode = expect
            assert bits in encryption and mode in encryption, encryption
            assert f"MPPE on ({bits}-bit, {mode})" in log
        result = ping(one.clients[0], SERVER_TUN_IP, count=2)
        assert result.returncode == 0, result.stdout
    finally:
        client.stop()
        server.stop()


TCP_SERVER = r"""
import hashlib, os, socket, sys
data = os.urandom(int(sys.argv[2]))
sys.stdout.write(hashlib.sha256(data).hexdigest() + "\n"); sys.stdout.flush()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5001)); s.listen(1)
c, _ = s.accept(); c.sendall(data); c.close()
"""
TCP_CLIENT = r"""
import hashlib, socket, sys, time
s = socket.create_connection((sys.argv[1], 5001), timeout=20)
h = hashlib.sha256(); n = 0; t = time.monotonic()
while True:
    b = s.recv(65536)
    if not b: break
    h.update(b); n += len(b)
print(h.hexdigest(), n, round(time.monotonic() - t, 3))
"""


def test_tcp_transfer_and_induced_reordering_absorbed(one: Any, tmp_path: Path) -> None:
    secrets = write_secrets(tmp_path / "chap-secrets", USERS)
    server = start_server(one.server, tmp_path, secrets=secrets, args=["--test-reorder", "0.2"])
    client = start_client(
        one.clients[0], tmp_path, server=one.server_ips[0], user="alice", password="alice secret"
    )
    size = 2_000_000
    try:
        client.wait_status(is_up, 15)
        sender = one.server.popen(
            [sys.executable, "-c", TCP_SERVER, str(SERVER_TUN_IP), str(size)],
            stdout=__import__("subprocess").PIPE,
        )
        assert sender.stdout is not None
        expected = sender.stdout.readline().decode().strip()
        time.sleep(0.2)
        got = (
            one.clients[0]
            .run([sys.executable, "-c", TCP_CLIENT, str(SERVER_TUN_IP)], timeout=60)
            .stdout.split()
        )
        assert got[0] == expected and int(got[1]) == size
        # counters are published about once a second: wait for the transfer to show
        st = client.wait_status(lambda s: counters(s).get("bytes_in", 0) >= size, 5)
        c = counters(st)
        assert c.get("reorder_buffered", 0) > 10, c
        assert c.get("reorder_from_buffer", 0) > 10, c
        assert c.get("reorder_lost", 0) == 0 and c.get("reorder_late", 0) == 0, c
        sc = counters(server.wait_status(lambda s: counters(s).get("misorder_released_late", 0) > 10, 5))
        assert sc["misorder_held"] >= sc["misorder_released_late"] > 10
    finally:
        client.stop()
        server.stop()


SINK = r"""
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5002)); s.listen(1)
sys.stdout.write("ready\n"); sys.stdout.flush()
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while True:
    b = c.recv(65536)
    if not b: break
    h.update(b); n += len(b)
print(h.hexdigest(), n)
"""
UPLOAD = r"""
import hashlib, os, socket, sys
data = os.urandom(int(sys.argv[2]))
s = socket.create_connection((sys.argv[1], 5002), timeout=20); s.sendall(data); s.close()
print(hashlib.sha256(data).hexdigest(), len(data))
"""


@pytest.mark.parametrize("ack_filter", ["on", "off"])
def test_upload_with_and_without_the_tcp_ack_filter(one: Any, tmp_path: Path, ack_filter: str) -> None:
    """A bulk upload: the server's kernel acks every other segment, the server reads several of them
    per TUN read and (filter on) sends only the newest of each run; the bytes arrive intact both ways."""
    secrets = write_secrets(tmp_path / "chap-secrets", USERS)
    flag = ["--tcp-ack-filter", ack_filter]
    server = start_server(one.server, tmp_path, secrets=secrets, args=flag)
    client = start_client(
        one.clients[0], tmp_path, server=one.server_ips[0], user="alice", password="alice secret", args=flag
    )
    size = 8_000_000
    try:
        client.wait_status(is_up, 15)
        sink = one.server.popen(
            [sys.executable, "-c", SINK, str(SERVER_TUN_IP)], stdout=__import__("subprocess").PIPE
        )
        assert sink.stdout is not None and sink.stdout.readline().strip() == b"ready"
        sent = one.clients[0].run([sys.executable, "-c", UPLOAD, str(SERVER_TUN_IP), str(size)], timeout=60)
        got = sink.stdout.readline().decode().split()
        assert got == sent.stdout.split() and int(got[1]) == size
        sc = counters(server.wait_status(lambda s: counters(s).get("session_ip_in", 0) > size // 1500, 5))
        superseded = sc.get("stack_acks_superseded", 0)
        if ack_filter == "on":
            # the acks of the upload: ~1 per 2 segments; most runs of them lose all but their newest
            assert superseded > size // 1400 // 20, sc
        else:
            assert superseded == 0, sc
        assert sc.get("session_ip_out_dropped", 0) == 0, sc  # superseded acks are not counted as refused
    finally:
        client.stop()
        server.stop()


def test_the_largest_packets_cross_both_ways_and_one_byte_more_is_refused(one: Any, tmp_path: Path) -> None:
    """Over an Ethernet path the tunnel MTU is 1456 at both ends (1500 - IP 20 - GRE 16 - PPP 4 - MPPE
    4): the server's host route to the client carries it, and a 1456-byte packet with DF set crosses
    either way without fragmenting GRE, where one byte more is refused at the sender. (The client's
    kill switch drops pings the server starts, so the server side is checked by its route only.)"""
    secrets = write_secrets(tmp_path / "chap-secrets", USERS)
    server = start_server(one.server, tmp_path, secrets=secrets)
    client = start_client(
        one.clients[0], tmp_path, server=one.server_ips[0], user="alice", password="alice secret"
    )

    def df_ping(ns: Any, dest: Any, size: int) -> Any:
        argv = ["ping", "-c", "2", "-i", "0.2", "-W", "2", "-M", "do", "-s", str(size), str(dest)]
        return ns.run(argv, check=False, timeout=20)

    try:
        status = client.wait_status(is_up, 15)
        assert status["mtu"] == 1456, status
        assert "mtu 1456" in one.server.ip("route", "show", str(FIRST))
        # the echo request crosses one way and its reply, as big, the other
        fits = df_ping(one.clients[0], SERVER_TUN_IP, 1456 - 28)
        assert fits.returncode == 0, fits.stdout + fits.stderr
        # one byte more: refused by the client's TUN MTU, and by the server's route to the client
        for ns, dest in ((one.clients[0], SERVER_TUN_IP), (one.server, FIRST)):
            over = df_ping(ns, dest, 1456 - 28 + 1)
            assert over.returncode != 0 and "mtu=1456" in over.stdout + over.stderr, over.stdout + over.stderr
    finally:
        assert client.stop() == 0
        assert server.stop() == 0


def test_two_clients_at_once(tmp_path: Path) -> None:
    with star(2) as topo:
        secrets = write_secrets(tmp_path / "chap-secrets", USERS)
        server = start_server(topo.server, tmp_path, secrets=secrets)
        a = start_client(topo.clients[0], tmp_path, server=topo.server_ips[0], user="alice",
                         password="alice secret", name="a")  # fmt: skip
        b = start_client(topo.clients[1], tmp_path, server=topo.server_ips[1], user="bob",
                         password="bob pw", name="b")  # fmt: skip
        try:
            sa = a.wait_status(is_up, 20)
            sb = b.wait_status(is_up, 20)
            assert {sa["local_ip"], sb["local_ip"]} == {"10.77.0.10", "10.77.0.11"}
            for ns in topo.clients:
                result = ping(ns, SERVER_TUN_IP, count=2)
                assert result.returncode == 0, result.stdout
            st = server.status()
            clients = st["extra"]["clients"]
            assert sorted(c["address"] for c in clients) == ["10.77.0.10", "10.77.0.11"]
            assert sorted(c["user"] for c in clients) == ["alice", "bob"]
        finally:
            a.stop()
            b.stop()
            server.stop()


def test_sigkilled_client_is_noticed_and_its_address_freed(one: Any, tmp_path: Path) -> None:
    secrets = write_secrets(tmp_path / "chap-secrets", USERS)
    server = start_server(one.server, tmp_path, secrets=secrets, args=FAST_KEEPALIVE)
    client = start_client(
        one.clients[0], tmp_path, server=one.server_ips[0], user="alice", password="alice secret"
    )
    try:
        client.wait_status(is_up, 15)
        server.wait_status(lambda s: s["extra"]["pool"]["free"] == 19)
        client.signal(signal.SIGKILL)
        client.popen.wait(5)
        t0 = time.monotonic()
        server.wait_log("gone after", 10)
        assert time.monotonic() - t0 < 6
        server.wait_status(lambda s: s["extra"]["pool"]["free"] == 20 and not s["extra"]["clients"])
        assert "10.77.0.10" not in one.server.ip("route", "show")
        # the address is handed out again
        again = start_client(
            one.clients[0], tmp_path, server=one.server_ips[0], user="bob", password="bob pw", name="again"
        )
        try:
            assert again.wait_status(is_up, 15)["local_ip"] == "10.77.0.10"
        finally:
            again.stop()
    finally:
        client.stop() if client.popen.poll() is None else None
        server.stop()


def test_server_restart_client_reconnects_and_sigterm_cleans_up(one: Any, tmp_path: Path) -> None:
    secrets = write_secrets(tmp_path / "chap-secrets", USERS)
    before_addrs = one.server.addr_snapshot()
    before_routes = one.server.route_snapshot()
    server = start_server(one.server, tmp_path, secrets=secrets)
    client = start_client(
        one.clients[0], tmp_path, server=one.server_ips[0], user="alice", password="alice secret"
    )
    server2: Proc | None = None
    try:
        client.wait_status(is_up, 15)
        assert "pptps0" in one.server.links()
        assert server.stop() == 0
        log = server.text()
        assert "disconnecting 1 client" in log and "gone after" in log
        # SIGTERM left nothing behind
        assert "pptps0" not in one.server.links()
        assert one.server.addr_snapshot() == before_addrs
        assert one.server.route_snapshot() == before_routes
        client.wait_status(lambda s: s["state"] != "up", 10)
        server2 = start_server(one.server, tmp_path, secrets=secrets, name="server2")
        status = client.wait_status(lambda s: is_up(s) and s["reconnects"] >= 1, 20)
        assert status["local_ip"] == str(FIRST)
        result = ping(one.clients[0], SERVER_TUN_IP, count=2)
        assert result.returncode == 0, result.stdout
    finally:
        client.stop()
        if server2 is not None:
            server2.stop()
        elif server.popen.poll() is None:
            server.stop()


def test_bad_secrets_file_exit_code_and_message(one: Any, tmp_path: Path) -> None:
    bad = tmp_path / "chap-secrets"
    bad.write_text('alice pptpd "unterminated\n')
    server = start_server(one.server, tmp_path, secrets=bad, wait=False)
    rc = server.popen.wait(15)
    assert rc == 2
    assert f"{bad}:1:13: quote" in server.text()
