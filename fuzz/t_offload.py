"""Fuzz target for TUN offload (``sidecar/proto/offload.py``): frames the kernel hands over (virtio
header + a possibly 64 KB TCP super-packet). Bad input may only raise :class:`OffloadError`, and
every segment claims exactly its own length in its IP header. (The coalescer's round trip is
checked by hypothesis in tests/unit/test_offload.py.)
"""

from __future__ import annotations

import struct

from fuzz.common import check
from sidecar.proto.offload import (
    GSO_ECN,
    GSO_TCPV4,
    GSO_TCPV6,
    NEEDS_CSUM,
    VNET_HDR_LEN,
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
    }
