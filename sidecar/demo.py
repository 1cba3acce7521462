"""``sidecar demo``: the whole thing on one machine, in network namespaces, with a readable report.

Rules: the demo creates everything it uses (namespaces, veth pairs, temporary files, the two
sidecar processes) and removes all of it when it ends, also on Ctrl-C, SIGTERM or failure. It sends
traffic only inside the namespaces it made. It ends processes it started, by PID, nothing else.

Topology::

    [app ns]  app process + ``sidecar up`` (TUN pptp0, kill switch)
        | veth 10.203.<n>.2 <-> 10.203.<n>.1
    [srv ns]  ``sidecar serve`` (TUN pptps0 10.77.0.1, pool 10.77.0.10-29), ip_forward on
        | veth 10.78.<n>.1 <-> 10.78.<n>.2
    [lan ns]  the "remote LAN" host (a TCP sender, answers ping), route back to the pool via srv

What it shows: the handshake timeline (control, LCP, auth, CCP/MPPE, IPCP) from the client's
``/status``; the addresses and DNS it received; ping RTT and TCP throughput from the app to the LAN
host through the tunnel (content checked); the client's reorder counters with the server's
deliberate reordering (``--test-reorder``) off and then on; and, with the tunnel down, that the app
cannot reach the LAN host (the kill switch: no leak).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

SERVER_TUN_IP = "10.77.0.1"
POOL = "10.77.0.10-10.77.0.29"
DNS = "10.77.0.53"
STATUS_PORT = 9101
TRANSFER_BYTES = 4_000_000
USER, PASSWORD = "demo", "demo password (never logged)"


class DemoError(Exception):
    """The demo cannot go on; the message says why."""


class _Interrupted(Exception):
    pass


# ---------------------------------------------------------------------------------------------------
def _run(argv: Sequence[str], *, check: bool = True, timeout: float = 20.0, input: str | None = None) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise DemoError(
            f"`{' '.join(argv)}` failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc.stdout


class _Lab:
    """The namespaces, links and processes of one demo run; :meth:`close` removes all of it."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 10000}"
        self.app, self.srv, self.lan = f"sdapp{tag}", f"sdsrv{tag}", f"sdlan{tag}"
        n = os.getpid() % 200 + 20
        self.app_ip, self.srv_app_ip = f"10.203.{n}.2", f"10.203.{n}.1"
        self.srv_lan_ip, self.lan_ip = f"10.78.{n}.1", f"10.78.{n}.2"
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="sidecar-demo-"))

    # -- building ---------------------------------------------------------------------------------
    def build(self) -> None:
        for ns in (self.app, self.srv, self.lan):
            _run(["ip", "netns", "add", ns])
            self.namespaces.append(ns)
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        self._veth(self.app, "app0", f"{self.app_ip}/24", self.srv, "srvapp0", f"{self.srv_app_ip}/24")
        self._veth(self.srv, "srvlan0", f"{self.srv_lan_ip}/24", self.lan, "lan0", f"{self.lan_ip}/24")
        _run(["ip", "-n", self.app, "route", "add", "default", "via", self.srv_app_ip])
        _run(["ip", "-n", self.lan, "route", "add", "10.77.0.0/24", "via", self.srv_lan_ip])
        _run(self.exec(self.srv, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]))
        (self.tmp / "chap-secrets").write_text(f'{USER} pptpd "{PASSWORD}" *\n')
        pw = self.tmp / "password"
        pw.write_text(PASSWORD)
        pw.chmod(0o600)

    def _veth(self, a: str, a_if: str, a_cidr: str, b: str, b_if: str, b_cidr: str) -> None:
        _run(["ip", "link", "add", a_if, "netns", a, "type", "veth", "peer", "name", b_if, "netns", b])
        for ns, ifname, cidr in ((a, a_if, a_cidr), (b, b_if, b_cidr)):
            _run(["ip", "-n", ns, "addr", "add", cidr, "dev", ifname])
            _run(["ip", "-n", ns, "link", "set", ifname, "up"])

    @staticmethod
    def exec(ns: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def start(
        self, ns: str, argv: Sequence[str], log_name: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.tmp / log_name).open("wb")
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("PPTP_")}
        full_env.update(env or {})
        full_env["PYTHONUNBUFFERED"] = "1"
        proc = subprocess.Popen(self.exec(ns, argv), stdout=log, stderr=subprocess.STDOUT, env=full_env)
        log.close()
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 8.0) -> int:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        return proc.returncode if proc.returncode is not None else -1

    def log(self, name: str) -> str:
        path = self.tmp / name
        return path.read_text(errors="replace") if path.exists() else ""

    # -- teardown ---------------------------------------------------------------------------------
    def close(self) -> list[str]:
        problems: list[str] = []
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                self.stop(proc, 5)
        for ns in reversed(self.namespaces):
            done = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True)
            if done.returncode != 0:
                problems.append(f"could not delete namespace {ns}: {done.stderr.strip()}")
        self.namespaces.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)
        return problems


# ---------------------------------------------------------------------------------------------------
def _preflight() -> None:
    if not sys.platform.startswith("linux"):
        raise DemoError("the demo needs Linux network namespaces")
    if os.geteuid() != 0:
        raise DemoError(
            "the demo needs root (it creates network namespaces and TUN devices): run it with sudo"
        )
    if not os.path.exists("/dev/net/tun"):
        raise DemoError(
            "/dev/net/tun is missing: load the tun module (modprobe tun) or pass --device /dev/net/tun"
        )
    for tool in ("ip", "nft", "ping"):
        if shutil.which(tool) is None:
            raise DemoError(f"`{tool}` is not installed (apt-get install iproute2 nftables iputils-ping)")


def _status(lab: _Lab) -> dict[str, Any]:
    code = (
        "import urllib.request,sys;sys.stdout.write(urllib.request.urlopen("
        f"'http://127.0.0.1:{STATUS_PORT}/status',timeout=2).read().decode())"
    )
    out = _run(lab.exec(lab.app, [sys.executable, "-c", code]), timeout=10)
    data: dict[str, Any] = json.loads(out)
    return data


def _wait(what: str, predicate: Callable[[], bool], timeout: float, lab: _Lab, log: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if predicate():
                return
        time.sleep(0.1)
    tail = "\n    ".join(lab.log(log).splitlines()[-25:])
    raise DemoError(f"{what} did not happen within {timeout:g} s; last lines of {log}:\n    {tail}")


def _start_server(lab: _Lab, reorder: float, name: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "sidecar", "serve", "--listen", f"{lab.srv_app_ip}:1723",
            "--local-ip", SERVER_TUN_IP, "--pool", POOL, "--dns", DNS, "--interface", "pptps0",
            "--test-reorder", str(reorder)]  # fmt: skip
    proc = lab.start(lab.srv, argv, name, {"PPTP_SECRETS": str(lab.tmp / "chap-secrets")})
    _wait("the server start", lambda: "serving PPTP on" in lab.log(name), 15, lab, name)
    return proc


TCP_SENDER = r"""
import hashlib, os, socket, sys
data = os.urandom(int(sys.argv[2]))
sys.stdout.write(hashlib.sha256(data).hexdigest() + "\n"); sys.stdout.flush()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[3]))); s.listen(1); s.settimeout(30)
c, _ = s.accept(); c.sendall(data); c.close()
"""
TCP_RECEIVER = r"""
import hashlib, socket, sys, time
t = time.monotonic(); s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
h = hashlib.sha256(); n = 0
while True:
    b = s.recv(262144)
    if not b: break
    h.update(b); n += len(b)
print(h.hexdigest(), n, time.monotonic() - t)
"""


def _transfer(lab: _Lab, port: int) -> tuple[bool, int, float]:
    sender = subprocess.Popen(
        lab.exec(lab.lan, [sys.executable, "-c", TCP_SENDER, lab.lan_ip, str(TRANSFER_BYTES), str(port)]),
        stdout=subprocess.PIPE,
    )
    lab.procs.append(sender)
    assert sender.stdout is not None
    expected = sender.stdout.readline().decode().strip()
    time.sleep(0.2)
    out = _run(
        lab.exec(lab.app, [sys.executable, "-c", TCP_RECEIVER, lab.lan_ip, str(port)]), timeout=60
    ).split()
    sender.wait(10)
    return out[0] == expected, int(out[1]), float(out[2])


def _ping(lab: _Lab, count: int = 5) -> tuple[int, str]:
    proc = subprocess.run(
        lab.exec(lab.app, ["ping", "-c", str(count), "-i", "0.2", "-W", "2", lab.lan_ip]),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    summary = next((line for line in proc.stdout.splitlines() if "min/avg/max" in line), "")
    return proc.returncode, summary.split("=")[-1].strip() if summary else "no replies"


def _reorder_counters(status: dict[str, Any]) -> dict[str, int]:
    return {k: v for k, v in status.get("counters", {}).items() if k.startswith("reorder_")}


def _bytes_in(status: dict[str, Any]) -> int:
    return int(status.get("counters", {}).get("bytes_in", 0))


def _counters_after(lab: _Lab, bytes_before: int, n: int) -> dict[str, int]:
    """The client publishes its counters about once a second: wait until they show the transfer."""
    _wait("the client's counters catching up", lambda: _bytes_in(_status(lab)) - bytes_before >= n, 5, lab,
          "client.log")  # fmt: skip
    return _reorder_counters(_status(lab))


def _say(text: str = "") -> None:
    print(text, flush=True)


def _demo(lab: _Lab, keep_going: bool) -> None:
    t0 = time.monotonic()
    _say("pptp-sidecar demo: building namespaces (app, server, remote LAN)")
    lab.build()
    _say(f"  app ns {lab.app} {lab.app_ip}  ->  server ns {lab.srv} {lab.srv_app_ip} / {lab.srv_lan_ip}"
         f"  ->  LAN host {lab.lan} {lab.lan_ip}")  # fmt: skip

    server = _start_server(lab, 0.0, "server.log")
    client_argv = [sys.executable, "-m", "sidecar", "up", "--server", lab.srv_app_ip, "--user", USER,
                   "--password-file", str(lab.tmp / "password"), "--interface", "pptp0", "--no-dns",
                   "--http", f"127.0.0.1:{STATUS_PORT}",
                   "--backoff-initial", "0.3", "--backoff-max", "1"]  # fmt: skip
    lab.start(lab.app, client_argv, "client.log")
    _wait("the tunnel coming up", lambda: _status(lab).get("state") == "up", 20, lab, "client.log")
    status = _status(lab)

    _say("\n== handshake timeline (client)")
    timeline = status.get("timeline", [])
    first = timeline[0]["t"] if timeline else 0.0
    for entry in timeline:
        _say(f"  +{(entry['t'] - first) * 1000:7.1f} ms  {entry['phase']:<20} {entry.get('detail', '')}")
    _say("\n== what the client received")
    _say(
        f"  address {status.get('local_ip')}  peer {status.get('peer_ip')}"
        f"  DNS {', '.join(status.get('dns') or []) or '-'}"
    )
    _say(
        f"  MTU {status.get('mtu')}  encryption {status.get('encryption')}  auth {status.get('auth_method')}"
    )
    server_lines = [line.split("sidecar.server", 1)[-1].strip(" :")
                    for line in lab.log("server.log").splitlines()
                    if "client 1" in line]  # fmt: skip
    if server_lines:
        _say("  server log:")
        for line in server_lines:
            _say(f"    {line[-120:]}")

    _say("\n== app -> LAN host through the tunnel")
    rc, rtt = _ping(lab)
    _say(f"  ping {lab.lan_ip}: {'ok' if rc == 0 else 'FAILED'}  rtt min/avg/max/mdev {rtt}")
    if rc != 0:
        raise DemoError("ping through the tunnel failed")
    status = _status(lab)
    before, bytes_before = _reorder_counters(status), _bytes_in(status)
    ok, n, secs = _transfer(lab, 5001)
    after = _counters_after(lab, bytes_before, n)
    _say(
        f"  TCP {n / 1e6:.1f} MB in {secs:.2f} s = {n * 8 / secs / 1e6:.1f} Mbit/s,"
        f" content {'identical' if ok else 'DIFFERENT'}"
    )
    if not ok:
        raise DemoError("the TCP transfer arrived damaged")
    delta_off = {k: after.get(k, 0) - before.get(k, 0) for k in after}

    _say("\n== induced reordering: server restarted with --test-reorder 0.2")
    lab.stop(server)
    sessions_before = int(_status(lab).get("sessions", 0))
    server = _start_server(lab, 0.2, "server2.log")
    _wait("the client reconnecting",
          lambda: (s := _status(lab)).get("state") == "up" and int(s.get("sessions", 0)) > sessions_before,
          20, lab, "client.log")  # fmt: skip
    status = _status(lab)
    before, bytes_before = _reorder_counters(status), _bytes_in(status)
    ok2, n2, secs2 = _transfer(lab, 5002)
    after = _counters_after(lab, bytes_before, n2)
    delta_on = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    _say(
        f"  TCP {n2 / 1e6:.1f} MB in {secs2:.2f} s = {n2 * 8 / secs2 / 1e6:.1f} Mbit/s,"
        f" content {'identical' if ok2 else 'DIFFERENT'}"
    )
    keys = sorted(set(delta_off) | set(delta_on))
    _say(f"  {'reorder counter':<24}{'off':>10}{'on (0.2)':>12}")
    for key in keys:
        _say(f"  {key:<24}{delta_off.get(key, 0):>10}{delta_on.get(key, 0):>12}")
    if not ok2:
        raise DemoError("the TCP transfer with reordering arrived damaged")

    if keep_going:
        _say("\n--keep-going: tunnel stays up; Ctrl-C ends the demo and removes everything")
        while True:
            time.sleep(1)

    _say("\n== tunnel down: does anything leak?")
    lab.stop(server)
    _wait("the client noticing", lambda: _status(lab).get("state") != "up", 10, lab, "client.log")
    rc, _ = _ping(lab, count=2)
    tcp = subprocess.run(
        lab.exec(lab.app, [sys.executable, "-c",
                           f"import socket;socket.create_connection(('{lab.lan_ip}',22),timeout=2)"]),
        capture_output=True, text=True, timeout=15,
    )  # fmt: skip
    route = _run(lab.exec(lab.app, ["ip", "route", "get", lab.lan_ip]), check=False).strip()
    leak = rc == 0 or tcp.returncode == 0
    _say(f"  route to {lab.lan_ip} without the tunnel: {route.splitlines()[0] if route else '-'}")
    _say(
        f"  ping: {'REPLIED (leak!)' if rc == 0 else 'blocked'}"
        f"   TCP: {'connected (leak!)' if tcp.returncode == 0 else 'blocked'}"
    )
    if leak:
        raise DemoError("traffic left the app namespace while the tunnel was down")
    _say(f"\ndemo finished in {time.monotonic() - t0:.1f} s; removing namespaces")


def run_demo(keep_going: bool = False) -> int:
    """Run the demo; returns the exit code (0 ok, 1 failed, 130 interrupted)."""
    try:
        _preflight()
    except DemoError as exc:
        print(f"sidecar demo: {exc}", file=sys.stderr)
        return 1
    lab = _Lab()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise _Interrupted(signal.Signals(signum).name)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    code = 0
    try:
        _demo(lab, keep_going)
    except DemoError as exc:
        print(f"sidecar demo failed: {exc}", file=sys.stderr)
        code = 1
    except (KeyboardInterrupt, _Interrupted):
        print("\nsidecar demo interrupted; cleaning up", file=sys.stderr)
        code = 130
    except Exception as exc:  # a bug: still clean up, and say what happened
        print(f"sidecar demo failed unexpectedly: {type(exc).__name__}: {exc}", file=sys.stderr)
        code = 1
    finally:
        with _ignoring_signals():
            problems = lab.close()
        for s, handler in old.items():
            signal.signal(s, handler)
        for problem in problems:
            print(f"sidecar demo: cleanup: {problem}", file=sys.stderr)
    return code


@contextlib.contextmanager
def _ignoring_signals() -> Iterator[None]:
    """Cleanup must finish even if Ctrl-C is pressed again."""
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


__all__ = ["DemoError", "run_demo"]
