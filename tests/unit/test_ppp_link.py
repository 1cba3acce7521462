"""Two PppLink objects (peer and authenticator) talking in-process, with fake time."""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.proto.ppp import frame as F
from sidecar.proto.ppp.auth.base import AuthMethod
from sidecar.proto.ppp.link import (
    Authenticated,
    AuthFailed,
    EchoRtt,
    EncryptionOff,
    EncryptionUp,
    LinkConfig,
    LinkDown,
    LinkEvent,
    LinkRole,
    LinkUp,
    Phase,
    PppLink,
)
from sidecar.proto.ppp.mppe import MppePolicy
from sidecar.proto.secret import Secret

USERS = {"alice": Secret("correct horse battery staple")}
ALL_METHODS = (AuthMethod.MSCHAP_V2, AuthMethod.MSCHAP_V1, AuthMethod.CHAP_MD5, AuthMethod.PAP)


def client_config(**kw: object) -> LinkConfig:
    base = LinkConfig(username="alice", password=USERS["alice"], echo_interval=0)
    return replace(base, **kw)  # type: ignore[arg-type]


def server_config(**kw: object) -> LinkConfig:
    base = LinkConfig(
        lookup_secret=USERS.get,
        local_name="testserver",
        local_ip=IPv4Address("10.9.0.1"),
        peer_ip=IPv4Address("10.9.0.2"),
        dns=(IPv4Address("10.9.0.53"), IPv4Address("10.9.0.54")),
        echo_interval=0,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


@dataclass
class Net:
    """Fake wire: latency, and optionally loss, duplication and reordering (extra random delay)."""

    rng: random.Random
    loss: float = 0.0
    dup: float = 0.0
    jitter: float = 0.0
    latency: float = 0.005
    queue: list[tuple[float, int, int, bytes]] = field(default_factory=list)
    seq: int = 0

    def send(self, now: float, dest: int, frame: bytes) -> None:
        copies = 0 if self.rng.random() < self.loss else 1
        if copies and self.rng.random() < self.dup:
            copies = 2
        for _ in range(copies):
            at = now + self.latency + self.rng.random() * self.jitter
            self.seq += 1
            heapq.heappush(self.queue, (at, self.seq, dest, frame))


@dataclass
class Harness:
    client: PppLink
    server: PppLink
    net: Net
    now: float = 0.0
    events: tuple[list[LinkEvent], list[LinkEvent]] = field(default_factory=lambda: ([], []))
    steps: int = 0

    @classmethod
    def make(
        cls,
        ccfg: LinkConfig,
        scfg: LinkConfig,
        seed: int = 1,
        *,
        loss: float = 0.0,
        dup: float = 0.0,
        jitter: float = 0.0,
    ) -> Harness:
        c = PppLink(LinkRole.PEER, ccfg, random.Random(seed * 7 + 1))
        s = PppLink(LinkRole.AUTHENTICATOR, scfg, random.Random(seed * 7 + 2))
        return cls(c, s, Net(random.Random(seed), loss=loss, dup=dup, jitter=jitter))

    def links(self) -> tuple[PppLink, PppLink]:
        return self.client, self.server

    def _collect(self) -> None:
        for idx, link in enumerate(self.links()):
            for frame in link.frames_to_send():
                self.net.send(self.now, 1 - idx, frame)
            self.events[idx].extend(link.events())

    def settled(self) -> bool:
        return all(any(isinstance(e, LinkUp | LinkDown) for e in evs) for evs in self.events)

    def run(self, limit: float = 600.0, until_settled: bool = True) -> None:
        if self.steps == 0:
            self.client.start(self.now)
            self.server.start(self.now)
        self._collect()
        while self.now <= limit:
            self.steps += 1
            assert self.steps < 20_000, "the links keep talking without converging"
            if until_settled and self.settled() and not self.net.queue:
                return
            candidates = [d for d in (self.client.next_deadline(), self.server.next_deadline()) if d]
            if self.net.queue:
                candidates.append(self.net.queue[0][0])
            if not candidates:
                return
            self.now = max(self.now, min(candidates))
            while self.net.queue and self.net.queue[0][0] <= self.now:
                _, _, dest, frame = heapq.heappop(self.net.queue)
                delivered = self.links()[dest].receive(frame, self.now)
                assert delivered == [] or all(isinstance(p, bytes) for p in delivered)
            for link in self.links():
                deadline = link.next_deadline()
                if deadline is not None and deadline <= self.now:
                    link.timeout(self.now)
            self._collect()

    def up(self, idx: int) -> LinkUp:
        ups = [e for e in self.events[idx] if isinstance(e, LinkUp)]
        assert len(ups) == 1, self.events[idx]
        return ups[0]

    def down(self, idx: int) -> LinkDown:
        downs = [e for e in self.events[idx] if isinstance(e, LinkDown)]
        assert len(downs) == 1, self.events[idx]
        return downs[0]


def ipv4_packet(payload: bytes) -> bytes:
    return b"\x45\x00" + len(payload).to_bytes(2, "big") + bytes(16) + payload


def roundtrip(h: Harness, payload: bytes) -> None:
    c, s = h.client, h.server
    frame = c.send_ip(ipv4_packet(payload), h.now)
    assert frame is not None
    assert s.receive(frame, h.now) == [ipv4_packet(payload)]
    back = s.send_ip(ipv4_packet(payload[::-1]), h.now)
    assert back is not None
    assert c.receive(back, h.now) == [ipv4_packet(payload[::-1])]


# -- the happy paths ----------------------------------------------------------------------------------


def test_default_client_and_server_come_up_with_mppe_128_stateless() -> None:
    h = Harness.make(client_config(), server_config())
    h.run()
    up_c, up_s = h.up(0), h.up(1)
    assert up_c.local_ip == IPv4Address("10.9.0.2") and up_c.peer_ip == IPv4Address("10.9.0.1")
    assert up_s.local_ip == IPv4Address("10.9.0.1") and up_s.peer_ip == IPv4Address("10.9.0.2")
    assert up_c.dns == (IPv4Address("10.9.0.53"), IPv4Address("10.9.0.54"))
    assert up_c.encryption == up_s.encryption == "MPPE-128 stateless"
    assert up_c.mtu == 1400 - 4
    assert h.client.phase is Phase.NETWORK
    auth = [e for e in h.events[0] if isinstance(e, Authenticated)]
    assert auth == [Authenticated(AuthMethod.MSCHAP_V2, "testserver")]
    assert next(e for e in h.events[1] if isinstance(e, Authenticated)).peer_name == "alice"
    # encryption came up before the link: no cleartext window
    kinds = [type(e) for e in h.events[0]]
    assert kinds.index(EncryptionUp) < kinds.index(LinkUp)
    roundtrip(h, b"hello through MPPE")
    frame = h.client.send_ip(ipv4_packet(b"secret payload"), h.now)
    assert frame is not None and b"secret payload" not in frame


@pytest.mark.parametrize("method", ALL_METHODS)
def test_every_auth_method(method: AuthMethod) -> None:
    mppe = (
        MppePolicy.REQUIRE if method in (AuthMethod.MSCHAP_V1, AuthMethod.MSCHAP_V2) else MppePolicy.OPTIONAL
    )
    h = Harness.make(
        client_config(auth_methods=(method,), mppe=mppe),
        server_config(auth_methods=(method,), mppe=mppe),
    )
    h.run()
    up = h.up(0)
    assert h.up(1).encryption == up.encryption
    if mppe is MppePolicy.REQUIRE:
        assert up.encryption == "MPPE-128 stateless"
    else:
        assert up.encryption == "none"  # no MS-CHAP keys: OPTIONAL runs in the clear
        assert any(isinstance(e, EncryptionOff) for e in h.events[0])
    roundtrip(h, b"x" * 100)


@pytest.mark.parametrize("bits", [40, 56, 128])
@pytest.mark.parametrize("stateful", [False, True])
def test_key_lengths_and_modes(bits: int, stateful: bool) -> None:
    h = Harness.make(
        client_config(mppe_key_bits=frozenset({bits}), mppe_stateful=stateful),
        server_config(mppe_stateful=stateful),
    )
    h.run()
    mode = "stateful" if stateful else "stateless"
    assert h.up(0).encryption == h.up(1).encryption == f"MPPE-{bits} {mode}"
    for i in range(300):  # crosses the stateful flag-packet rekey at 256
        roundtrip(h, i.to_bytes(2, "big") * 10)


def test_client_prefers_stateful_but_server_insists_on_stateless() -> None:
    h = Harness.make(client_config(mppe_stateful=True), server_config(mppe_stateful=False))
    h.run()
    assert h.up(0).encryption == h.up(1).encryption == "MPPE-128 stateless"


def test_wrong_password_is_bad_credentials() -> None:
    h = Harness.make(client_config(password=Secret("Tr0ub4dor-x9")), server_config())
    h.run()
    down = h.down(0)
    assert down.bad_credentials
    assert "MS-CHAPv2" in down.reason
    assert any(isinstance(e, AuthFailed) and e.bad_credentials for e in h.events[0])
    assert h.down(1).bad_credentials
    assert "Tr0ub4dor" not in repr(h.events) and "correct horse" not in repr(h.events)
    h.run(until_settled=False, limit=h.now + 30)
    assert h.client.phase is Phase.DEAD and h.server.phase is Phase.DEAD


# -- policy ---------------------------------------------------------------------------------------------


def test_client_default_refuses_pap() -> None:
    h = Harness.make(client_config(), server_config(auth_methods=(AuthMethod.PAP,), mppe=MppePolicy.OPTIONAL))
    h.run()
    reason = h.down(0).reason
    assert "PAP" in reason and "add pap to --auth" in reason
    assert not any(isinstance(e, LinkUp) for e in h.events[0])


def test_server_moves_down_its_list_to_what_the_client_allows() -> None:
    h = Harness.make(
        client_config(auth_methods=(AuthMethod.CHAP_MD5,), mppe=MppePolicy.OPTIONAL),
        server_config(auth_methods=ALL_METHODS, mppe=MppePolicy.OPTIONAL),
    )
    h.run()
    assert [e.method for e in h.events[0] if isinstance(e, Authenticated)] == [AuthMethod.CHAP_MD5]
    assert h.up(0).encryption == "none"


def test_mppe_require_against_server_refusing() -> None:
    h = Harness.make(client_config(), server_config(mppe=MppePolicy.REFUSE))
    h.run()
    reason = h.down(0).reason
    assert "will not encrypt" in reason and "--mppe optional" in reason
    assert not any(isinstance(e, LinkUp) for e in h.events[0])
    assert h.client.counters.tx_ip == 0


def test_mppe_optional_against_server_refusing_runs_clear() -> None:
    h = Harness.make(client_config(mppe=MppePolicy.OPTIONAL), server_config(mppe=MppePolicy.REFUSE))
    h.run()
    assert h.up(0).encryption == h.up(1).encryption == "none"
    roundtrip(h, b"in the clear, as configured")


def test_mppe_require_with_disjoint_key_lengths_fails_with_reason() -> None:
    h = Harness.make(
        client_config(mppe_key_bits=frozenset({128})), server_config(mppe_key_bits=frozenset({40}))
    )
    h.run()
    reason = h.down(0).reason
    assert "key length" in reason and "128" in reason


def test_require_with_pap_has_no_keys() -> None:
    h = Harness.make(
        client_config(auth_methods=(AuthMethod.PAP,)),
        server_config(auth_methods=(AuthMethod.PAP,), mppe=MppePolicy.OPTIONAL),
    )
    h.run()
    assert "MPPE needs MS-CHAP" in h.down(0).reason


def test_unencrypted_frame_after_mppe_is_dropped() -> None:
    h = Harness.make(client_config(), server_config())
    h.run()
    clear = F.encode_frame(F.IPV4, ipv4_packet(b"injected"), acfc=False, pfc=False)
    assert h.client.receive(clear, h.now) == []
    assert h.client.counters.rx_unencrypted_dropped == 1


def test_ipv6cp() -> None:
    h = Harness.make(client_config(ipv6=True), server_config(ipv6=True))
    h.run()
    c, s = h.up(0), h.up(1)
    assert c.ipv6_local is not None and c.ipv6_peer is not None
    assert (c.ipv6_local, c.ipv6_peer) == (s.ipv6_peer, s.ipv6_local)
    assert c.ipv6_local.is_link_local and c.ipv6_local != c.ipv6_peer
    pkt6 = b"\x60" + bytes(39) + b"v6 data"
    frame = h.client.send_ip(pkt6, h.now)
    assert frame is not None and h.server.receive(frame, h.now) == [pkt6]


def test_ipv6_only_on_one_side_gets_protocol_reject_and_link_still_comes_up() -> None:
    h = Harness.make(client_config(ipv6=True), server_config(ipv6=False))
    h.run()
    assert h.up(0).ipv6_local is None
    assert h.server.counters.protocol_rejects_sent >= 1


def test_keepalive_rtt_and_dead_peer() -> None:
    h = Harness.make(client_config(echo_interval=5.0, echo_failures=3), server_config())
    h.run()
    h.run(until_settled=False, limit=h.now + 12)
    rtts = [e for e in h.events[0] if isinstance(e, EchoRtt)]
    assert len(rtts) == 2 and all(0 < r.seconds < 0.1 for r in rtts)
    # the server goes silent
    h.server = PppLink(LinkRole.AUTHENTICATOR, server_config(), random.Random(9))
    h.net.queue.clear()
    start = h.now
    h.run(until_settled=False, limit=h.now + 30)
    down = h.down(0)
    assert down.reason == "the server stopped answering LCP echo requests"
    assert 15 <= h.now - start <= 30


def test_keepalive_data_from_the_peer_counts_as_life() -> None:
    """Every Echo-Reply lost (a lossy path) but the server's data still arriving: the link stays up.
    When the data stops too, the silence is detected in ``failures`` intervals, as before."""
    h = Harness.make(client_config(echo_interval=1.0, echo_failures=2), server_config())
    h.run()
    wire = h.net.send

    def echo_replies_lost(now: float, dest: int, frame: bytes) -> None:
        protocol, payload = F.decode_frame(frame)
        if dest == 0 and protocol == F.LCP and payload[0] == F.ECHO_REPLY:
            return
        wire(now, dest, frame)

    h.net.send = echo_replies_lost  # type: ignore[method-assign]
    start = h.now
    while h.now < start + 10:
        frame = h.server.send_ip(ipv4_packet(b"still here"), h.now)
        assert frame is not None
        h.net.send(h.now, 0, frame)
        h.run(until_settled=False, limit=h.now + 0.7)
    assert not [e for e in h.events[0] if isinstance(e, LinkDown)]
    assert h.client.counters.echo_requests_sent >= 9 and h.client.counters.rx_ip >= 9
    quiet = h.now
    while h.now < quiet + 10 and not [e for e in h.events[0] if isinstance(e, LinkDown)]:
        h.run(until_settled=False, limit=h.now + 0.1)
    assert h.down(0).reason == "the server stopped answering LCP echo requests"
    assert h.now - quiet <= 3.1


def test_close_sends_reason_to_the_peer() -> None:
    h = Harness.make(client_config(), server_config())
    h.run()
    h.client.close(h.now, "user asked to disconnect")
    h.run(until_settled=False, limit=h.now + 20)
    assert h.down(0).reason == "user asked to disconnect"
    assert h.down(1).reason == "the client closed the link: user asked to disconnect"
    assert h.client.phase is Phase.DEAD and h.server.phase is Phase.DEAD


PREFIXES = [b"\xff\x03\xc0\x21", b"\x80\x21", b"\x00\xfd", b"\xc2\x23", b"\x80\xfd", b"\x21"]


def test_random_bytes_never_raise() -> None:
    rng = random.Random(5)
    h = Harness.make(client_config(), server_config())
    h.run()
    for link in h.links():
        for _ in range(2000):
            raw = rng.randbytes(rng.randrange(0, 40))
            if rng.random() < 0.5:  # aim at real protocols
                raw = (
                    rng.choice([b"\xff\x03\xc0\x21", b"\x80\x21", b"\x00\xfd", b"\xc2\x23", b"\x80\xfd"])
                    + raw
                )
            link.receive(raw, h.now)
            link.timeout(h.now)


# -- loss, duplication, reordering ------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    loss=st.sampled_from([0.0, 0.1, 0.3]),
    dup=st.sampled_from([0.0, 0.2, 0.5]),
    jitter=st.sampled_from([0.0, 0.5, 4.0]),
    method=st.sampled_from(ALL_METHODS),
    mppe=st.sampled_from(list(MppePolicy)),
    server_mppe=st.sampled_from(list(MppePolicy)),
    stateful=st.booleans(),
    ipv6=st.booleans(),
)
def test_negotiation_converges_or_fails_with_reason_under_loss_dup_reorder(
    seed: int,
    loss: float,
    dup: float,
    jitter: float,
    method: AuthMethod,
    mppe: MppePolicy,
    server_mppe: MppePolicy,
    stateful: bool,
    ipv6: bool,
) -> None:
    h = Harness.make(
        client_config(auth_methods=(method,), mppe=mppe, mppe_stateful=stateful, ipv6=ipv6),
        server_config(auth_methods=(method,), mppe=server_mppe, ipv6=ipv6),
        seed,
        loss=loss,
        dup=dup,
        jitter=jitter,
    )
    h.run(limit=1200.0)
    assert h.settled(), "negotiation neither converged nor failed"
    ups = [[e for e in evs if isinstance(e, LinkUp)] for evs in h.events]
    downs = [[e for e in evs if isinstance(e, LinkDown)] for evs in h.events]
    for i in range(2):
        assert len(ups[i]) <= 1 and len(downs[i]) <= 1
        for d in downs[i]:
            assert d.reason.strip()
    if ups[0] and ups[1] and not downs[0] and not downs[1]:
        c, s = ups[0][0], ups[1][0]
        assert c.local_ip == s.peer_ip and c.peer_ip == s.local_ip
        assert c.encryption == s.encryption
        if mppe is MppePolicy.REQUIRE:
            assert c.encryption.startswith("MPPE-")
        if mppe is MppePolicy.REFUSE or server_mppe is MppePolicy.REFUSE:
            assert c.encryption == "none"
        if loss == 0.0 and dup == 0.0:
            roundtrip(h, b"after a rough negotiation")
    elif loss == 0.0 and dup == 0.0 and jitter == 0.0:
        # a clean wire fails only for a policy reason
        has_keys = method in (AuthMethod.MSCHAP_V1, AuthMethod.MSCHAP_V2)
        client_clash = mppe is MppePolicy.REQUIRE and (server_mppe is MppePolicy.REFUSE or not has_keys)
        server_clash = server_mppe is MppePolicy.REQUIRE and (mppe is MppePolicy.REFUSE or not has_keys)
        policy_clash = client_clash or server_clash
        assert policy_clash, (downs, h.events)


CONTROL_PROTOCOLS = [F.LCP, F.IPCP, F.IPV6CP, F.CCP, F.PAP, F.CHAP, 0x8031, 0x00FD, 0x0021]


@settings(max_examples=200, deadline=None)
@given(
    stage=st.integers(0, 30),
    packets=st.lists(
        st.tuples(
            st.sampled_from(CONTROL_PROTOCOLS),
            st.integers(0, 16),
            st.integers(0, 255),
            st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=8)), max_size=4),
            st.binary(max_size=6),
            st.booleans(),
        ),
        max_size=12,
    ),
)
def test_structured_garbage_at_any_stage_never_raises(
    stage: int, packets: list[tuple[int, int, int, list[tuple[int, bytes]], bytes, bool]]
) -> None:
    h = Harness.make(client_config(ipv6=True), server_config(ipv6=True))
    h.run(limit=stage * 0.01, until_settled=False)  # stop somewhere inside the negotiation
    for link in h.links():
        for proto, code, ident, opts, tail, raw in packets:
            if raw:
                body = bytes((code, ident)) + tail  # length field garbage
            else:
                options = b"".join(bytes((t, len(d) + 2)) + d for t, d in opts)
                body = F.encode_control(code, ident, options + tail)
            link.receive(F.encode_frame(proto, body, acfc=False, pfc=False), h.now)
        link.timeout(h.now + 100)
        link.frames_to_send()
        link.events()


def test_authenticator_address_assigned_during_authentication() -> None:
    box: dict[str, PppLink] = {}

    def lookup(user: str) -> Secret | None:
        box["server"].assign_peer_ip(IPv4Address("10.9.0.77"))  # picked per user, like the server does
        return USERS.get(user)

    h = Harness.make(client_config(), server_config(peer_ip=None, lookup_secret=lookup))
    box["server"] = h.server
    h.run()
    assert h.up(0).local_ip == IPv4Address("10.9.0.77") == h.up(1).peer_ip
    with pytest.raises(ValueError, match="already started"):
        h.server.assign_peer_ip(IPv4Address("10.9.0.78"))


def test_authenticator_without_an_address_refuses_with_reason() -> None:
    h = Harness.make(client_config(), server_config(peer_ip=None))
    h.run()
    assert h.down(1).reason == "no IPv4 address to assign to the client"
