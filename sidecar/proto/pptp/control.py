"""The PPTP control connection (RFC 2637 §1.4, §2, §3), both roles, sans-IO.

Rules
-----
- This file does not know sockets, trio, clocks or logging. Bytes and the time (``now``, the
  caller's monotonic seconds) go in; bytes to send (:meth:`ControlConnection.data_to_send`) and
  events come out. Randomness (call IDs, echo identifiers) comes from the ``rng`` it is given.
- It owns the control-connection state (§3.1) and the state of the one call the connection
  carries (§3.2), the keepalive (Echo-Request/Reply) and the reply timers. It does not own GRE,
  PPP, addresses or reconnecting: it reports events and the hallway acts on them.
- The same machine serves both roles. The CLIENT is the PNS: it opens the connection and places an
  Outgoing-Call. The SERVER is the PAC: it answers one Outgoing-Call per control connection.
  Everything that is the same for both roles lives in ``COMMON_TRANSITIONS``; the role tables add
  only what differs.
- Nothing raises out of the machine for anything the peer sends. A message that is valid but not
  expected in the current state is ignored and counted; traffic after Stop is dropped and
  counted; a malformed stream ends the connection with ``ControlClosed(error=True)`` naming the
  problem. Local calls in the wrong state (``clear_call`` without a call, ``stop`` twice) do
  nothing.

Theory of operation
-------------------
Two tables drive everything. ``TRANSITIONS[role]`` maps (control state, input) and
``CALL_TRANSITIONS[role]`` maps (call state, input) to a :class:`Transition`: the name of the
method that does the work and the next state. An input is a received message class or a
:class:`Local` input (a method call by the owner or a timer). The next state is set before the
action runs; an action may divert to another state by returning it (a refusal, for instance).
Call-management messages (OCRQ, OCRP, ICRQ, CCRQ, CDN, WEN, SLI...) are looked up in the call
table, and only while the control connection is established. An input missing from the tables is
a protocol error that is counted, never raised.

The client (PNS)::

    start -> SCCRQ -> [WAIT_CTL_REPLY] -SCCRP ok-> [ESTABLISHED] + OCRQ -> call [WAIT_REPLY]
          -OCRP connected-> call [ESTABLISHED] -> ... -> CCRQ / CDN / StopCCRQ -> [CLOSED]

It exists for its one call: when the call ends (refused, timed out, cleared by either side) the
client sends Stop-Control-Connection-Request itself.

The server (PAC) waits in IDLE for SCCRQ, answers SCCRP, answers the first OCRQ with its own
random nonzero Call ID (later ones are refused with "no resource"), and answers CCRQ with CDN.

Keepalive (both roles, §2.5): every received message proves the peer alive. After
``echo_interval`` seconds with nothing received we send an Echo-Request; if nothing at all comes
back within ``echo_timeout`` the peer is declared dead (``ControlClosed(error=True)``) and a
Stop-Control-Connection-Request is sent as a courtesy. So a dead peer is noticed at most
``echo_interval + echo_timeout`` after the last thing it said. ``echo_interval = 0`` turns the
keepalive off. Every reply wait (SCCRP, the server's wait for SCCRQ, OCRP, CDN after our CCRQ,
StopCCRP) lasts ``call_timeout``.

Timers: :meth:`ControlConnection.next_deadline` gives the earliest absolute deadline;
:meth:`ControlConnection.timeout` processes whatever is due at ``now`` (early calls do nothing).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from sidecar.proto.pptp.codes import (
    CALL_DISCONNECT_RESULTS,
    OUTGOING_CALL_RESULTS,
    START_CONTROL_CONNECTION_RESULTS,
    STOP_CONTROL_CONNECTION_RESULTS,
    describe,
    stop_reason,
)
from sidecar.proto.pptp.messages import (
    ANY_TYPE,
    BEARER_ANALOG,
    FRAMING_ASYNC,
    PROTOCOL_VERSION,
    CallClearRequest,
    CallDisconnectNotify,
    EchoReply,
    EchoRequest,
    IncomingCallConnected,
    IncomingCallReply,
    IncomingCallRequest,
    Message,
    OutgoingCallReply,
    OutgoingCallRequest,
    SetLinkInfo,
    StartControlConnectionReply,
    StartControlConnectionRequest,
    StopControlConnectionReply,
    StopControlConnectionRequest,
    StreamDecoder,
    WanErrorNotify,
    display_text,
    encode_message,
)

FIRMWARE_REVISION: Final = 0x0001  # ours, reported in SCCRQ / SCCRP
MINIMUM_BPS: Final = 300  # OCRQ Minimum BPS: the lowest the RFC's examples use; any speed will do

# Result / reason codes we send.
RESULT_OK: Final = 1
RESULT_GENERAL_ERROR: Final = 2
SCCRP_VERSION_NOT_SUPPORTED: Final = 5
STOP_REASON_NONE: Final = 1
STOP_REASON_PROTOCOL: Final = 2
STOP_REASON_LOCAL_SHUTDOWN: Final = 3
CDN_ADMIN_SHUTDOWN: Final = 3
CDN_REQUEST: Final = 4
ICRP_DO_NOT_ACCEPT: Final = 3
ERROR_NO_RESOURCE: Final = 4


class Role(enum.Enum):
    CLIENT = "client"  # the PNS: opens the control connection and places the Outgoing-Call
    SERVER = "server"  # the PAC: answers


class ControlState(enum.Enum):
    """Control connection states (RFC 2637 §3.1.1 / §3.1.2), plus CLOSED at the end."""

    IDLE = "idle"
    WAIT_CTL_REPLY = "wait-ctl-reply"
    ESTABLISHED = "established"
    WAIT_STOP_REPLY = "wait-stop-reply"
    CLOSED = "closed"


class CallState(enum.Enum):
    """The one call's state (RFC 2637 §3.2.1 PAC / §3.2.2 PNS outgoing call)."""

    IDLE = "idle"
    WAIT_REPLY = "wait-reply"  # PNS: OCRQ sent
    ESTABLISHED = "established"
    WAIT_DISCONNECT = "wait-disconnect"  # PNS: CCRQ sent, waiting for CDN
    CLEARED = "cleared"  # the call is over; one call per control connection


class Local(enum.Enum):
    """Inputs that do not come from the peer: method calls by the owner and timers."""

    START = "start"
    STOP = "stop"
    PEER_EOF = "peer-eof"
    PLACE_CALL = "place-call"
    CLEAR_CALL = "clear-call"
    SEND_LINK_INFO = "send-link-info"
    REPLY_TIMER = "reply-timer"  # the control-level reply wait ran out
    CALL_TIMER = "call-timer"  # the call-level reply wait ran out
    ECHO_DUE = "echo-due"  # idle for echo_interval
    ECHO_LOST = "echo-lost"  # no answer within echo_timeout


Input = type[Message] | Local


@dataclass(frozen=True)
class Transition:
    action: str  # name of the ControlConnection method ("_act_<action>") that does the work
    next_state: Any  # ControlState in the control tables, CallState in the call tables


_C = ControlState
_K = CallState

# (state, input) -> Transition, for both roles.
COMMON_TRANSITIONS: Final[dict[tuple[ControlState, Input], Transition]] = {
    (_C.ESTABLISHED, EchoRequest): Transition("answer_echo", _C.ESTABLISHED),
    (_C.ESTABLISHED, EchoReply): Transition("echo_answered", _C.ESTABLISHED),
    (_C.ESTABLISHED, Local.ECHO_DUE): Transition("send_echo", _C.ESTABLISHED),
    (_C.ESTABLISHED, Local.ECHO_LOST): Transition("echo_lost", _C.CLOSED),
    (_C.ESTABLISHED, Local.STOP): Transition("send_stop", _C.WAIT_STOP_REPLY),
    (_C.ESTABLISHED, StopControlConnectionRequest): Transition("peer_stops", _C.CLOSED),
    (_C.WAIT_CTL_REPLY, Local.STOP): Transition("send_stop", _C.WAIT_STOP_REPLY),
    (_C.WAIT_CTL_REPLY, StopControlConnectionRequest): Transition("peer_stops", _C.CLOSED),
    (_C.WAIT_STOP_REPLY, StopControlConnectionReply): Transition("stop_answered", _C.CLOSED),
    (_C.WAIT_STOP_REPLY, StopControlConnectionRequest): Transition("peer_stops", _C.CLOSED),
    (_C.WAIT_STOP_REPLY, Local.REPLY_TIMER): Transition("stop_timed_out", _C.CLOSED),
    (_C.WAIT_STOP_REPLY, Local.PEER_EOF): Transition("stop_answered_by_eof", _C.CLOSED),
    (_C.IDLE, Local.STOP): Transition("close_quietly", _C.CLOSED),
    (_C.IDLE, Local.PEER_EOF): Transition("peer_eof", _C.CLOSED),
    (_C.WAIT_CTL_REPLY, Local.PEER_EOF): Transition("peer_eof", _C.CLOSED),
    (_C.ESTABLISHED, Local.PEER_EOF): Transition("peer_eof", _C.CLOSED),
}

CLIENT_TRANSITIONS: Final[dict[tuple[ControlState, Input], Transition]] = {
    (_C.IDLE, Local.START): Transition("send_sccrq", _C.WAIT_CTL_REPLY),
    (_C.WAIT_CTL_REPLY, StartControlConnectionReply): Transition("sccrp_received", _C.ESTABLISHED),
    (_C.WAIT_CTL_REPLY, Local.REPLY_TIMER): Transition("sccrp_timed_out", _C.CLOSED),
}

SERVER_TRANSITIONS: Final[dict[tuple[ControlState, Input], Transition]] = {
    (_C.IDLE, Local.START): Transition("arm_sccrq_timer", _C.IDLE),
    (_C.IDLE, StartControlConnectionRequest): Transition("answer_sccrq", _C.ESTABLISHED),
    (_C.IDLE, Local.REPLY_TIMER): Transition("sccrq_timed_out", _C.CLOSED),
}

TRANSITIONS: Final[dict[Role, dict[tuple[ControlState, Input], Transition]]] = {
    Role.CLIENT: {**COMMON_TRANSITIONS, **CLIENT_TRANSITIONS},
    Role.SERVER: {**COMMON_TRANSITIONS, **SERVER_TRANSITIONS},
}

# Messages that belong to a call: routed to the call tables while the connection is established.
CALL_MESSAGES: Final[frozenset[type[Message]]] = frozenset(
    {
        OutgoingCallRequest,
        OutgoingCallReply,
        IncomingCallRequest,
        IncomingCallReply,
        IncomingCallConnected,
        CallClearRequest,
        CallDisconnectNotify,
        WanErrorNotify,
        SetLinkInfo,
    }
)

CLIENT_CALL_TRANSITIONS: Final[dict[tuple[CallState, Input], Transition]] = {
    (_K.IDLE, Local.PLACE_CALL): Transition("send_ocrq", _K.WAIT_REPLY),
    (_K.WAIT_REPLY, OutgoingCallReply): Transition("ocrp_received", _K.ESTABLISHED),
    (_K.WAIT_REPLY, Local.CALL_TIMER): Transition("ocrp_timed_out", _K.CLEARED),
    (_K.WAIT_REPLY, Local.CLEAR_CALL): Transition("send_ccrq", _K.WAIT_DISCONNECT),
    (_K.ESTABLISHED, Local.CLEAR_CALL): Transition("send_ccrq", _K.WAIT_DISCONNECT),
    (_K.ESTABLISHED, CallDisconnectNotify): Transition("peer_disconnected", _K.CLEARED),
    (_K.ESTABLISHED, SetLinkInfo): Transition("link_info", _K.ESTABLISHED),
    (_K.ESTABLISHED, Local.SEND_LINK_INFO): Transition("send_sli", _K.ESTABLISHED),
    (_K.ESTABLISHED, WanErrorNotify): Transition("wan_error", _K.ESTABLISHED),
    (_K.WAIT_DISCONNECT, CallDisconnectNotify): Transition("disconnect_confirmed", _K.CLEARED),
    (_K.WAIT_DISCONNECT, Local.CALL_TIMER): Transition("cdn_timed_out", _K.CLEARED),
    # We place calls, we never take them (§3.2.3 would make us a PAC-initiated PNS).
    (_K.IDLE, IncomingCallRequest): Transition("refuse_incoming_call", _K.IDLE),
    (_K.WAIT_REPLY, IncomingCallRequest): Transition("refuse_incoming_call", _K.WAIT_REPLY),
    (_K.ESTABLISHED, IncomingCallRequest): Transition("refuse_incoming_call", _K.ESTABLISHED),
    (_K.WAIT_DISCONNECT, IncomingCallRequest): Transition("refuse_incoming_call", _K.WAIT_DISCONNECT),
    (_K.CLEARED, IncomingCallRequest): Transition("refuse_incoming_call", _K.CLEARED),
}

SERVER_CALL_TRANSITIONS: Final[dict[tuple[CallState, Input], Transition]] = {
    (_K.IDLE, OutgoingCallRequest): Transition("answer_ocrq", _K.ESTABLISHED),
    (_K.ESTABLISHED, OutgoingCallRequest): Transition("refuse_another_call", _K.ESTABLISHED),
    (_K.CLEARED, OutgoingCallRequest): Transition("refuse_another_call", _K.CLEARED),
    (_K.ESTABLISHED, CallClearRequest): Transition("clear_requested", _K.CLEARED),
    (_K.ESTABLISHED, Local.CLEAR_CALL): Transition("send_cdn", _K.CLEARED),
    (_K.ESTABLISHED, SetLinkInfo): Transition("link_info", _K.ESTABLISHED),
    (_K.ESTABLISHED, Local.SEND_LINK_INFO): Transition("send_sli", _K.ESTABLISHED),
}

CALL_TRANSITIONS: Final[dict[Role, dict[tuple[CallState, Input], Transition]]] = {
    Role.CLIENT: CLIENT_CALL_TRANSITIONS,
    Role.SERVER: SERVER_CALL_TRANSITIONS,
}

_CALL_ACTIVE: Final = frozenset({_K.WAIT_REPLY, _K.ESTABLISHED, _K.WAIT_DISCONNECT})


# ---------------------------------------------------------------------------------------------
# Configuration, events, counters


@dataclass
class ControlConfig:
    hostname: str = ""
    vendor: str = "pptp-sidecar"
    echo_interval: float = 60.0  # idle time before we send Echo-Request (0 = no keepalive)
    echo_timeout: float = 15.0  # reply wait; peer dead after idle + timeout
    call_timeout: float = 30.0  # SCCRQ / OCRQ / CCRQ / StopCCRQ answer wait
    window: int = 64  # our Packet Recv. Window Size
    connect_speed: int = 100_000_000  # bits/s we announce (client: Maximum BPS, server: Connect Speed)

    def __post_init__(self) -> None:
        for name in ("hostname", "vendor"):
            value = getattr(self, name)
            if not isinstance(value, str) or "\0" in value or len(value.encode("utf-8")) > 64:
                raise ValueError(f"PPTP {name} must be a string of at most 64 UTF-8 bytes without NUL")
        if not self.echo_interval >= 0:
            raise ValueError("PPTP echo_interval must be >= 0 seconds (0 turns the keepalive off)")
        if not self.echo_timeout > 0:
            raise ValueError("PPTP echo_timeout must be > 0 seconds")
        if not self.call_timeout > 0:
            raise ValueError("PPTP call_timeout must be > 0 seconds")
        if not 1 <= self.window <= 0xFFFF:
            raise ValueError("PPTP window must be 1..65535 packets")
        if not 1 <= self.connect_speed <= 0xFFFFFFFF:
            raise ValueError("PPTP connect_speed must be 1..4294967295 bits/s")


@dataclass(frozen=True)
class ControlConnected:
    peer_hostname: str
    peer_vendor: str
    firmware_revision: int
    protocol_version: int

    def __str__(self) -> str:
        major, minor = divmod(self.protocol_version, 256)
        return (
            f"PPTP control connection up: peer {self.peer_hostname!r}, vendor {self.peer_vendor!r},"
            f" firmware {self.firmware_revision:#06x}, protocol {major}.{minor}"
        )


@dataclass(frozen=True)
class CallEstablished:
    local_call_id: int
    peer_call_id: int
    connect_speed: int
    peer_window: int

    def __str__(self) -> str:
        return (
            f"PPTP call up: our call ID {self.local_call_id}, peer call ID {self.peer_call_id},"
            f" {self.connect_speed} bit/s, peer window {self.peer_window}"
        )


@dataclass(frozen=True)
class LinkInfo:
    send_accm: int
    receive_accm: int

    def __str__(self) -> str:
        return f"PPTP Set-Link-Info: send ACCM {self.send_accm:#010x}, receive ACCM {self.receive_accm:#010x}"


@dataclass(frozen=True)
class WanError:
    crc_errors: int
    framing_errors: int
    hardware_overruns: int
    buffer_overruns: int
    timeout_errors: int
    alignment_errors: int

    @property
    def reason(self) -> str:
        return (
            f"peer reports WAN errors: CRC {self.crc_errors}, framing {self.framing_errors},"
            f" hardware overruns {self.hardware_overruns}, buffer overruns {self.buffer_overruns},"
            f" time-outs {self.timeout_errors}, alignment {self.alignment_errors}"
        )

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True)
class EchoAnswered:
    rtt: float

    def __str__(self) -> str:
        return f"PPTP echo answered in {self.rtt * 1000:.1f} ms"


@dataclass(frozen=True)
class CallCleared:
    reason: str
    by_peer: bool

    def __str__(self) -> str:
        return f"PPTP call cleared by {'peer' if self.by_peer else 'us'}: {self.reason}"


@dataclass(frozen=True)
class ControlClosed:
    reason: str
    by_peer: bool
    error: bool

    def __str__(self) -> str:
        return f"PPTP control connection closed by {'peer' if self.by_peer else 'us'}: {self.reason}"


ControlEvent = (
    ControlConnected | CallEstablished | LinkInfo | WanError | EchoAnswered | CallCleared | ControlClosed
)


@dataclass
class ControlCounters:
    """Plain ints for metrics (``dataclasses.asdict``)."""

    messages_received: int = 0
    messages_sent: int = 0
    unexpected_messages: int = 0  # valid, but not expected in the current state: ignored
    bad_call_id: int = 0  # a call message for a call ID that is not ours: ignored
    dropped_after_stop: int = 0  # anything received once Stop was sent or received
    malformed_streams: int = 0  # ended the connection
    echo_requests_sent: int = 0
    echo_replies_received: int = 0
    echo_requests_answered: int = 0
    echo_timeouts: int = 0
    stale_echo_replies: int = 0  # identifier we are not waiting for
    incoming_calls_refused: int = 0


def _seconds(value: float) -> str:
    return f"{value:g} s"


# ---------------------------------------------------------------------------------------------
# The machine


class ControlConnection:
    """One PPTP control connection and its call. See the module docstring."""

    def __init__(self, role: Role, config: ControlConfig, rng: random.Random) -> None:
        self.role: Final = role
        self.config: Final = config
        self.counters = ControlCounters()
        self.state = ControlState.IDLE
        self.call_state = CallState.IDLE
        self.local_call_id: int | None = None
        self.peer_call_id: int | None = None
        self._rng = rng
        self._decoder = StreamDecoder()
        self._outgoing = bytearray()
        self._events: list[ControlEvent] = []
        self._table = TRANSITIONS[role]
        self._call_table = CALL_TRANSITIONS[role]
        self._reply_deadline: float | None = None  # SCCRQ/SCCRP/StopCCRP wait
        self._call_deadline: float | None = None  # OCRP/CDN wait
        self._last_rx = 0.0
        self._echo_pending: tuple[int, float] | None = None  # (identifier, sent at)
        self._next_echo_id = rng.getrandbits(32)
        self._stop_reason = ""
        self._stop_by_peer = False
        self._stop_error = False
        self._call_clear_reason = ""
        self._refusal: tuple[int, int] | None = None

    # -- public entry points ------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Client: send Start-Control-Connection-Request. Server: start waiting for one."""
        self._input(Local.START, None, now)

    @property
    def closed(self) -> bool:
        """True once the control connection is over: send what is left, then close the socket."""
        return self.state is ControlState.CLOSED

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> list[ControlEvent]:
        """Bytes read from the TCP connection; ``b""`` means the peer closed it (EOF)."""
        if not data:
            if self.state is not ControlState.CLOSED:
                self._input(Local.PEER_EOF, None, now)
            return self._drain_events()
        if self.state is ControlState.CLOSED:
            self.counters.dropped_after_stop += 1
            return self._drain_events()
        messages, error = self._decoder.feed_partial(data)
        for msg in messages:
            self._receive_message(msg, now)
        if error is not None and not self.closed:
            self.counters.malformed_streams += 1
            self._close(
                f"malformed PPTP control stream from the peer: {error}",
                by_peer=False,
                error=True,
                send_stop=self.state is ControlState.ESTABLISHED,
            )
        return self._drain_events()

    def data_to_send(self) -> bytes:
        """Drain the bytes to write to the TCP connection."""
        out = bytes(self._outgoing)
        self._outgoing.clear()
        return out

    def next_deadline(self) -> float | None:
        deadlines = [
            d for d in (self._reply_deadline, self._call_deadline, self._echo_deadline()) if d is not None
        ]
        return min(deadlines) if deadlines else None

    def timeout(self, now: float) -> list[ControlEvent]:
        """Process every timer that is due at ``now``; early calls do nothing."""
        for _ in range(8):  # each pass fires at least one timer; a handful is plenty
            if self._reply_deadline is not None and now >= self._reply_deadline:
                self._reply_deadline = None
                self._input(Local.REPLY_TIMER, None, now)
            elif self._call_deadline is not None and now >= self._call_deadline:
                self._call_deadline = None
                self._call_input(Local.CALL_TIMER, None, now)
            elif (deadline := self._echo_deadline()) is not None and now >= deadline:
                lost = self._echo_pending is not None and self._last_rx < self._echo_pending[1]
                self._input(Local.ECHO_LOST if lost else Local.ECHO_DUE, None, now)
            else:
                break
        return self._drain_events()

    def clear_call(self, now: float, reason: str) -> list[ControlEvent]:
        """End the call: Call-Clear-Request (client) or Call-Disconnect-Notify (server)."""
        self._call_input(Local.CLEAR_CALL, reason, now)
        return self._drain_events()

    def stop(self, now: float, reason: str) -> list[ControlEvent]:
        """Close the control connection with Stop-Control-Connection-Request."""
        self._input(Local.STOP, reason, now)
        return self._drain_events()

    def set_link_info(self, now: float, send_accm: int = 0xFFFFFFFF, receive_accm: int = 0xFFFFFFFF) -> None:
        """Send Set-Link-Info with the ACCMs PPP negotiated (only while the call is up)."""
        self._call_input(Local.SEND_LINK_INFO, (send_accm & 0xFFFFFFFF, receive_accm & 0xFFFFFFFF), now)

    def refuse_calls(self, result_code: int, error_code: int = 0) -> None:
        """Server: answer Outgoing-Call-Requests with this Result Code (2..7) from now on."""
        if self.role is not Role.SERVER:
            raise ValueError("only the server role answers Outgoing-Call-Requests")
        if not 2 <= result_code <= 0xFF or not 0 <= error_code <= 0xFF:
            raise ValueError("a refusal needs a Result Code 2..255 and an Error Code 0..255")
        self._refusal = (result_code, error_code)

    # -- dispatch -----------------------------------------------------------------------------

    def _receive_message(self, msg: Message, now: float) -> None:
        self.counters.messages_received += 1
        if self.state in (ControlState.CLOSED, ControlState.WAIT_STOP_REPLY) and not isinstance(
            msg, StopControlConnectionRequest | StopControlConnectionReply
        ):
            self.counters.dropped_after_stop += 1
            return
        self._last_rx = now
        if type(msg) in CALL_MESSAGES and self.state is ControlState.ESTABLISHED:
            self._call_input(type(msg), msg, now)
        else:
            self._input(type(msg), msg, now)

    def _input(self, key: Input, arg: Any, now: float) -> None:
        transition = self._table.get((self.state, key))
        if transition is None:
            if isinstance(key, type):
                self.counters.unexpected_messages += 1
            return  # a local input in the wrong state does nothing
        self.state = transition.next_state
        action: Callable[[Any, float], ControlState | None] = getattr(self, "_act_" + transition.action)
        diverted = action(arg, now)
        if diverted is not None:
            self.state = diverted
        if self.state is ControlState.CLOSED:
            self._stop_timers()

    def _call_input(self, key: Input, arg: Any, now: float) -> None:
        if self.state is not ControlState.ESTABLISHED:
            if isinstance(key, type):
                self.counters.unexpected_messages += 1
            return
        transition = self._call_table.get((self.call_state, key))
        if transition is None:
            if isinstance(key, type):
                self.counters.unexpected_messages += 1
            return
        previous = self.call_state
        self.call_state = transition.next_state
        action: Callable[[Any, float], CallState | None] = getattr(self, "_act_" + transition.action)
        diverted = action(arg, now)
        if diverted is not None:
            self.call_state = diverted
        if self.call_state is not previous and self.call_state not in (_K.WAIT_REPLY, _K.WAIT_DISCONNECT):
            self._call_deadline = None

    # -- helpers --------------------------------------------------------------------------------

    def _send(self, msg: Message) -> None:
        self._outgoing += encode_message(msg)
        self.counters.messages_sent += 1

    def _emit(self, event: ControlEvent) -> None:
        self._events.append(event)

    def _drain_events(self) -> list[ControlEvent]:
        events, self._events = self._events, []
        return events

    def _stop_timers(self) -> None:
        self._reply_deadline = None
        self._call_deadline = None
        self._echo_pending = None

    def _echo_deadline(self) -> float | None:
        if self.state is not ControlState.ESTABLISHED or self.config.echo_interval <= 0:
            return None
        if self._echo_pending is not None and self._last_rx < self._echo_pending[1]:
            return self._echo_pending[1] + self.config.echo_timeout
        return self._last_rx + self.config.echo_interval

    def _call_ended(self, reason: str, by_peer: bool) -> None:
        """The call is over: report it once."""
        self._emit(CallCleared(reason, by_peer))
        self._call_deadline = None

    def _close(self, reason: str, *, by_peer: bool, error: bool, send_stop: bool = False) -> ControlState:
        """End the control connection now (and the call with it)."""
        if send_stop:
            self._send(StopControlConnectionRequest(reason=STOP_REASON_NONE))
        if self.call_state in _CALL_ACTIVE:
            self.call_state = CallState.CLEARED
            self._call_ended(f"control connection closed: {reason}", by_peer)
        self.state = ControlState.CLOSED
        self._stop_timers()
        self._emit(ControlClosed(reason, by_peer, error))
        return ControlState.CLOSED

    def _begin_stop(self, reason: str, now: float, *, by_peer: bool, error: bool, code: int) -> ControlState:
        """Send Stop-Control-Connection-Request and wait for the reply."""
        self._stop_reason, self._stop_by_peer, self._stop_error = reason, by_peer, error
        if self.call_state in _CALL_ACTIVE:
            self.call_state = CallState.CLEARED
            self._call_ended(f"control connection stopping: {reason}", by_peer)
        self._send(StopControlConnectionRequest(reason=code))
        self.state = ControlState.WAIT_STOP_REPLY
        self._call_deadline = None
        self._echo_pending = None
        self._reply_deadline = now + self.config.call_timeout
        return ControlState.WAIT_STOP_REPLY

    def _new_call_id(self) -> int:
        return self._rng.randint(1, 0xFFFF)

    # -- control actions ------------------------------------------------------------------------

    def _act_send_sccrq(self, _: None, now: float) -> None:
        self._send(
            StartControlConnectionRequest(
                protocol_version=PROTOCOL_VERSION,
                framing_capabilities=FRAMING_ASYNC,
                bearer_capabilities=BEARER_ANALOG,
                maximum_channels=0,  # §2.1: a PNS sends 0
                firmware_revision=FIRMWARE_REVISION,
                host_name=self.config.hostname,
                vendor_string=self.config.vendor,
            )
        )
        self._reply_deadline = now + self.config.call_timeout

    def _act_arm_sccrq_timer(self, _: None, now: float) -> None:
        self._reply_deadline = now + self.config.call_timeout

    def _act_sccrp_received(self, msg: StartControlConnectionReply, now: float) -> ControlState | None:
        self._reply_deadline = None
        if msg.result_code != RESULT_OK:
            why = describe(START_CONTROL_CONNECTION_RESULTS, msg.result_code, msg.error_code)
            return self._close(f"server refused the control connection: {why}", by_peer=True, error=True)
        self._last_rx = now
        self._emit(
            ControlConnected(msg.host_name, msg.vendor_string, msg.firmware_revision, msg.protocol_version)
        )
        self._call_input(Local.PLACE_CALL, None, now)
        return None

    def _act_sccrp_timed_out(self, _: None, now: float) -> ControlState:
        return self._close(
            f"no Start-Control-Connection-Reply within {_seconds(self.config.call_timeout)}:"
            " the server does not answer PPTP",
            by_peer=False,
            error=True,
        )

    def _act_answer_sccrq(self, msg: StartControlConnectionRequest, now: float) -> ControlState | None:
        self._reply_deadline = None
        if msg.protocol_version != PROTOCOL_VERSION:
            self._send(
                StartControlConnectionReply(result_code=SCCRP_VERSION_NOT_SUPPORTED, **self._our_identity())
            )
            major, minor = divmod(msg.protocol_version, 256)
            return self._close(
                f"peer asked for PPTP protocol version {major}.{minor}; only 1.0 is supported",
                by_peer=False,
                error=True,
            )
        self._send(StartControlConnectionReply(result_code=RESULT_OK, **self._our_identity()))
        self._last_rx = now
        self._emit(
            ControlConnected(msg.host_name, msg.vendor_string, msg.firmware_revision, msg.protocol_version)
        )
        return None

    def _our_identity(self) -> dict[str, Any]:
        return {
            "protocol_version": PROTOCOL_VERSION,
            "framing_capabilities": FRAMING_ASYNC,
            "bearer_capabilities": BEARER_ANALOG,
            "maximum_channels": 1,
            "firmware_revision": FIRMWARE_REVISION,
            "host_name": self.config.hostname,
            "vendor_string": self.config.vendor,
        }

    def _act_sccrq_timed_out(self, _: None, now: float) -> ControlState:
        return self._close(
            f"no Start-Control-Connection-Request within {_seconds(self.config.call_timeout)}"
            " of the TCP connection",
            by_peer=False,
            error=True,
        )

    def _act_answer_echo(self, msg: EchoRequest, now: float) -> None:
        self.counters.echo_requests_answered += 1
        self._send(EchoReply(identifier=msg.identifier, result_code=RESULT_OK, error_code=0))

    def _act_echo_answered(self, msg: EchoReply, now: float) -> None:
        if self._echo_pending is None or msg.identifier != self._echo_pending[0]:
            self.counters.stale_echo_replies += 1
            return
        self.counters.echo_replies_received += 1
        sent_at = self._echo_pending[1]
        self._echo_pending = None  # any Result Code is proof of life
        self._emit(EchoAnswered(now - sent_at))

    def _act_send_echo(self, _: None, now: float) -> None:
        identifier = self._next_echo_id
        self._next_echo_id = (identifier + 1) & 0xFFFFFFFF
        self._echo_pending = (identifier, now)
        self.counters.echo_requests_sent += 1
        self._send(EchoRequest(identifier=identifier))

    def _act_echo_lost(self, _: None, now: float) -> ControlState:
        self.counters.echo_timeouts += 1
        return self._close(
            "peer stopped answering PPTP echo requests"
            f" (no reply within {_seconds(self.config.echo_timeout)})",
            by_peer=False,
            error=True,
            send_stop=True,
        )

    def _act_send_stop(self, reason: str, now: float) -> ControlState:
        return self._begin_stop(reason, now, by_peer=False, error=False, code=STOP_REASON_NONE)

    def _act_close_quietly(self, reason: str, now: float) -> ControlState:
        return self._close(reason, by_peer=False, error=False)

    def _act_peer_stops(self, msg: StopControlConnectionRequest, now: float) -> ControlState:
        self._send(StopControlConnectionReply(result_code=RESULT_OK, error_code=0))
        error = msg.reason not in (STOP_REASON_NONE, STOP_REASON_LOCAL_SHUTDOWN)
        return self._close(
            f"peer sent Stop-Control-Connection-Request: {stop_reason(msg.reason)}",
            by_peer=True,
            error=error,
        )

    def _act_stop_answered(self, msg: StopControlConnectionReply, now: float) -> ControlState:
        reason = self._stop_reason
        if msg.result_code != RESULT_OK:
            why = describe(STOP_CONTROL_CONNECTION_RESULTS, msg.result_code, msg.error_code)
            reason = f"{reason} (peer's Stop-Control-Connection-Reply: {why})"
        return self._close(reason, by_peer=self._stop_by_peer, error=self._stop_error)

    def _act_stop_answered_by_eof(self, _: None, now: float) -> ControlState:
        return self._close(self._stop_reason, by_peer=self._stop_by_peer, error=self._stop_error)

    def _act_stop_timed_out(self, _: None, now: float) -> ControlState:
        return self._close(
            f"{self._stop_reason} (no Stop-Control-Connection-Reply within"
            f" {_seconds(self.config.call_timeout)})",
            by_peer=self._stop_by_peer,
            error=self._stop_error,
        )

    def _act_peer_eof(self, _: None, now: float) -> ControlState:
        return self._close(
            "peer closed the TCP control connection without Stop-Control-Connection-Request",
            by_peer=True,
            error=True,
        )

    # -- call actions ---------------------------------------------------------------------------

    def _act_send_ocrq(self, _: None, now: float) -> None:
        self.local_call_id = self._new_call_id()
        self._send(
            OutgoingCallRequest(
                call_id=self.local_call_id,
                call_serial_number=self._rng.getrandbits(16),
                minimum_bps=MINIMUM_BPS,
                maximum_bps=self.config.connect_speed,
                bearer_type=ANY_TYPE,
                framing_type=ANY_TYPE,
                packet_recv_window_size=self.config.window,
                packet_processing_delay=0,
                phone_number_length=0,
                phone_number="",
                subaddress="",
            )
        )
        self._call_deadline = now + self.config.call_timeout

    def _act_ocrp_received(self, msg: OutgoingCallReply, now: float) -> CallState | None:
        if msg.peer_call_id != self.local_call_id:
            self.counters.bad_call_id += 1
            return CallState.WAIT_REPLY  # not an answer to our call; keep waiting
        self._call_deadline = None
        if msg.result_code != RESULT_OK:
            why = describe(OUTGOING_CALL_RESULTS, msg.result_code, msg.error_code)
            if msg.cause_code:
                why += f" (cause code {msg.cause_code})"
            reason = f"server refused the outgoing call: {why}"
            self.call_state = CallState.CLEARED
            self._call_ended(reason, by_peer=True)
            self._begin_stop(reason, now, by_peer=True, error=True, code=STOP_REASON_NONE)
            return CallState.CLEARED
        self.peer_call_id = msg.call_id
        self._emit(
            CallEstablished(self.local_call_id, msg.call_id, msg.connect_speed, msg.packet_recv_window_size)
        )
        return None

    def _act_ocrp_timed_out(self, _: None, now: float) -> None:
        reason = f"no Outgoing-Call-Reply within {_seconds(self.config.call_timeout)}"
        self._call_ended(reason, by_peer=False)
        self._begin_stop(reason, now, by_peer=False, error=True, code=STOP_REASON_NONE)

    def _act_send_ccrq(self, reason: str, now: float) -> None:
        assert self.local_call_id is not None
        self._call_clear_reason = reason
        self._send(CallClearRequest(call_id=self.local_call_id))
        self._call_deadline = now + self.config.call_timeout

    def _act_disconnect_confirmed(self, msg: CallDisconnectNotify, now: float) -> CallState | None:
        if self.peer_call_id is not None and msg.call_id != self.peer_call_id:
            self.counters.bad_call_id += 1
            return CallState.WAIT_DISCONNECT
        reason = self._call_clear_reason
        self._call_ended(reason, by_peer=False)
        self._begin_stop(reason, now, by_peer=False, error=False, code=STOP_REASON_NONE)
        return None

    def _act_cdn_timed_out(self, _: None, now: float) -> None:
        wait = _seconds(self.config.call_timeout)
        reason = f"{self._call_clear_reason} (no Call-Disconnect-Notify within {wait})"
        self._call_ended(reason, by_peer=False)
        self._begin_stop(reason, now, by_peer=False, error=False, code=STOP_REASON_NONE)

    def _act_peer_disconnected(self, msg: CallDisconnectNotify, now: float) -> CallState | None:
        if msg.call_id != self.peer_call_id:
            self.counters.bad_call_id += 1
            return CallState.ESTABLISHED
        why = describe(CALL_DISCONNECT_RESULTS, msg.result_code, msg.error_code)
        if msg.cause_code:
            why += f" (cause code {msg.cause_code})"
        if msg.call_statistics:
            why += f"; call statistics: {display_text(msg.call_statistics)}"
        reason = f"server disconnected the call: {why}"
        error = msg.result_code not in (CDN_ADMIN_SHUTDOWN, CDN_REQUEST)
        self._call_ended(reason, by_peer=True)
        self._begin_stop(reason, now, by_peer=True, error=error, code=STOP_REASON_NONE)
        return None

    def _act_refuse_incoming_call(self, msg: IncomingCallRequest, now: float) -> None:
        self.counters.incoming_calls_refused += 1
        self._send(
            IncomingCallReply(
                call_id=0, peer_call_id=msg.call_id, result_code=ICRP_DO_NOT_ACCEPT, error_code=0
            )
        )

    def _act_answer_ocrq(self, msg: OutgoingCallRequest, now: float) -> CallState | None:
        if self._refusal is not None:
            result, error = self._refusal
            self._send(
                OutgoingCallReply(call_id=0, peer_call_id=msg.call_id, result_code=result, error_code=error)
            )
            why = describe(OUTGOING_CALL_RESULTS, result, error)
            self._call_ended(f"refused the peer's Outgoing-Call-Request: {why}", by_peer=False)
            return CallState.CLEARED
        self.local_call_id = self._new_call_id()
        self.peer_call_id = msg.call_id
        self._send(
            OutgoingCallReply(
                call_id=self.local_call_id,
                peer_call_id=msg.call_id,
                result_code=RESULT_OK,
                error_code=0,
                cause_code=0,
                connect_speed=self.config.connect_speed,
                packet_recv_window_size=self.config.window,
                packet_processing_delay=0,
                physical_channel_id=0,
            )
        )
        self._emit(
            CallEstablished(
                self.local_call_id, msg.call_id, self.config.connect_speed, msg.packet_recv_window_size
            )
        )
        return None

    def _act_refuse_another_call(self, msg: OutgoingCallRequest, now: float) -> None:
        self._send(
            OutgoingCallReply(
                call_id=0,
                peer_call_id=msg.call_id,
                result_code=RESULT_GENERAL_ERROR,
                error_code=ERROR_NO_RESOURCE,
            )
        )

    def _act_clear_requested(self, msg: CallClearRequest, now: float) -> CallState | None:
        if msg.call_id != self.peer_call_id:
            self.counters.bad_call_id += 1
            return CallState.ESTABLISHED
        assert self.local_call_id is not None
        self._send(CallDisconnectNotify(call_id=self.local_call_id, result_code=CDN_REQUEST))
        self._call_ended("peer sent Call-Clear-Request", by_peer=True)
        return None

    def _act_send_cdn(self, reason: str, now: float) -> None:
        assert self.local_call_id is not None
        stats = reason.encode("utf-8")[:128].decode("utf-8", errors="ignore").replace("\0", " ")
        self._send(
            CallDisconnectNotify(
                call_id=self.local_call_id, result_code=CDN_ADMIN_SHUTDOWN, call_statistics=stats
            )
        )
        self._call_ended(reason, by_peer=False)

    def _act_link_info(self, msg: SetLinkInfo, now: float) -> None:
        if msg.peer_call_id != self.local_call_id:
            self.counters.bad_call_id += 1
            return
        self._emit(LinkInfo(msg.send_accm, msg.receive_accm))

    def _act_send_sli(self, accms: tuple[int, int], now: float) -> None:
        assert self.peer_call_id is not None
        self._send(SetLinkInfo(peer_call_id=self.peer_call_id, send_accm=accms[0], receive_accm=accms[1]))

    def _act_wan_error(self, msg: WanErrorNotify, now: float) -> None:
        if msg.peer_call_id != self.local_call_id:
            self.counters.bad_call_id += 1
            return
        self._emit(
            WanError(
                msg.crc_errors,
                msg.framing_errors,
                msg.hardware_overruns,
                msg.buffer_overruns,
                msg.timeout_errors,
                msg.alignment_errors,
            )
        )
