"""RFC 2637 §2 control messages: byte layout, scapy cross-checks, stream decoding, fuzzing."""

from __future__ import annotations

import contextlib
import dataclasses
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers import pptp as sp

from sidecar.proto.errors import PptpError
from sidecar.proto.pptp import (
    MAGIC_COOKIE,
    MESSAGE_CLASSES,
    CallClearRequest,
    CallDisconnectNotify,
    EchoReply,
    EchoRequest,
    IncomingCallConnected,
    IncomingCallReply,
    IncomingCallRequest,
    Message,
    MessageType,
    OutgoingCallReply,
    OutgoingCallRequest,
    SetLinkInfo,
    StartControlConnectionReply,
    StartControlConnectionRequest,
    StopControlConnectionReply,
    StopControlConnectionRequest,
    StreamDecoder,
    WanErrorNotify,
    decode_message,
    encode_message,
)

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# RFC 2637 §2.1-§2.15 message lengths, written out independently of the code's layouts.
RFC_LENGTHS = {
    MessageType.START_CONTROL_CONNECTION_REQUEST: 156,
    MessageType.START_CONTROL_CONNECTION_REPLY: 156,
    MessageType.STOP_CONTROL_CONNECTION_REQUEST: 16,
    MessageType.STOP_CONTROL_CONNECTION_REPLY: 16,
    MessageType.ECHO_REQUEST: 16,
    MessageType.ECHO_REPLY: 20,
    MessageType.OUTGOING_CALL_REQUEST: 168,
    MessageType.OUTGOING_CALL_REPLY: 32,
    MessageType.INCOMING_CALL_REQUEST: 220,
    MessageType.INCOMING_CALL_REPLY: 24,
    MessageType.INCOMING_CALL_CONNECTED: 28,
    MessageType.CALL_CLEAR_REQUEST: 16,
    MessageType.CALL_DISCONNECT_NOTIFY: 148,
    MessageType.WAN_ERROR_NOTIFY: 40,
    MessageType.SET_LINK_INFO: 24,
}

# our class -> (scapy class, {our field: scapy field}) ; fields not listed have the same name.
SCAPY: dict[type[Any], tuple[type[Any], dict[str, str]]] = {
    StartControlConnectionRequest: (sp.PPTPStartControlConnectionRequest, {}),
    StartControlConnectionReply: (sp.PPTPStartControlConnectionReply, {}),
    StopControlConnectionRequest: (sp.PPTPStopControlConnectionRequest, {}),
    StopControlConnectionReply: (sp.PPTPStopControlConnectionReply, {}),
    EchoRequest: (sp.PPTPEchoRequest, {}),
    EchoReply: (sp.PPTPEchoReply, {}),
    OutgoingCallRequest: (
        sp.PPTPOutgoingCallRequest,
        {
            "packet_recv_window_size": "pkt_window_size",
            "packet_processing_delay": "pkt_proc_delay",
            "phone_number_length": "phone_number_len",
        },
    ),
    OutgoingCallReply: (
        sp.PPTPOutgoingCallReply,
        {
            "packet_recv_window_size": "pkt_window_size",
            "packet_processing_delay": "pkt_proc_delay",
            "physical_channel_id": "channel_id",
        },
    ),
    IncomingCallRequest: (
        sp.PPTPIncomingCallRequest,
        {
            "call_bearer_type": "bearer_type",
            "physical_channel_id": "channel_id",
            "dialed_number_length": "dialed_number_len",
            "dialing_number_length": "dialing_number_len",
        },
    ),
    IncomingCallReply: (
        sp.PPTPIncomingCallReply,
        {"packet_recv_window_size": "pkt_window_size", "packet_transmit_delay": "pkt_transmit_delay"},
    ),
    IncomingCallConnected: (
        sp.PPTPIncomingCallConnected,
        {"packet_recv_window_size": "pkt_window_size", "packet_transmit_delay": "pkt_transmit_delay"},
    ),
    CallClearRequest: (sp.PPTPCallClearRequest, {}),
    CallDisconnectNotify: (sp.PPTPCallDisconnectNotify, {"call_statistics": "call_statistic"}),
    WanErrorNotify: (sp.PPTPWANErrorNotify, {"timeout_errors": "time_out_errors"}),
    SetLinkInfo: (sp.PPTPSetLinkInfo, {}),
}

_TEXT = st.characters(blacklist_characters="\0", blacklist_categories=["Cs"])


def _field_strategy(fmt: str) -> st.SearchStrategy[Any]:
    if fmt.endswith("s"):
        size = int(fmt[:-1])
        return st.text(_TEXT, max_size=size).filter(lambda s: len(s.encode()) <= size)
    return st.integers(0, (1 << (8 * struct.calcsize(fmt))) - 1)


def message_strategy(cls: type[Message]) -> st.SearchStrategy[Message]:
    fields = {name: _field_strategy(fmt) for name, fmt in cls.LAYOUT if not name.startswith("reserved")}
    return st.builds(cls, **fields)


any_message = st.one_of([message_strategy(cls) for cls in MESSAGE_CLASSES])


def _scapy_value(value: Any) -> Any:
    return int(value) if not isinstance(value, bytes) else value


# -- layout ------------------------------------------------------------------------------------


def test_all_fifteen_types_with_rfc_lengths() -> None:
    assert {cls.MESSAGE_TYPE for cls in MESSAGE_CLASSES} == set(MessageType)
    assert len(MESSAGE_CLASSES) == 15
    for cls in MESSAGE_CLASSES:
        assert RFC_LENGTHS[cls.MESSAGE_TYPE] == cls.LENGTH, cls.RFC_NAME
        wire = encode_message(cls())
        assert len(wire) == cls.LENGTH
        length, pptp_type, cookie, ctrl_type, reserved0 = struct.unpack_from(">HHIHH", wire)
        assert (length, pptp_type, cookie, ctrl_type, reserved0) == (
            cls.LENGTH,
            1,
            0x1A2B3C4D,
            cls.MESSAGE_TYPE,
            0,
        )


def test_sccrq_byte_vector() -> None:
    """Hand-assembled from the RFC 2637 §2.1 diagram."""
    expected = (
        bytes.fromhex("009c 0001 1a2b3c4d 0001 0000")  # Length 156, control, cookie, type 1, Reserved0
        + bytes.fromhex("0100 0000 00000003 00000002 0005 0a0b")  # version 1.0, rsvd, framing, bearer
        + b"gw".ljust(64, b"\0")
        + b"acme".ljust(64, b"\0")
    )
    msg = StartControlConnectionRequest(
        protocol_version=0x0100,
        framing_capabilities=3,
        bearer_capabilities=2,
        maximum_channels=5,
        firmware_revision=0x0A0B,
        host_name="gw",
        vendor_string="acme",
    )
    assert encode_message(msg) == expected
    assert decode_message(expected) == msg


def test_echo_reply_byte_vector() -> None:
    wire = bytes.fromhex("0014 0001 1a2b3c4d 0006 0000 deadbeef 02 05 0000")
    assert decode_message(wire) == EchoReply(identifier=0xDEADBEEF, result_code=2, error_code=5)
    assert encode_message(EchoReply(identifier=0xDEADBEEF, result_code=2, error_code=5)) == wire


# -- scapy cross-checks ------------------------------------------------------------------------


def _check_against_scapy(ours: Message, pkt: Any) -> None:
    scls, names = SCAPY[type(ours)]
    assert isinstance(pkt, scls), f"scapy dissected {type(pkt).__name__}, expected {scls.__name__}"
    assert pkt.len == type(ours).LENGTH
    assert pkt.type == 1
    assert pkt.magic_cookie == MAGIC_COOKIE
    assert pkt.ctrl_msg_type == type(ours).MESSAGE_TYPE
    assert pkt.reserved_0 == 0
    for f in dataclasses.fields(ours):
        ours_value = getattr(ours, f.name)
        theirs = getattr(pkt, names.get(f.name, f.name))
        if isinstance(ours_value, str):
            assert theirs.rstrip(b"\0") == ours_value.encode(), f.name
        else:
            assert int(theirs) == ours_value, f.name
    for name in ("reserved_1", "reserved_2"):
        if name in pkt.fields:
            assert pkt.getfieldval(name) == 0


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=lambda c: c.__name__)
def test_scapy_parses_what_we_build(cls: type[Message]) -> None:
    @FAST
    @given(message_strategy(cls))
    def check(msg: Message) -> None:
        pkt = sp.PPTP(encode_message(msg))
        _check_against_scapy(msg, pkt)

    check()


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=lambda c: c.__name__)
def test_we_parse_what_scapy_builds(cls: type[Message]) -> None:
    scls, names = SCAPY[cls]
    fields = {
        name: _field_strategy(fmt).map(lambda v: v.encode() if isinstance(v, str) else v)
        for name, fmt in cls.LAYOUT
        if not name.startswith("reserved")
    }

    @FAST
    @given(st.fixed_dictionaries(fields))
    def check(values: dict[str, Any]) -> None:
        kwargs = {names.get(k, k): v for k, v in values.items()}
        # scapy's Incoming-Call-Reply defaults its Length to 148 (the RFC says 24): set it.
        pkt = scls(len=cls.LENGTH, **kwargs)
        wire = bytes(pkt)
        assert len(wire) == cls.LENGTH
        msg = decode_message(wire)
        assert type(msg) is cls
        for name, value in values.items():
            got = getattr(msg, name)
            assert got == (value.decode() if isinstance(value, bytes) else value), name
        assert encode_message(msg) == wire

    check()


# -- round trip and strings --------------------------------------------------------------------


@FAST
@given(any_message)
def test_round_trip(msg: Message) -> None:
    assert decode_message(encode_message(msg)) == msg


def test_strings_decode_tolerantly() -> None:
    wire = bytearray(encode_message(StartControlConnectionRequest(host_name="x")))
    host = 12 + 16  # after the header and 16 bytes of fixed fields (§2.1)
    wire[host : host + 6] = b"ab\xffc\0z"  # invalid UTF-8, then NUL, then junk after it
    msg = decode_message(bytes(wire))
    assert isinstance(msg, StartControlConnectionRequest)
    assert msg.host_name == "ab\udcffc"  # the undecodable byte is kept (surrogateescape)...
    assert encode_message(msg)[host : host + 5] == b"ab\xffc\0"  # ...and written back unchanged
    full = bytearray(wire)
    full[host : host + 64] = b"h" * 64  # no NUL at all: the whole field
    assert decode_message(bytes(full)).host_name == "h" * 64  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("msg", "words"),
    [
        (StartControlConnectionRequest(host_name="h" * 65), ["host_name", "65 bytes", "at most 64"]),
        (StartControlConnectionRequest(vendor_string="é" * 33), ["vendor_string", "66 bytes"]),
        (OutgoingCallRequest(phone_number="12\x0034"), ["phone_number", "NUL"]),
        (CallDisconnectNotify(call_statistics="s" * 129), ["call_statistics", "128"]),
        (EchoRequest(identifier=1 << 32), ["identifier", "32-bit"]),
        (OutgoingCallRequest(call_id=-1), ["call_id", "16-bit"]),
        (EchoReply(result_code=256), ["result_code", "8-bit"]),
    ],
)
def test_encode_validates(msg: Message, words: list[str]) -> None:
    with pytest.raises(PptpError) as info:
        encode_message(msg)
    for word in words:
        assert word in str(info.value)


def test_encode_rejects_non_messages() -> None:
    with pytest.raises(PptpError, match="not a PPTP control message"):
        encode_message("hello")  # type: ignore[arg-type]


# -- decode errors -------------------------------------------------------------------------------


def _echo(**changes: int) -> bytes:
    header = {"length": 16, "pptp_type": 1, "cookie": MAGIC_COOKIE, "ctrl": 5, "reserved0": 0} | changes
    return struct.pack(">HHIHHI", *header.values(), 7)


@pytest.mark.parametrize(
    ("wire", "words"),
    [
        (_echo(cookie=0xDEADBEEF), ["magic cookie", "0xDEADBEEF"]),
        (_echo(pptp_type=2), ["Message Type is 2", "management"]),
        (_echo(pptp_type=7), ["Message Type is 7"]),
        (_echo(ctrl=16), ["unknown PPTP Control Message Type 16"]),
        (_echo(ctrl=0), ["unknown PPTP Control Message Type 0"]),
        (_echo(length=20), ["Echo-Request", "Length field says 20", "16"]),
        (_echo(reserved0=1), ["Echo-Request", "Reserved0"]),
        (_echo()[:11], ["truncated", "11 bytes"]),
        (_echo() + b"\0", ["Echo-Request", "got 17 bytes"]),
        (encode_message(EchoReply())[:-2] + b"\0\1", ["Echo-Reply", "reserved1"]),
        (
            encode_message(StopControlConnectionRequest())[:13] + b"\x01\0\0",
            ["Stop-Control-Connection-Request", "reserved1"],
        ),
    ],
)
def test_decode_errors_name_the_problem(wire: bytes, words: list[str]) -> None:
    with pytest.raises(PptpError) as info:
        decode_message(wire)
    for word in words:
        assert word in str(info.value)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=260))
def test_decode_random_bytes_raises_only_pptp_error(data: bytes) -> None:
    with contextlib.suppress(PptpError):
        decode_message(data)


@settings(max_examples=200, deadline=None)
@given(any_message, st.lists(st.tuples(st.integers(0, 300), st.integers(0, 255)), min_size=1, max_size=4))
def test_decode_mutated_messages_raises_only_pptp_error(msg: Message, edits: list[tuple[int, int]]) -> None:
    wire = bytearray(encode_message(msg))
    for pos, value in edits:
        if pos < len(wire):
            wire[pos] = value
        elif pos % 2:
            wire = wire[: pos % (len(wire) + 1)]
        else:
            wire.append(value)
    try:
        decoded = decode_message(bytes(wire))
    except PptpError:
        return
    assert len(wire) == type(decoded).LENGTH


# -- stream decoding ------------------------------------------------------------------------------


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks, start = [], 0
    for p in [*points, len(data)]:
        chunks.append(data[start:p])
        start = p
    return chunks


@settings(max_examples=60, deadline=None)
@given(st.lists(any_message, max_size=8), st.lists(st.integers(0, 5000), max_size=12))
def test_stream_decoder_any_split(messages: list[Message], cuts: list[int]) -> None:
    stream = b"".join(encode_message(m) for m in messages)
    decoder = StreamDecoder()
    out: list[Message] = []
    for chunk in _split(stream, cuts):
        out += decoder.feed(chunk)
    assert out == messages
    assert decoder.buffered == 0


def test_stream_decoder_byte_by_byte_and_all_at_once() -> None:
    messages = [cls() for cls in MESSAGE_CLASSES]
    stream = b"".join(encode_message(m) for m in messages)
    one = StreamDecoder()
    got: list[Message] = []
    for i in range(len(stream)):
        got += one.feed(stream[i : i + 1])
    assert got == messages
    assert StreamDecoder().feed(stream) == messages


def test_stream_decoder_fails_fast_and_stays_failed() -> None:
    decoder = StreamDecoder()
    good = encode_message(EchoRequest(identifier=1))
    msgs, error = decoder.feed_partial(good + b"GET / HTTP/1.1\r\n")
    assert msgs == [EchoRequest(identifier=1)]
    assert error is not None and "Length field says 18245" in str(error)
    with pytest.raises(PptpError):
        decoder.feed(good)
    # a header with a bad cookie fails as soon as the 12 header bytes are in, not at 16
    fresh = StreamDecoder()
    with pytest.raises(PptpError, match="magic cookie"):
        fresh.feed(_echo(cookie=1)[:12])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=6))
def test_stream_decoder_fuzz_raises_only_pptp_error(chunks: list[bytes]) -> None:
    decoder = StreamDecoder()
    for chunk in chunks:
        try:
            decoder.feed(chunk)
        except PptpError:
            return


@settings(max_examples=100, deadline=None)
@given(st.lists(any_message, min_size=1, max_size=4), st.integers(0, 2000), st.binary(min_size=1, max_size=4))
def test_stream_decoder_mutated_stream(messages: list[Message], pos: int, junk: bytes) -> None:
    stream = bytearray(b"".join(encode_message(m) for m in messages))
    pos %= len(stream)
    stream[pos : pos + len(junk)] = junk
    decoder = StreamDecoder()
    try:
        for i in range(0, len(stream), 7):
            decoder.feed(bytes(stream[i : i + 7]))
    except PptpError:
        pass
