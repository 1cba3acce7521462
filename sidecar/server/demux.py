"""Routes GRE packets from the server's one shared raw socket to the right client session.

Rules: pure and cheap (it runs for every packet before any session sees it). It reads only the
fixed part of the enhanced GRE header (RFC 2637 §4.1): flags and version, protocol type and the
call ID in the key field; the session's :class:`~sidecar.proto.gre.GreSession` does the full
parse. A packet is routed by (source address, call ID), so two clients behind one NAT address
still reach their own sessions, and a packet from an address that does not own the call ID is
dropped (counted), never handed to another client.

Theory of operation: the routes are kept by call ID, each with its (source, session) pairs (one,
unless two clients' calls share a call ID). A source is compared by identity first: the GRE
socket hands out one address object per source, and the first packet that matches by value
replaces the stored object with that one, so the value comparison (and the hashing of an
``IPv4Address``, which costs more than the rest of the routing) happens once per route, not per
packet. A batch is routed at once into runs of consecutive packets for one session, which the
server hands over together.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Final, Generic, TypeVar

from sidecar.server.runs import runs

T = TypeVar("T")

GRE_PPP: Final = 0x880B
_KEY_PRESENT: Final = 0x20  # byte 0: C R K S s Recur
_VERSION_MASK: Final = 0x07
_HEADER: Final = struct.Struct("!BBHHH")  # flags, flags+version, protocol, payload length, call id


@dataclass
class DemuxCounters:
    routed: int = 0
    truncated: int = 0
    not_pptp: int = 0  # wrong version, protocol type or missing key field
    unknown_call: int = 0  # no session for (source, call id)


class GreDemux(Generic[T]):
    """(source address, our call ID) -> session."""

    def __init__(self) -> None:
        self._routes: dict[int, list[tuple[IPv4Address, T]]] = {}  # call id -> (source, session)
        self.counters = DemuxCounters()

    def add(self, source: IPv4Address, call_id: int, target: T) -> None:
        pairs = self._routes.setdefault(call_id, [])
        if any(src == source for src, _ in pairs):
            raise KeyError(f"call ID {call_id} from {source} is already routed to another session")
        pairs.append((source, target))

    def remove(self, source: IPv4Address, call_id: int) -> None:
        pairs = self._routes.get(call_id, [])
        pairs[:] = [(src, target) for src, target in pairs if src != source]
        if not pairs:
            self._routes.pop(call_id, None)

    def has(self, source: IPv4Address, call_id: int) -> bool:
        return self._find(source, call_id) is not None

    def route(self, source: IPv4Address, packet: bytes) -> T | None:
        """The session for one packet, or None (dropped, counted)."""
        found = self.route_batch(((source, packet),))
        return found[0][0] if found else None

    def route_batch(self, batch: Iterable[tuple[IPv4Address, bytes]]) -> list[tuple[T, list[bytes]]]:
        """Route a batch in order: runs of consecutive packets for one session, ``(session,
        packets)``; the rest dropped and counted."""
        targets: list[T | None] = []
        packets: list[bytes] = []
        routes, unpack, size = self._routes, _HEADER.unpack_from, _HEADER.size
        truncated = not_pptp = unknown = 0
        for source, packet in batch:
            if len(packet) < size:
                truncated += 1
                continue
            b0, b1, proto, _length, call_id = unpack(packet, 0)
            if (b1 & _VERSION_MASK) != 1 or proto != GRE_PPP or not (b0 & _KEY_PRESENT):
                not_pptp += 1
                continue
            target: T | None = None
            for src, owner in routes.get(call_id, ()):
                if src is source:
                    target = owner
                    break
            else:
                target = self._find(source, call_id)
            if target is None:
                unknown += 1
                continue
            targets.append(target)
            packets.append(packet)
        c = self.counters
        c.routed += len(packets)
        if truncated or not_pptp or unknown:
            c.truncated += truncated
            c.not_pptp += not_pptp
            c.unknown_call += unknown
        return runs(targets, packets)

    def _find(self, source: IPv4Address, call_id: int) -> T | None:
        """Compare by value; on a match keep ``source`` (the GRE socket's object) for identity."""
        pairs = self._routes.get(call_id, [])
        for i, (src, target) in enumerate(pairs):
            if src == source:
                pairs[i] = (source, target)
                return target
        return None

    def __len__(self) -> int:
        return sum(len(pairs) for pairs in self._routes.values())
