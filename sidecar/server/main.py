"""``sidecar serve``: the embedded PPTP server (listener, shared GRE socket and TUN device, clients).

Rules: hallway code in the server role. The protocol lives in :mod:`sidecar.proto` (the same
machines as the client, server role), the kernel access in :mod:`sidecar.kernel`; this module owns
what is shared between clients: the TCP listener, the one unconnected raw GRE socket (demultiplexed
by (source address, call ID), :mod:`sidecar.server.demux`), the one TUN device (packets routed to a
client by destination address), the address pool, the secrets table, and the orderly shutdown.

Theory of operation
-------------------
``run(settings)`` checks what can be checked without the network (secrets file, pool), then
creates the TUN device with the server's address, the GRE socket and the listener, and serves
until SIGTERM/SIGINT:

* accept loop: one :class:`~sidecar.server.session.ClientSession` task per TCP connection (beyond
  ``max_clients`` a connection is closed at once, logged);
* GRE reader: drain the socket, route the batch to the sessions (unknown ones dropped, counted),
  each session's consecutive packets handed over together; the IP packets they yield go to the
  kernel as one batch (``TunDevice.write_batch``: with TUN offload, TCP segments of a flow
  coalesced into super-packets);
* TUN reader: drain the device, route each IPv4 packet by destination to the client that owns the
  address (none: dropped, counted), again in runs per session.

Per packet, the loops do as little as they can: routing, the source-address check and the
counters work on a batch at a time (:mod:`sidecar.server.demux`, :mod:`sidecar.server.ipcheck`),
and the machines' outputs, events and timer are handled once per batch and session.

A client's address gets a host route through the TUN device when its link comes up; the route and
the address go when the client goes (hang-up, keepalive timeout, error). Forwarding between the
tunnel and the server's networks is the host's business (``net.ipv4.ip_forward=1``, NAT if the
pool is private): see docs/server.md.

Shutdown (SIGTERM/SIGINT): every client gets LCP Terminate-Request, Call-Disconnect-Notify and
Stop-Control-Connection-Request (bounded by a grace period), then the TUN device, its routes and
address and the sockets are removed. Exit code 0; 2 for a configuration problem (secrets file,
pool); 1 when the kernel side cannot be set up (no /dev/net/tun, port in use, not root).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import signal
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING, Any

import trio

from sidecar.server.demux import GreDemux
from sidecar.server.ipcheck import group_by_destination
from sidecar.server.pool import AddressPool, PoolError, describe
from sidecar.server.secrets import SecretsError, SecretsTable, fixed_addresses
from sidecar.server.session import ClientSession, SessionHooks
from sidecar.state import State, StatusBoard

if TYPE_CHECKING:
    from sidecar.config import ServeSettings

log = logging.getLogger("sidecar.server")

SERVER_NAME = "pptpd"  # the name matched against the server column of chap-secrets (pptpd's default)
SHUTDOWN_TIMEOUT = 4.0
EXIT_OK, EXIT_RUNTIME, EXIT_CONFIG = 0, 1, 2


@dataclass
class ServerCounters:
    clients_accepted: int = 0
    clients_refused: int = 0  # max_clients reached
    tun_rx: int = 0
    tun_no_client: int = 0  # packet for an address no client has: dropped
    tun_not_ipv4: int = 0


class Server:
    """Everything the clients share. Built by :func:`serve`; usable in-process by tests."""

    def __init__(
        self,
        settings: ServeSettings,
        *,
        secrets: SecretsTable,
        pool: AddressPool,
        gre: Any,
        tun: Any,
        netconf: Any,
        make_stack: Callable[[ClientSession | None, Callable[[str], Any]], Any],
    ) -> None:
        self.settings = settings
        self.secrets = secrets
        self.pool = pool
        self.gre = gre
        self.tun = tun
        self.netconf = netconf
        self.make_stack = make_stack
        self.demux: GreDemux[ClientSession] = GreDemux()
        self.by_address: dict[bytes, ClientSession] = {}
        self.sessions: set[ClientSession] = set()
        self.counters = ServerCounters()
        self._numbers = 0
        self._routes: dict[IPv4Address, Callable[[], None]] = {}
        seed = int(getattr(settings, "test_reorder_seed", 0) or 0)
        self._reorder_seed = seed
        self.stopping = False
        self.totals: dict[str, int] = {}  # counters of clients that are gone
        self.board = StatusBoard(role="server", server=f"{settings.listen[0]}:{settings.listen[1]}",
                                 interface=getattr(tun, "name", settings.interface))  # fmt: skip
        self.board.refresher = self.refresh_board

    # -- hooks for the sessions ---------------------------------------------------------------------
    def _hooks(self, number: int) -> SessionHooks:
        test_reorder = float(getattr(self.settings, "test_reorder", 0.0) or 0.0)
        rng = random.Random(self._reorder_seed * 1_000_003 + number) if test_reorder > 0 else None
        return SessionHooks(
            gre=self.gre,
            tun=self.tun,
            pool=self.pool,
            secrets=self.secrets,
            register_call=self._register_call,
            address_up=self._address_up,
            gone=self._gone,
            reorder_rng=rng,
            test_reorder=test_reorder,
        )

    def _register_call(self, session: ClientSession) -> None:
        assert session.local_call_id is not None
        self.demux.add(session.peer, session.local_call_id, session)

    def _address_up(self, session: ClientSession) -> None:
        assert session.address is not None
        packed = session.address.packed
        other = self.by_address.get(packed)
        if other is not None and other is not session:
            raise RuntimeError(f"address {session.address} is already used by {other.tag}")
        self.by_address[packed] = session
        if self.netconf is not None:
            mtu = session.mtu  # the client's MTU, never above the TUN device's
            device = getattr(self.tun, "mtu", None)
            if mtu and device:
                mtu = min(mtu, device)
            self._routes[session.address] = self.netconf.add_client_route(session.address, mtu)

    def _gone(self, session: ClientSession) -> None:
        self.sessions.discard(session)
        for name, value in session.counter_dict().items():
            self.totals[name] = self.totals.get(name, 0) + value
        if session.registered and session.local_call_id is not None:
            self.demux.remove(session.peer, session.local_call_id)
        for key, owner in list(self.by_address.items()):
            if owner is session:
                del self.by_address[key]
                addr = IPv4Address(key)
                undo = self._routes.pop(addr, None)
                if undo is not None:
                    try:
                        undo()
                    except Exception as exc:  # the TUN device may already be gone
                        log.debug("removing the route to %s: %s", addr, exc)

    # -- tasks --------------------------------------------------------------------------------------
    async def accept_loop(self, listeners: list[trio.SocketListener], nursery: trio.Nursery) -> None:
        async with trio.open_nursery() as inner:
            for listener in listeners:
                inner.start_soon(self._accept_one_listener, listener, nursery)

    async def _accept_one_listener(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                # out of descriptors/memory, or a connection reset before we took it: keep serving
                delay = (
                    1.0 if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM) else 0.05
                )
                log.error("accept failed: %s; retrying in %g s", exc.strerror or exc, delay)
                await trio.sleep(delay)
                continue
            try:
                host = stream.socket.getpeername()[0]
                stream.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                peer = IPv4Address(host)
            except (OSError, ValueError) as exc:
                log.warning("dropping a connection with no usable peer address: %s", exc)
                await stream.aclose()
                continue
            if self.stopping or len(self.sessions) >= self.settings.max_clients:
                self.counters.clients_refused += 1
                why = (
                    "shutting down" if self.stopping else f"max clients ({self.settings.max_clients}) reached"
                )
                log.warning("refused a client from %s: %s", peer, why)
                await stream.aclose()
                continue
            self.start_session(stream, peer, nursery)

    def start_session(
        self, stream: trio.abc.Stream, peer: IPv4Address, nursery: trio.Nursery
    ) -> ClientSession:
        """Run a new client on an accepted control stream (tests call this with memory streams)."""
        self.counters.clients_accepted += 1
        self._numbers += 1
        number = self._numbers
        holder: list[ClientSession] = []

        def lookup(user: str) -> Any:
            return holder[0].lookup_secret(user) if holder else None

        stack = self.make_stack(None, lookup)
        session = ClientSession(number, peer, stream, stack, self._hooks(number))
        holder.append(session)
        self.sessions.add(session)
        nursery.start_soon(session.run)
        return session

    async def gre_loop(self) -> None:
        gre, demux, tun = self.gre, self.demux, self.tun
        # the sessions' IP packets reach the kernel together, once per batch (coalesced with TUN offload)
        write_batch = tun.write_batch
        while True:
            await gre.wait_readable()
            while True:
                try:
                    batch = gre.recv_batch(64)
                except OSError as exc:  # a transient socket error must not stop every client
                    log.warning("GRE socket: %s", exc)
                    await trio.sleep(0.05)
                    break
                if not batch:
                    break
                now = trio.current_time()
                to_tun: list[bytes] = []
                runs = demux.route_batch(batch)
                for session, packets in runs:
                    session.gre_batch(packets, now, to_tun)
                touched = [session for session, _ in runs]
                if to_tun:
                    write_batch(to_tun)
                    # The kernel answers what it was just given inside that write (TCP acks of a
                    # bulk upload): sent now, they carry the GRE acks this batch owes, which would
                    # otherwise leave in ack-only packets from each session's timer task. A read
                    # error is the TUN reader's to report.
                    with contextlib.suppress(OSError):
                        touched += self._from_tun(now)[1]
                for session in dict.fromkeys(touched):
                    session.end_of_batch(now)
                if len(batch) < 64:
                    break
                await trio.lowlevel.checkpoint()

    async def tun_loop(self) -> None:
        tun = self.tun
        while True:
            await tun.wait_readable()
            while True:
                now = trio.current_time()
                try:
                    read, sessions = self._from_tun(now)
                except OSError as exc:
                    log.warning("%s: read failed: %s", getattr(tun, "name", "TUN device"), exc)
                    await trio.sleep(0.05)
                    break
                for session in dict.fromkeys(sessions):
                    session.end_of_batch(now)
                if read < 64:
                    break
                await trio.lowlevel.checkpoint()

    def _from_tun(self, now: float) -> tuple[int, list[ClientSession]]:
        """Read up to 64 packets from the TUN device and hand them to their sessions: how many
        were read, and the sessions that got some (their outputs, events and timer are the
        caller's)."""
        batch = self.tun.read_batch(64)
        if not batch:
            return 0, []
        counters = self.counters
        counters.tun_rx += len(batch)
        runs, not_ipv4, no_client = group_by_destination(batch, self.by_address)
        if not_ipv4 or no_client:
            counters.tun_not_ipv4 += not_ipv4
            counters.tun_no_client += no_client
        for session, packets in runs:
            session.ip_batch(packets, now)
        return len(batch), [session for session, _ in runs]

    async def shutdown(self, reason: str) -> None:
        """Say goodbye to every client (bounded by :data:`SHUTDOWN_TIMEOUT`)."""
        self.stopping = True
        sessions = list(self.sessions)
        if sessions:
            log.info("shutting down: disconnecting %d client(s)", len(sessions))
        for s in sessions:
            s.shutdown(reason)
        with trio.move_on_after(SHUTDOWN_TIMEOUT):
            for s in sessions:
                await s.wait_done()
        for s in sessions:
            if not s.ended:
                s.kill(reason)

    def stats(self) -> dict[str, int]:
        """Flat counters: the server's own, the shared sockets', and every client's (gone or not)."""
        out = {f"server_{k}": v for k, v in asdict(self.counters).items()}
        out.update({f"demux_{k}": v for k, v in asdict(self.demux.counters).items()})
        for prefix, obj in (("gresock", self.gre), ("tun", self.tun)):
            counters = getattr(obj, "counters", None)
            if counters is not None:
                out.update({f"{prefix}_{k}": int(v) for k, v in asdict(counters).items()})
        merged = dict(self.totals)
        for session in self.sessions:
            for key, value in session.counter_dict().items():
                merged[key] = merged.get(key, 0) + value
        out.update(merged)
        out["clients"] = len(self.sessions)
        out["pool_free"] = self.pool.free
        return out

    def publish(self) -> None:
        """Beat and refresh the status board (the ``--http`` endpoints read it)."""
        board = self.board
        board.beat()
        board.record_echo()  # the server is its own sign of life while it serves
        self.refresh_board()

    def refresh_board(self) -> None:
        """Counters, client list and pool onto the board (also run by every /status or /metrics read)."""
        board = self.board
        board.publish_counters(self.stats())
        board.extra["clients"] = [s.snapshot() for s in sorted(self.sessions, key=lambda s: s.number)]
        board.extra["pool"] = {"size": self.pool.size, "free": self.pool.free}

    async def publish_loop(self, interval: float = 1.0) -> None:
        while True:
            self.publish()
            await trio.sleep(interval)


# ---------------------------------------------------------------------------------------------------
def _prepare(settings: ServeSettings) -> tuple[SecretsTable, AddressPool]:
    name = str(getattr(settings, "server_name", "") or SERVER_NAME)
    secrets = SecretsTable.load(settings.secrets, name)
    if len(secrets) == 0:
        raise SecretsError(f"{settings.secrets}: no entries (expected: client server secret [addresses])")
    for entry in secrets.unused_entries():
        log.warning(
            "%s:%d: entry for %r names server %r; this server is %r, so it is never used",
            secrets.source,
            entry.line,
            entry.client,
            entry.server,
            name,
        )
    fixed = fixed_addresses(secrets.entries)
    pool = AddressPool(settings.pool, local_ip=settings.local_ip, reserved=fixed)
    return secrets, pool


class _ServerNet:
    """The server's address on the TUN device and per-client host routes, through the kernel
    wing's journaled :class:`~sidecar.kernel.netconf.NetConf`."""

    def __init__(self, ifname: str, local_ip: IPv4Address) -> None:
        from sidecar.kernel.netconf import NetConf

        self.ifname = ifname
        self.nc = NetConf()
        try:
            self._add_address(local_ip)
        except BaseException:
            self.close()
            raise

    def _add_address(self, local_ip: IPv4Address) -> None:
        ipr = self.nc._ipr
        index = self.nc.ifindex(self.ifname)
        kw = {"index": index, "address": str(local_ip), "prefixlen": 32}
        ipr.addr("add", **kw)
        self.nc.journal.push(f"address {local_ip}/32 on {self.ifname}", lambda: _quiet(ipr.addr, "del", **kw))

    def add_client_route(self, address: IPv4Address, mtu: int | None = None) -> Callable[[], None]:
        """The host route to a client, with that client's MTU (``mtu``) when it is known."""
        net = IPv4Network(f"{address}/32")
        ipr = self.nc._ipr
        kw: dict[str, Any] = {"dst": str(net), "oif": self.nc.ifindex(self.ifname)}
        if mtu:
            kw["metrics"] = {"mtu": mtu}
        try:
            ipr.route("add", **kw)
        except Exception as exc:
            if getattr(exc, "code", None) != errno.EEXIST:
                raise
        return lambda: _quiet(ipr.route, "del", **kw)

    def close(self) -> None:
        try:
            self.nc.restore()
        finally:
            self.nc.close()


def _quiet(fn: Callable[..., Any], *args: Any, **kw: Any) -> None:
    try:
        fn(*args, **kw)
    except Exception as exc:
        log.debug("cleanup: %s", exc)


async def serve(
    settings: ServeSettings,
    *,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> int:
    """Run the server until SIGTERM/SIGINT (or cancellation). Returns the exit code."""
    try:
        secrets, pool = _prepare(settings)
    except (SecretsError, PoolError) as exc:
        log.error("%s", exc)
        return EXIT_CONFIG

    from sidecar.kernel.gre_socket import GreSocket
    from sidecar.kernel.tun import TunDevice
    from sidecar.server.wiring import SERVER_TUN_MTU, stack_factory

    cleanups: list[Callable[[], None]] = []
    try:
        try:
            tun = TunDevice(settings.interface, SERVER_TUN_MTU, offload=settings.tun_offload)
        except OSError as exc:
            log.error("%s", exc)
            return EXIT_RUNTIME
        cleanups.append(tun.close)
        try:
            net = _ServerNet(tun.name, settings.local_ip)
        except Exception as exc:
            log.error("cannot put %s on %s: %s", settings.local_ip, tun.name, exc)
            return EXIT_RUNTIME
        cleanups.append(net.close)
        tun.set_local_addresses([settings.local_ip])
        try:
            gre = GreSocket(None)
        except OSError as exc:
            log.error("cannot open the raw GRE socket: %s (needs root / CAP_NET_RAW)", exc.strerror or exc)
            return EXIT_RUNTIME
        cleanups.append(gre.close)
        host, port = settings.listen
        try:
            listeners = await trio.open_tcp_listeners(port, host=host or None)
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s", host, port, exc.strerror or exc)
            return EXIT_RUNTIME
        for lst in listeners:
            cleanups.append(lst.socket.close)

        if settings.pcap is not None:
            from sidecar.observe.pcap import PcapTap

            try:
                tap = PcapTap.shared(settings.pcap)  # the one stack_factory taps every client into
            except OSError as exc:
                log.error("--pcap %s: cannot open the file: %s", settings.pcap, exc.strerror or exc)
                return EXIT_RUNTIME
            cleanups.append(tap.close)
            log.info("capturing every client's PPP control frames and clear IP packets to %s", settings.pcap)
        server = Server(
            settings,
            secrets=secrets,
            pool=pool,
            gre=gre,
            tun=tun,
            netconf=net,
            make_stack=stack_factory(settings),
        )
        log.info(
            "serving PPTP on %s:%d: %s %s, pool %s (%d addresses), %d user entries from %s, "
            "auth %s, MPPE %s%s",
            host,
            port,
            tun.name,
            settings.local_ip,
            describe(pool.addresses),
            pool.size,
            len(secrets),
            secrets.source,
            ", ".join(_name(m) for m in settings.auth),
            _name(settings.mppe),
            f", test reorder {settings.test_reorder:g}" if settings.test_reorder else "",
        )
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.accept_loop, listeners, nursery)
                nursery.start_soon(server.gre_loop)
                nursery.start_soon(server.tun_loop)
                nursery.start_soon(server.publish_loop)
                server.board.set_state(State.UP, f"listening on {host}:{port}")
                if settings.http is not None:
                    from sidecar.observe.http import serve_http

                    await nursery.start(serve_http, settings.http[0], settings.http[1], server.board)
                task_status.started(server)
                async for signum in signals:
                    log.info("%s received: stopping", signal.Signals(signum).name)
                    break
                server.board.set_state(State.STOPPING, "signal")
                await server.shutdown("server shutting down")
                nursery.cancel_scope.cancel()
        log.info("stopped: %s", ", ".join(f"{k}={v}" for k, v in server.stats().items() if v))
        return EXIT_OK
    finally:
        for cleanup in reversed(cleanups):
            try:
                cleanup()
            except Exception as exc:
                log.warning("cleanup: %s", exc)


def _name(value: Any) -> str:
    return str(getattr(value, "label", None) or getattr(value, "name", value)).lower()


def run(settings: ServeSettings) -> int:
    """Entry point for ``sidecar serve``: returns the exit code."""
    if os.geteuid() != 0:
        log.warning("not running as root: creating the TUN device and the raw GRE socket will likely fail")
    try:
        return trio.run(serve, settings)
    except KeyboardInterrupt:
        return EXIT_OK


__all__ = ["EXIT_CONFIG", "EXIT_OK", "EXIT_RUNTIME", "Server", "run", "serve"]
