"""LCP: options against scapy's dissectors, the Auth-Protocol policy, loopback, Echo, Protocol-Reject."""

from __future__ import annotations

import random

import pytest
from scapy.layers.ppp import (
    HDLC,
    PPP,
    PPP_LCP_Auth_Protocol_Option,
    PPP_LCP_Configure,
    PPP_LCP_Echo,
    PPP_LCP_Magic_Number_Option,
    PPP_LCP_MRU_Option,
    PPP_LCP_Option,
    PPP_LCP_Protocol_Reject,
    PPP_LCP_Terminate,
)

from sidecar.proto.ppp import frame as F
from sidecar.proto.ppp.auth.base import AuthMethod
from sidecar.proto.ppp.frame import Option
from sidecar.proto.ppp.fsm import Automaton, FsmConfig, NegotiationFailed, State, Verdict
from sidecar.proto.ppp.lcp import Keepalive, LcpHandler
from sidecar.proto.ppp.link import LinkDown, LinkRole, PppLink
from tests.unit.test_ppp_link import Harness, client_config, server_config


def lcp_handler(
    authenticator: bool = False, methods: tuple[AuthMethod, ...] = (AuthMethod.MSCHAP_V2,)
) -> LcpHandler:
    return LcpHandler(authenticator=authenticator, auth_methods=methods, mru=1400, rng=random.Random(3))


def first_lcp_request(link: PppLink) -> bytes:
    link.start(0.0)
    (frame,) = link.frames_to_send()
    return frame


# -- ours parsed by scapy -------------------------------------------------------------------------------


def test_scapy_parses_our_configure_request() -> None:
    server = PppLink(LinkRole.AUTHENTICATOR, server_config(), random.Random(1))
    pkt = HDLC(first_lcp_request(server))
    assert pkt[PPP].proto == 0xC021
    conf = pkt[PPP_LCP_Configure]
    assert conf.code == 1
    opts = {o.type: o for o in conf.options}
    assert opts[1].max_recv_unit == 1400
    assert opts[3].auth_protocol == 0xC223 and opts[3].algorithm == 0x81  # MS-CHAPv2
    assert opts[5].magic_number == server._lcp_h.magic
    assert set(opts) == {1, 3, 5, 7, 8}
    assert conf.len == len(bytes(conf))


def test_client_does_not_ask_the_server_to_authenticate() -> None:
    client = PppLink(LinkRole.PEER, client_config(), random.Random(1))
    conf = HDLC(first_lcp_request(client))[PPP_LCP_Configure]
    assert 3 not in {o.type for o in conf.options}


def test_scapy_parses_echo_reply_terminate_and_protocol_reject() -> None:
    h = Harness.make(client_config(), server_config())
    h.run()
    client = h.client
    magic = client._lcp_h.magic
    echo = bytes(
        HDLC() / PPP(proto=0xC021) / PPP_LCP_Echo(code=9, id=0x42, magic_number=0x1234, data=b"ping")
    )
    client.receive(echo, h.now)
    (reply,) = client.frames_to_send()
    parsed = HDLC(reply)[PPP_LCP_Echo]
    assert (parsed.code, parsed.id, parsed.magic_number, parsed.data) == (10, 0x42, magic, b"ping")

    client.receive(b"\xff\x03\x80\x2b\x01\x02\x03", h.now)  # IPX Control Protocol: we do not run it
    (rej,) = client.frames_to_send()
    pr = HDLC(rej)[PPP_LCP_Protocol_Reject]
    assert pr.code == 8 and pr.rejected_protocol == 0x802B
    assert bytes(pr.rejected_information) == b"\x01\x02\x03"

    client.close(h.now, "going home")
    (term,) = client.frames_to_send()
    t = HDLC(term)[PPP_LCP_Terminate]
    assert t.code == 5 and t.data == b"going home"


# -- scapy's parsed by ours -----------------------------------------------------------------------------


def test_we_judge_scapy_built_requests() -> None:
    client = PppLink(LinkRole.PEER, client_config(), random.Random(1))
    client.start(0.0)
    client.frames_to_send()
    req = (
        HDLC()
        / PPP(proto=0xC021)
        / PPP_LCP_Configure(
            code=1,
            id=7,
            options=[
                PPP_LCP_MRU_Option(max_recv_unit=1450),
                PPP_LCP_Auth_Protocol_Option(auth_protocol=0xC223, algorithm=0x81),
                PPP_LCP_Magic_Number_Option(magic_number=0xCAFEBABE),
                PPP_LCP_Option(type=2, data=b"\x00\x00\x00\x00"),  # ACCM: accepted, ignored
            ],
        )
    )
    client.receive(bytes(req), 0.0)
    (ack,) = client.frames_to_send()
    parsed = HDLC(ack)[PPP_LCP_Configure]
    assert parsed.code == 2 and parsed.id == 7
    assert (
        bytes(parsed.options[0]) + b"".join(bytes(o) for o in parsed.options[1:])
        == bytes(req[PPP_LCP_Configure])[4:]
    )
    h = client._lcp_h
    assert h.tx_mru == 1450 and h.peer_magic == 0xCAFEBABE and h.auth_required is AuthMethod.MSCHAP_V2


def test_unknown_and_quality_options_are_rejected_verbatim() -> None:
    client = PppLink(LinkRole.PEER, client_config(), random.Random(1))
    client.start(0.0)
    client.frames_to_send()
    req = (
        HDLC()
        / PPP(proto=0xC021)
        / PPP_LCP_Configure(
            code=1,
            id=8,
            options=[
                PPP_LCP_MRU_Option(max_recv_unit=1500),
                PPP_LCP_Option(type=4, data=b"\xc0\x25\x00\x00\x00\x0a"),  # LQR
                PPP_LCP_Option(type=13, data=b"\x06"),  # Callback
                PPP_LCP_Option(type=99, data=b"zz"),
            ],
        )
    )
    client.receive(bytes(req), 0.0)
    (rej,) = client.frames_to_send()
    parsed = HDLC(rej)[PPP_LCP_Configure]
    assert parsed.code == 4
    assert [o.type for o in parsed.options] == [4, 13, 99]
    assert bytes(parsed.options[2]) == b"\x63\x04zz"


# -- Auth-Protocol policy -------------------------------------------------------------------------------


def test_peer_naks_disallowed_method_with_preferred_then_fails_naming_the_fix() -> None:
    h = lcp_handler()
    pap = [Option(3, AuthMethod.PAP.option_data())]
    (judgement,) = h.judge(pap)
    assert judgement == Option(3, b"\xc2\x23\x81")
    with pytest.raises(NegotiationFailed) as exc:
        h.judge(pap)
    assert "requires PAP" in exc.value.reason and "add pap to --auth" in exc.value.reason


def test_peer_accepts_allowed_methods_only() -> None:
    h = lcp_handler(methods=(AuthMethod.MSCHAP_V2, AuthMethod.CHAP_MD5))
    assert h.judge([Option(3, b"\xc2\x23\x05")]) == [Verdict.ACK]
    assert h.judge([Option(3, b"\xc2\x23\x81")]) == [Verdict.ACK]
    assert isinstance(h.judge([Option(3, b"\xc2\x23\x80")])[0], Option)  # MS-CHAPv1: Nak


def test_peer_fails_after_server_cycles_through_disallowed_methods() -> None:
    h = lcp_handler()
    h.judge([Option(3, AuthMethod.PAP.option_data())])
    h.judge([Option(3, AuthMethod.CHAP_MD5.option_data())])
    h.judge([Option(3, AuthMethod.MSCHAP_V1.option_data())])
    with pytest.raises(NegotiationFailed, match=r"does not implement|not allowed"):
        h.judge([Option(3, b"\xc2\x27")])  # EAP


def test_authenticator_moves_down_its_list() -> None:
    h = lcp_handler(authenticator=True, methods=(AuthMethod.MSCHAP_V2, AuthMethod.MSCHAP_V1, AuthMethod.PAP))
    assert Option(3, b"\xc2\x23\x81") in h.build_request()
    h.on_nak([Option(3, AuthMethod.PAP.option_data())])  # the client wants PAP: we allow it
    assert Option(3, b"\xc0\x23") in h.build_request()
    h2 = lcp_handler(authenticator=True, methods=(AuthMethod.MSCHAP_V2, AuthMethod.MSCHAP_V1))
    h2.on_nak([Option(3, AuthMethod.PAP.option_data())])  # not ours: next in our list
    assert Option(3, b"\xc2\x23\x80") in h2.build_request()
    with pytest.raises(NegotiationFailed, match="will not authenticate"):
        h2.on_nak([Option(3, AuthMethod.PAP.option_data())])
    with pytest.raises(NegotiationFailed, match="refused to authenticate"):
        lcp_handler(authenticator=True).on_reject([Option(3, b"\xc2\x23\x81")])


def test_authenticator_rejects_being_asked_to_authenticate() -> None:
    assert lcp_handler(authenticator=True).judge([Option(3, b"\xc2\x23\x81")]) == [Verdict.REJECT]


# -- Magic-Number and loopback --------------------------------------------------------------------------


def test_looped_back_link_is_detected() -> None:
    fsm = Automaton(lcp_handler(), FsmConfig())
    fsm.open(0.0)
    fsm.up(0.0)
    for _ in range(20):
        for packet in fsm.take_packets():
            fsm.receive(packet, 0.0)  # everything we send comes straight back
        if fsm.state in (State.CLOSING, State.CLOSED, State.STOPPED):
            break
    assert fsm.failed and fsm.reason is not None and "looped back" in fsm.reason


def test_equal_magic_is_naked_with_a_new_value_and_zero_magic_too() -> None:
    h = lcp_handler()
    same = h.judge([Option(5, h.magic.to_bytes(4, "big"))])[0]
    assert isinstance(same, Option) and same.data != h.magic.to_bytes(4, "big")
    zero = h.judge([Option(5, bytes(4))])[0]
    assert isinstance(zero, Option) and zero.data != bytes(4)
    old = h.magic
    h.on_nak([Option(5, b"\x01\x02\x03\x04")])
    assert h.magic != old


# -- Keepalive ------------------------------------------------------------------------------------------


def test_keepalive_counts_missed_replies() -> None:
    k = Keepalive(interval=10.0, failures=3)
    k.start(0.0)
    assert k.next_deadline() == 10.0 and not k.due(9.9) and k.due(10.0)
    k.sent(1, 10.0)
    assert k.answered(1, 10.25) == pytest.approx(0.25)
    assert k.answered(1, 10.3) is None  # duplicate reply
    for i, t in enumerate((20.0, 30.0, 40.0), start=2):
        k.sent(i, t)
    assert k.missed == 2 and not k.dead
    k.sent(5, 50.0)
    assert k.dead
    disabled = Keepalive(interval=0.0, failures=3)
    disabled.start(0.0)
    assert disabled.next_deadline() is None


def test_keepalive_counts_data_from_the_peer_as_an_answer() -> None:
    k = Keepalive(interval=1.0, failures=2)
    k.start(0.0)
    k.sent(1, 1.0, heard=0)
    k.sent(2, 2.0, heard=5)  # no reply to 1, but five data packets arrived meanwhile
    assert k.missed == 0
    k.sent(3, 3.0, heard=5)  # silence for an interval
    assert k.missed == 1 and not k.dead
    k.sent(4, 4.0, heard=5)
    assert k.dead
    k.start(10.0)
    k.sent(1, 11.0, heard=5)
    assert k.answered(1, 11.5) == pytest.approx(0.5)
    k.sent(2, 12.0, heard=5)
    k.sent(3, 13.0, heard=5)
    assert k.missed == 1 and k.answered(2, 13.01) == pytest.approx(1.01)  # a late reply still counts
    assert k.missed == 0


def test_protocol_reject_of_ipcp_brings_the_link_down() -> None:
    h = Harness.make(client_config(), server_config())
    h.run()
    reject = F.encode_frame(
        F.LCP, F.encode_control(F.PROTOCOL_REJECT, 77, b"\x80\x21\x01\x01\x00\x04"), acfc=False, pfc=False
    )
    h.client.receive(reject, h.now)
    downs = [e for e in h.client.events() if isinstance(e, LinkDown)]
    assert len(downs) == 1 and "rejected IPCP" in downs[0].reason


def test_no_protocol_reject_before_lcp_is_opened_and_discard_is_silent() -> None:
    client = PppLink(LinkRole.PEER, client_config(), random.Random(1))
    client.start(0.0)
    client.frames_to_send()
    client.receive(b"\xff\x03\x80\x2b\x01\x01\x00\x04", 0.0)  # IPXCP before LCP is up: discarded
    assert client.frames_to_send() == [] and client.counters.protocol_rejects_sent == 0
    assert client.counters.rx_discarded == 1
    h = Harness.make(client_config(), server_config())
    h.run()
    discard = F.encode_frame(
        F.LCP, F.encode_control(F.DISCARD_REQUEST, 5, b"\x00\x00\x00\x00x"), acfc=False, pfc=False
    )
    h.client.receive(discard, h.now)
    assert h.client.frames_to_send() == [] and h.client._lcp_h.discards == 1


def test_small_mru_is_naked_and_nak_of_our_mru_is_taken() -> None:
    h = lcp_handler()
    assert h.judge([Option(1, (64).to_bytes(2, "big"))]) == [Option(1, (128).to_bytes(2, "big"))]
    h.on_nak([Option(1, (1300).to_bytes(2, "big"))])
    assert Option(1, (1300).to_bytes(2, "big")) in h.build_request()
    h.on_reject([Option(1, b"\x05\x78"), Option(7), Option(8)])
    assert [o.type for o in h.build_request()] == [5]
