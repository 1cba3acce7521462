"""A stand-in for PppLink (the PPP layer) with the same surface, for tests of the wiring around it
(sidecar.stack, sidecar.tunnel, sidecar.supervisor). It is deliberately trivial: one HELLO frame each
way brings it up, data frames are b"IP" + packet, TERM/TACK say goodbye. The real PppLink has its own
tests; these pin what the hallway does with a link's frames and events."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any


@dataclass(frozen=True)
class LcpUp:
    mru: int
    peer_mru: int


@dataclass(frozen=True)
class Authenticated:
    method: str
    peer_name: str = ""


@dataclass(frozen=True)
class AuthFailed:
    reason: str
    bad_credentials: bool


@dataclass(frozen=True)
class LinkUp:
    local_ip: IPv4Address | None = None
    peer_ip: IPv4Address | None = None
    dns: tuple[IPv4Address, ...] = ()
    mtu: int | None = None
    encryption: str = "none"


@dataclass(frozen=True)
class EchoRtt:
    seconds: float


@dataclass(frozen=True)
class LinkDown:
    reason: str
    bad_credentials: bool = False


@dataclass
class StandInLink:
    local_ip: IPv4Address | None = None
    peer_ip: IPv4Address | None = None
    dns: tuple[IPv4Address, ...] = ()
    mru: int = 1400
    fail_auth: bool = False
    up: bool = False
    closed: bool = False
    out: list[bytes] = field(default_factory=list)
    evs: list[Any] = field(default_factory=list)
    received: list[bytes] = field(default_factory=list)

    def start(self, now: float) -> None:
        self.out.append(b"HELLO")

    def receive(self, frame: bytes, now: float) -> list[bytes]:
        frame = bytes(frame)
        self.received.append(frame[:5])
        if frame == b"HELLO":
            self.evs.append(LcpUp(self.mru, self.mru))
            if self.fail_auth:
                self.evs.append(AuthFailed("the server said: bad password", bad_credentials=True))
                self.evs.append(LinkDown("authentication failed: bad password", bad_credentials=True))
                return []
            self.up = True
            self.evs.append(Authenticated("stand-in", "server"))
            self.evs.append(LinkUp(self.local_ip, self.peer_ip, self.dns))
        elif frame == b"TERM":
            self.out.append(b"TACK")
            self.up = False
            self.evs.append(LinkDown("peer sent Terminate-Request"))
        elif frame == b"TACK" and self.closed:
            self.evs.append(LinkDown("terminated"))
        elif frame.startswith(b"IP"):
            return [frame[2:]]
        return []

    def send_ip(self, packet: bytes, now: float) -> bytes | None:
        return b"IP" + bytes(packet) if self.up else None

    def frames_to_send(self) -> list[bytes]:
        out, self.out = self.out, []
        return out

    def events(self) -> list[Any]:
        out, self.evs = self.evs, []
        return out

    def close(self, now: float, reason: str) -> None:
        self.closed = True
        self.up = False
        self.out.append(b"TERM")

    def timeout(self, now: float) -> None:
        pass

    def next_deadline(self) -> float | None:
        return None
