"""MppeCodec: round trips (hypothesis), rekeying across 256-packet boundaries and the 4096 wrap,
loss (stateful resync through reset_requested and the flushed bit; stateless gaps), an independent
reference model of RFC 3078 §7 built on pycryptodome's RC4 (checked on every RC4 backend), and
fuzzing the decoder."""

from __future__ import annotations

import hashlib

import pytest
from Crypto.Cipher import ARC4 as RefARC4
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.proto.ppp.mppe import RC4_BACKENDS, MppeCodec, Rc4Backend

SEND = bytes(range(1, 17))
RECV = bytes(range(101, 117))
BITS = [40, 56, 128]


def pair(bits: int, stateful: bool, rc4: Rc4Backend | None = None) -> tuple[MppeCodec, MppeCodec]:
    return MppeCodec(SEND, RECV, bits, stateful, rc4=rc4), MppeCodec(RECV, SEND, bits, stateful, rc4=rc4)


def payload(i: int) -> bytes:
    """An IPv4-looking PPP frame (protocol 0x0021, version nibble 4) that names its index."""
    return b"\x00\x21\x45" + i.to_bytes(4, "big") + bytes([i & 0xFF]) * (i % 50)


class Reference:
    """RFC 3078 §7.2-7.3 and RFC 3079 written out again, independently of the codec, with another
    RC4 (pycryptodome) and the salt values spelled out."""

    def __init__(self, start: bytes, bits: int) -> None:
        self.n = 16 if bits == 128 else 8
        self.bits = bits
        self.start = start[: self.n]
        self.key = self._reduce(self._sha(self.start, self.start))

    def _sha(self, a: bytes, b: bytes) -> bytes:
        return hashlib.sha1(a + bytes(40) + b + b"\xf2" * 40).digest()[: self.n]

    def _reduce(self, k: bytes) -> bytes:
        if self.bits == 40:
            return bytes([0xD1, 0x26, 0x9E]) + k[3:]
        if self.bits == 56:
            return bytes([0xD1]) + k[1:]
        return k

    def rekey(self) -> None:
        interim = self._sha(self.start, self.key)
        self.key = self._reduce(RefARC4.new(interim).encrypt(interim))


@pytest.mark.parametrize("backend", RC4_BACKENDS.values(), ids=RC4_BACKENDS.keys())
def test_stateless_matches_reference(backend: Rc4Backend) -> None:
    for bits in BITS:
        tx, _ = pair(bits, stateful=False, rc4=backend)
        ref = Reference(SEND, bits)
        for i in range(300):
            pkt = tx.encrypt(payload(i))
            assert pkt[0] == 0x90 | (i >> 8) and pkt[1] == i & 0xFF  # A and D bits, count i
            ref.rekey()  # stateless: a new key before every packet, the first included
            assert RefARC4.new(ref.key).decrypt(pkt[2:]) == payload(i)


@pytest.mark.parametrize("backend", RC4_BACKENDS.values(), ids=RC4_BACKENDS.keys())
def test_stateful_matches_reference(backend: Rc4Backend) -> None:
    for bits in BITS:
        tx, _ = pair(bits, stateful=True, rc4=backend)
        ref = Reference(SEND, bits)
        rc4 = RefARC4.new(ref.key)
        for i in range(700):
            pkt = tx.encrypt(payload(i))
            flag = (i & 0xFF) == 0xFF
            assert pkt[0] == (0x90 if flag else 0x10) | (i >> 8) and pkt[1] == i & 0xFF
            if flag:  # the "flag" packet: new key, new RC4 state
                ref.rekey()
                rc4 = RefARC4.new(ref.key)
            assert rc4.decrypt(pkt[2:]) == payload(i)
        assert tx.counters.tx_rekeys == 2


@settings(max_examples=40, deadline=None)
@given(
    bits=st.sampled_from(BITS),
    stateful=st.booleans(),
    data=st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=40),
)
def test_round_trip(bits: int, stateful: bool, data: list[bytes]) -> None:
    a, b = pair(bits, stateful)
    for d in data:
        assert b.decrypt(a.encrypt(d)) == d
        assert a.decrypt(b.encrypt(d[::-1])) == d[::-1]
    assert b.counters.decrypted == a.counters.decrypted == len(data)


@pytest.mark.parametrize("stateful", [False, True])
@pytest.mark.parametrize("bits", BITS)
def test_coherency_wrap(bits: int, stateful: bool) -> None:
    a, b = pair(bits, stateful)
    n = 4096 + 300
    for i in range(n):
        pkt = a.encrypt(payload(i))
        assert ((pkt[0] & 0x0F) << 8 | pkt[1]) == i % 4096
        assert b.decrypt(pkt) == payload(i)
    assert b.counters.decrypted == n
    assert b.counters.rx_rekeys == (n if not stateful else n // 256)


def test_stateful_loss_then_reset_resyncs() -> None:
    a, b = pair(128, stateful=True)
    for i in range(10):
        assert b.decrypt(a.encrypt(payload(i))) == payload(i)
    a.encrypt(payload(10))  # lost
    assert b.decrypt(a.encrypt(payload(11))) is None
    assert b.needs_reset and b.resync_pending and b.counters.losses == 1
    assert b.decrypt(a.encrypt(payload(12))) is None  # still dropping, no second loss event
    assert b.counters.losses == 1 and b.counters.dropped_resync == 1
    b.needs_reset = False  # the link sent CCP Reset-Request
    a.reset_requested()  # ... and the peer's CCP handed it to the encoder
    pkt = a.encrypt(payload(13))
    assert pkt[0] & 0x80  # flushed
    assert b.decrypt(pkt) == payload(13)
    assert not b.resync_pending and b.counters.resyncs == 1
    for i in range(14, 600):  # and on across flag packets
        assert b.decrypt(a.encrypt(payload(i))) == payload(i)
    assert a.counters.tx_flushed == 1


def test_stateful_resync_across_missed_flag_packets() -> None:
    a, b = pair(56, stateful=True)
    assert b.decrypt(a.encrypt(payload(0))) == payload(0)
    for i in range(1, 700):  # lose 699 packets, two flag packets (255, 511) among them
        a.encrypt(payload(i))
    a.reset_requested()
    assert b.decrypt(a.encrypt(payload(700))) == payload(700)  # gap + flushed: immediate resync
    assert b.decrypt(a.encrypt(payload(701))) == payload(701)


def test_stateful_lost_flag_packet_then_flush() -> None:
    a, b = pair(40, stateful=True)
    for i in range(255):
        assert b.decrypt(a.encrypt(payload(i))) == payload(i)
    a.encrypt(payload(255))  # the flag packet itself is lost
    assert b.decrypt(a.encrypt(payload(256))) is None and b.needs_reset
    a.reset_requested()
    assert b.decrypt(a.encrypt(payload(257))) == payload(257)


def test_stateful_duplicate_is_dropped_without_reset() -> None:
    a, b = pair(128, stateful=True)
    p0 = a.encrypt(payload(0))
    assert b.decrypt(p0) == payload(0)
    assert b.decrypt(p0) is None
    assert not b.needs_reset and b.counters.dropped_late == 1
    assert b.decrypt(a.encrypt(payload(1))) == payload(1)


@settings(max_examples=40, deadline=None)
@given(
    bits=st.sampled_from(BITS),
    lost=st.sets(st.integers(0, 799), max_size=60),
    reaction=st.integers(0, 5),
)
def test_stateful_random_loss_never_yields_garbage(bits: int, lost: set[int], reaction: int) -> None:
    """A link that sends Reset-Request on needs_reset and repeats it every 8 packets while the codec
    still waits for a flushed packet (RFC 1962's restart timer, in packets). Flushed packets get
    lost too. No packet may ever come out wrong, and delivery resumes after the last loss."""
    a, b = pair(bits, stateful=True)
    countdown: int | None = None
    since_request = 0
    delivered = []
    for i in range(800):
        if countdown is not None:
            countdown -= 1
            if countdown <= 0:
                a.reset_requested()  # the Reset-Request reached the sender
                countdown = None
        pkt = a.encrypt(payload(i))
        if i not in lost:
            out = b.decrypt(pkt)
            if out is not None:
                assert out == payload(i)  # never a wrongly decrypted packet
                delivered.append(i)
        since_request += 1
        if b.needs_reset or (b.resync_pending and since_request >= 8 and countdown is None):
            b.needs_reset = False
            countdown = reaction
            since_request = 0
    last_lost = max(lost, default=-1)
    tail = set(range(last_lost + reaction + 10, 800))
    assert tail <= set(delivered)


def test_lost_flushed_packet_recovers_with_extra_rekeys() -> None:
    a, b = pair(128, stateful=True)
    assert b.decrypt(a.encrypt(payload(0))) == payload(0)
    a.encrypt(payload(1))  # lost
    assert b.decrypt(a.encrypt(payload(2))) is None and b.needs_reset
    a.reset_requested()
    a.encrypt(payload(3))  # the flushed answer is lost as well
    a.reset_requested()  # the link asked again
    assert b.decrypt(a.encrypt(payload(4))) == payload(4)  # one rekey more than the RFC count
    assert b.counters.extra_rekeys == 1 and b.counters.resyncs == 1
    assert b.decrypt(a.encrypt(payload(5))) == payload(5)


def test_resync_refuses_implausible_plaintext() -> None:
    a, b = pair(128, stateful=True)
    b.decrypt(a.encrypt(payload(0)))
    a.encrypt(payload(1))  # lost
    b.decrypt(a.encrypt(payload(2)))
    b.needs_reset = False
    a.reset_requested()
    assert b.decrypt(a.encrypt(b"\xc0\x21 not IP")) is None  # cannot be told from garbage
    assert b.needs_reset and b.resync_pending and b.counters.resync_failed == 1
    a.reset_requested()
    assert b.decrypt(a.encrypt(payload(4))) == payload(4)


@settings(max_examples=30, deadline=None)
@given(bits=st.sampled_from(BITS), lost=st.sets(st.integers(0, 2999), max_size=300))
def test_stateless_gaps(bits: int, lost: set[int]) -> None:
    a, b = pair(bits, stateful=False)
    for i in range(3000):
        pkt = a.encrypt(payload(i))
        if i not in lost:
            assert b.decrypt(pkt) == payload(i)
    assert b.counters.decrypted == 3000 - len(lost)


def test_stateless_long_gap_and_late_packets() -> None:
    a, b = pair(128, stateful=False)
    pkts = [a.encrypt(payload(i)) for i in range(2100)]
    assert b.decrypt(pkts[0]) == payload(0)
    assert b.decrypt(pkts[2000]) == payload(2000)  # 1999 lost: 2000 rekeys, still in step
    assert b.decrypt(pkts[1500]) is None  # late: behind us
    assert b.decrypt(pkts[2000]) is None  # duplicate
    assert b.counters.dropped_late == 2
    assert b.decrypt(pkts[2099]) == payload(2099)


def test_stateless_forged_far_jump_is_not_committed() -> None:
    """One forged packet with a count far ahead (random ciphertext) must not move the key: the
    genuine packets after it still decrypt, and the forgery is counted."""
    a, b = pair(128, stateful=False)
    assert b.decrypt(a.encrypt(payload(0))) == payload(0)
    forged = bytes([0x90 | 0x07, 0xD0]) + hashlib.sha256(b"forged").digest()  # A+D bits, count 2000
    assert b.decrypt(forged) is None
    assert b.counters.dropped_implausible == 1
    for i in range(1, 50):
        assert b.decrypt(a.encrypt(payload(i))) == payload(i)
    assert b.counters.dropped_late == 0


def test_header_bits_are_checked() -> None:
    a, b = pair(128, stateful=False)
    pkt = bytearray(a.encrypt(payload(0)))
    assert b.decrypt(bytes([pkt[0] & ~0x10]) + pkt[1:]) is None  # D clear: not encrypted
    assert b.decrypt(bytes([pkt[0] | 0x20]) + pkt[1:]) is None  # C set: MPPC compressed
    assert b.decrypt(bytes([pkt[0] & ~0x80]) + pkt[1:]) is None  # stateless without A
    assert b.decrypt(pkt[:2]) is None
    c = b.counters
    assert (c.dropped_unencrypted, c.dropped_compressed, c.dropped_not_flushed, c.dropped_short) == (
        1,
        1,
        1,
        1,
    )
    assert b.decrypt(bytes(pkt)) == payload(0)  # the real one still works: nothing was consumed


def test_stateful_flag_packet_must_be_flushed() -> None:
    a, b = pair(128, stateful=True)
    for i in range(255):
        b.decrypt(a.encrypt(payload(i)))
    flag = a.encrypt(payload(255))
    assert b.decrypt(bytes([flag[0] & ~0x80]) + flag[1:]) is None
    assert b.counters.dropped_not_flushed == 1


def test_memoryview_input() -> None:
    a, b = pair(128, stateful=True)
    assert b.decrypt(memoryview(a.encrypt(memoryview(b"\x00\x21abc")))) == b"\x00\x21abc"


def test_bad_key_length() -> None:
    from sidecar.proto.errors import PppError

    with pytest.raises(PppError, match="at least 16 octets"):
        MppeCodec(b"short", b"short", 128, True)
    with pytest.raises(PppError, match="40, 56, 128"):
        MppeCodec(SEND, RECV, 64, True)


@settings(max_examples=300, deadline=None)
@given(stateful=st.booleans(), blobs=st.lists(st.binary(max_size=64), max_size=10))
def test_decoder_fed_random_bytes(stateful: bool, blobs: list[bytes]) -> None:
    _, b = pair(40, stateful)
    for blob in blobs:
        out = b.decrypt(blob)
        assert out is None or isinstance(out, bytes)


@pytest.mark.parametrize("stateful", [False, True])
def test_encrypt_puts_the_prefix_in_front_of_the_same_packet(stateful: bool) -> None:
    plain, prefixed = pair(128, stateful), pair(128, stateful)
    for i in range(300):  # past a stateful flag packet (count 0xFF)
        bare = plain[0].encrypt(payload(i))
        assert prefixed[0].encrypt(payload(i), b"\xff\x03\x00\xfd") == b"\xff\x03\x00\xfd" + bare
        assert prefixed[1].decrypt(bare) == payload(i)
