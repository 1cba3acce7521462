"""The two checks the server's data path makes on every IP packet, kept pure and fast.

- Out of a client's tunnel (to the TUN device): the packet must be IPv4 and its source must be the
  address that client was given; anything else is spoofed (or IPv6 we did not negotiate) and is
  dropped and counted, so one client can never impersonate another or the server's network.
- From the TUN device (into a tunnel): the destination address picks the client.

Addresses are compared as the 4 packed bytes straight out of the header (no object per packet).
Both work on a whole batch in one call (a function call per packet is a measurable share of the
server's CPU); :func:`check_from_client` is the verdict on one packet, and
:func:`admit_from_client` applies exactly that rule to a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import TypeVar

from sidecar.server.runs import runs

T = TypeVar("T")


class Verdict(Enum):
    OK = "ok"
    NOT_IPV4 = "not_ipv4"
    TRUNCATED = "truncated"
    SPOOFED = "spoofed"


def check_from_client(packet: bytes | memoryview, assigned: bytes) -> Verdict:
    """Judge an IP packet a client sent through its tunnel. ``assigned`` = its address, packed."""
    if len(packet) < 20:
        return Verdict.TRUNCATED
    if packet[0] >> 4 != 4:
        return Verdict.NOT_IPV4
    if packet[12:16] != assigned:
        return Verdict.SPOOFED
    return Verdict.OK


def admit_from_client(packets: Sequence[bytes], assigned: bytes, admitted: list[bytes]) -> list[Verdict]:
    """Append to ``admitted`` (in order) every packet :func:`check_from_client` finds OK; return
    the verdicts on the others."""
    rejected: list[Verdict] = []
    for packet in packets:
        if len(packet) >= 20 and packet[0] >> 4 == 4 and packet[12:16] == assigned:
            admitted.append(packet)
        else:
            rejected.append(check_from_client(packet, assigned))
    return rejected


def group_by_destination(
    packets: Sequence[bytes], owners: dict[bytes, T]
) -> tuple[list[tuple[T, list[bytes]]], int, int]:
    """Route a batch read from the TUN device by IPv4 destination (packed, a key of ``owners``):
    runs of consecutive packets for one owner, ``(owner, packets)``, in order; then how many were
    not IPv4 (or shorter than its header) and how many had a destination nobody owns (both
    dropped)."""
    targets: list[T | None] = []
    not_ipv4 = 0
    for packet in packets:
        if len(packet) < 20 or packet[0] >> 4 != 4:
            not_ipv4 += 1
            targets.append(None)
        else:
            targets.append(owners.get(packet[16:20]))
    no_owner = targets.count(None) - not_ipv4
    return runs(targets, packets), not_ipv4, no_owner
