"""The client session (sidecar.tunnel) in namespaces against a stand-in server (real PPTP control and
GRE machines, stand-in PPP): data both ways through TUN/GRE/veth, the namespace configured while up
and restored afterwards (also after a failed start and a vanished server), the goodbye on stop."""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

from sidecar.config import UpSettings
from sidecar.proto.pptp import ControlConfig, ControlConnection, Role
from sidecar.proto.secret import Secret
from sidecar.stack import SessionStack
from sidecar.state import State, StatusBoard
from sidecar.tunnel import SessionResult, run_session
from tests.netns import nslib
from tests.netns.standin_server import CLIENT_TUNNEL_IP, TUNNEL_DNS, StandInServer
from tests.standin_link import StandInLink

T = TypeVar("T")
ORIGINAL_RESOLV = "nameserver 192.0.2.53\nsearch cluster.local\n"


def settings_for(h: nslib.TwoHosts, **kw: Any) -> UpSettings:
    base = UpSettings(
        server=str(h.server_ip),
        user="alice",
        password=Secret("correct horse"),
        interface=nslib.unique("tn"),
        dns=True,
        kill_switch=False,
        http=None,
        connect_timeout=2.0,
        backoff_initial=0.05,
        backoff_max=0.2,
    )
    return replace(base, **kw)


def standin_stack(fail_auth: bool = False) -> Callable[[int], SessionStack]:
    def make(path_mtu: int) -> SessionStack:
        link = StandInLink(fail_auth=fail_auth)
        # the client link learns its addresses from the server's LinkUp in real PPP (IPCP); the
        # stand-in simply knows them
        link.local_ip, link.peer_ip, link.dns = CLIENT_TUNNEL_IP, IPv4Address("10.99.0.1"), TUNNEL_DNS
        control = ControlConnection(Role.CLIENT, ControlConfig(echo_interval=0), random.Random(3))
        return SessionStack(control, lambda: link, reorder_window=0, reorder_timeout=0.1)

    return make


def in_client(h: nslib.TwoHosts, fn: Callable[[], Awaitable[T]]) -> T:
    with h.client.enter():
        return trio.run(fn)


@pytest.fixture
def env(hosts: nslib.TwoHosts, tmp_path: Path) -> Iterator[tuple[nslib.TwoHosts, StandInServer, Path]]:
    server = StandInServer(hosts)
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(ORIGINAL_RESOLV)
    try:
        yield hosts, server, resolv
    finally:
        server.close()


Env = tuple[nslib.TwoHosts, StandInServer, Path]


def udp_packet(src: IPv4Address, dst: IPv4Address, sport: int, dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, src.packed, dst.packed)
    total = sum(struct.unpack("!10H", header))
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return header[:10] + struct.pack("!H", ~total & 0xFFFF) + header[12:] + udp


async def wait_state(board: StatusBoard, state: State, timeout: float = 3.0) -> None:
    with trio.fail_after(timeout):
        while board.state is not state:
            await trio.sleep(0.01)


def test_tunnel_up_carries_data_and_restores_everything_on_stop(
    env: tuple[nslib.TwoHosts, StandInServer, Path],
) -> None:
    h, server, resolv = env
    addr_before, route_before = h.client.addr_snapshot(), h.client.route_snapshot()
    settings = settings_for(h)
    board = StatusBoard()
    seen: dict[str, Any] = {}

    async def main() -> SessionResult:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            result: list[SessionResult] = []

            async def client() -> None:
                result.append(
                    await run_session(
                        settings,
                        board,
                        server_ip=h.server_ip,
                        stop=stop,
                        resolv_conf=resolv,
                        make_stack=standin_stack(),
                    )
                )

            nursery.start_soon(client)
            await wait_state(board, State.UP)
            seen["addr"] = h.client.ip("addr", "show", settings.interface)
            seen["routes"] = h.client.ip("route")
            seen["resolv"] = resolv.read_text()
            seen["mtu"] = h.client.link_mtu(settings.interface)

            app = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            await app.bind(("0.0.0.0", 0))
            port = app.getsockname()[1]
            for i in range(3):
                await app.sendto(b"out %d" % i, (str(h.outside_ip), 5353))
            with trio.fail_after(2):
                while len([p for p in server.received_ip if p[0] >> 4 == 4]) < 3:
                    await trio.sleep(0.01)
            server.send_ip(udp_packet(h.outside_ip, CLIENT_TUNNEL_IP, 5353, port, b"back in"))
            with trio.fail_after(2):
                data, src = await app.recvfrom(100)
            seen["reply"] = (data, src[0])
            app.close()

            stopped_at = trio.current_time()
            stop.set()
            with trio.fail_after(3):
                while not result:
                    await trio.sleep(0.01)
            seen["stop_took"] = trio.current_time() - stopped_at
            nursery.cancel_scope.cancel()
        return result[0]

    result = in_client(h, main)

    # while up: point-to-point address, MTU, routes, DNS
    assert f"inet {CLIENT_TUNNEL_IP} peer 10.99.0.1/32" in seen["addr"]
    assert seen["mtu"] == 1400  # the path allows 1500-20-16-4 = 1460 (no MPPE); the peer's MRU caps it
    assert f"0.0.0.0/1 dev {settings.interface}" in seen["routes"]
    assert f"128.0.0.0/1 dev {settings.interface}" in seen["routes"]
    assert f"{h.server_ip} via {h.gateway_ip} dev {h.client_if}" in seen["routes"]
    assert "nameserver 10.99.0.53" in seen["resolv"] and "search cluster.local" in seen["resolv"]
    # data both ways
    outs = [p for p in server.received_ip if p[0] >> 4 == 4]
    assert [p[28:] for p in outs] == [b"out 0", b"out 1", b"out 2"]
    assert all(p[12:16] == CLIENT_TUNNEL_IP.packed and p[16:20] == h.outside_ip.packed for p in outs)
    assert seen["reply"] == (b"back in", str(h.outside_ip))
    assert board.counters["packets_out"] >= 3 and board.counters["packets_in"] == 1
    assert server.gre.counters.rx_packets > 3  # it really went over the veth as GRE
    # the goodbye: LCP terminate reached the server, then the call was cleared and control stopped
    assert result.stopped and result.was_up and not result.bad_credentials
    assert seen["stop_took"] < 2.0
    assert server.link is not None and b"TERM" in server.link.received
    assert server.events[-2:] == ["CallCleared", "ControlClosed"]
    # everything restored
    assert result.restore_failures == ()
    assert h.client.addr_snapshot() == addr_before
    assert h.client.route_snapshot() == route_before
    assert resolv.read_text() == ORIGINAL_RESOLV
    phases = [e.phase for e in board.timeline]
    for phase in (
        "tcp connected",
        "control connected",
        "call established",
        "lcp up",
        "authenticated",
        "ipcp up",
        "up",
    ):
        assert phase in phases, phases


def test_server_hanging_up_ends_the_session_and_restores(
    env: tuple[nslib.TwoHosts, StandInServer, Path],
) -> None:
    h, server, resolv = env
    addr_before, route_before = h.client.addr_snapshot(), h.client.route_snapshot()
    settings = settings_for(h, routes=(IPv4Network("172.31.0.0/16"),))
    board = StatusBoard()

    async def main() -> SessionResult:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            result: list[SessionResult] = []

            async def client() -> None:
                result.append(
                    await run_session(
                        settings, board, server_ip=h.server_ip, resolv_conf=resolv, make_stack=standin_stack()
                    )
                )

            nursery.start_soon(client)
            await wait_state(board, State.UP)
            assert f"172.31.0.0/16 dev {settings.interface}" in h.client.ip("route")
            await server.hang_up()
            with trio.fail_after(3):
                while not result:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        return result[0]

    result = in_client(h, main)
    assert not result.stopped and result.was_up
    assert "control connection closed" in result.reason
    assert h.client.addr_snapshot() == addr_before
    assert h.client.route_snapshot() == route_before
    assert resolv.read_text() == ORIGINAL_RESOLV


def test_failed_start_restores_the_namespace(env: Env) -> None:
    h, server, _ = env
    addr_before, route_before = h.client.addr_snapshot(), h.client.route_snapshot()
    settings = settings_for(h)
    board = StatusBoard()
    # DNS setup fails after the address and routes went in: a directory that does not exist
    broken_resolv = Path("/nonexistent-pst-dir/resolv.conf")

    async def main() -> SessionResult:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            with trio.fail_after(4):
                result = await run_session(
                    settings,
                    board,
                    server_ip=h.server_ip,
                    resolv_conf=broken_resolv,
                    make_stack=standin_stack(),
                )
            nursery.cancel_scope.cancel()
        return result

    result = in_client(h, main)
    assert "network setup failed" in result.reason and not result.was_up
    assert h.client.addr_snapshot() == addr_before
    assert h.client.route_snapshot() == route_before


def test_connection_refused_is_a_stated_reason_and_leaves_nothing(hosts: nslib.TwoHosts) -> None:
    h = hosts
    links_before, route_before = h.client.links(), h.client.route_snapshot()
    settings = settings_for(h)

    async def main() -> SessionResult:
        return await run_session(settings, StatusBoard(), server_ip=h.server_ip, make_stack=standin_stack())

    result = in_client(h, main)
    assert "cannot connect to PPTP server" in result.reason and "refused" in result.reason
    assert h.client.links() == links_before  # the TUN device is gone again
    assert h.client.route_snapshot() == route_before


def test_bad_credentials_are_reported(env: Env) -> None:
    h, server, resolv = env
    settings = settings_for(h)
    board = StatusBoard()

    async def main() -> SessionResult:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            with trio.fail_after(4):
                result = await run_session(
                    settings,
                    board,
                    server_ip=h.server_ip,
                    resolv_conf=resolv,
                    make_stack=standin_stack(fail_auth=True),
                )
            nursery.cancel_scope.cancel()
        return result

    result = in_client(h, main)
    assert result.bad_credentials and not result.was_up
    assert "bad password" in result.reason
    assert board.auth_failures == 1


def test_stop_with_a_silent_server_still_ends_within_two_seconds(env: Env) -> None:
    h, server, resolv = env
    route_before = h.client.route_snapshot()
    settings = settings_for(h)
    board = StatusBoard()

    async def main() -> tuple[SessionResult, float]:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            result: list[SessionResult] = []

            async def client() -> None:
                result.append(
                    await run_session(
                        settings, board, server_ip=h.server_ip, stop=stop, resolv_conf=resolv,
                        make_stack=standin_stack(),
                    )
                )  # fmt: skip

            nursery.start_soon(client)
            await wait_state(board, State.UP)
            server.mute = True  # frozen: answers nothing from now on
            t0 = trio.current_time()
            stop.set()
            with trio.fail_after(3):
                while not result:
                    await trio.sleep(0.01)
            took = trio.current_time() - t0
            nursery.cancel_scope.cancel()
        return result[0], took

    result, took = in_client(h, main)
    assert result.stopped and took <= 2.05
    assert h.client.route_snapshot() == route_before
    assert resolv.read_text() == ORIGINAL_RESOLV
