"""A small PPTP server for tunnel tests, living in the server namespace: the real
ControlConnection(SERVER) and GreSession (through sidecar.stack) over real sockets, with the
StandInLink instead of PPP. It lets the client's hallway (tunnel, supervisor) be driven end to end
before, and independently of, the real PPP link and the embedded server."""

from __future__ import annotations

import contextlib
import random
import socket
from ipaddress import IPv4Address
from typing import Any

import trio

from sidecar.kernel.gre_socket import GreSocket
from sidecar.proto.pptp import ControlConfig, ControlConnection, Role
from sidecar.stack import SessionStack
from tests.netns import nslib
from tests.standin_link import StandInLink

CLIENT_TUNNEL_IP = IPv4Address("10.99.0.2")
SERVER_TUNNEL_IP = IPv4Address("10.99.0.1")
TUNNEL_DNS = (IPv4Address("10.99.0.53"),)


class StandInServer:
    def __init__(self, hosts: nslib.TwoHosts, *, port: int = 1723, fail_auth: bool = False) -> None:
        self.hosts = hosts
        self.fail_auth = fail_auth
        with hosts.server.enter():
            self.listen_sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.gre = GreSocket(None, bind=hosts.server_ip)
        self.listen_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listen_sock.bind((str(hosts.server_ip), port))
        self.listen_sock.listen()
        self.received_ip: list[bytes] = []
        self.events: list[str] = []  # event class names, all sessions
        self.sessions = 0
        self.stack: SessionStack | None = None
        self.link: StandInLink | None = None
        self.peer: IPv4Address | None = None
        self._stream: trio.SocketStream | None = None
        self.mute = False  # stop answering (a server that vanished without a word)
        self._lock = trio.Lock()

    def close(self) -> None:
        self.listen_sock.close()
        self.gre.close()

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(self.listen_sock))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._gre_reader)
            task_status.started()
            while True:
                stream = await listener.accept()
                await self._session(stream)

    def send_ip(self, packet: bytes) -> None:
        assert self.stack is not None and self.peer is not None
        for g in self.stack.send_ip(packet, trio.current_time()):
            self.gre.send(g, self.peer)

    async def hang_up(self) -> None:
        """Drop the TCP connection without a goodbye (the server crashed)."""
        if self._stream is not None:
            self._stream.socket.close()

    async def _session(self, stream: trio.SocketStream) -> None:
        self.sessions += 1
        self._stream = stream
        self.peer = IPv4Address(stream.socket.getpeername()[0])
        self.link = StandInLink(SERVER_TUNNEL_IP, CLIENT_TUNNEL_IP, TUNNEL_DNS)
        link = self.link
        control = ControlConnection(Role.SERVER, ControlConfig(echo_interval=0), random.Random(7))
        self.stack = stack = SessionStack(control, lambda: link, reorder_window=0, reorder_timeout=0.1)
        if self.fail_auth:
            link.fail_auth = True
        stack.start(trio.current_time())
        async with trio.open_nursery() as nursery:

            async def reader() -> None:
                while True:
                    try:
                        data = await stream.receive_some(65536)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        data = b""
                    if self.mute:
                        continue
                    stack.control_received(data, trio.current_time())
                    await self._flush(stream)
                    if not data or stack.finished():
                        nursery.cancel_scope.cancel()
                        return

            async def ticker() -> None:
                while True:
                    await trio.sleep(0.01)
                    if self.mute:
                        continue
                    now = trio.current_time()
                    ips, packets = stack.timeout(now)
                    self.received_ip += ips
                    for p in packets:
                        self.gre.send(p, self.peer)
                    await self._flush(stream)

            nursery.start_soon(reader)
            nursery.start_soon(ticker)
            await self._flush(stream)
        with trio.move_on_after(0.2):
            await stream.aclose()
        self._stream = None

    async def _flush(self, stream: trio.SocketStream) -> None:
        stack = self.stack
        assert stack is not None
        now = trio.current_time()
        for p in stack.gre_to_send(now):
            self.gre.send(p, self.peer)
        self.events += [type(e).__name__ for e in stack.events(now)]
        for p in stack.gre_to_send(now):
            self.gre.send(p, self.peer)
        await self._send_control(stream)

    async def _send_control(self, stream: trio.SocketStream) -> None:
        assert self.stack is not None
        async with self._lock:
            data = self.stack.control_to_send()
            if data:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    await stream.send_all(data)

    async def _gre_reader(self) -> None:
        while True:
            await self.gre.wait_readable()
            batch = self.gre.recv_batch()
            stack = self.stack
            if stack is None or self.mute:
                continue
            now = trio.current_time()
            for _src, packet in batch:
                self.received_ip += stack.gre_received(packet, now)
            await self._flush_gre_only(now)

    async def _flush_gre_only(self, now: float) -> None:
        stack = self.stack
        assert stack is not None
        for p in stack.gre_to_send(now):
            self.gre.send(p, self.peer)
        self.events += [type(e).__name__ for e in stack.events(now)]
        for p in stack.gre_to_send(now):
            self.gre.send(p, self.peer)
        if stack.control_pending() and self._stream is not None:
            await self._send_control(self._stream)
