"""Hostile peers against the real client (``sidecar up`` as a process in a namespace).

- A raw-TCP PPTP "server" (a thread in the server namespace) that sends oversized, mis-sized or
  truncated control messages, or a message that never completes: the client ends the session with
  a stated reason, never hangs, and reconnects with backoff (these errors are not bad credentials,
  so it never gives up).
- The embedded server made hostile by a subclass of its PPP link (``tests/netns/patched_sidecar.py``):
  it Naks LCP or IPCP forever, or fails the MS-CHAPv2 authenticator check. The client refuses with
  the reason and backs off.
- GRE from the server's address, injected with a raw socket while a real tunnel is up: a flood
  with wrong call IDs, sequence numbers far ahead, replayed packets. All dropped and counted, the
  tunnel keeps working, and the client's RSS stays flat (a retained packet would show: each flood
  carries more bytes than the bound).

The PPTP replies are built with scapy's PPTP layer, independently of our encoder.
"""

from __future__ import annotations

import random
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from scapy.layers.pptp import PPTPStartControlConnectionReply

from sidecar.proto.gre import encode_packet
from tests.netns import faultlib as fl
from tests.netns.serve_helpers import SERVER_TUN_IP, Star, star, write_secrets

USERS = [("alice", "*", "alice secret", "*")]
SCCRQ_LENGTH = 156
SCCRP = bytes(PPTPStartControlConnectionReply(framing_capabilities=3, bearer_capabilities=3))
RSS_BOUND_KB = 3 * 1024  # every flood below carries > 10 MB: a leak of the packets would exceed this


def _answer_oversized(conn: socket.socket) -> None:
    fl.read_exactly(conn, SCCRQ_LENGTH)
    conn.sendall(b"\xff\xff\x00\x01\x1a\x2b\x3c\x4d" + bytes(512))  # Length 65535
    time.sleep(5)


def _answer_missized(conn: socket.socket) -> None:
    fl.read_exactly(conn, SCCRQ_LENGTH)
    conn.sendall(struct.pack("!H", 200) + SCCRP[2:] + bytes(44))  # an SCCRP that says 200 bytes
    time.sleep(5)


def _answer_truncated(conn: socket.socket) -> None:
    fl.read_exactly(conn, SCCRQ_LENGTH)
    conn.sendall(SCCRP[:100])
    conn.close()


def _answer_never_complete(conn: socket.socket) -> None:
    fl.read_exactly(conn, SCCRQ_LENGTH)
    conn.sendall(SCCRP[:100])  # ... and the other 56 bytes never come
    time.sleep(20)


@pytest.fixture
def one() -> Iterator[Star]:
    with star(1) as topo:
        yield topo


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        (_answer_oversized, "PPTP Length field says 65535 bytes"),
        (_answer_missized, "Start-Control-Connection-Reply: Length field says 200 bytes"),
        (_answer_truncated, "peer closed the TCP control connection"),
    ],
    ids=["oversized", "missized", "truncated"],
)
def test_bad_control_message_ends_session_with_reason_and_backoff(
    one: Star, tmp_path: Path, behaviour: Callable[[socket.socket], None], reason: str
) -> None:
    hostile = fl.HostileControl(one.server, one.server_ips[0], behaviour)
    client = fl.start_client(one.clients[0], tmp_path, server=one.server_ips[0], user="alice",
                             password="alice secret")  # fmt: skip
    try:
        fl.wait_until(lambda: len(hostile.accepted) >= 4, 10, "four connection attempts")
        text = client.text()
        assert text.count("session ended: control connection closed: ") >= 3, text[-3000:]
        assert text.count(reason) >= 3, text[-3000:]
        status = fl.status_of(client)
        assert reason in (status.get("last_error") or ""), status.get("last_error")
        assert status["state"] != "up" and client.popen.poll() is None  # retrying, not exited
        # backoff: every wait in the documented range, and the attempts are spaced by at least it
        delays = fl.backoff_delays(client)
        fl.check_backoff(delays, 0.2, 1.0)
        gaps = [b - a for a, b in zip(hostile.accepted, hostile.accepted[1:], strict=False)]
        for (_, delay), gap in zip(delays, gaps, strict=False):
            assert gap >= delay - 0.06, (delays, gaps)
    finally:
        code = client.stop()
        hostile.close()
    assert code == 0


@pytest.mark.slow
def test_control_message_that_never_completes_times_out(one: Star, tmp_path: Path) -> None:
    hostile = fl.HostileControl(one.server, one.server_ips[0], _answer_never_complete)
    client = fl.start_client(one.clients[0], tmp_path, server=one.server_ips[0], user="alice",
                             password="alice secret", args=["--connect-timeout", "1"])  # fmt: skip
    try:
        fl.wait_until(lambda: hostile.accepted, 10, "a connection")
        ended = client.wait_line("session ended:", hostile.accepted[0], 10)
        # the call timeout is max(5 s, --connect-timeout): the client waits 5 s for the rest, no longer
        assert 4.9 <= ended - hostile.accepted[0] <= 6.5, ended - hostile.accepted[0]
        assert "no Start-Control-Connection-Reply within 5 s" in client.text()
        fl.wait_until(lambda: len(hostile.accepted) >= 2, 3, "a second attempt after the backoff")
        assert client.popen.poll() is None
    finally:
        code = client.stop()
        hostile.close()
    assert code == 0


@pytest.mark.parametrize(
    ("patch", "reason"),
    [
        (
            "lcp_nak_forever",
            "LCP: the peer refused our Configure-Request 11 times; negotiation does not converge",
        ),
        (
            "ipcp_nak_forever",
            "IPCP: the peer refused our Configure-Request 11 times; negotiation does not converge",
        ),
        ("bad_authenticator", "the server could not prove it knows the password"),
    ],
)
def test_hostile_ppp_server_is_refused_with_reason(
    one: Star, tmp_path: Path, patch: str, reason: str
) -> None:
    secrets = write_secrets(tmp_path / "chap-secrets", USERS)
    server = fl.start_server(one.server, tmp_path, secrets=secrets, patches=[patch])
    # --max-auth-failures 1: a server that cannot prove it knows the password is not a reason to
    # give up on our credentials - the client backs off and tries again, it does not exit 3
    client = fl.start_client(one.clients[0], tmp_path, server=one.server_ips[0], user="alice",
                             password="alice secret", args=["--max-auth-failures", "1"])  # fmt: skip
    try:
        fl.wait_until(lambda: client.text().count("session ended:") >= 3, 10, "three refusals")
        text = client.text()
        assert f"session ended: link down: {reason}" in text or reason in text, text[-3000:]
        status = fl.status_of(client)
        assert reason in (status.get("last_error") or ""), status
        assert "tunnel up" not in text and status["state"] != "up"
        assert not [e for e in status["timeline"] if e["phase"] == "ipcp up"]
        assert client.popen.poll() is None
        fl.check_backoff(fl.backoff_delays(client), 0.2, 1.0)
        if patch == "bad_authenticator":
            assert status["auth_failures"] >= 3
            assert "authenticated with" not in text and "MPPE on" not in text
        # the server saw the client hang up each time (it never tore the link down itself)
        gone = [line for line in server.text().splitlines() if "gone after" in line]
        assert len(gone) >= 3
        assert all("by the client" in line or "the client closed the link" in line for line in gone), gone
    finally:
        code = client.stop()
        server.stop()
    assert code == 0


# -- GRE injected into a live tunnel ------------------------------------------------------------------------
class Tunnel:
    def __init__(self, topo: Star, server: fl.Sidecar, client: fl.Sidecar) -> None:
        self.topo, self.server, self.client = topo, server, client
        self.client_ip = topo.client_ips[0]
        self.injector = fl.GreInjector(topo.server, topo.server_ips[0])
        self.server_call_id, self.client_call_id = fl.call_ids(server)

    def counters(self) -> dict[str, int]:
        return dict(self.client.status()["counters"])


@pytest.fixture(scope="module")
def tunnel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tunnel]:
    tmp = tmp_path_factory.mktemp("hostile-gre")
    with star(1) as topo:
        secrets = write_secrets(tmp / "chap-secrets", USERS)
        server = fl.start_server(topo.server, tmp, secrets=secrets)
        client = fl.start_client(topo.clients[0], tmp, server=topo.server_ips[0], user="alice",
                                 password="alice secret")  # fmt: skip
        try:
            fl.wait_up(client)
            t = Tunnel(topo, server, client)
            assert fl.ping(topo.clients[0], SERVER_TUN_IP, 3) == 3
            yield t
            t.injector.close()
        finally:
            client.stop()
            server.stop()


def _settled(t: Tunnel, key: str, at_least: int, base: dict[str, int]) -> dict[str, int]:
    """Counters once ``key`` grew by ``at_least`` and stopped moving (published once a second)."""
    fl.wait_until(lambda: t.counters().get(key, 0) - base.get(key, 0) >= at_least, 8, f"{key} +{at_least}")
    time.sleep(1.1)
    return t.counters()


def _delta(after: dict[str, int], before: dict[str, int], key: str) -> int:
    return after.get(key, 0) - before.get(key, 0)


def _flood_and_measure(
    t: Tunnel, packets: list[bytes], key: str
) -> tuple[dict[str, int], dict[str, int], int]:
    time.sleep(1.1)
    before = t.counters()
    rss_before = t.client.rss_kb()
    sent = t.injector.send(packets, t.client_ip)
    assert sent >= len(packets) * 0.95
    after = _settled(t, key, int(len(packets) * 0.8), before)
    rss_growth = t.client.rss_kb() - rss_before
    return before, after, rss_growth


def test_gre_flood_with_wrong_call_ids_is_dropped_counted_and_memory_flat(tunnel: Tunnel) -> None:
    t = tunnel
    rng = random.Random(7)
    payload = b"\xff\x03\x00\x21" + bytes(196)
    packets = [
        encode_packet(
            (t.client_call_id + rng.randrange(1, 0x10000)) & 0xFFFF, payload, rng.getrandbits(32), None
        )
        for _ in range(60_000)
    ]
    before, after, growth = _flood_and_measure(t, packets, "gre_bad_call_id")
    received = _delta(after, before, "gresock_rx_packets")
    assert _delta(after, before, "gre_bad_call_id") == received >= len(packets) * 0.8
    assert _delta(after, before, "packets_in") == 0 and _delta(after, before, "gre_rx_packets") < 50
    assert growth < RSS_BOUND_KB, f"client RSS grew {growth} kB"
    assert t.client.status()["state"] == "up"
    assert fl.ping(t.topo.clients[0], SERVER_TUN_IP, 3) == 3


def test_sequence_numbers_far_ahead_are_dropped_and_memory_flat(tunnel: Tunnel) -> None:
    t = tunnel
    rng = random.Random(8)
    payload = b"\xff\x03\x00\xfd" + bytes(196)  # MPPE-looking, with the right call ID
    # far ahead of anything the server sent (it started at 0 a few seconds ago), and scattered, as a
    # flood would be: never four in a row close to each other (that would be a genuine jump)
    packets = [encode_packet(t.client_call_id, payload, rng.randrange(1 << 20, 1 << 30), None)
               for _ in range(60_000)]  # fmt: skip
    before, after, growth = _flood_and_measure(t, packets, "reorder_over_window")
    received = _delta(after, before, "gresock_rx_packets")
    assert _delta(after, before, "reorder_over_window") >= received - 20 >= len(packets) * 0.8
    assert _delta(after, before, "packets_in") == 0 and _delta(after, before, "reorder_buffered") < 20
    assert growth < RSS_BOUND_KB, f"client RSS grew {growth} kB"
    assert t.client.status()["state"] == "up"
    assert fl.ping(t.topo.clients[0], SERVER_TUN_IP, 3) == 3


def test_replayed_packets_are_dropped_as_duplicates(tunnel: Tunnel) -> None:
    t = tunnel
    uplink = fl.ifname_of(t.topo.server, t.topo.server_ips[0])
    sniffer = fl.Sniffer(t.topo.server, uplink)
    try:
        assert fl.ping(t.topo.clients[0], SERVER_TUN_IP, 10, interval=0.05) == 10
        time.sleep(0.2)
    finally:
        captured = sniffer.stop()
    # the server's data packets to the client: GRE with a sequence number and a payload (not ack-only)
    data = []
    for c in captured:
        gre = fl.gre_payload(c.ip)
        if c.outgoing and gre is not None and gre[0] & 0x10 and struct.unpack("!H", gre[4:6])[0] > 0:
            data.append(gre)
    assert len(data) >= 10, f"captured {len(data)} data packets"
    time.sleep(1.1)
    before = t.counters()
    replays = data * 5
    t.injector.send(replays, t.client_ip)
    after = _settled(t, "reorder_duplicate", len(replays) - 5, before)
    dropped = _delta(after, before, "reorder_duplicate") + _delta(after, before, "reorder_late")
    assert dropped >= len(replays) - 5  # (the newest may still sit in the window: none here)
    assert _delta(after, before, "packets_in") == 0, "a replayed packet reached the TUN device"
    assert fl.ping(t.topo.clients[0], SERVER_TUN_IP, 3) == 3


# Four spoofed far-ahead packets with the call ID made the reorder queue jump; the jump now stays
# unconfirmed until PPP/MPPE accepts a packet after it, and the old stream takes the queue back.
def test_four_spoofed_far_ahead_packets_do_not_stop_the_tunnel(tunnel: Tunnel) -> None:
    t = tunnel
    assert fl.ping(t.topo.clients[0], SERVER_TUN_IP, 2) == 2
    payload = b"\xff\x03\x00\xfd" + bytes(60)  # garbage under MPPE: it would never decrypt
    t.injector.send([encode_packet(t.client_call_id, payload, 1_000_000 + i, None) for i in range(4)],
                    t.client_ip)  # fmt: skip
    time.sleep(0.2)
    assert fl.ping(t.topo.clients[0], SERVER_TUN_IP, 3) == 3
