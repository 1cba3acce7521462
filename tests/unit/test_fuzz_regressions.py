"""Bugs found by fuzzing (minimal inputs), the memory bound under a far-ahead flood, and checks that
the fuzz harness itself catches what it must (a harness that swallows bugs would report zero).

Open bugs are ``xfail(strict=True)``: the fix turns them XPASS, which fails, so whoever fixes one
removes its marker and its entry in ``fuzz/known.py``.
"""

from __future__ import annotations

import random
import tracemalloc
from pathlib import Path

import pytest

from fuzz import t_gre, t_pptp
from fuzz.common import InvariantError
from fuzz.known import KNOWN_BUGS, match
from fuzz.targets import TARGETS, load
from sidecar.proto.gre import GreSession, encode_packet
from sidecar.proto.ppp.auth import AuthFailure, AuthMethod, make_authenticator, make_peer
from sidecar.proto.ppp.frame import decode_frame, encode_frame
from sidecar.proto.pptp import (
    CallCleared,
    CallDisconnectNotify,
    ControlConfig,
    Role,
    StartControlConnectionRequest,
    decode_message,
    encode_message,
)
from sidecar.proto.reorder import ReorderQueue
from sidecar.proto.secret import Secret

CORPUS = Path(__file__).resolve().parents[2] / "fuzz" / "corpus"

# -- open bugs (none right now: add them here as strict xfail, with an entry in fuzz/known.py) --------


def test_known_bugs_have_regression_tests() -> None:
    names = {name for name in globals() if name.startswith("test_")}
    for bug in KNOWN_BUGS:
        assert f"test_{bug.key}" in names, bug


# -- fixed bugs: plain regression tests ----------------------------------------------------------------


def test_ppp_protocol_00ff_compressed() -> None:
    """Found by the fuzzer, fixed in 0cc2890: protocol 0x00FF compressed to one 0xFF octet under
    ACFC read back as the Address field."""
    wire = encode_frame(0x00FF, b"\x03\x00", acfc=True, pfc=True)
    protocol, info = decode_frame(wire)
    assert (protocol, bytes(info)) == (0x00FF, b"\x03\x00")


def test_pptp_string_round_trip() -> None:
    """Found by the fuzzer, fixed in c2108a6: a string field of invalid UTF-8 decoded to U+FFFD (3
    bytes each) and no longer fit its field when encoded again."""
    wire = t_pptp.raw_message(
        StartControlConnectionRequest,
        b"\x01\x00" + bytes(12) + b"\xff" * 64,  # version 1.0, zero numbers, host name: 64 bytes of 0xFF
        call_id=None,
        peer_call_id=None,
    )
    msg = decode_message(wire)
    assert decode_message(encode_message(msg)) == msg


@pytest.mark.parametrize("method", [AuthMethod.CHAP_MD5, AuthMethod.MSCHAP_V1, AuthMethod.MSCHAP_V2])
def test_chap_authenticator_verdict_changes(method: AuthMethod) -> None:
    """Found by the fuzzer, fixed in c2108a6: a CHAP authenticator that had failed on its timer
    turned a late Response into AuthSuccess and sent Success."""
    pw = Secret("pw")
    auth = make_authenticator(
        method, lambda name: pw if name == "alice" else None, "srv", random.Random(1), max_transmits=2
    )
    peer = make_peer(method, "alice", pw, random.Random(2), max_transmits=2)
    (challenge,) = auth.start(0.0)
    response = peer.receive(challenge, 0.0)
    auth.timeout(3.0)
    auth.timeout(6.0)  # two Challenges unanswered: the authenticator gives up
    failure = auth.result
    assert isinstance(failure, AuthFailure)
    sent = [p for r in response for p in auth.receive(r, 6.5)]  # the Response comes late
    assert auth.result is failure
    assert all(p[0] != 3 for p in sent), "a Success packet after reporting failure"


def test_pptp_event_text_is_utf8() -> None:
    """Found by the fuzzer, fixed in 24638c9: undecodable peer bytes (kept as lone surrogates by the
    codec) reached the CallCleared reason, which then could not be encoded as UTF-8."""
    pipe = t_pptp._Pipe(Role.CLIENT, ControlConfig(), seed=3)
    pipe.prelude(3, refuse=False)  # control connection and call established
    conn = pipe.conn
    assert conn.peer_call_id is not None
    # the server's Call-Disconnect-Notify: result 3 (admin shutdown), call statistics b"\xffabc"
    body = b"\x00\x00" + b"\x03\x00" + b"\x00\x00" + b"\xffabc"
    cdn = t_pptp.raw_message(CallDisconnectNotify, body, call_id=conn.peer_call_id, peer_call_id=None)
    events = conn.receive_data(cdn, 1.0)
    assert any(isinstance(ev, CallCleared) for ev in events)
    for ev in events:
        str(ev).encode("utf-8")


# -- memory: a flood of far-ahead sequence numbers ----------------------------------------------------


@pytest.mark.parametrize("window", [0, 1, 30, 64])
def test_far_ahead_flood_keeps_reorder_buffer_bounded(window: int) -> None:
    assert t_gre.far_ahead_flood(window, 5000, seed=window) <= window


def test_far_ahead_flood_memory_does_not_grow() -> None:
    session = GreSession(0x1234, 0x4321, reorder_window=30, reorder_timeout=10.0)
    rng = random.Random(5)
    seq = 0

    def flood(n: int) -> None:
        nonlocal seq
        for i in range(n):
            seq = (seq + rng.choice((31, 97, 1 << 20, rng.getrandbits(32)))) & 0xFFFFFFFF
            session.receive(encode_packet(0x1234, b"\x21" + bytes(100), seq, None), i * 1e-4)

    flood(2000)  # warm up: the buffer and the lost-range history reach their sizes
    tracemalloc.start()
    try:
        base = tracemalloc.take_snapshot()
        flood(20000)
        grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(base, "filename"))
    finally:
        tracemalloc.stop()
    assert len(session.reorder) <= 30
    assert grown < 64 * 1024, f"memory grew by {grown} bytes over 20000 far-ahead packets"


def test_reorder_queue_random_jumps_stay_within_window() -> None:
    rng = random.Random(9)
    q: ReorderQueue[int] = ReorderQueue(8, 0.05)
    seq = 0
    for i in range(20000):
        seq = (seq + rng.choice((1, 2, 9, 17, 40, 1 << 16, -3, rng.getrandbits(32)))) & 0xFFFFFFFF
        q.push(seq, i, i * 1e-3)
        assert len(q) <= 8


# -- the harness catches what it must -----------------------------------------------------------------


def test_harness_reports_an_exception_escaping_a_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: GreSession, packet: object, now: float) -> list[bytes]:
        raise IndexError("planted")

    monkeypatch.setattr(GreSession, "receive", broken)
    seed = next((CORPUS / "gre_session").iterdir()).read_bytes()
    with pytest.raises(IndexError, match="planted"):
        load("gre_session")(seed)


def test_harness_reports_a_non_protocol_error_from_a_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(buf: object) -> object:
        raise ValueError("planted")

    monkeypatch.setattr(t_pptp, "decode_message", broken)
    with pytest.raises(ValueError, match="planted"):
        t_pptp.target_pptp_decode(encode_message(StartControlConnectionRequest()))


def test_harness_reports_an_infinite_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    from sidecar.proto.pptp import ControlConnection

    monkeypatch.setattr(ControlConnection, "next_deadline", lambda self: float("inf"))
    with pytest.raises(InvariantError, match="not finite"):
        t_pptp.target_pptp_control(b"\x01\x00\x00")


def test_harness_reports_an_unbounded_reorder_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    # a queue that keeps everything: the harness must notice it holds more than the window
    def keep_all(self: ReorderQueue[bytes], seq: int, item: bytes, now: float) -> list[bytes]:
        self._buf[seq] = item
        self.counters.buffered += 1
        return []

    monkeypatch.setattr(ReorderQueue, "push", keep_all)
    ops = b"".join(b"\x02\x01" + (i * 1000).to_bytes(4, "big") + b"\x01\x21" for i in range(1, 10))
    with pytest.raises(InvariantError, match="reorder buffer holds"):
        t_gre.target_gre_session(bytes((4, 0)) + bytes(8) + ops)


def test_known_bug_matching() -> None:
    assert (
        match(InvariantError("verdict changed after it was given (PAP authenticator): AuthFailure(x)"))
        is None
    )
    assert match(ValueError("frame round trip ... 0x00ff")) is None


# -- every seed runs clean ----------------------------------------------------------------------------


@pytest.mark.parametrize("target", list(TARGETS))
def test_seed_corpus_runs_clean(target: str) -> None:
    files = sorted((CORPUS / target).iterdir())
    assert files, f"no seeds in fuzz/corpus/{target}: run python -m fuzz.make_corpus"
    fn = load(target)
    for f in files:
        try:
            fn(f.read_bytes())
        except Exception as exc:
            if match(exc) is None:
                raise AssertionError(f"seed {f.name} of {target}: {exc!r}") from exc
