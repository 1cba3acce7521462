"""IPCP (against scapy's PPP_IPCP), IPV6CP and CCP/MPPE option logic; MPPE data-path rules on the link."""

from __future__ import annotations

import random
from ipaddress import IPv4Address

import pytest
from scapy.layers.ppp import (
    HDLC,
    PPP_IPCP,
    PPP_IPCP_Option,
    PPP_IPCP_Option_DNS1,
    PPP_IPCP_Option_DNS2,
    PPP_IPCP_Option_IPAddress,
    PPP_IPCP_Option_NBNS1,
)

from sidecar.proto.ppp import frame as F
from sidecar.proto.ppp.ccp import REFUSED_REASON, CcpHandler
from sidecar.proto.ppp.frame import Option
from sidecar.proto.ppp.fsm import Automaton, NegotiationFailed, Verdict
from sidecar.proto.ppp.ipcp import IpcpHandler
from sidecar.proto.ppp.ipv6cp import Ipv6cpHandler
from sidecar.proto.ppp.mppe import MPPE_C, MPPE_H, MPPE_L, MPPE_M, MPPE_S, MppePolicy
from tests.unit.test_ppp_link import Harness, client_config, ipv4_packet, server_config

ZERO = IPv4Address(0)


def ipcp_frame(packet: bytes) -> bytes:
    return F.encode_frame(F.IPCP, packet, acfc=False, pfc=False)


# -- IPCP ------------------------------------------------------------------------------------------------


def test_scapy_parses_client_ipcp_request() -> None:
    fsm = Automaton(IpcpHandler(authenticator=False))
    fsm.open(0.0)
    fsm.up(0.0)
    (req,) = fsm.take_packets()
    parsed = HDLC(ipcp_frame(req))[PPP_IPCP]
    assert parsed.code == 1
    assert [(o.type, o.data) for o in parsed.options] == [(3, "0.0.0.0"), (129, "0.0.0.0"), (131, "0.0.0.0")]


def test_client_takes_scapy_built_nak_and_server_reject_of_dns() -> None:
    h = IpcpHandler(authenticator=False)
    fsm = Automaton(h)
    fsm.open(0.0)
    fsm.up(0.0)
    req = F.decode_control(fsm.take_packets()[0])
    nak = PPP_IPCP(
        code=3,
        id=req.identifier,
        options=[
            PPP_IPCP_Option_IPAddress(data="192.0.2.7"),
            PPP_IPCP_Option_DNS1(data="192.0.2.53"),
            PPP_IPCP_Option_DNS2(data="192.0.2.54"),
        ],
    )
    fsm.receive(bytes(nak), 0.0)
    again = F.decode_control(fsm.take_packets()[0])
    assert F.decode_options(again.data) == [
        Option(3, IPv4Address("192.0.2.7").packed),
        Option(129, IPv4Address("192.0.2.53").packed),
        Option(131, IPv4Address("192.0.2.54").packed),
    ]
    rej = PPP_IPCP(code=4, id=again.identifier, options=[PPP_IPCP_Option_DNS2(data="192.0.2.54")])
    fsm.receive(bytes(rej), 0.0)
    third = F.decode_control(fsm.take_packets()[0])
    assert [o.type for o in F.decode_options(third.data)] == [3, 129]
    fsm.receive(F.encode_control(F.CONFIGURE_ACK, third.identifier, third.data), 0.0)
    assert h.local_ip == IPv4Address("192.0.2.7") and h.dns == (IPv4Address("192.0.2.53"),)


def test_client_fails_when_server_rejects_ip_address() -> None:
    with pytest.raises(NegotiationFailed, match="will not assign us an IPv4 address"):
        IpcpHandler(authenticator=False).on_reject([Option(3, bytes(4))])


def test_client_rejects_vj_nbns_and_dns_requests_from_server() -> None:
    h = IpcpHandler(authenticator=False)
    req = PPP_IPCP(
        code=1,
        id=1,
        options=[
            PPP_IPCP_Option_IPAddress(data="10.0.0.1"),
            PPP_IPCP_Option(type=2, data=b"\x00\x2d\x0f\x01"),  # VJ
            PPP_IPCP_Option_NBNS1(data="0.0.0.0"),
            PPP_IPCP_Option_DNS1(data="0.0.0.0"),
        ],
    )
    options = F.decode_options(bytes(req)[4:])
    assert h.judge(options) == [Verdict.ACK, Verdict.REJECT, Verdict.REJECT, Verdict.REJECT]


def test_authenticator_assigns_address_and_dns_by_nak() -> None:
    h = IpcpHandler(
        authenticator=True,
        local_ip=IPv4Address("10.1.0.1"),
        peer_ip=IPv4Address("10.1.0.9"),
        dns=(IPv4Address("10.1.0.53"),),
    )
    asked = [Option(3, bytes(4)), Option(129, bytes(4)), Option(131, bytes(4))]
    assert h.judge(asked) == [
        Option(3, IPv4Address("10.1.0.9").packed),
        Option(129, IPv4Address("10.1.0.53").packed),
        Verdict.REJECT,  # no secondary DNS configured
    ]
    assert h.judge([Option(3, IPv4Address("10.1.0.9").packed)]) == [Verdict.ACK]
    assert h.hints([]) == [Option(3, IPv4Address("10.1.0.9").packed)]
    assert h.build_request() == [Option(3, IPv4Address("10.1.0.1").packed)]


# -- IPV6CP ----------------------------------------------------------------------------------------------


def test_ipv6cp_naks_zero_and_colliding_identifiers() -> None:
    h = Ipv6cpHandler(random.Random(4))
    assert h.local_id != 0
    for value in (0, h.local_id):
        (j,) = h.judge([Option(1, value.to_bytes(8, "big"))])
        assert isinstance(j, Option) and int.from_bytes(j.data, "big") not in (0, h.local_id)
    assert h.judge([Option(1, (h.local_id ^ 1).to_bytes(8, "big"))]) == [Verdict.ACK]
    assert h.judge([Option(2, b"\x00\x2d")]) == [Verdict.REJECT]
    h.on_nak([Option(1, (77).to_bytes(8, "big"))])
    assert h.local_id == 77


# -- CCP / MPPE ------------------------------------------------------------------------------------------


def mppe(bits: int) -> Option:
    return Option(18, bits.to_bytes(4, "big"))


def ccp(
    policy: MppePolicy = MppePolicy.REQUIRE,
    keys: frozenset[int] = frozenset({40, 56, 128}),
    stateful: bool = False,
) -> CcpHandler:
    return CcpHandler(policy=policy, key_bits=keys, stateful=stateful)


def test_ccp_request_and_judgements() -> None:
    h = ccp()
    assert h.build_request() == [mppe(MPPE_H | MPPE_S | MPPE_M | MPPE_L)]
    assert h.judge([mppe(MPPE_H | MPPE_S)]) == [Verdict.ACK]
    # several key bits: Nak with the strongest we share
    assert h.judge([mppe(MPPE_H | MPPE_S | MPPE_L)]) == [mppe(MPPE_H | MPPE_S)]
    # MPPC (C bit) refused: Nak it away
    assert h.judge([mppe(MPPE_H | MPPE_S | MPPE_C)]) == [mppe(MPPE_H | MPPE_S)]
    # stateful asked, we want stateless
    assert h.judge([mppe(MPPE_S)]) == [mppe(MPPE_H | MPPE_S)]
    # compression protocols rejected: Deflate 26, BSD 21, Predictor 1
    assert h.judge([Option(26, b"\x78\x00"), Option(21, b"\x41"), Option(1)]) == [Verdict.REJECT] * 3


def test_ccp_nak_narrows_our_offer() -> None:
    h = ccp()
    h.on_nak([mppe(MPPE_H | MPPE_M)])
    assert h.build_request() == [mppe(MPPE_H | MPPE_M)]


def test_ccp_require_fails_on_reject_optional_goes_clear() -> None:
    with pytest.raises(NegotiationFailed) as exc:
        ccp().on_reject([mppe(MPPE_H | MPPE_S)])
    assert exc.value.reason == REFUSED_REASON
    h = ccp(MppePolicy.OPTIONAL)
    h.on_reject([mppe(MPPE_H | MPPE_S)])
    assert h.build_request() == [] and h.mppe_off
    assert h.judge([mppe(MPPE_H | MPPE_S)]) == [Verdict.REJECT]


def test_ccp_key_length_policy() -> None:
    h = ccp(keys=frozenset({128}))
    with pytest.raises(NegotiationFailed, match="40 bits but only 128"):
        h.judge([mppe(MPPE_H | MPPE_L)])
    with pytest.raises(NegotiationFailed, match="key lengths 40"):
        h.on_nak([mppe(MPPE_H | MPPE_L)])


def test_ccp_stateful_preference() -> None:
    h = ccp(stateful=True)
    assert h.build_request() == [mppe(MPPE_S | MPPE_M | MPPE_L)]  # no H bit
    assert h.judge([mppe(MPPE_H | MPPE_S)]) == [mppe(MPPE_S)]  # ask once for stateful...
    assert h.judge([mppe(MPPE_H | MPPE_S)]) == [Verdict.ACK]  # ...then take stateless
    strict = ccp()
    for _ in range(2):
        strict.on_nak([mppe(MPPE_S)])  # the server Naks with stateful
    with pytest.raises(NegotiationFailed, match="only stateful MPPE"):
        strict.on_nak([mppe(MPPE_S)])


def test_ccp_agreement_must_be_symmetric() -> None:
    h = ccp()
    h.on_ack([mppe(MPPE_H | MPPE_S)])
    h.on_peer_ack([mppe(MPPE_H | MPPE_S)])
    assert h.agreement() == (128, False)
    h.on_peer_ack([])
    with pytest.raises(NegotiationFailed, match="one direction"):
        h.agreement()


def test_ccp_not_run_when_refused() -> None:
    with pytest.raises(ValueError, match="not run"):
        ccp(MppePolicy.REFUSE)


# -- MPPE on the link -----------------------------------------------------------------------------------


def test_stateful_loss_sends_reset_request_and_resyncs() -> None:
    h = Harness.make(client_config(mppe_stateful=True), server_config(mppe_stateful=True))
    h.run()
    assert h.up(0).encryption == "MPPE-128 stateful"
    c, s = h.client, h.server
    lost = c.send_ip(ipv4_packet(b"lost"), h.now)
    assert lost is not None
    frame = c.send_ip(ipv4_packet(b"after loss"), h.now)
    assert frame is not None and s.receive(frame, h.now) == []
    assert s.counters.reset_requests_sent == 1
    (reset,) = s.frames_to_send()
    proto, info = F.decode_frame(reset)
    assert proto == F.CCP and F.decode_control(info).code == F.RESET_REQUEST
    c.receive(reset, h.now)  # the client flushes its next packet...
    (reset_ack,) = c.frames_to_send()
    assert F.decode_control(F.decode_frame(reset_ack)[1]).code == F.RESET_ACK
    frame = c.send_ip(ipv4_packet(b"flushed"), h.now)
    assert frame is not None
    assert s.receive(frame, h.now) == [ipv4_packet(b"flushed")]  # ...and the server is back in sync


def test_stateless_survives_loss_and_drops_replays() -> None:
    h = Harness.make(client_config(), server_config())
    h.run()
    c, s = h.client, h.server
    frames = [c.send_ip(ipv4_packet(bytes([i]) * 20), h.now) for i in range(5)]
    assert all(f is not None for f in frames)
    assert s.receive(frames[4] or b"", h.now) == [ipv4_packet(bytes([4]) * 20)]  # 0..3 lost
    assert s.receive(frames[4] or b"", h.now) == []  # replay
    assert s.counters.rx_decrypt_dropped == 1


def test_no_data_before_link_up_and_none_in_the_clear_under_require() -> None:
    h = Harness.make(client_config(), server_config())
    h.client.start(0.0)
    assert h.client.send_ip(ipv4_packet(b"early"), 0.0) is None
    assert h.client.counters.tx_dropped == 1
    clear = F.encode_frame(F.IPV4, ipv4_packet(b"early"), acfc=False, pfc=False)
    assert h.client.receive(clear, 0.0) == []


def test_client_sends_no_ipcp_before_ccp_agreed_mppe() -> None:
    h = Harness.make(client_config(), server_config())
    sent: list[tuple[int, int]] = []  # (protocol, code) in the order the client sent them
    original = h.net.send

    def spy(now: float, dest: int, frame: bytes) -> None:
        if dest == 1:
            proto, info = F.decode_frame(frame)
            if proto in (F.CCP, F.IPCP):
                sent.append((proto, F.decode_control(info).code))
        original(now, dest, frame)

    h.net.send = spy  # type: ignore[method-assign]
    h.run()
    first_ipcp = next(i for i, (p, _) in enumerate(sent) if p == F.IPCP)
    # by then the client has acked the server's CCP request and been acked (it saw the Ack)
    assert (F.CCP, F.CONFIGURE_ACK) in sent[:first_ipcp]
    assert h.client.ccp is not None and h.client.codec is not None
