"""CCP options (RFC 1962) as PPTP uses them: MPPE (RFC 3078 option 18) and nothing else.

What lives here: our MPPE request, the judgement of the peer's, and the result (key length and
stateless/stateful mode agreed in both directions). Compression is never negotiated: MPPC (the C bit)
is Nak'd away, every other CCP option (Deflate 26, BSD-Compress 21, Predictor 1/2, Stac...) is
rejected. Reset-Request/Reset-Ack (codes 14/15) are collected here for the link, which wires them
to the MPPE codec.

Policy (``MppePolicy``): REQUIRE fails the negotiation with a reason naming the fix when the peer
will not encrypt; OPTIONAL stops asking and runs in the clear; REFUSE never gets here (the link does
not run CCP). Key lengths: the strongest length both sides allow. Mode: stateless (H bit) unless
``stateful`` asks for stateful; when it does and the peer insists on stateless, we take stateless
(it is the more robust mode), never the other way round.

Role-agnostic: client and server run the same code, so they cannot drift apart.
"""

from __future__ import annotations

from typing import Final

from sidecar.proto.errors import PppError
from sidecar.proto.ppp import frame as F
from sidecar.proto.ppp.frame import ControlPacket, Option
from sidecar.proto.ppp.fsm import Event, Judgement, NegotiationFailed, OptionHandler, Verdict
from sidecar.proto.ppp.mppe import (
    CCP_OPTION_MPPE,
    MppeOption,
    MppePolicy,
    build_mppe_option,
    parse_mppe_option,
    strongest_key_bits,
)

MAX_STATEFUL_NAKS: Final = 3

REFUSED_REASON: Final = (
    "the server will not encrypt (MPPE refused); use --mppe optional to allow an unencrypted tunnel"
)


def _keys_text(bits: frozenset[int]) -> str:
    return "/".join(str(b) for b in sorted(bits, reverse=True)) or "none"


class CcpHandler(OptionHandler):
    name = "CCP"
    extra_codes = frozenset({F.RESET_REQUEST, F.RESET_ACK})

    def __init__(
        self, *, policy: MppePolicy, key_bits: frozenset[int], stateful: bool, other: str = "server"
    ) -> None:
        if policy is MppePolicy.REFUSE:
            raise ValueError("CCP is not run when MPPE is refused")
        usable = frozenset(k for k in key_bits if k in (40, 56, 128))
        if not usable:
            raise ValueError("no usable MPPE key length (choose among 40, 56, 128)")
        self.policy = policy
        self.other = other  # "server" or "client": how failure reasons name the peer
        self.allowed = usable
        self.prefer_stateful = stateful
        self._reset()

    def _reset(self) -> None:
        self._offer: frozenset[int] = self.allowed  # key lengths we still propose
        self._stateless = not self.prefer_stateful  # the mode we propose and accept
        self._asked_stateful = False  # we Nak'd the peer's stateless once already
        self._stateful_naks = 0  # the peer Nak'd our stateless request with stateful
        self.mppe_off = False  # OPTIONAL and the peer will not: no MPPE in either direction
        self.off_reason: str | None = None
        self.tx: MppeOption | None = None  # our MPPE option as the peer acked it
        self.rx: MppeOption | None = None  # the peer's MPPE option as we acked it
        self.reset_requests = 0  # Reset-Requests received (the link resets the compressor)
        self.reset_acks = 0

    def on_layer_started(self) -> None:
        self._reset()

    def _give_up(self, reason: str) -> None:
        if self.policy is MppePolicy.REQUIRE:
            raise NegotiationFailed(reason)
        self.mppe_off = True
        self.off_reason = reason

    # -- our request ------------------------------------------------------------------------------------
    def build_request(self) -> list[Option]:
        if self.mppe_off:
            return []
        return [Option(CCP_OPTION_MPPE, build_mppe_option(self._offer, stateless=self._stateless))]

    def on_ack(self, options: list[Option]) -> None:
        self.tx = None
        for o in options:
            if o.type == CCP_OPTION_MPPE:
                self.tx = parse_mppe_option(o.data)

    def on_nak(self, options: list[Option]) -> None:
        for o in options:
            if o.type != CCP_OPTION_MPPE or self.mppe_off:
                continue
            try:
                suggestion = parse_mppe_option(o.data)
            except PppError:
                continue
            common = suggestion.key_bits & self.allowed
            if not common:
                self._give_up(
                    f"the {self.other} offers MPPE key lengths {_keys_text(suggestion.key_bits)} bits but "
                    f"only {_keys_text(self.allowed)} are allowed"
                )
                return
            strongest = strongest_key_bits(common)
            assert strongest is not None
            self._offer = frozenset({strongest})
            if suggestion.stateless != self._stateless:
                if suggestion.stateless and self.prefer_stateful:
                    self._stateless = True  # the peer insists on stateless: take the robust mode
                elif not suggestion.stateless and not self.prefer_stateful:
                    # a peer that prefers stateful asks once and then takes stateless; one that
                    # keeps asking cannot do stateless at all
                    self._stateful_naks += 1
                    if self._stateful_naks >= MAX_STATEFUL_NAKS:
                        self._give_up(
                            f"the {self.other} offers only stateful MPPE; allow it with --mppe-stateful"
                        )
                        return

    def on_reject(self, options: list[Option]) -> None:
        if any(o.type == CCP_OPTION_MPPE for o in options):
            self._give_up(REFUSED_REASON.replace("the server", f"the {self.other}"))

    # -- the peer's request -----------------------------------------------------------------------------
    def judge(self, options: list[Option]) -> list[Judgement]:
        return [self._judge_one(o) for o in options]

    def _judge_one(self, o: Option) -> Judgement:
        if o.type != CCP_OPTION_MPPE or self.mppe_off:
            return Verdict.REJECT  # compression of any kind, or MPPE after we gave it up
        try:
            offer = parse_mppe_option(o.data)
        except PppError:
            return Verdict.REJECT
        common = offer.key_bits & self.allowed
        if not common:
            if offer.key_bits:
                self._give_up(
                    f"the {self.other} wants MPPE key lengths {_keys_text(offer.key_bits)} bits but only "
                    f"{_keys_text(self.allowed)} are allowed"
                )
            return Verdict.REJECT
        strongest = strongest_key_bits(common)
        assert strongest is not None
        stateless = self._stateless
        if offer.stateless and not stateless and self.prefer_stateful:
            if self._asked_stateful:
                stateless = self._stateless = True  # it insists; stateless is fine
            else:
                self._asked_stateful = True
        wanted = MppeOption(key_bits=frozenset({strongest}), stateless=stateless)
        if offer == wanted:
            return Verdict.ACK
        return Option(CCP_OPTION_MPPE, wanted.to_bits().to_bytes(4, "big"))

    def on_peer_ack(self, options: list[Option]) -> None:
        self.rx = None
        for o in options:
            if o.type == CCP_OPTION_MPPE:
                self.rx = parse_mppe_option(o.data)

    # -- the outcome ------------------------------------------------------------------------------------
    def agreement(self) -> tuple[int, bool] | None:
        """``(key_bits, stateful)`` when both directions agreed on one MPPE setting, else None.

        Raises :class:`NegotiationFailed` when MPPE is up in one direction only or the two
        directions differ (MPPE is symmetric: RFC 3078 §2).
        """
        if self.tx is None and self.rx is None:
            return None
        if self.tx is None or self.rx is None:
            raise NegotiationFailed("MPPE was agreed in one direction only")
        bits = strongest_key_bits(self.tx.key_bits & self.rx.key_bits)
        if bits is None or self.tx.stateless != self.rx.stateless:
            raise NegotiationFailed("the two directions agreed on different MPPE settings")
        return bits, not self.tx.stateless

    # -- Reset-Request / Reset-Ack ----------------------------------------------------------------------
    def classify_extra(self, packet: ControlPacket) -> Event | None:
        return Event.RXR  # acted on in Opened only (the table's ``ser`` cell)

    def on_rxr(self, packet: ControlPacket) -> list[bytes]:
        if packet.code == F.RESET_REQUEST:
            self.reset_requests += 1
            # Microsoft peers ignore Reset-Ack (the flushed bit resynchronises); RFC 1962 wants one
            return [F.encode_control(F.RESET_ACK, packet.identifier)]
        self.reset_acks += 1
        return []
