"""The supervisor's decisions, with sessions stood in and trio's mock clock: backoff bounds and jitter,
never spinning, giving up on bad credentials (exit 3), stop (exit 0), setup errors (exit 1)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from sidecar.config import UpSettings
from sidecar.proto.secret import Secret
from sidecar.state import State, StatusBoard
from sidecar.supervisor import EXIT_AUTH, EXIT_ERROR, EXIT_OK, Backoff, supervise
from sidecar.tunnel import SessionResult, SessionSetupError


def settings(**kw: Any) -> UpSettings:
    base: dict[str, Any] = dict(
        server="192.0.2.10", user="alice", password=Secret("pw"), kill_switch=False, http=None,
        backoff_initial=1.0, backoff_max=16.0, max_auth_failures=3,
    )  # fmt: skip
    base.update(kw)
    return UpSettings(**base)


# -- Backoff -----------------------------------------------------------------------------------------
def test_backoff_doubles_to_the_cap_and_jitters_within_half_to_full() -> None:
    b = Backoff(1.0, 16.0, random.Random(1))
    nominals = []
    for _ in range(8):
        d = b.nominal()
        delay = b.next()
        assert d / 2 <= delay <= d
        nominals.append(d)
    assert nominals == [1, 2, 4, 8, 16, 16, 16, 16]
    b.reset()
    assert b.nominal() == 1.0


def test_backoff_jitter_spreads_over_the_whole_band() -> None:
    rng = random.Random(2)
    samples = []
    for _ in range(400):
        b = Backoff(2.0, 60.0, rng)
        b.failures = 3  # nominal 16
        samples.append(b.next())
    assert min(samples) >= 8.0 and max(samples) <= 16.0
    assert min(samples) < 8.5 and max(samples) > 15.5  # really random, not a constant


@pytest.mark.parametrize(("initial", "maximum"), [(0.0, 1.0), (-1.0, 5.0), (10.0, 5.0)])
def test_backoff_refuses_nonsense(initial: float, maximum: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(initial, maximum, random.Random())


def test_backoff_never_overflows() -> None:
    b = Backoff(0.5, 30.0, random.Random(3))
    b.failures = 10_000
    assert 15.0 <= b.next() <= 30.0


# -- supervise with stand-in sessions --------------------------------------------------------------
class Sessions:
    """Plays back a script of results; records when each session started (mock clock)."""

    def __init__(self, script: Callable[[int], SessionResult | BaseException]) -> None:
        self.script = script
        self.starts: list[float] = []

    async def __call__(self, settings: Any, board: StatusBoard, **kw: Any) -> SessionResult:
        self.starts.append(trio.current_time())
        outcome = self.script(len(self.starts) - 1)
        await trio.sleep(0.5)  # a session takes a little while
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def drive(s: UpSettings, sessions: Sessions, *, stop_after: float | None = None) -> tuple[int, StatusBoard]:
    board = StatusBoard(clock=lambda: 0.0)

    async def main() -> int:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            if stop_after is not None:

                async def stopper() -> None:
                    await trio.sleep(stop_after)
                    stop.set()

                nursery.start_soon(stopper)
            code = await supervise(s, board, stop, rng=random.Random(5), session=sessions)
            nursery.cancel_scope.cancel()
        return code

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0)), board


BAD = SessionResult("link down: authentication failed", bad_credentials=True)
GONE = SessionResult("control connection closed: peer went away", authenticated=True)


def test_gives_up_after_max_bad_credentials_with_exit_3() -> None:
    sessions = Sessions(lambda n: BAD)
    code, board = drive(settings(max_auth_failures=3), sessions)
    assert code == EXIT_AUTH
    assert len(sessions.starts) == 3
    assert board.state is State.FAILED and "authentication" in (board.last_error or "")


def test_a_successful_login_resets_the_bad_credentials_count() -> None:
    script = [BAD, BAD, GONE, BAD, BAD, BAD]
    sessions = Sessions(lambda n: script[n])
    code, _ = drive(settings(max_auth_failures=3), sessions)
    assert code == EXIT_AUTH and len(sessions.starts) == 6


def test_reconnects_wait_growing_jittered_delays_and_never_spin() -> None:
    sessions = Sessions(lambda n: GONE)
    code, board = drive(settings(backoff_initial=1.0, backoff_max=8.0), sessions, stop_after=60.0)
    assert code == EXIT_OK
    gaps = [b - a - 0.5 for a, b in zip(sessions.starts, sessions.starts[1:], strict=False)]
    nominal = [min(8.0, 2.0**i) for i in range(len(gaps))]
    for gap, d in zip(gaps, nominal, strict=True):
        assert d / 2 - 1e-9 <= gap <= d + 1e-9
    assert len(sessions.starts) < 15  # 60 s at >= 4 s per attempt once capped: no spinning
    assert board.reconnects == len(sessions.starts) - 1


def test_a_long_stable_session_resets_the_backoff() -> None:
    stable = SessionResult("peer went away", authenticated=True, was_up=True, up_for=3600.0)
    script = [GONE, GONE, GONE, stable, GONE]
    sessions = Sessions(lambda n: script[min(n, 4)])
    drive(settings(backoff_initial=1.0, backoff_max=64.0), sessions, stop_after=40.0)
    gap_after_stable = sessions.starts[4] - sessions.starts[3] - 0.5
    assert gap_after_stable <= 1.0  # back to the initial delay, not 16 s


def test_stop_during_backoff_exits_0_at_once() -> None:
    sessions = Sessions(lambda n: GONE)
    code, board = drive(settings(backoff_initial=50.0, backoff_max=100.0), sessions, stop_after=5.0)
    assert code == EXIT_OK and len(sessions.starts) == 1
    assert board.state is State.STOPPED


def test_setup_error_exits_1() -> None:
    sessions = Sessions(lambda n: SessionSetupError("cannot create TUN device: no /dev/net/tun"))
    code, board = drive(settings(), sessions)
    assert code == EXIT_ERROR and board.state is State.FAILED
    assert "/dev/net/tun" in (board.last_error or "")


def test_unresolvable_server_is_retried_with_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    # no real DNS query leaves this machine: the resolver is stood in
    from ipaddress import IPv4Address

    from sidecar import supervisor
    from sidecar.kernel.control import ControlConnectError

    attempts: list[float] = []

    async def resolve(host: str) -> IPv4Address:
        attempts.append(trio.current_time())
        if len(attempts) < 3:
            raise ControlConnectError(f"cannot resolve PPTP server {host!r}: no answer")
        return IPv4Address("192.0.2.10")

    monkeypatch.setattr(supervisor, "resolve_ipv4", resolve)
    sessions = Sessions(lambda n: GONE)
    code, _ = drive(settings(server="vpn.example.net"), sessions, stop_after=10.0)
    assert code == EXIT_OK and len(attempts) == 3
    assert attempts[1] - attempts[0] >= 0.5 and attempts[2] - attempts[1] >= 1.0  # backoff, no spin
    assert sessions.starts and sessions.starts[0] >= attempts[2]
