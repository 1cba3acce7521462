"""The server-role wiring of one client's three machines (no I/O): ControlConnection(SERVER),
GreSession (made when the call is established), PppLink(AUTHENTICATOR).

Rules: bytes in, bytes out, no sockets, no trio. This is the server's counterpart of
:mod:`sidecar.stack`; it keeps the order of a goodbye (LCP Terminate, then Call-Disconnect-Notify,
then Stop-Control-Connection-Request) and hands the session only IP packets, GRE packets, control
bytes and events.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Any

from sidecar.proto.gre import GreSession
from sidecar.proto.pptp import CallEstablished, ControlClosed, ControlConfig, ControlConnection, Role
from sidecar.proto.reorder import DEFAULT_REORDER_TIMEOUT, DEFAULT_REORDER_WINDOW

if TYPE_CHECKING:
    from sidecar.config import ServeSettings

REORDER_WINDOW = DEFAULT_REORDER_WINDOW
REORDER_TIMEOUT = DEFAULT_REORDER_TIMEOUT


class ServerStack:
    def __init__(
        self,
        control: ControlConnection,
        make_link: Callable[[], Any],
        *,
        reorder_window: int = REORDER_WINDOW,
        reorder_timeout: float = REORDER_TIMEOUT,
    ) -> None:
        self.control = control
        self._make_link = make_link
        self.link: Any = None
        self.gre: GreSession | None = None
        self._events: list[Any] = []
        self._control_out = bytearray()
        self._reorder_window = reorder_window
        self._reorder_timeout = reorder_timeout
        self._peer_ip: IPv4Address | None = None
        self._closing = False
        self._link_down = False
        self._stopped = False

    # -- control --------------------------------------------------------------------------------
    def start(self, now: float) -> None:
        self.control.start(now)
        self._control_events(self.control.timeout(now), now)

    def control_received(self, data: bytes, now: float) -> None:
        self._control_events(self.control.receive_data(data, now), now)

    def control_pending(self) -> bool:
        self._control_out += self.control.data_to_send()
        return bool(self._control_out)

    def control_to_send(self) -> bytes:
        self._control_out += self.control.data_to_send()
        out = bytes(self._control_out)
        self._control_out.clear()
        return out

    def _control_events(self, events: list[Any], now: float) -> None:
        for ev in events:
            self._events.append(ev)
            if isinstance(ev, CallEstablished) and self.link is None:
                self.gre = GreSession(
                    ev.local_call_id,
                    ev.peer_call_id,
                    reorder_window=self._reorder_window,
                    reorder_timeout=self._reorder_timeout,
                )
                self.link = self._make_link()
                if self._peer_ip is not None:
                    self._apply_peer_ip()
                self.link.start(now)
            elif isinstance(ev, ControlClosed):
                self._stopped = True
                if self.link is not None and not self._link_down:
                    # the control connection is gone: the call with it; end PPP quietly
                    self._link_down = True

    # -- address ----------------------------------------------------------------------------------
    def set_peer_ip(self, addr: IPv4Address) -> None:
        self._peer_ip = addr
        if self.link is not None:
            self._apply_peer_ip()

    def _apply_peer_ip(self) -> None:
        cfg = self.link.config
        try:
            cfg.peer_ip = self._peer_ip
        except AttributeError:  # a frozen config: swap it
            self.link.config = replace(cfg, peer_ip=self._peer_ip)

    # -- data -------------------------------------------------------------------------------------
    def gre_received(self, packet: bytes, now: float) -> list[bytes]:
        if self.gre is None or self.link is None:
            return []
        out: list[bytes] = []
        for frame in self.gre.receive(packet, now):
            out += self.link.receive(frame, now)
        self._after_link(now)
        return out

    def send_ip(self, packet: bytes, now: float) -> list[bytes]:
        if self.gre is None or self.link is None:
            return []
        frame = self.link.send_ip(packet, now)
        if frame is None:
            return []
        return [self.gre.send(frame, now)]

    def gre_to_send(self, now: float) -> list[bytes]:
        if self.gre is None or self.link is None:
            return []
        gre = self.gre
        return [gre.send(frame, now) for frame in self.link.frames_to_send()]

    def events(self, now: float) -> list[Any]:
        if self.link is not None:
            for ev in self.link.events():
                self._events.append(ev)
                if type(ev).__name__ == "LinkDown":
                    self._link_down = True
                    self._goodbye(now, getattr(ev, "reason", "link down"))
        out, self._events = self._events, []
        return out

    def _after_link(self, now: float) -> None:
        pass

    # -- timers -----------------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        ds = [self.control.next_deadline()]
        if self.gre is not None:
            ds.append(self.gre.next_deadline())
        if self.link is not None and not self._link_down:
            ds.append(self.link.next_deadline())
        present = [d for d in ds if d is not None]
        return min(present) if present else None

    def timeout(self, now: float) -> tuple[list[bytes], list[bytes]]:
        """(IP packets delivered, GRE packets to send)."""
        self._control_events(self.control.timeout(now), now)
        ips: list[bytes] = []
        packets: list[bytes] = []
        if self.gre is not None and self.link is not None:
            frames, acks = self.gre.timeout(now)
            packets += acks
            for frame in frames:
                ips += self.link.receive(frame, now)
            if not self._link_down:
                self.link.timeout(now)
            packets += self.gre_to_send(now)
        return ips, packets

    # -- ending -----------------------------------------------------------------------------------
    def close(self, now: float, reason: str) -> None:
        """Start the goodbye: LCP Terminate-Request first if the link is alive, else straight to
        Call-Disconnect-Notify and Stop-Control-Connection-Request."""
        if self._closing:
            return
        self._closing = True
        if self.link is not None and not self._link_down and not self._stopped:
            self.link.close(now, reason)
        else:
            self._goodbye(now, reason)

    def _goodbye(self, now: float, reason: str) -> None:
        if self._stopped:
            return
        self._events += self.control.clear_call(now, reason)
        self._events += self.control.stop(now, reason)

    def finished(self) -> bool:
        return self.control.closed


def stack_factory(settings: ServeSettings) -> Callable[[Any, Callable[[str], Any]], ServerStack]:
    """Build the per-client stack from the server's settings."""
    from sidecar.proto.ppp.link import LinkConfig, LinkRole, PppLink

    control_config = ControlConfig(
        hostname="pptp-sidecar",
        echo_interval=settings.echo_interval,
        echo_timeout=settings.echo_timeout,
    )

    def make(_session: Any, lookup: Callable[[str], Any]) -> ServerStack:
        rng = random.SystemRandom()
        control = ControlConnection(Role.SERVER, control_config, rng)

        def make_link() -> Any:
            config = LinkConfig(
                auth_methods=tuple(settings.auth),
                lookup_secret=lookup,
                mppe=settings.mppe,
                mppe_key_bits=frozenset(settings.mppe_key_bits),
                mppe_stateful=settings.mppe_stateful,
                local_ip=settings.local_ip,
                peer_ip=None,
                dns=tuple(settings.dns),
                echo_interval=settings.lcp_echo_interval,
                echo_failures=settings.lcp_echo_failures,
            )
            return PppLink(LinkRole.AUTHENTICATOR, config, rng)

        return ServerStack(control, make_link)

    return make
