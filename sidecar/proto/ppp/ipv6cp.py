"""IPV6CP options (RFC 5072): the Interface-Identifier, nothing else.

Each side proposes a random non-zero 64-bit identifier; the link-local addresses are
``fe80::<identifier>``. A zero or colliding identifier from the peer is Nak'd with a fresh random
suggestion (RFC 5072 §4.1); a Nak of ours is taken when it is usable. IPv6 header compression and
unknown options are rejected. Role-agnostic: client and server run the same code.
"""

from __future__ import annotations

import random
from ipaddress import IPv6Address
from typing import Final

from sidecar.proto.ppp.frame import Option
from sidecar.proto.ppp.fsm import Judgement, NegotiationFailed, OptionHandler, Verdict

OPT_INTERFACE_ID: Final = 1


def link_local(identifier: int) -> IPv6Address:
    return IPv6Address((0xFE80 << 112) | identifier)


class Ipv6cpHandler(OptionHandler):
    name = "IPV6CP"

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.local_id = self._fresh()
        self.peer_id = 0
        self.agreed_local: int | None = None

    def _fresh(self, avoid: int = 0) -> int:
        while True:
            value = self.rng.getrandbits(64)
            if value not in (0, avoid, getattr(self, "local_id", 0)):
                return value

    def build_request(self) -> list[Option]:
        return [Option(OPT_INTERFACE_ID, self.local_id.to_bytes(8, "big"))]

    def on_ack(self, options: list[Option]) -> None:
        self.agreed_local = self.local_id

    def on_nak(self, options: list[Option]) -> None:
        for o in options:
            if o.type == OPT_INTERFACE_ID and len(o.data) == 8:
                value = int.from_bytes(o.data, "big")
                self.local_id = value if value not in (0, self.peer_id) else self._fresh(self.peer_id)

    def on_reject(self, options: list[Option]) -> None:
        raise NegotiationFailed("the peer rejected the IPV6CP Interface-Identifier")

    def judge(self, options: list[Option]) -> list[Judgement]:
        out: list[Judgement] = []
        for o in options:
            if o.type != OPT_INTERFACE_ID or len(o.data) != 8:
                out.append(Verdict.REJECT)
                continue
            value = int.from_bytes(o.data, "big")
            if value == 0 or value == self.local_id:
                out.append(Option(OPT_INTERFACE_ID, self._fresh(self.local_id).to_bytes(8, "big")))
            else:
                out.append(Verdict.ACK)
        return out

    def on_peer_ack(self, options: list[Option]) -> None:
        for o in options:
            if o.type == OPT_INTERFACE_ID:
                self.peer_id = int.from_bytes(o.data, "big")
