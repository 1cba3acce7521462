"""The client supervisor: ``sidecar up``. Keeps one session running, reconnecting with exponential
backoff and jitter; handles SIGTERM/SIGINT; owns the kill switch; publishes to the StatusBoard.

Rules: this file decides *when* to (re)connect and when to give up; :mod:`sidecar.tunnel` runs a
session and says why it ended. It never spins: every reconnect waits a backoff delay first.

Exit codes (``run`` returns them; the CLI exits with them):

- 0 - clean stop (SIGTERM/SIGINT): goodbye sent, namespace restored, kill switch removed;
- 1 - unexpected error, or a setup problem retrying cannot fix (no /dev/net/tun, no CAP_NET_ADMIN,
  ``nft`` missing or refusing the kill switch, the HTTP port taken); the kill switch, if it was
  installed, stays (fail closed) and a restart replaces it;
- 2 - bad configuration (reported by :mod:`sidecar.config` before anything starts);
- 3 - authentication failed ``max_auth_failures`` times in a row with bad credentials: retrying
  cannot help; the kill switch stays.

Backoff: the n-th consecutive failure waits ``uniform(d/2, d)`` with ``d = min(backoff_max,
backoff_initial * 2**n)`` ("equal jitter": never less than half the nominal delay, so a fleet of
sidecars spreads out but none hammers the server). The count resets after a session that stayed up
for ``STABLE_UP`` seconds (or ``backoff_max``, whichever is smaller).

Signals: the first SIGTERM/SIGINT asks the session for its goodbye (LCP Terminate-Request,
Call-Clear-Request, Stop-Control-Connection-Request) and ends it within 2 s; a second signal cancels
at once. The namespace is restored in both cases.
"""

from __future__ import annotations

import logging
import random
import signal
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import trio

from sidecar.kernel import firewall
from sidecar.kernel.control import ControlConnectError, resolve_ipv4
from sidecar.kernel.dns import RESOLV_CONF
from sidecar.state import State, StatusBoard
from sidecar.tunnel import SessionResult, SessionSetupError, run_session

log = logging.getLogger("sidecar.supervisor")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_AUTH = 3

STABLE_UP = 30.0  # seconds up after which the backoff starts over
BEAT_EVERY = 2.0


class Backoff:
    """Exponential backoff with equal jitter (see the module docstring)."""

    def __init__(self, initial: float, maximum: float, rng: random.Random, factor: float = 2.0) -> None:
        if not 0 < initial <= maximum:
            raise ValueError(f"backoff needs 0 < initial ({initial}) <= maximum ({maximum})")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.failures = 0
        self._rng = rng

    def nominal(self) -> float:
        """``d`` for the next delay, before jitter."""
        return min(self.maximum, self.initial * self.factor ** min(self.failures, 64))

    def next(self) -> float:
        d = self.nominal()
        self.failures += 1
        return self._rng.uniform(d / 2, d)

    def reset(self) -> None:
        self.failures = 0


SessionRunner = Callable[..., Awaitable[SessionResult]]


async def supervise(
    settings: Any,
    board: StatusBoard,
    stop: trio.Event,
    *,
    rng: random.Random | None = None,
    resolv_conf: Path = RESOLV_CONF,
    session: SessionRunner = run_session,
    session_kwargs: dict[str, Any] | None = None,
) -> int:
    """Run sessions until ``stop`` is set (exit 0) or giving up (3) or a fatal error (1)."""
    rng = rng if rng is not None else random.SystemRandom()
    backoff = Backoff(settings.backoff_initial, settings.backoff_max, rng)
    bad_credentials_in_a_row = 0
    kill_switch_on = False

    server_ip = await _resolve(settings, board, stop, backoff)
    if server_ip is None:
        board.set_state(State.STOPPED, "stopped before the server name resolved")
        return EXIT_OK
    backoff.reset()

    if settings.kill_switch:
        try:
            firewall.apply(_rules(settings, server_ip))
        except (firewall.FirewallError, ValueError) as exc:
            log.error("cannot install the kill switch: %s", exc)
            board.record_error(str(exc))
            board.set_state(State.FAILED, str(exc))
            return EXIT_ERROR
        kill_switch_on = True
        log.info(
            "kill switch on: only the tunnel, the server (%s) and allowed subnets are reachable", server_ip
        )
        board.add_event("kill switch on", str(server_ip))

    code: int | None = None  # None until decided: an exception or cancellation leaves it None
    first = True
    try:
        while not stop.is_set():
            if not first:
                board.record_reconnect(board.last_error or "")
            first = False
            board.begin_session()
            try:
                result = await session(
                    settings,
                    board,
                    server_ip=server_ip,
                    stop=stop,
                    resolv_conf=resolv_conf,
                    rng=rng,
                    **(session_kwargs or {}),
                )
            except SessionSetupError as exc:
                log.error("cannot start the tunnel: %s", exc)
                board.record_error(str(exc))
                code = EXIT_ERROR
                break
            if result.restore_failures:
                board.record_error("restore: " + "; ".join(result.restore_failures))
            if stop.is_set() or result.stopped:
                break
            board.record_error(result.reason)
            if result.bad_credentials:
                bad_credentials_in_a_row += 1
                log.error(
                    "session ended: %s (bad credentials, %d of %d allowed in a row)",
                    result.reason,
                    bad_credentials_in_a_row,
                    settings.max_auth_failures,
                )
                if bad_credentials_in_a_row >= settings.max_auth_failures:
                    log.error(
                        "giving up: the server rejected the user name/password %d times in a row; "
                        "fix PPTP_USER / PPTP_PASSWORD (or PPTP_PASSWORD_FILE)",
                        bad_credentials_in_a_row,
                    )
                    code = EXIT_AUTH
                    break
            else:
                if result.authenticated:
                    bad_credentials_in_a_row = 0
                log.warning("session ended: %s", result.reason)
            if result.was_up and result.up_for >= min(STABLE_UP, settings.backoff_max):
                backoff.reset()
            delay = backoff.next()
            log.info("reconnecting in %.1f s (attempt %d)", delay, backoff.failures)
            board.set_state(State.RECONNECTING, f"in {delay:.1f}s: {result.reason}")
            with trio.move_on_after(delay):
                await stop.wait()
        if code is None:
            code = EXIT_OK
    finally:
        clean = code == EXIT_OK or (code is None and stop.is_set())  # None + stop: a second signal
        if clean and kill_switch_on:
            try:
                firewall.remove()
                log.info("kill switch removed")
            except firewall.FirewallError as exc:
                log.error("could not remove the kill switch: %s", exc)
        elif kill_switch_on:
            log.warning("kill switch stays in place: nothing leaks until the sidecar is back")
    if code == EXIT_OK:
        board.set_state(State.STOPPED, "stopped")
    else:
        board.set_state(State.FAILED, board.last_error or f"exit {code}")
    return code


async def _resolve(
    settings: Any, board: StatusBoard, stop: trio.Event, backoff: Backoff
) -> IPv4Address | None:
    """The server's IPv4 address, retried with backoff; None if stopped first. Resolved once per
    process: with the kill switch on, DNS outside the tunnel is blocked afterwards."""
    while not stop.is_set():
        try:
            return await resolve_ipv4(settings.server)
        except ControlConnectError as exc:
            board.record_error(str(exc))
            delay = backoff.next()
            log.warning("%s; retrying in %.1f s", exc, delay)
            with trio.move_on_after(delay):
                await stop.wait()
    return None


def _rules(settings: Any, server_ip: IPv4Address) -> firewall.KillSwitchRules:
    http_port = None
    if settings.http is not None:
        host, port = settings.http
        if not host.startswith("127.") and host not in ("localhost", "::1"):
            http_port = port  # probes come from outside the namespace (kubelet)
    return firewall.KillSwitchRules(
        server=server_ip,
        interface=settings.interface,
        control_port=settings.port,
        allow_subnets=tuple(settings.allow_subnets),
        http_port=http_port,
    )


async def _signals(stop: trio.Event, cancel: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if not stop.is_set():
                log.info("%s: stopping (goodbye to the server, restore the namespace)", name)
                stop.set()
            else:
                log.warning("%s again: stopping now", name)
                cancel.cancel()
                return


async def _beat(board: StatusBoard) -> None:
    while True:
        board.beat()
        await trio.sleep(BEAT_EVERY)


async def main(settings: Any, board: StatusBoard, *, resolv_conf: Path = RESOLV_CONF) -> int:
    """Everything ``sidecar up`` runs: HTTP listener, signals, heartbeat, the supervisor loop."""
    stop = trio.Event()
    code = EXIT_ERROR
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_beat, board)
        nursery.start_soon(_signals, stop, nursery.cancel_scope)
        if settings.http is not None:
            from sidecar.observe.http import serve_http

            host, port = settings.http
            try:
                await nursery.start(serve_http, host, port, board)
            except OSError as exc:
                log.error("cannot listen on %s:%d for health/metrics: %s (change --http)", host, port, exc)
                nursery.cancel_scope.cancel()
                return EXIT_ERROR
        code = await supervise(settings, board, stop, resolv_conf=resolv_conf)
        nursery.cancel_scope.cancel()
    if nursery.cancel_scope.cancelled_caught and stop.is_set() and code == EXIT_ERROR:
        code = EXIT_OK  # a second signal: stopped at once, still a requested stop
    return code


def run(settings: Any) -> int:
    """Entry point of ``sidecar up`` (``settings``: :class:`sidecar.config.UpSettings`)."""
    board = StatusBoard(
        role="client",
        server=f"{settings.server}:{settings.port}",
        interface=settings.interface,
        echo_interval=settings.lcp_echo_interval,
    )
    try:
        return trio.run(main, settings, board)
    except KeyboardInterrupt:  # a signal before the handlers were installed
        return EXIT_OK
    except Exception:
        log.exception("unexpected error")
        return EXIT_ERROR
