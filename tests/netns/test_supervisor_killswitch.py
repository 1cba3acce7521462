"""The supervisor in a namespace against the stand-in server: the kill switch goes in before the first
tunnel, stays through a reconnect (the gap leaks nothing), goes away on a clean stop and stays after
giving up on bad credentials (fail closed)."""

from __future__ import annotations

import random
import socket
from pathlib import Path
from typing import Any

import pytest
import trio

from sidecar.kernel import firewall
from sidecar.state import State, StatusBoard
from sidecar.supervisor import EXIT_AUTH, EXIT_OK, supervise
from sidecar.tunnel import SessionResult, run_session
from tests.netns import nslib
from tests.netns.standin_server import StandInServer
from tests.netns.test_tunnel import settings_for, standin_stack, wait_state


def test_kill_switch_spans_reconnects_and_goes_on_clean_stop(hosts: nslib.TwoHosts, tmp_path: Path) -> None:
    h = hosts
    server = StandInServer(h)
    settings = settings_for(h, kill_switch=True, dns=False)
    board = StatusBoard()
    seen: dict[str, Any] = {"installed_at_start": []}

    async def session(*args: Any, **kw: Any) -> SessionResult:
        seen["installed_at_start"].append(firewall.is_installed())
        return await run_session(*args, **kw)

    async def main() -> int:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            codes: list[int] = []

            async def run() -> None:
                codes.append(
                    await supervise(
                        settings,
                        board,
                        stop,
                        rng=random.Random(1),
                        session=session,
                        session_kwargs={"make_stack": standin_stack()},
                    )
                )

            nursery.start_soon(run)
            await wait_state(board, State.UP)
            await server.hang_up()
            await wait_state(board, State.RECONNECTING)
            # between sessions: no tunnel, the kill switch holds - an app cannot reach the outside
            assert firewall.is_installed()
            app = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with pytest.raises(OSError):
                app.sendto(b"leak", (str(h.outside_ip), 53))
            app.close()
            await wait_state(board, State.UP, timeout=5)
            stop.set()
            with trio.fail_after(3):
                while not codes:
                    await trio.sleep(0.01)
            seen["installed_after"] = firewall.is_installed()
            nursery.cancel_scope.cancel()
        return codes[0]

    try:
        code = nslib_run(h, main)
    finally:
        server.close()
    assert code == EXIT_OK
    assert seen["installed_at_start"][:2] == [True, True]  # before the first tunnel and the second
    assert seen["installed_after"] is False
    assert board.reconnects >= 1 and server.sessions >= 2


def test_kill_switch_stays_after_giving_up_on_bad_credentials(hosts: nslib.TwoHosts) -> None:
    h = hosts
    server = StandInServer(h)
    settings = settings_for(h, kill_switch=True, dns=False, max_auth_failures=2)
    board = StatusBoard()

    async def main() -> tuple[int, bool]:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            with trio.fail_after(5):
                code = await supervise(
                    settings,
                    board,
                    trio.Event(),
                    rng=random.Random(1),
                    session_kwargs={"make_stack": standin_stack(fail_auth=True)},
                )
            installed = firewall.is_installed()
            nursery.cancel_scope.cancel()
        return code, installed

    try:
        code, installed = nslib_run(h, main)
    finally:
        server.close()
    assert code == EXIT_AUTH and installed
    assert board.state is State.FAILED and board.auth_failures == 2


def nslib_run(h: nslib.TwoHosts, fn: Any) -> Any:
    with h.client.enter():
        return trio.run(fn)
