"""Regressions found by the interop tests (tests/interop/test_scenarios.py, Debian's pptpd 1.4.0 +
pppd 2.4.9): the real server's side of an exchange, built with scapy's independent PPP layers from
what pppd's debug log showed, replayed against our machines in microseconds."""

from __future__ import annotations

import random

import pytest
from scapy.layers.ppp import (
    HDLC,
    PPP,
    PPP_LCP,
    PPP_LCP_ACCM_Option,
    PPP_LCP_Auth_Protocol_Option,
    PPP_LCP_Configure,
    PPP_LCP_Magic_Number_Option,
)

from sidecar.proto.ppp.link import (
    EncryptionOff,
    LinkConfig,
    LinkDown,
    LinkRole,
    LinkUp,
    PppLink,
)
from sidecar.proto.ppp.mppe import MppePolicy
from sidecar.proto.secret import Secret

PAP_PROTOCOL = 0xC023
CONF_REQ, CONF_ACK, CONF_NAK, TERM_REQ = 1, 2, 3, 5


def lcp_frames(link: PppLink) -> list[PPP_LCP]:
    out = []
    for raw in link.frames_to_send():
        pkt = HDLC(raw)
        assert pkt[PPP].proto == 0xC021, f"not LCP: {raw.hex()}"
        out.append(pkt[PPP].payload)
    return out


def pppd_conf_req(ident: int, *, auth: int | None) -> bytes:
    # what pppd 2.4.9 sends under pptpd: <asyncmap 0x0> [<auth ...>] <magic ...> (pcomp/accomp left out)
    options = [PPP_LCP_ACCM_Option(accm=0)]
    if auth is not None:
        options.append(PPP_LCP_Auth_Protocol_Option(auth_protocol=auth))
    options.append(PPP_LCP_Magic_Number_Option(magic_number=0x0831F393))
    return bytes(HDLC() / PPP(proto=0xC021) / PPP_LCP_Configure(code=CONF_REQ, id=ident, options=options))


@pytest.mark.parametrize("mppe", [MppePolicy.REQUIRE, MppePolicy.OPTIONAL])
def test_server_that_drops_its_pap_request_after_our_nak_gets_the_refusal_reason(mppe: MppePolicy) -> None:
    """pppd with ``require-pap``: we Nak its <auth pap> with MS-CHAPv2; pppd then drops the auth
    option instead of offering another method, LCP opens, and pppd hangs up ("peer refused to
    authenticate"). We used to go on and fail later with "MPPE needs MS-CHAPv1 or MS-CHAPv2 keys and
    the link used no authentication" (or, with MPPE optional, run into pppd's hang-up), which does
    not say that the server wants PAP or how to allow it."""
    now = 10.0
    link = PppLink(
        LinkRole.PEER,
        LinkConfig(username="sidecar-test", password=Secret("not-used-here"), mppe=mppe, echo_interval=0),
        random.Random(7),
    )
    link.start(now)
    (ours,) = lcp_frames(link)
    assert ours.code == CONF_REQ

    link.receive(pppd_conf_req(1, auth=PAP_PROTOCOL), now)
    (nak,) = lcp_frames(link)
    assert nak.code == CONF_NAK and nak.id == 1
    suggested = [o for o in nak.options if isinstance(o, PPP_LCP_Auth_Protocol_Option)]
    assert [o.auth_protocol for o in suggested] == [0xC223], "we suggest CHAP (MS-CHAPv2)"

    link.receive(pppd_conf_req(2, auth=None), now)  # pppd gives up asking: no auth option
    (ack,) = lcp_frames(link)
    assert ack.code == CONF_ACK and ack.id == 2
    # pppd acks our request: LCP is open without authentication
    link.receive(
        bytes(
            HDLC() / PPP(proto=0xC021) / PPP_LCP_Configure(code=CONF_ACK, id=ours.id, options=ours.options)
        ),
        now,
    )

    events = link.events()
    downs = [e for e in events if isinstance(e, LinkDown)]
    assert len(downs) == 1
    assert "PAP" in downs[0].reason and "add pap to --auth" in downs[0].reason
    assert not downs[0].bad_credentials
    assert not any(isinstance(e, (LinkUp, EncryptionOff)) for e in events)
    assert [f.code for f in lcp_frames(link)] == [TERM_REQ], "we say goodbye with the reason"
