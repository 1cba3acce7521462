"""Fuzz targets for the PPTP control channel (RFC 2637): the message codec, the stream decoder and
the :class:`ControlConnection` machine in both roles, started from every state."""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence

from fuzz.common import (
    InvariantError,
    Reader,
    blob,
    check,
    check_counters,
    check_deadline,
    decoder_guard,
    u8,
    u16,
    u32,
)
from sidecar.proto.errors import PptpError
from sidecar.proto.pptp import (
    MAGIC_COOKIE,
    MESSAGE_CLASSES,
    CallCleared,
    CallEstablished,
    CallState,
    ControlClosed,
    ControlConfig,
    ControlConnected,
    ControlConnection,
    ControlState,
    EchoAnswered,
    LinkInfo,
    Message,
    Role,
    StreamDecoder,
    WanError,
    decode_message,
    encode_message,
)

_HEADER = struct.Struct(">HHIHH")
_EVENT_TYPES = (
    ControlConnected,
    CallEstablished,
    LinkInfo,
    WanError,
    EchoAnswered,
    CallCleared,
    ControlClosed,
)


# -- the codec ----------------------------------------------------------------------------------------


def target_pptp_decode(data: bytes) -> None:
    """decode_message: only PptpError on bad input; whatever it accepts re-encodes to bytes that
    decode to the same message (round-trip stability)."""
    msg = decoder_guard(lambda: decode_message(data))
    if msg is None:
        return
    _round_trip(msg)


def _round_trip(msg: Message) -> None:
    try:
        wire = encode_message(msg)
    except PptpError as exc:
        raise InvariantError(
            "round trip: encode_message refuses a message decode_message accepted"
            f" ({type(msg).__name__}): {exc}"
        ) from exc
    again = decode_message(wire)
    check(again == msg, f"round trip changed the message: {msg!r} -> {again!r}")


def target_pptp_stream(data: bytes) -> None:
    """StreamDecoder: the same bytes cut at any points give the same messages and the same verdict
    as when fed at once; only PptpError escapes; the buffer never holds more than one message."""
    r = Reader(data)
    ncuts = r.u8() % 8
    cuts = sorted({r.u16() for _ in range(ncuts)})
    stream = data[r.pos :]
    whole = StreamDecoder()
    whole_msgs, whole_err = whole.feed_partial(stream)
    pieces: list[bytes] = []
    prev = 0
    for c in cuts:
        c = min(c, len(stream))
        pieces.append(stream[prev:c])
        prev = c
    pieces.append(stream[prev:])
    split = StreamDecoder()
    split_msgs: list[Message] = []
    split_err: PptpError | None = None
    for piece in pieces:
        msgs, split_err = split.feed_partial(piece)
        split_msgs += msgs
        if split_err is not None:
            break
        check(split.buffered < 220, f"StreamDecoder holds {split.buffered} bytes, more than one message")
    check(
        split_msgs == whole_msgs,
        f"cutting the stream changed the messages: {len(whole_msgs)} vs {len(split_msgs)}",
    )
    check(
        (split_err is None) == (whole_err is None),
        f"cutting the stream changed the verdict: {whole_err!r} vs {split_err!r}",
    )
    for msg in whole_msgs:
        _round_trip(msg)


# -- the machine --------------------------------------------------------------------------------------

CLIENT_PRELUDES = (
    "idle",
    "wait-ctl-reply",
    "established/call-wait-reply",
    "established/call-established",
    "established/call-wait-disconnect",
    "wait-stop-reply",
    "closed-by-peer",
    "wait-stop-reply-before-established",
)
SERVER_PRELUDES = (
    "idle",
    "idle-started",
    "established/call-idle",
    "established/call-established",
    "established/call-cleared-by-us",
    "wait-stop-reply",
    "closed-by-peer",
    "established/call-cleared-by-peer",
)


def raw_message(cls: type[Message], body: bytes, *, call_id: int | None, peer_call_id: int | None) -> bytes:
    """A control message with a correct header, reserved fields zero, the other fields from ``body``
    (zero-padded; strings taken as raw bytes, not necessarily UTF-8). ``call_id``/``peer_call_id``
    (when given) overwrite the fields of those names, so the fuzzer can hit a live call."""
    out = bytearray(_HEADER.pack(cls.LENGTH, 1, MAGIC_COOKIE, cls.MESSAGE_TYPE, 0))
    pos = 0
    for name, fmt in cls.LAYOUT:
        size = struct.calcsize(">" + fmt)
        if name.startswith("reserved"):
            out += bytes(size)
            continue
        if name == "call_id" and call_id is not None:
            out += struct.pack(">H", call_id)
        elif name == "peer_call_id" and peer_call_id is not None:
            out += struct.pack(">H", peer_call_id)
        else:
            out += body[pos : pos + size].ljust(size, b"\0")
        pos += size
    return bytes(out)


class _Pipe:
    """A machine under test and a real peer of the other role, with a fake clock."""

    def __init__(self, role: Role, config: ControlConfig, seed: int) -> None:
        other = Role.SERVER if role is Role.CLIENT else Role.CLIENT
        self.conn = ControlConnection(role, config, random.Random(seed))
        self.peer = ControlConnection(other, ControlConfig(), random.Random(seed ^ 0x5A5A))
        self.now = 0.0

    def to_peer(self) -> None:
        self.peer.receive_data(self.conn.data_to_send(), self.now)

    def to_conn(self) -> None:
        self.conn.receive_data(self.peer.data_to_send(), self.now)

    def prelude(self, n: int, refuse: bool) -> None:
        c, p = self.conn, self.peer
        if c.role is Role.CLIENT:
            p.start(self.now)
            if n >= 1:
                c.start(self.now)
            if n in (2, 3, 4, 5, 6):
                self.to_peer()
                self.to_conn()  # SCCRP: client established, OCRQ queued
            if n in (3, 4, 5, 6):
                self.to_peer()
                self.to_conn()  # OCRP: call established
            if n == 4:
                c.clear_call(self.now, "fuzz prelude")
            elif n in (5, 7):
                c.stop(self.now, "fuzz prelude")
            elif n == 6:
                p.stop(self.now, "fuzz prelude")
                self.to_conn()
        else:
            if refuse:
                c.refuse_calls(3, 0)
            if n >= 1:
                c.start(self.now)
            if n >= 2:
                p.start(self.now)
                self.to_conn()  # SCCRQ
            if n >= 3:
                self.to_peer()
                self.to_conn()  # OCRQ
            if n == 4:
                c.clear_call(self.now, "fuzz prelude")
            elif n == 5:
                c.stop(self.now, "fuzz prelude")
            elif n == 6:
                p.stop(self.now, "fuzz prelude")
                self.to_conn()
            elif n == 7:
                self.to_peer()
                p.clear_call(self.now, "fuzz prelude")
                self.to_conn()


class _Watch:
    """Checks the machine's outputs after every operation."""

    def __init__(self, conn: ControlConnection) -> None:
        self.conn = conn
        self.out = StreamDecoder()
        self.closed_events = 0
        self.cleared_events = 0
        self.established_events = 0

    def sent(self, data: bytes) -> None:
        msgs, err = self.out.feed_partial(data)
        check(err is None, f"the machine sent bytes that do not decode as PPTP: {err}")
        for m in msgs:
            _round_trip(m)

    def events(self, events: Sequence[object]) -> None:
        for ev in events:
            check(isinstance(ev, _EVENT_TYPES), f"unknown event {ev!r}")
            check(self.closed_events == 0, f"event {ev!r} after ControlClosed")
            try:  # every event renders as text a log line or the status page can carry
                str(ev).encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvariantError(f"{type(ev).__name__} text is not encodable as UTF-8: {exc}") from exc
            if isinstance(ev, ControlClosed):
                self.closed_events += 1
                check(bool(ev.reason), "ControlClosed without a reason")
            elif isinstance(ev, CallCleared):
                self.cleared_events += 1
                check(self.cleared_events == 1, "CallCleared reported twice")
            elif isinstance(ev, CallEstablished):
                self.established_events += 1
                check(self.established_events == 1, "CallEstablished reported twice")
                check(self.cleared_events == 0, "CallEstablished after CallCleared")

    def state(self) -> None:
        c = self.conn
        check(isinstance(c.state, ControlState), f"state {c.state!r}")
        check(isinstance(c.call_state, CallState), f"call state {c.call_state!r}")
        check_deadline(c.next_deadline(), "ControlConnection")
        check_counters(c.counters, "ControlConnection.counters")
        if c.closed:
            check(c.next_deadline() is None, f"closed machine still has a deadline {c.next_deadline()}")
            check(
                c.call_state not in (CallState.WAIT_REPLY, CallState.ESTABLISHED, CallState.WAIT_DISCONNECT),
                f"control connection closed with the call in {c.call_state}",
            )
        for cid in (c.local_call_id, c.peer_call_id):
            check(cid is None or 0 <= cid <= 0xFFFF, f"call ID {cid} out of range")


def target_pptp_control(data: bytes) -> None:
    """ControlConnection in both roles, from every state: receive_data (raw bytes, well-framed
    messages with fuzzed fields and live call IDs, EOF), timers, clear_call, stop, set_link_info,
    and a real peer's answers interleaved. Nothing may escape; outputs are checked."""
    r = Reader(data)
    setup = r.u8()
    role = Role.CLIENT if setup & 1 else Role.SERVER
    prelude = (setup >> 1) & 7
    keepalive = bool(setup & 0x10)
    config = ControlConfig(
        hostname="fuzz", echo_interval=5.0 if keepalive else 0.0, echo_timeout=2.0, call_timeout=3.0
    )
    pipe = _Pipe(role, config, r.u16())
    pipe.prelude(prelude, refuse=bool(setup & 0x20))
    conn = pipe.conn
    watch = _Watch(conn)
    conn.data_to_send()  # what the prelude sent was checked by the peer
    watch.state()
    for op in r.ops(9):
        now = pipe.now
        if op == 0:
            watch.events(conn.receive_data(r.blob(), now))
        elif op == 1:
            cls = MESSAGE_CLASSES[r.u8() % len(MESSAGE_CLASSES)]
            patch = r.u8()
            body = r.blob()
            wire = raw_message(
                cls,
                body,
                call_id=conn.peer_call_id if patch & 1 else None,
                peer_call_id=conn.local_call_id if patch & 2 else None,
            )
            cut = r.u8() % (len(wire) + 1) if patch & 4 else len(wire)
            watch.events(conn.receive_data(wire[:cut], now))
            if cut < len(wire):
                watch.events(conn.receive_data(wire[cut:], now))
        elif op == 2:
            pipe.now += r.u16() / 100.0
            watch.events(conn.timeout(pipe.now))
        elif op == 3:
            deadline = conn.next_deadline()
            if deadline is not None:
                pipe.now = max(pipe.now, deadline)
            watch.events(conn.timeout(pipe.now))
        elif op == 4:
            watch.events(conn.clear_call(now, "fuzz clear"))
        elif op == 5:
            watch.events(conn.stop(now, "fuzz stop"))
        elif op == 6:
            watch.events(conn.receive_data(b"", now))
        elif op == 7:
            conn.set_link_info(now, r.u32(), r.u32())
        else:  # the real peer reads what we sent and answers
            out = conn.data_to_send()
            watch.sent(out)
            pipe.peer.receive_data(out, now)
            pipe.peer.timeout(now)
            watch.events(conn.receive_data(pipe.peer.data_to_send(), now))
        watch.sent(conn.data_to_send())
        watch.state()


# -- seeds --------------------------------------------------------------------------------------------


def seeds() -> dict[str, list[bytes]]:
    """Seed inputs built by our encoders (scapy-built ones come from make_corpus)."""
    from sidecar.proto.pptp import (
        CallClearRequest,
        CallDisconnectNotify,
        EchoReply,
        EchoRequest,
        IncomingCallConnected,
        IncomingCallReply,
        IncomingCallRequest,
        OutgoingCallReply,
        OutgoingCallRequest,
        SetLinkInfo,
        StartControlConnectionReply,
        StartControlConnectionRequest,
        StopControlConnectionReply,
        StopControlConnectionRequest,
        WanErrorNotify,
    )

    msgs: list[Message] = [
        StartControlConnectionRequest(host_name="client", vendor_string="pptp-sidecar"),
        StartControlConnectionReply(host_name="pptpd", vendor_string="linux", maximum_channels=1),
        StopControlConnectionRequest(reason=1),
        StopControlConnectionReply(result_code=1),
        EchoRequest(identifier=7),
        EchoReply(identifier=7, result_code=1),
        OutgoingCallRequest(call_id=1, call_serial_number=2, minimum_bps=300, maximum_bps=100_000_000),
        OutgoingCallReply(call_id=5, peer_call_id=1, result_code=1, connect_speed=100_000_000),
        IncomingCallRequest(call_id=9, call_serial_number=1),
        IncomingCallReply(call_id=0, peer_call_id=9, result_code=3),
        IncomingCallConnected(peer_call_id=9),
        CallClearRequest(call_id=1),
        CallDisconnectNotify(call_id=5, result_code=3, call_statistics="bye"),
        WanErrorNotify(peer_call_id=1, crc_errors=2),
        SetLinkInfo(peer_call_id=1),
    ]
    wires = [encode_message(m) for m in msgs]
    control: list[bytes] = []
    for role_bit in (0, 1):
        for prelude in range(8):
            for keepalive in (0, 0x10):
                setup = role_bit | (prelude << 1) | keepalive
                ops = b""
                for i, wire in enumerate(wires):
                    if i % 3 == prelude % 3:
                        ops += u8(0) + blob(wire)
                ops += u8(8) + u8(3) + u8(2) + u16(600) + u8(1) + u8(10) + u8(3) + blob(b"\x01\x02")
                ops += u8(8) + u8(4) + u8(8) + u8(5) + u8(3) + u8(6)
                control.append(u8(setup) + u16(prelude * 31) + ops)
    control.append(u8(1) + u16(0) + u8(7) + u32(0) + u32(0xFFFFFFFF))
    # every message type, well framed, with the live call IDs, in every role and prelude
    for role_bit in (0, 1):
        for prelude in range(8):
            for fill in (0x01, 0x00, 0x03):
                ops = b"".join(
                    u8(1) + u8(i) + u8(3) + blob(bytes([fill]) * 40) for i in range(len(MESSAGE_CLASSES))
                )
                control.append(u8(role_bit | (prelude << 1)) + u16(fill) + ops + u8(3) + u8(3))
    return {
        "pptp_decode": wires,
        "pptp_stream": [u8(2) + u16(20) + u16(200) + b"".join(wires[:6]), u8(0) + b"".join(wires)],
        "pptp_control": control,
    }
