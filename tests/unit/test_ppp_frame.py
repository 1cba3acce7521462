"""PPP framing and the control packet / option codecs (RFC 1661 §2, §5, §6.5, §6.6)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.proto.errors import PppError
from sidecar.proto.ppp import frame as F


@pytest.mark.parametrize(
    ("raw", "protocol", "payload"),
    [
        (b"\xff\x03\xc0\x21\x01\x02", F.LCP, b"\x01\x02"),
        (b"\xc0\x21\x01\x02", F.LCP, b"\x01\x02"),  # ACFC
        (b"\xff\x03\x00\x21E", F.IPV4, b"E"),
        (b"\xff\x03\x21E", F.IPV4, b"E"),  # PFC
        (b"\x21E", F.IPV4, b"E"),  # ACFC + PFC
        (b"\x00\xfd\x90\x00", F.COMPRESSED, b"\x90\x00"),
        (b"\xfd\x90\x00", F.COMPRESSED, b"\x90\x00"),
        (b"\x80\x21", F.IPCP, b""),
    ],
)
def test_decode_accepts_every_form(raw: bytes, protocol: int, payload: bytes) -> None:
    got, info = F.decode_frame(raw)
    assert got == protocol
    assert bytes(info) == payload


@pytest.mark.parametrize("raw", [b"", b"\xff\x03", b"\xff\x03\x80", b"\x80\x20\x00", b"\xff\x05\x00\x21"])
def test_decode_rejects_bad_frames(raw: bytes) -> None:
    with pytest.raises(PppError):
        F.decode_frame(raw)


def test_encode_compressions() -> None:
    assert F.encode_frame(F.IPV4, b"x", acfc=False, pfc=False) == b"\xff\x03\x00\x21x"
    assert F.encode_frame(F.IPV4, b"x", acfc=True, pfc=False) == b"\x00\x21x"
    assert F.encode_frame(F.IPV4, b"x", acfc=True, pfc=True) == b"\x21x"
    assert F.encode_frame(F.IPCP, b"x", acfc=True, pfc=True) == b"\x80\x21x"  # not compressible
    # 0x00FF compressed would be one 0xFF octet, which a receiver reads as the Address field
    assert F.encode_frame(0x00FF, b"\x03\x00", acfc=True, pfc=True) == b"\x00\xff\x03\x00"
    # LCP never compresses (RFC 1661 §6.5, §6.6)
    assert F.encode_frame(F.LCP, b"x", acfc=True, pfc=True) == b"\xff\x03\xc0\x21x"


SAMPLE_PROTOCOLS = [F.LCP, F.IPCP, F.IPV4, F.IPV6, F.COMPRESSED, F.CCP, F.CHAP, 0x3D, 0x2A01, 0xFF]


@given(
    protocol=st.sampled_from(SAMPLE_PROTOCOLS),
    payload=st.binary(max_size=40),
    acfc=st.booleans(),
    pfc=st.booleans(),
)
def test_frame_roundtrip(protocol: int, payload: bytes, acfc: bool, pfc: bool) -> None:
    got, info = F.decode_frame(F.encode_frame(protocol, payload, acfc=acfc, pfc=pfc))
    assert (got, bytes(info)) == (protocol, payload)


@given(st.binary(max_size=64))
def test_decoders_raise_only_ppp_error(data: bytes) -> None:
    for fn in (F.decode_frame, F.decode_control, F.decode_options):
        with contextlib.suppress(PppError):
            fn(data)


def test_control_packet_padding_is_ignored_and_length_checked() -> None:
    pkt = F.decode_control(b"\x01\x07\x00\x08\x01\x04\x05\xdc\x00\x00\x00")
    assert (pkt.code, pkt.identifier, pkt.data) == (1, 7, b"\x01\x04\x05\xdc")
    assert pkt.length == 8
    with pytest.raises(PppError, match="exceeds"):
        F.decode_control(b"\x01\x07\x00\x09\x01\x04\x05\xdc")
    with pytest.raises(PppError, match="minimum"):
        F.decode_control(b"\x01\x07\x00\x03")


def test_options_codec() -> None:
    opts = F.decode_options(b"\x01\x04\x05\xdc\x07\x02\x05\x06\x12\x34\x56\x78")
    assert opts == [F.Option(1, b"\x05\xdc"), F.Option(7), F.Option(5, b"\x12\x34\x56\x78")]
    assert F.encode_options(opts) == b"\x01\x04\x05\xdc\x07\x02\x05\x06\x12\x34\x56\x78"
    with pytest.raises(PppError, match="Length 1"):
        F.decode_options(b"\x01\x01")
    with pytest.raises(PppError, match="past the packet end"):
        F.decode_options(b"\x01\x05\x00")
    with pytest.raises(PppError, match="truncated"):
        F.decode_options(b"\x01\x02\x03")


def test_scapy_parses_our_frames() -> None:
    from scapy.layers.ppp import HDLC, PPP, PPP_LCP_Configure

    raw = F.encode_frame(
        F.LCP,
        F.encode_control(F.CONFIGURE_REQUEST, 9, F.encode_options([F.Option(1, b"\x05\x78")])),
        acfc=False,
        pfc=False,
    )
    pkt = HDLC(raw)
    assert pkt[PPP].proto == F.LCP
    assert pkt[PPP_LCP_Configure].id == 9
    assert pkt[PPP_LCP_Configure].options[0].max_recv_unit == 0x578
    # PFC: scapy's PPP reads a one-byte protocol too
    assert PPP(F.encode_frame(F.IPV4, b"", acfc=True, pfc=True)).proto == F.IPV4
