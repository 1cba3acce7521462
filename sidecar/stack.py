"""One PPTP session's three machines wired together, with no I/O: ControlConnection + GreSession +
PppLink. Used by :mod:`sidecar.tunnel` (client) and usable by the server's per-client session.

Rules: bytes in, bytes out, ``now`` in; no sockets, no trio, no clock, no logging. This file owns the
*order* of things - the GRE session exists once the call is established, PPP starts on top of it,
and a goodbye goes LCP Terminate-Request -> Call-Clear-Request (client) / Call-Disconnect-Notify
(server) -> Stop-Control-Connection-Request, each step waiting for its answer for a bounded time -
and the *outcome*: why the session ended, and whether it was bad credentials. It knows no role
except through the machines it is given.

Theory of operation:

- ``control_received`` / ``gre_received`` / ``send_ip`` / ``timeout`` feed the machines; what they
  produce is drained with ``control_to_send`` (TCP bytes), ``gre_to_send`` (GRE packets: PPP control
  frames and delayed acks) and ``events`` (every control and link event, in order, for the caller to
  log and publish). ``gre_received`` and ``timeout`` also return IP packets for the TUN device.
- A ``CallEstablished`` event creates the :class:`GreSession` and the link (``make_link``) and starts
  LCP. A ``LinkDown`` (peer's Terminate, echo loss, auth failure, our own close) starts the rest of
  the goodbye - once the link is done: if it sent LCP Terminate-Request itself, the call is cleared
  only after the Terminate-Ack (or the step's deadline). A real pptpd hangs up pppd on the
  Call-Clear-Request, so a clear that overtakes the Terminate-Request leaves pppd with only
  "Modem hangup". ``CallCleared`` / ``ControlClosed`` end it.
- The goodbye has a deadline per step (``close(grace=...)`` splits the budget): a peer that does not
  answer cannot hold the session; when the budget is spent, the stack reports :meth:`finished`.
- :attr:`outcome` is set by the *first* thing that ended the session; later steps of the goodbye do
  not overwrite it.
- Flow control (RFC 2637 §4.2): the GRE session paces by the peer's receive window (see
  :mod:`sidecar.proto.gre`); the stack hands it the window from the call setup and passes
  :meth:`send_room` / :meth:`window_stalled` through, counting the waits (``window_full``,
  ``window_stalls``).
- The calls a hallway makes after every batch (``gre_to_send``, ``control_pending``, ``events``,
  ``next_deadline``) return at once when nothing is pending (no list building, no byte copies).

MTU arithmetic (no fragmentation of GRE, ever) lives here too, see :func:`tunnel_mtu`.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from ipaddress import IPv4Address
from typing import Any, Protocol

from sidecar.proto.ackfilter import drop_superseded_acks
from sidecar.proto.gre import NO_WINDOW, GreSession
from sidecar.proto.gre import WINDOW_STALL as WINDOW_STALL  # re-exported: the hallway paces with it
from sidecar.proto.pptp import (
    CallCleared,
    CallEstablished,
    ControlClosed,
    ControlConfig,
    ControlConnection,
    Role,
)

# -- MTU arithmetic ----------------------------------------------------------------------------------
IP_HEADER = 20  # outer IPv4 header, no options
GRE_HEADER = 16  # enhanced GRE: 8 bytes + sequence 4 + acknowledgement 4 (RFC 2637 §4.1)
PPP_HEADER = 4  # address/control FF 03 (2) + protocol (2), worst case: no ACFC/PFC negotiated
MPPE_OVERHEAD = 4  # MPPE header (2, coherency count) + the inner protocol field (2) under 0x00FD
MIN_MTU = 576  # below this we refuse to run rather than produce a useless tunnel
EARLY_GRE_MAX = 16  # GRE packets kept while the call is being established


def max_mru(path_mtu: int) -> int:
    """The largest PPP information field whose GRE packet still fits the path MTU: our LCP MRU.

    path 1500: 1500 - 20 (IP) - 16 (GRE) - 4 (PPP) = 1460.
    """
    return path_mtu - IP_HEADER - GRE_HEADER - PPP_HEADER


def tunnel_mtu(
    path_mtu: int,
    *,
    mppe: bool = True,
    peer_mru: int | None = None,
    link_mtu: int | None = None,
    configured: int | None = None,
) -> int:
    """The TUN device's MTU: the largest IP packet that crosses the tunnel without fragmenting GRE.

    derived = path MTU - IP 20 - GRE 16 - PPP 4 - MPPE 4  (1500 -> 1456; 1456 + 44 = 1500)
    capped by the peer's MRU (minus MPPE 4: MPPE header and inner protocol count against the MRU),
    by the link's own figure (``LinkUp.mtu``) and by ``configured`` (``--mtu``): never above derived.
    """
    mppe_cost = MPPE_OVERHEAD if mppe else 0
    mtu = max_mru(path_mtu) - mppe_cost
    if peer_mru:
        mtu = min(mtu, peer_mru - mppe_cost)
    if link_mtu:
        mtu = min(mtu, link_mtu)
    if configured:
        mtu = min(mtu, configured)
    return mtu


# -- the session -------------------------------------------------------------------------------------
class LinkLike(Protocol):
    """What the stack needs from :class:`sidecar.proto.ppp.link.PppLink` (CONTRACTS.md)."""

    def start(self, now: float) -> None: ...
    def receive(self, frame: bytes, now: float) -> list[bytes]: ...
    def send_ip(self, packet: bytes, now: float) -> bytes | None: ...
    def frames_to_send(self) -> list[bytes]: ...
    def events(self) -> list[Any]: ...
    def close(self, now: float, reason: str) -> None: ...
    def timeout(self, now: float) -> None: ...
    def next_deadline(self) -> float | None: ...


class Step(enum.Enum):
    RUNNING = "running"
    LINK = "closing link"  # LCP Terminate-Request sent, waiting for LinkDown
    CALL = "clearing call"  # CCRQ / CDN sent, waiting for CallCleared
    STOP = "stopping control"  # StopCCRQ sent, waiting for ControlClosed
    DONE = "done"


@dataclass(frozen=True)
class Outcome:
    """Why the session ended: the first cause wins."""

    reason: str
    bad_credentials: bool = False
    by_peer: bool = False
    error: bool = False  # the peer went away / protocol error (as opposed to an orderly close)

    def __str__(self) -> str:
        return self.reason


@dataclass
class StackCounters:
    ip_out: int = 0  # IP packets handed to the link
    ip_out_dropped: int = 0  # the link refused them (not up, not IPv4/negotiated, MPPE not ready)
    ip_in: int = 0  # IP packets the link delivered
    gre_out: int = 0  # GRE packets produced (data, control frames, acks)
    window_full: int = 0  # times the peer's receive window was full (the caller waited for an ack)
    window_stalls: int = 0  # ... and no ack came within WINDOW_STALL (acks lost, or a peer that never acks)
    acks_superseded: int = 0  # pure TCP acks left out of a batch: a later one of theirs said more


class SessionStack:
    """See the module docstring. ``make_link`` builds the PppLink once the call is established."""

    def __init__(
        self,
        control: ControlConnection,
        make_link: Callable[[], LinkLike],
        *,
        reorder_window: int = 64,
        reorder_timeout: float = 0.1,
        ack_delay: float | None = None,
        ack_filter: bool = False,
    ) -> None:
        self.control = control
        self._make_link = make_link
        self.link: Any = None
        self.gre: GreSession | None = None
        self.outcome: Outcome | None = None
        self.step = Step.RUNNING
        self.counters = StackCounters()
        self.ack_filter = ack_filter  # sidecar.proto.ackfilter on every batch of send_ips
        self._reorder_window = reorder_window
        self._reorder_timeout = reorder_timeout
        self._ack_delay = ack_delay
        self._events: list[Any] = []
        self._gre_out: list[bytes] = []
        self._control_out = bytearray()
        self._reason = ""
        self._step_deadline: float | None = None
        self._link_down = False
        self._peer_ip: IPv4Address | None = None
        self._grace_steps = (0.8, 0.5, 0.5)  # LINK, CALL, STOP (seconds), set by close()
        self._early: list[bytes] = []  # GRE that arrived before the call was established
        # called with the new link before it starts (pcap export, the probe's observers); None = off
        self.on_link: Callable[[Any], None] | None = None

    # -- control channel --------------------------------------------------------------------------
    def start(self, now: float) -> None:
        self.control.start(now)
        self._control_events(self.control.timeout(now), now)

    def control_received(self, data: bytes, now: float) -> None:
        """Bytes from the TCP connection; ``b""`` = the peer closed it."""
        self._control_events(self.control.receive_data(data, now), now)

    def control_pending(self) -> bool:
        data = self.control.data_to_send()
        if data:
            self._control_out += data
        return bool(self._control_out)

    def control_to_send(self) -> bytes:
        self._control_out += self.control.data_to_send()
        out = bytes(self._control_out)
        self._control_out.clear()
        return out

    # -- data path --------------------------------------------------------------------------------
    def gre_received(self, packet: bytes, now: float) -> list[bytes]:
        """A GRE packet (IP header stripped) -> IP packets for the TUN device."""
        gre, link = self.gre, self.link
        if gre is None or link is None:
            # GRE can overtake the TCP Outgoing-Call-Reply: keep a few packets for the call to come
            if self.outcome is None and len(self._early) < EARLY_GRE_MAX:
                self._early.append(bytes(packet))
            return []
        out: list[bytes] = []
        for frame in gre.receive(packet, now):
            out += link.receive(frame, now)
        if out:
            # PPP (and MPPE, which a blind spoofer cannot satisfy) took a packet: a far jump of the
            # GRE sequence before it is real, not a spoofed burst (reorder.py, "unconfirmed").
            gre.reorder.confirm()
            self.counters.ip_in += len(out)
        return out

    def gre_received_batch(self, packets: Iterable[bytes], now: float) -> list[bytes]:
        """Several GRE packets, in arrival order -> the IP packets for the TUN device, as
        :meth:`gre_received` one by one would return them (the lookups are made once per batch)."""
        gre, link = self.gre, self.link
        out: list[bytes] = []
        if gre is None or link is None:
            for packet in packets:
                out += self.gre_received(packet, now)
            return out
        receive, link_receive, confirm = gre.receive, link.receive, gre.reorder.confirm
        for packet in packets:
            for frame in receive(packet, now):
                ips = link_receive(frame, now)
                if ips:
                    confirm()  # as in gre_received: PPP took it, a far jump before it is real
                    out += ips
        self.counters.ip_in += len(out)
        return out

    def send_ip(self, packet: bytes, now: float) -> list[bytes]:
        """An IP packet from the TUN device -> GRE packets to send (empty: dropped, counted)."""
        gre, link = self.gre, self.link
        if gre is None or link is None or self._link_down:
            self.counters.ip_out_dropped += 1
            return []
        frame = link.send_ip(packet, now)
        if frame is None:
            self.counters.ip_out_dropped += 1
            return []
        self.counters.ip_out += 1
        self.counters.gre_out += 1
        return [gre.send(frame, now)]

    def send_ips(self, packets: Sequence[bytes], now: float) -> tuple[list[bytes], int]:
        """A batch of IP packets from the TUN device -> (the GRE packets to send, one per packet the
        link took, in order; the size in bytes of the IP packets taken). With ``ack_filter`` the pure
        TCP acks a later one in the batch supersedes are left out first (counted in
        ``acks_superseded``, :mod:`sidecar.proto.ackfilter`); the link refuses the others, counted as
        :meth:`send_ip` counts them; counters move once per batch."""
        c = self.counters
        gre, link = self.gre, self.link
        if gre is None or link is None or self._link_down:
            c.ip_out_dropped += len(packets)
            return [], 0
        if self.ack_filter:
            kept = drop_superseded_acks(packets)
            c.acks_superseded += len(packets) - len(kept)
            packets = kept
        link_send, gre_send = link.send_ip, gre.send
        out: list[bytes] = []
        taken = 0
        for packet in packets:
            frame = link_send(packet, now)
            if frame is not None:
                out.append(gre_send(frame, now))
                taken += len(packet)
        n = len(out)
        c.ip_out += n
        c.gre_out += n
        c.ip_out_dropped += len(packets) - n
        return out, taken

    @property
    def peer_window(self) -> int:
        """The peer's Packet Receive Window Size the GRE session paces by; 0 = not paced."""
        return self.gre.peer_window if self.gre is not None else 0

    def send_room(self) -> int:
        """:meth:`GreSession.send_room` (:data:`NO_WINDOW` before the call); counts a full window."""
        gre = self.gre
        if gre is None:
            return NO_WINDOW
        room = gre.send_room()
        if room <= 0:
            self.counters.window_full += 1
        return room

    def window_stalled(self) -> None:
        """:meth:`GreSession.window_stalled`, counted: no ack came within :data:`WINDOW_STALL`."""
        if self.gre is not None:
            self.counters.window_stalls += 1
            self.gre.window_stalled()

    def gre_to_send(self, now: float) -> list[bytes]:
        """PPP control frames (wrapped in GRE) and anything else queued for the GRE socket."""
        out = self._gre_out
        frames = self.link.frames_to_send() if self.link is not None and self.gre is not None else None
        if not out and not frames:
            return []
        self._gre_out = []
        if frames:
            assert self.gre is not None
            send = self.gre.send
            out += [send(frame, now) for frame in frames]
        self.counters.gre_out += len(out)
        return out

    def set_peer_ip(self, addr: IPv4Address) -> None:
        """Server role: the address IPCP hands the peer (picked during authentication)."""
        self._peer_ip = addr
        if self.link is not None:
            self._apply_peer_ip()

    # -- events and timers ------------------------------------------------------------------------
    def events(self, now: float) -> list[Any]:
        """Every control and link event since the last call, in order."""
        self._link_events(now)
        out = self._events
        if not out:
            return []
        self._events = []
        return out

    def next_deadline(self) -> float | None:
        best = self.control.next_deadline()
        d = self._step_deadline
        if d is not None and (best is None or d < best):
            best = d
        if self.gre is not None:
            d = self.gre.next_deadline()
            if d is not None and (best is None or d < best):
                best = d
        if self.link is not None and not self._link_down:
            d = self.link.next_deadline()
            if d is not None and (best is None or d < best):
                best = d
        return best

    def timeout(self, now: float) -> tuple[list[bytes], list[bytes]]:
        """Run every due timer: (IP packets delivered, GRE packets to send)."""
        self._control_events(self.control.timeout(now), now)
        ips: list[bytes] = []
        if self.gre is not None and self.link is not None:
            frames, acks = self.gre.timeout(now)
            self._gre_out += acks
            for frame in frames:
                ips += self.link.receive(frame, now)
            if not self._link_down:
                self.link.timeout(now)
            self._link_events(now)
        if self._step_deadline is not None and now >= self._step_deadline:
            self._step_deadline = None
            self._advance(now)
        self.counters.ip_in += len(ips)
        return ips, self.gre_to_send(now)

    # -- ending -----------------------------------------------------------------------------------
    def close(self, now: float, reason: str, *, grace: float = 1.8) -> None:
        """Our goodbye (SIGTERM, shutdown): LCP Terminate-Request, then the call, then the control
        connection, all within ``grace`` seconds."""
        if self.outcome is None:
            self.outcome = Outcome(reason)
        if self.step is not Step.RUNNING:
            return
        self._grace_steps = (grace * 0.45, grace * 0.3, grace * 0.25)
        self._reason = reason
        if self.link is not None and not self._link_down:
            self.link.close(now, reason)
            self._enter(Step.LINK, now)
            self._link_events(now)
        else:
            self._clear_call(now)

    def finished(self) -> bool:
        """The session is over: flush what is left to send, then close the sockets."""
        return self.step is Step.DONE or self.control.closed

    # -- internals --------------------------------------------------------------------------------
    def _control_events(self, events: list[Any], now: float) -> None:
        for ev in events:
            self._events.append(ev)
            if isinstance(ev, CallEstablished) and self.link is None:
                kw: dict[str, Any] = {}
                if self._ack_delay is not None:
                    kw["ack_delay"] = self._ack_delay
                self.gre = GreSession(
                    ev.local_call_id,
                    ev.peer_call_id,
                    reorder_window=self._reorder_window,
                    reorder_timeout=self._reorder_timeout,
                    peer_window=int(getattr(ev, "peer_window", 0) or 0),
                    **kw,
                )
                self.link = self._make_link()
                if self.on_link is not None:
                    self.on_link(self.link)
                if self._peer_ip is not None:
                    self._apply_peer_ip()
                self.link.start(now)
                early, self._early = self._early, []
                for packet in early:  # the peer's first LCP packets, if they overtook the reply
                    for frame in self.gre.receive(packet, now):
                        self.link.receive(frame, now)
            elif isinstance(ev, CallCleared):
                self._link_down = True  # the call carried the link: it is gone with it
                self._set_outcome(Outcome(f"call cleared: {ev.reason}", by_peer=ev.by_peer, error=ev.by_peer))
                if self.step in (Step.RUNNING, Step.LINK, Step.CALL):
                    self._stop_control(now)
            elif isinstance(ev, ControlClosed):
                self._link_down = True
                self._set_outcome(
                    Outcome(f"control connection closed: {ev.reason}", by_peer=ev.by_peer, error=ev.error)
                )
                self.step = Step.DONE
                self._step_deadline = None

    def _link_events(self, now: float) -> None:
        if self.link is None:
            return
        for ev in self.link.events():
            self._events.append(ev)
            if type(ev).__name__ == "LinkDown" and not self._link_down:
                self._link_down = True
                bad = bool(getattr(ev, "bad_credentials", False))
                self._set_outcome(
                    Outcome(f"link down: {getattr(ev, 'reason', 'link down')}", bad_credentials=bad)
                )
                if self.step is Step.RUNNING and self._awaiting_terminate_ack():
                    self._enter(Step.LINK, now)  # the link went down by itself and said goodbye
        # The call is cleared only once the link is done: a Call-Clear-Request that overtakes the LCP
        # Terminate-Request makes the server (pptpd) hang up pppd before pppd has read it.
        if self._link_down and self.step in (Step.RUNNING, Step.LINK) and not self._awaiting_terminate_ack():
            self._clear_call(now)

    def _awaiting_terminate_ack(self) -> bool:
        """The link sent LCP Terminate-Request and waits for the Terminate-Ack (RFC 1661 state
        Closing, phase Terminate). A link without phases (a stand-in) reports LinkDown when done."""
        link = self.link
        phase = getattr(link, "phase", None)
        lcp_state = getattr(getattr(link, "lcp", None), "state", None)
        return getattr(phase, "name", "") == "TERMINATE" and getattr(lcp_state, "name", "") == "CLOSING"

    def _set_outcome(self, outcome: Outcome) -> None:
        if self.outcome is None or (
            outcome.bad_credentials and not self.outcome.bad_credentials and self.step is Step.RUNNING
        ):
            self.outcome = outcome

    def _enter(self, step: Step, now: float) -> None:
        self.step = step
        budget = {Step.LINK: 0, Step.CALL: 1, Step.STOP: 2}.get(step)
        self._step_deadline = None if budget is None else now + self._grace_steps[budget]

    def _clear_call(self, now: float) -> None:
        reason = self._reason or (self.outcome.reason if self.outcome else "closing")
        self._enter(Step.CALL, now)
        self._control_events(self.control.clear_call(now, reason), now)
        if self.control.closed:
            self.step = Step.DONE
            self._step_deadline = None

    def _stop_control(self, now: float) -> None:
        reason = self._reason or (self.outcome.reason if self.outcome else "closing")
        if self.step is Step.DONE:
            return
        self._enter(Step.STOP, now)
        self._control_events(self.control.stop(now, reason), now)
        if self.control.closed:
            self.step = Step.DONE
            self._step_deadline = None

    def _advance(self, now: float) -> None:
        """A goodbye step ran out of time: go on to the next one."""
        if self.step is Step.LINK:
            self._link_down = True
            self._clear_call(now)
        elif self.step is Step.CALL:
            self._stop_control(now)
        elif self.step is Step.STOP:
            self.step = Step.DONE

    def _apply_peer_ip(self) -> None:
        assign = getattr(self.link, "assign_peer_ip", None)
        if assign is not None:
            assign(self._peer_ip)
            return
        cfg = self.link.config
        try:
            cfg.peer_ip = self._peer_ip
        except AttributeError:  # a frozen config: swap it
            self.link.config = replace(cfg, peer_ip=self._peer_ip)


# -- the client's stack from its settings -----------------------------------------------------------
def client_stack(settings: Any, *, path_mtu: int = 1500, rng: random.Random | None = None) -> SessionStack:
    """The client (PNS + PPP peer) stack for :class:`sidecar.config.UpSettings`."""
    from sidecar.proto.ppp.link import LinkConfig, LinkRole, PppLink

    rng = rng if rng is not None else random.SystemRandom()
    control_config = ControlConfig(
        hostname="pptp-sidecar",
        echo_interval=settings.echo_interval,
        echo_timeout=settings.echo_timeout,
        call_timeout=max(5.0, float(settings.connect_timeout)),
        window=settings.gre_window,
    )
    control = ControlConnection(Role.CLIENT, control_config, rng)
    mru = min(1500, max_mru(path_mtu))

    def make_link() -> LinkLike:
        config = LinkConfig(
            mru=mru,
            auth_methods=tuple(settings.auth),
            username=settings.user,
            password=settings.password,
            mppe=settings.mppe,
            mppe_key_bits=frozenset(settings.mppe_key_bits),
            mppe_stateful=settings.mppe_stateful,
            echo_interval=settings.lcp_echo_interval,
            echo_failures=settings.lcp_echo_failures,
        )
        link: LinkLike = PppLink(LinkRole.PEER, config, rng)
        return link

    return SessionStack(
        control,
        make_link,
        reorder_window=settings.reorder_window,
        reorder_timeout=settings.reorder_timeout,
        ack_filter=settings.tcp_ack_filter,
    )
