"""The PPTP control connection machine: client and server run against each other in-process."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.proto.pptp import (
    CALL_TRANSITIONS,
    GENERAL_ERRORS,
    TRANSITIONS,
    CallCleared,
    CallClearRequest,
    CallEstablished,
    CallState,
    ControlClosed,
    ControlConfig,
    ControlConnected,
    ControlConnection,
    ControlEvent,
    ControlState,
    EchoAnswered,
    EchoReply,
    EchoRequest,
    IncomingCallConnected,
    IncomingCallReply,
    IncomingCallRequest,
    LinkInfo,
    Message,
    OutgoingCallReply,
    OutgoingCallRequest,
    Role,
    SetLinkInfo,
    StartControlConnectionReply,
    StartControlConnectionRequest,
    StopControlConnectionReply,
    StopControlConnectionRequest,
    StreamDecoder,
    WanError,
    WanErrorNotify,
    describe,
    encode_message,
)


def sent(conn: ControlConnection) -> list[Message]:
    """Drain and decode what the machine wants to send."""
    return StreamDecoder().feed(conn.data_to_send())


class Harness:
    """A client and a server joined by an in-memory pipe, with a fake clock."""

    def __init__(self, *, chunk: int = 0, **config: Any) -> None:
        self.client = ControlConnection(
            Role.CLIENT,
            ControlConfig(hostname="client-host", vendor="test-client", **config),
            random.Random(1),
        )
        self.server = ControlConnection(
            Role.SERVER,
            ControlConfig(hostname="server-host", vendor="test-server", **config),
            random.Random(2),
        )
        self.now = 0.0
        self.chunk = chunk  # 0 = deliver everything at once, else in pieces of this size
        self.server_alive = True
        self.c_events: list[ControlEvent] = []
        self.s_events: list[ControlEvent] = []

    def _feed(self, conn: ControlConnection, data: bytes) -> list[ControlEvent]:
        if not self.chunk:
            return conn.receive_data(data, self.now)
        events: list[ControlEvent] = []
        for i in range(0, len(data), self.chunk):
            events += conn.receive_data(data[i : i + self.chunk], self.now)
        return events

    def pump(self) -> None:
        for _ in range(50):
            to_server = self.client.data_to_send()
            to_client = self.server.data_to_send() if self.server_alive else b""
            if not to_server and not to_client:
                return
            if to_server and self.server_alive:
                self.s_events += self._feed(self.server, to_server)
            if to_client:
                self.c_events += self._feed(self.client, to_client)
        raise AssertionError("the machines keep talking")

    def start(self) -> None:
        self.server.start(self.now)
        self.client.start(self.now)
        self.pump()

    def advance(self, until: float) -> None:
        """Move the clock to ``until``, firing every deadline on the way in order."""
        while True:
            machines = [self.client, self.server] if self.server_alive else [self.client]
            deadlines = [d for m in machines if (d := m.next_deadline()) is not None]
            if not deadlines or min(deadlines) > until:
                break
            self.now = max(self.now, min(deadlines))
            self.c_events += self.client.timeout(self.now)
            if self.server_alive:
                self.s_events += self.server.timeout(self.now)
            self.pump()
        self.now = until

    def take(self) -> tuple[list[ControlEvent], list[ControlEvent]]:
        c, s = self.c_events, self.s_events
        self.c_events, self.s_events = [], []
        return c, s


def established(**config: Any) -> Harness:
    h = Harness(**config)
    h.start()
    c, s = h.take()
    assert [type(e) for e in c] == [ControlConnected, CallEstablished]
    assert [type(e) for e in s] == [ControlConnected, CallEstablished]
    return h


# -- connect and call ------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [0, 1, 5])
def test_connect_and_call(chunk: int) -> None:
    h = Harness(chunk=chunk, window=32, connect_speed=10_000_000)
    h.start()
    c, s = h.take()
    assert c[0] == ControlConnected("server-host", "test-server", 1, 0x0100)
    assert s[0] == ControlConnected("client-host", "test-client", 1, 0x0100)
    c_call, s_call = c[1], s[1]
    assert isinstance(c_call, CallEstablished) and isinstance(s_call, CallEstablished)
    assert c_call.local_call_id == h.client.local_call_id == s_call.peer_call_id == h.server.peer_call_id
    assert s_call.local_call_id == h.server.local_call_id == c_call.peer_call_id == h.client.peer_call_id
    assert c_call.local_call_id != 0 and s_call.local_call_id != 0
    assert c_call.connect_speed == s_call.connect_speed == 10_000_000
    assert c_call.peer_window == s_call.peer_window == 32
    for m in (h.client, h.server):
        assert m.state is ControlState.ESTABLISHED and m.call_state is CallState.ESTABLISHED
        assert m.counters.unexpected_messages == 0


def test_client_requests_are_sensible() -> None:
    client = ControlConnection(Role.CLIENT, ControlConfig(hostname="me", window=48), random.Random(7))
    client.start(0.0)
    (sccrq,) = sent(client)
    assert isinstance(sccrq, StartControlConnectionRequest)
    assert (sccrq.protocol_version, sccrq.host_name, sccrq.vendor_string) == (0x0100, "me", "pptp-sidecar")
    assert sccrq.maximum_channels == 0  # a PNS sends 0 (§2.1)
    client.receive_data(encode_message(StartControlConnectionReply(host_name="srv")), 1.0)
    (ocrq,) = sent(client)
    assert isinstance(ocrq, OutgoingCallRequest)
    assert ocrq.call_id == client.local_call_id != 0
    assert ocrq.packet_recv_window_size == 48
    assert 0 < ocrq.minimum_bps <= ocrq.maximum_bps == 100_000_000
    assert client.call_state is CallState.WAIT_REPLY


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**32), st.integers(0, 2**32))
def test_call_ids_come_from_rng_and_are_nonzero(seed_c: int, seed_s: int) -> None:
    h = Harness()
    h.client = ControlConnection(Role.CLIENT, ControlConfig(), random.Random(seed_c))
    h.server = ControlConnection(Role.SERVER, ControlConfig(), random.Random(seed_s))
    h.start()
    assert h.client.local_call_id and h.server.local_call_id
    assert 1 <= h.client.local_call_id <= 0xFFFF and 1 <= h.server.local_call_id <= 0xFFFF
    again = ControlConnection(Role.CLIENT, ControlConfig(), random.Random(seed_c))
    again.start(0.0)
    again.receive_data(encode_message(StartControlConnectionReply()), 0.0)
    assert again.local_call_id == h.client.local_call_id  # randomness only from the rng given


def test_set_link_info_both_ways() -> None:
    h = established()
    h.client.set_link_info(h.now, send_accm=0, receive_accm=0x000A0000)
    h.server.set_link_info(h.now, send_accm=0x12345678, receive_accm=0xFFFFFFFF)
    h.pump()
    c, s = h.take()
    assert s == [LinkInfo(0, 0x000A0000)]
    assert c == [LinkInfo(0x12345678, 0xFFFFFFFF)]


def test_wan_error_notify_is_reported() -> None:
    h = established()
    wen = WanErrorNotify(
        peer_call_id=h.client.local_call_id or 0,
        crc_errors=1,
        framing_errors=2,
        hardware_overruns=3,
        buffer_overruns=4,
        timeout_errors=5,
        alignment_errors=6,
    )
    (event,) = h.client.receive_data(encode_message(wen), 1.0)
    assert event == WanError(1, 2, 3, 4, 5, 6)
    assert "CRC 1" in event.reason and "alignment 6" in event.reason
    # for somebody else's call: counted, not reported
    other = WanErrorNotify(peer_call_id=(h.client.local_call_id or 0) ^ 0x8000)
    assert h.client.receive_data(encode_message(other), 2.0) == []
    assert h.client.counters.bad_call_id == 1


# -- keepalive -------------------------------------------------------------------------------


def test_echo_both_ways_with_rtt() -> None:
    h = established(echo_interval=60.0, echo_timeout=15.0)
    # the server hears something at t=10, so its idle timer runs later than the client's
    h.now = 10.0
    h.client.set_link_info(h.now)
    h.client.data_to_send()  # the server gets it directly:
    h.server.receive_data(encode_message(SetLinkInfo(peer_call_id=h.server.local_call_id or 0)), 10.0)
    assert h.client.next_deadline() == 60.0
    assert h.server.next_deadline() == 70.0
    assert h.client.timeout(59.9) == []  # early: nothing
    assert h.client.data_to_send() == b""
    h.client.timeout(60.0)
    (echo,) = StreamDecoder().feed(request := h.client.data_to_send())
    assert isinstance(echo, EchoRequest)
    assert h.server.receive_data(request, 60.2) == []
    (reply,) = StreamDecoder().feed(answer := h.server.data_to_send())
    assert isinstance(reply, EchoReply) and reply.identifier == echo.identifier and reply.result_code == 1
    (answered,) = h.client.receive_data(answer, 60.5)
    assert isinstance(answered, EchoAnswered) and answered.rtt == pytest.approx(0.5)
    # the server's own timer was reset by the client's echo at 60.2
    assert h.server.next_deadline() == pytest.approx(120.2)
    h.now = 60.5
    h.advance(125.0)
    c, s = h.take()
    assert EchoAnswered(0.0) in s and h.server.counters.echo_replies_received == 1
    assert h.client.counters.echo_requests_answered == 1
    assert h.server.counters.echo_requests_answered == 1
    assert not any(isinstance(e, ControlClosed) for e in c + s)


def test_keepalive_runs_for_hours_without_closing() -> None:
    h = established(echo_interval=10.0, echo_timeout=3.0)
    h.advance(3600.0)
    c, s = h.take()
    assert all(isinstance(e, EchoAnswered) for e in c + s)
    assert h.client.counters.echo_requests_sent + h.server.counters.echo_requests_sent >= 360
    assert h.client.state is h.server.state is ControlState.ESTABLISHED


@pytest.mark.parametrize(("interval", "timeout"), [(60.0, 15.0), (10.0, 3.0), (1.0, 0.25)])
def test_silent_peer_detected_within_idle_plus_timeout(interval: float, timeout: float) -> None:
    h = established(echo_interval=interval, echo_timeout=timeout)
    h.now = 5.0
    h.server.receive_data(b"", h.now)  # the server is gone (cable cut: no FIN either)
    h.server_alive = False
    h.client.receive_data(encode_message(EchoRequest(identifier=9)), 5.0)  # last words at t=5
    h.client.data_to_send()
    h.advance(5.0 + interval + timeout - 0.001)
    c, _ = h.take()
    assert c == []
    assert h.client.state is ControlState.ESTABLISHED
    h.advance(5.0 + interval + timeout)
    c, _ = h.take()
    assert [type(e) for e in c] == [CallCleared, ControlClosed]
    closed = c[-1]
    assert closed == ControlClosed(
        f"peer stopped answering PPTP echo requests (no reply within {timeout:g} s)",
        by_peer=False,
        error=True,
    )
    assert h.client.closed
    assert h.client.counters.echo_timeouts == 1


def test_echo_timeout_sends_stop_and_drops_later_traffic() -> None:
    h = established(echo_interval=60.0, echo_timeout=15.0)
    h.server_alive = False
    h.client.timeout(60.0)
    assert [type(m) for m in sent(h.client)] == [EchoRequest]
    (closed,) = [e for e in h.client.timeout(75.0) if isinstance(e, ControlClosed)]
    assert "no reply within 15 s" in closed.reason
    assert sent(h.client) == [StopControlConnectionRequest(reason=1)]
    assert h.client.next_deadline() is None
    assert h.client.receive_data(encode_message(EchoReply(identifier=1)), 76.0) == []
    assert h.client.counters.dropped_after_stop == 1
    assert h.client.data_to_send() == b""


def test_any_message_counts_as_life() -> None:
    h = established(echo_interval=60.0, echo_timeout=15.0)
    h.client.timeout(60.0)
    h.client.data_to_send()  # the echo is lost on the way
    # but the server says something else at t=70: the peer is alive, the idle wait restarts
    h.client.receive_data(encode_message(SetLinkInfo(peer_call_id=h.client.local_call_id or 0)), 70.0)
    assert h.client.timeout(75.0) == []
    assert h.client.next_deadline() == 130.0


def test_stale_echo_reply_is_counted_not_reported() -> None:
    h = established()
    h.client.timeout(60.0)
    (echo,) = sent(h.client)
    assert isinstance(echo, EchoRequest)
    wrong = EchoReply(identifier=(echo.identifier + 1) & 0xFFFFFFFF)
    assert h.client.receive_data(encode_message(wrong), 61.0) == []
    assert h.client.counters.stale_echo_replies == 1


def test_keepalive_off() -> None:
    h = established(echo_interval=0.0)
    assert h.client.next_deadline() is None and h.server.next_deadline() is None


# -- clearing the call, stopping -------------------------------------------------------------


def test_client_clears_call_then_stops() -> None:
    h = established()
    assert h.client.clear_call(h.now, "user hung up") == []
    data = h.client.data_to_send()
    assert StreamDecoder().feed(data) == [CallClearRequest(call_id=h.client.local_call_id or 0)]
    h.s_events += h.server.receive_data(data, h.now)
    h.pump()
    c, s = h.take()
    assert c == [
        CallCleared("user hung up", by_peer=False),
        ControlClosed("user hung up", by_peer=False, error=False),
    ]
    assert s[0] == CallCleared("peer sent Call-Clear-Request", by_peer=True)
    assert isinstance(s[1], ControlClosed) and s[1].by_peer and not s[1].error
    assert "Stop-Control-Connection-Request" in s[1].reason
    assert h.client.state is h.server.state is ControlState.CLOSED


def test_server_clears_call() -> None:
    h = established()
    assert h.server.clear_call(h.now, "maintenance") == [CallCleared("maintenance", by_peer=False)]
    h.pump()
    c, s = h.take()
    assert isinstance(c[0], CallCleared) and c[0].by_peer
    assert c[0].reason == "server disconnected the call: admin shutdown; call statistics: maintenance"
    assert c[1] == ControlClosed(c[0].reason, by_peer=True, error=False)
    assert [type(e) for e in s] == [ControlClosed]
    assert h.server.state is h.client.state is ControlState.CLOSED


def test_client_stops() -> None:
    h = established()
    assert h.client.stop(h.now, "shutting down") == [
        CallCleared("control connection stopping: shutting down", by_peer=False)
    ]
    assert h.client.state is ControlState.WAIT_STOP_REPLY
    h.pump()
    c, s = h.take()
    assert c == [ControlClosed("shutting down", by_peer=False, error=False)]
    assert [type(e) for e in s] == [CallCleared, ControlClosed]
    assert all(e.by_peer for e in s if isinstance(e, CallCleared | ControlClosed))
    assert "none (general request" in s[1].reason  # type: ignore[union-attr]


def test_server_stops() -> None:
    h = established()
    h.server.stop(h.now, "server going down")
    h.pump()
    c, s = h.take()
    assert [type(e) for e in c] == [CallCleared, ControlClosed]
    assert isinstance(c[1], ControlClosed) and c[1].by_peer and not c[1].error
    assert s == [ControlClosed("server going down", by_peer=False, error=False)]


def test_both_stop_at_once() -> None:
    h = established()
    h.client.stop(h.now, "a")
    h.server.stop(h.now, "b")
    h.pump()
    c, s = h.take()
    assert [type(e) for e in c if isinstance(e, ControlClosed)] == [ControlClosed]
    assert [type(e) for e in s if isinstance(e, ControlClosed)] == [ControlClosed]
    assert h.client.state is h.server.state is ControlState.CLOSED


def test_stop_reply_timeout_and_eof() -> None:
    h = established(call_timeout=5.0)
    h.client.stop(1.0, "bye")
    h.client.data_to_send()
    assert h.client.next_deadline() == 6.0
    assert h.client.timeout(6.0) == [
        ControlClosed("bye (no Stop-Control-Connection-Reply within 5 s)", by_peer=False, error=False)
    ]
    h2 = established()
    h2.client.stop(1.0, "bye")
    assert h2.client.receive_data(b"", 2.0) == [ControlClosed("bye", by_peer=False, error=False)]


def test_peer_eof_without_stop() -> None:
    h = established()
    c = h.client.receive_data(b"", 3.0)
    assert [type(e) for e in c] == [CallCleared, ControlClosed]
    assert c[1] == ControlClosed(
        "peer closed the TCP control connection without Stop-Control-Connection-Request", True, True
    )
    assert h.client.receive_data(b"", 4.0) == []


def test_control_traffic_after_stop_is_dropped_and_counted() -> None:
    h = established()
    h.client.stop(h.now, "bye")
    h.client.data_to_send()
    # while waiting for the Stop reply: an Echo-Request is not answered
    assert h.client.receive_data(encode_message(EchoRequest(identifier=3)), 1.0) == []
    assert h.client.data_to_send() == b""
    assert h.client.counters.dropped_after_stop == 1
    h.client.receive_data(encode_message(StopControlConnectionReply()), 1.0)
    assert h.client.closed
    assert h.client.receive_data(encode_message(EchoRequest(identifier=4)), 2.0) == []
    assert h.client.counters.dropped_after_stop == 2
    assert h.client.data_to_send() == b""


# -- refusals and error replies --------------------------------------------------------------

OCRP_REASONS = {
    (2, 4): "server refused the outgoing call: general error: no resource",
    (2, 0): "server refused the outgoing call: general error: no general error",
    (3, 0): "server refused the outgoing call: no carrier",
    (4, 0): "server refused the outgoing call: busy",
    (5, 0): "server refused the outgoing call: no dial tone",
    (6, 0): "server refused the outgoing call: time-out",
    (7, 0): "server refused the outgoing call: do not accept",
    (9, 0): "server refused the outgoing call: unknown result code 9",
}


@pytest.mark.parametrize(("codes", "expected"), OCRP_REASONS.items())
def test_server_refusing_the_call_gives_a_readable_reason(codes: tuple[int, int], expected: str) -> None:
    h = Harness()
    h.server.refuse_calls(*codes)
    h.start()
    c, s = h.take()
    assert [type(e) for e in c] == [ControlConnected, CallCleared, ControlClosed]
    assert isinstance(c[1], CallCleared) and c[1].by_peer
    assert c[1].reason.startswith(expected)
    assert c[2] == ControlClosed(c[1].reason, by_peer=True, error=True)
    assert isinstance(s[1], CallCleared) and not s[1].by_peer
    assert h.client.peer_call_id is None


SCCRP_REASONS = {
    (2, 1): "general error: not connected",
    (2, 2): "general error: bad format",
    (2, 3): "general error: bad value",
    (2, 5): "general error: bad call ID",
    (2, 6): "general error: PAC error",
    (3, 0): "command channel already exists",
    (4, 0): "requester is not authorized",
    (5, 0): "the protocol version of the requester is not supported",
}


@pytest.mark.parametrize(("codes", "expected"), SCCRP_REASONS.items())
def test_sccrp_refusal_gives_a_readable_reason(codes: tuple[int, int], expected: str) -> None:
    client = ControlConnection(Role.CLIENT, ControlConfig(), random.Random(1))
    client.start(0.0)
    client.data_to_send()
    reply = StartControlConnectionReply(result_code=codes[0], error_code=codes[1])
    (closed,) = client.receive_data(encode_message(reply), 0.1)
    assert isinstance(closed, ControlClosed) and closed.by_peer and closed.error
    assert closed.reason.startswith(f"server refused the control connection: {expected}")
    assert client.data_to_send() == b""
    assert client.closed


def test_general_error_table_is_complete() -> None:
    words = [
        "no general error",
        "not connected",
        "bad format",
        "bad value",
        "no resource",
        "bad call ID",
        "PAC error",
    ]
    for code, word in enumerate(words):
        assert GENERAL_ERRORS[code].startswith(word)
        assert word in describe({2: "general error"}, 2, code)
    assert describe({1: "ok"}, 1, 0) == "ok"
    assert describe({1: "ok"}, 1, 7) == "ok: unknown general error code 7"


def test_server_refuses_other_protocol_versions() -> None:
    server = ControlConnection(Role.SERVER, ControlConfig(), random.Random(1))
    (closed,) = server.receive_data(
        encode_message(StartControlConnectionRequest(protocol_version=0x0200)), 0.0
    )
    assert closed == ControlClosed(
        "peer asked for PPTP protocol version 2.0; only 1.0 is supported", by_peer=False, error=True
    )
    (reply,) = sent(server)
    assert isinstance(reply, StartControlConnectionReply) and reply.result_code == 5


def test_server_takes_one_call_per_connection() -> None:
    h = established()
    ours = h.server.local_call_id
    assert h.server.receive_data(encode_message(OutgoingCallRequest(call_id=99)), 1.0) == []
    (reply,) = sent(h.server)
    assert reply == OutgoingCallReply(call_id=0, peer_call_id=99, result_code=2, error_code=4)
    assert h.server.local_call_id == ours and h.server.call_state is CallState.ESTABLISHED


def test_client_refuses_incoming_calls() -> None:
    h = established()
    assert h.client.receive_data(encode_message(IncomingCallRequest(call_id=7)), 1.0) == []
    assert sent(h.client) == [IncomingCallReply(call_id=0, peer_call_id=7, result_code=3)]
    assert h.client.counters.incoming_calls_refused == 1


# -- timeouts ---------------------------------------------------------------------------------


def test_sccrp_timeout() -> None:
    client = ControlConnection(Role.CLIENT, ControlConfig(call_timeout=30.0), random.Random(1))
    client.start(100.0)
    assert client.next_deadline() == 130.0
    assert client.timeout(129.99) == []
    assert client.timeout(130.0) == [
        ControlClosed(
            "no Start-Control-Connection-Reply within 30 s: the server does not answer PPTP",
            by_peer=False,
            error=True,
        )
    ]
    assert client.next_deadline() is None


def test_server_waits_for_sccrq_only_so_long() -> None:
    server = ControlConnection(Role.SERVER, ControlConfig(call_timeout=10.0), random.Random(1))
    server.start(0.0)
    (closed,) = server.timeout(10.0)
    assert isinstance(closed, ControlClosed) and closed.error
    assert "no Start-Control-Connection-Request within 10 s" in closed.reason


def test_ocrp_timeout_then_stop() -> None:
    client = ControlConnection(Role.CLIENT, ControlConfig(call_timeout=30.0), random.Random(1))
    client.start(0.0)
    client.receive_data(encode_message(StartControlConnectionReply()), 1.0)
    sent(client)
    assert client.next_deadline() == 31.0
    events = client.timeout(31.0)
    assert events == [CallCleared("no Outgoing-Call-Reply within 30 s", by_peer=False)]
    assert sent(client) == [StopControlConnectionRequest(reason=1)]
    assert client.state is ControlState.WAIT_STOP_REPLY
    (closed,) = client.timeout(61.0)
    assert closed == ControlClosed(
        "no Outgoing-Call-Reply within 30 s (no Stop-Control-Connection-Reply within 30 s)",
        by_peer=False,
        error=True,
    )


def test_call_clear_timeout() -> None:
    h = established(call_timeout=20.0)
    h.client.clear_call(1.0, "done")
    h.client.data_to_send()
    events = h.client.timeout(21.0)
    assert events == [CallCleared("done (no Call-Disconnect-Notify within 20 s)", by_peer=False)]
    assert sent(h.client) == [StopControlConnectionRequest(reason=1)]


# -- wrong state, malformed input, misuse ----------------------------------------------------


def test_messages_in_the_wrong_state_are_counted_not_raised() -> None:
    server = ControlConnection(Role.SERVER, ControlConfig(), random.Random(1))
    early: list[Message] = [
        EchoRequest(identifier=1),
        OutgoingCallRequest(call_id=5),
        StartControlConnectionReply(),
    ]
    for msg in early:
        assert server.receive_data(encode_message(msg), 0.0) == []
    assert server.counters.unexpected_messages == 3
    assert server.data_to_send() == b"" and server.state is ControlState.IDLE
    # it still works afterwards
    (up,) = server.receive_data(encode_message(StartControlConnectionRequest()), 0.0)
    assert isinstance(up, ControlConnected)

    h = established()
    late: list[Message] = [
        IncomingCallConnected(),
        IncomingCallReply(),
        StartControlConnectionRequest(),
        OutgoingCallReply(),
    ]
    for msg in late:
        assert h.client.receive_data(encode_message(msg), 1.0) == []
    assert h.client.counters.unexpected_messages == 4
    assert h.client.call_state is CallState.ESTABLISHED


def test_call_messages_for_other_call_ids_are_ignored() -> None:
    h = established()
    bad = (h.server.peer_call_id or 0) ^ 0x0101
    assert h.server.receive_data(encode_message(CallClearRequest(call_id=bad)), 1.0) == []
    assert h.server.receive_data(encode_message(SetLinkInfo(peer_call_id=bad)), 1.0) == []
    assert h.server.counters.bad_call_id == 2
    assert h.server.call_state is CallState.ESTABLISHED and h.server.data_to_send() == b""


@pytest.mark.parametrize(
    ("garbage", "words"),
    [
        (b"\x00\x10\x00\x01\xde\xad\xbe\xef\x00\x05\x00\x00\x00\x00\x00\x00", "magic cookie"),
        (b"SSH-2.0-OpenSSH_9.6\r\n", "Length field says"),
        (encode_message(EchoRequest())[:8] + b"\x00\x63\x00\x00", "Control Message Type 99"),
    ],
)
def test_malformed_stream_ends_the_connection(garbage: bytes, words: str) -> None:
    h = established()
    events = h.client.receive_data(encode_message(EchoRequest(identifier=5)) + garbage, 1.0)
    assert [type(e) for e in events] == [CallCleared, ControlClosed]
    closed = events[1]
    assert isinstance(closed, ControlClosed) and closed.error and not closed.by_peer
    assert closed.reason.startswith("malformed PPTP control stream from the peer:")
    assert words in closed.reason
    # the good message before the garbage was still answered, then Stop
    assert sent(h.client) == [EchoReply(identifier=5), StopControlConnectionRequest(reason=1)]
    assert h.client.counters.malformed_streams == 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=60), max_size=6), st.booleans())
def test_machine_never_raises_on_random_input(chunks: list[bytes], as_server: bool) -> None:
    h = established()
    m = h.server if as_server else h.client
    for i, chunk in enumerate(chunks):
        for event in m.receive_data(chunk, 1.0 + i):
            str(event)
        m.timeout(1.0 + i)
        m.data_to_send()


def test_local_calls_in_the_wrong_state_do_nothing() -> None:
    client = ControlConnection(Role.CLIENT, ControlConfig(), random.Random(1))
    assert client.clear_call(0.0, "x") == []
    client.set_link_info(0.0)
    assert client.data_to_send() == b""
    client.start(0.0)
    client.start(0.0)
    assert len(sent(client)) == 1
    h = established()
    h.client.stop(1.0, "x")
    h.client.stop(1.0, "again")
    assert sent(h.client) == [StopControlConnectionRequest(reason=1)]
    never = ControlConnection(Role.CLIENT, ControlConfig(), random.Random(1))
    assert never.stop(0.0, "never started") == [ControlClosed("never started", False, False)]
    with pytest.raises(ValueError, match="server role"):
        client.refuse_calls(4)


@pytest.mark.parametrize(
    "bad",
    [
        {"hostname": "h" * 65},
        {"vendor": "a\0b"},
        {"echo_interval": -1.0},
        {"echo_timeout": 0.0},
        {"call_timeout": float("nan")},
        {"window": 0},
        {"connect_speed": 2**32},
    ],
)
def test_config_is_validated(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="PPTP"):
        ControlConfig(**bad)


# -- the tables ---------------------------------------------------------------------------------


def test_transition_tables_are_well_formed() -> None:
    for role in Role:
        for (control_state, _key), t in TRANSITIONS[role].items():
            assert isinstance(control_state, ControlState) and isinstance(t.next_state, ControlState)
            assert callable(getattr(ControlConnection, "_act_" + t.action, None)), t.action
        for (call_state, _key), t in CALL_TRANSITIONS[role].items():
            assert isinstance(call_state, CallState) and isinstance(t.next_state, CallState)
            assert callable(getattr(ControlConnection, "_act_" + t.action, None)), t.action
    # nothing is accepted once closed
    for role in Role:
        assert not [k for k in TRANSITIONS[role] if k[0] is ControlState.CLOSED]
    # only the server answers SCCRQ and OCRQ; only the client answers SCCRP and OCRP
    assert (ControlState.IDLE, StartControlConnectionRequest) in TRANSITIONS[Role.SERVER]
    assert (ControlState.IDLE, StartControlConnectionRequest) not in TRANSITIONS[Role.CLIENT]
    assert (CallState.IDLE, OutgoingCallRequest) not in CALL_TRANSITIONS[Role.CLIENT]
    assert (CallState.WAIT_REPLY, OutgoingCallReply) not in CALL_TRANSITIONS[Role.SERVER]


def test_events_read_well() -> None:
    h = established()
    text = [str(e) for e in (ControlConnected("gw", "acme", 0x0102, 0x0100), EchoAnswered(0.0123))]
    assert text == [
        "PPTP control connection up: peer 'gw', vendor 'acme', firmware 0x0102, protocol 1.0",
        "PPTP echo answered in 12.3 ms",
    ]
    assert "closed by peer" in str(ControlClosed("x", True, False))
    assert h.client.counters.messages_sent == 2 and h.client.counters.messages_received == 2
