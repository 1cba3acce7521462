"""The real client (``sidecar up``, a subprocess in the VM's client netns) against Debian's real
pptpd 1.4.0 + pppd 2.4.9 (tests/interop/vm.py): one test per scenario of the issue "The tunnel".

Each test starts the client with ``ip netns exec`` exactly as a user would (flags, PPTP_PASSWORD),
reads its ``/status`` over HTTP inside the netns, and judges by what both sides say: the client's
status and log, pppd's debug log (every packet it sent and received) and pptpd's syslog. Data goes
through the tunnel to the server's end (``inside_ip``): ping, and random bytes through the TCP echo
(port 7) compared by SHA-256.

Determinism: every wait polls a condition with a generous bound (no fixed sleeps to "let things
settle"); time-based assertions (no tight retry loop, goodbye within 2 s) have margins of several
times what a loaded CI machine needs. One VM serves the whole module (the ``pptpd`` fixture resets it
per test). Figures (per-test time, throughput) are printed at the end and kept in
docs/interop-scenarios.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from sidecar.supervisor import EXIT_AUTH  # gave up after max_auth_failures bad-credential sessions
from tests.interop.vm import (
    CHAP_MD5,
    MSCHAPV1_MPPE128,
    MSCHAPV2_MPPE128,
    MSCHAPV2_MPPE128_STATEFUL,
    MSCHAPV2_NO_MPPE,
    PAP,
    Vm,
)

REPO = Path(__file__).resolve().parents[2]
INSIDE_NET = "10.231.1.0/24"  # the tunnel addresses: inside_ip and the pool
UP_TIMEOUT = 30.0  # client start to "up" (~1 s here; UML under load can be slow)
_ports = itertools.count(9310)
FIGURES: dict[str, str] = {}


# ---------------------------------------------------------------------------------------------
# The client under test
# ---------------------------------------------------------------------------------------------


class Client:
    """One ``sidecar up`` process in the VM's client netns (``ip netns exec`` execs it: the PID
    we hold is the client's own). Defaults: routes only to the tunnel subnet, no kill switch, no
    DNS rewrite, the HTTP listener on a fresh loopback port inside the netns; extra flags go after
    them and win."""

    def __init__(self, vm: Vm, log_path: Path, args: list[str], *, password: str | None = None) -> None:
        self.vm = vm
        self.port = next(_ports)
        self.log_path = log_path
        argv = [
            sys.executable, "-m", "sidecar", "up",
            "--server", vm.server_ip, "--user", vm.user,
            "--routes", INSIDE_NET, "--no-kill-switch", "--no-dns",
            "--http", f"127.0.0.1:{self.port}",
            *args,
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("PPTP_")}
        env["PPTP_PASSWORD"] = vm.password if password is None else password
        env["PYTHONPATH"] = str(REPO)
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            vm.netns_cmd(argv),
            env=env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.started = time.monotonic()

    # -- observing ---------------------------------------------------------------------------
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 40) -> str:
        return "".join(self.log().splitlines(keepends=True)[-lines:])

    def get(self, path: str) -> tuple[int, bytes] | None:
        """(HTTP status, body) of ``path`` from the client's listener, or None if not reachable."""
        try:
            with self.vm.socket() as s:
                s.settimeout(3)
                s.connect(("127.0.0.1", self.port))
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: sidecar\r\nConnection: close\r\n\r\n".encode())
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
        except OSError:
            return None
        head, _, body = data.partition(b"\r\n\r\n")
        m = re.match(rb"HTTP/1\.[01] (\d{3})", head)
        return (int(m.group(1)), body) if m else None

    def status(self) -> dict[str, Any] | None:
        got = self.get("/status")
        if got is None or got[0] != 200:
            return None
        data: dict[str, Any] = json.loads(got[1])
        return data

    def wait_status(
        self, ok: Callable[[dict[str, Any]], object], what: str, timeout: float = UP_TIMEOUT
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"client exited (rc {self.proc.returncode}) waiting for {what}:\n{self.tail()}"
                )
            status = self.status()
            if status is not None:
                last = status
                if ok(status):
                    return status
            time.sleep(0.1)
        brief = {k: last.get(k) for k in ("state", "last_error", "sessions", "reconnects")} if last else None
        raise AssertionError(f"no {what} within {timeout:.0f} s (last status {brief}):\n{self.tail()}")

    def wait_up(self, timeout: float = UP_TIMEOUT, *, sessions: int = 1) -> dict[str, Any]:
        """Our side up (``sessions``: the n-th session), then pppd's: pppd passes IP only once its
        IPCP is up *and* it has run ip-pre-up (~0.1 s under UML), which can be after ours; a packet
        sent in between is dropped by pppd (the first ping, seen here). It logs "remote IP
        address" right after it starts passing IP."""
        status = self.wait_status(
            lambda s: s["state"] == "up" and s["sessions"] >= sessions, "tunnel up", timeout
        )
        deadline = time.monotonic() + timeout
        rx = re.compile(rf"^remote IP address {re.escape(status['local_ip'])}$", re.M)
        while len(rx.findall(self.vm.pppd_log())) < sessions:
            if time.monotonic() > deadline:
                raise AssertionError(f"pppd never logged {rx.pattern!r}:\n{self.vm.pppd_log()[-3000:]}")
            time.sleep(0.05)
        return status

    def wait_log(self, pattern: str, *, count: int = 1, timeout: float = UP_TIMEOUT) -> list[re.Match[str]]:
        rx = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while True:
            found = list(rx.finditer(self.log()))
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{pattern!r} x{count} not in the client log within {timeout:.0f} s "
                    f"({len(found)} found):\n{self.tail()}"
                )
            if self.proc.poll() is not None and len(found) < count:
                raise AssertionError(
                    f"client exited (rc {self.proc.returncode}) before {pattern!r}:\n{self.tail()}"
                )
            time.sleep(0.1)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"client still running after {timeout:.0f} s:\n{self.tail()}") from None

    # -- stopping ----------------------------------------------------------------------------
    def terminate(self) -> tuple[int, float]:
        """SIGTERM; (exit code, seconds from the signal to the exit)."""
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        rc = self.wait_exit(10)
        return rc, time.monotonic() - t0

    def stop(self) -> None:
        """Ends the process if it still runs (SIGTERM, then SIGKILL), by its PID."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


@pytest.fixture
def start_client(pptpd: Vm, tmp_path: Path) -> Iterator[Callable[..., Client]]:
    """``start_client(*flags, password=None)`` -> a running :class:`Client`; every client is ended
    (by PID) after the test."""
    clients: list[Client] = []

    def start(*args: str, password: str | None = None) -> Client:
        client = Client(pptpd, tmp_path / f"sidecar-{len(clients)}.log", list(args), password=password)
        clients.append(client)
        return client

    try:
        yield start
    finally:
        for client in clients:
            client.stop()


@pytest.fixture(scope="module", autouse=True)
def _report_figures(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if FIGURES and reporter is not None:
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            reporter.write_line("")
            for name, text in FIGURES.items():
                reporter.write_line(f"interop figure: {name}: {text}")


# ---------------------------------------------------------------------------------------------
# Traffic through the tunnel
# ---------------------------------------------------------------------------------------------


def ping(vm: Vm, *args: str, count: int = 3) -> subprocess.CompletedProcess[str]:
    argv = ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "3", *args, vm.inside_ip]
    return subprocess.run(vm.netns_cmd(argv), capture_output=True, text=True, timeout=30, check=False)


def assert_ping(vm: Vm, *args: str) -> None:
    result = ping(vm, *args)
    assert result.returncode == 0 and " 0% packet loss" in result.stdout, result.stdout + result.stderr


def echo_transfer(vm: Vm, nbytes: int, *, timeout: float = 60.0) -> float:
    """Sends ``nbytes`` random bytes to the guest's TCP echo through the tunnel, reads them back,
    compares SHA-256 of both directions; returns the seconds it took."""
    payload = os.urandom(nbytes)
    sent_digest = hashlib.sha256(payload).hexdigest()
    errors: list[BaseException] = []
    with vm.socket() as s:
        s.settimeout(timeout)
        s.connect((vm.inside_ip, 7))
        t0 = time.monotonic()

        def send() -> None:
            try:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        sender = threading.Thread(target=send, name="echo-sender", daemon=True)
        sender.start()
        received = hashlib.sha256()
        got = 0
        deadline = t0 + timeout
        while got < nbytes and time.monotonic() < deadline:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            received.update(chunk)
            got += len(chunk)
        elapsed = time.monotonic() - t0
        sender.join(timeout)
    assert not errors, f"sending through the tunnel failed: {errors[0]!r}"
    assert got == nbytes, f"echo returned {got} of {nbytes} bytes in {elapsed:.1f} s"
    assert received.hexdigest() == sent_digest, "the echoed bytes differ from what was sent"
    return elapsed


def gre_socket_drops(vm: Vm) -> int:
    """Packets the guest's kernel dropped at pptpctrl's raw GRE socket because its receive buffer
    was full (the ``drops`` column of /proc/net/raw, protocol 47 = 0x2F)."""
    total = 0
    for line in vm.guest_exec("cat /proc/net/raw").stdout.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 2 and fields[1].upper().endswith(":002F"):
            total += int(fields[-1])
    return total


def iperf3(vm: Vm, *, reverse: bool, seconds: int = 2) -> float | None:
    """Mbit/s measured by the host's iperf3 against the guest's server (None without iperf3)."""
    if shutil.which("iperf3") is None:
        return None
    argv = ["iperf3", "-c", vm.inside_ip, "-t", str(seconds), "-J", *(["-R"] if reverse else [])]
    for attempt in range(2):
        result = subprocess.run(
            vm.netns_cmd(argv), capture_output=True, text=True, timeout=seconds + 30, check=False
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr
        report = json.loads(result.stdout)
        # iperf 3.12 exits 0 with only an "error" when the guest's server, still closing the last
        # test, resets the next control connection ("unable to receive control message: Connection
        # reset by peer", no interval measured; 3 times in ~70 back-to-back tests here): ask again once
        if "sum_received" in report["end"] or attempt:
            break
        time.sleep(0.5)
    assert "sum_received" in report["end"], report.get("error", result.stdout[-2000:])
    return float(report["end"]["sum_received"]["bits_per_second"]) / 1e6


def counters(status: dict[str, Any]) -> dict[str, int]:
    return dict(status.get("counters") or {})


# ---------------------------------------------------------------------------------------------
# Log helpers
# ---------------------------------------------------------------------------------------------

_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z", re.M)


def stamps(client: Client, pattern: str) -> list[float]:
    """Times (s, from the client's own log stamps) of the log lines that match ``pattern``."""
    out = []
    for line in client.log().splitlines():
        if re.search(pattern, line):
            m = _STAMP.match(line)
            assert m, f"log line without a time stamp: {line!r}"
            out.append(datetime.fromisoformat(m.group(1)).timestamp())
    return out


def assert_no_tight_loop(client: Client, *, attempts: int, min_gap: float) -> None:
    """Waits for ``attempts`` sessions (each one TCP connect) and checks that consecutive ones are
    at least ``min_gap`` apart (the backoff's lower bound: uniform(d/2, d), d = 1, 2, 4... s)."""
    client.wait_log(r"control connection: TCP connected", count=attempts, timeout=30)
    times = stamps(client, r"control connection: TCP connected")
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(g >= min_gap for g in gaps), f"reconnects too fast: gaps {gaps}\n{client.tail()}"


# ---------------------------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------------------------


@pytest.mark.pptpd(MSCHAPV2_MPPE128)
def test_mschapv2_mppe128_stateless_carries_ping_and_tcp(
    pptpd: Vm, start_client: Callable[..., Client]
) -> None:
    client = start_client("--lcp-echo-interval", "1")
    status = client.wait_up()
    assert status["auth_method"] == "MS-CHAPv2"
    assert status["encryption"] == "MPPE-128 stateless"
    assert (status["local_ip"], status["peer_ip"]) == (pptpd.pool_first, pptpd.inside_ip)
    assert status["mtu"] == 1456  # 1500 - IP 20 - GRE 16 - PPP 4 - MPPE 4
    pptpd.wait_for_log(r"^MPPE 128-bit stateless compression enabled$")

    assert_ping(pptpd)
    # a full-size packet with DF: the MTU arithmetic holds against pppd (no fragmentation anywhere)
    assert_ping(pptpd, "-M", "do", "-s", str(1456 - 28))
    # pptpctrl relays GRE in userspace and advertises a receive window of 64 packets: a client that
    # sends beyond it overflows pptpctrl's raw socket (64 drops and 5.9 s for these 4 MiB before the
    # client honoured the window; upload iperf3 collapsed to a few Mbit/s, once to nothing)
    drops = gre_socket_drops(pptpd)
    seconds = echo_transfer(pptpd, 4 << 20)
    assert gre_socket_drops(pptpd) == drops, "pptpctrl's GRE socket overflowed: the window was not honoured"
    FIGURES["echo 4 MiB each way, MPPE-128 stateless"] = (
        f"{seconds:.2f} s ({2 * 4 * 8 * 1.048576 / seconds:.1f} Mbit/s both ways)"
    )
    up, down = iperf3(pptpd, reverse=False), iperf3(pptpd, reverse=True)
    if up is not None and down is not None:
        FIGURES["iperf3 2 s, MPPE-128 stateless"] = (
            f"client->pptpd {up:.1f} Mbit/s, pptpd->client {down:.1f} Mbit/s"
        )

    # pppd answers our LCP echoes (1 s here): the client is ready
    status = client.wait_status(lambda s: s["echo_rtt_s"] is not None and s["ready"], "an LCP echo reply")
    ready = client.get("/readyz")
    assert ready is not None and ready[0] == 200
    c = counters(status)
    assert c["bytes_in"] >= 4 << 20 and c["bytes_out"] >= 4 << 20
    FIGURES["window waits (stack_window_full / _stalls), MPPE-128 stateless"] = (
        f"{c['stack_window_full']} / {c['stack_window_stalls']}"
    )
    assert c["link_rx_decrypt_dropped"] == 0 and c["gresock_tx_too_big"] == 0
    rc, _ = client.terminate()
    assert rc == 0


@pytest.mark.pptpd(MSCHAPV2_MPPE128_STATEFUL)
def test_mschapv2_mppe128_stateful(pptpd: Vm, start_client: Callable[..., Client]) -> None:
    client = start_client("--mppe-stateful")
    status = client.wait_up()
    assert status["encryption"] == "MPPE-128 stateful"
    pptpd.wait_for_log(r"^MPPE 128-bit stateful compression enabled$")
    assert_ping(pptpd)
    seconds = echo_transfer(pptpd, 2 << 20)
    FIGURES["echo 2 MiB each way, MPPE-128 stateful"] = f"{seconds:.2f} s"
    c = counters(
        client.wait_status(lambda s: counters(s).get("bytes_in", 0) >= 2 << 20, "counters published")
    )
    assert c["link_rx_decrypt_dropped"] == 0
    assert client.terminate()[0] == 0


@pytest.mark.pptpd(MSCHAPV2_NO_MPPE)
def test_server_without_mppe_and_mppe_optional_runs_unencrypted(
    pptpd: Vm, start_client: Callable[..., Client]
) -> None:
    client = start_client("--mppe", "optional")
    status = client.wait_up()
    assert status["auth_method"] == "MS-CHAPv2"
    assert status["encryption"] == "none"
    assert status["mtu"] == 1460  # no MPPE overhead
    client.wait_log(r"WARNING .*MPPE off: the tunnel is NOT encrypted")
    assert_ping(pptpd)
    echo_transfer(pptpd, 256 << 10)
    assert client.terminate()[0] == 0


@pytest.mark.pptpd(MSCHAPV2_NO_MPPE)
def test_server_without_mppe_and_mppe_require_refuses_without_a_tight_loop(
    pptpd: Vm, start_client: Callable[..., Client]
) -> None:
    client = start_client("--backoff-initial", "1", "--backoff-max", "4")
    client.wait_log(r"link down: the server will not encrypt \(MPPE refused\); use --mppe optional")
    assert_no_tight_loop(client, attempts=3, min_gap=0.5)
    status = client.status()
    assert status is not None and status["state"] != "up"
    assert "will not encrypt" in (status["last_error"] or "")
    # what pppd saw: it rejected our MPPE request (nomppe), then we ended CCP with the reason
    assert "sent [CCP ConfRej id=0x1 <mppe" in pptpd.pppd_log()
    pptpd.wait_for_log(r'rcvd \[CCP TermReq id=0x\w+ ?"the server will not encrypt')
    assert client.terminate()[0] == 0


@pytest.mark.pptpd(CHAP_MD5)
def test_chap_md5_with_mppe_optional(pptpd: Vm, start_client: Callable[..., Client]) -> None:
    # CHAP-MD5 gives no MPPE keys: --mppe require with --auth chap is a configuration error (exit 2),
    # so this scenario needs --mppe optional (or refuse).
    client = start_client("--auth", "chap", "--mppe", "optional")
    status = client.wait_up()
    assert (status["auth_method"], status["encryption"]) == ("CHAP-MD5", "none")
    pptpd.wait_for_log(r"^sent \[CHAP Success id=0x\w+ \"Access granted\"\]")
    assert_ping(pptpd)
    echo_transfer(pptpd, 256 << 10)
    assert client.terminate()[0] == 0


@pytest.mark.pptpd(MSCHAPV1_MPPE128)
def test_mschapv1_mppe128(pptpd: Vm, start_client: Callable[..., Client]) -> None:
    client = start_client("--auth", "mschap")
    status = client.wait_up()
    assert (status["auth_method"], status["encryption"]) == ("MS-CHAPv1", "MPPE-128 stateless")
    pptpd.wait_for_log(r"^MPPE 128-bit stateless compression enabled$")
    assert_ping(pptpd)
    echo_transfer(pptpd, 256 << 10)
    assert client.terminate()[0] == 0


@pytest.mark.pptpd(PAP)
def test_pap_works_when_allowed(pptpd: Vm, start_client: Callable[..., Client]) -> None:
    client = start_client("--auth", "pap", "--mppe", "optional")
    status = client.wait_up()
    assert (status["auth_method"], status["encryption"]) == ("PAP", "none")
    pptpd.wait_for_log(r"^sent \[PAP AuthAck id=0x\w+")
    assert_ping(pptpd)
    echo_transfer(pptpd, 256 << 10)
    assert client.terminate()[0] == 0


@pytest.mark.pptpd(PAP)
def test_pap_is_refused_by_default_with_the_fix_named(pptpd: Vm, start_client: Callable[..., Client]) -> None:
    # pppd (require-pap) asks for PAP; we Nak it with MS-CHAPv2; pppd drops the auth option, LCP
    # opens, and pppd would hang up with "peer refused to authenticate". We say why, and the fix.
    client = start_client("--backoff-initial", "1", "--backoff-max", "4")
    client.wait_log(r"link down: the server requires PAP, which is not allowed .*: add pap to --auth")
    assert_no_tight_loop(client, attempts=2, min_gap=0.5)
    status = client.status()
    assert status is not None and "add pap to --auth" in (status["last_error"] or "")
    log = pptpd.pppd_log()
    assert "rcvd [LCP ConfNak id=0x1 <auth chap MS-v2>]" in log
    assert "[PAP" not in log, "the password must not be sent with PAP unless allowed"
    assert client.terminate()[0] == 0


@pytest.mark.pptpd(MSCHAPV2_MPPE128)
def test_wrong_password_gives_up_with_exit_3_and_no_tight_loop(
    pptpd: Vm, start_client: Callable[..., Client]
) -> None:
    client = start_client(
        "--max-auth-failures", "2", "--backoff-initial", "1", "--backoff-max", "4",
        password="not-the-Pa55w0rd",
    )  # fmt: skip
    rc = client.wait_exit(40)
    log = client.log()
    assert rc == EXIT_AUTH, log
    assert "wrong user name or password" in log
    assert re.search(r"giving up: the server rejected the user name/password 2 times in a row", log), log
    assert "not-the-Pa55w0rd" not in log
    # pppd saw exactly two attempts, each refused with E=691, and no more
    assert len(re.findall(r"^Peer sidecar-test failed CHAP authentication$", pptpd.pppd_log(), re.M)) == 2
    assert len(re.findall(r"^sent \[CHAP Failure id=0x\w+ \"E=691 ", pptpd.pppd_log(), re.M)) == 2
    times = stamps(client, r"control connection: TCP connected")
    assert len(times) == 2 and times[1] - times[0] >= 0.5, times


@pytest.mark.parametrize("sig", ["KILL", "TERM"])
@pytest.mark.pptpd(MSCHAPV2_MPPE128)
def test_pptpd_killed_is_detected_and_the_tunnel_comes_back(
    pptpd: Vm, start_client: Callable[..., Client], sig: str
) -> None:
    client = start_client("--backoff-initial", "0.5", "--backoff-max", "2")
    first = client.wait_up()
    assert first["sessions"] == 1
    pptpd.kill_pptpd(sig)  # pptpd, pptpctrl and pppd
    down = client.wait_status(lambda s: s["state"] != "up", "the client noticing", timeout=15)
    # KILL: the kernel closes pptpctrl's TCP socket; TERM: pptpctrl sends Call-Disconnect-Notify
    # ("admin shutdown") and Stop-Control-Connection-Request, pppd an LCP Terminate-Request
    expected = {
        "KILL": "control connection closed",
        "TERM": "server disconnected the call: admin shutdown|the server closed the link",
    }[sig]
    client.wait_log(rf"WARNING .*session ended: .*({expected})", timeout=15)
    assert down["last_error"], down
    pptpd.start_pptpd()
    again = client.wait_up(sessions=2)
    assert again["reconnects"] >= 1
    assert again["local_ip"] == pptpd.pool_first
    assert_ping(pptpd)
    assert client.terminate()[0] == 0


def _nft_ruleset(vm: Vm) -> str:
    if shutil.which("nft") is None:
        return "(nft not installed)"
    return subprocess.run(
        vm.netns_cmd(["nft", "list", "ruleset"]), capture_output=True, text=True, check=True, timeout=10
    ).stdout


@pytest.mark.pptpd(MSCHAPV2_MPPE128)
def test_sigterm_ends_the_call_in_order_and_restores_the_namespace(
    pptpd: Vm, start_client: Callable[..., Client]
) -> None:
    from tests.netns.nslib import Netns

    ns = Netns(pptpd.netns)  # an existing namespace: only read here, never deleted
    before = (ns.addr_snapshot(), ns.route_snapshot(), ns.links(), _nft_ruleset(pptpd))
    resolv_before = pptpd.resolv_conf.read_text()
    # everything on: the kill switch and DNS too, so all of it has to be restored (the kill switch
    # needs nft; without it that part is left out, with a warning, rather than failing the rest)
    has_nft = shutil.which("nft") is not None
    if not has_nft:
        warnings.warn(
            "nft is not installed: the kill switch is not part of this run (apt-get install nftables)",
            stacklevel=1,
        )
    client = start_client("--kill-switch" if has_nft else "--no-kill-switch", "--dns", "--routes", "default")
    status = client.wait_up()
    assert not has_nft or "table inet pptp_sidecar" in _nft_ruleset(pptpd)
    resolv = pptpd.resolv_conf.read_text()
    assert re.findall(r"^nameserver (\S+)", resolv, re.M) == [pptpd.dns_ip], resolv
    assert status["dns"] == [pptpd.dns_ip]
    assert_ping(pptpd)

    rc, seconds = client.terminate()
    assert rc == 0, client.tail()
    assert seconds < 2.0, f"exit took {seconds:.2f} s"
    FIGURES["SIGTERM to exit"] = f"{seconds:.2f} s"
    # pppd read our Terminate-Request and acked it before pptpd hung it up on the Call-Clear-Request
    m = pptpd.wait_for_log(r"^Connection terminated\.$")
    log = pptpd.pppd_log()[: m.end()]
    assert re.search(r'^rcvd \[LCP TermReq id=0x\w+ "stopped by request"\]$', log, re.M), log
    assert "LCP terminated by peer (stopped by request)" in log
    assert re.search(r"^sent \[LCP TermAck id=0x\w+\]$", log, re.M), log
    assert log.index("rcvd [LCP TermReq") < log.index("sent [LCP TermAck")
    if "Modem hangup" in log:
        assert log.index("sent [LCP TermAck") < log.index("Modem hangup")
    client.wait_log(r"tunnel down on pptp0: stopped by request", timeout=1)
    after = (ns.addr_snapshot(), ns.route_snapshot(), ns.links(), _nft_ruleset(pptpd))
    assert after == before
    assert pptpd.resolv_conf.read_text() == resolv_before


@pytest.mark.pptpd(MSCHAPV2_MPPE128)
def test_reordering_by_netem_is_absorbed_by_the_reorder_queue(
    pptpd: Vm, start_client: Callable[..., Client]
) -> None:
    # A window of 64 (= the GRE receive window the client announces, so everything the server may
    # have in flight): with the default 30, a busy host (a busy loop on one core; the guest shares
    # the CPU) made the guest's sends bursty enough to overflow it in 3 of 10 runs, never unloaded.
    client = start_client("--reorder-window", "64")
    client.wait_up()
    # server -> client: a quarter of the packets (correlated 50%) go at once, the rest 2 ms later.
    # At the ~3-4k packets/s seen here that displaces packets by a handful of places; 5 ms already
    # overflowed the default window (30) at times (late/lost > 0, see the notes).
    pptpd.netem("delay 2ms reorder 25% 50%", direction="out")
    seconds = echo_transfer(pptpd, 2 << 20)
    FIGURES["echo 2 MiB each way, netem delay 2ms reorder 25% 50%"] = f"{seconds:.2f} s"
    status = client.wait_status(
        lambda s: counters(s).get("bytes_in", 0) >= 2 << 20, "counters after the transfer", timeout=10
    )
    c = {k: v for k, v in counters(status).items() if k.startswith("reorder_")}
    assert c["reorder_buffered"] > 0 and c["reorder_from_buffer"] == c["reorder_buffered"], c
    assert c["reorder_lost"] == c["reorder_late"] == c["reorder_overflows"] == c["reorder_timeouts"] == 0, c
    FIGURES["reorder counters, netem delay 2ms reorder 25% 50%"] = str(c)
    pptpd.netem(None)
    assert client.terminate()[0] == 0


@pytest.mark.pptpd(MSCHAPV2_MPPE128)
def test_sigterm_waits_for_the_terminate_ack_before_clearing_the_call(
    pptpd: Vm, start_client: Callable[..., Client]
) -> None:
    """With every server -> client packet 400 ms late, a client that clears the call only after
    pppd's Terminate-Ack needs two crossings (the Ack, then pptpd's close after our
    Call-Clear-Request): >= 0.8 s. One that sends Call-Clear-Request right behind its
    Terminate-Request (the old behaviour: pptpd could hang up pppd before pppd read the
    Terminate-Request) is done after one crossing plus pptpd's own teardown (0.16-0.34 s seen):
    0.56-0.74 s. Either way within the 2 s budget."""
    delay = 0.4
    client = start_client()
    client.wait_up()
    pptpd.netem(f"delay {int(delay * 1000)}ms", direction="out")
    rc, seconds = client.terminate()
    assert rc == 0, client.tail()
    FIGURES["SIGTERM to exit, server->client delay 400 ms"] = f"{seconds:.2f} s"
    assert 2 * delay <= seconds < 2.0, f"exit after {seconds:.2f} s\n{client.tail()}"
    log = pptpd.wait_for_log(r"^Connection terminated\.$").string
    assert re.search(r'^rcvd \[LCP TermReq id=0x\w+ "stopped by request"\]$', log, re.M), log
    assert re.search(r"^sent \[LCP TermAck id=0x\w+\]$", log, re.M), log
    pptpd.netem(None)
