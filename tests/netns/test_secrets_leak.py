"""Secrets never leave the process: ``sidecar up`` and ``sidecar serve`` run with distinctive
passwords, at debug level, in both log formats, up and on authentication failure; the passwords (and
the NT hash MS-CHAP derives from them, in hex) appear in no log line, no ``/status`` or ``/metrics``
answer, and no ``/proc/<pid>/cmdline`` of the running processes. The server's other users' secrets
(from its secrets file) never appear either; with PAP the server receives the attempted password in
clear text and must not log it.

The logs are also free of the redaction mask ``***``: the log filter masks the configured password
as a last line of defence, so a mask in the output would mean some code path tried to log it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from Crypto.Hash import MD4

from tests.netns import faultlib as fl
from tests.netns.serve_helpers import SERVER_TUN_IP, Star, star, write_secrets

PASSWORD = "Zq7-tangerine-Kx93!pw"
OTHER_USER_SECRET = "Vn4-marmalade-Wq18"
WRONG_PASSWORD = "Jx81-lemonade-Bd26"
USERS = [("alice", "*", PASSWORD, "*"), ("bob", "*", OTHER_USER_SECRET, "*")]


def needles(*passwords: str) -> list[str]:
    out = []
    for pw in passwords:
        digest = MD4.new(pw.encode("utf-16-le")).hexdigest()
        out += [pw, digest, digest.upper(), pw.encode("utf-16-le").hex()]
    return out


def assert_clean(where: str, text: str, secrets: list[str]) -> None:
    for needle in secrets:
        assert needle not in text, f"a secret ({needle[:3]}...) appears in {where}"


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


@pytest.fixture
def one() -> Iterator[Star]:
    with star(1) as topo:
        yield topo


def test_no_secret_in_logs_status_metrics_or_cmdline_while_up(one: Star, tmp_path: Path) -> None:
    secrets = write_secrets(tmp_path / "chap-secrets", USERS)
    assert PASSWORD in secrets.read_text()  # (the needle is findable where it is)
    server = fl.start_server(one.server, tmp_path, secrets=secrets, log_format="json")
    client = fl.start_client(
        one.clients[0], tmp_path, server=one.server_ips[0], user="alice", password=PASSWORD
    )
    everything = needles(PASSWORD, OTHER_USER_SECRET)
    try:
        fl.wait_up(client)
        assert fl.ping(one.clients[0], SERVER_TUN_IP, 2) == 2
        time.sleep(1.1)  # counters published
        for proc in (client, server):
            assert proc.http_port is not None
            for path in ("/status", "/metrics", "/healthz", "/readyz"):
                assert_clean(f"{proc.name} {path}", fl.http_get(proc.ns, proc.http_port, path), everything)
            assert_clean(f"{proc.name} cmdline", cmdline(proc.pid()), everything)
        status = json.loads(fl.http_get(client.ns, fl.CLIENT_HTTP, "/status"))
        assert status["state"] == "up" and status["auth_method"]  # the documents are the real ones
    finally:
        assert client.stop() == 0
        assert server.stop() == 0
    for proc in (client, server):
        text = proc.text()
        assert "tunnel up" in text or "address assigned" in text  # debug logs of a whole session
        assert_clean(f"{proc.name} log", text, everything)
        assert "***" not in text, f"{proc.name}: the log filter had to mask something"
    for line in server.text().splitlines():
        if line.startswith("{"):
            json.loads(line)  # the JSON format really is JSON (so the grep saw every field)


@pytest.mark.parametrize(
    ("auth", "mppe", "client_format"),
    [("mschapv2", "require", "json"), ("pap", "refuse", "text")],
)
def test_no_secret_anywhere_on_authentication_failure(
    one: Star, tmp_path: Path, auth: str, mppe: str, client_format: str
) -> None:
    secrets = write_secrets(tmp_path / "chap-secrets", USERS)
    args = ["--auth", auth, "--mppe", mppe]
    server_format = "text" if client_format == "json" else "json"
    server = fl.start_server(one.server, tmp_path, secrets=secrets, args=args, log_format=server_format)
    client_args = [*args, "--max-auth-failures", "2", "--log-format", client_format]
    client = fl.start_client(one.clients[0], tmp_path, server=one.server_ips[0], user="alice",
                             password=WRONG_PASSWORD, args=client_args)  # fmt: skip
    everything = needles(WRONG_PASSWORD, PASSWORD, OTHER_USER_SECRET)
    try:
        fl.wait_until(lambda: fl.status_of(client).get("auth_failures", 0) >= 1, 10, "an auth failure")
        for path in ("/status", "/metrics"):
            assert_clean(f"client {path}", fl.http_get(client.ns, fl.CLIENT_HTTP, path), everything)
            assert_clean(f"server {path}", fl.http_get(server.ns, fl.SERVER_HTTP, path), everything)
        assert_clean("client cmdline", cmdline(client.pid()), everything)
        assert client.popen.wait(15) == 3
    finally:
        if client.popen.poll() is None:
            client.stop()
        server.stop()
    text = client.text()
    assert "authentication failed" in text and "giving up" in text  # the failure was logged...
    assert_clean("client log", text, everything)  # ...without the password, its hash, the server's
    assert_clean("server log", server.text(), everything)
    assert "***" not in text and "***" not in server.text()
