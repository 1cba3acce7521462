"""Fuzz targets for TUN offload (``sidecar/proto/offload.py``): frames the kernel hands over (virtio
header + a possibly 64 KB TCP super-packet) and the coalescer that builds frames for the kernel.

Bad input may only raise :class:`OffloadError` (segment) or nothing (coalesce, which passes what it
cannot merge through unchanged). Every segment states exactly its own length in its IP header; the
coalescer's frames hold every packet of the batch, and segmented again give back exactly those
packets (other flows may move around a run; per-flow order is checked by hypothesis in
tests/unit/test_offload.py).
"""

from __future__ import annotations

import struct

from fuzz.common import InvariantError, Reader, blob, check
from sidecar.proto.offload import (
    GSO_ECN,
    GSO_TCPV4,
    GSO_TCPV6,
    NEEDS_CSUM,
    VNET_HDR_LEN,
    Coalescer,
    OffloadError,
    VnetHeader,
    checksum,
    segment,
)

LOCAL_V4 = bytes((10, 77, 0, 1))


def _claims_its_length(packet: bytes) -> bool:
    if packet and packet[0] >> 4 == 4 and len(packet) >= 20:
        return int.from_bytes(packet[2:4], "big") == len(packet)
    if packet and packet[0] >> 4 == 6 and len(packet) >= 40:
        return int.from_bytes(packet[4:6], "big") + 40 == len(packet)
    return False


def target_offload_segment(data: bytes) -> None:
    """A frame read from the TUN device: only OffloadError; a GSO frame's segments are IP packets
    whose headers state their own length."""
    try:
        hdr = VnetHeader.unpack(data)
        packets = segment(hdr, data[VNET_HDR_LEN:])
    except OffloadError:
        return
    check(all(isinstance(p, bytes) for p in packets), "segment returned something other than bytes")
    if hdr.gso_type & ~GSO_ECN in (GSO_TCPV4, GSO_TCPV6):
        for p in packets:
            check(_claims_its_length(p), f"segment of {len(p)} bytes states another length")


def target_offload_coalesce(data: bytes) -> None:
    """A batch written to the TUN device: first octet bit 0 = the destination is local, then
    length-prefixed packets (at most 64)."""
    r = Reader(data)
    local = (LOCAL_V4,) if r.u8() & 1 else ()
    packets: list[bytes] = []
    while r.pos < len(r.data) and len(packets) < 64:
        packets.append(r.blob())
    frames = Coalescer(local).coalesce(packets)
    check(sum(count for _, count, _ in frames) == len(packets), "frames do not hold every packet")
    back: list[bytes] = []
    for frame, count, total in frames:
        try:
            got = segment(VnetHeader.unpack(frame), frame[VNET_HDR_LEN:])
        except OffloadError as exc:
            raise InvariantError(f"a frame we wrote does not segment: {exc}") from exc
        check(len(got) == count and sum(map(len, got)) == total, "a frame's count or length is wrong")
        back.extend(got)
    check(sorted(back) == sorted(packets), "segmenting the frames does not give the batch back")


def _tcp4(seq: int, payload: bytes, ident: int) -> bytes:
    """An IPv4/TCP segment from 10.77.0.2:5001 to 10.77.0.1:80 with valid checksums."""
    tcp = struct.pack("!HHIIBBHHH", 5001, 80, seq, 1, 5 << 4, 0x10, 512, 0, 0) + payload
    pseudo = bytes((10, 77, 0, 2)) + LOCAL_V4 + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), ident, 0x4000, 64, 6, 0,
                     bytes((10, 77, 0, 2)), LOCAL_V4)  # fmt: skip
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return ip + tcp


def seeds() -> dict[str, list[bytes]]:
    flow = [_tcp4(1000 + 100 * i, bytes((i,)) * 100, 7 + i) for i in range(5)]
    gso = VnetHeader(flags=NEEDS_CSUM, gso_type=GSO_TCPV4, hdr_len=40, gso_size=100,
                     csum_start=20, csum_offset=16).pack()  # fmt: skip
    whole = _tcp4(1000, bytes(range(250)), 7)
    return {
        "offload_segment": [VnetHeader().pack() + flow[0], gso + whole, gso[:4] + b"\0" * 6 + whole],
        "offload_coalesce": [
            b"\x01" + b"".join(blob(p) for p in flow),
            b"\x00" + b"".join(blob(p) for p in [*flow[:2], b"\x45junk", *flow[2:]]),
        ],
    }
