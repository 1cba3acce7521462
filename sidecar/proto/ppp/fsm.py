"""The PPP option negotiation automaton (RFC 1661 §4), shared by LCP, IPCP, IPV6CP and CCP.

Rules for this module:

- It owns the states, the events, the restart timer and counters (Max-Configure, Max-Terminate,
  Max-Failure), Configure-Request/Ack/Nak/Reject, Terminate-Request/Ack and Code-Reject.
- It does not know which protocol it runs, which options exist, or whether it is the client or the
  server. An :class:`OptionHandler` (``lcp.py``, ``ipcp.py``, ``ipv6cp.py``, ``ccp.py``) describes
  the options: how to build our request, how to react to a Nak or Reject, how to judge the peer's
  request, and any extra codes (LCP Echo/Discard/Protocol-Reject, CCP Reset-Request/Ack).
- It does no framing: it produces control packets (``code, identifier, length, data``); the link
  puts them in PPP frames under the handler's protocol number.

Theory of operation: every input is turned into one RFC event (``Up``, ``RCR+``, ``TO-``...), and
the event is looked up in :data:`TRANSITIONS`, the RFC's §4.1 table written as one dict
``(state, event) -> (actions, next state)``. The actions run in the table's order; the "layer"
actions (``tlu``, ``tld``, ``tls``, ``tlf``) become :class:`Signal` values that the link drains
with :meth:`Automaton.take_signals` and acts on (start authentication, open the NCPs, report the
link down...). A ``(state, event)`` pair the table lacks is a protocol error naming both.

Two filters sit in front of the table, both about packets that are not new events:

- a reply (Ack/Nak/Reject) is matched to our outstanding request by identifier, and only the first
  reply counts (a duplicated Configure-Ack must not restart an Opened layer);
- a Configure-Request the peer already had answered (same identifier and contents) is a duplicate
  or a late retransmission: in Opened we repeat our Ack instead of renegotiating, and a copy of an
  older request that we since answered differently is dropped. RFC 1661 §5.1 makes this safe: a
  genuinely new request carries a new identifier.

One deliberate deviation, as pppd does it: a timeout resends our Configure-Request with the same
identifier, also from Ack-Rcvd (§5.1 would pick a new one there). The peer, possibly Opened already,
then recognises the copy and repeats its Ack instead of renegotiating.

The footnoted RFC variants are read plainly: ``3r``/``5r``/``9r`` (Restart option) do nothing extra,
``tlf/3p`` (Passive option) is a plain ``tlf``, ``6x`` (crossed connection) is a plain transition.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from sidecar.proto.errors import PppError
from sidecar.proto.ppp import frame as F
from sidecar.proto.ppp.frame import ControlPacket, Option


class State(enum.Enum):
    INITIAL = 0
    STARTING = 1
    CLOSED = 2
    STOPPED = 3
    CLOSING = 4
    STOPPING = 5
    REQ_SENT = 6
    ACK_RCVD = 7
    ACK_SENT = 8
    OPENED = 9


class Event(enum.Enum):
    UP = "Up"
    DOWN = "Down"
    OPEN = "Open"
    CLOSE = "Close"
    TO_PLUS = "TO+"
    TO_MINUS = "TO-"
    RCR_PLUS = "RCR+"
    RCR_MINUS = "RCR-"
    RCA = "RCA"
    RCN = "RCN"
    RTR = "RTR"
    RTA = "RTA"
    RUC = "RUC"
    RXJ_PLUS = "RXJ+"
    RXJ_MINUS = "RXJ-"
    RXR = "RXR"


class Action(enum.Enum):
    TLU = "tlu"  # This-Layer-Up
    TLD = "tld"  # This-Layer-Down
    TLS = "tls"  # This-Layer-Started
    TLF = "tlf"  # This-Layer-Finished
    IRC = "irc"  # Initialize-Restart-Count
    ZRC = "zrc"  # Zero-Restart-Count
    SCR = "scr"  # Send-Configure-Request
    SCA = "sca"  # Send-Configure-Ack
    SCN = "scn"  # Send-Configure-Nak/Rej
    STR = "str"  # Send-Terminate-Request
    STA = "sta"  # Send-Terminate-Ack
    SCJ = "scj"  # Send-Code-Reject
    SER = "ser"  # Send-Echo-Reply (here: let the handler answer Echo/Discard/Reset packets)


class Signal(enum.Enum):
    """The layer actions, as reported to the link."""

    UP = "This-Layer-Up"
    DOWN = "This-Layer-Down"
    STARTED = "This-Layer-Started"
    FINISHED = "This-Layer-Finished"


S, E, A = State, Event, Action

Cell = tuple[tuple[Action, ...], State]

# RFC 1661 §4.1, cell by cell. Columns of the RFC are states, rows are events; here each entry is
# (state, event): ((actions...), next state). Missing pairs are the RFC's "-" (illegal) cells.
TRANSITIONS: Final[dict[tuple[State, Event], Cell]] = {
    # -- Initial (0)
    (S.INITIAL, E.UP): ((), S.CLOSED),
    (S.INITIAL, E.OPEN): ((A.TLS,), S.STARTING),
    (S.INITIAL, E.CLOSE): ((), S.INITIAL),
    # -- Starting (1)
    (S.STARTING, E.UP): ((A.IRC, A.SCR), S.REQ_SENT),
    (S.STARTING, E.OPEN): ((), S.STARTING),
    (S.STARTING, E.CLOSE): ((A.TLF,), S.INITIAL),
    # -- Closed (2)
    (S.CLOSED, E.DOWN): ((), S.INITIAL),
    (S.CLOSED, E.OPEN): ((A.IRC, A.SCR), S.REQ_SENT),
    (S.CLOSED, E.CLOSE): ((), S.CLOSED),
    (S.CLOSED, E.RCR_PLUS): ((A.STA,), S.CLOSED),
    (S.CLOSED, E.RCR_MINUS): ((A.STA,), S.CLOSED),
    (S.CLOSED, E.RCA): ((A.STA,), S.CLOSED),
    (S.CLOSED, E.RCN): ((A.STA,), S.CLOSED),
    (S.CLOSED, E.RTR): ((A.STA,), S.CLOSED),
    (S.CLOSED, E.RTA): ((), S.CLOSED),
    (S.CLOSED, E.RUC): ((A.SCJ,), S.CLOSED),
    (S.CLOSED, E.RXJ_PLUS): ((), S.CLOSED),
    (S.CLOSED, E.RXJ_MINUS): ((A.TLF,), S.CLOSED),
    (S.CLOSED, E.RXR): ((), S.CLOSED),
    # -- Stopped (3)
    (S.STOPPED, E.DOWN): ((A.TLS,), S.STARTING),
    (S.STOPPED, E.OPEN): ((), S.STOPPED),
    (S.STOPPED, E.CLOSE): ((), S.CLOSED),
    (S.STOPPED, E.RCR_PLUS): ((A.IRC, A.SCR, A.SCA), S.ACK_SENT),
    (S.STOPPED, E.RCR_MINUS): ((A.IRC, A.SCR, A.SCN), S.REQ_SENT),
    (S.STOPPED, E.RCA): ((A.STA,), S.STOPPED),
    (S.STOPPED, E.RCN): ((A.STA,), S.STOPPED),
    (S.STOPPED, E.RTR): ((A.STA,), S.STOPPED),
    (S.STOPPED, E.RTA): ((), S.STOPPED),
    (S.STOPPED, E.RUC): ((A.SCJ,), S.STOPPED),
    (S.STOPPED, E.RXJ_PLUS): ((), S.STOPPED),
    (S.STOPPED, E.RXJ_MINUS): ((A.TLF,), S.STOPPED),
    (S.STOPPED, E.RXR): ((), S.STOPPED),
    # -- Closing (4)
    (S.CLOSING, E.DOWN): ((), S.INITIAL),
    (S.CLOSING, E.OPEN): ((), S.STOPPING),
    (S.CLOSING, E.CLOSE): ((), S.CLOSING),
    (S.CLOSING, E.TO_PLUS): ((A.STR,), S.CLOSING),
    (S.CLOSING, E.TO_MINUS): ((A.TLF,), S.CLOSED),
    (S.CLOSING, E.RCR_PLUS): ((), S.CLOSING),
    (S.CLOSING, E.RCR_MINUS): ((), S.CLOSING),
    (S.CLOSING, E.RCA): ((), S.CLOSING),
    (S.CLOSING, E.RCN): ((), S.CLOSING),
    (S.CLOSING, E.RTR): ((A.STA,), S.CLOSING),
    (S.CLOSING, E.RTA): ((A.TLF,), S.CLOSED),
    (S.CLOSING, E.RUC): ((A.SCJ,), S.CLOSING),
    (S.CLOSING, E.RXJ_PLUS): ((), S.CLOSING),
    (S.CLOSING, E.RXJ_MINUS): ((A.TLF,), S.CLOSED),
    (S.CLOSING, E.RXR): ((), S.CLOSING),
    # -- Stopping (5)
    (S.STOPPING, E.DOWN): ((), S.STARTING),
    (S.STOPPING, E.OPEN): ((), S.STOPPING),
    (S.STOPPING, E.CLOSE): ((), S.CLOSING),
    (S.STOPPING, E.TO_PLUS): ((A.STR,), S.STOPPING),
    (S.STOPPING, E.TO_MINUS): ((A.TLF,), S.STOPPED),
    (S.STOPPING, E.RCR_PLUS): ((), S.STOPPING),
    (S.STOPPING, E.RCR_MINUS): ((), S.STOPPING),
    (S.STOPPING, E.RCA): ((), S.STOPPING),
    (S.STOPPING, E.RCN): ((), S.STOPPING),
    (S.STOPPING, E.RTR): ((A.STA,), S.STOPPING),
    (S.STOPPING, E.RTA): ((A.TLF,), S.STOPPED),
    (S.STOPPING, E.RUC): ((A.SCJ,), S.STOPPING),
    (S.STOPPING, E.RXJ_PLUS): ((), S.STOPPING),
    (S.STOPPING, E.RXJ_MINUS): ((A.TLF,), S.STOPPED),
    (S.STOPPING, E.RXR): ((), S.STOPPING),
    # -- Req-Sent (6)
    (S.REQ_SENT, E.DOWN): ((), S.STARTING),
    (S.REQ_SENT, E.OPEN): ((), S.REQ_SENT),
    (S.REQ_SENT, E.CLOSE): ((A.IRC, A.STR), S.CLOSING),
    (S.REQ_SENT, E.TO_PLUS): ((A.SCR,), S.REQ_SENT),
    (S.REQ_SENT, E.TO_MINUS): ((A.TLF,), S.STOPPED),
    (S.REQ_SENT, E.RCR_PLUS): ((A.SCA,), S.ACK_SENT),
    (S.REQ_SENT, E.RCR_MINUS): ((A.SCN,), S.REQ_SENT),
    (S.REQ_SENT, E.RCA): ((A.IRC,), S.ACK_RCVD),
    (S.REQ_SENT, E.RCN): ((A.IRC, A.SCR), S.REQ_SENT),
    (S.REQ_SENT, E.RTR): ((A.STA,), S.REQ_SENT),
    (S.REQ_SENT, E.RTA): ((), S.REQ_SENT),
    (S.REQ_SENT, E.RUC): ((A.SCJ,), S.REQ_SENT),
    (S.REQ_SENT, E.RXJ_PLUS): ((), S.REQ_SENT),
    (S.REQ_SENT, E.RXJ_MINUS): ((A.TLF,), S.STOPPED),
    (S.REQ_SENT, E.RXR): ((), S.REQ_SENT),
    # -- Ack-Rcvd (7)
    (S.ACK_RCVD, E.DOWN): ((), S.STARTING),
    (S.ACK_RCVD, E.OPEN): ((), S.ACK_RCVD),
    (S.ACK_RCVD, E.CLOSE): ((A.IRC, A.STR), S.CLOSING),
    (S.ACK_RCVD, E.TO_PLUS): ((A.SCR,), S.REQ_SENT),
    (S.ACK_RCVD, E.TO_MINUS): ((A.TLF,), S.STOPPED),
    (S.ACK_RCVD, E.RCR_PLUS): ((A.SCA, A.TLU), S.OPENED),
    (S.ACK_RCVD, E.RCR_MINUS): ((A.SCN,), S.ACK_RCVD),
    (S.ACK_RCVD, E.RCA): ((A.SCR,), S.REQ_SENT),
    (S.ACK_RCVD, E.RCN): ((A.SCR,), S.REQ_SENT),
    (S.ACK_RCVD, E.RTR): ((A.STA,), S.REQ_SENT),
    (S.ACK_RCVD, E.RTA): ((), S.REQ_SENT),
    (S.ACK_RCVD, E.RUC): ((A.SCJ,), S.ACK_RCVD),
    (S.ACK_RCVD, E.RXJ_PLUS): ((), S.REQ_SENT),
    (S.ACK_RCVD, E.RXJ_MINUS): ((A.TLF,), S.STOPPED),
    (S.ACK_RCVD, E.RXR): ((), S.ACK_RCVD),
    # -- Ack-Sent (8)
    (S.ACK_SENT, E.DOWN): ((), S.STARTING),
    (S.ACK_SENT, E.OPEN): ((), S.ACK_SENT),
    (S.ACK_SENT, E.CLOSE): ((A.IRC, A.STR), S.CLOSING),
    (S.ACK_SENT, E.TO_PLUS): ((A.SCR,), S.ACK_SENT),
    (S.ACK_SENT, E.TO_MINUS): ((A.TLF,), S.STOPPED),
    (S.ACK_SENT, E.RCR_PLUS): ((A.SCA,), S.ACK_SENT),
    (S.ACK_SENT, E.RCR_MINUS): ((A.SCN,), S.REQ_SENT),
    (S.ACK_SENT, E.RCA): ((A.IRC, A.TLU), S.OPENED),
    (S.ACK_SENT, E.RCN): ((A.IRC, A.SCR), S.ACK_SENT),
    (S.ACK_SENT, E.RTR): ((A.STA,), S.REQ_SENT),
    (S.ACK_SENT, E.RTA): ((), S.ACK_SENT),
    (S.ACK_SENT, E.RUC): ((A.SCJ,), S.ACK_SENT),
    (S.ACK_SENT, E.RXJ_PLUS): ((), S.ACK_SENT),
    (S.ACK_SENT, E.RXJ_MINUS): ((A.TLF,), S.STOPPED),
    (S.ACK_SENT, E.RXR): ((), S.ACK_SENT),
    # -- Opened (9)
    (S.OPENED, E.DOWN): ((A.TLD,), S.STARTING),
    (S.OPENED, E.OPEN): ((), S.OPENED),
    (S.OPENED, E.CLOSE): ((A.TLD, A.IRC, A.STR), S.CLOSING),
    (S.OPENED, E.RCR_PLUS): ((A.TLD, A.SCR, A.SCA), S.ACK_SENT),
    (S.OPENED, E.RCR_MINUS): ((A.TLD, A.SCR, A.SCN), S.REQ_SENT),
    (S.OPENED, E.RCA): ((A.TLD, A.SCR), S.REQ_SENT),
    (S.OPENED, E.RCN): ((A.TLD, A.SCR), S.REQ_SENT),
    (S.OPENED, E.RTR): ((A.TLD, A.ZRC, A.STA), S.STOPPING),
    (S.OPENED, E.RTA): ((A.TLD, A.SCR), S.REQ_SENT),
    (S.OPENED, E.RUC): ((A.SCJ,), S.OPENED),
    (S.OPENED, E.RXJ_PLUS): ((), S.OPENED),
    (S.OPENED, E.RXJ_MINUS): ((A.TLD, A.IRC, A.STR), S.STOPPING),
    (S.OPENED, E.RXR): ((A.SER,), S.OPENED),
}

_TIMER_STATES: Final = frozenset({S.CLOSING, S.STOPPING, S.REQ_SENT, S.ACK_RCVD, S.ACK_SENT})


def transition(state: State, event: Event) -> Cell:
    """The table cell for ``(state, event)``; a missing cell is a :class:`PppError` naming both."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise PppError(
            f"PPP automaton: event {event.value} is illegal in state {state.name} (RFC 1661 §4.1)"
        ) from None


# -- what a protocol module provides ------------------------------------------------------------------


class Verdict(enum.Enum):
    ACK = "ack"
    REJECT = "reject"


Judgement = Verdict | Option  # an Option means: Nak, suggesting this value


class NegotiationFailed(Exception):
    """Raised by an :class:`OptionHandler` when negotiation cannot converge; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OptionHandler:
    """Describes one protocol's options to the :class:`Automaton`. Subclasses override what they need.

    The defaults describe a protocol with no options and no extra codes.
    """

    name: str = "PPP"
    extra_codes: frozenset[int] = frozenset()

    # our side
    def build_request(self) -> list[Option]:
        """The options of our next Configure-Request."""
        return []

    def on_ack(self, options: list[Option]) -> None:
        """The peer acknowledged our request (``options`` is exactly what we sent)."""

    def on_nak(self, options: list[Option]) -> None:
        """The peer suggested other values; may raise :class:`NegotiationFailed`."""

    def on_reject(self, options: list[Option]) -> None:
        """The peer refused these options; may raise :class:`NegotiationFailed`."""

    # the peer's side
    def judge(self, options: list[Option]) -> list[Judgement]:
        """One judgement per option of the peer's request (same order). Default: reject all."""
        return [Verdict.REJECT for _ in options]

    def hints(self, options: list[Option]) -> list[Option]:
        """Options to add to a Configure-Nak that the peer should have asked for (RFC 1661 §5.3)."""
        return []

    def on_peer_ack(self, options: list[Option]) -> None:
        """We acknowledged the peer's request: these are its values now."""

    def on_layer_started(self) -> None:
        """A new negotiation begins from scratch (``tls``); forget earlier results."""

    # extra codes (only codes in ``extra_codes`` reach these)
    def classify_extra(self, packet: ControlPacket) -> Event | None:
        """Map an extra-code packet to an RFC event (RXR, RXJ+, RXJ-) or None to ignore it."""
        return Event.RXR

    def on_rxr(self, packet: ControlPacket) -> list[bytes]:
        """An Echo/Discard/Reset-like packet in the Opened state: return control packets to send."""
        return []


# -- the automaton ------------------------------------------------------------------------------------


@dataclass
class FsmCounters:
    rx_packets: int = 0
    rx_malformed: int = 0
    rx_unexpected: int = 0  # reply with a wrong identifier, packet before the lower layer is up...
    rx_duplicate_requests: int = 0
    configure_requests_sent: int = 0
    retransmits: int = 0
    naks_sent: int = 0
    rejects_sent: int = 0
    code_rejects_sent: int = 0


@dataclass
class FsmConfig:
    restart_interval: float = 3.0
    max_configure: int = 10
    max_terminate: int = 2
    max_failure: int = 5


def readable_reason(data: bytes) -> str:
    """Printable text from a Terminate-Request's data (any bytes in, never raises)."""
    text = data[:200].decode("utf-8", "replace")
    return "".join(ch if ch.isprintable() else "?" for ch in text).strip()


@dataclass
class _Reply:
    data: bytes
    packet: bytes
    acked: bool


class Automaton:
    """One RFC 1661 automaton driving one :class:`OptionHandler`.

    Entry points (all take ``now``): :meth:`up`, :meth:`down`, :meth:`open`, :meth:`close`,
    :meth:`receive` (one control packet, the PPP information field), :meth:`timeout`. Outputs:
    :meth:`take_packets` (control packets to send) and :meth:`take_signals` (layer actions).
    ``reason`` tells why the layer went down or finished, when it did.
    """

    def __init__(self, handler: OptionHandler, config: FsmConfig | None = None) -> None:
        self.handler = handler
        self.config = config or FsmConfig()
        self.state = State.INITIAL
        self.counters = FsmCounters()
        self.reason: str | None = None  # why the layer is (going) down, once known
        self.failed = False  # True when the reason is a negotiation failure or peer silence
        self.peer_terminated = False
        self.timed_out = False  # negotiation ended because the peer stopped answering
        self.terminate_text = ""  # the text of the peer's Terminate-Request, if it sent one
        self._restart_count = 0
        self._deadline: float | None = None
        self._failures = 0  # Naks sent since the last Ack we sent
        self._refusals = 0  # Naks/Rejects received since the last Ack we received
        self._now = 0.0
        self._id = 0
        self._request_id = 0
        self._request_data: bytes | None = None
        self._request_answered = True
        self._request_options: list[Option] = []
        self._retransmit = False
        self._terminate_data = b""
        self._packet: ControlPacket | None = None  # the packet behind the current event
        self._reply: bytes = b""  # the Ack/Nak/Reject prepared for the current RCR event
        self._answered: dict[tuple[int, bytes], _Reply] = {}
        self._last_answered: tuple[int, bytes] | None = None
        self._out: list[bytes] = []
        self._signals: list[Signal] = []

    # -- outputs ----------------------------------------------------------------------------------------
    def take_packets(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def take_signals(self) -> list[Signal]:
        out, self._signals = self._signals, []
        return out

    def next_deadline(self) -> float | None:
        return self._deadline

    @property
    def is_opened(self) -> bool:
        return self.state is State.OPENED

    def next_identifier(self) -> int:
        """A fresh identifier (also for the handler's own packets: Echo, Reset-Request...)."""
        self._id = (self._id + 1) & 0xFF
        return self._id

    # -- administrative and lower-layer events ----------------------------------------------------------
    def up(self, now: float) -> None:
        self._now = now
        self._fire(Event.UP)

    def down(self, now: float) -> None:
        self._now = now
        self._fire(Event.DOWN)

    def open(self, now: float) -> None:
        self._now = now
        self._fire(Event.OPEN)

    def close(self, now: float, reason: str) -> None:
        """Administrative Close; ``reason`` goes in the Terminate-Request as text."""
        self._now = now
        if self.reason is None:
            self.reason = reason
        self._terminate_data = reason.encode("utf-8", "replace")[:120]
        self._fire(Event.CLOSE)

    def timeout(self, now: float) -> None:
        self._now = now
        if self._deadline is None or now < self._deadline:
            return
        self._deadline = None
        if self._restart_count > 0:
            self._retransmit = True
            try:
                self._fire(Event.TO_PLUS)
            finally:
                self._retransmit = False
            return
        if self.state in (S.REQ_SENT, S.ACK_RCVD, S.ACK_SENT) and self.reason is None:
            self.failed = True
            self.timed_out = True
            self.reason = (
                f"{self.handler.name}: the peer did not complete negotiation after "
                f"{self.config.max_configure} Configure-Requests"
            )
        self._fire(Event.TO_MINUS)

    def fail(self, now: float, reason: str) -> None:
        """Close because negotiation cannot succeed (the reason is reported as a failure)."""
        self.failed = True
        self.close(now, reason)

    # -- packets ----------------------------------------------------------------------------------------
    def receive(self, data: bytes | memoryview, now: float) -> None:
        """One control packet (the PPP information field). Bad packets are dropped and counted."""
        self._now = now
        self.counters.rx_packets += 1
        try:
            packet = F.decode_control(data)
        except PppError:
            self.counters.rx_malformed += 1
            return
        if self.state in (S.INITIAL, S.STARTING):
            # the lower layer is not up: RFC 1661 §4.2 says no packet can arrive; drop it
            self.counters.rx_unexpected += 1
            return
        try:
            self._dispatch(packet)
        except NegotiationFailed as exc:
            self.fail(now, exc.reason)
        except PppError:
            self.counters.rx_malformed += 1
        finally:
            self._packet = None

    def _dispatch(self, packet: ControlPacket) -> None:
        code = packet.code
        self._packet = packet
        if code == F.CONFIGURE_REQUEST:
            self._receive_configure_request(packet)
        elif code in (F.CONFIGURE_ACK, F.CONFIGURE_NAK, F.CONFIGURE_REJECT):
            self._receive_configure_reply(packet)
        elif code == F.TERMINATE_REQUEST:
            if self.state is S.OPENED or self.state in (S.REQ_SENT, S.ACK_RCVD, S.ACK_SENT):
                self.peer_terminated = True
                text = readable_reason(packet.data)
                self.terminate_text = text
                if self.reason is None:
                    self.reason = f"the peer closed {self.handler.name}" + (f": {text}" if text else "")
            self._fire(Event.RTR)
        elif code == F.TERMINATE_ACK:
            self._fire(Event.RTA)
        elif code == F.CODE_REJECT:
            rejected = packet.data[0] if packet.data else 0
            if 1 <= rejected <= 7:
                if self.reason is None:
                    self.failed = True
                    name = F.CODE_NAMES.get(rejected, str(rejected))
                    self.reason = f"the peer does not implement {self.handler.name} {name}"
                self._fire(Event.RXJ_MINUS)
            else:
                self._fire(Event.RXJ_PLUS)
        elif code in self.handler.extra_codes:
            event = self.handler.classify_extra(packet)
            if event is Event.RXJ_MINUS and self.reason is None:
                self.failed = True
                self.reason = f"{self.handler.name}: the peer rejected an essential protocol"
            if event is not None:
                self._fire(event)
        else:
            self._fire(Event.RUC)

    def _receive_configure_request(self, packet: ControlPacket) -> None:
        key = (packet.identifier, packet.data)
        previous = self._answered.get(key)
        if previous is not None:
            if key != self._last_answered:
                self.counters.rx_duplicate_requests += 1  # an older copy: answered differently since
                return
            self.counters.rx_duplicate_requests += 1
            if self.state is S.OPENED:
                if previous.acked:
                    self._out.append(previous.packet)  # our Ack was lost: say it again
                return
            if self.state not in (S.CLOSED, S.CLOSING, S.STOPPING):
                # a retransmission of the request we answered last: same answer, same event,
                # without judging it twice (judging may count, e.g. loopback suspicions)
                self._reply = previous.packet
                self._fire(Event.RCR_PLUS if previous.acked else Event.RCR_MINUS)
                return
        options = F.decode_options(packet.data)
        if self.state in (S.CLOSED, S.CLOSING, S.STOPPING):
            # these states never answer with sca/scn (RCR+ and RCR- share their cells): no judging
            self._fire(Event.RCR_PLUS)
            return
        good, reply = self._judge(packet.identifier, options)
        self._reply = reply
        self._answered[key] = _Reply(packet.data, reply, good)
        self._last_answered = key
        self._fire(Event.RCR_PLUS if good else Event.RCR_MINUS)

    def _judge(self, identifier: int, options: list[Option]) -> tuple[bool, bytes]:
        judgements = self.handler.judge(options)
        if len(judgements) != len(options):
            raise PppError(f"{self.handler.name}: option handler returned a wrong number of judgements")
        rejects = [o for o, j in zip(options, judgements, strict=True) if j is Verdict.REJECT]
        if rejects:
            return False, self._reject(identifier, rejects)
        naks = [j for j in judgements if isinstance(j, Option)]
        naks += self.handler.hints(options)
        if naks:
            if self._failures >= self.config.max_failure:
                # RFC 1661 §4.6 Max-Failure: stop suggesting, refuse the options we could not agree on
                suggested = {n.type for n in naks}
                refused = [o for o in options if o.type in suggested]
                if refused:
                    return False, self._reject(identifier, refused)
            else:
                self._failures += 1
                self.counters.naks_sent += 1
                return False, F.encode_control(F.CONFIGURE_NAK, identifier, F.encode_options(naks))
        self._failures = 0
        self.handler.on_peer_ack(options)
        return True, F.encode_control(F.CONFIGURE_ACK, identifier, F.encode_options(options))

    def _reject(self, identifier: int, rejects: list[Option]) -> bytes:
        self.counters.rejects_sent += 1
        return F.encode_control(F.CONFIGURE_REJECT, identifier, F.encode_options(rejects))

    def _receive_configure_reply(self, packet: ControlPacket) -> None:
        if packet.identifier != self._request_id or self._request_answered:
            self.counters.rx_unexpected += 1  # a late, duplicated or stray reply
            return
        if self.state not in (S.REQ_SENT, S.ACK_RCVD, S.ACK_SENT, S.OPENED):
            # Closed/Stopped answer with Terminate-Ack, Closing/Stopping ignore (per the table)
            self._fire(Event.RCA if packet.code == F.CONFIGURE_ACK else Event.RCN)
            return
        options = F.decode_options(packet.data)
        if packet.code == F.CONFIGURE_ACK:
            if packet.data != (self._request_data or b""):
                self.counters.rx_malformed += 1  # an Ack must repeat the request exactly
                return
            self._request_answered = True
            self._refusals = 0
            self.handler.on_ack(options)
            self._fire(Event.RCA)
            return
        sent_types = {o.type for o in self._request_options}
        if packet.code == F.CONFIGURE_REJECT and any(o.type not in sent_types for o in options):
            self.counters.rx_malformed += 1  # a Reject may only list options we sent
            return
        self._request_answered = True
        self._refusals += 1
        if self._refusals > self.config.max_configure:
            raise NegotiationFailed(
                f"{self.handler.name}: the peer refused our Configure-Request {self._refusals} times; "
                "negotiation does not converge"
            )
        if packet.code == F.CONFIGURE_NAK:
            self.handler.on_nak(options)
        else:
            self.handler.on_reject(options)
        self._fire(Event.RCN)

    # -- the table walk ---------------------------------------------------------------------------------
    def _fire(self, event: Event) -> None:
        actions, next_state = transition(self.state, event)
        self.state = next_state
        for action in actions:
            self._run(action, actions)
        if next_state not in _TIMER_STATES:
            self._deadline = None

    def _run(self, action: Action, actions: Sequence[Action]) -> None:
        if action is A.TLU:
            self._signals.append(Signal.UP)
        elif action is A.TLD:
            self._signals.append(Signal.DOWN)
            self._answered.clear()
            self._last_answered = None
        elif action is A.TLS:
            self.reason = None
            self.failed = False
            self.timed_out = False
            self.peer_terminated = False
            self._failures = 0
            self._refusals = 0
            self._answered.clear()
            self._last_answered = None
            self.handler.on_layer_started()
            self._signals.append(Signal.STARTED)
        elif action is A.TLF:
            self._signals.append(Signal.FINISHED)
        elif action is A.IRC:
            terminating = A.STR in actions
            self._restart_count = self.config.max_terminate if terminating else self.config.max_configure
        elif action is A.ZRC:
            self._restart_count = 0
            self._deadline = self._now + self.config.restart_interval
        elif action is A.SCR:
            self._send_configure_request()
        elif action is A.SCA or action is A.SCN:
            self._out.append(self._reply)
        elif action is A.STR:
            self._restart_count -= 1
            self._deadline = self._now + self.config.restart_interval
            data = self._terminate_data or (self.reason or "").encode("utf-8", "replace")[:120]
            self._out.append(F.encode_control(F.TERMINATE_REQUEST, self.next_identifier(), data))
        elif action is A.STA:
            ident = self._packet.identifier if self._packet is not None else self.next_identifier()
            self._out.append(F.encode_control(F.TERMINATE_ACK, ident))
        elif action is A.SCJ:
            rejected = b""
            if self._packet is not None:
                rejected = F.encode_control(self._packet.code, self._packet.identifier, self._packet.data)
            self.counters.code_rejects_sent += 1
            self._out.append(F.encode_control(F.CODE_REJECT, self.next_identifier(), rejected[:1400]))
        elif action is A.SER and self._packet is not None:
            self._out.extend(self.handler.on_rxr(self._packet))

    def _send_configure_request(self) -> None:
        self._restart_count -= 1
        self._deadline = self._now + self.config.restart_interval
        if self._retransmit and self._request_data is not None:
            # a timeout resends the same request with the same identifier, also from Ack-Rcvd
            # (where the Ack we had no longer counts): the peer recognises the copy and answers
            # it again instead of renegotiating an Opened layer
            self.counters.retransmits += 1
            self._request_answered = False
        else:
            self._request_options = list(self.handler.build_request())
            self._request_data = F.encode_options(self._request_options)
            self._request_id = self.next_identifier()
            self._request_answered = False
        self.counters.configure_requests_sent += 1
        self._out.append(F.encode_control(F.CONFIGURE_REQUEST, self._request_id, self._request_data or b""))
