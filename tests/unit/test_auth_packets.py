"""Packet layouts checked against scapy's independent dissectors (scapy.layers.ppp), both ways."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.ppp import (
    PPP_CHAP,
    PPP_PAP,
    PPP_CHAP_ChallengeResponse,
    PPP_PAP_Request,
    PPP_PAP_Response,
)

from sidecar.proto.errors import PppError
from sidecar.proto.ppp.auth import AuthMethod, AuthSuccess, make_authenticator, make_peer
from sidecar.proto.ppp.auth.base import decode_packet, encode_packet
from sidecar.proto.ppp.auth.chap import CHALLENGE, RESPONSE, decode_value_name, encode_value_name
from sidecar.proto.ppp.auth.pap import (
    AUTHENTICATE_ACK,
    AUTHENTICATE_NAK,
    decode_authenticate_request,
    decode_reply_message,
    encode_authenticate_request,
    encode_reply,
)
from sidecar.proto.secret import Secret

names = st.binary(min_size=0, max_size=60)


@given(ident=st.integers(0, 255), user=names, password=names)
def test_pap_request_ours_parsed_by_scapy(ident: int, user: bytes, password: bytes) -> None:
    pkt = PPP_PAP(encode_authenticate_request(ident, user, password))
    assert isinstance(pkt, PPP_PAP_Request)
    assert (pkt.code, pkt.id, pkt.len) == (1, ident, 6 + len(user) + len(password))
    assert (pkt.username_len, pkt.username, pkt.passwd_len, pkt.password) == (
        len(user),
        user,
        len(password),
        password,
    )


@given(ident=st.integers(0, 255), user=names, password=names)
def test_pap_request_scapys_parsed_by_us(ident: int, user: bytes, password: bytes) -> None:
    code, got_id, data = decode_packet(bytes(PPP_PAP_Request(id=ident, username=user, password=password)))
    assert (code, got_id) == (1, ident)
    assert decode_authenticate_request(data) == (user, password)


@given(ident=st.integers(0, 255), msg=names, ack=st.booleans())
def test_pap_reply_both_ways(ident: int, msg: bytes, ack: bool) -> None:
    code = AUTHENTICATE_ACK if ack else AUTHENTICATE_NAK
    pkt = PPP_PAP(encode_reply(code, ident, msg))
    assert isinstance(pkt, PPP_PAP_Response)
    assert (pkt.code, pkt.id, pkt.msg_len, pkt.message) == (code, ident, len(msg), msg)
    c, i, data = decode_packet(bytes(PPP_PAP_Response(code=code, id=ident, message=msg)))
    assert (c, i, decode_reply_message(data)) == (code, ident, msg)


@given(
    ident=st.integers(0, 255),
    value=st.binary(min_size=1, max_size=64),
    name=names,
    code=st.sampled_from([CHALLENGE, RESPONSE]),
)
def test_chap_challenge_response_both_ways(ident: int, value: bytes, name: bytes, code: int) -> None:
    pkt = PPP_CHAP(encode_value_name(code, ident, value, name))
    assert isinstance(pkt, PPP_CHAP_ChallengeResponse)
    assert (pkt.code, pkt.id, pkt.len) == (code, ident, 5 + len(value) + len(name))
    assert (pkt.value_size, pkt.value, pkt.optional_name) == (len(value), value, name)
    raw = bytes(PPP_CHAP_ChallengeResponse(code=code, id=ident, value=value, optional_name=name))
    c, i, data = decode_packet(raw)
    assert (c, i) == (code, ident)
    assert decode_value_name(data) == (value, name)


@given(ident=st.integers(0, 255), msg=names, code=st.sampled_from([3, 4]))
def test_chap_success_failure_both_ways(ident: int, msg: bytes, code: int) -> None:
    pkt = PPP_CHAP(encode_packet(code, ident, msg))
    assert (pkt.code, pkt.id, pkt.len, pkt.data) == (code, ident, 4 + len(msg), msg)
    assert decode_packet(bytes(PPP_CHAP(code=code, id=ident, data=msg))) == (code, ident, msg)


@pytest.mark.parametrize("method", list(AuthMethod))
def test_live_exchange_packets_dissect_in_scapy(method: AuthMethod) -> None:
    rng = random.Random(5)
    peer = make_peer(method, "alice", Secret("pw"), rng)
    auth = make_authenticator(method, {"alice": Secret("pw")}.get, "srv", rng)
    from_peer = peer.start(0.0)
    from_auth = auth.start(0.0)
    seen: list[object] = []
    for _ in range(4):
        seen += [PPP_PAP(p) if method is AuthMethod.PAP else PPP_CHAP(p) for p in from_peer + from_auth]
        nxt_auth = [o for p in from_peer for o in auth.receive(p, 0.0)]
        from_peer = [o for p in from_auth for o in peer.receive(p, 0.0)]
        from_auth = nxt_auth
    assert isinstance(peer.result, AuthSuccess)
    if method is AuthMethod.PAP:
        req = next(p for p in seen if isinstance(p, PPP_PAP_Request))
        assert (req.username, req.password) == (b"alice", b"pw")
        assert any(isinstance(p, PPP_PAP_Response) and p.code == 2 for p in seen)
    else:
        chal = next(p for p in seen if isinstance(p, PPP_CHAP_ChallengeResponse) and p.code == 1)
        resp = next(p for p in seen if isinstance(p, PPP_CHAP_ChallengeResponse) and p.code == 2)
        assert chal.optional_name == b"srv" and resp.optional_name == b"alice"
        assert resp.id == chal.id
        expect = {
            AuthMethod.CHAP_MD5: (16, 16),
            AuthMethod.MSCHAP_V1: (8, 49),
            AuthMethod.MSCHAP_V2: (16, 49),
        }
        assert (chal.value_size, resp.value_size) == expect[method]
        success = next(p for p in seen if isinstance(p, PPP_CHAP) and p.code == 3)
        assert success.id == resp.id


def test_decode_packet_errors_name_the_problem() -> None:
    with pytest.raises(PppError, match="too short"):
        decode_packet(b"\x01\x02")
    with pytest.raises(PppError, match="below the minimum"):
        decode_packet(b"\x01\x02\x00\x03")
    with pytest.raises(PppError, match="truncated"):
        decode_packet(b"\x01\x02\x00\x09abc")
    # padding after Length is ignored (RFC 1661 §5)
    assert decode_packet(b"\x03\x02\x00\x06okPADDING") == (3, 2, b"ok")


def test_value_name_errors() -> None:
    with pytest.raises(PppError, match="no Value-Size"):
        decode_value_name(b"")
    with pytest.raises(PppError, match="Value-Size is 0"):
        decode_value_name(b"\x00name")
    with pytest.raises(PppError, match="truncated"):
        decode_value_name(b"\x10abc")
    with pytest.raises(PppError, match="truncated"):
        decode_authenticate_request(b"\x05ab")


@given(st.binary(max_size=40))
def test_decoders_raise_only_ppperror(blob: bytes) -> None:
    for fn in (decode_packet, decode_value_name, decode_authenticate_request):
        with contextlib.suppress(PppError):
            fn(blob)
