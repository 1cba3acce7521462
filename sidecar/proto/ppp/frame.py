"""PPP framing inside GRE (RFC 1661 §2, §6.5, §6.6) and the control packet codec (RFC 1661 §5).

What lives here: protocol numbers, the frame codec (Address/Control ``FF 03`` and the Protocol field,
both possibly compressed), the control packet codec shared by LCP, the NCPs and CCP
(``code, identifier, length, data``) and the configuration option list codec (``type, length, data``).

What does not: any negotiation. This module does not know which compressions were agreed; the link
passes ``acfc``/``pfc`` when it encodes, and the decoder always accepts every form (RFC 1661 §6.5/§6.6:
a receiver that agreed to compression must still accept uncompressed frames).

PPTP carries PPP in synchronous (HDLC-less) form: no flags, no FCS, no byte stuffing; so ACCM is
meaningless here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from sidecar.proto.errors import PppError

# -- protocol numbers (RFC 1700 / IANA "PPP DLL Protocol Numbers") ---------------------------------
LCP: Final = 0xC021
PAP: Final = 0xC023
CHAP: Final = 0xC223
CCP: Final = 0x80FD
IPCP: Final = 0x8021
IPV6CP: Final = 0x8057
IPV4: Final = 0x0021
IPV6: Final = 0x0057
COMPRESSED: Final = 0x00FD

PROTOCOL_NAMES: Final[dict[int, str]] = {
    LCP: "LCP",
    PAP: "PAP",
    CHAP: "CHAP",
    CCP: "CCP",
    IPCP: "IPCP",
    IPV6CP: "IPV6CP",
    IPV4: "IPv4",
    IPV6: "IPv6",
    COMPRESSED: "compressed datagram",
}


def protocol_name(protocol: int) -> str:
    return PROTOCOL_NAMES.get(protocol, f"protocol 0x{protocol:04x}")


ADDRESS_CONTROL: Final = b"\xff\x03"

# -- control packet codes (RFC 1661 §5, RFC 1962 §2.2) ---------------------------------------------
CONFIGURE_REQUEST: Final = 1
CONFIGURE_ACK: Final = 2
CONFIGURE_NAK: Final = 3
CONFIGURE_REJECT: Final = 4
TERMINATE_REQUEST: Final = 5
TERMINATE_ACK: Final = 6
CODE_REJECT: Final = 7
PROTOCOL_REJECT: Final = 8  # LCP only
ECHO_REQUEST: Final = 9  # LCP only
ECHO_REPLY: Final = 10  # LCP only
DISCARD_REQUEST: Final = 11  # LCP only
RESET_REQUEST: Final = 14  # CCP only (RFC 1962)
RESET_ACK: Final = 15  # CCP only

CODE_NAMES: Final[dict[int, str]] = {
    CONFIGURE_REQUEST: "Configure-Request",
    CONFIGURE_ACK: "Configure-Ack",
    CONFIGURE_NAK: "Configure-Nak",
    CONFIGURE_REJECT: "Configure-Reject",
    TERMINATE_REQUEST: "Terminate-Request",
    TERMINATE_ACK: "Terminate-Ack",
    CODE_REJECT: "Code-Reject",
    PROTOCOL_REJECT: "Protocol-Reject",
    ECHO_REQUEST: "Echo-Request",
    ECHO_REPLY: "Echo-Reply",
    DISCARD_REQUEST: "Discard-Request",
    RESET_REQUEST: "Reset-Request",
    RESET_ACK: "Reset-Ack",
}

_HDR: Final = struct.Struct("!BBH")


def decode_frame(buf: bytes | bytearray | memoryview) -> tuple[int, memoryview]:
    """Split a PPP frame into ``(protocol, information)``.

    Accepts the Address/Control field ``FF 03`` present or absent and the Protocol field in one or
    two octets. Raises :class:`PppError` for a frame too short to hold a protocol or with an invalid
    protocol number (RFC 1661 §2: the low bit of the low octet is 1, of the high octet 0).
    """
    view = memoryview(buf)
    n = len(view)
    i = 0
    if n >= 2 and view[0] == 0xFF:
        if view[1] != 0x03:
            raise PppError(f"PPP frame has address 0xff but control 0x{view[1]:02x} (expected 0x03)")
        i = 2
    if i >= n:
        raise PppError("PPP frame too short: no protocol field")
    first = view[i]
    if first & 1:
        return first, view[i + 1 :]
    if i + 1 >= n:
        raise PppError("PPP frame too short: truncated two-octet protocol field")
    second = view[i + 1]
    if not second & 1:
        raise PppError(f"invalid PPP protocol 0x{first:02x}{second:02x}: the low octet must be odd")
    return (first << 8) | second, view[i + 2 :]


def protocol_field(protocol: int, *, pfc: bool) -> bytes:
    """The Protocol field alone: one octet when ``pfc`` and the protocol allows it (< 0xFF)."""
    if not 0 < protocol <= 0xFFFF or not protocol & 1 or protocol & 0x100:
        raise PppError(f"invalid PPP protocol number 0x{protocol:04x}")
    if pfc and protocol < 0xFF:  # 0x00FF stays two octets: one 0xFF octet would read as the Address
        return bytes((protocol,))
    return protocol.to_bytes(2, "big")


def frame_header(protocol: int, *, acfc: bool, pfc: bool) -> bytes:
    """Address/Control (unless ``acfc``) + Protocol field; LCP never uses either compression."""
    if protocol == LCP:
        acfc = pfc = False
    head = b"" if acfc else ADDRESS_CONTROL
    return head + protocol_field(protocol, pfc=pfc)


def encode_frame(protocol: int, payload: bytes | bytearray | memoryview, *, acfc: bool, pfc: bool) -> bytes:
    """A PPP frame. LCP packets always carry ``FF 03`` and a two-octet protocol (RFC 1661 §6.5/§6.6)."""
    return frame_header(protocol, acfc=acfc, pfc=pfc) + bytes(payload)


# -- control packets ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ControlPacket:
    """One LCP/NCP/CCP packet: ``code``, ``identifier`` and ``data`` (``length`` is derived)."""

    code: int
    identifier: int
    data: bytes

    @property
    def length(self) -> int:
        return 4 + len(self.data)

    def __str__(self) -> str:
        name = CODE_NAMES.get(self.code, f"code {self.code}")
        return f"{name} id={self.identifier} ({len(self.data)} data bytes)"


def decode_control(buf: bytes | bytearray | memoryview) -> ControlPacket:
    """Decode a control packet; octets beyond Length are padding and ignored (RFC 1661 §5)."""
    if len(buf) < 4:
        raise PppError(f"control packet too short: {len(buf)} bytes, need at least 4")
    code, identifier, length = _HDR.unpack_from(buf, 0)
    if length < 4:
        raise PppError(f"control packet Length {length} is below the minimum of 4")
    if length > len(buf):
        raise PppError(f"control packet Length {length} exceeds the {len(buf)} bytes received")
    return ControlPacket(code, identifier, bytes(buf[4:length]))


def encode_control(code: int, identifier: int, data: bytes = b"") -> bytes:
    if not 0 <= code <= 0xFF or not 0 <= identifier <= 0xFF:
        raise PppError(f"control packet code {code} / identifier {identifier} out of range 0..255")
    if len(data) + 4 > 0xFFFF:
        raise PppError("control packet data too long")
    return _HDR.pack(code, identifier, 4 + len(data)) + data


# -- configuration options ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Option:
    """One configuration option: ``type`` and ``data`` (the Length octet is derived)."""

    type: int
    data: bytes = b""

    def encode(self) -> bytes:
        return bytes((self.type, len(self.data) + 2)) + self.data


def decode_options(buf: bytes | bytearray | memoryview) -> list[Option]:
    """Decode a configuration option list. Raises :class:`PppError` on a bad Length."""
    out: list[Option] = []
    view = memoryview(buf)
    i, n = 0, len(view)
    while i < n:
        if i + 2 > n:
            raise PppError(f"configuration option at offset {i} is truncated (no Length octet)")
        typ, length = view[i], view[i + 1]
        if length < 2:
            raise PppError(f"configuration option type {typ} has Length {length} (minimum 2)")
        if i + length > n:
            raise PppError(f"configuration option type {typ} Length {length} runs past the packet end")
        out.append(Option(typ, bytes(view[i + 2 : i + length])))
        i += length
    return out


def encode_options(options: list[Option] | tuple[Option, ...]) -> bytes:
    return b"".join(o.encode() for o in options)
