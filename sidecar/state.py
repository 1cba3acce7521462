"""The status board: what the running process knows about itself, in one place.

Rules: the supervisor and the session (client) or the server write it; ``sidecar.observe`` (the
``/healthz``, ``/readyz``, ``/status`` and ``/metrics`` endpoints) only reads it, through
:meth:`StatusBoard.snapshot` and the two verdicts :meth:`StatusBoard.alive` and
:meth:`StatusBoard.ready`. It is plain data: no I/O, no locking (everything runs in one trio thread),
and it never holds a secret.

Theory of operation:

- ``state`` is one of :class:`State`; :meth:`set_state` records it with the time it changed and adds a
  timeline entry.
- The handshake timeline is a bounded list of ``(monotonic time, phase, detail)`` (``add_event``):
  "tcp connected", "control connected", "lcp up", "authenticated", "ccp up", "ipcp up"...
- The supervisor calls :meth:`beat` at least every few seconds while it is alive (``/healthz`` fails
  when the last beat is older than ``heartbeat_timeout``).
- Counters: the session publishes its own counters as a flat ``dict[str, int]`` of absolute values
  for the current session (:meth:`publish_counters`). :meth:`begin_session` folds the previous
  session's values into a running total, so the exported counters only grow across reconnects.
  Key names are ``<area>_<name>`` (``gre_rx``, ``reorder_late``, ``link_...``); the data-plane totals
  use the fixed keys in :data:`TRAFFIC_KEYS`.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# IP traffic through the tunnel; "in" = from the peer to the TUN device, "out" = from the TUN device
# to the peer.
TRAFFIC_KEYS = ("bytes_in", "bytes_out", "packets_in", "packets_out")

TIMELINE_MAX = 200


class State(enum.Enum):
    STARTING = "starting"
    CONNECTING = "connecting"
    AUTHENTICATING = "authenticating"
    UP = "up"
    RECONNECTING = "reconnecting"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(frozen=True)
class TimelineEntry:
    t: float  # monotonic seconds (the board's clock)
    phase: str
    detail: str = ""


class StatusBoard:
    """Read-mostly status of one client (or server) process. See the module docstring."""

    def __init__(
        self,
        *,
        role: str = "client",
        server: str = "",
        interface: str = "",
        echo_interval: float = 10.0,
        heartbeat_timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._wall = wall_clock
        now = clock()
        self.role = role
        self.server = server
        self.interface = interface
        # LCP echo interval of the session: readiness wants an echo reply within 3 x this.
        self.echo_interval = echo_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.started_at = now
        self.started_at_wall = self._wall()

        self.state = State.STARTING
        self.state_since = now
        self.timeline: deque[TimelineEntry] = deque(maxlen=TIMELINE_MAX)
        self.heartbeat: float = now

        # Link facts (cleared by begin_session).
        self.local_ip: str | None = None
        self.peer_ip: str | None = None
        self.dns: tuple[str, ...] = ()
        self.mtu: int | None = None
        self.encryption: str | None = None  # "mppe-128 stateless", "none", ...
        self.auth_method: str | None = None
        self.up_since: float | None = None
        self.up_since_wall: float | None = None
        self.last_echo_reply: float | None = None
        self.echo_rtt: float | None = None

        # Process-wide tallies.
        self.sessions = 0
        self.reconnects = 0
        self.auth_failures = 0
        self.last_error: str | None = None
        self.extra: dict[str, Any] = {}  # free-form JSON-safe facts (server: client list, ...)

        self._session_counters: dict[str, int] = {}
        self._base_counters: dict[str, int] = {}
        # Set by whoever owns live counters (the tunnel of the current session, the server): readers
        # call :meth:`refresh` first, so /status and /metrics show the state of now, not of the last
        # periodic publication.
        self.refresher: Callable[[], None] | None = None

    # -- writers ------------------------------------------------------------------------------------
    def now(self) -> float:
        return self._clock()

    def set_state(self, state: State, detail: str = "") -> None:
        now = self._clock()
        if state is not self.state:
            self.state = state
            self.state_since = now
        if state is State.UP and self.up_since is None:
            self.up_since = now
            self.up_since_wall = self._wall()
        elif state is not State.UP:
            self.up_since = None
            self.up_since_wall = None
        self.timeline.append(TimelineEntry(now, state.value, detail))

    def add_event(self, phase: str, detail: str = "") -> None:
        """One handshake timeline entry (``phase`` is a short fixed name, ``detail`` free text)."""
        self.timeline.append(TimelineEntry(self._clock(), phase, detail))

    def beat(self) -> None:
        """The supervisor is alive."""
        self.heartbeat = self._clock()

    def begin_session(self) -> None:
        """A new session starts: fold the old session's counters into the totals, clear link facts."""
        for key, value in self._session_counters.items():
            self._base_counters[key] = self._base_counters.get(key, 0) + value
        self._session_counters = {}
        self.sessions += 1
        self.local_ip = self.peer_ip = None
        self.dns = ()
        self.mtu = None
        self.encryption = None
        self.auth_method = None
        self.up_since = self.up_since_wall = None
        self.last_echo_reply = None
        self.echo_rtt = None

    def link_up(
        self,
        *,
        local_ip: object,
        peer_ip: object,
        dns: Iterable[object] = (),
        mtu: int | None = None,
        encryption: str | None = None,
        auth_method: str | None = None,
    ) -> None:
        """Record the negotiated link (addresses may be ``IPv4Address`` or ``str``) and go UP."""
        self.local_ip = None if local_ip is None else str(local_ip)
        self.peer_ip = None if peer_ip is None else str(peer_ip)
        self.dns = tuple(str(d) for d in dns)
        self.mtu = mtu
        self.encryption = encryption
        if auth_method is not None:
            self.auth_method = auth_method
        self.set_state(State.UP, f"{self.local_ip} <-> {self.peer_ip}")

    def record_echo(self, rtt: float | None = None) -> None:
        """The peer answered an LCP Echo-Request (``rtt`` in seconds when known)."""
        self.last_echo_reply = self._clock()
        if rtt is not None:
            self.echo_rtt = rtt

    def record_reconnect(self, reason: str = "") -> None:
        self.reconnects += 1
        self.set_state(State.RECONNECTING, reason)

    def record_auth_failure(self, reason: str = "") -> None:
        self.auth_failures += 1
        self.last_error = reason or "authentication failed"
        self.add_event("auth failed", reason)

    def record_error(self, reason: str) -> None:
        self.last_error = reason
        self.add_event("error", reason)

    def publish_counters(self, counters: Mapping[str, int]) -> None:
        """Absolute values for the current session (replaces the previous publication)."""
        self._session_counters = {str(k): int(v) for k, v in counters.items()}

    # -- readers ------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Pull fresh counters from the owner, if one is attached. Never raises: a reader is served
        what was last published instead."""
        refresher = self.refresher
        if refresher is None:
            return
        try:
            refresher()
        except Exception:  # a status read must not take the process down
            log.debug("status refresh failed", exc_info=True)

    @property
    def counters(self) -> dict[str, int]:
        """Totals across sessions: earlier sessions plus the current one."""
        out = dict(self._base_counters)
        for key, value in self._session_counters.items():
            out[key] = out.get(key, 0) + value
        return out

    def last_sign_of_life(self) -> float | None:
        """When the peer last proved it is there: an echo reply, or the link coming up."""
        marks = [t for t in (self.last_echo_reply, self.up_since) if t is not None]
        return max(marks) if marks else None

    def alive(self) -> tuple[bool, str]:
        """Liveness: the supervisor beats and has not given up."""
        age = self._clock() - self.heartbeat
        if self.state is State.FAILED:
            return False, f"failed: {self.last_error or 'gave up'}"
        if age > self.heartbeat_timeout:
            return False, f"supervisor heartbeat is {age:.1f}s old (limit {self.heartbeat_timeout:g}s)"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        """Readiness: the tunnel is up and the peer answered an LCP echo within 3 x echo interval."""
        if self.state is not State.UP:
            return False, f"tunnel is {self.state.value}"
        mark = self.last_sign_of_life()
        limit = 3 * self.echo_interval
        if mark is None:
            return False, "no sign of life from the peer yet"
        age = self._clock() - mark
        if age > limit:
            return False, f"last LCP echo reply {age:.1f}s ago (limit {limit:g}s)"
        return True, "ok"

    def snapshot(self) -> dict[str, Any]:
        """Everything above as JSON-serialisable data (no secrets are ever held here)."""
        now = self._clock()

        def age(t: float | None) -> float | None:
            return None if t is None else round(now - t, 3)

        alive, alive_why = self.alive()
        ready, ready_why = self.ready()
        return {
            "role": self.role,
            "state": self.state.value,
            "state_age_s": age(self.state_since),
            "server": self.server,
            "interface": self.interface,
            "local_ip": self.local_ip,
            "peer_ip": self.peer_ip,
            "dns": list(self.dns),
            "mtu": self.mtu,
            "encryption": self.encryption,
            "auth_method": self.auth_method,
            "up_since": self.up_since_wall,
            "uptime_s": age(self.up_since),
            "last_echo_reply_age_s": age(self.last_echo_reply),
            "echo_rtt_s": self.echo_rtt,
            "echo_interval_s": self.echo_interval,
            "heartbeat_age_s": age(self.heartbeat),
            "sessions": self.sessions,
            "reconnects": self.reconnects,
            "auth_failures": self.auth_failures,
            "last_error": self.last_error,
            "alive": alive,
            "alive_reason": alive_why,
            "ready": ready,
            "ready_reason": ready_why,
            "started_at": self.started_at_wall,
            "uptime_process_s": age(self.started_at),
            "counters": self.counters,
            "timeline": [
                {"t": e.t, "at_s": round(e.t - self.started_at, 3), "phase": e.phase, "detail": e.detail}
                for e in self.timeline
            ],
            "extra": dict(self.extra),
        }
