"""Fuzz target for MPPE (RFC 3078): MppeCodec.decrypt in both modes and every key length, fed garbage,
mutated, lost, duplicated and reordered packets from a real sender, with flushes (Reset-Request)."""

from __future__ import annotations

from fuzz.common import Reader, blob, check, check_counters, u8
from sidecar.proto.ppp.mppe import MppeCodec

KEY_BITS = (40, 56, 128)
SEND_KEY = bytes(range(16))
RECV_KEY = bytes(range(16, 32))


def target_mppe(data: bytes) -> None:
    """decrypt never raises and returns bytes or None; while the stream is clean (only genuine
    packets, in order, no loss in stateful mode) every packet decrypts to exactly what was sent."""
    r = Reader(data)
    setup = r.u8()
    bits = KEY_BITS[setup % 3]
    stateful = bool(setup & 4)
    tx = MppeCodec(SEND_KEY, RECV_KEY, bits, stateful)
    rx = MppeCodec(RECV_KEY, SEND_KEY, bits, stateful)
    clean = True  # only genuine packets so far, in order (stateless also tolerates loss)
    held: list[tuple[bytes, bytes]] = []

    def deliver(packet: bytes, plain: bytes | None) -> None:
        nonlocal clean
        got = rx.decrypt(packet)
        check(got is None or isinstance(got, bytes), f"decrypt returned {type(got).__name__}")
        if plain is not None and clean:
            check(
                got == plain,
                f"clean {bits}-bit {'stateful' if stateful else 'stateless'} stream: "
                f"decrypt gave {got!r}, sent {plain!r}",
            )
        if rx.needs_reset:  # the link sends CCP Reset-Request; the peer flushes its next packet
            tx.reset_requested()
            rx.needs_reset = False

    for op in r.ops(8):
        if op == 0:  # garbage
            pkt = r.blob()
            clean = clean and len(pkt) < 3  # short packets are dropped before touching state
            deliver(pkt, None)
        elif op == 1:  # a genuine packet: an IPv4 frame, as the link sends (a far stateless jump is
            # only taken when the plaintext starts like one: MppeCodec._stateless_jump)
            plain = b"\x00\x21\x45" + r.blob()
            deliver(tx.encrypt(plain), plain)
        elif op == 2:  # lost packets
            for _ in range(1 + r.u8() % 8):
                tx.encrypt(b"\x00\x21lost")
            clean = clean and not stateful
        elif op == 3:  # a genuine packet with one byte changed
            damaged = bytearray(tx.encrypt(b"\x00\x21" + r.blob()))
            pos = r.u8() % len(damaged)
            damaged[pos] ^= r.u8() or 1
            clean = False
            deliver(bytes(damaged), None)
        elif op == 4:  # the peer was asked to flush
            tx.reset_requested()
        elif op == 5:  # hold one back (reordering)
            plain = b"\x00\x57\x60" + r.blob()
            held.append((tx.encrypt(plain), plain))
            clean = clean and not stateful
        elif op == 6:  # release held packets (late)
            clean = False
            for pkt, _ in held:
                deliver(pkt, None)
            held.clear()
        else:  # a big jump of the coherency count
            for _ in range(r.u8()):
                tx.encrypt(b"\x00\x21")
            clean = False
        check_counters(rx.counters, "MppeCodec.counters")
        check(isinstance(rx.needs_reset, bool), "needs_reset is not a bool")
        check("key" not in repr(rx).replace("keys=***", ""), "MppeCodec repr shows key material")


def seeds() -> dict[str, list[bytes]]:
    out: list[bytes] = []
    for setup in range(6):
        ops = (u8(1) + blob(b"\x45\x00\x00\x14")) * 3 + u8(2) + u8(3) + u8(1) + blob(b"x")
        ops += u8(5) + blob(b"ab") + u8(1) + blob(b"c") + u8(6) + u8(4) + u8(1) + blob(b"d")
        ops += (
            u8(3)
            + blob(b"zz")
            + u8(1)
            + u8(0)
            + u8(0)
            + blob(b"\x90\x00\x00\x00")
            + u8(7)
            + u8(20)
            + u8(1)
            + blob(b"e")
        )
        out.append(u8(setup) + ops)
    return {"mppe": out}
