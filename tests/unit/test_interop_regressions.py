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

CONF_REQ, CONF_ACK, CONF_NAK, TERM_REQ = 1, 2, 3, 5
PAP = PPP_LCP_Auth_Protocol_Option(auth_protocol=0xC023)
CHAP_MD5 = PPP_LCP_Auth_Protocol_Option(auth_protocol=0xC223, algorithm=0x05)
MSCHAP_V1 = PPP_LCP_Auth_Protocol_Option(auth_protocol=0xC223, algorithm=0x80)


def lcp_frames(link: PppLink) -> list[PPP_LCP]:
    out = []
    for raw in link.frames_to_send():
        pkt = HDLC(raw)
        assert pkt[PPP].proto == 0xC021, f"not LCP: {raw.hex()}"
        out.append(pkt[PPP].payload)
    return out


def lcp(code: int, ident: int, options: list[object]) -> bytes:
    return bytes(HDLC() / PPP(proto=0xC021) / PPP_LCP_Configure(code=code, id=ident, options=options))


def pppd_conf_req(ident: int, auth: PPP_LCP_Auth_Protocol_Option | None) -> bytes:
    # what pppd 2.4.9 sends under pptpd: <asyncmap 0x0> [<auth ...>] <magic ...> (pcomp/accomp left out)
    options: list[object] = [PPP_LCP_ACCM_Option(accm=0)]
    if auth is not None:
        options.append(auth.copy())
    options.append(PPP_LCP_Magic_Number_Option(magic_number=0x0831F393))
    return lcp(CONF_REQ, ident, options)


def negotiate_like_pppd(link: PppLink, auth: PPP_LCP_Auth_Protocol_Option, now: float) -> None:
    """pppd (``auth`` + one ``require-...``) asks for ``auth``; we Nak it with MS-CHAPv2; pppd drops
    the auth option instead of offering another method; both sides ack: LCP opens (pppd then logs
    "peer refused to authenticate" and sends Terminate-Request)."""
    link.start(now)
    (ours,) = lcp_frames(link)
    assert ours.code == CONF_REQ
    link.receive(pppd_conf_req(1, auth), now)
    (nak,) = lcp_frames(link)
    assert nak.code == CONF_NAK and nak.id == 1
    suggested = [o for o in nak.options if isinstance(o, PPP_LCP_Auth_Protocol_Option)]
    assert [(o.auth_protocol, o.algorithm) for o in suggested] == [(0xC223, 0x81)], "we suggest MS-CHAPv2"
    link.receive(pppd_conf_req(2, None), now)
    (ack,) = lcp_frames(link)
    assert ack.code == CONF_ACK and ack.id == 2
    link.receive(lcp(CONF_ACK, ours.id, ours.options), now)


def client(mppe: MppePolicy = MppePolicy.REQUIRE) -> PppLink:
    config = LinkConfig(username="sidecar-test", password=Secret("not-used-here"), mppe=mppe, echo_interval=0)
    return PppLink(LinkRole.PEER, config, random.Random(7))


@pytest.mark.parametrize("mppe", [MppePolicy.REQUIRE, MppePolicy.OPTIONAL])
@pytest.mark.parametrize(
    ("auth", "label", "flag"),
    [(PAP, "PAP", "pap"), (CHAP_MD5, "CHAP-MD5", "chap"), (MSCHAP_V1, "MS-CHAPv1", "mschap")],
)
def test_server_that_drops_its_auth_request_after_our_nak_gets_the_refusal_reason(
    mppe: MppePolicy, auth: PPP_LCP_Auth_Protocol_Option, label: str, flag: str
) -> None:
    """We used to go on after LCP opened and fail later with "MPPE needs MS-CHAPv1 or MS-CHAPv2 keys
    and the link used no authentication" (or, with MPPE optional, run into pppd's hang-up), which
    does not say that the server wants another method or how to allow it."""
    link = client(mppe)
    negotiate_like_pppd(link, auth, 10.0)
    events = link.events()
    downs = [e for e in events if isinstance(e, LinkDown)]
    assert len(downs) == 1
    assert label in downs[0].reason and f"add {flag} to --auth" in downs[0].reason
    assert not downs[0].bad_credentials
    assert not any(isinstance(e, (LinkUp, EncryptionOff)) for e in events)
    assert [f.code for f in lcp_frames(link)] == [TERM_REQ], "we say goodbye with the reason"


@pytest.mark.parametrize(("label", "flag"), [("PAP", "pap"), ("CHAP-MD5", "chap"), ("MS-CHAPv1", "mschap")])
def test_the_advice_is_a_value_auth_accepts(label: str, flag: str) -> None:
    """The advice said "add mschap-v1" / "add chap-md5", which --auth rejected (it takes mschapv2,
    mschap, chap, pap, and a few aliases): following it must work and permit that method."""
    from sidecar import config

    settings = config.build_up_settings(
        {"server": "192.0.2.1", "user": "u", "auth": f"mschapv2,{flag}", "mppe": "optional"},
        {"PPTP_PASSWORD": "p"},
    )
    assert [m.label for m in settings.auth] == ["MS-CHAPv2", label]
