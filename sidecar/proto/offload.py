"""TUN segmentation/receive offload: the virtio_net_hdr in front of every packet of an offload TUN.

Rules: sans-IO, bytes in, bytes out. This module knows IPv4, IPv6 and TCP headers and the 10-byte
``struct virtio_net_hdr`` (little-endian: :mod:`sidecar.kernel.tun` sets ``TUNSETVNETLE``); it does
not know PPP, GRE or the device. The tunnel itself only ever carries ordinary, complete packets.

Theory of operation
-------------------
With ``IFF_VNET_HDR`` and ``TUNSETOFFLOAD(TUN_F_CSUM|TUN_F_TSO4|TUN_F_TSO6)`` every read and write on
the TUN device starts with a :class:`VnetHeader`:

* **read** (apps -> tunnel): the kernel may hand us a TCP *super-packet* of up to 64 KB
  (``gso_type`` TCPV4/TCPV6, ``gso_size`` = MSS) whose TCP checksum is left partial (``NEEDS_CSUM``),
  or an ordinary packet whose TCP/UDP checksum is partial. :func:`segment` turns either into
  ordinary packets: MSS-sized TCP segments with their own IP total length, IPv4 ID (+1 per
  segment) and checksum, TCP sequence number, flags (FIN/PSH only on the last segment, CWR only on
  the first) and complete TCP checksum; a partial checksum is completed in place.
* **write** (tunnel -> apps): :class:`Coalescer` merges runs of consecutive in-order TCP segments of
  one flow into one super-packet (``gso_size`` = the segments' payload size, ``NEEDS_CSUM`` with the
  pseudo-header sum in the checksum field, which local delivery trusts), so the receiving TCP stack
  runs once per super-packet instead of once per segment. A segment joins a run only when the
  result segments back into exactly the original packets: same addresses, ports, IP and TCP header
  bytes apart from length/ID/sequence/checksums, contiguous sequence, IPv4 ID +1, flags ACK (and
  ECE) with PSH allowed on the last, every segment but the last full-sized, IPv4 DF set and not a
  fragment, and its IP and TCP checksums verified (the tunnel has no integrity check of its own:
  a damaged segment is passed through for the kernel to drop, never vouched for). Everything else
  passes through unchanged behind a zero header. Packets of one flow keep their order: a run is
  emitted where its first segment was; any packet we cannot attribute to a flow closes every run.

Checksums: the ones'-complement sum of 16-bit big-endian words is congruent to the buffer read as
one big integer modulo 0xFFFF (2**16 = 1 mod 0xFFFF), so ``int.from_bytes(buf, "big") % 0xFFFF``
sums a whole payload in C. For data that is not all zero (always true here: the pseudo-header holds
the protocol number) a residue 0 means a sum of 0xFFFF: the checksum is ``-residue % 0xFFFF`` and a
packet verifies when its residue, checksum included, is 0.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

VNET_HDR_LEN = 10
NEEDS_CSUM = 1  # VIRTIO_NET_HDR_F_NEEDS_CSUM
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_ECN = 0x80
MAX_PACKET = 65535  # largest coalesced packet (the IPv4 total length field)
PROTO_TCP, PROTO_UDP = 6, 17

_FIN, _PSH, _ACK, _ECE, _CWR = 0x01, 0x08, 0x10, 0x40, 0x80
_HDR = struct.Struct("<BBHHHH")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_IP_FIELDS = struct.Struct("!HH")  # IPv4 total length, ID


class OffloadError(ValueError):
    """A frame from the kernel that cannot be turned into ordinary packets (malformed header or packet)."""


@dataclass(frozen=True, slots=True)
class VnetHeader:
    """``struct virtio_net_hdr`` (the 10-byte legacy form, no ``num_buffers``)."""

    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    def pack(self) -> bytes:
        return _HDR.pack(
            self.flags, self.gso_type, self.hdr_len, self.gso_size, self.csum_start, self.csum_offset
        )

    @classmethod
    def unpack(cls, frame: bytes | bytearray | memoryview) -> VnetHeader:
        if len(frame) < VNET_HDR_LEN:
            raise OffloadError(f"frame of {len(frame)} bytes: shorter than the {VNET_HDR_LEN}-byte header")
        return cls(*_HDR.unpack_from(frame))


ZERO_HEADER = VnetHeader().pack()


def checksum(data: bytes | bytearray | memoryview) -> int:
    """The Internet checksum (RFC 1071) of ``data``, as the kernel computes it."""
    return -_residue(data) % 0xFFFF


def _residue(data: bytes | bytearray | memoryview) -> int:
    """The ones'-complement sum of ``data`` (odd length: zero-padded), modulo 0xFFFF."""
    value = int.from_bytes(data, "big")
    return (value << 8 if len(data) & 1 else value) % 0xFFFF


# -- read direction: the kernel's frames -> ordinary packets ----------------------------------------
def segment(hdr: VnetHeader, packet: bytes) -> list[bytes]:
    """The ordinary IP packets behind one frame read from an offload TUN device.

    Raises :class:`OffloadError` for a frame that cannot be segmented or completed."""
    kind = hdr.gso_type & ~GSO_ECN
    if kind == GSO_NONE:
        if not hdr.flags & NEEDS_CSUM:
            return [packet]
        return [_complete_checksum(hdr, packet)]
    if kind not in (GSO_TCPV4, GSO_TCPV6):
        raise OffloadError(f"GSO type {hdr.gso_type:#x} not negotiated")
    if hdr.gso_size == 0:
        raise OffloadError("GSO frame with gso_size 0")
    v4 = kind == GSO_TCPV4
    ip_hl, end = _tcp_ip_header(packet, v4)
    if ip_hl + 20 > end:
        raise OffloadError("GSO frame too short for a TCP header")
    tcp_hl = (packet[ip_hl + 12] >> 4) * 4
    if tcp_hl < 20 or ip_hl + tcp_hl > end:
        raise OffloadError(f"GSO frame with a bad TCP data offset ({tcp_hl})")
    return _split(packet, v4, ip_hl, tcp_hl, end, hdr.gso_size)


def _tcp_ip_header(packet: bytes, v4: bool) -> tuple[int, int]:
    """(IP header length, end of the IP packet) of a TCP packet in a GSO frame."""
    n = len(packet)
    if v4:
        if n < 20 or packet[0] >> 4 != 4:
            raise OffloadError("TCPV4 GSO frame without an IPv4 header")
        ip_hl = (packet[0] & 0x0F) * 4
        end = _U16.unpack_from(packet, 2)[0]
        proto = packet[9]
        if ip_hl < 20 or end < ip_hl or end > n:
            raise OffloadError(f"TCPV4 GSO frame with bad lengths (header {ip_hl}, total {end}, have {n})")
    else:
        if n < 40 or packet[0] >> 4 != 6:
            raise OffloadError("TCPV6 GSO frame without an IPv6 header")
        ip_hl, end, proto = 40, 40 + _U16.unpack_from(packet, 4)[0], packet[6]
        if end > n:
            raise OffloadError(f"TCPV6 GSO frame with bad lengths (total {end}, have {n})")
    if proto != PROTO_TCP:
        raise OffloadError(f"TCP GSO frame carries IP protocol {proto} (extension headers?)")
    return ip_hl, end


def _split(packet: bytes, v4: bool, ip_hl: int, tcp_hl: int, end: int, mss: int) -> list[bytes]:
    """The segments, with the headers' fixed words summed once and the changing ones added."""
    ip = bytearray(packet[:ip_hl])
    tcp = bytearray(packet[ip_hl : ip_hl + tcp_hl])
    payload = memoryview(packet)[ip_hl + tcp_hl : end]
    seq = _U32.unpack_from(tcp, 4)[0]
    flags = tcp[13]
    ident = _U16.unpack_from(ip, 4)[0] if v4 else 0
    tcp[4:8] = b"\0\0\0\0"  # seq, flags, checksum: added per segment
    tcp[13] = 0
    tcp[16:18] = b"\0\0"
    fixed = int.from_bytes(ip[12:20] if v4 else ip[8:40], "big") + PROTO_TCP
    fixed += int.from_bytes(tcp, "big")
    if v4:
        ip[2:6] = b"\0\0\0\0"  # length, ID, checksum: added per segment
        ip[10:12] = b"\0\0"
        ip_fixed = int.from_bytes(ip, "big")
    count = max(1, -(-len(payload) // mss))
    out: list[bytes] = []
    for i in range(count):
        chunk = payload[i * mss : (i + 1) * mss]
        f = flags if i == count - 1 else flags & ~(_FIN | _PSH)
        if i:
            f &= ~_CWR
        s = (seq + i * mss) & 0xFFFFFFFF
        tcp_len = tcp_hl + len(chunk)
        if v4:
            length, pid = ip_hl + tcp_len, (ident + i) & 0xFFFF
            _IP_FIELDS.pack_into(ip, 2, length, pid)
            _U16.pack_into(ip, 10, -(ip_fixed + length + pid) % 0xFFFF)
        else:
            _U16.pack_into(ip, 4, tcp_len)
        total = fixed + tcp_len + s + f + _residue(chunk)
        _U32.pack_into(tcp, 4, s)
        tcp[13] = f
        _U16.pack_into(tcp, 16, -total % 0xFFFF)
        out.append(b"".join((ip, tcp, chunk)))
    return out


def _complete_checksum(hdr: VnetHeader, packet: bytes) -> bytes:
    """Finish a partial checksum: the field holds the pseudo-header sum, the rest is summed here."""
    start, field = hdr.csum_start, hdr.csum_start + hdr.csum_offset
    if hdr.csum_offset & 1 or field + 2 > len(packet) or start & 1:
        raise OffloadError(f"checksum at {start}+{hdr.csum_offset} outside a {len(packet)}-byte packet")
    result = checksum(memoryview(packet)[start:])
    if result == 0 and hdr.csum_offset == 6:
        result = 0xFFFF  # UDP transmits a computed 0 as 0xFFFF (0 = no checksum)
    out = bytearray(packet)
    _U16.pack_into(out, field, result)
    return bytes(out)


# -- write direction: ordinary packets -> coalesced frames ------------------------------------------
@dataclass
class CoalesceCounters:
    super_packets: int = 0  # coalesced frames written (each of 2 or more segments)
    coalesced: int = 0  # segments that went into them
    passed: int = 0  # packets written as they were


class _Run:
    """Consecutive segments of one flow being merged (their first one's place in the output)."""

    __slots__ = ("closed", "head", "ident", "ip_hl", "key", "nbytes", "parts", "psum", "seq", "size")

    def __init__(self, packet: bytes, parsed: _Segment) -> None:
        _, self.key, self.ip_hl, self.head, seq, self.ident, size, flags, residue = parsed
        self.seq = (seq + size) & 0xFFFFFFFF  # the next expected sequence number
        self.size = size  # gso_size: the first segment's payload length
        self.nbytes = size  # payload bytes so far
        self.psum = residue  # local destination: the payload's residue so far; else -1
        self.parts = [packet]
        self.closed = bool(flags & _PSH)  # a short or PSH segment ends a run

    def add(self, packet: bytes, seq: int, ident: int, size: int, flags: int, residue: int) -> None:
        self.parts.append(packet)
        self.seq = (seq + size) & 0xFFFFFFFF
        self.ident = ident
        if residue >= 0:  # a part at an odd offset is byte-swapped: x 256 modulo 0xFFFF
            self.psum += residue * 256 if self.nbytes & 1 else residue
        self.nbytes += size
        self.closed = size < self.size or bool(flags & _PSH)


class Coalescer:
    """Merges the in-order IP packets of one receive batch into frames for an offload TUN device.

    Every segment's checksums are verified here; a damaged one is never merged (it passes alone,
    and the kernel drops it). ``local``: packed addresses (4 or 16 bytes) the kernel delivers to
    itself: their super-packets carry a complete TCP checksum derived from the segments' checksum
    fields, which the kernel verifies again. Anything the kernel might forward is written with
    ``NEEDS_CSUM``, since segmentation on the way out computes fresh checksums."""

    def __init__(self, local: Iterable[bytes] = ()) -> None:
        self.counters = CoalesceCounters()
        self.local = frozenset(local)

    def coalesce(self, packets: Sequence[bytes]) -> list[tuple[bytes, int, int]]:
        """(frame, how many of ``packets`` it holds, their total length) to write, in an order that
        keeps every flow's order; a frame is a virtio header and one IP packet."""
        slots: list[bytes | _Run] = []
        runs: dict[bytes, _Run] = {}
        local = self.local
        for packet in packets:
            parsed = _parse_segment(packet, local)
            if parsed is None:
                runs.clear()  # not attributable to a flow: nothing may move past it
                slots.append(packet)
                continue
            flow, key, _, _, seq, ident, size, flags, residue = parsed
            if not size or flags & ~(_PSH | _ECE) != _ACK:  # no payload, or SYN/FIN/RST/URG/CWR
                runs.pop(flow, None)
                slots.append(packet)
                continue
            run = runs.get(flow)
            if (
                run is not None
                and not run.closed
                and run.key == key
                and run.seq == seq
                and size <= run.size
                and (ident < 0 or (run.ident + 1) & 0xFFFF == ident)
                and run.nbytes + size + run.head <= MAX_PACKET
            ):
                run.add(packet, seq, ident, size, flags, residue)
                continue
            runs[flow] = run = _Run(packet, parsed)
            slots.append(run)
        return [self._frame(item) for item in slots]

    def _frame(self, item: bytes | _Run) -> tuple[bytes, int, int]:
        counters = self.counters
        if isinstance(item, bytes):
            counters.passed += 1
            return ZERO_HEADER + item, 1, len(item)
        parts = item.parts
        if len(parts) == 1:
            counters.passed += 1
            return ZERO_HEADER + parts[0], 1, len(parts[0])
        counters.super_packets += 1
        counters.coalesced += len(parts)
        return _merge(item), len(parts), sum(map(len, parts))


# flow, merge key, IP header length, IP + TCP header length, seq, IPv4 ID (IPv6: -1), payload
# length, TCP flags, payload residue (-1: not for a local destination)
_Segment = tuple[bytes, tuple[int | bytes, ...], int, int, int, int, int, int, int]
_IPV4 = struct.Struct(
    "!BBHHHBBH8s"
)  # version/IHL, TOS, length, ID, DF/fragment, TTL, protocol, sum, addresses
_IPV6 = struct.Struct("!IHBB32s")  # version/class/flow label, payload length, next header, hops, addresses
_TCP = struct.Struct("!4sIIBBHHH")  # ports, seq, ack, data offset, flags, window, sum, urgent pointer


def _parse_segment(packet: bytes, local: frozenset[bytes]) -> _Segment | None:
    """A TCP segment that may join a run (its IP and TCP checksums verified), else None. The merge
    key holds every header field that segmentation copies to each segment."""
    n = len(packet)
    if n < 40:
        return None
    version = packet[0] >> 4
    if version == 4:
        vihl, tos, length, ident, frag, ttl, proto, _, addrs = _IPV4.unpack_from(packet)
        ip_hl = (vihl & 0x0F) * 4
        # DF set (the IDs then form a sequence), not a fragment
        if ip_hl < 20 or proto != PROTO_TCP or length != n or frag != 0x4000:
            return None
        if int.from_bytes(packet[:ip_hl], "big") % 0xFFFF:
            return None
        ip_key: tuple[int | bytes, ...] = (tos, ttl, packet[20:ip_hl])
        dest = addrs[4:]
    elif version == 6:
        ip_hl, ident = 40, -1
        first, length, proto, hops, addrs = _IPV6.unpack_from(packet)
        if proto != PROTO_TCP or length != n - 40 or n < 60:
            return None
        ip_key = (first, hops)
        dest = addrs[16:]
    else:
        return None
    ports, seq, ack, offset, flags, window, _, urgent = _TCP.unpack_from(packet, ip_hl)
    head = ip_hl + (offset >> 4) * 4
    if head < ip_hl + 20 or head > n:
        return None
    pseudo = int.from_bytes(addrs, "big") + PROTO_TCP + n - ip_hl
    # Every segment is verified here, local or not: a summed checksum alone would let two damaged
    # segments whose errors cancel through (found by fuzzing the coalescer).
    if (pseudo + _residue(packet[ip_hl:])) % 0xFFFF:
        return None  # damaged (or a valid checksum we would not reproduce): the kernel decides
    if dest in local:  # the checksum holds, so the payload's residue is what completes it
        residue = -(pseudo + int.from_bytes(packet[ip_hl:head], "big")) % 0xFFFF
    else:
        residue = -1
    key = (*ip_key, ack, offset, flags & ~_PSH, window, urgent, packet[ip_hl + 20 : head])
    return addrs + ports, key, ip_hl, head, seq, ident, n - head, flags, residue


def _merge(run: _Run) -> bytes:
    """One super-packet frame from a run: the first segment's headers, the last one's flags."""
    ip_hl, head, parts = run.ip_hl, run.head, run.parts
    payload = b"".join([p[head:] for p in parts])
    hdr = bytearray(parts[0][:head])
    v4 = hdr[0] >> 4 == 4
    total = head + len(payload)
    hdr[ip_hl + 13] = parts[-1][ip_hl + 13]  # PSH of the last segment
    if v4:
        _U16.pack_into(hdr, 2, total)
        hdr[10:12] = b"\0\0"
        _U16.pack_into(hdr, 10, checksum(hdr[:ip_hl]))
        addr_sum = int.from_bytes(hdr[12:20], "big")
    else:
        _U16.pack_into(hdr, 4, total - 40)
        addr_sum = int.from_bytes(hdr[8:40], "big")
    pseudo = addr_sum + PROTO_TCP + total - ip_hl
    if run.psum >= 0:  # local: the complete checksum, for the kernel to verify
        hdr[ip_hl + 16 : ip_hl + 18] = b"\0\0"
        tcp_sum = pseudo + int.from_bytes(hdr[ip_hl:], "big") + run.psum
        _U16.pack_into(hdr, ip_hl + 16, -tcp_sum % 0xFFFF)
        flags = csum_start = csum_offset = 0
    else:  # partial: the pseudo-header sum; the kernel trusts the rest (verified here)
        _U16.pack_into(hdr, ip_hl + 16, pseudo % 0xFFFF or 0xFFFF)
        flags, csum_start, csum_offset = NEEDS_CSUM, ip_hl, 16
    vnet = VnetHeader(
        flags=flags,
        gso_type=GSO_TCPV4 if v4 else GSO_TCPV6,
        hdr_len=head,
        gso_size=run.size,
        csum_start=csum_start,
        csum_offset=csum_offset,
    )
    return b"".join((vnet.pack(), hdr, payload))


__all__ = [
    "GSO_ECN",
    "GSO_NONE",
    "GSO_TCPV4",
    "GSO_TCPV6",
    "GSO_UDP",
    "MAX_PACKET",
    "NEEDS_CSUM",
    "VNET_HDR_LEN",
    "ZERO_HEADER",
    "CoalesceCounters",
    "Coalescer",
    "OffloadError",
    "VnetHeader",
    "checksum",
    "segment",
]
