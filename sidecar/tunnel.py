"""One PPTP client session under a trio nursery: the hallway between the kernel wing and the machines.

Rules: this file moves bytes between :mod:`sidecar.kernel` objects and a :class:`sidecar.stack.SessionStack`
and acts on the stack's events (logs one line per phase, configures the namespace when the link comes
up, publishes to the :class:`~sidecar.state.StatusBoard`). It holds no protocol logic. Everything it
changes in the namespace goes through one :class:`~sidecar.kernel.netconf.UndoJournal` and is undone
when the session ends, however it ends (also a failed start, also cancellation).

Theory of operation - one nursery, these tasks, and cancellation is the only way they stop:

- control reader: TCP bytes -> ``stack.control_received``; EOF ends the session (the machine says why);
- control writer: sends what the stack queued (woken by an event, so the sync paths can queue too);
- GRE reader: ``wait_readable`` once, then drain the raw socket until EAGAIN (a batch), the batch
  through ``stack.gre_received_batch`` (GreSession -> PppLink, packet by packet), then the batch's
  IP packets in one ``write_batch`` (with TUN offload, consecutive TCP segments of a flow reach the
  kernel as one super-packet);
- TUN reader: same, the other way: the batch through ``stack.send_ips`` (PppLink.send_ip ->
  GreSession.send), then the GRE packets in one ``send_batch``; it reads no more than the peer's
  receive window takes (``stack.send_room``) and waits for an ack when it is full (the GRE reader
  wakes it; after WINDOW_STALL without one the timer calls ``stack.window_stalled`` and wakes it);
- timer: sleeps in a cancel scope whose deadline is the machines' earliest ``next_deadline()``;
  after every input ``_after_input`` moves that deadline earlier when a machine needs it earlier,
  without waking the task (an ack falling due costs a deadline update, not a task switch per
  packet); a deadline that went away or later is left to the timer's next wake-up, which finds
  nothing due, re-reads the machines and sleeps again;
- publisher: copies counters to the board once a second;
- stop watcher: on the supervisor's stop request, starts the goodbye (LCP Terminate-Request,
  Call-Clear-Request, Stop-Control-Connection-Request) and ends the session within 2 s, answered or not.

No thread on the hot path, no busy loop, no await per packet: one wake-up per batch.

The TUN device is created at the start of the session (so a missing /dev/net/tun or CAP_NET_ADMIN
shows at once) with the MTU the path allows; when IPCP is up, the final MTU (peer's MRU, MPPE) is set,
then the address pair, the host route to the server via the original gateway, the tunnel routes and,
with ``--dns``, resolv.conf - in that order, each journaled.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, is_dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import trio

from sidecar.kernel.control import ControlConnectError, connect_control
from sidecar.kernel.dns import RESOLV_CONF, ResolvConf
from sidecar.kernel.gre_socket import GreSocket, GreSocketError
from sidecar.kernel.netconf import NetConf, NetConfError, RouteInfo, UndoJournal
from sidecar.kernel.tun import TunDevice, TunError
from sidecar.stack import MIN_MTU, WINDOW_STALL, SessionStack, client_stack, tunnel_mtu
from sidecar.state import State, StatusBoard

log = logging.getLogger("sidecar.tunnel")

STOP_BUDGET = 2.0  # seconds from a stop request to the end of the session, answered or not
GOODBYE_GRACE = 1.5  # of which the protocol goodbye may use this much; the rest is for flushing
BATCH = 64
PUBLISH_EVERY = 1.0
CONTROL_READ = 65536


class SessionSetupError(Exception):
    """The session could not start for a reason retrying will not fix (permissions, no TUN)."""


@dataclass(frozen=True)
class SessionResult:
    reason: str
    bad_credentials: bool = False
    was_up: bool = False  # the tunnel reached "up"
    up_for: float = 0.0  # seconds it stayed up
    stopped: bool = False  # ended because the supervisor asked
    authenticated: bool = False
    restore_failures: tuple[str, ...] = ()


StackFactory = Callable[[int], SessionStack]


async def run_session(
    settings: Any,
    board: StatusBoard,
    *,
    server_ip: IPv4Address,
    stop: trio.Event | None = None,
    resolv_conf: Path = RESOLV_CONF,
    rng: random.Random | None = None,
    make_stack: StackFactory | None = None,
) -> SessionResult:
    """Run one session to its end and restore the namespace. ``settings`` is an ``UpSettings``;
    ``make_stack(path_mtu)`` replaces the real protocol stack (tests)."""
    session = Session(settings, board, server_ip, resolv_conf=resolv_conf, rng=rng, make_stack=make_stack)
    return await session.run(stop if stop is not None else trio.Event())


class Session:
    def __init__(
        self,
        settings: Any,
        board: StatusBoard,
        server_ip: IPv4Address,
        *,
        resolv_conf: Path = RESOLV_CONF,
        rng: random.Random | None = None,
        make_stack: StackFactory | None = None,
    ) -> None:
        self.settings = settings
        self.board = board
        self.server_ip = server_ip
        self.resolv_conf = resolv_conf
        self.rng = rng
        self._make_stack = make_stack
        self.journal = UndoJournal()
        self.stack: SessionStack | None = None
        self.tun: TunDevice | None = None
        self.gre: GreSocket | None = None
        self.netconf: NetConf | None = None
        self.stream: trio.SocketStream | None = None
        self.capture: Any = None  # sidecar.observe.pcap.PcapTap with --pcap
        self.via: RouteInfo | None = None
        self.path_mtu = 1500
        self.peer_mru: int | None = None
        self.encryption: str | None = None
        self.auth_method: str | None = None
        self.authenticated = False
        self.up_at: float | None = None
        self.stopped = False
        self.failure: str | None = None
        self.bytes_in = self.bytes_out = self.packets_in = self.packets_out = 0
        self._timer_scope: trio.CancelScope | None = None  # the sleeping timer's; None while it runs
        self._stall_at: float | None = None  # the TUN reader waits for an ack until then (window full)
        self._acked = trio.Event()
        self._control_dirty = trio.Event()
        self._done = trio.Event()
        self._nursery_scope: trio.CancelScope | None = None
        self._send_lock = trio.Lock()

    # -- the whole session ----------------------------------------------------------------------------
    async def run(self, stop: trio.Event) -> SessionResult:
        s = self.settings
        try:
            self._setup()
            self.board.set_state(State.CONNECTING, f"{self.server_ip}:{s.port}")
            self.stream = await self._connect(stop)
            if self.stream is None:
                self.stopped = True
                self.failure = "stopped while connecting"
            else:
                log.info("control connection: TCP connected to %s:%d", self.server_ip, s.port)
                self.board.add_event("tcp connected", f"{self.server_ip}:{s.port}")
                await self._run_tasks(stop)
        except ControlConnectError as exc:
            self.failure = str(exc)
        except (NetConfError, TunError, GreSocketError) as exc:
            if _permanent(exc):
                self._teardown()
                raise SessionSetupError(str(exc)) from exc
            self.failure = str(exc)
        except BaseException:
            self._teardown()
            raise
        return self._result(self._reason(), self._teardown())

    async def _connect(self, stop: trio.Event) -> trio.SocketStream | None:
        """The TCP connection, or None when a stop request came first (no exception groups: the
        connect attempt keeps its error and the caller re-raises it)."""
        s = self.settings
        got: dict[str, Any] = {}
        async with trio.open_nursery() as nursery:

            async def attempt() -> None:
                try:
                    got["stream"] = await connect_control(self.server_ip, s.port, timeout=s.connect_timeout)
                except ControlConnectError as exc:
                    got["error"] = exc
                nursery.cancel_scope.cancel()

            async def watch() -> None:
                await stop.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(attempt)
            nursery.start_soon(watch)
        if "error" in got:
            raise got["error"]
        stream: trio.SocketStream | None = got.get("stream")
        if stream is not None and stop.is_set():
            stream.socket.close()
            return None
        return stream

    def _setup(self) -> None:
        s = self.settings
        self.netconf = NetConf(self.journal)
        self.via = self.netconf.route_to(self.server_ip)
        self.path_mtu = self.via.mtu
        log.debug(
            "path to %s: via %s dev %s, MTU %d",
            self.server_ip,
            self.via.gateway or "(on-link)",
            self.via.ifname,
            self.path_mtu,
        )
        self.stack = (
            self._make_stack(self.path_mtu)
            if self._make_stack is not None
            else client_stack(s, path_mtu=self.path_mtu, rng=self.rng)
        )
        if getattr(s, "pcap", None) is not None:
            self._open_capture(s.pcap)
        mppe_possible = getattr(getattr(s, "mppe", None), "name", "REQUIRE") != "REFUSE"
        mtu = tunnel_mtu(self.path_mtu, mppe=mppe_possible, configured=s.mtu)
        if s.mtu and s.mtu > mtu:
            log.warning(
                "--mtu %d would fragment GRE on this path (MTU %d); using %d", s.mtu, self.path_mtu, mtu
            )
        if mtu < MIN_MTU:
            raise NetConfError(
                errno.EMSGSIZE, f"the path to {self.server_ip} allows a tunnel MTU of only {mtu}"
            )
        self.tun = TunDevice(s.interface, mtu, offload=getattr(s, "tun_offload", False))  # IPv6 off
        self.gre = GreSocket(self.server_ip)

    def _open_capture(self, path: Path) -> None:
        """``--pcap``: the link, once it exists, copies its traffic to the file (no cost when off)."""
        from sidecar.observe.pcap import PcapTap, tap_link

        assert self.stack is not None
        keep = bool(getattr(self.settings, "pcap_auth_hashes", False))
        try:
            tap = PcapTap.shared(path, keep_auth_hashes=keep)
        except OSError as exc:
            log.warning("--pcap %s: cannot open the file (%s); running without a capture", path, exc)
            return
        self.capture = tap
        self.stack.on_link = lambda link: tap_link(link, tap)
        log.info("capturing PPP control frames and decrypted IP packets to %s", path)
        if keep:
            log.warning("--pcap-auth-hashes: the capture keeps CHAP/MS-CHAP responses (guessable offline)")

    async def _run_tasks(self, stop: trio.Event) -> None:
        assert self.stack is not None
        now = trio.current_time()
        self.stack.start(now)
        self.board.refresher = self._publish  # /status and /metrics read this session's live counters
        async with trio.open_nursery() as nursery:
            self._nursery_scope = nursery.cancel_scope
            nursery.start_soon(self._control_reader)
            nursery.start_soon(self._control_writer)
            nursery.start_soon(self._gre_reader)
            nursery.start_soon(self._tun_reader)
            nursery.start_soon(self._timer)
            nursery.start_soon(self._publisher)
            nursery.start_soon(self._stop_watcher, stop)
            nursery.start_soon(self._closer)
            self._after_input(now)

    def _teardown(self) -> tuple[str, ...]:
        failures = self.journal.unwind()  # DNS, routes, addresses: newest first, while the TUN exists
        if failures:
            log.warning("could not restore everything: %s", "; ".join(failures))
        self._publish()
        if self.board.refresher == self._publish:
            self.board.refresher = None  # the final figures stay published; nothing live to pull
        if self.capture is not None:
            self.capture.flush()
        for closer in (self.tun, self.gre, self.netconf):
            if closer is not None:
                with contextlib.suppress(Exception):
                    closer.close()
        if self.stream is not None:
            with contextlib.suppress(Exception):
                self.stream.socket.close()
        if self.up_at is not None:
            log.info("tunnel down on %s: %s", self.settings.interface, self._reason())
        return tuple(failures)

    def _reason(self) -> str:
        outcome = self.stack.outcome if self.stack is not None else None
        if outcome is not None:
            return outcome.reason
        if self.failure:
            return self.failure
        return "stopped" if self.stopped else "session ended"

    def _result(self, reason: str, failures: tuple[str, ...] = ()) -> SessionResult:
        outcome = self.stack.outcome if self.stack is not None else None
        up_for = (trio.current_time() - self.up_at) if self.up_at is not None else 0.0
        return SessionResult(
            reason=reason,
            bad_credentials=bool(outcome and outcome.bad_credentials),
            was_up=self.up_at is not None,
            up_for=up_for,
            stopped=self.stopped,
            authenticated=self.authenticated,
            restore_failures=failures,
        )

    # -- tasks ----------------------------------------------------------------------------------------
    async def _control_reader(self) -> None:
        assert self.stream is not None and self.stack is not None
        while True:
            try:
                data = await self.stream.receive_some(CONTROL_READ)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self.failure = self.failure or f"control connection lost: {exc}"
                data = b""
            now = trio.current_time()
            self.stack.control_received(data, now)
            self._after_input(now)
            if not data:
                self._done.set()  # nothing more can come; the stack has said why
                return

    async def _control_writer(self) -> None:
        assert self.stream is not None and self.stack is not None
        while True:
            await self._control_dirty.wait()
            self._control_dirty = trio.Event()
            async with self._send_lock:  # one writer at a time (the closer flushes too)
                data = self.stack.control_to_send()
                try:
                    if data:
                        await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    self.failure = self.failure or f"control connection lost: {exc}"
                    self._done.set()
                    return

    async def _gre_reader(self) -> None:
        gre, tun, stack = self.gre, self.tun, self.stack
        assert gre is not None and tun is not None and stack is not None
        received = stack.gre_received_batch
        while True:
            await gre.wait_readable()
            try:
                batch = gre.recv_batch(BATCH)
            except OSError as exc:
                self._kernel_failure(f"GRE socket: {exc}")
                return
            if not batch:
                continue
            self._acked.set()  # acks may have opened the peer's window
            now = trio.current_time()
            ips = received([packet for _source, packet in batch], now)
            if ips:
                self._to_tun(ips)
            self._after_input(now)

    async def _tun_reader(self) -> None:
        gre, tun, stack = self.gre, self.tun, self.stack
        assert gre is not None and tun is not None and stack is not None
        send_ips, send_batch, room_for = stack.send_ips, gre.send_batch, stack.send_room
        while True:
            room = room_for()
            if room <= 0:  # the peer's receive window is full: wait for its ack (RFC 2637 §4.2)
                self._acked = trio.Event()
                stall_at = self._stall_at = trio.current_time() + WINDOW_STALL
                scope = self._timer_scope  # the timer gives up on the ack (no cancel scope per wait)
                if scope is not None and stall_at < scope.deadline:
                    scope.deadline = stall_at
                await self._acked.wait()
                self._stall_at = None
                continue
            await tun.wait_readable()
            try:
                packets = tun.read_batch(min(BATCH, room))
            except OSError as exc:
                self._kernel_failure(f"TUN device: {exc}")
                return
            if not packets:
                continue
            now = trio.current_time()
            out, taken = send_ips(packets, now)
            if out:
                self.packets_out += len(out)
                self.bytes_out += taken
                send_batch(out)
            self._after_input(now)

    async def _timer(self) -> None:
        stack, tun, gre = self.stack, self.tun, self.gre
        assert stack is not None and tun is not None and gre is not None
        while True:
            deadline = stack.next_deadline()
            stall_at = self._stall_at
            if stall_at is not None and (deadline is None or stall_at < deadline):
                deadline = stall_at
            with trio.CancelScope(deadline=math.inf if deadline is None else deadline) as scope:
                self._timer_scope = scope  # _after_input and the TUN reader move its deadline
                await trio.sleep_forever()
            # Awake: the deadline is re-read at the top of the loop, nothing moves it meanwhile.
            self._timer_scope = None
            now = trio.current_time()
            stall_at = self._stall_at
            if stall_at is not None and now >= stall_at:
                self._stall_at = None
                if not self._acked.is_set():  # no ack within WINDOW_STALL: the TUN reader goes on
                    stack.window_stalled()
                    self._acked.set()
            ips, packets = stack.timeout(now)
            if ips:
                self._to_tun(ips)
            for packet in packets:
                gre.send(packet)
            self._after_input(now)
            after = stack.next_deadline()
            if after is not None and after <= now:
                await trio.sleep(0.001)  # a machine that keeps a past deadline must not make us spin

    async def _publisher(self) -> None:
        while True:
            await trio.sleep(PUBLISH_EVERY)
            self._publish()

    async def _stop_watcher(self, stop: trio.Event) -> None:
        await stop.wait()
        assert self.stack is not None
        self.stopped = True
        now = trio.current_time()
        log.info("stopping: saying goodbye to the server (LCP, call, control; at most %g s)", STOP_BUDGET)
        self.board.set_state(State.STOPPING, "stop requested")
        self.stack.close(now, "stopped by request", grace=GOODBYE_GRACE)
        self._after_input(now)
        with trio.move_on_after(STOP_BUDGET):
            await self._done.wait()
            return
        log.warning("goodbye not finished within %g s; closing anyway", STOP_BUDGET)
        self._end()

    async def _closer(self) -> None:
        """When the stack is finished: flush the last control bytes (briefly), then end the nursery."""
        await self._done.wait()
        assert self.stack is not None and self.stream is not None
        with (
            trio.move_on_after(0.3),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError),
        ):
            async with self._send_lock:
                data = self.stack.control_to_send()
                if data:
                    await self.stream.send_all(data)
        self._end()

    def _to_tun(self, ips: list[bytes]) -> None:
        """One batch of IP packets from the tunnel to the apps (one write per super-packet with
        TUN offload)."""
        tun = self.tun
        assert tun is not None
        before = tun.counters.tx_bytes
        self.packets_in += tun.write_batch(ips)
        self.bytes_in += tun.counters.tx_bytes - before

    def _kernel_failure(self, what: str) -> None:
        log.error("%s; ending the session", what)
        self.failure = self.failure or what
        self._done.set()

    def _end(self) -> None:
        if self._nursery_scope is not None:
            self._nursery_scope.cancel()

    # -- after every input: drain, handle events, re-arm ---------------------------------------------
    def _after_input(self, now: float) -> None:
        stack, gre = self.stack, self.gre
        assert stack is not None and gre is not None
        for packet in stack.gre_to_send(now):
            gre.send(packet)
        if stack.control_pending():
            self._control_dirty.set()
        for event in stack.events(now):
            self._handle(event, now)
        # events may have queued more (e.g. the goodbye after a LinkDown)
        for packet in stack.gre_to_send(now):
            gre.send(packet)
        if stack.control_pending():
            self._control_dirty.set()
        if stack.finished():
            self._done.set()
        scope = self._timer_scope
        if scope is not None:
            # Only ever earlier: a later (or no) deadline waits for the sleeping timer's wake-up,
            # which re-reads it. An owed ack comes and goes with every batch; moving the scope
            # each time cost more than one early wake-up per ack delay.
            deadline = stack.next_deadline()
            if deadline is not None and deadline < scope.deadline:
                scope.deadline = deadline

    def _handle(self, ev: Any, now: float) -> None:
        kind = type(ev).__name__
        board = self.board
        if kind == "ControlConnected":
            log.info("control connected: %s", ev)
            board.add_event("control connected", str(ev))
        elif kind == "CallEstablished":
            log.info("call established: %s", ev)
            board.add_event("call established", str(ev))
            board.set_state(State.AUTHENTICATING, "PPP negotiation")
        elif kind == "LcpUp":
            self.peer_mru = getattr(ev, "peer_mru", None)
            log.info("LCP up: our MRU %s, peer's MRU %s", getattr(ev, "mru", "?"), self.peer_mru)
            board.add_event("lcp up", f"mru {getattr(ev, 'mru', '?')} peer mru {self.peer_mru}")
        elif kind == "Authenticated":
            self.authenticated = True
            method = getattr(ev, "method", None)
            self.auth_method = str(getattr(method, "label", method))
            log.info(
                "authenticated with %s%s",
                self.auth_method,
                f" (server name {ev.peer_name!r})" if getattr(ev, "peer_name", "") else "",
            )
            board.add_event("authenticated", self.auth_method)
        elif kind == "AuthFailed":
            reason = getattr(ev, "reason", "authentication failed")
            if getattr(ev, "bad_credentials", False):
                hint = "" if "user name" in reason else " (check the user name and password)"
                log.error("authentication failed: %s%s", reason, hint)
            else:
                log.warning("authentication failed: %s", reason)
            board.record_auth_failure(reason)
        elif kind == "EncryptionUp":
            mode = "stateful" if getattr(ev, "stateful", False) else "stateless"
            self.encryption = f"mppe-{getattr(ev, 'key_bits', '?')} {mode}"
            log.info("MPPE on: %s", self.encryption)
            board.add_event("mppe on", self.encryption)
        elif kind == "EncryptionOff":
            self.encryption = "none"
            log.warning("MPPE off: the tunnel is NOT encrypted")
            board.add_event("mppe off", "no encryption")
        elif kind == "LinkUp":
            self._link_up(ev, now)
        elif kind == "EchoRtt":
            board.record_echo(getattr(ev, "seconds", None))
        elif kind == "LinkDown":
            log.info("link down: %s", getattr(ev, "reason", ""))
            board.add_event("link down", str(getattr(ev, "reason", "")))
        elif kind in ("CallCleared", "ControlClosed"):
            log.info("%s", ev)
            board.add_event("call cleared" if kind == "CallCleared" else "control closed", str(ev))
            if getattr(ev, "error", False) or getattr(ev, "by_peer", False):
                board.record_error(str(ev))
        else:
            log.debug("%s: %s", kind, ev)

    def _link_up(self, ev: Any, now: float) -> None:
        s, tun, nc, stack = self.settings, self.tun, self.netconf, self.stack
        assert tun is not None and nc is not None and stack is not None and self.via is not None
        local, peer = ev.local_ip, ev.peer_ip
        # pppd with one ms-dns line hands it out as primary and secondary: keep each server once
        dns = tuple(dict.fromkeys(getattr(ev, "dns", ()) or ()))
        encryption = getattr(ev, "encryption", None) or self.encryption or "none"
        mppe_on = encryption not in ("none", "", None) and not str(encryption).startswith("none")
        log.info("IPCP up: local %s, peer %s, DNS %s", local, peer, ", ".join(map(str, dns)) or "none")
        board = self.board
        board.add_event("ipcp up", f"{local} <-> {peer}")
        try:
            mtu = tunnel_mtu(
                self.path_mtu,
                mppe=mppe_on,
                peer_mru=self.peer_mru,
                link_mtu=getattr(ev, "mtu", None),
                configured=s.mtu,
            )
            if mtu != tun.mtu:
                nc.set_mtu(tun.name, mtu)
            nc.add_point_to_point(tun.name, IPv4Address(local), IPv4Address(peer) if peer else None)
            tun.set_local_addresses([IPv4Address(local)])
            nc.add_server_host_route(self.server_ip, self.via)  # before any route moves into the tunnel
            routes = nc.route_through(tun.name, s.routes)
            if s.dns and dns:
                ResolvConf(self.resolv_conf).apply(
                    [IPv4Address(d) for d in dns], self.journal, interface=tun.name
                )
        except (NetConfError, OSError, ValueError) as exc:
            log.error("cannot configure the tunnel: %s", exc)
            self.failure = f"network setup failed: {exc}"
            stack.close(now, self.failure, grace=GOODBYE_GRACE)
            return
        self.up_at = now
        route_text = (
            "default (0.0.0.0/1 + 128.0.0.0/1)" if s.routes == "default" else ", ".join(map(str, routes))
        )
        log.info(
            "tunnel up on %s: %s -> %s, MTU %d, routes %s, encryption %s%s",
            tun.name,
            local,
            peer,
            mtu,
            route_text or "none",
            encryption,
            f", DNS {', '.join(map(str, dns))}" if s.dns and dns else "",
        )
        board.link_up(
            local_ip=local,
            peer_ip=peer,
            dns=dns,
            mtu=mtu,
            encryption=encryption,
            auth_method=self.auth_method,
        )
        board.record_echo(None)

    # -- counters -------------------------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        out: dict[str, int] = {
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "packets_in": self.packets_in,
            "packets_out": self.packets_out,
        }
        stack = self.stack
        if self.gre is not None:
            _flatten("gresock", self.gre.counters.as_dict(), out)
        if self.tun is not None:
            _flatten("tun", self.tun.counters.as_dict(), out)
        if stack is not None:
            _flatten("stack", asdict(stack.counters), out)
            _flatten("control", _as_dict(stack.control.counters), out)
            if stack.gre is not None:
                _flatten("gre", _as_dict(stack.gre.counters), out)
            if stack.link is not None:
                _flatten("link", _as_dict(getattr(stack.link, "counters", None)), out)
        return out

    def _publish(self) -> None:
        with contextlib.suppress(Exception):
            self.board.publish_counters(self.counters())


def _as_dict(obj: Any) -> dict[str, Any]:
    if obj is None:
        return {}
    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    if isinstance(obj, dict):
        return obj
    return {k: v for k, v in vars(obj).items() if not k.startswith("_")}


def _flatten(prefix: str, data: dict[str, Any], out: dict[str, int]) -> None:
    for key, value in data.items():
        if isinstance(value, dict):
            _flatten(key, value, out)  # nested counters (the reorder queue's) keep their own area name
        elif isinstance(value, int) and not isinstance(value, bool):
            out[f"{prefix}_{key}"] = value


def _permanent(exc: OSError) -> bool:
    return exc.errno in (errno.EPERM, errno.EACCES, errno.ENOENT)
