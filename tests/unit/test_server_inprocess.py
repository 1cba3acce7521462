"""The embedded server in process: real Server, sessions and protocol machines (both roles), kernel
objects replaced by in-memory queues, trio's MockClock so keepalive timeouts take no real time."""

from __future__ import annotations

from ipaddress import IPv4Address as A
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

pytest.importorskip(
    "sidecar.proto.ppp.link", reason="the PPP link (sidecar.proto.ppp.link) has not landed yet"
)

from sidecar.proto.ppp.auth import AuthMethod
from sidecar.proto.ppp.mppe import MppePolicy
from tests.unit.server_harness import (
    Harness,
    MiniClient,
    Network,
    ipv4_packet,
    make_server,
    serve_settings,
)

SECRETS = """\
alice  pptpd  "alice pass"  *
bob    *      bobpw         *
carol  pptpd  carolpw       10.77.0.200
"""
SERVER_TUN_IP = A("10.77.0.1")
CLIENT1 = A("192.0.2.1")
CLIENT2 = A("192.0.2.2")


def run_with(settings_kw: dict[str, Any], tmp_path: Path, scenario: Any, *, timeout: float = 120.0) -> None:
    settings = serve_settings(tmp_path, SECRETS, **settings_kw)

    async def main() -> None:
        net = Network()
        server, tun, routes = make_server(settings, net)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.gre_loop)
            nursery.start_soon(server.tun_loop)
            h = Harness(server, net, tun, routes, nursery)
            with trio.fail_after(timeout):
                await scenario(h)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def bring_up(h: Harness, client: MiniClient) -> None:
    await h.connect(client)
    with trio.fail_after(30):
        await client.up.wait()
    # let the server process the last IPCP ack
    await trio.sleep(0.05)


def server_session(h: Harness, user: str) -> Any:
    return next(s for s in h.server.sessions if s.user == user)


@pytest.mark.parametrize(
    ("server_auth", "client_auth"),
    [
        ((AuthMethod.MSCHAP_V2,), (AuthMethod.MSCHAP_V2,)),
        ((AuthMethod.MSCHAP_V1,), (AuthMethod.MSCHAP_V1,)),
        ((AuthMethod.CHAP_MD5,), (AuthMethod.CHAP_MD5,)),
        ((AuthMethod.PAP,), (AuthMethod.PAP,)),
        # server prefers MS-CHAPv2, the client only does PAP: the server moves down its list
        ((AuthMethod.MSCHAP_V2, AuthMethod.PAP), (AuthMethod.PAP,)),
    ],
)
def test_auth_methods_and_data_both_ways(
    tmp_path: Path, server_auth: tuple[AuthMethod, ...], client_auth: tuple[AuthMethod, ...]
) -> None:
    mppe = (
        MppePolicy.REQUIRE
        if AuthMethod.MSCHAP_V2 in client_auth or AuthMethod.MSCHAP_V1 in client_auth
        else MppePolicy.REFUSE
    )

    async def scenario(h: Harness) -> None:
        c = MiniClient(CLIENT1, h.net, "alice", "alice pass", auth=client_auth, mppe=mppe)
        await bring_up(h, c)
        up = c.link_up_event
        assert up.local_ip == A("10.77.0.10")  # first pool address
        assert up.peer_ip == SERVER_TUN_IP
        assert tuple(up.dns) == (A("10.77.0.53"),)
        s = server_session(h, "alice")
        assert s.address == A("10.77.0.10") and s.up
        assert h.routes.routes == [A("10.77.0.10")]
        # the host route carries this client's MTU: its MRU (1400 here) under the server's 1460,
        # less the MPPE overhead when encrypted
        assert h.routes.mtus[A("10.77.0.10")] == s.mtu == up.mtu == (1396 if c.link.codec else 1400)
        # client -> server network
        pkt = ipv4_packet(A("10.77.0.10"), A("10.99.0.5"), b"to the LAN")
        c.send_ip(pkt)
        await trio.sleep(0.05)
        assert h.tun.written == [pkt]
        # server network -> client
        back = ipv4_packet(A("10.99.0.5"), A("10.77.0.10"), b"to the client")
        h.tun.inject(back)
        await trio.sleep(0.05)
        assert c.delivered == [back]
        # a packet for an address nobody has is dropped and counted
        h.tun.inject(ipv4_packet(A("10.99.0.5"), A("10.77.0.11")))
        await trio.sleep(0.05)
        assert h.server.counters.tun_no_client == 1

    run_with({"auth": server_auth, "mppe": mppe}, tmp_path, scenario)


@pytest.mark.parametrize(
    ("server_policy", "server_stateful", "client_policy", "client_stateful", "expect"),
    [
        (MppePolicy.REQUIRE, False, MppePolicy.REQUIRE, False, "stateless"),
        (MppePolicy.REQUIRE, True, MppePolicy.REQUIRE, True, "stateful"),
        (MppePolicy.OPTIONAL, False, MppePolicy.REFUSE, False, "none"),
        (MppePolicy.REFUSE, False, MppePolicy.OPTIONAL, False, "none"),
    ],
)
def test_mppe_modes(
    tmp_path: Path,
    server_policy: MppePolicy,
    server_stateful: bool,
    client_policy: MppePolicy,
    client_stateful: bool,
    expect: str,
) -> None:
    async def scenario(h: Harness) -> None:
        c = MiniClient(
            CLIENT1, h.net, "alice", "alice pass", mppe=client_policy, mppe_stateful=client_stateful
        )
        await bring_up(h, c)
        names = [type(e).__name__ for e in c.events]
        if expect == "none":
            assert "EncryptionUp" not in names
        else:
            enc = next(e for e in c.events if type(e).__name__ == "EncryptionUp")
            assert enc.stateful is (expect == "stateful") and enc.key_bits == 128
        for i in range(20):  # data still flows in both directions (stateful keys advance)
            c.send_ip(ipv4_packet(A("10.77.0.10"), A("10.99.0.5"), bytes([i]) * 100))
            h.tun.inject(ipv4_packet(A("10.99.0.5"), A("10.77.0.10"), bytes([i]) * 50))
            await trio.sleep(0.01)
        await trio.sleep(0.1)
        assert len(h.tun.written) == 20 and len(c.delivered) == 20
        assert [p[-1] for p in c.delivered] == list(range(20))

    run_with({"mppe": server_policy, "mppe_stateful": server_stateful}, tmp_path, scenario)


def test_two_clients_distinct_addresses_and_fixed_address(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        a = MiniClient(CLIENT1, h.net, "alice", "alice pass")
        c = MiniClient(CLIENT2, h.net, "carol", "carolpw")
        await bring_up(h, a)
        await bring_up(h, c)
        assert a.link_up_event.local_ip == A("10.77.0.10")
        assert c.link_up_event.local_ip == A("10.77.0.200")  # fixed in the secrets file
        h.tun.inject(ipv4_packet(A("10.99.0.5"), A("10.77.0.200"), b"for carol"))
        h.tun.inject(ipv4_packet(A("10.99.0.5"), A("10.77.0.10"), b"for alice"))
        await trio.sleep(0.05)
        assert [p[-9:] for p in c.delivered] == [b"for carol"]
        assert [p[-9:] for p in a.delivered] == [b"for alice"]
        assert sorted(h.routes.routes) == [A("10.77.0.10"), A("10.77.0.200")]

    run_with({}, tmp_path, scenario)


def test_spoofed_source_dropped_and_counted(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        a = MiniClient(CLIENT1, h.net, "alice", "alice pass")
        b = MiniClient(CLIENT2, h.net, "bob", "bobpw")
        await bring_up(h, a)
        await bring_up(h, b)
        # alice pretends to be bob, then the server itself
        a.send_ip(ipv4_packet(A("10.77.0.11"), A("10.99.0.5")))
        a.send_ip(ipv4_packet(SERVER_TUN_IP, A("10.99.0.5")))
        good = ipv4_packet(A("10.77.0.11"), A("10.99.0.5"), b"bob is bob")
        b.send_ip(good)
        await trio.sleep(0.05)
        assert h.tun.written == [good]
        assert server_session(h, "alice").counters.spoofed == 2
        assert h.server.stats()["session_spoofed"] == 2

    run_with({}, tmp_path, scenario)


def test_wrong_password_releases_nothing_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(h: Harness) -> None:
        c = MiniClient(CLIENT1, h.net, "alice", "WRONG")
        await h.connect(c)
        with trio.fail_after(30):
            await c.down.wait()
        await trio.sleep(3)
        assert not h.server.sessions
        assert h.server.pool.free == h.server.pool.size
        assert h.routes.routes == []

    with caplog.at_level("INFO", logger="sidecar.server"):
        run_with({}, tmp_path, scenario)
    text = caplog.text
    assert "authentication failed" in text
    assert "WRONG" not in text and "alice pass" not in text


def test_unknown_user(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(h: Harness) -> None:
        c = MiniClient(CLIENT1, h.net, "mallory", "x")
        await h.connect(c)
        with trio.fail_after(30):
            await c.down.wait()
        await trio.sleep(3)
        assert not h.server.sessions and h.server.pool.free == h.server.pool.size

    with caplog.at_level("INFO", logger="sidecar.server"):
        run_with({}, tmp_path, scenario)
    assert "unknown user 'mallory'" in caplog.text


def test_vanished_client_detected_by_keepalive_and_address_freed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(h: Harness) -> None:
        c = MiniClient(CLIENT1, h.net, "alice", "alice pass")
        await bring_up(h, c)
        assert h.server.pool.free == h.server.pool.size - 1
        c.frozen = True  # SIGKILL: nothing answers any more
        start = trio.current_time()
        while h.server.sessions:
            await trio.sleep(0.5)
        took = trio.current_time() - start
        # LCP echo every 10 s, dead when 3 in a row go unanswered (the 4th is due), then a
        # bounded goodbye (Terminate-Request, CDN, Stop: about 2 s)
        assert 30 < took <= 10 * (3 + 1) + 3
        assert h.server.pool.free == h.server.pool.size
        assert h.routes.routes == []
        # and the address is handed out again
        d = MiniClient(CLIENT2, h.net, "bob", "bobpw")
        await bring_up(h, d)
        assert d.link_up_event.local_ip == A("10.77.0.10")

    with caplog.at_level("INFO", logger="sidecar.server"):
        run_with({"lcp_echo_interval": 10.0, "lcp_echo_failures": 3}, tmp_path, scenario)
    assert "gone after" in caplog.text


def test_client_hangs_up(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(h: Harness) -> None:
        c = MiniClient(CLIENT1, h.net, "alice", "alice pass")
        await bring_up(h, c)
        await c.hang_up()
        with trio.fail_after(10):
            while h.server.sessions:
                await trio.sleep(0.1)
        assert h.server.pool.free == h.server.pool.size and h.routes.routes == []

    with caplog.at_level("INFO", logger="sidecar.server"):
        run_with({}, tmp_path, scenario)
    lines = [r.getMessage() for r in caplog.records if r.name == "sidecar.server"]
    for phase in (
        "connected",
        "call established",
        "authenticated as 'alice'",
        "MPPE on",
        "address assigned",
        "gone after",
    ):
        assert any(phase in line for line in lines), phase


def test_shutdown_says_goodbye(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        a = MiniClient(CLIENT1, h.net, "alice", "alice pass")
        b = MiniClient(CLIENT2, h.net, "bob", "bobpw")
        await bring_up(h, a)
        await bring_up(h, b)
        await h.server.shutdown("server shutting down")
        assert not h.server.sessions
        for c in (a, b):
            names = [type(e).__name__ for e in c.events]
            assert "LinkDown" in names  # LCP Terminate-Request reached it
            cleared = [e for e in c.events if type(e).__name__ == "CallCleared"]
            closed = [e for e in c.events if type(e).__name__ == "ControlClosed"]
            assert cleared and cleared[0].by_peer  # Call-Disconnect-Notify
            assert closed and closed[0].by_peer  # Stop-Control-Connection-Request
        assert h.server.pool.free == h.server.pool.size

    run_with({}, tmp_path, scenario)


def test_test_reorder_is_absorbed_by_the_client(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        c = MiniClient(CLIENT1, h.net, "alice", "alice pass")
        await bring_up(h, c)
        sent = [ipv4_packet(A("10.99.0.5"), A("10.77.0.10"), i.to_bytes(4, "big")) for i in range(400)]
        for i, packet in enumerate(sent):
            h.tun.inject(packet)
            if i % 8 == 7:
                await trio.sleep(0.001)
        await trio.sleep(1)
        assert c.delivered == sent  # all there, in order
        rq = c.gre.reorder.counters if c.gre else None
        assert rq is not None and rq.buffered > 20 and rq.lost == 0 and rq.late == 0
        s = server_session(h, "alice")
        assert s.reorderer is not None and s.reorderer.counters.released_late > 20

    run_with({"test_reorder": 0.25}, tmp_path, scenario)


def test_garbage_from_one_client_does_not_touch_another(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        a = MiniClient(CLIENT1, h.net, "alice", "alice pass")
        b = MiniClient(CLIENT2, h.net, "bob", "bobpw")
        await bring_up(h, a)
        await bring_up(h, b)
        sa = server_session(h, "alice")
        assert sa.local_call_id is not None
        import os

        for n in range(200):  # random bytes under alice's valid call ID, and plain junk
            junk = bytes([0x30, 0x81, 0x88, 0x0B, 0, 0]) + sa.local_call_id.to_bytes(2, "big") + os.urandom(n)
            h.net.to_server(CLIENT1, junk)
            h.net.to_server(CLIENT1, os.urandom(n))
        await trio.sleep(0.1)
        pkt = ipv4_packet(A("10.77.0.11"), A("10.99.0.5"), b"bob still fine")
        b.send_ip(pkt)
        await trio.sleep(0.1)
        assert pkt in h.tun.written
        assert server_session(h, "bob").up

    run_with({}, tmp_path, scenario)


def test_max_clients_refuses_the_extra_connection(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The real accept loop on a loopback listener: beyond --max-clients a connection is closed at
    once (the client sees EOF), counted and logged; the first client is unaffected."""
    settings = serve_settings(tmp_path, SECRETS, max_clients=1)

    async def main() -> None:
        net = Network()
        server, _tun, _routes = make_server(settings, net)
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.accept_loop, listeners, nursery)
            first = await trio.open_tcp_stream("127.0.0.1", port)
            with trio.fail_after(5):
                while len(server.sessions) < 1:
                    await trio.sleep(0.01)
            second = await trio.open_tcp_stream("127.0.0.1", port)
            with trio.fail_after(5):
                assert await second.receive_some(100) == b""  # closed at once
            assert server.counters.clients_refused == 1 and len(server.sessions) == 1
            await first.aclose()
            with trio.fail_after(5):
                while server.sessions:
                    await trio.sleep(0.01)
            await second.aclose()
            nursery.cancel_scope.cancel()

    with caplog.at_level("INFO", logger="sidecar.server"):
        trio.run(main)
    assert "refused a client from 127.0.0.1: max clients (1) reached" in caplog.text
    assert "control connection closed by the client" in caplog.text


def test_garbage_control_stream_ends_only_that_client(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(h: Harness) -> None:
        a = MiniClient(CLIENT1, h.net, "alice", "alice pass")
        await bring_up(h, a)
        server_end, junk_end = trio.testing.memory_stream_pair()
        bad = h.server.start_session(server_end, CLIENT2, h.nursery)
        await junk_end.send_all(b"\x00\x9c\x00\x01\x1a\x2b\x3c\x4d" + b"\xff" * 200)  # bad cookie/type
        with trio.fail_after(10):
            await bad.wait_done()
        assert bad.end_reason
        assert server_session(h, "alice").up and len(h.server.sessions) == 1
        pkt = ipv4_packet(A("10.77.0.10"), A("10.99.0.5"), b"still here")
        a.send_ip(pkt)
        await trio.sleep(0.05)
        assert h.tun.written == [pkt]

    with caplog.at_level("INFO", logger="sidecar.server"):
        run_with({}, tmp_path, scenario)
    assert "client 2 (192.0.2.2): gone after" in caplog.text


def test_kernel_answers_carry_the_gre_acks(tmp_path: Path) -> None:
    """What the kernel answers inside the TUN write (the TCP acks of an upload) goes back in the
    same turn of the GRE reader, carrying the GRE ack the batch owes: no ack-only packet."""

    async def scenario(h: Harness) -> None:
        a = MiniClient(CLIENT1, h.net, "alice", "alice pass")
        await bring_up(h, a)
        written = h.tun.write

        def answering_write(packet: bytes) -> bool:  # the kernel answers every packet at once
            h.tun.inject(ipv4_packet(SERVER_TUN_IP, A("10.77.0.10"), b"ack of " + packet[-2:]))
            return written(packet)

        h.tun.write = answering_write  # type: ignore[method-assign]
        session = server_session(h, "alice")
        ack_only = session.stack.gre.counters.tx_ack_only
        assert a.gre is not None
        for n in range(20):  # one GRE batch, more than ACK_EVERY packets
            a.send_ip(ipv4_packet(A("10.77.0.10"), SERVER_TUN_IP, b"%02d" % n))
        await trio.sleep(0.05)
        assert [p[-2:] for p in h.tun.written[-20:]] == [b"%02d" % n for n in range(20)]
        assert [p[-9:] for p in a.delivered[-20:]] == [b"ack of %02d" % n for n in range(20)]
        assert session.stack.gre.counters.tx_ack_only == ack_only  # the acks rode on the answers
        assert a.gre.peer_ack == a.gre.last_sent_seq  # and acknowledged all 20

    run_with({}, tmp_path, scenario)
