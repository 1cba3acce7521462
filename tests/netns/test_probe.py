"""``sidecar probe`` over real sockets: the probe (a subprocess in the client namespace) against
``sidecar serve`` (a subprocess in the server namespace), with nftables rules in the server
namespace for the firewall cases and a tiny DNS server in the client namespace for the DNS cases.
One server serves the whole module; every test leaves the namespaces as it found them."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from tests.netns import nslib
from tests.netns.serve_helpers import REPO, Proc, star, start_server, write_secrets

pytest.importorskip("sidecar.proto.ppp.link", reason="the PPP link has not landed yet")

PASSWORD = "probe secret 123"
USERS = [("alice", "*", PASSWORD, "*")]
NAME = "vpn.probe.test"
GRE_HINT = (
    "the host needs the PPTP conntrack helper (nf_conntrack_pptp) or a firewall rule allowing protocol 47"
)

# A DNS server for the client namespace: NAME -> the server's address, NXDOMAIN for anything else.
DNS_SERVER = r"""
import socket, struct, sys
answer = socket.inet_aton(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 53))
print("ready", flush=True)
while True:
    q, addr = s.recvfrom(512)
    i, labels = 12, []
    while q[i]:
        labels.append(q[i + 1 : i + 1 + q[i]].decode()); i += 1 + q[i]
    question = q[12 : i + 5]
    found = ".".join(labels).lower() == sys.argv[2] and q[i + 1 : i + 3] == b"\x00\x01"
    flags = 0x8180 if found else 0x8183
    head = q[:2] + struct.pack("!HHHHH", flags, 1, 1 if found else 0, 0, 0)
    rr = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + answer if found else b""
    s.sendto(head + question + rr, addr)
"""


@dataclass
class Lab:
    client: nslib.Netns
    server_ns: nslib.Netns
    server: Proc
    server_ip: IPv4Address
    tmp: Path


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("probe")
    with star(1) as topo:
        client = topo.clients[0]
        etc = Path("/etc/netns") / client.name  # `ip netns exec` mounts these over /etc
        etc.mkdir(parents=True, exist_ok=False)
        server: Proc | None = None
        try:
            (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
            dns = client.popen(
                [sys.executable, "-c", DNS_SERVER, str(topo.server_ips[0]), NAME], stdout=subprocess.PIPE
            )
            assert dns.stdout is not None and dns.stdout.readline().strip() == b"ready"
            secrets = write_secrets(tmp / "chap-secrets", USERS)
            server = start_server(topo.server, tmp, secrets=secrets)
            yield Lab(client, topo.server, server, topo.server_ips[0], tmp)
        finally:
            if server is not None:
                server.stop()
            shutil.rmtree(etc, ignore_errors=True)


def probe(
    lab: Lab, server: str, *, password: str | None = PASSWORD, user: str | None = "alice", timeout: float = 3
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PPTP_")}
    env.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    argv = [sys.executable, "-m", "sidecar", "probe", "--server", server, "--timeout", str(timeout)]
    if user is not None:
        argv += ["--user", user]
    if password is not None:
        pw = lab.tmp / "password"
        pw.write_text(password)
        pw.chmod(0o600)
        env["PPTP_PASSWORD_FILE"] = str(pw)
    return subprocess.run(
        lab.client.exec_argv(argv),
        capture_output=True,
        text=True,
        env=env,
        cwd=str(REPO),
        timeout=timeout + 20,
    )


def line(result: subprocess.CompletedProcess[str], step: int) -> str:
    found = [x for x in result.stdout.splitlines() if x.startswith(f"[{step}/9]")]
    assert len(found) == 1, result.stdout + result.stderr
    return found[0]


def verdicts(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line(result, n)[len("[1/9] ") + 12 :].split()[0] for n in range(1, 10)]


@contextlib.contextmanager
def nft_drop(ns: nslib.Netns, table: str, *rules: str) -> Iterator[None]:
    """Rules in a table of their own in ``ns``, removed afterwards (also when the test fails)."""
    body = "\n".join(rules)
    ns.nft(f"table inet {table} {{\n{body}\n}}\n")
    try:
        yield
    finally:
        ns.run(["nft", "delete", "table", "inet", table], check=False)


def no_secret(result: subprocess.CompletedProcess[str]) -> None:
    assert PASSWORD not in result.stdout and PASSWORD not in result.stderr


# -- the tests ----------------------------------------------------------------------------------------
def test_all_good_by_name(lab: Lab) -> None:
    result = probe(lab, NAME)
    assert result.returncode == 0, result.stdout + result.stderr
    assert verdicts(result) == ["ok"] * 9
    assert f"{NAME} -> {lab.server_ip}" in line(result, 1)
    assert f"connected to {lab.server_ip}:1723" in line(result, 2)
    assert "vendor 'pptp-sidecar'" in line(result, 3) and "protocol 1.0" in line(result, 3)
    assert "LCP over GRE works both ways" in line(result, 5)
    assert "asks for MS-CHAPv2" in line(result, 6)
    assert "authenticated as 'alice' with MS-CHAPv2" in line(result, 7)
    assert "MPPE-128 stateless" in line(result, 8)
    assert "10.77.0.10" in line(result, 9)
    assert "verdict: OK" in result.stdout
    no_secret(result)
    # the goodbye reached the server: its session ended and gave the address back
    text = lab.server.wait_log("probe finished", 5)
    assert "gone after" in text


def test_wrong_password(lab: Lab) -> None:
    result = probe(lab, str(lab.server_ip), password="wrong password 456")
    assert result.returncode == 15, result.stdout + result.stderr
    assert "FAIL" in line(result, 7) and "wrong user name or password" in line(result, 7)
    assert "wrong password 456" not in result.stdout + result.stderr


def test_without_credentials(lab: Lab) -> None:
    result = probe(lab, str(lab.server_ip), user=None, password=None)
    assert result.returncode == 0, result.stdout + result.stderr
    assert verdicts(result) == ["ok"] * 6 + ["skip"] * 3
    assert "verdict: OK so far" in result.stdout


def test_nothing_listening_is_refused(lab: Lab) -> None:
    result = probe(lab, f"{lab.server_ip}:1724")
    assert result.returncode == 11, result.stdout + result.stderr
    assert "refused: nothing listens on 1724" in line(result, 2)
    assert verdicts(result)[2:] == ["skip"] * 7


def test_dropped_tcp_times_out(lab: Lab) -> None:
    rule = "chain input { type filter hook input priority -10; tcp dport 1723 drop; }"
    with nft_drop(lab.server_ns, "probe_tcp", rule):
        result = probe(lab, str(lab.server_ip), timeout=1.5)
    assert result.returncode == 11, result.stdout + result.stderr
    assert "timed out: a firewall drops TCP 1723" in line(result, 2)


@pytest.mark.parametrize(
    ("hooks", "expect"),
    [(("input", "output"), "no GRE from the server"), (("input",), "the server's LCP reaches us over GRE")],
)
def test_gre_blocked(lab: Lab, hooks: tuple[str, ...], expect: str) -> None:
    rules = [f"chain {h} {{ type filter hook {h} priority -10; ip protocol gre drop; }}" for h in hooks]
    with nft_drop(lab.server_ns, "probe_gre", *rules):
        result = probe(lab, str(lab.server_ip), timeout=2.5)
    assert result.returncode == 14, result.stdout + result.stderr
    assert verdicts(result)[:4] == ["ok"] * 4
    assert "FAIL" in line(result, 5) and expect in line(result, 5) and GRE_HINT in line(result, 5)
    assert "verdict: FAIL at step 5 (GRE)" in result.stdout


def test_unresolvable_name(lab: Lab) -> None:
    result = probe(lab, "nonexistent.invalid")
    assert result.returncode == 10, result.stdout + result.stderr
    assert "FAIL" in line(result, 1) and "'nonexistent.invalid' does not exist in DNS" in line(result, 1)
    assert verdicts(result)[1:] == ["skip"] * 8
