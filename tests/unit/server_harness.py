"""In-memory harness for the embedded server: the real Server, sessions and protocol machines, with
the kernel objects (GRE socket, TUN device) replaced by in-memory queues and the TCP control
connection by trio memory streams. The other end is a minimal client built from the same protocol
machines in the client role (ControlConnection CLIENT, GreSession, PppLink PEER).

Used with trio's MockClock (autojump) so keepalive timeouts take no real time.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import trio
import trio.testing

from sidecar.config import ServeSettings
from sidecar.proto.gre import GreSession
from sidecar.proto.ppp.auth import AuthMethod
from sidecar.proto.ppp.link import LinkConfig, LinkRole, PppLink
from sidecar.proto.ppp.mppe import MppePolicy
from sidecar.proto.pptp import CallEstablished, ControlConfig, ControlConnection, Role
from sidecar.proto.secret import Secret
from sidecar.server.main import Server, _prepare
from sidecar.server.wiring import stack_factory

SERVER_ADDR = IPv4Address("198.51.100.1")


class Network:
    """GRE between the server's shared socket and any number of clients, in memory."""

    def __init__(self) -> None:
        self.server_inbox: list[tuple[IPv4Address, bytes]] = []
        self.server_ready = trio.Event()
        self.client_inbox: dict[IPv4Address, list[bytes]] = defaultdict(list)
        self.client_ready: dict[IPv4Address, trio.Event] = defaultdict(trio.Event)
        self.sent_to: dict[IPv4Address, list[bytes]] = defaultdict(list)  # what the server sent, in order

    def to_server(self, source: IPv4Address, packet: bytes) -> None:
        self.server_inbox.append((source, packet))
        self.server_ready.set()

    def to_client(self, dest: IPv4Address, packet: bytes) -> None:
        self.client_inbox[dest].append(packet)
        self.sent_to[dest].append(packet)
        self.client_ready[dest].set()


class FakeGreSocket:
    def __init__(self, net: Network) -> None:
        self.net = net

    async def wait_readable(self) -> None:
        while not self.net.server_inbox:
            await self.net.server_ready.wait()
            self.net.server_ready = trio.Event()

    def recv_batch(self, max: int = 64) -> list[tuple[IPv4Address, bytes]]:
        out = self.net.server_inbox[:max]
        del self.net.server_inbox[:max]
        return out

    def send(self, packet: bytes, dest: IPv4Address | None = None) -> bool:
        assert dest is not None
        self.net.to_client(dest, bytes(packet))
        return True

    def send_batch(self, packets: Sequence[bytes], dest: IPv4Address | None = None) -> int:
        return sum(self.send(packet, dest) for packet in packets)


class FakeTun:
    name = "faketun0"

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.inbox: list[bytes] = []
        self.ready = trio.Event()

    def write(self, packet: bytes | bytearray | memoryview) -> bool:
        self.written.append(bytes(packet))
        return True

    def write_batch(self, packets: list[bytes]) -> int:
        return sum(1 for packet in packets if self.write(packet))  # one by one: tests wrap write()

    def inject(self, packet: bytes) -> None:
        self.inbox.append(packet)
        self.ready.set()

    async def wait_readable(self) -> None:
        while not self.inbox:
            await self.ready.wait()
            self.ready = trio.Event()

    def read_batch(self, max: int = 64) -> list[bytes]:
        out = self.inbox[:max]
        del self.inbox[:max]
        return out


class FakeNet:
    def __init__(self) -> None:
        self.routes: list[IPv4Address] = []
        self.mtus: dict[IPv4Address, int | None] = {}

    def add_client_route(self, address: IPv4Address, mtu: int | None = None) -> Any:
        self.routes.append(address)
        self.mtus[address] = mtu
        return lambda: self.routes.remove(address)


@dataclass
class MiniClient:
    """A PPTP client from the protocol machines, client role; no kernel."""

    address: IPv4Address  # its public address (the GRE source)
    net: Network
    user: str
    password: str
    auth: tuple[AuthMethod, ...] = (AuthMethod.MSCHAP_V2,)
    mppe: MppePolicy = MppePolicy.REQUIRE
    mppe_stateful: bool = False
    mppe_key_bits: frozenset[int] = frozenset({128})
    echo_interval: float = 60.0
    lcp_echo_interval: float = 10.0
    delivered: list[bytes] = field(default_factory=list)
    events: list[Any] = field(default_factory=list)
    up: trio.Event = field(default_factory=trio.Event)
    down: trio.Event = field(default_factory=trio.Event)
    frozen: bool = False  # stop answering anything (a vanished client)

    def __post_init__(self) -> None:
        rng = random.Random(hash(self.address))
        self.control = ControlConnection(Role.CLIENT, ControlConfig(echo_interval=self.echo_interval), rng)
        self.link_config = LinkConfig(
            auth_methods=self.auth,
            username=self.user,
            password=Secret(self.password),
            mppe=self.mppe,
            mppe_stateful=self.mppe_stateful,
            mppe_key_bits=self.mppe_key_bits,
            echo_interval=self.lcp_echo_interval,
        )
        self.link = PppLink(LinkRole.PEER, self.link_config, rng)
        self.gre: GreSession | None = None
        self.link_up_event: Any = None
        self._wake = trio.Event()

    async def run(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        now = trio.current_time()
        self.control.start(now)
        async with trio.open_nursery() as n:
            self.nursery = n
            n.start_soon(self._reader)
            n.start_soon(self._gre_reader)
            n.start_soon(self._timer)
            await self._flush()

    def _handle(self, events: list[Any], now: float) -> None:
        for ev in events:
            self.events.append(ev)
            if isinstance(ev, CallEstablished):
                self.gre = GreSession(
                    ev.local_call_id, ev.peer_call_id, reorder_window=16, reorder_timeout=0.1
                )
                self.link.start(now)
            name = type(ev).__name__
            if name == "LinkUp":
                self.link_up_event = ev
                self.up.set()
            if name in ("LinkDown", "ControlClosed"):
                self.down.set()

    async def _flush(self, wake: bool = True) -> None:
        now = trio.current_time()
        if self.gre is not None:
            for frame in self.link.frames_to_send():
                self.net.to_server(self.address, self.gre.send(frame, now))
            self._handle(self.link.events(), now)
        data = self.control.data_to_send()
        if data and not self.frozen:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.down.set()
        if wake:
            self._wake.set()

    async def _reader(self) -> None:
        while True:
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if self.frozen:
                await trio.sleep_forever()
            self._handle(self.control.receive_data(data, trio.current_time()), trio.current_time())
            await self._flush()
            if not data:
                self.down.set()
                return

    async def _gre_reader(self) -> None:
        inbox = self.net.client_inbox[self.address]
        while True:
            while not inbox or (self.gre is None and not self.frozen):
                # (GRE may overtake the Outgoing-Call-Reply: keep it until the call is known)
                await self.net.client_ready[self.address].wait()
                self.net.client_ready[self.address] = trio.Event()
            packets = list(inbox)
            inbox.clear()
            if self.frozen or self.gre is None:
                continue
            now = trio.current_time()
            for packet in packets:
                for frame in self.gre.receive(packet, now):
                    self.delivered += self.link.receive(frame, now)
            await self._flush()

    async def _timer(self) -> None:
        last = -math.inf
        while True:
            ds = [self.control.next_deadline(), self.link.next_deadline() if self.gre else None]
            if self.gre is not None:
                ds.append(self.gre.next_deadline())
            deadline = max(min((d for d in ds if d is not None), default=math.inf), last + 0.001)
            with trio.move_on_at(deadline):
                await self._wake.wait()
            self._wake = trio.Event()
            last = trio.current_time()
            if self.frozen:
                await trio.sleep_forever()
            now = trio.current_time()
            self._handle(self.control.timeout(now), now)
            if self.gre is not None:
                frames, acks = self.gre.timeout(now)
                for frame in frames:
                    self.delivered += self.link.receive(frame, now)
                for ack in acks:
                    self.net.to_server(self.address, ack)
                self.link.timeout(now)
            await self._flush(wake=False)

    def send_ip(self, packet: bytes) -> None:
        assert self.gre is not None
        now = trio.current_time()
        frame = self.link.send_ip(packet, now)
        if frame is not None:
            self.net.to_server(self.address, self.gre.send(frame, now))

    async def hang_up(self) -> None:
        now = trio.current_time()
        self.link.close(now, "user hung up")
        await self._flush()


def serve_settings(tmp_path: Path, secrets_text: str, **kw: Any) -> ServeSettings:
    path = tmp_path / "chap-secrets"
    path.write_text(secrets_text)
    base: dict[str, Any] = {
        "secrets": path,
        "local_ip": IPv4Address("10.77.0.1"),
        "pool": tuple(IPv4Address(f"10.77.0.{i}") for i in range(10, 14)),
        "dns": (IPv4Address("10.77.0.53"),),
    }
    base.update(kw)
    return ServeSettings(**base)


@dataclass
class Harness:
    server: Server
    net: Network
    tun: FakeTun
    routes: FakeNet
    nursery: trio.Nursery

    async def connect(self, client: MiniClient) -> None:
        server_end, client_end = trio.testing.memory_stream_pair()
        self.server.start_session(server_end, client.address, self.nursery)
        self.nursery.start_soon(client.run, client_end)


def make_server(settings: ServeSettings, net: Network) -> tuple[Server, FakeTun, FakeNet]:
    secrets, pool = _prepare(settings)
    tun = FakeTun()
    routes = FakeNet()
    server = Server(
        settings,
        secrets=secrets,
        pool=pool,
        gre=FakeGreSocket(net),
        tun=tun,
        netconf=routes,
        make_stack=stack_factory(settings),
    )
    return server, tun, routes


def ipv4_packet(src: IPv4Address, dst: IPv4Address, payload: bytes = b"hello") -> bytes:
    """A minimal IPv4/UDP packet (checksums left zero: nothing here verifies them)."""
    total = 20 + 8 + len(payload)
    header = bytes([0x45, 0, total >> 8, total & 0xFF, 0, 1, 0, 0, 64, 17, 0, 0]) + src.packed + dst.packed
    udp = bytes([0x30, 0x39, 0x30, 0x39, (8 + len(payload)) >> 8, (8 + len(payload)) & 0xFF, 0, 0])
    return header + udp + payload
