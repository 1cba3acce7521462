"""The RFC 1661 §4 automaton: the table cell by cell against the RFC, then behaviour."""

from __future__ import annotations

import re

import pytest

from sidecar.proto.errors import PppError
from sidecar.proto.ppp import frame as F
from sidecar.proto.ppp.frame import Option
from sidecar.proto.ppp.fsm import (
    TRANSITIONS,
    Automaton,
    Event,
    FsmConfig,
    Judgement,
    NegotiationFailed,
    OptionHandler,
    Signal,
    State,
    Verdict,
    transition,
)

# RFC 1661 §4.1 as printed (the reference; parsed independently of sidecar's table).
RFC_TABLE = """
      | State
      |    0         1         2         3         4         5
Events| Initial   Starting  Closed    Stopped   Closing   Stopping
------+-----------------------------------------------------------
 Up   |    2     irc,scr/6     -         -         -         -
 Down |    -         -         0       tls/1       0         1
 Open |  tls/1       1     irc,scr/6     3r        5r        5r
 Close|    0       tlf/0       2         2         4         4
 TO+  |    -         -         -         -       str/4     str/5
 TO-  |    -         -         -         -       tlf/2     tlf/3
 RCR+ |    -         -       sta/2 irc,scr,sca/8   4         5
 RCR- |    -         -       sta/2 irc,scr,scn/6   4         5
 RCA  |    -         -       sta/2     sta/3       4         5
 RCN  |    -         -       sta/2     sta/3       4         5
 RTR  |    -         -       sta/2     sta/3     sta/4     sta/5
 RTA  |    -         -         2         3       tlf/2     tlf/3
 RUC  |    -         -       scj/2     scj/3     scj/4     scj/5
 RXJ+ |    -         -         2         3         4         5
 RXJ- |    -         -       tlf/2     tlf/3     tlf/2     tlf/3
 RXR  |    -         -         2         3         4         5

      | State
      |    6         7         8           9
Events| Req-Sent  Ack-Rcvd  Ack-Sent    Opened
------+-----------------------------------------
 Up   |    -         -         -           -
 Down |    1         1         1         tld/1
 Open |    6         7         8           9r
 Close|irc,str/4 irc,str/4 irc,str/4 tld,irc,str/4
 TO+  |  scr/6     scr/6     scr/8         -
 TO-  |  tlf/3p    tlf/3p    tlf/3p        -
 RCR+ |  sca/8   sca,tlu/9   sca/8   tld,scr,sca/8
 RCR- |  scn/6     scn/7     scn/6   tld,scr,scn/6
 RCA  |  irc/7     scr/6x  irc,tlu/9   tld,scr/6x
 RCN  |irc,scr/6   scr/6x  irc,scr/8   tld,scr/6x
 RTR  |  sta/6     sta/6     sta/6   tld,zrc,sta/5
 RTA  |    6         6         8       tld,scr/6
 RUC  |  scj/6     scj/7     scj/8       scj/9
 RXJ+ |    6         6         8           9
 RXJ- |  tlf/3     tlf/3     tlf/3   tld,irc,str/5
 RXR  |    6         7         8         ser/9
"""


def parse_rfc_table() -> dict[tuple[int, str], tuple[tuple[str, ...], int] | None]:
    cells: dict[tuple[int, str], tuple[tuple[str, ...], int] | None] = {}
    first = 0
    for line in RFC_TABLE.splitlines():
        if "|" not in line:
            continue
        label, rest = (part.strip() for part in line.split("|", 1))
        if label == "" and rest.split()[:1] and rest.split()[0].isdigit():
            first = int(rest.split()[0])
            continue
        if label in ("", "Events") or label.startswith("-"):
            continue
        for offset, cell in enumerate(rest.split()):
            state = first + offset
            if cell == "-":
                cells[(state, label)] = None
                continue
            m = re.fullmatch(r"(?:([a-z,]+)/)?(\d)[prx]?", cell)
            assert m, cell
            actions = tuple(m.group(1).split(",")) if m.group(1) else ()
            cells[(state, label)] = (actions, int(m.group(2)))
    return cells


def test_reference_table_is_complete() -> None:
    cells = parse_rfc_table()
    assert len(cells) == 10 * 16
    assert sum(v is not None for v in cells.values()) == 120


def test_table_matches_rfc_cell_by_cell() -> None:
    reference = parse_rfc_table()
    for (state_no, event_label), expected in reference.items():
        state, event = State(state_no), Event(event_label)
        got = TRANSITIONS.get((state, event))
        if expected is None:
            assert got is None, f"{state.name}/{event.value} should be illegal"
            continue
        assert got is not None, f"{state.name}/{event.value} missing"
        actions, nxt = got
        assert tuple(a.value for a in actions) == expected[0], f"{state.name}/{event.value}"
        assert nxt.value == expected[1], f"{state.name}/{event.value}"
    assert len(TRANSITIONS) == 120  # nothing beyond the RFC


def test_illegal_cell_names_state_and_event() -> None:
    with pytest.raises(PppError, match=r"RCA.*INITIAL"):
        transition(State.INITIAL, Event.RCA)
    fsm = Automaton(OptionHandler())
    with pytest.raises(PppError, match=r"Down.*INITIAL"):
        fsm.down(0.0)


# -- behaviour ----------------------------------------------------------------------------------------


class ValueHandler(OptionHandler):
    """Option 1 carries one byte; we want `want` from the peer and ask for `ours` (accepting Naks)."""

    name = "TEST"

    def __init__(self, ours: int, want: int | None, *, reject_types: tuple[int, ...] = ()) -> None:
        self.ours = ours
        self.want = want
        self.reject_types = reject_types
        self.acked: int | None = None
        self.peer_value: int | None = None
        self.rejected = False

    def build_request(self) -> list[Option]:
        return [] if self.rejected else [Option(1, bytes((self.ours,)))]

    def on_ack(self, options: list[Option]) -> None:
        self.acked = options[0].data[0] if options else None

    def on_nak(self, options: list[Option]) -> None:
        for o in options:
            if o.type == 1:
                self.ours = o.data[0]

    def on_reject(self, options: list[Option]) -> None:
        self.rejected = True

    def judge(self, options: list[Option]) -> list[Judgement]:
        out: list[Judgement] = []
        for o in options:
            if o.type in self.reject_types or o.type != 1 or len(o.data) != 1:
                out.append(Verdict.REJECT)
            elif self.want is not None and o.data[0] != self.want:
                out.append(Option(1, bytes((self.want,))))
            else:
                out.append(Verdict.ACK)
        return out

    def on_peer_ack(self, options: list[Option]) -> None:
        self.peer_value = options[0].data[0] if options else None


def state_of(fsm: Automaton) -> State:
    return fsm.state  # a call, so that the type checker does not narrow across receive()


def pump(a: Automaton, b: Automaton, now: float, rounds: int = 20) -> None:
    for _ in range(rounds):
        pa, pb = a.take_packets(), b.take_packets()
        if not pa and not pb:
            return
        for p in pa:
            b.receive(p, now)
        for p in pb:
            a.receive(p, now)


def started(handler: OptionHandler, cfg: FsmConfig | None = None) -> Automaton:
    fsm = Automaton(handler, cfg)
    fsm.open(0.0)
    fsm.up(0.0)
    return fsm


def test_two_automata_negotiate_with_a_nak() -> None:
    ha, hb = ValueHandler(ours=5, want=None), ValueHandler(ours=7, want=9)
    a, b = started(ha), started(hb)
    pump(a, b, 0.0)
    assert a.state is State.OPENED and b.state is State.OPENED
    assert ha.acked == 9  # a took b's Nak
    assert hb.peer_value == 9
    assert a.take_signals() == [Signal.STARTED, Signal.UP]
    assert a.next_deadline() is None and b.next_deadline() is None


def test_reject_removes_option() -> None:
    ha, hb = ValueHandler(ours=5, want=None), ValueHandler(ours=7, want=None, reject_types=(1,))
    a, b = started(ha), started(hb)
    pump(a, b, 0.0)
    assert a.is_opened and b.is_opened
    assert ha.rejected and ha.acked is None


def test_retransmits_then_gives_up_after_max_configure() -> None:
    cfg = FsmConfig(restart_interval=2.0, max_configure=4)
    a = started(ValueHandler(1, None), cfg)
    sent = a.take_packets()
    assert len(sent) == 1 and sent[0][0] == F.CONFIGURE_REQUEST
    first_id = sent[0][1]
    now = 0.0
    for _ in range(3):
        deadline = a.next_deadline()
        assert deadline == now + 2.0
        now = deadline
        a.timeout(now - 0.5)  # early: harmless
        assert a.take_packets() == []
        a.timeout(now)
        again = a.take_packets()
        assert again == sent  # retransmission keeps identifier and contents
        assert again[0][1] == first_id
    assert a.counters.retransmits == 3
    now = a.next_deadline() or 0.0
    a.timeout(now)
    assert a.state is State.STOPPED
    assert a.take_packets() == []
    assert Signal.FINISHED in a.take_signals()
    assert a.failed and a.reason is not None and "4 Configure-Requests" in a.reason
    assert a.next_deadline() is None


def test_max_failure_turns_nak_into_reject() -> None:
    cfg = FsmConfig(max_failure=3)
    b = started(ValueHandler(7, want=9), cfg)
    b.take_packets()
    replies = []
    for ident in range(1, 6):
        b.receive(F.encode_control(F.CONFIGURE_REQUEST, ident, b"\x01\x03\x02"), 0.0)
        replies.extend(b.take_packets())
    codes = [r[0] for r in replies]
    assert codes == [F.CONFIGURE_NAK] * 3 + [F.CONFIGURE_REJECT] * 2
    assert F.decode_control(replies[0]).data == b"\x01\x03\x09"  # the suggestion
    assert F.decode_control(replies[3]).data == b"\x01\x03\x02"  # the refused option, verbatim


def test_terminate_carries_readable_reason() -> None:
    a, b = started(ValueHandler(1, None)), started(ValueHandler(2, None))
    pump(a, b, 0.0)
    a.take_signals()
    b.take_signals()
    a.close(1.0, "user asked to disconnect")
    (term,) = a.take_packets()
    assert F.decode_control(term).code == F.TERMINATE_REQUEST
    assert F.decode_control(term).data == b"user asked to disconnect"
    assert state_of(a) is State.CLOSING and a.take_signals() == [Signal.DOWN]
    b.receive(term, 1.0)
    assert b.state is State.STOPPING and b.peer_terminated
    assert b.reason == "the peer closed TEST: user asked to disconnect"
    (ack,) = b.take_packets()
    a.receive(ack, 1.0)
    assert state_of(a) is State.CLOSED and a.take_signals() == [Signal.FINISHED]
    # b waits one restart interval (zrc), then finishes
    b.timeout(b.next_deadline() or 0.0)
    assert state_of(b) is State.STOPPED and b.take_signals() == [Signal.DOWN, Signal.FINISHED]


def test_terminate_request_is_retransmitted_max_terminate_times() -> None:
    cfg = FsmConfig(max_terminate=3, restart_interval=1.0)
    a = started(ValueHandler(1, None), cfg)
    a.take_packets()
    a.close(0.0, "bye")
    count = len(a.take_packets())
    now = 0.0
    while a.next_deadline() is not None:
        now = a.next_deadline() or now
        a.timeout(now)
        count += len(a.take_packets())
    assert count == 3
    assert a.state is State.CLOSED


def test_duplicate_ack_does_not_renegotiate_and_duplicate_request_is_reacked() -> None:
    a, b = started(ValueHandler(1, None)), started(ValueHandler(2, None))
    req_a = a.take_packets()
    req_b = b.take_packets()
    b.receive(req_a[0], 0.0)
    ack_b = b.take_packets()
    a.receive(ack_b[0], 0.0)
    a.receive(req_b[0], 0.0)
    ack_a = a.take_packets()
    b.receive(ack_a[0], 0.0)
    assert a.is_opened and b.is_opened
    a.receive(ack_b[0], 0.0)  # duplicated Ack
    assert a.is_opened and a.take_packets() == []
    a.receive(req_b[0], 0.0)  # duplicated (or retransmitted) request: repeat the Ack, stay Opened
    assert a.is_opened and a.take_packets() == ack_a
    assert a.counters.rx_duplicate_requests == 1


def test_unknown_code_gets_code_reject_and_catastrophic_code_reject_stops() -> None:
    a = started(ValueHandler(1, None))
    a.take_packets()
    a.receive(F.encode_control(77, 3, b"zz"), 0.0)
    (rej,) = a.take_packets()
    pkt = F.decode_control(rej)
    assert pkt.code == F.CODE_REJECT and pkt.data == F.encode_control(77, 3, b"zz")
    a.receive(F.encode_control(F.CODE_REJECT, 4, F.encode_control(F.CONFIGURE_REQUEST, 1)), 0.0)
    assert a.state is State.STOPPED and a.failed
    assert a.reason is not None and "Configure-Request" in a.reason


def test_negotiation_failed_closes_with_reason() -> None:
    class Refuser(ValueHandler):
        def on_reject(self, options: list[Option]) -> None:
            raise NegotiationFailed("the option is required")

    a = started(Refuser(1, None))
    (req,) = a.take_packets()
    pkt = F.decode_control(req)
    a.receive(F.encode_control(F.CONFIGURE_REJECT, pkt.identifier, pkt.data), 0.0)
    assert a.state is State.CLOSING and a.failed and a.reason == "the option is required"
    (term,) = a.take_packets()
    assert F.decode_control(term).data == b"the option is required"


def test_stray_replies_are_counted_not_acted_on() -> None:
    a = started(ValueHandler(1, None))
    (req,) = a.take_packets()
    pkt = F.decode_control(req)
    a.receive(F.encode_control(F.CONFIGURE_ACK, (pkt.identifier + 1) & 0xFF, pkt.data), 0.0)
    a.receive(F.encode_control(F.CONFIGURE_ACK, pkt.identifier, b"\x01\x03\x63"), 0.0)  # altered
    assert a.state is State.REQ_SENT
    assert a.counters.rx_unexpected == 1 and a.counters.rx_malformed == 1
    a.receive(b"\x01", 0.0)
    assert a.counters.rx_malformed == 2


def test_peer_that_naks_forever_does_not_hang() -> None:
    class Stubborn(ValueHandler):
        def on_nak(self, options: list[Option]) -> None:
            self.ours = (self.ours + 1) & 0xFF  # never converges on purpose

    cfg = FsmConfig(max_configure=5)
    a = started(Stubborn(1, None), cfg)
    for _ in range(20):
        for raw in a.take_packets():
            pkt = F.decode_control(raw)
            if pkt.code == F.CONFIGURE_REQUEST:
                a.receive(F.encode_control(F.CONFIGURE_NAK, pkt.identifier, b"\x01\x03\x00"), 0.0)
    assert a.failed and a.reason is not None and "does not converge" in a.reason
