"""The two checks the server's data path makes on every IP packet, kept pure and fast.

- Out of a client's tunnel (to the TUN device): the packet must be IPv4 and its source must be the
  address that client was given; anything else is spoofed (or IPv6 we did not negotiate) and is
  dropped and counted, so one client can never impersonate another or the server's network.
- From the TUN device (into a tunnel): the destination address picks the client.

Addresses are compared as the 4 packed bytes straight out of the header (no object per packet).
"""

from __future__ import annotations

from enum import Enum


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


def ipv4_destination(packet: bytes | memoryview) -> bytes | None:
    """The packed destination of an IPv4 packet read from the TUN device, or None if it is not one."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    return bytes(packet[16:20])
