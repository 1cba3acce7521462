"""sidecar.state.StatusBoard: transitions, verdicts, counters across sessions, JSON snapshot."""

from __future__ import annotations

import json
from ipaddress import IPv4Address

from sidecar.state import TIMELINE_MAX, State, StatusBoard


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make(clock: Clock | None = None, **kw: object) -> tuple[StatusBoard, Clock]:
    clock = clock or Clock()
    return StatusBoard(
        server="vpn.example", interface="pptp0", clock=clock, wall_clock=lambda: 1.7e9, **kw
    ), clock  # type: ignore[arg-type]


def test_initial_snapshot_is_json_and_starting() -> None:
    board, _ = make()
    snap = board.snapshot()
    assert json.loads(json.dumps(snap)) == snap
    assert snap["state"] == "starting" and snap["alive"] is True and snap["ready"] is False
    assert snap["counters"] == {} and snap["timeline"] == [] and snap["server"] == "vpn.example"


def test_link_up_records_addresses_and_makes_ready() -> None:
    board, clock = make(echo_interval=10.0)
    board.set_state(State.CONNECTING, "tcp")
    clock.t += 1.5
    board.add_event("control connected", "vendor x")
    board.link_up(
        local_ip=IPv4Address("10.0.0.2"),
        peer_ip=IPv4Address("10.0.0.1"),
        dns=[IPv4Address("10.0.0.53")],
        mtu=1400,
        encryption="mppe-128 stateless",
        auth_method="mschap-v2",
    )
    snap = board.snapshot()
    assert snap["state"] == "up" and snap["ready"] is True
    assert (snap["local_ip"], snap["peer_ip"], snap["dns"], snap["mtu"]) == (
        "10.0.0.2",
        "10.0.0.1",
        ["10.0.0.53"],
        1400,
    )
    assert snap["encryption"] == "mppe-128 stateless" and snap["up_since"] == 1.7e9
    assert [(e["phase"], e["detail"]) for e in snap["timeline"]] == [
        ("connecting", "tcp"),
        ("control connected", "vendor x"),
        ("up", "10.0.0.2 <-> 10.0.0.1"),
    ]
    assert snap["timeline"][1]["at_s"] == 1.5


def test_readiness_needs_a_recent_echo() -> None:
    board, clock = make(echo_interval=10.0)
    board.link_up(local_ip="10.0.0.2", peer_ip="10.0.0.1")
    clock.t += 29.9
    assert board.ready() == (True, "ok")
    clock.t += 0.2
    ok, why = board.ready()
    assert not ok and why == "last LCP echo reply 30.1s ago (limit 30s)"
    board.record_echo(0.012)
    assert board.ready()[0] and board.snapshot()["echo_rtt_s"] == 0.012
    board.set_state(State.RECONNECTING, "lost")
    assert board.ready() == (False, "tunnel is reconnecting") and board.snapshot()["up_since"] is None


def test_liveness_follows_heartbeat_and_failure() -> None:
    board, clock = make(heartbeat_timeout=30.0)
    clock.t += 31
    ok, why = board.alive()
    assert not ok and "heartbeat is 31.0s old" in why
    board.beat()
    assert board.alive() == (True, "ok")
    board.record_auth_failure("bad password")
    board.set_state(State.FAILED, "too many auth failures")
    assert board.alive() == (False, "failed: bad password")
    assert board.snapshot()["auth_failures"] == 1


def test_counters_accumulate_across_sessions() -> None:
    board, _ = make()
    board.begin_session()
    board.publish_counters({"bytes_in": 100, "gre_rx": 5})
    board.publish_counters({"bytes_in": 150, "gre_rx": 7})  # absolute values replace
    assert board.counters == {"bytes_in": 150, "gre_rx": 7}
    board.record_reconnect("echo timeout")
    board.begin_session()
    assert board.counters == {"bytes_in": 150, "gre_rx": 7}
    board.publish_counters({"bytes_in": 10, "reorder_late": 1})
    assert board.counters == {"bytes_in": 160, "gre_rx": 7, "reorder_late": 1}
    snap = board.snapshot()
    assert snap["reconnects"] == 1 and snap["sessions"] == 2 and snap["state"] == "reconnecting"


def test_begin_session_clears_link_facts() -> None:
    board, _ = make()
    board.link_up(local_ip="10.0.0.2", peer_ip="10.0.0.1", dns=["1.1.1.1"], mtu=1400, encryption="none")
    board.record_echo(0.1)
    board.begin_session()
    snap = board.snapshot()
    assert (snap["local_ip"], snap["dns"], snap["mtu"], snap["encryption"], snap["echo_rtt_s"]) == (
        None,
        [],
        None,
        None,
        None,
    )


def test_timeline_is_bounded() -> None:
    board, _ = make()
    for i in range(TIMELINE_MAX + 50):
        board.add_event("e", str(i))
    timeline = board.snapshot()["timeline"]
    assert len(timeline) == TIMELINE_MAX and timeline[-1]["detail"] == str(TIMELINE_MAX + 49)
