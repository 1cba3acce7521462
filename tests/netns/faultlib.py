"""Helpers for the reliability tests and benchmarks: start ``sidecar up``/``serve`` (optionally with
the test patches of :mod:`tests.netns.patched_sidecar`), read their logs with timestamps, poll
``/status`` without spawning a process, measure RSS, inject and capture packets inside a namespace,
and the network faults as nftables tables in the server namespace.

Users: ``tests/netns/test_faults.py``, ``test_hostile.py``, ``test_secrets_leak.py``,
``test_privilege.py``, ``bench/faults.py``, ``bench/soak.py``.

Rules: traffic goes only to hosts inside namespaces the caller created; every nft table created
here lives in a namespace the caller owns (it disappears with the namespace); processes are
started through :meth:`nslib.Netns.popen`, so :meth:`~nslib.Netns.delete` ends them by PID.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from tests.netns import nslib
from tests.netns.serve_helpers import POOL, REPO, SERVER_TUN_IP, Proc

OUTSIDE_IP = nslib.OUTSIDE_IP  # an "Internet" address the app tries to reach; nobody answers
CLIENT_HTTP = 9121
SERVER_HTTP = 9122
_TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z ")


# -- processes ----------------------------------------------------------------------------------------
@dataclass
class Sidecar(Proc):
    """A ``sidecar`` process in a namespace (``serve_helpers.Proc`` plus timestamps and fast status)."""

    def pid(self) -> int:
        return self.popen.pid

    def lines(self) -> list[tuple[float, str]]:
        """``(wall-clock time, line)`` for every timestamped log line (text format)."""
        out = []
        for line in self.text().splitlines():
            m = _TS.match(line)
            if m:
                stamp = dt.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=dt.UTC)
                out.append((stamp.timestamp(), line))
        return out

    def first_after(self, needle: str, after: float) -> float | None:
        """Wall time of the first log line containing ``needle`` logged at or after ``after``."""
        for t, line in self.lines():
            if t >= after - 0.002 and needle in line:
                return t
        return None

    def wait_line(self, needle: str, after: float, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            t = self.first_after(needle, after)
            if t is not None:
                return t
            if self.popen.poll() is not None:
                break
            time.sleep(0.03)
        raise AssertionError(
            f"{self.name}: {needle!r} not logged within {timeout} s (exit {self.popen.poll()}):\n"
            f"{self.text()[-4000:]}"
        )

    def status(self) -> dict[str, Any]:
        assert self.http_port is not None
        data: dict[str, Any] = json.loads(http_get(self.ns, self.http_port, "/status"))
        return data

    def rss_kb(self) -> int:
        return rss_kb(self.popen.pid)


def http_get(ns: nslib.Netns, port: int, path: str, timeout: float = 3.0) -> str:
    """GET http://127.0.0.1:<port><path> inside ``ns`` (a socket made in the namespace; no process)."""
    with ns.enter():
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", port))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while True:
            b = sock.recv(65536)
            if not b:
                break
            chunks.append(b)
    finally:
        sock.close()
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 "):
        raise OSError(f"no HTTP answer from port {port}: {raw[:80]!r}")
    return body.decode("utf-8", "replace")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spawn(
    ns: nslib.Netns,
    argv: Sequence[str],
    log: Path,
    name: str,
    *,
    env: dict[str, str],
    http_port: int | None,
    patches: Sequence[str] = (),
    command: Sequence[str] | None = None,
    repo_on_path: bool = True,
    cwd: Path = REPO,
) -> Sidecar:
    """Start ``sidecar <argv>`` in ``ns`` (through the patch launcher when ``patches``; ``command``
    replaces ``python -m sidecar``; ``repo_on_path=False`` for an installed copy)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    if repo_on_path:
        full_env["PYTHONPATH"] = str(REPO)
    else:
        full_env.pop("PYTHONPATH", None)
    for key in [k for k in full_env if k.startswith(("PPTP_", "PST_")) and k not in env]:
        del full_env[key]
    if patches:
        full_env["PST_PATCHES"] = ",".join(patches)
        base = [sys.executable, "-m", "tests.netns.patched_sidecar"]
    else:
        base = [sys.executable, "-m", "sidecar"]
    fh = log.open("wb")
    popen = ns.popen([*(command or base), *argv], stdout=fh, stderr=subprocess.STDOUT, env=full_env,
                     cwd=str(cwd))  # fmt: skip
    fh.close()
    return Sidecar(ns, popen, log, name, http_port)


def server_argv(args: Sequence[str] = (), http_port: int = SERVER_HTTP) -> list[str]:
    return [
        "serve",
        "--listen", "0.0.0.0:1723",
        "--local-ip", str(SERVER_TUN_IP),
        "--pool", POOL,
        "--interface", "pptps0",
        "--dns", "10.77.0.53",
        "--http", f"127.0.0.1:{http_port}",
        "--log-level", "debug",
        *args,
    ]  # fmt: skip


def start_server(
    ns: nslib.Netns,
    tmp: Path,
    *,
    secrets: Path,
    args: Sequence[str] = (),
    patches: Sequence[str] = (),
    name: str = "server",
    wait: bool = True,
    log_format: str = "text",
) -> Sidecar:
    argv = server_argv([*args, "--log-format", log_format])
    proc = spawn(ns, argv, tmp / f"{name}.log", name, env={"PPTP_SECRETS": str(secrets)},
                 http_port=SERVER_HTTP, patches=patches)  # fmt: skip
    if wait:
        proc.wait_log("serving PPTP on", 15)
    return proc


def client_argv(
    server: IPv4Address, user: str, args: Sequence[str] = (), http_port: int = CLIENT_HTTP
) -> list[str]:
    return [
        "up",
        "--server", str(server),
        "--user", user,
        "--interface", "pptp0",
        "--http", f"127.0.0.1:{http_port}",
        "--no-dns",
        "--log-level", "debug",
        "--backoff-initial", "0.2",
        "--backoff-max", "1",
        *args,
    ]  # fmt: skip


def start_client(
    ns: nslib.Netns,
    tmp: Path,
    *,
    server: IPv4Address,
    user: str,
    password: str,
    args: Sequence[str] = (),
    patches: Sequence[str] = (),
    name: str = "client",
    command: Sequence[str] | None = None,
) -> Sidecar:
    pw = tmp / f"{name}.password"
    pw.write_text(password)
    pw.chmod(0o600)
    return spawn(ns, client_argv(server, user, args), tmp / f"{name}.log", name,
                 env={"PPTP_PASSWORD_FILE": str(pw)}, http_port=CLIENT_HTTP, patches=patches,
                 command=command)  # fmt: skip


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll until ``predicate()`` is truthy (exceptions count as false); returns its value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except Exception as exc:  # a status read racing a restart
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def status_of(proc: Sidecar) -> dict[str, Any]:
    try:
        return proc.status()
    except OSError:
        return {}


def wait_up(proc: Sidecar, timeout: float = 15.0, *, reconnects: int | None = None) -> dict[str, Any]:
    def ok() -> dict[str, Any] | None:
        if proc.popen.poll() is not None:
            raise AssertionError(f"{proc.name} exited ({proc.popen.poll()}):\n{proc.text()[-3000:]}")
        s = status_of(proc)
        if s.get("state") == "up" and (reconnects is None or s.get("reconnects", 0) >= reconnects):
            return s
        return None

    try:
        result: dict[str, Any] = wait_until(ok, timeout, f"{proc.name} up")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{proc.text()[-3000:]}") from None
    return result


def call_ids(server: Sidecar, nth: int = 1) -> tuple[int, int]:
    """(server's call ID, client's call ID) of the ``nth`` call in the server's log."""
    found = re.findall(r"call established \(call IDs: ours (\d+), theirs (\d+)\)", server.text())
    assert len(found) >= nth, f"no call #{nth} in the server log"
    ours, theirs = found[nth - 1]
    return int(ours), int(theirs)


def ifname_of(ns: nslib.Netns, address: IPv4Address) -> str:
    for line in ns.ip("-o", "-4", "addr", "show").splitlines():
        words = line.split()
        if words[3].split("/")[0] == str(address):
            return words[1]
    raise AssertionError(f"no interface with {address} in {ns.name}")


def ping(ns: nslib.Netns, dest: IPv4Address, count: int = 3, interval: float = 0.2) -> int:
    """Echo replies received."""
    proc = ns.run(["ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", "1", str(dest)],
                  check=False, timeout=count * interval + 10)  # fmt: skip
    m = re.search(r"(\d+) received", proc.stdout)
    return int(m.group(1)) if m else 0


# -- nftables in the server namespace (faults and counters) --------------------------------------------
def nft_table(ns: nslib.Netns, name: str, chains: str) -> None:
    """(Re)define ``table inet <name>`` in ``ns`` atomically."""
    ns.nft(f"table inet {name}\ndelete table inet {name}\ntable inet {name} {{\n{chains}\n}}\n")


def nft_drop_table(ns: nslib.Netns, name: str) -> None:
    ns.run(["nft", "delete", "table", "inet", name], check=False)


def nft_counter_packets(ns: nslib.Netns, table: str, comment: str) -> int:
    """Packets of the rule carrying ``comment`` in ``table``."""
    data: Any = ns.nft_json("list", "table", "inet", table)
    for item in data["nftables"]:
        rule = item.get("rule")
        if rule and rule.get("comment") == comment:
            for expr in rule["expr"]:
                if "counter" in expr:
                    return int(expr["counter"]["packets"])
    raise AssertionError(f"no counter {comment!r} in {table}")


FAULTS = "pst_fault"


def fault_blackhole(ns: nslib.Netns) -> None:
    """The server's network drops every GRE and PPTP control packet, both ways."""
    nft_table(
        ns,
        FAULTS,
        """
  chain in { type filter hook input priority -5; ip protocol gre drop; tcp dport 1723 drop; }
  chain out { type filter hook output priority -5; ip protocol gre drop; tcp sport 1723 drop; }""",
    )


def fault_tcp_reset(ns: nslib.Netns) -> None:
    """The next control segment from the client is answered with a TCP reset (and reconnects too)."""
    nft_table(
        ns,
        FAULTS,
        """
  chain in { type filter hook input priority -5; tcp dport 1723 reject with tcp reset; }""",
    )


def fault_gre_loss(ns: nslib.Netns, percent: int, *, every: int | None = None) -> None:
    """``percent`` % of GRE packets lost in each direction (random, per packet); or, with ``every``,
    exactly every ``every``-th GRE packet in each direction (deterministic: a test can count on it)."""
    if every is not None:
        rule = f"ip protocol gre numgen inc mod {every} == 0 drop;"
    else:
        rule = f"ip protocol gre numgen random mod 100 < {percent} drop;"
    nft_table(ns, FAULTS, f"""
  chain in {{ type filter hook input priority -5; {rule} }}
  chain out {{ type filter hook output priority -5; {rule} }}""")  # fmt: skip


def fault_clear(ns: nslib.Netns) -> None:
    nft_drop_table(ns, FAULTS)


# -- the kill switch, observed from outside -------------------------------------------------------------
LEAKS = "pst_leak"


class LeakWatch:
    """Counts, in the server namespace, the app's packets to :data:`OUTSIDE_IP` that arrive on the
    client's uplink (outside the tunnel): with the kill switch holding, none ever does. The app is a
    UDP sender in the client namespace (one datagram every ``interval`` s, errors ignored)."""

    APP = (
        "import socket,sys,time\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        "n=e=0\n"
        "while True:\n"
        "    try: s.sendto(b'leak?',(sys.argv[1],9)); n+=1\n"
        "    except OSError: e+=1\n"
        "    time.sleep(float(sys.argv[2]))\n"
    )

    def __init__(self, server_ns: nslib.Netns, uplink: str) -> None:
        self.ns = server_ns
        nft_table(
            server_ns,
            LEAKS,
            f"""
  chain pre {{ type filter hook prerouting priority -300;
    iifname "{uplink}" ip daddr {OUTSIDE_IP} counter comment "leak"
  }}""",
        )
        self.app: subprocess.Popen[bytes] | None = None

    def start_app(self, client_ns: nslib.Netns, interval: float = 0.01) -> None:
        self.app = client_ns.popen([sys.executable, "-c", self.APP, str(OUTSIDE_IP), str(interval)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    def stop_app(self) -> None:
        if self.app is not None and self.app.poll() is None:
            self.app.terminate()
            self.app.wait(5)

    def leaked(self) -> int:
        return nft_counter_packets(self.ns, LEAKS, "leak")


def kill_switch_blocked(ns: nslib.Netns) -> int:
    """Packets the client's kill switch dropped on output so far (0 when it is not installed)."""
    from sidecar.kernel.firewall import FAMILY, TABLE, blocked_counts

    proc = ns.run(["nft", "list", "table", FAMILY, TABLE], check=False)
    return blocked_counts(proc.stdout.splitlines()).get("output", 0) if proc.returncode == 0 else 0


# -- packets ---------------------------------------------------------------------------------------------
class GreInjector:
    """A raw GRE socket in ``ns`` bound to ``source`` (an address of that namespace): sends crafted GRE
    packets to the client, as the server (or an impostor with its address) would."""

    def __init__(self, ns: nslib.Netns, source: IPv4Address) -> None:
        with ns.enter():
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, 47)
        self.sock.bind((str(source), 0))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)

    def send(self, packets: Sequence[bytes], dest: IPv4Address, *, pace: int = 256) -> int:
        """Send all (sleeping a moment every ``pace`` packets so the receiver's buffer keeps up)."""
        sent = 0
        for i, p in enumerate(packets):
            try:
                self.sock.sendto(p, (str(dest), 0))
                sent += 1
            except (BlockingIOError, OSError):
                time.sleep(0.001)
            if pace and i % pace == pace - 1:
                time.sleep(0.002)
        return sent

    def close(self) -> None:
        self.sock.close()


@dataclass
class Captured:
    t: float
    outgoing: bool
    ip: bytes  # the IPv4 packet (link header removed)


class Sniffer:
    """Captures IPv4 packets on ``ifname`` in ``ns`` (AF_PACKET, both directions) in a thread."""

    def __init__(self, ns: nslib.Netns, ifname: str) -> None:
        with ns.enter():
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind((ifname, 0))
        self.sock.settimeout(0.1)
        self.packets: list[Captured] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            if len(frame) < 34 or frame[12:14] != b"\x08\x00":
                continue
            self.packets.append(Captured(time.time(), addr[2] == socket.PACKET_OUTGOING, frame[14:]))

    def stop(self) -> list[Captured]:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
        return self.packets


def gre_payload(ip: bytes) -> bytes | None:
    """The GRE packet inside an IPv4 packet, or None."""
    if len(ip) < 20 or ip[9] != 47:
        return None
    return ip[(ip[0] & 0x0F) * 4 :]


def pptp_control_types(packets: Sequence[Captured], *, outgoing: bool | None = None) -> list[int]:
    """PPTP control message types in the TCP payloads of ``packets`` (RFC 2637 §2.1), in order.
    Assumes one message per segment start, as both our ends send them (TCP_NODELAY)."""
    out = []
    for c in packets:
        if outgoing is not None and c.outgoing != outgoing:
            continue
        ip = c.ip
        if ip[9] != 6:
            continue
        ihl = (ip[0] & 0x0F) * 4
        tcp = ip[ihl:]
        payload = tcp[(tcp[12] >> 4) * 4 :]
        while len(payload) >= 10 and payload[4:8] == b"\x1a\x2b\x3c\x4d":
            length = struct.unpack("!H", payload[:2])[0]
            out.append(struct.unpack("!H", payload[8:10])[0])
            payload = payload[length:]
    return out


def _gre_split(gre: bytes) -> tuple[int | None, bytes]:
    """(sequence number or None, PPP frame) of an enhanced GRE packet."""
    flags = gre[0]
    offset = 8
    seq = None
    if flags & 0x10:
        seq = struct.unpack("!I", gre[8:12])[0]
        offset += 4
    if gre[1] & 0x80:
        offset += 4
    return seq, gre[offset:]


def gre_sequence_numbers(packets: Sequence[Captured]) -> list[int]:
    out = []
    for c in packets:
        gre = gre_payload(c.ip)
        if gre is not None and len(gre) >= 12:
            seq, _ = _gre_split(gre)
            if seq is not None:
                out.append(seq)
    return out


def lcp_codes(packets: Sequence[Captured]) -> list[int]:
    """LCP codes (RFC 1661 §5) of the GRE-carried PPP frames in ``packets``, in order."""
    out = []
    for c in packets:
        gre = gre_payload(c.ip)
        if gre is None or len(gre) < 8:
            continue
        _, ppp = _gre_split(gre)
        if ppp[:2] == b"\xff\x03":
            ppp = ppp[2:]
        if ppp[:2] == b"\xc0\x21" and len(ppp) >= 3:
            out.append(ppp[2])
    return out


# -- resolv.conf through `ip netns exec` -----------------------------------------------------------------
@contextlib.contextmanager
def netns_resolv_conf(ns: nslib.Netns, text: str) -> Iterator[Path]:
    """``ip netns exec <ns>`` bind-mounts ``/etc/netns/<ns>/resolv.conf`` over ``/etc/resolv.conf``
    for the processes it starts: a per-namespace resolv.conf the test can read from outside."""
    directory = Path("/etc/netns") / ns.name
    directory.mkdir(parents=True, exist_ok=False)
    path = directory / "resolv.conf"
    path.write_text(text)
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        with contextlib.suppress(OSError):
            directory.rmdir()


# -- a hostile PPTP control server (raw TCP) --------------------------------------------------------------
@dataclass
class HostileControl:
    """Listens on TCP 1723 at ``address`` in ``ns`` and answers each connection with ``behaviour``
    (run in a thread). ``accepted`` holds the wall-clock time of every connection."""

    ns: nslib.Netns
    address: IPv4Address
    behaviour: Callable[[socket.socket], None]
    accepted: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        with self.ns.enter():
            self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((str(self.address), 1723))
        self.listener.listen(8)
        self.listener.settimeout(0.1)
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted.append(time.time())
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            conn.settimeout(30)
            self.behaviour(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.listener.close()
        for c in self._conns:
            with contextlib.suppress(OSError):
                c.close()


def read_exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


# -- the supervisor's backoff, read from the client's log -----------------------------------------------
_RECONNECT = re.compile(r"reconnecting in (\d+\.\d) s \(attempt (\d+)\)")


def backoff_delays(proc: Sidecar) -> list[tuple[int, float]]:
    """``(attempt, delay)`` of every "reconnecting in X s (attempt n)" line."""
    return [(int(m.group(2)), float(m.group(1))) for m in _RECONNECT.finditer(proc.text())]


def check_backoff(delays: Sequence[tuple[int, float]], initial: float, maximum: float) -> None:
    """Each delay within the documented equal-jitter range ``[d/2, d]``, ``d = min(max, initial*2**n)``
    (the log prints one decimal: 0.05 tolerance)."""
    assert delays, "no reconnect delays logged"
    for attempt, delay in delays:
        d = min(maximum, initial * 2 ** (attempt - 1))
        assert d / 2 - 0.051 <= delay <= d + 0.051, f"attempt {attempt}: delay {delay} outside [{d / 2}, {d}]"


# -- a lab: one server, one client, the kill-switch watch -------------------------------------------------
FAST_KEEPALIVE = ("--echo-interval", "1", "--echo-timeout", "1", "--lcp-echo-interval", "0.5",
                  "--lcp-echo-failures", "2")  # fmt: skip


@dataclass
class Outage:
    """One fault: when it was injected and healed, when the client noticed, when it was back up."""

    fault: str
    injected: float
    detected: float | None = None
    healed: float | None = None
    up_again: float | None = None
    reason: str = ""
    leaked: int = 0
    blocked: int = 0  # packets the client's kill switch dropped meanwhile (its nft counter)

    @property
    def detect_s(self) -> float | None:
        return None if self.detected is None else self.detected - self.injected

    @property
    def recover_s(self) -> float | None:
        if self.up_again is None or self.healed is None:
            return None
        return self.up_again - self.healed


class Lab:
    """``star(1)`` + ``sidecar serve`` + ``sidecar up`` + the leak watch (its app already running).

    The leak counter is checked to count (the app's packets leave the uplink before the client
    starts), so "0 leaked" later means the kill switch held, not a blind counter.
    """

    def __init__(
        self,
        tmp: Path,
        *,
        server_args: Sequence[str] = (),
        client_args: Sequence[str] = (),
        server_patches: Sequence[str] = (),
        client_patches: Sequence[str] = (),
        users: Sequence[tuple[str, str, str, str]] = (("alice", "*", "alice secret", "*"),),
        user: str = "alice",
        password: str = "alice secret",
        resolv_conf: str | None = None,
        leak_watch: bool = True,
        snapshot: bool = False,
    ) -> None:
        self.tmp = tmp
        self.server_args, self.client_args = list(server_args), list(client_args)
        self.server_patches, self.client_patches = list(server_patches), list(client_patches)
        self.users, self.user, self.password = users, user, password
        self.resolv_text = resolv_conf
        self.want_leak_watch = leak_watch
        self.want_snapshot = snapshot
        self.before_addrs: list[str] = []
        self.before_routes: list[str] = []
        self._stack = contextlib.ExitStack()
        self.servers = 0

    def __enter__(self) -> Lab:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def _start(self) -> None:
        from tests.netns.serve_helpers import star, write_secrets

        self.tmp.mkdir(parents=True, exist_ok=True)
        self.topo = self._stack.enter_context(star(1))
        self.server_ns, self.client_ns = self.topo.server, self.topo.clients[0]
        self.server_ip, self.client_ip = self.topo.server_ips[0], self.topo.client_ips[0]
        self.uplink = ifname_of(self.server_ns, self.server_ip)
        self.secrets = write_secrets(self.tmp / "chap-secrets", list(self.users))
        self.resolv: Path | None = None
        if self.resolv_text is not None:
            self.resolv = self._stack.enter_context(netns_resolv_conf(self.client_ns, self.resolv_text))
        self.leaks: LeakWatch | None = None
        if self.want_leak_watch:
            self.leaks = LeakWatch(self.server_ns, self.uplink)
            self.leaks.start_app(self.client_ns)
            self._stack.callback(self.leaks.stop_app)
            leaks = self.leaks
            wait_until(lambda: leaks.leaked() > 0, 5, "the leak counter to count the app's packets")
        self.server = self.start_server()
        if self.want_snapshot:
            self.before_addrs = self.client_ns.addr_snapshot()
            self.before_routes = self.client_ns.route_snapshot()
        self.client = start_client(self.client_ns, self.tmp, server=self.server_ip, user=self.user,
                                   password=self.password, args=self.client_args,
                                   patches=self.client_patches)  # fmt: skip
        self._stack.callback(self._stop_client)
        wait_up(self.client)

    def start_server(self) -> Sidecar:
        self.servers += 1
        server = start_server(self.server_ns, self.tmp, secrets=self.secrets, args=self.server_args,
                              patches=self.server_patches, name=f"server{self.servers}")  # fmt: skip
        self._stack.callback(self._stop_server, server)
        return server

    def _stop_server(self, server: Sidecar) -> None:
        if server.popen.poll() is None:
            server.stop()

    def _stop_client(self) -> None:
        if self.client.popen.poll() is None:
            self.client.stop()

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def leaked(self) -> int:
        return self.leaks.leaked() if self.leaks is not None else 0

    def outage(
        self,
        fault: str,
        inject: Callable[[], None],
        heal: Callable[[], None],
        *,
        hold: float = 1.0,
        detect_timeout: float = 15.0,
        recover_timeout: float = 20.0,
    ) -> Outage:
        """Inject, wait until the client says the session ended, keep the fault ``hold`` more
        seconds (the app keeps trying to reach the outside meanwhile), heal, wait until up again."""
        leaked_before, blocked_before = self.leaked(), kill_switch_blocked(self.client_ns)
        o = Outage(fault, injected=time.time())
        inject()
        o.detected = self.client.wait_line("session ended:", o.injected, detect_timeout)
        for t, line in self.client.lines():
            if t >= o.detected - 0.001 and "session ended:" in line:
                o.reason = line.split("session ended:", 1)[1].strip()
                break
        time.sleep(hold)
        o.healed = time.time()
        heal()
        o.up_again = self.client.wait_line("tunnel up on", o.healed, recover_timeout)
        o.blocked = kill_switch_blocked(self.client_ns) - blocked_before
        o.leaked = self.leaked() - leaked_before
        return o


TRANSFER_SERVER = r"""
import hashlib, os, socket, sys
data = os.urandom(int(sys.argv[2]))
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[3]))); s.listen(1)
sys.stdout.write(hashlib.sha256(data).hexdigest() + "\n"); sys.stdout.flush()
c, _ = s.accept(); c.sendall(data); c.close()
"""
TRANSFER_CLIENT = r"""
import hashlib, socket, sys, time
t = time.monotonic()
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
h = hashlib.sha256(); n = 0
while True:
    b = s.recv(65536)
    if not b: break
    h.update(b); n += len(b)
print(h.hexdigest(), n, round(time.monotonic() - t, 3))
"""


def transfer(lab: Lab, size: int, port: int = 5001, timeout: float = 60.0) -> tuple[bool, int, float]:
    """``size`` random bytes server -> client over TCP through the tunnel: (intact, bytes, seconds)."""
    sender = lab.server_ns.popen([sys.executable, "-c", TRANSFER_SERVER, str(SERVER_TUN_IP), str(size),
                                  str(port)], stdout=subprocess.PIPE)  # fmt: skip
    try:
        assert sender.stdout is not None
        expected = sender.stdout.readline().decode().strip()
        out = lab.client_ns.run([sys.executable, "-c", TRANSFER_CLIENT, str(SERVER_TUN_IP), str(port)],
                                timeout=timeout).stdout.split()  # fmt: skip
        return out[0] == expected, int(out[1]), float(out[2])
    finally:
        if sender.poll() is None:
            sender.kill()
        sender.wait(5)
