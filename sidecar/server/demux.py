"""Routes GRE packets from the server's one shared raw socket to the right client session.

Rules: pure and cheap (it runs for every packet before any session sees it). It reads only the
fixed part of the enhanced GRE header (RFC 2637 §4.1): flags and version, protocol type and the
call ID in the key field; the session's :class:`~sidecar.proto.gre.GreSession` does the full
parse. A packet is routed by (source address, call ID), so two clients behind one NAT address
still reach their own sessions, and a packet from an address that does not own the call ID is
dropped (counted), never handed to another client.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Final, Generic, TypeVar

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


def call_id_of(packet: bytes | memoryview) -> int | None:
    """The call ID of an enhanced GRE (version 1, PPP) packet, or None when it is not one."""
    if len(packet) < _HEADER.size:
        return None
    b0, b1, proto, _length, call_id = _HEADER.unpack_from(packet, 0)
    if (b1 & _VERSION_MASK) != 1 or proto != GRE_PPP or not (b0 & _KEY_PRESENT):
        return None
    return int(call_id)


class GreDemux(Generic[T]):
    """(source address, our call ID) -> session."""

    def __init__(self) -> None:
        self._routes: dict[tuple[IPv4Address, int], T] = {}
        self.counters = DemuxCounters()

    def add(self, source: IPv4Address, call_id: int, target: T) -> None:
        key = (source, call_id)
        if key in self._routes:
            raise KeyError(f"call ID {call_id} from {source} is already routed to another session")
        self._routes[key] = target

    def remove(self, source: IPv4Address, call_id: int) -> None:
        self._routes.pop((source, call_id), None)

    def has(self, source: IPv4Address, call_id: int) -> bool:
        return (source, call_id) in self._routes

    def route(self, source: IPv4Address, packet: bytes | memoryview) -> T | None:
        if len(packet) < _HEADER.size:
            self.counters.truncated += 1
            return None
        call_id = call_id_of(packet)
        if call_id is None:
            self.counters.not_pptp += 1
            return None
        target = self._routes.get((source, call_id))
        if target is None:
            self.counters.unknown_call += 1
            return None
        self.counters.routed += 1
        return target

    def __len__(self) -> int:
        return len(self._routes)
