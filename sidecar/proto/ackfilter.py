"""Superseded TCP acks: which pure acks in one batch of outgoing IP packets add nothing.

Rules: pure, sans-IO; the input list is never changed. Used by :meth:`SessionStack.send_ips` on
every batch the TUN reader hands over when ``--tcp-ack-filter`` is on: by default in ``serve``, not
in ``up`` (thinned acks make the other end's TCP send in bigger bursts, which a reordering path
turns into reorder-window overflows; docs/perf.md).

Why: in a bulk transfer the receiving host acks every second segment, and a tunnel reading its TUN
device in batches often finds several acks of one connection in the same read, each acking a bit
more than the one before. Only the newest says anything the sender does not learn from it: the
sender's TCP takes the highest cumulative ack and the latest window. Every ack still costs the
tunnel a full packet (with stateless MPPE: an RC4 re-key at both ends), so the older ones are left
out. The same idea is the "ack filter" of Linux's CAKE qdisc and of DOCSIS cable modems; this is a
conservative reading of it, written from those facts.

What counts as superseded, all of it required (anything else passes untouched):

- the older packet is a *pure* ack: IPv4 without options and not a fragment, or IPv6 whose next
  header is TCP; TCP flags exactly ACK (no SYN, FIN, RST, PSH, URG, ECE, CWR; the reserved bits
  and AE clear: an Accurate ECN counter is never thinned); no payload; TCP options only NOP,
  end-of-list and timestamps (no SACK blocks: a dup ack with SACK drives fast recovery and is
  never dropped); the IP header's ECN bits clear;
- a *later* packet in the same batch is a pure ack of the same connection (same addresses, same
  ports, same direction) by the same rules, and acknowledges strictly more (RFC 1982 arithmetic
  on the 32-bit ack number). Equal ack numbers (duplicate acks, window updates) are all kept.

The order of the packets that stay is the input order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from sidecar.proto.serial import SERIAL_HALF, SERIAL_MASK

ACK_ONLY: Final = 0x10  # the TCP flags byte of a pure ack
_V4_MAX: Final = 20 + 60  # IPv4 header without options + the largest TCP header
_V6_MAX: Final = 40 + 60
_OPT_NOP: Final = 1
_OPT_TIMESTAMP: Final = 8


def _options_ok(packet: bytes, start: int, end: int) -> bool:
    """The TCP options in ``packet[start:end]`` are only NOP / end-of-list / timestamps."""
    i = start
    while i < end:
        kind = packet[i]
        if kind == 0:  # end of list: the rest is padding
            return True
        if kind == _OPT_NOP:
            i += 1
            continue
        if kind != _OPT_TIMESTAMP or i + 10 > end or packet[i + 1] != 10:
            return False
        i += 10
    return True


def pure_ack(packet: bytes) -> tuple[bytes, int] | None:
    """``(connection key, ack number)`` when ``packet`` is a pure ack as the module docstring
    defines it, else None. The key holds both addresses and both ports, so it tells directions apart."""
    n = len(packet)
    if n < 40:
        return None
    version = packet[0] >> 4
    if version == 4:
        if n > _V4_MAX or packet[0] != 0x45 or packet[9] != 6 or packet[1] & 3:
            return None
        if packet[6] & 0x3F or packet[7]:  # more-fragments or an offset
            return None
        if int.from_bytes(packet[2:4], "big") != n:
            return None
        tcp = 20
        key = packet[12:24]
    elif version == 6:
        if n < 60 or n > _V6_MAX or packet[6] != 6 or (packet[1] >> 4) & 3:
            return None
        if int.from_bytes(packet[4:6], "big") + 40 != n:
            return None
        tcp = 40
        key = packet[8:44]
    else:
        return None
    if packet[tcp + 13] != ACK_ONLY:
        return None
    offset_byte = packet[tcp + 12]
    if offset_byte & 0x0F:  # reserved bits or AE (part of Accurate ECN's counter): not ours to drop
        return None
    doff = (offset_byte >> 4) * 4
    if doff < 20 or tcp + doff != n:  # a payload, or a header the packet does not hold
        return None
    if doff > 20 and not _options_ok(packet, tcp + 20, n):
        return None
    return key, int.from_bytes(packet[tcp + 8 : tcp + 12], "big")


def drop_superseded_acks(packets: Sequence[bytes]) -> Sequence[bytes]:
    """``packets`` without the pure acks a later pure ack of the same connection supersedes (the
    module docstring's rules), in order. Returns ``packets`` itself when nothing is dropped."""
    if len(packets) < 2:
        return packets
    newest: dict[bytes, int] = {}
    drop: list[int] = []
    for i in range(len(packets) - 1, -1, -1):
        packet = packets[i]
        if len(packet) > _V6_MAX:  # data: the common case, decided by its length alone
            continue
        found = pure_ack(packet)
        if found is None:
            continue
        key, ack = found
        later = newest.get(key)
        if later is None:
            newest[key] = ack
        elif 0 < ((later - ack) & SERIAL_MASK) < SERIAL_HALF:
            drop.append(i)
    if not drop:
        return packets
    gone = set(drop)
    return [p for i, p in enumerate(packets) if i not in gone]
