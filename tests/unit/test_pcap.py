"""The pcap writer (``--pcap``): masking of authentication secrets, the record format read back with
scapy's independent reader/dissectors, and the link tap on two real PppLinks talking in-process."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.ppp import (
    DIR_PPP,
    PPP,
    PPP_IPCP,
    PPP_CHAP_ChallengeResponse,
    PPP_LCP_Configure,
    PPP_PAP_Request,
)
from scapy.packet import Packet, Raw
from scapy.utils import PcapReader, rdpcap

from sidecar.observe.pcap import (
    DIR_IN,
    DIR_OUT,
    LINKTYPE_PPP_WITH_DIR,
    PAP_MASK,
    PcapTap,
    mask_auth,
    tap_link,
)
from sidecar.proto.ppp import frame as F
from sidecar.proto.ppp.auth.base import AuthMethod
from sidecar.proto.ppp.mppe import MppePolicy
from tests.unit.test_ppp_link import USERS, Harness, client_config, server_config

PASSWORD = USERS["alice"].reveal()


def _dir(record: Packet) -> int:
    # (scapy's Packet.direction is pcapng metadata and shadows the DIR_PPP field of the same name)
    value: int = record[DIR_PPP].getfieldval("direction")
    return value


# -- masking ------------------------------------------------------------------------------------------
def test_pap_password_is_masked_and_lengths_stay_consistent() -> None:
    info = bytes(PPP_PAP_Request(id=7, username=b"alice", password=b"s3cret-pass"))
    masked = mask_auth(F.PAP, info)
    assert b"s3cret-pass" not in masked
    parsed = PPP_PAP_Request(masked)  # scapy's own dissector must still read it
    assert parsed.id == 7 and parsed.username == b"alice" and parsed.password == PAP_MASK
    assert parsed.len == len(masked) and parsed.passwd_len == len(PAP_MASK)
    # PAP is masked even when hashes are kept: it is the cleartext password
    assert mask_auth(F.PAP, info, keep_hashes=True) == masked


def test_pap_ack_is_left_alone() -> None:
    ack = F.encode_control(2, 7, b"\x07Welcome")
    assert mask_auth(F.PAP, ack) == ack


@given(
    user=st.binary(max_size=40),
    password=st.binary(min_size=1, max_size=60).map(lambda b: b"PW" + b),
)
def test_pap_masking_never_leaks_the_password(user: bytes, password: bytes) -> None:
    info = bytes(PPP_PAP_Request(id=1, username=user, password=password))
    masked = mask_auth(F.PAP, info)
    assert password not in masked[4 + 1 + len(user) :]  # after the header and the user name
    assert PPP_PAP_Request(masked).username == user


@given(st.binary(max_size=80))
def test_masking_garbage_never_raises_and_keeps_the_header(data: bytes) -> None:
    for protocol in (F.PAP, F.CHAP):
        out = mask_auth(protocol, data)
        if len(data) >= 4 and (protocol == F.CHAP or data[0] == 1):
            assert out[:2] == data[:2]


def test_truncated_pap_request_is_masked_whole() -> None:
    info = bytes(PPP_PAP_Request(id=1, username=b"alice", password=b"hunter2"))
    broken = info[:4] + b"\xff" + info[5:]  # peer-id length runs past the end
    masked = mask_auth(F.PAP, broken)
    assert b"hunter2" not in masked and masked[:4] == broken[:4] and len(masked) == len(broken)


def test_chap_response_value_is_zeroed_name_kept() -> None:
    value = bytes(range(1, 50))  # an MS-CHAPv2 response is 49 bytes
    info = bytes(PPP_CHAP_ChallengeResponse(code=2, id=3, value=value, optional_name=b"alice"))
    masked = mask_auth(F.CHAP, info)
    parsed = PPP_CHAP_ChallengeResponse(masked)
    assert parsed.value == bytes(49) and parsed.optional_name == b"alice" and len(masked) == len(info)
    assert mask_auth(F.CHAP, info, keep_hashes=True) == info


def test_mschapv2_success_authenticator_response_is_masked() -> None:
    s_value = "0123456789ABCDEF0123456789ABCDEF01234567"
    info = F.encode_control(3, 3, f"S={s_value} M=Welcome".encode())
    masked = mask_auth(F.CHAP, info)
    assert s_value.encode() not in masked and b"M=Welcome" in masked and len(masked) == len(info)
    assert mask_auth(F.CHAP, info, keep_hashes=True) == info


def test_chap_challenge_and_failure_are_kept_change_password_masked() -> None:
    challenge = F.encode_control(1, 1, b"\x10" + bytes(range(16)) + b"server")
    failure = F.encode_control(4, 1, b"E=691 R=1 C=00112233445566778899AABBCCDDEEFF V=3")
    change = F.encode_control(7, 1, b"\xaa" * 60)
    assert mask_auth(F.CHAP, challenge) == challenge
    assert mask_auth(F.CHAP, failure) == failure
    assert mask_auth(F.CHAP, change) == change[:4] + bytes(60)


# -- the file -----------------------------------------------------------------------------------------
def test_records_read_back_with_scapy(tmp_path: Path) -> None:
    path = tmp_path / "t.pcap"
    tap = PcapTap(path)
    lcp = F.encode_control(1, 1, b"\x01\x04\x05\xdc")
    tap.frame(DIR_OUT, F.encode_frame(F.LCP, lcp, acfc=False, pfc=False))
    # IPCP with both header compressions negotiated: written with FF 03 and a 2-octet protocol
    ipcp = F.encode_control(1, 2, b"\x03\x06\x0a\x00\x00\x01")
    tap.frame(DIR_IN, F.encode_frame(F.IPCP, ipcp, acfc=True, pfc=True))
    tap.frame(DIR_IN, F.encode_frame(F.COMPRESSED, b"\x90\x01" + b"x" * 30, acfc=True, pfc=True))  # MPPE
    tap.frame(DIR_IN, b"\x00")  # malformed: skipped, counted
    packet = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2) / b"payload-1")
    tap.ip(DIR_IN, packet)
    tap.ip(DIR_OUT, b"\x60" + bytes(39))  # an IPv6 header
    tap.ip(DIR_OUT, b"\x10garbage")  # not IP: skipped
    tap.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert tap.counters.records == 4 and tap.counters.skipped == 2

    with PcapReader(str(path)) as reader:
        assert reader.linktype == LINKTYPE_PPP_WITH_DIR
    records = rdpcap(str(path))
    assert [_dir(p) for p in records] == [DIR_OUT, DIR_IN, DIR_IN, DIR_OUT]
    assert records[0].haslayer(PPP_LCP_Configure) and records[0][PPP_LCP_Configure].id == 1
    assert records[1].haslayer(PPP_IPCP) and bytes(records[1])[1:5] == b"\xff\x03\x80\x21"
    assert records[2][PPP].proto == 0x0021 and records[2][IP].src == "10.0.0.1"
    assert bytes(records[2][Raw].load) == b"payload-1"
    assert records[3][PPP].proto == 0x0057


def test_shared_tap_is_one_writer_per_path_and_reopens_after_close(tmp_path: Path) -> None:
    path = tmp_path / "s.pcap"
    a = PcapTap.shared(path)
    assert PcapTap.shared(path) is a
    a.ip(DIR_IN, bytes(IP() / b"one"))
    a.close()
    b = PcapTap.shared(path)
    assert b is not a
    b.close()


def test_write_error_stops_the_capture_not_the_caller(tmp_path: Path) -> None:
    tap = PcapTap(tmp_path / "e.pcap")
    assert tap._file is not None
    tap._file.close()  # what a vanished disk looks like to the writer
    tap.ip(DIR_IN, bytes(IP() / b"x"))
    tap.frame(DIR_OUT, F.encode_frame(F.LCP, F.encode_control(9, 1, b"\0\0\0\0"), acfc=False, pfc=False))
    assert tap.closed and tap.counters.errors == 1


# -- the link tap: two real links --------------------------------------------------------------------
def _udp(src: str, dst: str, payload: bytes) -> bytes:
    return bytes(IP(src=src, dst=dst) / UDP(sport=4000, dport=5000) / payload)


@pytest.mark.parametrize(
    ("method", "mppe"),
    [(AuthMethod.MSCHAP_V2, MppePolicy.REQUIRE), (AuthMethod.PAP, MppePolicy.REFUSE)],
)
def test_tapped_link_writes_control_and_clear_ip_both_ways(
    tmp_path: Path, method: AuthMethod, mppe: MppePolicy
) -> None:
    h = Harness.make(
        client_config(auth_methods=(method,), mppe=mppe), server_config(auth_methods=(method,), mppe=mppe)
    )
    path = tmp_path / "link.pcap"
    tap = PcapTap(path)
    tap_link(h.client, tap)
    h.run()
    up = h.up(0)
    assert (up.encryption != "none") == (mppe is MppePolicy.REQUIRE)
    out_packet = _udp(str(up.local_ip), str(up.peer_ip), b"to-server-0123")
    in_packet = _udp(str(up.peer_ip), str(up.local_ip), b"from-server-4567")
    frame = h.client.send_ip(out_packet, h.now)
    assert frame is not None and h.server.receive(frame, h.now) == [out_packet]
    back = h.server.send_ip(in_packet, h.now)
    assert back is not None and h.client.receive(back, h.now) == [in_packet]
    tap.close()

    raw = path.read_bytes()
    assert PASSWORD.encode() not in raw
    records = rdpcap(str(path))
    seen = {(_dir(p), p[PPP].proto) for p in records}
    for direction in (DIR_IN, DIR_OUT):
        assert (direction, F.LCP) in seen and (direction, F.IPCP) in seen
    assert (DIR_OUT, method.protocol) in seen and (DIR_IN, method.protocol) in seen
    if mppe is MppePolicy.REQUIRE:
        assert (DIR_OUT, F.CCP) in seen and (DIR_IN, F.CCP) in seen
        responses = [p for p in records if p.haslayer(PPP_CHAP_ChallengeResponse) and p[PPP].proto == F.CHAP]
        responses = [p for p in responses if p[PPP_CHAP_ChallengeResponse].code == 2]
        assert len(responses) == 1 and bytes(responses[0][PPP_CHAP_ChallengeResponse].value) == bytes(49)
    else:
        requests = [p for p in records if p.haslayer(PPP_PAP_Request)]
        assert len(requests) == 1 and requests[0][PPP_PAP_Request].password == PAP_MASK
        assert requests[0][PPP_PAP_Request].username == b"alice"
    assert 0x00FD not in {proto for _, proto in seen}, "MPPE ciphertext is never written"
    ips = [(_dir(p), bytes(p[IP])) for p in records if p.haslayer(IP)]
    assert ips == [(DIR_OUT, out_packet), (DIR_IN, in_packet)]


# -- the settings and the tunnel's hook ---------------------------------------------------------------
@pytest.mark.parametrize("keep", [False, True])
def test_up_settings_reach_the_session_tap(tmp_path: Path, keep: bool) -> None:
    from ipaddress import IPv4Address

    from sidecar.config import build_up_settings
    from sidecar.stack import client_stack
    from sidecar.state import StatusBoard
    from sidecar.tunnel import Session

    path = tmp_path / f"up-{keep}.pcap"
    flags: dict[str, object] = {"server": "198.51.100.1", "user": "alice", "pcap": str(path)}
    if keep:
        flags["pcap_auth_hashes"] = True
    s = build_up_settings(flags, {"PPTP_PASSWORD": PASSWORD})
    assert s.pcap == path and s.pcap_auth_hashes is keep
    session = Session(s, StatusBoard(), IPv4Address("198.51.100.1"))
    session.stack = client_stack(s)
    session._open_capture(path)
    try:
        assert session.capture is not None and session.capture.keep_auth_hashes is keep
        assert session.stack.on_link is not None and path.exists()
    finally:
        session.capture.close()
