"""Known-answer tests: RFC 2759 §9.2 (MS-CHAPv2), RFC 2433 Appendix B (MS-CHAPv1), CHAP-MD5."""

from __future__ import annotations

import hashlib

import pytest

from sidecar.proto.ppp.auth.chap import chap_md5_response
from sidecar.proto.ppp.auth.mschap import (
    challenge_hash,
    challenge_response,
    des_encrypt,
    generate_authenticator_response,
    generate_nt_response,
    hash_nt_password_hash,
    nt_password_hash,
    parse_failure,
    parse_success,
    strip_domain,
    v1_nt_response,
)
from sidecar.proto.secret import Secret

H = bytes.fromhex

# RFC 2759 §9.2
V2_USER = "User"
V2_PASSWORD = Secret("clientPass")
V2_AUTH_CHALLENGE = H("5B5D7C7D7B3F2F3E3C2C602132262628")
V2_PEER_CHALLENGE = H("21402324255E262A28295F2B3A337C7E")
V2_CHALLENGE = H("D02E4386BCE91226")
V2_PASSWORD_HASH = H("44EBBA8D5312B8D611474411F56989AE")
V2_NT_RESPONSE = H("82309ECD8D708B5EA08FAA3981CD83544233114A3D85D6DF")
V2_PASSWORD_HASH_HASH = H("41C00C584BD2D91C4017A2A12FA59F3F")
V2_AUTH_RESPONSE = "S=407A5589115FD0D6209F510FE9C04566932CDA56"

# RFC 2433 Appendix B.2 ("MyPw")
V1_CHALLENGE = H("102DB5DF085D3041")
V1_PASSWORD = Secret("MyPw")
V1_PASSWORD_HASH = H("FC156AF7EDCD6C0EDDE3337D427F4EAC")
V1_NT_RESPONSE = H("4E9D3C8F9CFD385D5BF4D3246791956CA4C351AB409A3D61")


def test_rfc2759_password_hash() -> None:
    assert nt_password_hash(V2_PASSWORD) == V2_PASSWORD_HASH
    assert hash_nt_password_hash(V2_PASSWORD_HASH) == V2_PASSWORD_HASH_HASH


def test_rfc2759_challenge_hash() -> None:
    assert challenge_hash(V2_PEER_CHALLENGE, V2_AUTH_CHALLENGE, V2_USER) == V2_CHALLENGE


def test_rfc2759_nt_response() -> None:
    assert challenge_response(V2_CHALLENGE, V2_PASSWORD_HASH) == V2_NT_RESPONSE
    got = generate_nt_response(V2_AUTH_CHALLENGE, V2_PEER_CHALLENGE, V2_USER, V2_PASSWORD_HASH)
    assert got == V2_NT_RESPONSE


def test_rfc2759_authenticator_response() -> None:
    got = generate_authenticator_response(
        V2_PASSWORD_HASH, V2_NT_RESPONSE, V2_PEER_CHALLENGE, V2_AUTH_CHALLENGE, V2_USER
    )
    assert got == V2_AUTH_RESPONSE


def test_rfc2759_domain_is_not_hashed() -> None:
    assert strip_domain("CORP\\User") == "User"
    assert challenge_hash(V2_PEER_CHALLENGE, V2_AUTH_CHALLENGE, "CORP\\User") == V2_CHALLENGE
    # and the user name does matter
    assert challenge_hash(V2_PEER_CHALLENGE, V2_AUTH_CHALLENGE, "user") != V2_CHALLENGE


def test_rfc2433_nt_hash_and_response() -> None:
    assert nt_password_hash(V1_PASSWORD) == V1_PASSWORD_HASH
    assert v1_nt_response(V1_CHALLENGE, V1_PASSWORD_HASH) == V1_NT_RESPONSE


def test_des_known_answer() -> None:
    # FIPS 81 / classic DES vector: key 0123456789ABCDEF (parity bits ignored), "Now is t".
    # Our 7-octet key form of 0123456789ABCDEF drops each octet's low (parity) bit.
    key8 = H("0123456789ABCDEF")
    bits = 0
    for b in key8:
        bits = (bits << 7) | (b >> 1)
    key7 = bits.to_bytes(7, "big")
    assert des_encrypt(b"Now is t", key7) == H("3FA40E8A984D4815")


def test_chap_md5_against_hashlib_and_fixed_vector() -> None:
    ident, secret, challenge = 0x2A, b"s3cret", bytes(range(16))
    assert chap_md5_response(ident, secret, challenge) == hashlib.md5(b"\x2a" + secret + challenge).digest()
    # fixed vector (computed once with an independent MD5 tool: printf '\x01MyPw' + challenge | md5sum)
    got = chap_md5_response(1, b"MyPw", H("c49c74a7d3f8fa006ea57190f28ab34c"))
    assert got == H("822c2bc654b1d0a8dbea8737fbbdde0e")
    # the identifier is part of the hash
    assert chap_md5_response(2, b"MyPw", H("c49c74a7d3f8fa006ea57190f28ab34c")) != got


@pytest.mark.parametrize(
    ("text", "error", "retry", "version", "message"),
    [
        (b"E=691 R=0 C=0011223344556677 V=3 M=Authentication failed", 691, False, 3, "Authentication failed"),
        (b"E=648 R=0 V=3", 648, False, 3, ""),
        (b"E=691 R=1 C=0011", 691, True, None, ""),
        (b"garbage", None, False, None, ""),
        (b"E=xx R=0 M=with E=1 inside", None, False, None, "with E=1 inside"),
    ],
)
def test_parse_failure(
    text: bytes, error: int | None, retry: bool, version: int | None, message: str
) -> None:
    f = parse_failure(text)
    assert (f.error, f.retry, f.version, f.message) == (error, retry, version, message)


def test_parse_success() -> None:
    assert parse_success(b"S=407A5589115FD0D6209F510FE9C04566932CDA56 M=hi") == (V2_AUTH_RESPONSE[2:], "hi")
    assert parse_success(b"S=407a5589115fd0d6209f510fe9c04566932cda56") == (V2_AUTH_RESPONSE[2:], "")
    assert parse_success(b"S=407A") == (None, "")
    assert parse_success(b"M=no auth") == (None, "no auth")
