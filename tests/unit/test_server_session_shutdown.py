"""The embedded server's per-client session at shutdown: its control writer and its closing flush
must never send on the control stream at the same time (found by the reliability tests: a client
stopping during a stalled transfer made the server log "internal error: ExceptionGroup" and lose
the goodbye)."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

import trio
import trio.testing

from sidecar.server.session import ClientSession, SessionHooks


class StubStack:
    """Control bytes queued on demand; the goodbye (``close``) queues more and finishes the stack."""

    gre = control = link = None

    def __init__(self) -> None:
        self.out = bytearray(b"first")
        self.done = False

    def start(self, now: float) -> None:
        return None

    def control_pending(self) -> bool:
        return bool(self.out)

    def control_to_send(self) -> bytes:
        data = bytes(self.out)
        self.out.clear()
        return data

    def gre_to_send(self, now: float) -> list[bytes]:
        return []

    def events(self, now: float) -> list[Any]:
        return []

    def next_deadline(self) -> float | None:
        return None

    def timeout(self, now: float) -> tuple[list[bytes], list[bytes]]:
        return [], []

    def finished(self) -> bool:
        return self.done

    def close(self, now: float, reason: str) -> None:
        self.out += b"goodbye"
        self.done = True


def test_closing_flush_waits_for_the_writer() -> None:
    async def main() -> tuple[ClientSession, bytes]:
        release = trio.Event()
        stream = trio.testing.MemorySendStream()

        async def slow_peer() -> None:  # the writer's send_all is still in progress...
            await release.wait()

        stream.send_all_hook = slow_peer
        control = trio.StapledStream(stream, trio.testing.MemoryReceiveStream())  # the peer sends nothing
        hooks = SessionHooks(gre=None, tun=None, pool=None, secrets=None,  # type: ignore[arg-type]
                             register_call=lambda s: None, address_up=lambda s: None,
                             gone=lambda s: None)  # fmt: skip
        session = ClientSession(1, IPv4Address("192.0.2.2"), control, StubStack(), hooks)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.run)
            await trio.testing.wait_all_tasks_blocked()  # the writer is inside send_all(b"first")
            session.shutdown("server shutting down")  # ... when the goodbye is queued and flushed
            await trio.testing.wait_all_tasks_blocked()
            release.set()
            with trio.fail_after(5):
                await session.wait_done()
        return session, bytes(stream.get_data_nowait())

    session, sent = trio.run(main)
    assert session.counters.internal_errors == 0, session.end_reason
    assert sent == b"firstgoodbye"
    assert session.end_reason == "server shutting down"
