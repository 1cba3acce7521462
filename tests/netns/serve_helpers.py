"""Helpers for the end-to-end tests of ``sidecar serve`` against ``sidecar up`` in namespaces.

Topology (:func:`star`): one server namespace and N client namespaces, each client joined to the
server by its own veth pair (``10.<a>.<b>.2`` client, ``10.<a>.<b>.1`` server). The server and the
clients run as real subprocesses (``python -m sidecar serve`` / ``up``) inside their namespaces;
their logs go to files the tests read; ``/status`` is read over HTTP from inside the namespace.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from tests.netns import nslib

SERVER_TUN_IP = IPv4Address("10.77.0.1")
POOL = "10.77.0.10-10.77.0.29"
FIRST = IPv4Address("10.77.0.10")
STATUS_PORT = 9111
SERVER_HTTP_PORT = 9112
REPO = Path(__file__).resolve().parents[2]

_octet = itertools.count((os.getpid() * 7) % 200)


@dataclass
class Star:
    server: nslib.Netns
    clients: list[nslib.Netns]
    server_ips: list[IPv4Address]  # the server's address on each client's link
    client_ips: list[IPv4Address]


@contextlib.contextmanager
def star(n_clients: int = 1) -> Iterator[Star]:
    base = nslib.unique("pss")
    made: list[nslib.Netns] = []
    try:
        server = nslib.Netns.create(base + "s")
        made.append(server)
        clients, server_ips, client_ips = [], [], []
        for i in range(n_clients):
            c = nslib.Netns.create(f"{base}c{i}")
            made.append(c)
            b = next(_octet) % 250 + 1
            sip, cip = IPv4Address(f"10.202.{b}.1"), IPv4Address(f"10.202.{b}.2")
            nslib.veth(c, f"{base}c{i}", f"{cip}/24", server, f"{base}s{i}", f"{sip}/24")
            c.ip("route", "add", "default", "via", str(sip))
            clients.append(c)
            server_ips.append(sip)
            client_ips.append(cip)
        yield Star(server, clients, server_ips, client_ips)
    finally:
        for ns in reversed(made):
            ns.delete()


@dataclass
class Proc:
    ns: nslib.Netns
    popen: subprocess.Popen[bytes]
    log: Path
    name: str
    http_port: int | None = None
    _seen: int = field(default=0)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_log(self, needle: str, timeout: float = 10.0, *, count: int = 1) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if text.count(needle) >= count:
                return text
            if self.popen.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(
            f"{self.name}: {needle!r} (x{count}) not seen within {timeout} s "
            f"(exit code {self.popen.poll()}); log:\n{self.text()[-4000:]}"
        )

    def status(self) -> dict[str, Any]:
        assert self.http_port is not None
        code = (
            "import urllib.request,sys;"
            f"sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:{self.http_port}/status',timeout=2)"
            ".read().decode())"
        )
        out = self.ns.run([sys.executable, "-c", code], timeout=10).stdout
        data: dict[str, Any] = json.loads(out)
        return data

    def wait_status(self, predicate: Any, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                last = self.status()
            except Exception:
                last = {}
            if last and predicate(last):
                return last
            if self.popen.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(
            f"{self.name}: status condition not met in {timeout} s: {last}\n{self.text()[-3000:]}"
        )

    def signal(self, sig: int) -> None:
        """Signal the sidecar process itself (ip netns exec execs it, so the PID is the sidecar)."""
        if self.popen.poll() is None:
            os.kill(self.popen.pid, sig)

    def stop(self, timeout: float = 10.0) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)
            raise AssertionError(
                f"{self.name} did not stop on SIGTERM within {timeout} s:\n{self.text()[-3000:]}"
            ) from None


def _spawn(
    ns: nslib.Netns, argv: Sequence[str], log: Path, name: str, env: dict[str, str], port: int | None
) -> Proc:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **env}
    for key in [k for k in full_env if k.startswith("PPTP_") and k not in env]:
        del full_env[key]  # nothing from the outer environment leaks into the test
    fh = log.open("wb")
    popen = ns.popen(
        [sys.executable, "-m", "sidecar", *argv],
        stdout=fh,
        stderr=subprocess.STDOUT,
        env=full_env,
        cwd=str(REPO),
    )
    fh.close()
    return Proc(ns, popen, log, name, port)


def write_secrets(path: Path, entries: Sequence[tuple[str, str, str, str]]) -> Path:
    lines = [f'"{c}" {s} "{p}" {a}' for c, s, p, a in entries]
    path.write_text("\n".join(lines) + "\n")
    return path


def start_server(
    ns: nslib.Netns,
    tmp: Path,
    *,
    secrets: Path,
    args: Sequence[str] = (),
    wait: bool = True,
    name: str = "server",
) -> Proc:
    argv = [
        "serve",
        "--listen", "0.0.0.0:1723",
        "--local-ip", str(SERVER_TUN_IP),
        "--pool", POOL,
        "--interface", "pptps0",
        "--dns", "10.77.0.53",
        "--http", f"127.0.0.1:{SERVER_HTTP_PORT}",
        "--log-level", "debug",
        *args,
    ]  # fmt: skip
    proc = _spawn(ns, argv, tmp / f"{name}.log", name, {"PPTP_SECRETS": str(secrets)}, SERVER_HTTP_PORT)
    if wait:
        proc.wait_log("serving PPTP on", 15)
    return proc


def start_client(
    ns: nslib.Netns,
    tmp: Path,
    *,
    server: IPv4Address,
    user: str,
    password: str,
    args: Sequence[str] = (),
    name: str = "client",
) -> Proc:
    pw = tmp / f"{name}.password"
    pw.write_text(password)
    pw.chmod(0o600)
    argv = [
        "up",
        "--server", str(server),
        "--user", user,
        "--interface", "pptp0",
        "--http", f"127.0.0.1:{STATUS_PORT}",
        "--no-dns",
        "--log-level", "debug",
        "--backoff-initial", "0.2",
        "--backoff-max", "1",
        *args,
    ]  # fmt: skip
    return _spawn(ns, argv, tmp / f"{name}.log", name, {"PPTP_PASSWORD_FILE": str(pw)}, STATUS_PORT)


def is_up(status: dict[str, Any]) -> bool:
    return status.get("state") == "up"


def ping(ns: nslib.Netns, dest: IPv4Address, count: int = 3) -> subprocess.CompletedProcess[str]:
    return ns.run(["ping", "-c", str(count), "-i", "0.2", "-W", "2", str(dest)], check=False, timeout=20)
