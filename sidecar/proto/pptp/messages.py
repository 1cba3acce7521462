"""PPTP control messages: the 15 message types of RFC 2637 §2 and their wire codec.

Rules: this module owns the byte layout of every control message and nothing else. It does not
know sockets, states or time. Every message is a frozen dataclass whose fields carry the RFC's
names (snake_cased); reserved fields are not fields: they are written as zero and checked to be
zero on decode. Bad input raises only :class:`~sidecar.proto.errors.PptpError`, with a message
that names the message type and the field that was wrong.

Wire format (RFC 2637 §2): every control message starts with the same 12 bytes

    Length (2) | PPTP Message Type (2) = 1 | Magic Cookie (4) = 0x1A2B3C4D |
    Control Message Type (2) | Reserved0 (2) = 0

followed by a body of fixed size: every control message type has exactly one legal length. All
integers are big-endian. Strings (host name, vendor, phone numbers, subaddress, call statistics)
are fixed-size NUL-padded fields: decoding stops at the first NUL and replaces bytes that are not
UTF-8; encoding refuses a string that is too long or holds a NUL.

A TCP byte stream is cut into messages by :class:`StreamDecoder`, which accepts data split at any
point (a message across several reads, several messages in one read).
"""

from __future__ import annotations

import dataclasses
import enum
import struct
from dataclasses import dataclass
from typing import ClassVar, Final

from sidecar.proto.errors import PptpError

MAGIC_COOKIE: Final = 0x1A2B3C4D
CONTROL_MESSAGE: Final = 1  # PPTP Message Type 1; 2 (management) is defined but has no messages
MANAGEMENT_MESSAGE: Final = 2
PROTOCOL_VERSION: Final = 0x0100  # version 1, revision 0
HEADER_LENGTH: Final = 12

_HEADER: Final = struct.Struct(">HHIHH")


class MessageType(enum.IntEnum):
    """Control Message Type values (RFC 2637 §2, the table under "Control Message Type")."""

    START_CONTROL_CONNECTION_REQUEST = 1
    START_CONTROL_CONNECTION_REPLY = 2
    STOP_CONTROL_CONNECTION_REQUEST = 3
    STOP_CONTROL_CONNECTION_REPLY = 4
    ECHO_REQUEST = 5
    ECHO_REPLY = 6
    OUTGOING_CALL_REQUEST = 7
    OUTGOING_CALL_REPLY = 8
    INCOMING_CALL_REQUEST = 9
    INCOMING_CALL_REPLY = 10
    INCOMING_CALL_CONNECTED = 11
    CALL_CLEAR_REQUEST = 12
    CALL_DISCONNECT_NOTIFY = 13
    WAN_ERROR_NOTIFY = 14
    SET_LINK_INFO = 15


# Bits of Framing Capabilities / Bearer Capabilities (SCCRQ, SCCRP) and the Type fields (OCRQ...).
FRAMING_ASYNC: Final = 1
FRAMING_SYNC: Final = 2
BEARER_ANALOG: Final = 1
BEARER_DIGITAL: Final = 2
ANY_TYPE: Final = 3  # Bearer Type / Framing Type "either"

# A body field: (name, struct format). Names starting with "reserved" are reserved fields (zero).
# "Ns" formats are NUL-padded strings of N bytes.
Layout = tuple[tuple[str, str], ...]


class _Message:
    """Shared behaviour of the message dataclasses (not a message itself)."""

    MESSAGE_TYPE: ClassVar[MessageType]
    RFC_NAME: ClassVar[str]  # as the RFC spells it, for error messages and logs
    LAYOUT: ClassVar[Layout]
    LENGTH: ClassVar[int]  # the one legal value of the Length field


@dataclass(frozen=True)
class StartControlConnectionRequest(_Message):
    """SCCRQ (RFC 2637 §2.1): opens the control connection."""

    MESSAGE_TYPE: ClassVar[MessageType] = MessageType.START_CONTROL_CONNECTION_REQUEST
    RFC_NAME: ClassVar[str] = "Start-Control-Connection-Request"
    LAYOUT: ClassVar[Layout] = (
        ("protocol_version", "H"),
        ("reserved1", "H"),
        ("framing_capabilities", "I"),
        ("bearer_capabilities", "I"),
        ("maximum_channels", "H"),
        ("firmware_revision", "H"),
        ("host_name", "64s"),
        ("vendor_string", "64s"),
    )
    protocol_version: int = PROTOCOL_VERSION
    framing_capabilities: int = FRAMING_ASYNC
    bearer_capabilities: int = BEARER_ANALOG
    maximum_channels: int = 0
    firmware_revision: int = 0
    host_name: str = ""
    vendor_string: str = ""


@dataclass(frozen=True)
class StartControlConnectionReply(_Message):
    """SCCRP (RFC 2637 §2.2): accepts (Result Code 1) or refuses the control connection."""

    MESSAGE_TYPE: ClassVar[MessageType] = MessageType.START_CONTROL_CONNECTION_REPLY
    RFC_NAME: ClassVar[str] = "Start-Control-Connection-Reply"
    LAYOUT: ClassVar[Layout] = (
        ("protocol_version", "H"),
        ("result_code", "B"),
        ("error_code", "B"),
        ("framing_capabilities", "I"),
        ("bearer_capabilities", "I"),
        ("maximum_channels", "H"),
        ("firmware_revision", "H"),
        ("host_name", "64s"),
        ("vendor_string", "64s"),
    )
    protocol_version: int = PROTOCOL_VERSION
    result_code: int = 1
    error_code: int = 0
    framing_capabilities: int = FRAMING_ASYNC
    bearer_capabilities: int = BEARER_ANALOG
    maximum_channels: int = 0
    firmware_revision: int = 0
    host_name: str = ""
    vendor_string: str = ""


@dataclass(frozen=True)
class StopControlConnectionRequest(_Message):
    """StopCCRQ (RFC 2637 §2.3): closes the control connection (and every call on it)."""

    MESSAGE_TYPE: ClassVar[MessageType] = MessageType.STOP_CONTROL_CONNECTION_REQUEST
    RFC_NAME: ClassVar[str] = "Stop-Control-Connection-Request"
    LAYOUT: ClassVar[Layout] = (("reason", "B"), ("reserved1", "B"), ("reserved2", "H"))
    reason: int = 1


@dataclass(frozen=True)
class StopControlConnectionReply(_Message):
    """StopCCRP (RFC 2637 §2.4)."""

    MESSAGE_TYPE: ClassVar[MessageType] = MessageType.STOP_CONTROL_CONNECTION_REPLY
    RFC_NAME: ClassVar[str] = "Stop-Control-Connection-Reply"
    LAYOUT: ClassVar[Layout] = (("result_code", "B"), ("error_code", "B"), ("reserved1", "H"))
    result_code: int = 1
    error_code: int = 0


@dataclass(frozen=True)
class EchoRequest(_Message):
    """Echo-Request (RFC 2637 §2.5): the keepalive."""

    MESSAGE_TYPE: ClassVar[MessageType] = MessageType.ECHO_REQUEST
    RFC_NAME: ClassVar[str] = "Echo-Request"
    LAYOUT: ClassVar[Layout] = (("identifier", "I"),)
    identifier: int = 0


@dataclass(frozen=True)
class EchoReply(_Message):
    """Echo-Reply (RFC 2637 §2.6)."""

    MESSAGE_TYPE: ClassVar[MessageType] = MessageType.ECHO_REPLY
    RFC_NAME: ClassVar[str] = "Echo-Reply"
    LAYOUT: ClassVar[Layout] = (
        ("identifier", "I"),
        ("result_code", "B"),
        ("error_code", "B"),
        ("reserved1", "H"),
    )
    identifier: int = 0
    result_code: int = 1
    error_code: int = 0


@dataclass(frozen=True)
class OutgoingCallRequest(_Message):
    """OCRQ (RFC 2637 §2.7): the PNS (our client) asks the PAC for a call."""

    MESSAGE_TYPE: ClassVar[MessageType] = MessageType.OUTGOING_CALL_REQUEST
    RFC_NAME: ClassVar[str] = "Outgoing-Call-Request"
    LAYOUT: ClassVar[Layout] = (
        ("call_id", "H"),
        ("call_serial_number", "H"),
        ("minimum_bps", "I"),
        ("maximum_bps", "I"),
        ("bearer_type", "I"),
        ("framing_type", "I"),
        ("packet_recv_window_size", "H"),
        ("packet_processing_delay", "H"),
        ("phone_number_length", "H"),
        ("reserved1", "H"),
        ("phone_number", "64s"),
        ("subaddress", "64s"),
    )
    call_id: int = 0
    call_serial_number: int = 0
    minimum_bps: int = 0
    maximum_bps: int = 0
    bearer_type: int = ANY_TYPE
    framing_type: int = ANY_TYPE
    packet_recv_window_size: int = 0
    packet_processing_delay: int = 0
    phone_number_length: int = 0
    phone_number: str = ""
    subaddress: str = ""


@dataclass(frozen=True)
class OutgoingCallReply(_Message):
    """OCRP (RFC 2637 §2.8): the PAC's answer; Result Code 1 = connected."""

    MESSAGE_TYPE: ClassVar[MessageType] = MessageType.OUTGOING_CALL_REPLY
    RFC_NAME: ClassVar[str] = "Outgoing-Call-Reply"
    LAYOUT: ClassVar[Layout] = (
        ("call_id", "H"),
        ("peer_call_id", "H"),
        ("result_code", "B"),
        ("error_code", "B"),
        ("cause_code", "H"),
        ("connect_speed", "I"),
        ("packet_recv_window_size", "H"),
        ("packet_processing_delay", "H"),
        ("physical_channel_id", "I"),
    )
    call_id: int = 0
    peer_call_id: int = 0
    result_code: int = 1
    error_code: int = 0
    cause_code: int = 0
    connect_speed: int = 0
    packet_recv_window_size: int = 0
    packet_processing_delay: int = 0
    physical_channel_id: int = 0


@dataclass(frozen=True)
class IncomingCallRequest(_Message):
    """ICRQ (RFC 2637 §2.9): the PAC offers an inbound call to the PNS."""

    MESSAGE_TYPE: ClassVar[MessageType] = MessageType.INCOMING_CALL_REQUEST
    RFC_NAME: ClassVar[str] = "Incoming-Call-Request"
    LAYOUT: ClassVar[Layout] = (
        ("call_id", "H"),
        ("call_serial_number", "H"),
        ("call_bearer_type", "I"),
        ("physical_channel_id", "I"),
        ("dialed_number_length", "H"),
        ("dialing_number_length", "H"),
        ("dialed_number", "64s"),
        ("dialing_number", "64s"),
        ("subaddress", "64s"),
    )
    call_id: int = 0
    call_serial_number: int = 0
    call_bearer_type: int = BEARER_ANALOG
    physical_channel_id: int = 0
    dialed_number_length: int = 0
    dialing_number_length: int = 0
    dialed_number: str = ""
    dialing_number: str = ""
    subaddress: str = ""


@dataclass(frozen=True)
class IncomingCallReply(_Message):
    """ICRP (RFC 2637 §2.10)."""

    MESSAGE_TYPE: ClassVar[MessageType] = MessageType.INCOMING_CALL_REPLY
    RFC_NAME: ClassVar[str] = "Incoming-Call-Reply"
    LAYOUT: ClassVar[Layout] = (
        ("call_id", "H"),
        ("peer_call_id", "H"),
        ("result_code", "B"),
        ("error_code", "B"),
        ("packet_recv_window_size", "H"),
        ("packet_transmit_delay", "H"),
        ("reserved1", "H"),
    )
    call_id: int = 0
    peer_call_id: int = 0
    result_code: int = 1
    error_code: int = 0
    packet_recv_window_size: int = 0
    packet_transmit_delay: int = 0


@dataclass(frozen=True)
class IncomingCallConnected(_Message):
    """ICCN (RFC 2637 §2.11)."""

    MESSAGE_TYPE: ClassVar[MessageType] = MessageType.INCOMING_CALL_CONNECTED
    RFC_NAME: ClassVar[str] = "Incoming-Call-Connected"
    LAYOUT: ClassVar[Layout] = (
        ("peer_call_id", "H"),
        ("reserved1", "H"),
        ("connect_speed", "I"),
        ("packet_recv_window_size", "H"),
        ("packet_transmit_delay", "H"),
        ("framing_type", "I"),
    )
    peer_call_id: int = 0
    connect_speed: int = 0
    packet_recv_window_size: int = 0
    packet_transmit_delay: int = 0
    framing_type: int = FRAMING_ASYNC


@dataclass(frozen=True)
class CallClearRequest(_Message):
    """CCRQ (RFC 2637 §2.12): the PNS asks the PAC to drop a call; Call ID is the PNS's."""

    MESSAGE_TYPE: ClassVar[MessageType] = MessageType.CALL_CLEAR_REQUEST
    RFC_NAME: ClassVar[str] = "Call-Clear-Request"
    LAYOUT: ClassVar[Layout] = (("call_id", "H"), ("reserved1", "H"))
    call_id: int = 0


@dataclass(frozen=True)
class CallDisconnectNotify(_Message):
    """CDN (RFC 2637 §2.13): the PAC says a call is gone; Call ID is the PAC's."""

    MESSAGE_TYPE: ClassVar[MessageType] = MessageType.CALL_DISCONNECT_NOTIFY
    RFC_NAME: ClassVar[str] = "Call-Disconnect-Notify"
    LAYOUT: ClassVar[Layout] = (
        ("call_id", "H"),
        ("result_code", "B"),
        ("error_code", "B"),
        ("cause_code", "H"),
        ("reserved1", "H"),
        ("call_statistics", "128s"),
    )
    call_id: int = 0
    result_code: int = 1
    error_code: int = 0
    cause_code: int = 0
    call_statistics: str = ""


@dataclass(frozen=True)
class WanErrorNotify(_Message):
    """WEN (RFC 2637 §2.14): the PAC's cumulative error counters for a call."""

    MESSAGE_TYPE: ClassVar[MessageType] = MessageType.WAN_ERROR_NOTIFY
    RFC_NAME: ClassVar[str] = "WAN-Error-Notify"
    LAYOUT: ClassVar[Layout] = (
        ("peer_call_id", "H"),
        ("reserved1", "H"),
        ("crc_errors", "I"),
        ("framing_errors", "I"),
        ("hardware_overruns", "I"),
        ("buffer_overruns", "I"),
        ("timeout_errors", "I"),
        ("alignment_errors", "I"),
    )
    peer_call_id: int = 0
    crc_errors: int = 0
    framing_errors: int = 0
    hardware_overruns: int = 0
    buffer_overruns: int = 0
    timeout_errors: int = 0
    alignment_errors: int = 0


@dataclass(frozen=True)
class SetLinkInfo(_Message):
    """SLI (RFC 2637 §2.15): PPP-negotiated ACCMs for the call."""

    MESSAGE_TYPE: ClassVar[MessageType] = MessageType.SET_LINK_INFO
    RFC_NAME: ClassVar[str] = "Set-Link-Info"
    LAYOUT: ClassVar[Layout] = (
        ("peer_call_id", "H"),
        ("reserved1", "H"),
        ("send_accm", "I"),
        ("receive_accm", "I"),
    )
    peer_call_id: int = 0
    send_accm: int = 0xFFFFFFFF
    receive_accm: int = 0xFFFFFFFF


Message = (
    StartControlConnectionRequest
    | StartControlConnectionReply
    | StopControlConnectionRequest
    | StopControlConnectionReply
    | EchoRequest
    | EchoReply
    | OutgoingCallRequest
    | OutgoingCallReply
    | IncomingCallRequest
    | IncomingCallReply
    | IncomingCallConnected
    | CallClearRequest
    | CallDisconnectNotify
    | WanErrorNotify
    | SetLinkInfo
)

MESSAGE_CLASSES: Final[tuple[type[Message], ...]] = (
    StartControlConnectionRequest,
    StartControlConnectionReply,
    StopControlConnectionRequest,
    StopControlConnectionReply,
    EchoRequest,
    EchoReply,
    OutgoingCallRequest,
    OutgoingCallReply,
    IncomingCallRequest,
    IncomingCallReply,
    IncomingCallConnected,
    CallClearRequest,
    CallDisconnectNotify,
    WanErrorNotify,
    SetLinkInfo,
)


@dataclass(frozen=True)
class _Codec:
    cls: type[Message]
    body: struct.Struct
    layout: Layout


def _build_codecs() -> dict[MessageType, _Codec]:
    codecs: dict[MessageType, _Codec] = {}
    for cls in MESSAGE_CLASSES:
        body = struct.Struct(">" + "".join(fmt for _, fmt in cls.LAYOUT))
        cls.LENGTH = HEADER_LENGTH + body.size
        declared = [name for name, _ in cls.LAYOUT if not name.startswith("reserved")]
        assert declared == [f.name for f in dataclasses.fields(cls)], cls  # layout matches fields
        codecs[cls.MESSAGE_TYPE] = _Codec(cls, body, cls.LAYOUT)
    return codecs


_CODECS: Final = _build_codecs()
MIN_LENGTH: Final = min(cls.LENGTH for cls in MESSAGE_CLASSES)
MAX_LENGTH: Final = max(cls.LENGTH for cls in MESSAGE_CLASSES)


def _encode_string(cls: type[Message], name: str, value: object, size: int) -> bytes:
    if not isinstance(value, str):
        raise PptpError(f"{cls.RFC_NAME}: field {name} must be a str, got {type(value).__name__}")
    if "\0" in value:
        raise PptpError(f"{cls.RFC_NAME}: field {name} contains a NUL character; remove it")
    try:
        raw = value.encode("utf-8", errors="surrogateescape")
    except UnicodeEncodeError as exc:
        raise PptpError(f"{cls.RFC_NAME}: field {name} holds a character that cannot be encoded") from exc
    if len(raw) > size:
        raise PptpError(
            f"{cls.RFC_NAME}: field {name} is {len(raw)} bytes in UTF-8, the field holds at most {size};"
            " shorten it"
        )
    return raw


def display_text(value: str) -> str:
    """A peer's string made safe for a log line or an event's text: bytes that were not UTF-8
    (kept by the decoder for an exact round trip) become U+FFFD, control characters become '?'."""
    text = value.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
    return "".join(c if c.isprintable() else "?" for c in text)


def _decode_string(raw: bytes) -> str:
    end = raw.find(b"\0")
    if end >= 0:
        raw = raw[:end]
    # surrogateescape: bytes that are not UTF-8 survive a decode/encode round trip unchanged (a
    # replacement character would be 3 bytes each and could no longer fit the field).
    return raw.decode("utf-8", errors="surrogateescape")


def encode_message(msg: Message) -> bytes:
    """The wire bytes of one control message (header included). Raises PptpError on a bad field."""
    cls = type(msg)
    codec = _CODECS.get(getattr(cls, "MESSAGE_TYPE", None))  # type: ignore[arg-type]
    if codec is None or codec.cls is not cls:
        raise PptpError(f"cannot encode {cls.__name__}: not a PPTP control message")
    values: list[object] = []
    for name, fmt in codec.layout:
        if name.startswith("reserved"):
            values.append(0)
        elif fmt.endswith("s"):
            values.append(_encode_string(cls, name, getattr(msg, name), int(fmt[:-1])))
        else:
            value = getattr(msg, name)
            limit = 1 << (8 * struct.calcsize(fmt))
            if type(value) is not int or not 0 <= value < limit:
                raise PptpError(
                    f"{cls.RFC_NAME}: field {name}={value!r} does not fit an unsigned"
                    f" {8 * struct.calcsize(fmt)}-bit field (0..{limit - 1})"
                )
            values.append(value)
    header = _HEADER.pack(cls.LENGTH, CONTROL_MESSAGE, MAGIC_COOKIE, cls.MESSAGE_TYPE, 0)
    return header + codec.body.pack(*values)


def _check_header(buf: bytes | bytearray | memoryview) -> _Codec:
    """Validate the 12-byte header; return the codec of the announced message type."""
    length, pptp_type, cookie, control_type, reserved0 = _HEADER.unpack_from(buf)
    if cookie != MAGIC_COOKIE:
        raise PptpError(
            f"bad PPTP magic cookie 0x{cookie:08X} (must be 0x{MAGIC_COOKIE:08X}): the peer is not"
            " speaking PPTP or the control stream is out of step"
        )
    if pptp_type != CONTROL_MESSAGE:
        what = "management messages are not supported" if pptp_type == MANAGEMENT_MESSAGE else "unknown"
        raise PptpError(f"PPTP Message Type is {pptp_type}, expected 1 (control message): {what}")
    try:
        codec = _CODECS[MessageType(control_type)]
    except ValueError:
        raise PptpError(
            f"unknown PPTP Control Message Type {control_type} (RFC 2637 defines 1 to 15)"
        ) from None
    if length != codec.cls.LENGTH:
        raise PptpError(
            f"{codec.cls.RFC_NAME}: Length field says {length} bytes, RFC 2637 fixes it at {codec.cls.LENGTH}"
        )
    if reserved0 != 0:
        raise PptpError(f"{codec.cls.RFC_NAME}: Reserved0 is 0x{reserved0:04X}, must be 0")
    return codec


def decode_message(buf: bytes | bytearray | memoryview) -> Message:
    """Decode exactly one control message; raises PptpError naming what is wrong."""
    if len(buf) < HEADER_LENGTH:
        raise PptpError(
            f"PPTP control message truncated: {len(buf)} bytes, the header alone is {HEADER_LENGTH}"
        )
    codec = _check_header(buf)
    cls = codec.cls
    if len(buf) != cls.LENGTH:
        raise PptpError(f"{cls.RFC_NAME}: got {len(buf)} bytes, the message is {cls.LENGTH} bytes long")
    values = codec.body.unpack_from(buf, HEADER_LENGTH)
    kwargs: dict[str, object] = {}
    for (name, fmt), value in zip(codec.layout, values, strict=True):
        if name.startswith("reserved"):
            if value != 0:
                raise PptpError(f"{cls.RFC_NAME}: {name} is {value:#x}, reserved fields must be 0")
        elif fmt.endswith("s"):
            kwargs[name] = _decode_string(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)  # type: ignore[arg-type]


class StreamDecoder:
    """Cuts a TCP byte stream into control messages; data may be split at any point.

    A framing error (impossible length, bad cookie, unknown type, bad field) cannot be recovered
    from: the stream is out of step. :meth:`feed` raises PptpError then, and on every later call.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._error: PptpError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet make a whole message."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Add received bytes; return every message now complete, in order."""
        messages, error = self.feed_partial(data)
        if error is not None:
            raise error
        return messages

    def feed_partial(self, data: bytes | bytearray | memoryview) -> tuple[list[Message], PptpError | None]:
        """Like :meth:`feed`, but returns the messages decoded before an error with the error."""
        if self._error is not None:
            return [], self._error
        self._buffer += data
        messages: list[Message] = []
        buf = self._buffer
        try:
            while len(buf) >= 2:
                length = int.from_bytes(buf[0:2], "big")
                if not MIN_LENGTH <= length <= MAX_LENGTH:
                    raise PptpError(
                        f"PPTP Length field says {length} bytes; control messages are {MIN_LENGTH} to"
                        f" {MAX_LENGTH} bytes: the peer is not speaking PPTP or the stream is out of step"
                    )
                if len(buf) >= HEADER_LENGTH:
                    _check_header(buf)  # fail fast on garbage instead of waiting for more of it
                if len(buf) < length:
                    break
                messages.append(decode_message(bytes(buf[:length])))
                del buf[:length]
        except PptpError as exc:
            self._error = exc
            self._buffer.clear()
            return messages, exc
        return messages, None
