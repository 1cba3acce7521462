"""Addresses, MTU and routes through netlink (pyroute2's sync ``IPRoute``), with an undo journal.

Rules: every change this module makes to the namespace is recorded in an :class:`UndoJournal` *before*
the caller moves on, so :meth:`NetConf.restore` puts the namespace back exactly as it was, also after
a start that failed half-way. Nothing here knows PPTP or PPP.

Threading: pyroute2 0.9 binds its netlink socket to the thread (and the network namespace) that
created the ``IPRoute``; a call from another thread silently talks to the *calling thread's*
namespace. So all calls run on the thread that built the :class:`NetConf` (the trio thread): they are
few, sub-millisecond, and only at session start/stop - never on the hot path.

Routing choice for ``routes="default"``: two /1 routes (0.0.0.0/1 and 128.0.0.0/1) through the
tunnel, not a replaced default route. They are more specific than any default route, so they win
without touching it; the original default stays in place for the host route to the server, and if
the process dies hard the kernel removes the /1 routes together with the TUN device and the
namespace falls back to its own default route (the kill switch, when on, still blocks it).
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any


@contextlib.contextmanager
def _package_without_init(name: str) -> Iterator[None]:
    """Import submodules of package ``name`` without running the package's ``__init__``.

    For pyroute2, whose ``__init__`` imports nearly all of it (NDB with sqlite3, IPDB, wireguard,
    nl80211, plan9, ...) whatever one asks for: +10 MB of peak RSS in every ``up`` and ``serve``,
    against +4 MB for what ``IPRoute`` needs. Meanwhile ``sys.modules`` holds the package as an empty
    module (the real spec, not executed), so Python finds the submodules without the ``__init__``;
    afterwards it is removed, and a later ``import pyroute2`` anywhere in the process runs the real
    ``__init__`` as usual (re-using the submodules already loaded).
    """
    spec = None if name in sys.modules else importlib.util.find_spec(name)
    if spec is None:  # already imported (or not installed: the import below says so)
        yield
        return
    sys.modules[name] = importlib.util.module_from_spec(spec)
    try:
        yield
    finally:
        del sys.modules[name]


with _package_without_init("pyroute2"):
    from pyroute2.iproute.linux import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

log = logging.getLogger(__name__)
# pyroute2 logs every netlink message at DEBUG: too much for `--log-level debug` of the sidecar
logging.getLogger("pyroute2").setLevel(logging.WARNING)

DEFAULT_SPLIT = (IPv4Network("0.0.0.0/1"), IPv4Network("128.0.0.0/1"))
RTPROT_STATIC = 4
# "already gone" answers while undoing: the TUN device vanished and took its addresses/routes along
_GONE = {errno.ENODEV, errno.ESRCH, errno.EADDRNOTAVAIL, errno.ENOENT}


class NetConfError(OSError):
    """A netlink change failed; the message names the change and the kernel's answer."""


IN6_ADDR_GEN_MODE_NONE = 1  # <linux/if_link.h>: no link-local address generated at link-up


def no_ipv6_link_local(ifname: str) -> None:
    """No IPv6 link-local address on ``ifname`` when it comes up (so the kernel sends no Router
    Solicitation or MLD from it). Works where /proc/sys is read-only; needs CAP_NET_ADMIN."""
    with IPRoute() as ipr:
        try:
            index = ipr.link_lookup(ifname=ifname)
            if not index:
                raise NetConfError(errno.ENODEV, f"no interface {ifname}")
            inet6 = {"attrs": [["IFLA_INET6_ADDR_GEN_MODE", IN6_ADDR_GEN_MODE_NONE]]}
            ipr.link("set", index=index[0], IFLA_AF_SPEC={"attrs": [["AF_INET6", inet6]]})
        except NetlinkError as exc:
            raise NetConfError(exc.code, f"{ifname}: IPv6 address generation off: {exc}") from exc


class UndoJournal:
    """A stack of undo actions. :meth:`unwind` runs them newest first, never raises, and reports
    what it could not undo."""

    def __init__(self) -> None:
        self._entries: list[tuple[str, Callable[[], None]]] = []

    def push(self, description: str, undo: Callable[[], None]) -> None:
        self._entries.append((description, undo))

    def __len__(self) -> int:
        return len(self._entries)

    def descriptions(self) -> list[str]:
        return [d for d, _ in self._entries]

    def unwind(self) -> list[str]:
        failures: list[str] = []
        while self._entries:
            description, undo = self._entries.pop()
            try:
                undo()
            except Exception as exc:
                failures.append(f"undo {description}: {exc}")
                log.warning("could not undo %s: %s", description, exc)
        return failures


@dataclass(frozen=True)
class RouteInfo:
    """How the namespace reaches a destination right now (``ip route get``)."""

    destination: IPv4Address
    gateway: IPv4Address | None  # None: on-link
    oif: int
    ifname: str
    mtu: int  # the route's MTU metric if set (or a cached path MTU), else the interface MTU
    prefsrc: IPv4Address | None


def _attr(msg: Any, name: str) -> Any:
    return msg.get_attr(name)


class NetConf:
    """Changes to one network namespace (the one the calling thread is in when it is built)."""

    def __init__(self, journal: UndoJournal | None = None, ipr: IPRoute | None = None) -> None:
        self.journal = journal if journal is not None else UndoJournal()
        self._own_ipr = ipr is None
        self._ipr = ipr if ipr is not None else IPRoute()

    # -- queries ---------------------------------------------------------------------------------
    def ifindex(self, ifname: str) -> int:
        found = self._ipr.link_lookup(ifname=ifname)
        if not found:
            raise NetConfError(errno.ENODEV, f"no interface named {ifname!r}")
        return int(found[0])

    def ifname(self, index: int) -> str:
        return str(_attr(self._ipr.get_links(index)[0], "IFLA_IFNAME"))

    def link_mtu(self, index: int) -> int:
        return int(_attr(self._ipr.get_links(index)[0], "IFLA_MTU"))

    def route_to(self, dest: IPv4Address) -> RouteInfo:
        try:
            msg = self._ipr.route("get", dst=str(dest))[0]
        except NetlinkError as exc:
            raise NetConfError(exc.code, f"no route to {dest}: {exc}; check the uplink and gateway") from exc
        oif = int(_attr(msg, "RTA_OIF"))
        gateway = _attr(msg, "RTA_GATEWAY")
        prefsrc = _attr(msg, "RTA_PREFSRC")
        mtu = self.link_mtu(oif)
        metrics = _attr(msg, "RTA_METRICS")
        if metrics is not None:
            route_mtu = metrics.get_attr("RTAX_MTU")
            if route_mtu:
                mtu = min(mtu, int(route_mtu))
        return RouteInfo(
            destination=dest,
            gateway=IPv4Address(gateway) if gateway else None,
            oif=oif,
            ifname=self.ifname(oif),
            mtu=mtu,
            prefsrc=IPv4Address(prefsrc) if prefsrc else None,
        )

    def routes_via(self, ifname: str) -> list[IPv4Network]:
        index = self.ifindex(ifname)
        out = []
        for msg in self._ipr.get_routes(family=2, oif=index, table=254):
            dst = _attr(msg, "RTA_DST") or "0.0.0.0"
            out.append(IPv4Network(f"{dst}/{msg['dst_len']}"))
        return out

    # -- changes (each journaled) ----------------------------------------------------------------
    def set_mtu(self, ifname: str, mtu: int) -> None:
        index = self.ifindex(ifname)
        old = self.link_mtu(index)
        if old == mtu:
            return
        self._call(f"set MTU {mtu} on {ifname}", "link", "set", index=index, mtu=mtu)
        self.journal.push(
            f"MTU {mtu} on {ifname} (was {old})",
            lambda: self._undo("link", "set", index=index, mtu=old),
        )

    def add_point_to_point(self, ifname: str, local: IPv4Address, peer: IPv4Address | None) -> None:
        """``ip addr add <local> peer <peer>/32 dev <ifname>``; the kernel adds the peer route.
        Without a peer address (a server that gives none): ``<local>/32``."""
        index = self.ifindex(ifname)
        what = f"{local} peer {peer}" if peer is not None else f"{local}/32"
        kw = {"index": index, "local": str(local), "address": str(peer or local), "prefixlen": 32}
        self._call(f"add address {what} on {ifname}", "addr", "add", **kw)
        self.journal.push(f"address {what} on {ifname}", lambda: self._undo("addr", "del", **kw))

    def add_route(
        self,
        network: IPv4Network,
        *,
        ifname: str | None = None,
        gateway: IPv4Address | None = None,
        oif: int | None = None,
    ) -> bool:
        """Add a route (journaled). An identical existing route is left alone and not journaled:
        returns False then."""
        kw: dict[str, Any] = {"dst": str(network), "proto": RTPROT_STATIC}
        if ifname is not None:
            kw["oif"] = self.ifindex(ifname)
        elif oif is not None:
            kw["oif"] = oif
        if gateway is not None:
            kw["gateway"] = str(gateway)
        what = (
            f"route {network}" + (f" via {gateway}" if gateway else "") + (f" dev {ifname}" if ifname else "")
        )
        try:
            self._ipr.route("add", **kw)
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                log.info("%s already present; leaving it as it is", what)
                return False
            raise NetConfError(exc.code, f"cannot add {what}: {exc}") from exc
        self.journal.push(what, lambda: self._undo("route", "del", **kw))
        return True

    def add_server_host_route(self, server: IPv4Address, via: RouteInfo | None = None) -> RouteInfo:
        """Pin the server to the path it uses now (``server/32 via <original gateway>``), so GRE and
        the control connection do not loop into the tunnel once routes move there."""
        via = via if via is not None else self.route_to(server)
        self.add_route(IPv4Network(f"{server}/32"), gateway=via.gateway, oif=via.oif)
        return via

    def route_through(self, ifname: str, routes: str | tuple[IPv4Network, ...]) -> list[IPv4Network]:
        """``"default"`` -> the two /1 routes; else the given networks (split tunnel)."""
        if isinstance(routes, str) and routes != "default":
            raise ValueError(f"routes must be 'default' or networks, not {routes!r}")
        networks: tuple[IPv4Network, ...] = DEFAULT_SPLIT if isinstance(routes, str) else tuple(routes)
        added = []
        for network in networks:
            if self.add_route(network, ifname=ifname):
                added.append(network)
        return added

    def restore(self) -> list[str]:
        """Undo every change, newest first; returns what could not be undone (already logged)."""
        return self.journal.unwind()

    def close(self) -> None:
        if self._own_ipr:
            self._ipr.close()

    def __enter__(self) -> NetConf:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------------
    def _call(self, what: str, kind: str, cmd: str, **kw: Any) -> None:
        try:
            getattr(self._ipr, kind)(cmd, **kw)
        except NetlinkError as exc:
            raise NetConfError(exc.code, f"cannot {what}: {exc}") from exc

    def _undo(self, kind: str, cmd: str, **kw: Any) -> None:
        try:
            getattr(self._ipr, kind)(cmd, **kw)
        except NetlinkError as exc:
            if exc.code in _GONE:
                return
            raise
