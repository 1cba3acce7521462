"""One client of the embedded server: its control connection, its call, its PPP link, its address.

Rules: this is hallway code (like :mod:`sidecar.tunnel`, in the server role). It feeds what the
server's shared kernel objects read into this client's protocol machines and writes what they
return; it holds no protocol logic of its own. It never lets an exception out to the server: a bug
or bad input ends *this* client (logged with the reason) and nobody else. Passwords never leave the
:class:`~sidecar.proto.secret.Secret` the secrets table holds; the log names users, never secrets.

Theory of operation
-------------------
The server (:mod:`sidecar.server.main`) accepts the TCP connection and starts :meth:`ClientSession.run`
in its own task. Three things drive the session:

* the control stream, read by this session's reader task (PPTP control messages);
* GRE packets for this client's (address, call ID), read by the server's one GRE reader and handed
  over with :meth:`ClientSession.gre_received`;
* IP packets for this client's address, read by the server's one TUN reader and handed over with
  :meth:`ClientSession.ip_from_tun`.

Timers of all machines are served by one timer task per session that sleeps in a cancel scope whose
deadline is the machines' earliest one. After an input the scope's deadline is moved (earlier or
later) to the new earliest one, without waking the task: a GRE packet that makes an ack due in 10 ms
costs a deadline update, not a task switch, and an ack that rode on data leaves no stale wake-up
behind (it would land on the next ping's reply). Control bytes are written by a writer task (so the
synchronous GRE/TUN paths can queue control messages too).

Per-client phases, one log line each: connected, call established, authenticated as <user>,
MPPE on/off, address assigned, gone (with the reason).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Any, Protocol

import trio

from sidecar.server.ipcheck import Verdict, admit_from_client
from sidecar.server.misorder import DeliberateReorderer, is_data_packet
from sidecar.server.pool import AddressPool, PoolExhausted
from sidecar.server.secrets import SecretsTable
from sidecar.server.wiring import assign_peer_ip

if TYPE_CHECKING:
    from sidecar.proto.secret import Secret

log = logging.getLogger("sidecar.server")

SHUTDOWN_GRACE = 2.0  # seconds to let LCP terminate / Stop-Control-Connection finish when we end a client
CONTROL_READ = 65536
MIN_TIMER_STEP = 0.001


class GreSender(Protocol):
    def send(self, packet: bytes, dest: IPv4Address | None = None) -> bool: ...

    def send_batch(self, packets: Sequence[bytes], dest: IPv4Address | None = None) -> int: ...


class TunWriter(Protocol):
    def write(self, packet: bytes | bytearray | memoryview) -> bool: ...


@dataclass
class SessionCounters:
    ip_in: int = 0  # IP packets from the client written to the TUN device
    ip_in_bytes: int = 0
    ip_out: int = 0  # IP packets from the TUN device sent into the tunnel
    ip_out_bytes: int = 0
    ip_out_dropped: int = 0  # link not up / refused by the link
    spoofed: int = 0  # from the client with a source address that is not its own: dropped
    not_up: int = 0  # IP from the client before its address was assigned: dropped
    not_ipv4: int = 0
    truncated: int = 0
    internal_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class SessionHooks:
    """What a session needs from the server that owns it (kept narrow, so tests can stand in)."""

    gre: GreSender
    tun: TunWriter
    pool: AddressPool
    secrets: SecretsTable
    register_call: Callable[[ClientSession], None]  # demux (peer, our call id) -> session
    address_up: Callable[[ClientSession], None]  # route + by-address map
    gone: Callable[[ClientSession], None]  # unregister everything
    reorder_rng: random.Random | None = None
    test_reorder: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class ClientSession:
    """See the module docstring."""

    def __init__(
        self,
        number: int,
        peer: IPv4Address,
        stream: trio.abc.Stream,
        stack: Any,
        hooks: SessionHooks,
    ) -> None:
        self.number = number
        self.peer = peer
        self.stream = stream
        self.stack = stack
        self.hooks = hooks
        self.tag = f"client {number} ({peer})"
        self.user: str | None = None
        self.address: IPv4Address | None = None
        self.address_packed = b""
        self.up = False
        self.mtu: int | None = None  # the link's IP MTU (LinkUp.mtu): the client's host route carries it
        self.local_call_id: int | None = None
        self.peer_call_id: int | None = None
        self.registered = False
        self.ended = False
        self.end_reason = ""
        self.counters = SessionCounters()
        self.started = trio.current_time()
        self._control_dirty = trio.Event()
        self._timer_scope: trio.CancelScope | None = None  # the sleeping timer's; None while it runs
        self._closing = False
        self._done = trio.Event()
        self._scope: trio.CancelScope | None = None
        self._send_lock = trio.Lock()
        self.reorderer: DeliberateReorderer | None = None
        if hooks.test_reorder > 0 and hooks.reorder_rng is not None:
            self.reorderer = DeliberateReorderer(hooks.test_reorder, hooks.reorder_rng)

    # -- address assignment (called by the link's secret lookup, during authentication) -----------
    def lookup_secret(self, user: str) -> Secret | None:
        """The authenticator asks for ``user``'s secret. We also pick the address here, so IPCP
        (which starts right after authentication) offers the right one."""
        entry = self.hooks.secrets.find(user)
        if entry is None:
            log.warning("%s: unknown user %r (no entry in %s)", self.tag, user, self.hooks.secrets.source)
            return None
        if self.address is not None and self.user != user:
            self._release_address()
        if self.address is None:
            try:
                addr = self.hooks.pool.acquire(
                    f"{user}@{self.peer}",
                    fixed=entry.fixed_address,
                    allowed=entry.allows if entry.addresses else None,
                )
            except PoolExhausted as exc:
                log.warning("%s: no address for user %r: %s", self.tag, user, exc)
                return None
            self.address = addr
            self.address_packed = addr.packed
            assign_peer_ip(self.stack, addr)
        self.user = user
        return entry.secret

    def _release_address(self) -> None:
        if self.address is not None:
            self.hooks.pool.release(self.address)
            self.address = None
            self.address_packed = b""

    # -- inputs from the server's shared readers --------------------------------------------------
    def gre_received(self, packet: bytes, now: float) -> None:
        """One GRE packet from this client, handled at once (outputs, events and timer included)."""
        self.gre_batch((packet,), now)
        self.end_of_batch(now)

    def gre_batch(self, packets: Sequence[bytes], now: float, tun_out: list[bytes] | None = None) -> None:
        """GRE packets from this client, in order (the server's GRE reader, per batch). The IP
        packets in them that pass the source check go to ``tun_out`` (the server writes a batch's
        packets together) or, with None, straight to the TUN device. While the link is up, the
        machines' outputs, events and timer are left to :meth:`end_of_batch` (recomputing every
        deadline after every packet cost 6-10 % of the server's CPU); before, each packet's are
        handled at once (the link coming up is an event)."""
        if self.ended:
            return
        try:
            if self.up:
                ips = self.stack.gre_received_batch(packets, now)
                if ips:
                    self._to_tun(ips, tun_out)
            else:
                receive = self.stack.gre_received
                for packet in packets:
                    ips = receive(packet, now)
                    if ips:
                        self._to_tun(ips, tun_out)
                    self._after_input(now)
        except Exception as exc:  # one client's bug never reaches the others
            self._internal_error("GRE input", exc)

    def ip_batch(self, packets: Sequence[bytes], now: float) -> None:
        """IP packets from the TUN device for this client, in order (the server's TUN reader, per
        batch); outputs, events and timer as in :meth:`gre_batch`."""
        if self.ended:
            return
        sent = sent_bytes = dropped = 0
        try:
            if self.up:
                stack_counters = self.stack.counters
                superseded = stack_counters.acks_superseded
                frames, sent_bytes = self.stack.send_ips(packets, now)
                sent = len(frames)
                # acks the filter left out were not refused: they are counted as superseded
                dropped = len(packets) - sent - (stack_counters.acks_superseded - superseded)
                if frames:
                    self._send_gre(frames, now)
            else:
                send_ip = self.stack.send_ip
                for packet in packets:
                    frames = send_ip(packet, now)
                    if frames:
                        sent += 1
                        sent_bytes += len(packet)
                        self._send_gre(frames, now)
                    else:
                        dropped += 1
                    self._after_input(now)
        except Exception as exc:
            self._internal_error("TUN input", exc)
        finally:
            c = self.counters
            c.ip_out += sent
            c.ip_out_bytes += sent_bytes
            c.ip_out_dropped += dropped

    def end_of_batch(self, now: float) -> None:
        """After a batch of inputs: drain outputs and events once, re-arm the timer."""
        if self.ended:
            return
        try:
            self._after_input(now)
        except Exception as exc:
            self._internal_error("input", exc)

    def _to_tun(self, packets: list[bytes], out: list[bytes] | None = None) -> None:
        """IP packets out of this client's tunnel: those with its own source address to ``out``
        (written by the server with its batch) or, with None, straight to the TUN device; the
        others dropped and counted."""
        c = self.counters
        if not self.up:
            c.not_up += len(packets)
            return
        admitted: list[bytes] = []
        for verdict in admit_from_client(packets, self.address_packed, admitted):
            if verdict is Verdict.SPOOFED:
                c.spoofed += 1
            elif verdict is Verdict.NOT_IPV4:
                c.not_ipv4 += 1
            else:
                c.truncated += 1
        if out is None:
            write = self.hooks.tun.write
            admitted = [packet for packet in admitted if write(packet)]
        else:
            out += admitted
        c.ip_in += len(admitted)
        c.ip_in_bytes += sum(map(len, admitted))

    def _send_gre(self, packets: list[bytes], now: float) -> None:
        gre, peer, reorderer = self.hooks.gre, self.peer, self.reorderer
        if reorderer is None:
            gre.send_batch(packets, peer)
            return
        for packet in packets:
            if is_data_packet(packet):
                for out in reorderer.send(packet, now):
                    gre.send(out, peer)
            else:
                gre.send(packet, peer)

    # -- the machines' outputs and events ----------------------------------------------------------
    def _after_input(self, now: float) -> None:
        """Drain what the machines want to send, handle their events, re-arm the timer."""
        out = self.stack.gre_to_send(now)
        if out:
            self._send_gre(out, now)
        if self.stack.control_pending():
            self._control_dirty.set()
        for event in self.stack.events(now):
            self._handle(event, now)
        self._rearm()

    def _rearm(self) -> None:
        """Move the sleeping timer's deadline to the machines' earliest one (no task switch; the
        timer, while it runs, recomputes its own). A due ack (ACK_EVERY packets owed) fires it at
        once: the peer's send window waits for it. Only the timer's own loop keeps MIN_TIMER_STEP
        between runs, so a machine that keeps reporting a past deadline fires it once per input."""
        scope = self._timer_scope
        if scope is None:
            return
        if self._closing:
            scope.cancel()  # the timer task owns the goodbye's deadline: let it recompute
            return
        deadline = self._next_deadline()
        if deadline != scope.deadline:
            scope.deadline = deadline

    def _poke(self) -> None:
        """Wake the timer task now (the session is ending)."""
        if self._timer_scope is not None:
            self._timer_scope.cancel()

    def _next_deadline(self) -> float:
        d = self.stack.next_deadline()
        best = math.inf if d is None else d
        if self.reorderer is not None:
            r = self.reorderer.next_deadline()
            if r is not None and r < best:
                best = r
        return best

    def _handle(self, event: Any, now: float) -> None:
        kind = type(event).__name__
        if kind == "CallEstablished":
            self.local_call_id = event.local_call_id
            self.peer_call_id = event.peer_call_id
            try:
                self.hooks.register_call(self)
            except KeyError:
                self._finish(f"call ID {event.local_call_id} from {self.peer} is already in use")
                return
            self.registered = True
            log.info(
                "%s: call established (call IDs: ours %d, theirs %d)",
                self.tag,
                event.local_call_id,
                event.peer_call_id,
            )
        elif kind == "Authenticated":
            log.info("%s: authenticated as %r (%s)", self.tag, event.peer_name, _label(event.method))
        elif kind == "AuthFailed":
            log.warning("%s: authentication failed: %s", self.tag, event.reason)
        elif kind == "EncryptionUp":
            mode = "stateful" if event.stateful else "stateless"
            log.info("%s: MPPE on (%d-bit, %s)", self.tag, event.key_bits, mode)
        elif kind == "EncryptionOff":
            log.info("%s: MPPE off (no encryption)", self.tag)
        elif kind == "LinkUp":
            if self.address is None or event.peer_ip != self.address:
                self._finish(f"link came up with address {event.peer_ip}, expected {self.address}")
                return
            self.up = True
            self.mtu = event.mtu
            try:
                self.hooks.address_up(self)
            except Exception as exc:
                self._finish(f"cannot route {self.address}: {exc}")
                return
            dns = ", ".join(str(d) for d in event.dns) or "none"
            log.info("%s: address assigned %s (user %r, DNS %s)", self.tag, self.address, self.user, dns)
        elif kind == "LinkDown":
            self.up = False
            self._finish(f"link down: {event.reason}")
        elif kind == "CallCleared":
            self._finish(f"call cleared{' by the client' if event.by_peer else ''}: {event.reason}")
        elif kind == "ControlClosed":
            self._finish(
                f"control connection closed{' by the client' if event.by_peer else ''}: {event.reason}"
            )
            self._poke()
        elif kind == "EchoRtt" or kind == "EchoAnswered":
            pass
        else:
            log.debug("%s: %s", self.tag, event)

    # -- ending -------------------------------------------------------------------------------------
    def _finish(self, reason: str) -> None:
        """Begin the orderly end: LCP terminate, Call-Disconnect-Notify, Stop-Control-Connection."""
        if not self.end_reason:
            self.end_reason = reason
        if self._closing:
            return
        self._closing = True
        now = trio.current_time()
        try:
            self.stack.close(now, reason)
            out = self.stack.gre_to_send(now)
            if out:
                self._send_gre(out, now)
        except Exception as exc:
            self.counters.internal_errors += 1
            log.error("%s: error while closing: %s", self.tag, exc)
        self._control_dirty.set()
        self._poke()

    def shutdown(self, reason: str) -> None:
        """Server-initiated end (SIGTERM, the server going away)."""
        self._finish(reason)

    def kill(self, reason: str) -> None:
        """End now, without the goodbye (the peer is gone or misbehaving)."""
        if not self.end_reason:
            self.end_reason = reason
        self._closing = True
        if self._scope is not None:
            self._scope.cancel()

    def _internal_error(self, where: str, exc: BaseException) -> None:
        self.counters.internal_errors += 1
        log.error(
            "%s: internal error in %s: %s: %s (ending this client)", self.tag, where, type(exc).__name__, exc
        )
        self.kill(f"internal error in {where}")

    # -- the session's own tasks -----------------------------------------------------------------
    async def run(self) -> None:
        """Run until the client goes; always unregisters and returns the address."""
        log.info("%s: connected", self.tag)
        try:
            now = trio.current_time()
            self.stack.start(now)
            with trio.CancelScope() as scope:
                self._scope = scope
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._reader, nursery.cancel_scope)
                    nursery.start_soon(self._writer)
                    nursery.start_soon(self._timer, nursery.cancel_scope)
                    self._after_input(now)
        except Exception as exc:
            self.counters.internal_errors += 1
            log.error("%s: internal error: %s: %s", self.tag, type(exc).__name__, exc)
            if not self.end_reason:
                self.end_reason = f"internal error: {type(exc).__name__}"
        finally:
            self.ended = True
            self._release_address()
            with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                await self.stream.aclose()
            self.hooks.gone(self)
            duration = trio.current_time() - self.started
            log.info(
                "%s: gone after %.1f s%s: %s (in %d packets / %d bytes, out %d / %d, spoofed %d)",
                self.tag,
                duration,
                f" (user {self.user!r})" if self.user else "",
                self.end_reason or "ended",
                self.counters.ip_in,
                self.counters.ip_in_bytes,
                self.counters.ip_out,
                self.counters.ip_out_bytes,
                self.counters.spoofed,
            )
            self._done.set()

    async def wait_done(self) -> None:
        await self._done.wait()

    async def _reader(self, cancel: trio.CancelScope) -> None:
        while True:
            try:
                data = await self.stream.receive_some(CONTROL_READ)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self.end_reason = self.end_reason or f"control connection lost: {exc}"
                cancel.cancel()
                return
            if not data:
                self.end_reason = self.end_reason or "control connection closed by the client"
                cancel.cancel()
                return
            now = trio.current_time()
            try:
                self.stack.control_received(data, now)
                self._after_input(now)
            except Exception as exc:
                self._internal_error("control input", exc)
                return

    async def _writer(self) -> None:
        while True:
            await self._control_dirty.wait()
            self._control_dirty = trio.Event()
            async with self._send_lock:  # one sender at a time: the closing flush sends too
                data = self.stack.control_to_send()
                if data:
                    try:
                        await self.stream.send_all(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                        self.end_reason = self.end_reason or f"control connection lost: {exc}"
                        self.kill(self.end_reason)
                        return

    async def _timer(self, cancel: trio.CancelScope) -> None:
        closing_since: float | None = None
        last_fired = -math.inf
        while True:
            # a machine that reports a deadline it does not clear must not spin this loop
            deadline = max(self._next_deadline(), last_fired + MIN_TIMER_STEP)
            if self._closing:
                now = trio.current_time()
                if closing_since is None:
                    closing_since = now
                if self.stack.finished() or now - closing_since >= SHUTDOWN_GRACE:
                    # let the writer flush what is queued, briefly
                    await self._flush_control()
                    cancel.cancel()
                    return
                deadline = min(deadline, closing_since + SHUTDOWN_GRACE)
            with trio.CancelScope(deadline=deadline) as scope:
                self._timer_scope = scope  # inputs move its deadline (_rearm) or cancel it (_poke)
                await trio.sleep_forever()
            self._timer_scope = None
            now = trio.current_time()
            last_fired = now
            try:
                ips, out = self.stack.timeout(now)
                if ips:
                    self._to_tun(ips)
                if out:
                    self._send_gre(out, now)
                if self.reorderer is not None:
                    for packet in self.reorderer.timeout(now):
                        self.hooks.gre.send(packet, self.peer)
                self._after_input(now)
            except Exception as exc:
                self._internal_error("timer", exc)
                return

    async def _flush_control(self) -> None:
        with trio.move_on_after(0.5):
            async with self._send_lock:  # after the writer's send in progress, never beside it
                data = self.stack.control_to_send()
                if data:
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        await self.stream.send_all(data)

    def counter_dict(self) -> dict[str, int]:
        """Flat ``<area>_<name>`` counters of this client (for the server's status board)."""
        out = {f"session_{k}": v for k, v in self.counters.as_dict().items()}
        gre = getattr(self.stack, "gre", None)
        if gre is not None:
            _flatten("gre", asdict(gre.counters), out)
        control = getattr(self.stack, "control", None)
        if control is not None:
            _flatten("control", asdict(control.counters), out)
        stack_counters = getattr(self.stack, "counters", None)
        if stack_counters is not None:
            _flatten("stack", asdict(stack_counters), out)
        if self.reorderer is not None:
            _flatten("misorder", asdict(self.reorderer.counters), out)
        return out

    def snapshot(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "peer": str(self.peer),
            "user": self.user,
            "address": str(self.address) if self.address else None,
            "up": self.up,
            "since": self.started,
            **self.counters.as_dict(),
        }


def _flatten(prefix: str, data: dict[str, Any], out: dict[str, int]) -> None:
    for key, value in data.items():
        if isinstance(value, dict):
            # nested counters (the GRE session's reorder queue) keep their own area name
            _flatten(key, value, out)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[f"{prefix}_{key}"] = int(value)


def _label(method: Any) -> str:
    return str(getattr(method, "label", method))
