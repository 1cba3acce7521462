"""RFC 3079 key derivation vectors, MS-CHAPv1 start keys, and the CCP option 18 helpers."""

from __future__ import annotations

import pytest
from Crypto.Cipher import ARC4 as PyCryptodomeARC4

from sidecar.proto.errors import PppError
from sidecar.proto.ppp.mppe import (
    MPPE_C,
    MPPE_D,
    MPPE_H,
    MPPE_L,
    MPPE_M,
    MPPE_S,
    MppeCodec,
    MppeKeySource,
    build_mppe_option,
    get_asymmetric_start_key,
    get_master_key,
    get_new_key_from_sha,
    mppe_option_bits,
    parse_mppe_option,
    reduce_key,
    strongest_key_bits,
)

H = bytes.fromhex

# RFC 3079 §3.5 (the RFC 2759 §9.2 exchange continued)
PASSWORD_HASH_HASH = H("41C00C584BD2D91C4017A2A12FA59F3F")
NT_RESPONSE = H("82309ECD8D708B5EA08FAA3981CD83544233114A3D85D6DF")
MASTER_KEY = H("FDECE3717A8C838CB388E527AE3CDD31")
SEND_START_KEY_40 = H("8B7CDC149B993A1B")  # the RFC's "SendStartKey" = the server's send key
SEND_START_KEY_128 = H("8B7CDC149B993A1BA118CB153F56DCCB")
SEND_SESSION_KEY_40 = H("D1269EC49FA62E3E")
SEND_SESSION_KEY_56 = H("D15C00C49FA62E3E")
SEND_SESSION_KEY_128 = H("405CB2247A7956E6E211007AE27B22D4")
PLAINTEXT = b"test message"
CIPHER_40 = H("92913791 7E5803D6 68D75898".replace(" ", ""))
CIPHER_128 = H("81848317DF68846272FB5ABE")
# RFC 3079 §3.5.2 prints 3F 10 68 33 FA 44 8D A8 42 BC 57 58 for 56-bit: the last octet is a known
# typo. Recomputed independently (pycryptodome's RC4 with the RFC's own 56-bit session key), it is B8.
CIPHER_56_RFC_PRINTED = H("3F106833FA448DA842BC5758")
CIPHER_56 = H("3F106833FA448DA842BC57B8")


def test_master_key() -> None:
    assert get_master_key(PASSWORD_HASH_HASH, NT_RESPONSE) == MASTER_KEY


def test_asymmetric_start_keys() -> None:
    assert get_asymmetric_start_key(MASTER_KEY, 8, is_send=True, is_server=True) == SEND_START_KEY_40
    assert get_asymmetric_start_key(MASTER_KEY, 16, is_send=True, is_server=True) == SEND_START_KEY_128
    # the client's receive key is the server's send key, and vice versa
    assert get_asymmetric_start_key(MASTER_KEY, 16, is_send=False, is_server=False) == SEND_START_KEY_128
    assert get_asymmetric_start_key(
        MASTER_KEY, 16, is_send=True, is_server=False
    ) == get_asymmetric_start_key(MASTER_KEY, 16, is_send=False, is_server=True)
    assert get_asymmetric_start_key(MASTER_KEY, 16, is_send=True, is_server=False) != SEND_START_KEY_128


def test_key_source_roles() -> None:
    ks = MppeKeySource.from_mschap_v2(PASSWORD_HASH_HASH, NT_RESPONSE)
    c_send, c_recv = ks.start_keys(128, is_server=False)
    s_send, s_recv = ks.start_keys(128, is_server=True)
    assert c_recv == s_send == SEND_START_KEY_128
    assert c_send == s_recv != SEND_START_KEY_128
    assert ks.start_keys(40, is_server=True)[0] == SEND_START_KEY_40
    assert ks.start_keys(56, is_server=True)[0] == SEND_START_KEY_40
    with pytest.raises(PppError, match="40, 56, 128"):
        ks.start_keys(64, is_server=True)


def test_session_keys_and_reduction() -> None:
    full = get_new_key_from_sha(SEND_START_KEY_40, SEND_START_KEY_40, 8)
    assert reduce_key(full, 40) == SEND_SESSION_KEY_40
    assert reduce_key(full, 56) == SEND_SESSION_KEY_56
    assert get_new_key_from_sha(SEND_START_KEY_128, SEND_START_KEY_128, 16) == SEND_SESSION_KEY_128


@pytest.mark.parametrize(
    ("bits", "start", "session", "cipher"),
    [
        (40, SEND_START_KEY_40, SEND_SESSION_KEY_40, CIPHER_40),
        (56, SEND_START_KEY_40, SEND_SESSION_KEY_56, CIPHER_56),
        (128, SEND_START_KEY_128, SEND_SESSION_KEY_128, CIPHER_128),
    ],
)
def test_first_stateful_packet_known_answer(bits: int, start: bytes, session: bytes, cipher: bytes) -> None:
    # independent check of the expected ciphertext with another RC4 implementation
    assert PyCryptodomeARC4.new(session).encrypt(PLAINTEXT) == cipher
    # the codec's first stateful packet is encrypted with the initial session key: count 0, D bit
    server = MppeCodec(start, b"\x00" * 16, bits, stateful=True)
    assert server.encrypt(PLAINTEXT) == b"\x10\x00" + cipher
    client = MppeCodec(b"\x01" * 16, start, bits, stateful=True)
    assert client.decrypt(b"\x10\x00" + cipher) == PLAINTEXT


def test_rfc_56bit_typo_is_a_typo() -> None:
    assert CIPHER_56 != CIPHER_56_RFC_PRINTED
    assert CIPHER_56[:-1] == CIPHER_56_RFC_PRINTED[:-1]


def test_mschap_v1_start_key() -> None:
    # RFC 3079 §3.3 (128-bit, MS-CHAPv1): challenge 102DB5DF085D3041 and "clientPass"'s hash hash
    ks = MppeKeySource.from_mschap_v1(PASSWORD_HASH_HASH, H("102DB5DF085D3041"))
    send, recv = ks.start_keys(128, is_server=False)
    assert send == recv == H("A8947850CFC0ACC1D1789FB62DDCDDB0")
    assert get_new_key_from_sha(send, send, 16) == H("59D159BC09F76F1DA2A86A28FFEC0B1E")
    assert ks.start_keys(40, is_server=True) == (send[:8], send[:8])


def test_key_source_hides_material() -> None:
    ks = MppeKeySource.from_mschap_v2(PASSWORD_HASH_HASH, NT_RESPONSE)
    for text in (repr(ks), str(ks), f"{ks}"):
        assert MASTER_KEY.hex() not in text.lower() and "material=***" in text
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(ks)


def test_option_bits() -> None:
    assert (MPPE_H, MPPE_M, MPPE_S, MPPE_L, MPPE_D, MPPE_C) == (0x01000000, 0x80, 0x40, 0x20, 0x10, 0x01)
    assert build_mppe_option([128], stateless=True) == H("01000040")
    assert build_mppe_option([40, 56, 128], stateless=False) == H("000000E0")
    opt = parse_mppe_option(H("010000E1"))
    assert opt.key_bits == frozenset({40, 56, 128}) and opt.stateless and opt.mppc
    assert opt.strongest() == 128
    assert opt.to_bits() == 0x010000E1
    d = parse_mppe_option(H("00000030"))
    assert d.key_bits == frozenset({40}) and d.unknown_bits == MPPE_D and not d.stateless
    assert mppe_option_bits([], stateless=False) == 0
    assert strongest_key_bits([40, 56]) == 56 and strongest_key_bits([]) is None
    with pytest.raises(PppError, match="4 octets"):
        parse_mppe_option(b"\x01\x00\x00")
    with pytest.raises(PppError, match="40, 56, 128"):
        build_mppe_option([64], stateless=True)
