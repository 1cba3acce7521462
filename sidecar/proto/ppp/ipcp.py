"""IPCP options (RFC 1332, RFC 1877): IP-Address, Primary/Secondary DNS, and the options we refuse.

What lives here: how IPCP builds our Configure-Request and judges the peer's. Nothing about
states (``fsm.py``) or phases (``link.py``).

Roles: the *peer* (the sidecar) asks for ``0.0.0.0`` as its address and its DNS servers and takes
the server's Configure-Nak values (RFC 1332 §3.3, RFC 1877 §1). The *authenticator* (the embedded
server) asks for its own address, assigns ``peer_ip`` by Nak and hands out ``dns`` by Nak. Both
refuse Van Jacobson compression (2), the deprecated IP-Addresses option (1) and NetBIOS name
servers (130/132): everything else is rejected too.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Final

from sidecar.proto.ppp.frame import Option
from sidecar.proto.ppp.fsm import Judgement, NegotiationFailed, OptionHandler, Verdict

OPT_IP_ADDRESSES: Final = 1
OPT_COMPRESSION: Final = 2
OPT_IP_ADDRESS: Final = 3
OPT_DNS1: Final = 129
OPT_NBNS1: Final = 130
OPT_DNS2: Final = 131
OPT_NBNS2: Final = 132

_ZERO: Final = IPv4Address(0)
_DNS_SLOTS: Final = (OPT_DNS1, OPT_DNS2)


def _addr(o: Option) -> IPv4Address | None:
    return IPv4Address(o.data) if len(o.data) == 4 else None


class IpcpHandler(OptionHandler):
    name = "IPCP"

    def __init__(
        self,
        *,
        authenticator: bool,
        local_ip: IPv4Address | None = None,
        peer_ip: IPv4Address | None = None,
        dns: tuple[IPv4Address, ...] = (),
        request_dns: bool = True,
    ) -> None:
        if authenticator and local_ip is None:
            raise ValueError("the authenticator role needs local_ip (its own tunnel address)")
        self.authenticator = authenticator
        self.config_local = local_ip
        self.config_peer = peer_ip
        self.config_dns = dns
        self.request_dns = request_dns and not authenticator
        self._reset()

    def _reset(self) -> None:
        self._want: dict[int, IPv4Address] = {OPT_IP_ADDRESS: self.config_local or _ZERO}
        if self.request_dns:
            self._want[OPT_DNS1] = _ZERO
            self._want[OPT_DNS2] = _ZERO
        self.local_ip: IPv4Address | None = None  # our address, as the peer acked it
        self.peer_ip: IPv4Address | None = None  # the peer's address, as we acked it
        self.dns: tuple[IPv4Address, ...] = ()

    def on_layer_started(self) -> None:
        self._reset()

    # -- our request ------------------------------------------------------------------------------------
    def build_request(self) -> list[Option]:
        return [Option(t, a.packed) for t, a in self._want.items()]

    def on_ack(self, options: list[Option]) -> None:
        got = {o.type: _addr(o) for o in options}
        self.local_ip = got.get(OPT_IP_ADDRESS)
        self.dns = tuple(a for t in _DNS_SLOTS if (a := got.get(t)) is not None and a != _ZERO)

    def on_nak(self, options: list[Option]) -> None:
        for o in options:
            value = _addr(o)
            if value is None or o.type not in self._want:
                continue  # a hint for an option we do not negotiate, or garbage: ignore
            if o.type == OPT_IP_ADDRESS and self.authenticator:
                continue  # our own address is configured, not negotiable
            self._want[o.type] = value

    def on_reject(self, options: list[Option]) -> None:
        for o in options:
            if o.type == OPT_IP_ADDRESS:
                if self._want[OPT_IP_ADDRESS] == _ZERO:
                    raise NegotiationFailed(
                        "the server will not assign us an IPv4 address "
                        "(it rejected the IPCP IP-Address option)"
                    )
                continue  # keep asking: RFC 1332 lets a peer refuse, but we need our address known
            self._want.pop(o.type, None)  # DNS refused: do without

    # -- the peer's request -----------------------------------------------------------------------------
    def judge(self, options: list[Option]) -> list[Judgement]:
        return [self._judge_one(o) for o in options]

    def _judge_one(self, o: Option) -> Judgement:
        value = _addr(o)
        if value is None:
            return Verdict.REJECT  # wrong length, VJ compression, IP-Addresses, unknown
        if o.type == OPT_IP_ADDRESS:
            if self.authenticator and self.config_peer is not None:
                return (
                    Verdict.ACK
                    if value == self.config_peer
                    else Option(OPT_IP_ADDRESS, self.config_peer.packed)
                )
            return Verdict.ACK if value != _ZERO else Verdict.REJECT  # we have no address to give
        if o.type in _DNS_SLOTS and self.authenticator:
            slot = _DNS_SLOTS.index(o.type)
            if slot >= len(self.config_dns):
                return Verdict.REJECT
            offer = self.config_dns[slot]
            return Verdict.ACK if value == offer else Option(o.type, offer.packed)
        return Verdict.REJECT  # NBNS, DNS asked of the client, anything else

    def hints(self, options: list[Option]) -> list[Option]:
        missing = all(o.type != OPT_IP_ADDRESS for o in options)
        if self.authenticator and self.config_peer is not None and missing:
            return [Option(OPT_IP_ADDRESS, self.config_peer.packed)]
        return []

    def on_peer_ack(self, options: list[Option]) -> None:
        self.peer_ip = None
        for o in options:
            if o.type == OPT_IP_ADDRESS:
                self.peer_ip = _addr(o)
