"""Fuzz targets for enhanced GRE (RFC 2637 §4): the header codec, :class:`GreSession` and the reorder
queue under it (bounded memory under a flood of far-ahead sequence numbers)."""

from __future__ import annotations

from fuzz.common import (
    InvariantError,
    Reader,
    blob,
    check,
    check_counters,
    check_deadline,
    decoder_guard,
    u8,
    u16,
    u32,
)
from sidecar.proto.errors import GreError
from sidecar.proto.gre import GreSession, decode_header, encode_packet
from sidecar.proto.reorder import ReorderQueue
from sidecar.proto.serial import SERIAL_MASK, serial_diff

LOCAL_CALL_ID = 0x1234
PEER_CALL_ID = 0x4321


def target_gre_decode(data: bytes) -> None:
    """decode_header: only GreError on bad input; an accepted packet re-encodes to the same bytes
    (enhanced GRE has exactly one encoding per header)."""
    got = decoder_guard(lambda: decode_header(data))
    if got is None:
        return
    header, payload = got
    check(len(payload) == header.payload_len, "payload view length differs from the header's")
    check(header.header_len + header.payload_len == len(data), "header + payload do not cover the packet")
    try:
        again = encode_packet(header.call_id, payload, header.seq, header.ack)
    except GreError as exc:
        raise InvariantError(f"decode_header accepted a packet encode_packet refuses: {exc}") from exc
    check(again == bytes(data), f"re-encoding changed the packet: {bytes(data).hex()} -> {again.hex()}")


class _GreWatch:
    def __init__(self, session: GreSession, window: int) -> None:
        self.s = session
        self.window = window

    def packets(self, packets: list[bytes]) -> None:
        for p in packets:
            h, _ = decode_header(p)  # our own output must decode (a GreError here is a bug)
            check(h.call_id == PEER_CALL_ID, f"sent a packet for call {h.call_id}, peer's is {PEER_CALL_ID}")

    def frames(self, frames: list[bytes]) -> None:
        for f in frames:
            check(isinstance(f, bytes) and len(f) > 0, f"delivered frame {f!r} is not non-empty bytes")

    def state(self) -> None:
        s = self.s
        check(len(s.reorder) <= self.window, f"reorder buffer holds {len(s.reorder)} > window {self.window}")
        check_deadline(s.next_deadline(), "GreSession")
        check_counters(s.counters, "GreSession.counters")
        check(s.counters.reorder is s.reorder.counters, "GreCounters.reorder is not the queue's counters")
        check(s.unacked >= 0, f"unacked = {s.unacked} is negative")
        c = s.reorder.counters
        held = len(s.reorder)
        check(c.buffered == c.from_buffer + c.discarded + held, f"reorder counters inconsistent: {c}")


def target_gre_session(data: bytes) -> None:
    """GreSession.receive / send / timeout: raw packets, well-formed packets with fuzzed sequence
    and ack numbers (near and far), our own sends; nothing escapes, the buffer stays bounded, our
    packets decode, every counter stays >= 0."""
    r = Reader(data)
    window = r.u8() % 40
    timeout = (r.u8() % 50) / 100.0
    initial_seq = r.u32()
    session = GreSession(
        LOCAL_CALL_ID, PEER_CALL_ID, reorder_window=window, reorder_timeout=timeout, initial_seq=initial_seq
    )
    watch = _GreWatch(session, window)
    now = 0.0
    base = r.u32()  # the peer's sequence numbers start around here
    for op in r.ops(7):
        if op == 0:
            watch.frames(session.receive(r.blob(), now))
        elif op in (1, 2):
            flags = r.u8()
            delta = r.u16() if op == 1 else r.u32()  # near, or anywhere in the 32-bit space
            seq = (base + delta) & SERIAL_MASK if flags & 1 else None
            ack_base = session.last_sent_seq if session.last_sent_seq is not None else initial_seq
            ack = (ack_base + ((r.u8() - 128) if op == 1 else r.u32())) & SERIAL_MASK if flags & 2 else None
            payload = r.blob() if seq is not None else b""
            if seq is None and ack is None:
                ack = 0
            call_id = LOCAL_CALL_ID if not flags & 4 else r.u16()
            watch.frames(session.receive(encode_packet(call_id, payload, seq, ack), now))
        elif op == 3:
            watch.packets([session.send(r.blob(), now)])
        elif op == 4:
            now += r.u16() / 1000.0
            frames, packets = session.timeout(now)
            watch.frames(frames)
            watch.packets(packets)
        elif op == 5:
            d = session.next_deadline()
            if d is not None:
                now = max(now, d)
            frames, packets = session.timeout(now)
            watch.frames(frames)
            watch.packets(packets)
        else:
            base = (base + r.u32()) & SERIAL_MASK
        watch.state()


def target_reorder(data: bytes) -> None:
    """ReorderQueue.push/timeout/flush with arbitrary sequence numbers: at most ``window`` items held,
    every push counted exactly once, delivery strictly in sequence order (restarting when an unconfirmed
    far jump is undone: ``reverted``), no item delivered twice."""
    r = Reader(data)
    window = r.u8() % 70
    timeout = (r.u8() % 20) / 100.0
    q: ReorderQueue[int] = ReorderQueue(window, timeout)
    seq = r.u32()
    now = 0.0
    pushed = 0
    delivered: list[int] = []
    seen: set[int] = set()
    ids = 0

    def deliver(items: list[int]) -> None:
        for item in items:
            s = item & SERIAL_MASK
            check(item not in seen, f"item {item} delivered twice")
            seen.add(item)
            if delivered:
                check(
                    serial_diff(s, delivered[-1]) > 0,
                    f"sequence {s} delivered after {delivered[-1]} (out of order)",
                )
            delivered.append(s)

    for op in r.ops(8):
        if op <= 4:  # mostly pushes: small steps, reorders, far jumps
            step = {0: 1, 1: r.u8() - 64, 2: r.u16(), 3: r.u32(), 4: 0}[op]
            seq = (seq + step) & SERIAL_MASK
            ids += 1
            pushed += 1
            reverted = q.counters.reverted
            got = q.push(seq, seq | (ids << 32), now)
            if q.counters.reverted != reverted:
                delivered.clear()  # went back to the stream it had jumped away from: order restarts
            deliver(got)
        elif op == 5:
            now += r.u8() / 100.0
            deliver(q.timeout(now))
        elif op == 6:
            d = q.next_deadline()
            if d is not None:
                now = max(now, d)
            deliver(q.timeout(now))
        else:
            deliver(q.flush())
            check(len(q) == 0, "flush left items buffered")
        c = q.counters
        check(len(q) <= window, f"reorder buffer holds {len(q)} > window {window}")
        check_counters(c, "ReorderQueue.counters")
        check_deadline(q.next_deadline(), "ReorderQueue")
        check(
            c.in_order + c.buffered + c.late + c.duplicate + c.over_window == pushed,
            f"{pushed} pushes but counters say {c}",
        )
        check(
            c.buffered == c.from_buffer + c.discarded + len(q),
            f"buffered != from_buffer + discarded + len(queue): {c}, {len(q)}",
        )
        check(len(q) == 0 or q.next_deadline() is not None, "items buffered but no deadline to release them")


def far_ahead_flood(window: int, packets: int, seed: int = 0) -> int:
    """Feed a session ``packets`` data packets whose sequence numbers keep jumping far ahead; returns
    the largest reorder buffer seen (must stay <= window). Used by the memory test and the corpus."""
    import random

    rng = random.Random(seed)
    session = GreSession(LOCAL_CALL_ID, PEER_CALL_ID, reorder_window=window, reorder_timeout=10.0)
    seq = rng.getrandbits(32)
    worst = 0
    for i in range(packets):
        seq = (
            seq + rng.choice((window + 1, 3 * window + 33, 1 << 20, 1 << 31, rng.getrandbits(32)))
        ) & SERIAL_MASK
        session.receive(encode_packet(LOCAL_CALL_ID, b"\x21" + i.to_bytes(4, "big"), seq, None), i * 0.001)
        worst = max(worst, len(session.reorder))
    return worst


def seeds() -> dict[str, list[bytes]]:
    pkts = [
        encode_packet(LOCAL_CALL_ID, b"\xff\x03\xc0\x21\x01\x01\x00\x04", 0, None),
        encode_packet(LOCAL_CALL_ID, b"\xfd\x90\x00\x12\x34", 1, 0),
        encode_packet(LOCAL_CALL_ID, b"", None, 5),
        encode_packet(0, b"\x21" * 40, 0xFFFFFFFF, 0xFFFFFFFE),
    ]
    session: list[bytes] = []
    for window in (0, 4, 30):
        ops = b""
        for i in range(12):
            ops += u8(1) + u8(3) + u16((i * 7) % 13) + u8(128) + blob(b"\x21" + bytes((i,)))
        ops += u8(3) + blob(b"\x21hello") + u8(5) + u8(2) + u8(1) + u32(1 << 31) + u32(9) + blob(b"\x21")
        ops += u8(0) + blob(pkts[1]) + u8(4) + u16(500) + u8(6) + u32(1000)
        session.append(u8(window) + u8(10) + u32(0) + u32(0) + ops)
    reorder = [
        u8(8) + u8(5) + u32(0) + bytes([1, 0, 1, 1, 1, 0xC0, 0, 5, 10, 6, 7]),
        u8(30) + u8(2) + u32(0xFFFFFFF0) + (u8(3) + u32(1 << 30)) * 6 + u8(0) * 4,
        u8(0) + u8(0) + u32(7) + u8(2) + u16(100) + u8(0) + u8(1) + u8(3),
    ]
    return {"gre_decode": pkts, "gre_session": session, "reorder": reorder}
