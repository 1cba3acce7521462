"""The benchmark's lab: two network namespaces joined by one veth pair, the processes started in
them (tracked by PID), and what /proc says about those processes (CPU time, peak RSS).

Rules: everything here is created by this file and removed by :meth:`Lab.close` - also on Ctrl-C,
SIGTERM or failure (see :func:`signals_raise`). Traffic stays inside the two namespaces. Processes
are ended by the PID we started, never by name. Namespaces come from ``tests/netns/nslib.py`` (the
project's namespace helper), so the names are unique per run (``pst<pid><n>c`` / ``...s``).

Topology::

    [client ns]  <p>c0 10.211.<n>.2/24  ==veth==  <p>s0 10.211.<n>.1/24  [server ns]
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.netns.nslib import Netns, unique, veth  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


class LabError(Exception):
    """The lab cannot be built or a process did not come up; the message says why and what to do."""


class Interrupted(Exception):
    """SIGTERM/SIGHUP arrived (Ctrl-C stays KeyboardInterrupt)."""


def preflight(tools: Sequence[str]) -> None:
    """Fail early, with the fix, when something the benchmark needs is missing."""
    if not sys.platform.startswith("linux"):
        raise LabError("the benchmark needs Linux network namespaces")
    if os.geteuid() != 0:
        raise LabError("the benchmark needs root (network namespaces, TUN devices): run it with sudo")
    if not os.path.exists("/dev/net/tun"):
        raise LabError("/dev/net/tun is missing: load the tun module (modprobe tun)")
    missing = [t for t in ("ip", *tools) if shutil.which(t) is None]
    if missing:
        raise LabError(
            f"missing tools: {', '.join(missing)} "
            "(apt-get install iproute2 iperf3 iputils-ping openvpn openssl)"
        )


@dataclass
class Proc:
    """A process we started inside a namespace. ``ip netns exec`` execs, so the PID is the program's."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def cpu_seconds(self) -> float:
        """utime + stime of the whole process (all threads), from /proc/<pid>/stat."""
        text = Path(f"/proc/{self.pid}/stat").read_text()
        fields = text[text.rindex(")") + 2 :].split()
        # after "pid (comm) ": state=0 ppid=1 ... utime=11 stime=12 (fields 14 and 15 of proc(5))
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def peak_rss_kb(self) -> int:
        """VmHWM: the peak resident set size so far, in kB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return 0

    def tail(self, lines: int = 20) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n    ".join(text.splitlines()[-lines:])


class Lab:
    """Two namespaces over veth; :meth:`close` removes everything, whatever happened."""

    def __init__(self, *, mtu: int = 1500) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="sidecar-bench-"))
        self.procs: list[Proc] = []
        self.namespaces: list[Netns] = []
        base = unique("pb")
        octet = os.getpid() % 200 + 20
        self.client_ip = f"10.211.{octet}.2"
        self.server_ip = f"10.211.{octet}.1"
        self.client = self._ns(base + "c")
        self.server = self._ns(base + "s")
        self.client_if, self.server_if = base + "c0", base + "s0"
        veth(self.client, self.client_if, f"{self.client_ip}/24",
             self.server, self.server_if, f"{self.server_ip}/24", mtu=mtu)  # fmt: skip

    def _ns(self, name: str) -> Netns:
        ns = Netns.create(name)
        self.namespaces.append(ns)
        return ns

    # -- processes ----------------------------------------------------------------------------------
    def start(self, ns: Netns, argv: Sequence[str], name: str, *, env: dict[str, str] | None = None) -> Proc:
        log = self.tmp / f"{name}.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("PPTP_")}
        full_env.update(env or {})
        full_env["PYTHONUNBUFFERED"] = "1"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                ns.exec_argv(argv), stdout=out, stderr=subprocess.STDOUT, env=full_env,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; by PID, only our own process."""
        if proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGTERM)
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(5)
        if proc in self.procs:
            self.procs.remove(proc)

    def run(
        self, ns: Netns, argv: Sequence[str], *, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """A foreground command inside ``ns`` (not checked: the caller reads returncode/stderr)."""
        return subprocess.run(
            ns.exec_argv(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )

    # -- teardown -------------------------------------------------------------------------------------
    def close(self) -> list[str]:
        problems: list[str] = []
        for proc in reversed(list(self.procs)):
            try:
                self.stop(proc, 3.0)
            except Exception as exc:  # still remove the namespaces
                problems.append(f"could not stop {proc.name} (pid {proc.pid}): {exc}")
        for ns in reversed(self.namespaces):
            ns.delete()
            if Path(f"/run/netns/{ns.name}").exists():
                problems.append(f"namespace {ns.name} is still there: ip netns del {ns.name}")
        self.namespaces.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)
        return problems


def wait_until(what: str, predicate: Callable[[], object], timeout: float, proc: Proc | None = None) -> None:
    """Poll ``predicate`` until true; else :class:`LabError` with the process's last log lines."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if predicate():
                return
        if proc is not None and not proc.alive():
            break
        time.sleep(0.05)
    detail = f"; last lines of {proc.name}'s log:\n    {proc.tail()}" if proc is not None else ""
    raise LabError(f"{what} did not happen within {timeout:g} s{detail}")


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """SIGTERM/SIGHUP raise :class:`Interrupted` inside the block (Ctrl-C raises KeyboardInterrupt)."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signal.Signals(signum).name)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    # a shell starts background jobs with SIGINT ignored; Ctrl-C / kill -INT must still clean up
    old[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """Cleanup must finish even if Ctrl-C is pressed again."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {s: signal.signal(s, signal.SIG_IGN) for s in sigs}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
