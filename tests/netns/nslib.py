"""Network-namespace helpers for tests (reusable by every engineer).

What it gives you:

- :func:`skip_reason` - ``None`` when netns tests can run here, else the reason (not root, no
  ``/dev/net/tun``, no ``ip``/``nft``, namespaces unsupported). ``conftest.py`` turns it into a skip.
- :class:`Netns` - one named namespace (``ip netns add``): run ``ip``/``nft``/any command inside it,
  start a background process inside it (tracked; :meth:`Netns.delete` ends exactly the processes it
  started, by PID), :meth:`Netns.enter` to switch *the calling thread* into it (sockets, TUN devices
  and netlink sockets created inside the block belong to that namespace for their whole life),
  snapshots of ``ip addr``/``ip route`` for before/after comparisons, interface counters.
- :func:`netns` - context manager: a fresh uniquely named namespace, always deleted afterwards.
- :func:`veth` - a veth pair between two namespaces with addresses.
- :func:`two_hosts` - the usual topology: a *client* namespace whose uplink ``<p>c0`` (10.x.y.2/24) has
  a default route via the *server* namespace's end ``<p>s0`` (10.x.y.1/24). The server also owns
  ``SERVER_IP`` (on its loopback) so the client reaches it *through the gateway*, like a real VPN
  server on the Internet; ``OUTSIDE_IP`` is routed into the server namespace too (an "Internet" host
  that answers nothing).

Everything is named ``pst<pid><n>...`` so parallel runs do not collide; names fit IFNAMSIZ (15).
Only hosts inside namespaces created here ever receive traffic.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address

CLONE_NEWNET = 0x40000000
SERVER_IP = IPv4Address("198.51.100.1")  # TEST-NET-2, lives on the server namespace's loopback
OUTSIDE_IP = IPv4Address("203.0.113.9")  # TEST-NET-3, routed to the server namespace, never answered

_counter = itertools.count()
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def skip_reason() -> str | None:
    """Why netns tests cannot run here, or None when they can."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "netns tests need root (CAP_NET_ADMIN, CAP_SYS_ADMIN): run them as root"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing (load the tun module or pass --device /dev/net/tun)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (apt-get install iproute2 nftables)"
    if not os.path.exists("/proc/thread-self/ns/net"):
        return "this kernel has no network namespaces"
    return None


def unique(prefix: str = "pst") -> str:
    """A short name unique to this process: ``pst<pid><n>`` (fits interface names with a suffix)."""
    return f"{prefix}{os.getpid() % 100000}{next(_counter)}"


def _run(
    argv: Sequence[str], *, check: bool = True, input: str | None = None, timeout: float = 10.0
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, input=input, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


@dataclass
class LinkStats:
    rx_packets: int
    tx_packets: int
    rx_bytes: int
    tx_bytes: int


@dataclass
class Netns:
    """One named network namespace. Create with :meth:`create` or the :func:`netns` context."""

    name: str
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    # -- lifecycle -------------------------------------------------------------------------------
    @classmethod
    def create(cls, name: str | None = None) -> Netns:
        ns = cls(name or unique())
        _run(["ip", "netns", "add", ns.name])
        ns.ip("link", "set", "lo", "up")
        return ns

    def delete(self) -> None:
        """End the processes this object started (by PID), then remove the namespace."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=2)
        self._procs.clear()
        _run(["ip", "netns", "del", self.name], check=False)

    # -- running things inside -------------------------------------------------------------------
    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self, argv: Sequence[str], *, check: bool = True, input: str | None = None, timeout: float = 10.0
    ) -> subprocess.CompletedProcess[str]:
        return _run(self.exec_argv(argv), check=check, input=input, timeout=timeout)

    def ip(self, *args: str, check: bool = True) -> str:
        return _run(["ip", "-n", self.name, *args], check=check).stdout

    def nft(self, ruleset: str) -> str:
        """Apply an nft script (``nft -f -``) inside the namespace."""
        return self.run(["nft", "-f", "-"], input=ruleset).stdout

    def nft_json(self, *args: str) -> object:
        return json.loads(self.run(["nft", "-j", *args]).stdout)

    def popen(self, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        """Start a background process inside; :meth:`delete` ends it (by PID)."""
        proc: subprocess.Popen[bytes] = subprocess.Popen(self.exec_argv(argv), **kwargs)  # type: ignore[call-overload]
        self._procs.append(proc)
        return proc

    def python(self, code: str, *, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
        """Run a Python snippet inside (the test venv's interpreter)."""
        return self.run([sys.executable, "-c", code], timeout=timeout)

    @contextlib.contextmanager
    def enter(self) -> Iterator[None]:
        """Switch the calling thread into this namespace for the block, then back.

        Objects created inside (sockets, TUN fds, pyroute2 ``IPRoute``) stay bound to this namespace
        after the block. Threads that already exist (e.g. trio's worker-thread cache) do not follow.
        """
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            if _libc.setns(target, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns({self.name}): {os.strerror(err)}")
            try:
                yield
            finally:
                if _libc.setns(own, CLONE_NEWNET) != 0:  # pragma: no cover - would be fatal
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns back: {os.strerror(err)}")
        finally:
            os.close(own)
            os.close(target)

    # -- observing -------------------------------------------------------------------------------
    def addr_snapshot(self) -> list[str]:
        """``ip -o addr`` lines minus volatile fields, sorted: compare before/after.

        IPv6 link-local addresses are left out: the kernel adds them on its own, some time after a
        link comes up (after DAD), so they would make before/after comparisons flaky.
        """
        lines = []
        for line in self.ip("-o", "addr", "show").splitlines():
            text = line.split(" valid_lft")[0].replace("\\", " ")
            words = text.split()[1:]  # drop the leading "<index>:"
            if len(words) > 1 and words[1] == "inet6" and "link" in words[words.index("scope") + 1 :][:1]:
                continue
            lines.append(" ".join(words))
        return sorted(lines)

    def route_snapshot(self, family: int = 4) -> list[str]:
        """All IPv4 routes of every table (``family=6``: IPv6; the kernel adds IPv6 link-local and
        multicast routes on its own after a link comes up, so IPv6 snapshots can be flaky)."""
        out = self.ip(f"-{family}", "route", "show", "table", "all")
        return sorted(line.strip() for line in out.splitlines() if line.strip())

    def links(self) -> list[str]:
        return sorted(line.split(":")[1].strip().split("@")[0] for line in self.ip("-o", "link").splitlines())

    def link_mtu(self, ifname: str) -> int:
        data = json.loads(self.ip("-j", "link", "show", ifname))
        return int(data[0]["mtu"])

    def link_stats(self, ifname: str) -> LinkStats:
        data = json.loads(self.ip("-j", "-s", "link", "show", ifname))[0]["stats64"]
        return LinkStats(
            rx_packets=data["rx"]["packets"],
            tx_packets=data["tx"]["packets"],
            rx_bytes=data["rx"]["bytes"],
            tx_bytes=data["tx"]["bytes"],
        )


@contextlib.contextmanager
def netns(name: str | None = None) -> Iterator[Netns]:
    ns = Netns.create(name)
    try:
        yield ns
    finally:
        ns.delete()


def veth(
    a: Netns, a_if: str, a_cidr: str | None, b: Netns, b_if: str, b_cidr: str | None, *, mtu: int = 1500
) -> None:
    """A veth pair ``a_if`` (in ``a``) <-> ``b_if`` (in ``b``), both up, with optional addresses."""
    _run(["ip", "link", "add", a_if, "netns", a.name, "mtu", str(mtu), "type", "veth",
          "peer", "name", b_if, "netns", b.name, "mtu", str(mtu)])  # fmt: skip
    for ns, ifname, cidr in ((a, a_if, a_cidr), (b, b_if, b_cidr)):
        if cidr:
            ns.ip("addr", "add", cidr, "dev", ifname)
        ns.ip("link", "set", ifname, "up")


@dataclass
class TwoHosts:
    client: Netns
    server: Netns
    client_if: str  # the client's uplink
    server_if: str
    client_ip: IPv4Address
    gateway_ip: IPv4Address  # the server namespace's veth end, the client's default gateway
    server_ip: IPv4Address = SERVER_IP
    outside_ip: IPv4Address = OUTSIDE_IP


_subnet = itertools.count(1)


@contextlib.contextmanager
def two_hosts(*, mtu: int = 1500, server_on_link: bool = False) -> Iterator[TwoHosts]:
    """Client and server namespaces over veth; client default route via the server's end.

    With ``server_on_link`` the server IP is the gateway address itself (no routing step).
    """
    base = unique()
    octet = (os.getpid() + next(_subnet)) % 250 + 1
    client_ip = IPv4Address(f"10.201.{octet}.2")
    gateway_ip = IPv4Address(f"10.201.{octet}.1")
    client = Netns.create(base + "c")
    try:
        server = Netns.create(base + "s")
        try:
            veth(client, base + "c0", f"{client_ip}/24", server, base + "s0", f"{gateway_ip}/24", mtu=mtu)
            client.ip("route", "add", "default", "via", str(gateway_ip))
            if not server_on_link:
                server.ip("addr", "add", f"{SERVER_IP}/32", "dev", "lo")
            # the "Internet": the server namespace swallows OUTSIDE_IP (a blackhole route)
            server.ip("route", "add", "blackhole", f"{OUTSIDE_IP}/32")
            yield TwoHosts(
                client=client,
                server=server,
                client_if=base + "c0",
                server_if=base + "s0",
                client_ip=client_ip,
                gateway_ip=gateway_ip,
                server_ip=gateway_ip if server_on_link else SERVER_IP,
            )
        finally:
            server.delete()
    finally:
        client.delete()


def wait_for(predicate: Callable[[], object], timeout: float = 3.0, interval: float = 0.02) -> bool:
    """Poll ``predicate()`` until true or ``timeout``; returns the last result as bool."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
