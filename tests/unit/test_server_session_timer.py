"""The embedded server's per-client timer: an input moves the sleeping timer's deadline (earlier or
later) instead of waking the timer task, so the machines' timers run at their deadlines and nowhere
else: not at every input, not at a deadline that an input has since withdrawn."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

import trio
import trio.testing

from sidecar.server.session import ClientSession, SessionHooks


class DeadlineStack:
    """A stack whose only state is its next deadline; records when its timers ran."""

    gre = control = link = None

    def __init__(self) -> None:
        self.deadline: float | None = None
        self.fired: list[float] = []

    def start(self, now: float) -> None:
        return None

    def gre_received(self, packet: bytes, now: float) -> list[bytes]:
        self.deadline = float(packet.decode()) if packet else None  # the packet says what is due
        return []

    def control_pending(self) -> bool:
        return False

    def gre_to_send(self, now: float) -> list[bytes]:
        return []

    def events(self, now: float) -> list[Any]:
        return []

    def next_deadline(self) -> float | None:
        return self.deadline

    def timeout(self, now: float) -> tuple[list[bytes], list[bytes]]:
        self.fired.append(now)
        if self.deadline is not None and now >= self.deadline:
            self.deadline = None
        return [], []

    def finished(self) -> bool:
        return False


def _run(script: Any) -> list[float]:
    stack = DeadlineStack()
    clock = trio.testing.MockClock(autojump_threshold=0)

    async def main() -> None:
        control = trio.StapledStream(trio.testing.MemorySendStream(), trio.testing.MemoryReceiveStream())
        hooks = SessionHooks(gre=None, tun=None, pool=None, secrets=None,  # type: ignore[arg-type]
                             register_call=lambda s: None, address_up=lambda s: None,
                             gone=lambda s: None)  # fmt: skip
        session = ClientSession(1, IPv4Address("192.0.2.2"), control, stack, hooks)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.run)
            await script(session)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=clock)
    return stack.fired


def test_an_input_moves_the_deadline_without_running_the_timers() -> None:
    async def script(session: ClientSession) -> None:
        await trio.testing.wait_all_tasks_blocked()
        session.gre_received(b"0.5", trio.current_time())  # an ack falls due at 0.5
        await trio.testing.wait_all_tasks_blocked()
        assert session.stack.fired == [], "the input itself must not run the timers"
        await trio.sleep(1.0)

    fired = _run(script)
    assert fired == [0.5]


def test_a_withdrawn_deadline_leaves_no_wake_up_behind() -> None:
    async def script(session: ClientSession) -> None:
        await trio.testing.wait_all_tasks_blocked()
        session.gre_received(b"0.5", trio.current_time())
        await trio.sleep(0.1)
        session.gre_received(b"", trio.current_time())  # the ack rode on data: nothing due any more
        await trio.sleep(1.0)
        session.gre_received(b"2.0", trio.current_time())  # due later than anything before
        await trio.sleep(2.0)

    fired = _run(script)
    assert fired == [2.0]


def test_a_deadline_due_right_after_a_timer_run_fires_at_once() -> None:
    """An ack due at once (ACK_EVERY packets owed) must not wait for the timer loop's spin guard:
    the client's send window waits for that ack (UDP floods lost ~20 % of their rate)."""
    due: list[float] = []

    async def script(session: ClientSession) -> None:
        await trio.testing.wait_all_tasks_blocked()
        session.gre_received(b"0.5", trio.current_time())
        await trio.sleep(0.5001)  # the timer ran at 0.5
        now = trio.current_time()
        due.append(now)
        session.gre_received(repr(now).encode(), now)  # due now
        await trio.sleep(0.01)

    fired = _run(script)
    assert fired == [0.5, due[0]]
