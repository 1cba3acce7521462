"""The RC4 backends under MPPE: each one that is installed and verified at import (arc4,
cryptography's binding, cryptography's public API) must give the RFC 3079 answers, the same key
stream as the public API and as pycryptodome, and carry the codec in both modes; the import-time
check must leave out a backend that is missing or disagrees."""

from __future__ import annotations

import platform
import sys
from typing import Any

import pytest
from Crypto.Cipher import ARC4 as RefARC4
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.proto.ppp.mppe import (
    RC4_BACKENDS,
    RC4_FRESH,
    RC4_KEPT,
    MppeCodec,
    Rc4Backend,
    agrees_with_public,
    verified_backends,
)

H = bytes.fromhex
BACKENDS = list(RC4_BACKENDS.values())
IDS = list(RC4_BACKENDS)
PUBLIC = RC4_BACKENDS["cryptography"]

# RFC 3079 §3.5: the server's send start keys and the first packet's ciphertext of "test message"
# (the 56-bit one with the RFC's last-octet typo corrected, see test_mppe_keys.py)
RFC_CASES = [
    (40, H("8B7CDC149B993A1B"), H("D1269EC49FA62E3E"), H("929137917E5803D668D75898")),
    (56, H("8B7CDC149B993A1B"), H("D15C00C49FA62E3E"), H("3F106833FA448DA842BC57B8")),
    (
        128,
        H("8B7CDC149B993A1BA118CB153F56DCCB"),
        H("405CB2247A7956E6E211007AE27B22D4"),
        H("81848317DF68846272FB5ABE"),
    ),
]
PLAINTEXT = b"test message"
# the key sizes cryptography's ARC4 accepts (MPPE uses 8 and 16 octets)
RC4_KEYS = st.sampled_from([5, 7, 8, 10, 16, 20, 24, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n))


def test_public_api_and_binding_always_there() -> None:
    assert "cryptography" in RC4_BACKENDS  # the fallback of last resort is never checked away
    assert RC4_FRESH in BACKENDS and RC4_KEPT in BACKENDS


@pytest.mark.skipif(
    not (sys.platform == "linux" and platform.machine() == "x86_64"),
    reason="arc4 is a dependency on x86_64 only",
)
def test_arc4_is_chosen_for_fresh_keys_where_it_is_a_dependency() -> None:
    assert RC4_FRESH.name == "arc4"


@pytest.mark.parametrize("rc4", BACKENDS, ids=IDS)
@pytest.mark.parametrize(("bits", "start", "session", "cipher"), RFC_CASES)
def test_rfc3079_vectors(rc4: Rc4Backend, bits: int, start: bytes, session: bytes, cipher: bytes) -> None:
    assert rc4.crypt(rc4.new(session), PLAINTEXT) == cipher
    server = MppeCodec(start, b"\x00" * 16, bits, stateful=True, rc4=rc4)
    assert server.encrypt(PLAINTEXT) == b"\x10\x00" + cipher
    client = MppeCodec(b"\x01" * 16, start, bits, stateful=True, rc4=rc4)
    assert client.decrypt(b"\x10\x00" + cipher) == PLAINTEXT


@settings(max_examples=200, deadline=None)
@given(key=RC4_KEYS, data=st.binary(max_size=2000), split=st.integers(0, 2000))
def test_key_streams_identical(key: bytes, data: bytes, split: int) -> None:
    want = RefARC4.new(key).encrypt(data) if data else b""
    assert PUBLIC.crypt(PUBLIC.new(key), data) == want
    for rc4 in BACKENDS:
        assert rc4.crypt(rc4.new(key), data) == want, rc4.name
        kept = rc4.new(key)  # a kept context continues the stream across calls
        assert rc4.crypt(kept, data[:split]) + rc4.crypt(kept, data[split:]) == want, rc4.name


def frame(i: int) -> bytes:
    return b"\x00\x21\x45" + i.to_bytes(4, "big") + bytes([i & 0xFF]) * (i * 7 % 1400)


@pytest.mark.parametrize("stateful", [False, True], ids=["stateless", "stateful"])
@pytest.mark.parametrize("bits", [40, 56, 128])
@pytest.mark.parametrize("sender", BACKENDS, ids=IDS)
@pytest.mark.parametrize("receiver", BACKENDS, ids=IDS)
def test_round_trip_across_backends(
    sender: Rc4Backend, receiver: Rc4Backend, bits: int, stateful: bool
) -> None:
    send, recv = bytes(range(1, 17)), bytes(range(101, 117))
    a = MppeCodec(send, recv, bits, stateful, rc4=sender)
    b = MppeCodec(recv, send, bits, stateful, rc4=receiver)
    assert (a.rc4_backend, b.rc4_backend) == (sender.name, receiver.name)
    for i in range(600):  # across two stateful flag packets (255, 511)
        p = frame(i)
        assert b.decrypt(a.encrypt(p)) == p
        assert b.decrypt(memoryview(a.encrypt(memoryview(p)))) == p  # the link hands in memoryviews
        assert a.decrypt(b.encrypt(p)) == p
    a.encrypt(frame(0))  # lost: stateless rekeys twice, stateful resynchronises on the flush
    a.reset_requested()
    assert b.decrypt(a.encrypt(frame(1))) == frame(1)
    assert b.counters.decrypted == 1201


@pytest.mark.parametrize("rc4", BACKENDS, ids=IDS)
def test_stateless_far_jump_with_each_backend(rc4: Rc4Backend) -> None:
    a = MppeCodec(b"k" * 16, b"r" * 16, 128, False, rc4=rc4)
    b = MppeCodec(b"r" * 16, b"k" * 16, 128, False, rc4=rc4)
    for i in range(40):  # a burst of 40 lost packets: more than the unchecked jump
        a.encrypt(frame(i))
    assert b.decrypt(a.encrypt(frame(40))) == frame(40)
    assert b.counters.rx_rekeys == 41


def ref_crypt(context: Any, data: bytes) -> bytes:
    return bytes(context.encrypt(data))


def wrong_key_backend() -> Rc4Backend:
    """RC4 keyed with one octet changed: the shape of a backend that builds but computes garbage."""
    return Rc4Backend("wrong", lambda key: RefARC4.new(bytes([key[0] ^ 1]) + key[1:]), ref_crypt, True)


def missing_backend() -> Rc4Backend:
    raise ImportError("no module named 'not_installed'")


def reference_backend() -> Rc4Backend:
    return Rc4Backend("pycryptodome", RefARC4.new, ref_crypt, True)


def test_disagreeing_or_missing_backend_is_left_out() -> None:
    assert not agrees_with_public(wrong_key_backend())
    assert agrees_with_public(reference_backend())
    found = verified_backends((missing_backend, wrong_key_backend, reference_backend))
    assert list(found) == ["pycryptodome", "cryptography"]
    assert list(verified_backends((missing_backend, wrong_key_backend))) == ["cryptography"]
