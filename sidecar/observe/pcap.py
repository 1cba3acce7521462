"""``--pcap PATH``: the tunnel's inner traffic as a pcap file for Wireshark.

What is written: every PPP control frame both ways (LCP, PAP/CHAP, CCP, IPCP, IPV6CP), and every IP
packet both ways *in the clear* (after MPPE decryption inbound, before encryption outbound). MPPE
frames themselves (protocol 0x00FD, ciphertext) are not written: their decrypted content is. GRE and
the PPTP control connection are not written (capture those with tcpdump on the uplink).

Format: link type 204 (``LINKTYPE_PPP_WITH_DIR``): one direction byte (0 = received from the server,
1 = sent by us), then the PPP frame, always written as ``FF 03`` + a two-octet protocol field
whatever header compression (ACFC/PFC) the link negotiated, so Wireshark and scapy (``DIR_PPP``)
dissect every record the same way. IP packets appear as PPP protocol 0x0021 (IPv4) / 0x0057 (IPv6).

Privacy (see docs/diagnosis.md): the file holds the decrypted traffic, so it is created
mode 0600. Authentication frames are masked before they are written: the PAP password always; the
CHAP / MS-CHAP Response value, the MS-CHAPv2 authenticator response (``S=...``) and MS-CHAP
change-password packets unless ``keep_auth_hashes`` is set, because those values let anyone holding
the file test password guesses offline.

Cost: nothing when off. When on, :func:`tap_link` rebinds three methods *of one link instance*
(``receive``, ``send_ip``, ``frames_to_send``) to copies that also write here; the link and the
stack have no capture branch at all.

Rules: this module writes files and knows the PPP and auth packet layouts it masks; it holds no
protocol state. A write error (disk full) disables the capture with one warning, never the tunnel.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

from sidecar.proto.errors import PppError
from sidecar.proto.ppp import frame as F

log = logging.getLogger("sidecar.pcap")

LINKTYPE_PPP_WITH_DIR = 204
DIR_IN = 0x00  # received from the peer
DIR_OUT = 0x01  # sent by us
PAP_MASK = b"********"  # every PAP password becomes this (its length is not revealed either)

_IN_HEADER = bytes((DIR_IN,)) + F.ADDRESS_CONTROL
_OUT_HEADER = bytes((DIR_OUT,)) + F.ADDRESS_CONTROL
_IP_PROTO = {4: b"\x00\x21", 6: b"\x00\x57"}
_DATA_PROTOCOLS = frozenset({F.IPV4, F.IPV6, F.COMPRESSED})
_AUTH_S = re.compile(rb"S=[0-9A-Fa-f]{40}")
_HDR = struct.Struct("!BBH")

# PAP (RFC 1334 §2.2) and CHAP (RFC 1994 §4, RFC 2433, RFC 2759) codes
PAP_AUTHENTICATE_REQUEST = 1
CHAP_RESPONSE = 2
CHAP_SUCCESS = 3
CHAP_FIRST_CHANGE_PASSWORD = 5  # MS-CHAPv1 Change-Password (5, 6), MS-CHAPv2 Change-Password (7)


# -- masking ------------------------------------------------------------------------------------------
def mask_auth(protocol: int, info: bytes, *, keep_hashes: bool = False) -> bytes:
    """The PPP information field of an authentication packet with its secrets masked.

    PAP Authenticate-Request: the password is replaced by ``********`` (lengths rewritten).
    CHAP/MS-CHAP Response: the Value is zeroed (same size); Success: ``S=<40 hex>`` becomes
    ``S=****...``; change-password packets: everything after the header is zeroed. With
    ``keep_hashes`` only PAP is masked. Anything malformed is masked whole (header kept).
    Other protocols are returned unchanged.
    """
    if protocol == F.PAP:
        return _mask_pap(info)
    if protocol == F.CHAP and not keep_hashes:
        return _mask_chap(info)
    return info


def _masked_whole(info: bytes) -> bytes:
    if len(info) < 4:
        return bytes(len(info))
    return info[:4] + bytes(len(info) - 4)


def _mask_pap(info: bytes) -> bytes:
    if len(info) < 4 or info[0] != PAP_AUTHENTICATE_REQUEST:
        return info  # Ack/Nak carry a message for the user, no secret
    length = _HDR.unpack_from(info)[2]
    body = info[4:length]
    if length > len(info) or len(body) < 1:
        return _masked_whole(info)
    id_len = body[0]
    if 1 + id_len + 1 > len(body):
        return _masked_whole(info)
    peer_id = body[1 : 1 + id_len]
    new_body = bytes((id_len,)) + peer_id + bytes((len(PAP_MASK),)) + PAP_MASK
    return _HDR.pack(info[0], info[1], 4 + len(new_body)) + new_body


def _mask_chap(info: bytes) -> bytes:
    if len(info) < 4:
        return info
    code = info[0]
    if code == CHAP_RESPONSE:
        if len(info) < 5 or 5 + info[4] > len(info):
            return _masked_whole(info)
        size = info[4]
        return info[:5] + bytes(size) + info[5 + size :]
    if code == CHAP_SUCCESS:
        return _AUTH_S.sub(b"S=" + b"*" * 40, info)
    if code >= CHAP_FIRST_CHANGE_PASSWORD:
        return _masked_whole(info)
    return info  # Challenge (random), Failure (error code, new challenge)


# -- the writer ---------------------------------------------------------------------------------------
@dataclass
class PcapCounters:
    records: int = 0
    bytes: int = 0
    masked: int = 0  # authentication frames masked
    skipped: int = 0  # malformed frames not written
    errors: int = 0


class PcapTap:
    """One pcap file (link type 204). ``frame(direction, ppp_frame)`` / ``ip(direction, packet)``.

    :meth:`shared` keeps one writer per path for the whole process, so the sessions the supervisor
    restarts append to the same file instead of truncating the capture of the failed one.
    """

    _shared: ClassVar[dict[Path, PcapTap]] = {}

    def __init__(self, path: Path, *, keep_auth_hashes: bool = False) -> None:
        from scapy.utils import PcapWriter

        self.path = Path(path)
        self.keep_auth_hashes = keep_auth_hashes
        self.counters = PcapCounters()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # an existing file keeps its mode otherwise: it holds cleartext traffic
            self._file: BinaryIO | None = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            raise
        self._writer: Any = PcapWriter(self._file, linktype=LINKTYPE_PPP_WITH_DIR, sync=False)
        self._writer.write_header(None)

    @classmethod
    def shared(cls, path: Path, *, keep_auth_hashes: bool = False) -> PcapTap:
        """The process-wide tap for ``path`` (opened, and truncated, the first time only)."""
        key = Path(path).resolve()
        tap = cls._shared.get(key)
        if tap is None or tap._writer is None:
            tap = cls(path, keep_auth_hashes=keep_auth_hashes)
            cls._shared[key] = tap
        return tap

    # -- records ----------------------------------------------------------------------------------
    def frame(self, direction: int, frame: bytes | bytearray | memoryview) -> None:
        """A PPP frame as it crossed the link (any header compression). Data frames (IP in the clear,
        MPPE ciphertext) are not written here: :meth:`ip` writes the clear IP packet."""
        if self._writer is None:
            return
        try:
            protocol, info = F.decode_frame(frame)
        except PppError:
            self.counters.skipped += 1
            return
        if protocol in _DATA_PROTOCOLS:
            return
        data = bytes(info)
        if protocol == F.PAP or protocol == F.CHAP:
            masked = mask_auth(protocol, data, keep_hashes=self.keep_auth_hashes)
            if masked != data:
                self.counters.masked += 1
            data = masked
        head = _OUT_HEADER if direction else _IN_HEADER
        self._write(head + protocol.to_bytes(2, "big") + data)
        self._flush()  # control frames are rare and the interesting ones: keep them on disk

    def ip(self, direction: int, packet: bytes | bytearray | memoryview) -> None:
        """An IP packet in the clear, written as a PPP IPv4/IPv6 frame."""
        if self._writer is None or not packet:
            return
        proto = _IP_PROTO.get(packet[0] >> 4)
        if proto is None:
            self.counters.skipped += 1
            return
        head = _OUT_HEADER if direction else _IN_HEADER
        self._write(head + proto + bytes(packet))

    def _write(self, record: bytes) -> None:
        try:
            self._writer.write(record)
        except (OSError, ValueError) as exc:
            self.counters.errors += 1
            log.warning("pcap %s: write failed (%s); capture stopped, the tunnel goes on", self.path, exc)
            self.close()
            return
        self.counters.records += 1
        self.counters.bytes += len(record)

    def _flush(self) -> None:
        if self._file is None:
            return
        try:
            self._file.flush()
        except (OSError, ValueError) as exc:
            self.counters.errors += 1
            log.warning("pcap %s: flush failed (%s); capture stopped", self.path, exc)
            self.close()

    def flush(self) -> None:
        """Put everything written so far on disk (the end of a session)."""
        self._flush()

    def close(self) -> None:
        writer, self._writer = self._writer, None
        f, self._file = self._file, None
        if writer is not None:
            with contextlib.suppress(OSError, ValueError):
                writer.close()
        if f is not None and not f.closed:
            with contextlib.suppress(OSError, ValueError):
                f.close()
        PcapTap._shared = {k: v for k, v in PcapTap._shared.items() if v is not self}

    @property
    def closed(self) -> bool:
        return self._writer is None


# -- hooking a link -----------------------------------------------------------------------------------
def tap_link(link: Any, tap: PcapTap) -> None:
    """Make ``link`` (a :class:`~sidecar.proto.ppp.link.PppLink`) copy its traffic into ``tap``.

    Rebinds ``receive``, ``send_ip`` and ``frames_to_send`` on this one instance: every frame the
    link receives (also the ones the stack feeds it from the reorder queue or from before the call
    was up), every IP packet it delivers or accepts for sending, and every control frame it sends.
    """
    receive: Callable[[Any, float], list[bytes]] = link.receive
    send_ip: Callable[[bytes, float], bytes | None] = link.send_ip
    frames_to_send: Callable[[], list[bytes]] = link.frames_to_send
    write_frame, write_ip = tap.frame, tap.ip

    def receive_tapped(frame: Any, now: float) -> list[bytes]:
        write_frame(DIR_IN, frame)
        packets = receive(frame, now)
        for packet in packets:
            write_ip(DIR_IN, packet)
        return packets

    def send_ip_tapped(packet: bytes, now: float) -> bytes | None:
        out = send_ip(packet, now)
        if out is not None:
            write_ip(DIR_OUT, packet)
        return out

    def frames_to_send_tapped() -> list[bytes]:
        frames = frames_to_send()
        for frame in frames:
            write_frame(DIR_OUT, frame)
        return frames

    link.receive = receive_tapped
    link.send_ip = send_ip_tapped
    link.frames_to_send = frames_to_send_tapped
