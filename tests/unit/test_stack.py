"""The per-session wiring (sidecar.stack): a client stack against a server-role stack, both built on
the real ControlConnection and GreSession, bytes pumped between them. The PPP layer is a small
stand-in link (the real PppLink has its own tests) so that these tests pin what the stack owns: the
order of things, the goodbye with its deadlines, the outcome, and the MTU arithmetic."""

from __future__ import annotations

import random
from typing import Any

import pytest

from sidecar.proto.pptp import ControlConfig, ControlConnection, Role
from sidecar.stack import SessionStack, Step, max_mru, tunnel_mtu
from tests.standin_link import StandInLink


def make(role: Role, link: StandInLink, seed: int) -> SessionStack:
    control = ControlConnection(role, ControlConfig(echo_interval=0), random.Random(seed))
    return SessionStack(control, lambda: link, reorder_window=0, reorder_timeout=0.1, ack_delay=0.0)


class Pair:
    def __init__(self, *, client_link: StandInLink | None = None, server_link: StandInLink | None = None):
        self.cl = client_link or StandInLink()
        self.sl = server_link or StandInLink()
        self.client = make(Role.CLIENT, self.cl, 1)
        self.server = make(Role.SERVER, self.sl, 2)
        self.now = 100.0
        self.events: dict[str, list[Any]] = {"client": [], "server": []}
        self.ips: dict[str, list[bytes]] = {"client": [], "server": []}
        self.drop_gre = False
        self.drop_control = False

    def pump(self, rounds: int = 20) -> None:
        for _ in range(rounds):
            moved = False
            for name, a, b in (("client", self.client, self.server), ("server", self.server, self.client)):
                data = a.control_to_send()
                if data and not self.drop_control:
                    b.control_received(data, self.now)
                    moved = True
                for packet in a.gre_to_send(self.now):
                    if not self.drop_gre:
                        other = "server" if name == "client" else "client"
                        self.ips[other] += b.gre_received(packet, self.now)
                        moved = True
                self.events[name] += a.events(self.now)
            if not moved:
                return

    def up(self) -> None:
        self.client.start(self.now)
        self.server.start(self.now)
        self.pump()


def kinds(events: list[Any]) -> list[str]:
    return [type(e).__name__ for e in events]


def test_handshake_builds_gre_and_link_in_order_and_carries_ip_both_ways() -> None:
    p = Pair()
    p.up()
    assert kinds(p.events["client"])[:2] == ["ControlConnected", "CallEstablished"]
    assert kinds(p.events["client"]).index("LinkUp") > 1
    assert "LinkUp" in kinds(p.events["server"])
    assert p.client.gre is not None and p.server.gre is not None
    # call IDs cross: what the client writes is what the server expects
    assert p.client.gre.peer_call_id == p.server.gre.local_call_id
    assert p.server.gre.peer_call_id == p.client.gre.local_call_id

    for packet in (b"\x45first", b"\x45second"):
        for gre_packet in p.client.send_ip(packet, p.now):
            p.ips["server"] += p.server.gre_received(gre_packet, p.now)
    for gre_packet in p.server.send_ip(b"\x45back", p.now):
        p.ips["client"] += p.client.gre_received(gre_packet, p.now)
    assert p.ips["server"] == [b"\x45first", b"\x45second"]
    assert p.ips["client"] == [b"\x45back"]
    assert p.client.counters.ip_out == 2 and p.client.counters.ip_in == 1


def test_ip_before_the_link_is_up_is_dropped_and_counted() -> None:
    p = Pair()
    assert p.client.send_ip(b"\x45early", p.now) == []
    assert p.client.counters.ip_out_dropped == 1
    assert p.client.gre_received(b"\x30\x01\x88\x0b\x00\x00\x00\x01\x00\x00\x00\x01", p.now) == []


def test_our_goodbye_is_lcp_then_call_then_control() -> None:
    p = Pair()
    p.up()
    p.client.close(p.now, "SIGTERM")
    assert p.client.step is Step.LINK
    p.pump()
    # the server saw our Terminate-Request first, then the call clear, then the stop
    assert p.sl.received[-1] == b"TERM"
    assert kinds(p.events["server"])[-2:] == ["CallCleared", "ControlClosed"]
    assert p.client.finished() and p.server.finished()
    assert p.client.outcome is not None and p.client.outcome.reason == "SIGTERM"
    assert not p.client.outcome.bad_credentials
    assert p.server.outcome is not None and "Terminate-Request" in p.server.outcome.reason


def test_goodbye_to_a_silent_peer_ends_within_the_grace_time() -> None:
    p = Pair()
    p.up()
    p.drop_gre = p.drop_control = True  # the server vanished
    p.client.close(p.now, "SIGTERM", grace=2.0)
    steps = [p.client.step]
    t = p.now
    while not p.client.finished():
        deadline = p.client.next_deadline()
        assert deadline is not None, f"stuck in {p.client.step} without a deadline"
        t = deadline
        p.client.timeout(t)
        p.client.control_to_send()
        steps.append(p.client.step)
    assert t - p.now <= 2.0 + 1e-9
    assert steps[0] is Step.LINK and Step.CALL in steps and Step.STOP in steps
    assert p.client.outcome is not None and p.client.outcome.reason == "SIGTERM"


def test_bad_credentials_end_the_session_and_say_so() -> None:
    p = Pair(client_link=StandInLink(fail_auth=True))
    p.up()
    assert p.client.finished()
    assert p.client.outcome is not None and p.client.outcome.bad_credentials
    assert "bad password" in p.client.outcome.reason
    assert "AuthFailed" in kinds(p.events["client"])


def test_peer_terminate_is_the_outcome_and_the_call_is_cleared() -> None:
    p = Pair()
    p.up()
    p.server.close(p.now, "server shutting down")
    p.pump()
    assert p.client.finished() and p.server.finished()
    assert p.client.outcome is not None
    assert p.client.outcome.reason == "link down: peer sent Terminate-Request"


def test_control_eof_ends_the_session() -> None:
    p = Pair()
    p.up()
    p.client.control_received(b"", p.now)
    assert p.client.finished()
    assert p.client.outcome is not None and p.client.outcome.error and p.client.outcome.by_peer
    assert "ControlClosed" in kinds(p.client.events(p.now))


def test_first_cause_wins() -> None:
    p = Pair()
    p.up()
    p.client.close(p.now, "SIGTERM")
    p.client.control_received(b"", p.now)  # the peer hangs up during our goodbye
    assert p.client.outcome is not None and p.client.outcome.reason == "SIGTERM"


# -- MTU arithmetic ---------------------------------------------------------------------------------
def test_mtu_from_a_1500_path() -> None:
    assert max_mru(1500) == 1460  # 1500 - IP 20 - GRE 16 - PPP 4
    assert tunnel_mtu(1500) == 1456  # ... - MPPE 4
    assert tunnel_mtu(1500, mppe=False) == 1460
    # the largest tunnel packet + overhead is exactly the path MTU: no fragmentation
    assert tunnel_mtu(1500) + 20 + 16 + 4 + 4 == 1500


@pytest.mark.parametrize("path", [576, 1280, 1400, 1492, 1500, 9000])
def test_mtu_never_makes_gre_bigger_than_the_path(path: int) -> None:
    for mppe in (True, False):
        mtu = tunnel_mtu(path, mppe=mppe)
        assert mtu + 20 + 16 + 4 + (4 if mppe else 0) == path


def test_mtu_caps() -> None:
    assert tunnel_mtu(1500, peer_mru=1400) == 1396  # peer MRU minus MPPE
    assert tunnel_mtu(1500, peer_mru=1400, mppe=False) == 1400
    assert tunnel_mtu(1500, link_mtu=1300) == 1300
    assert tunnel_mtu(1500, configured=1200) == 1200
    assert tunnel_mtu(1500, configured=1490) == 1456  # never above what fits


def test_gre_that_overtakes_the_call_reply_is_kept_for_the_call() -> None:
    p = Pair()
    p.client.start(p.now)
    p.server.start(p.now)
    # the control exchange up to the server's Outgoing-Call-Reply, which we hold back
    p.server.control_received(p.client.control_to_send(), p.now)  # SCCRQ
    p.client.control_received(p.server.control_to_send(), p.now)  # SCCRP
    p.server.control_received(p.client.control_to_send(), p.now)  # OCRQ
    p.server.events(p.now)
    ocrp = p.server.control_to_send()
    early = p.server.gre_to_send(p.now)  # the server's link starts at once: its HELLO
    assert early
    for packet in early:
        assert p.client.gre_received(packet, p.now) == []  # no call yet: kept, not lost
    p.client.control_received(ocrp, p.now)
    p.client.events(p.now)
    assert p.cl.received == [b"HELLO"] and p.cl.up


# -- the goodbye with the real PPP link -------------------------------------------------------------
# PppLink reports LinkDown as soon as it decides to go down (CONTRACTS.md), before its LCP
# Terminate-Request is answered. The stack must still hold the Call-Clear-Request until the
# Terminate-Ack is in: a real pptpd hangs up pppd on the Call-Clear-Request, and a pppd that has not
# read the Terminate-Request yet logs only "Modem hangup" (seen against pptpd 1.4.0 / pppd 2.4.9).
def _real_pair() -> tuple[SessionStack, SessionStack]:
    from ipaddress import IPv4Address

    from sidecar.config import UpSettings
    from sidecar.proto.ppp.link import LinkConfig, LinkRole, PppLink
    from sidecar.proto.secret import Secret
    from sidecar.stack import client_stack

    settings = UpSettings(server="192.0.2.1", user="alice", password=Secret("pw-alice"))
    client = client_stack(settings, rng=random.Random(3))
    server_config = LinkConfig(
        lookup_secret={"alice": Secret("pw-alice")}.get,
        local_ip=IPv4Address("10.9.0.1"),
        peer_ip=IPv4Address("10.9.0.2"),
        echo_interval=0,
    )
    server_control = ControlConnection(Role.SERVER, ControlConfig(echo_interval=0), random.Random(4))
    server = SessionStack(
        server_control,
        lambda: PppLink(LinkRole.AUTHENTICATOR, server_config, random.Random(5)),
        reorder_window=0,
        ack_delay=0.0,
    )
    return client, server


def _pump(a: SessionStack, b: SessionStack, now: float, *, gre: bool = True, control: bool = True) -> None:
    for _ in range(50):
        moved = False
        for x, y in ((a, b), (b, a)):
            data = x.control_to_send()
            if data and control:
                y.control_received(data, now)
                moved = True
            for packet in x.gre_to_send(now):
                if gre:
                    y.gre_received(packet, now)
                    moved = True
            x.events(now)
        if not moved:
            return


def test_goodbye_holds_the_call_clear_until_lcp_terminate_ack() -> None:
    client, server = _real_pair()
    now = 50.0
    client.start(now)
    server.start(now)
    _pump(client, server, now)
    assert client.link is not None and client.link.link_up is not None, "the real links came up"
    client.close(now, "SIGTERM", grace=1.5)
    client.events(now)  # PppLink has reported LinkDown already: still no Call-Clear-Request
    terminate = client.gre_to_send(now)
    assert terminate, "LCP Terminate-Request sent"
    assert client.control_to_send() == b"", "Call-Clear-Request must wait for the Terminate-Ack"
    assert client.step is Step.LINK
    for packet in terminate:  # the server reads it and answers Terminate-Ack
        server.gre_received(packet, now + 0.01)
    server.events(now + 0.01)
    assert server.outcome is not None and "SIGTERM" in server.outcome.reason
    for packet in server.gre_to_send(now + 0.01):
        client.gre_received(packet, now + 0.02)
    client.events(now + 0.02)
    assert client.step is Step.CALL, "Terminate-Ack in: now the call is cleared"
    assert client.control_to_send() != b""


def test_goodbye_without_terminate_ack_clears_the_call_after_the_link_grace() -> None:
    client, server = _real_pair()
    now = 50.0
    client.start(now)
    server.start(now)
    _pump(client, server, now)
    client.close(now, "SIGTERM", grace=1.5)
    client.events(now)
    client.gre_to_send(now)  # lost: the server never answers
    assert client.control_to_send() == b""
    deadline = client.next_deadline()
    assert deadline is not None and now < deadline <= now + 1.0
    client.timeout(deadline)
    client.events(deadline)
    assert client.step is Step.CALL and client.control_to_send() != b""
    t = deadline
    while not client.finished():
        d = client.next_deadline()
        assert d is not None
        t = d
        client.timeout(t)
        client.control_to_send()
    assert t - now <= 1.5 + 1e-9


# -- flow control: the peer's receive window (RFC 2637 §4.2) -----------------------------------------
def _send_data(p: Pair, n: int) -> list[bytes]:
    out: list[bytes] = []
    for i in range(n):
        out += p.client.send_ip(b"\x45" + i.to_bytes(2, "big"), p.now)
    return out


def test_send_room_follows_the_peer_window_and_its_acks() -> None:
    from sidecar.stack import NO_WINDOW

    p = Pair()
    assert p.client.send_room() == NO_WINDOW  # no call yet
    p.up()
    window = p.server.control.config.window  # what the server advertised in its Outgoing-Call-Reply
    assert p.client.peer_window == window == 64
    base = p.client.send_room()
    assert 0 < base <= window  # the handshake's own GRE packets may still be unacked
    sent = _send_data(p, base)
    assert p.client.send_room() == 0, "window full: the caller must wait"
    assert p.client.counters.window_full == 1
    for packet in sent:  # the server takes them and acks (ack delay 0 here)
        p.server.gre_received(packet, p.now)
    _, acks = p.server.timeout(p.now)
    for packet in acks:
        p.client.gre_received(packet, p.now)
    assert p.client.send_room() == window


def test_window_stall_counts_what_was_sent_as_acked() -> None:
    p = Pair()
    p.up()
    for packet in _send_data(p, 1):  # one exchange so the peer has acked something
        p.server.gre_received(packet, p.now)
    _, acks = p.server.timeout(p.now)
    for packet in acks:
        p.client.gre_received(packet, p.now)
    assert p.client.gre is not None and p.client.gre.peer_ack is not None
    _send_data(p, p.client.send_room())  # these acks get lost
    assert p.client.send_room() == 0
    p.client.window_stalled()
    assert p.client.counters.window_stalls == 1
    assert p.client.send_room() == p.client.peer_window, "a full window again, the tunnel goes on"


def test_a_peer_that_never_acks_is_not_paced() -> None:
    from sidecar.stack import NO_WINDOW

    p = Pair()
    p.up()
    assert p.client.gre is not None
    p.client.gre.peer_ack = None  # as if the server had never acknowledged anything
    _send_data(p, p.client.send_room())
    assert p.client.send_room() == 0
    p.client.window_stalled()
    assert p.client.peer_window == 0 and p.client.send_room() == NO_WINDOW


def test_batches_carry_what_one_by_one_carries_and_count_alike() -> None:
    p = Pair()
    assert p.client.send_ips([b"\x45early", b"\x45too"], p.now) == ([], 0)  # before the call: dropped
    assert p.client.counters.ip_out_dropped == 2
    p.up()
    sent = [b"\x45one", b"\x45two", b"\x45three"]
    gre_packets, taken = p.client.send_ips(sent, p.now)
    assert len(gre_packets) == 3 and taken == sum(map(len, sent))
    assert p.client.counters.ip_out == 3 and p.client.counters.gre_out >= 3
    assert p.server.gre_received_batch(gre_packets, p.now) == sent
    assert p.server.counters.ip_in == 3
    # a link that refuses a packet: the batch goes on without it, the refusal is counted
    p.cl.up = False
    assert p.client.send_ips([b"\x45four"], p.now) == ([], 0)
    assert p.client.counters.ip_out_dropped == 3
