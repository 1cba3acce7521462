"""Peer against authenticator, in process, for every method: success, wrong password, unknown user,
forged MS-CHAPv2 authenticator response, MS-CHAP error codes, lost and duplicated packets with
timers (converges or fails with a reason, never hangs), and secrets kept out of every repr/str."""

from __future__ import annotations

import dataclasses
import heapq
import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.proto.ppp.auth import (
    Authenticator,
    AuthFailure,
    AuthMethod,
    AuthPeer,
    AuthSuccess,
    make_authenticator,
    make_peer,
)
from sidecar.proto.ppp.auth.base import decode_packet, encode_packet
from sidecar.proto.ppp.auth.chap import CHALLENGE, FAILURE, SUCCESS, encode_value_name
from sidecar.proto.ppp.auth.mschap import (
    generate_authenticator_response,
    hash_nt_password_hash,
    nt_password_hash,
)
from sidecar.proto.ppp.mppe import MppeCodec
from sidecar.proto.secret import Secret

PASSWORD = "Corr3ct-Horse-Battery"
USERS = {"alice": Secret(PASSWORD), "CORP\\bob": Secret("b0b-pass")}
ALL = list(AuthMethod)
KEYED = [AuthMethod.MSCHAP_V1, AuthMethod.MSCHAP_V2]

Drop = Callable[[str, int, bytes], int]  # (direction, index, packet) -> copies to deliver (0 = lost)


def _keep(direction: str, index: int, packet: bytes) -> int:
    return 1


def run(peer: AuthPeer, auth: Authenticator, deliver: Drop = _keep, latency: float = 0.05) -> float:
    """Event loop over a simulated clock. Returns the time at which both sides went quiet."""
    now = 0.0
    queue: list[tuple[float, int, str, bytes]] = []
    seq = 0
    counts = {"p2a": 0, "a2p": 0}

    def send(direction: str, packets: list[bytes]) -> None:
        nonlocal seq
        for pk in packets:
            copies = deliver(direction, counts[direction], pk)
            counts[direction] += 1
            for _ in range(copies):
                seq += 1
                heapq.heappush(queue, (now + latency, seq, direction, pk))

    send("p2a", peer.start(now))
    send("a2p", auth.start(now))
    for _ in range(10_000):
        times = [t for t in (peer.next_deadline(), auth.next_deadline()) if t is not None]
        if queue:
            times.append(queue[0][0])
        if not times:
            return now
        now = max(now, min(times))
        while queue and queue[0][0] <= now:
            _, _, direction, pk = heapq.heappop(queue)
            if direction == "p2a":
                send("a2p", auth.receive(pk, now))
            else:
                send("p2a", peer.receive(pk, now))
        send("p2a", peer.timeout(now))
        send("a2p", auth.timeout(now))
    raise AssertionError("the exchange never went quiet")


def pair(
    method: AuthMethod, user: str = "alice", password: str = PASSWORD, seed: int = 7
) -> tuple[AuthPeer, Authenticator]:
    rng = random.Random(seed)
    return (
        make_peer(method, user, Secret(password), rng, restart_interval=1.0, max_transmits=4),
        make_authenticator(method, USERS.get, "test-server", rng, restart_interval=1.0, max_transmits=4),
    )


@pytest.mark.parametrize("method", ALL)
def test_success(method: AuthMethod) -> None:
    peer, auth = pair(method)
    run(peer, auth)
    assert isinstance(peer.result, AuthSuccess), peer.result
    assert isinstance(auth.result, AuthSuccess), auth.result
    assert auth.result.peer_name == "alice"
    assert peer.result.method is method and auth.result.method is method
    if method is not AuthMethod.PAP:
        assert peer.result.peer_name == "test-server"
    assert peer.next_deadline() is None and auth.next_deadline() is None
    assert peer.protocol == (0xC023 if method is AuthMethod.PAP else 0xC223)


@pytest.mark.parametrize("method", KEYED)
def test_mppe_keys_pair_up(method: AuthMethod) -> None:
    peer, auth = pair(method)
    run(peer, auth)
    assert isinstance(peer.result, AuthSuccess) and isinstance(auth.result, AuthSuccess)
    assert peer.result.keys is not None and auth.result.keys is not None
    for bits in (40, 56, 128):
        c_send, c_recv = peer.result.keys.start_keys(bits, is_server=False)
        s_send, s_recv = auth.result.keys.start_keys(bits, is_server=True)
        assert (c_send, c_recv) == (s_recv, s_send)
        assert len(c_send) == (16 if bits == 128 else 8)
        client = MppeCodec(c_send, c_recv, bits, stateful=False)
        server = MppeCodec(s_send, s_recv, bits, stateful=False)
        assert server.decrypt(client.encrypt(b"\x00\x21hello")) == b"\x00\x21hello"
        assert client.decrypt(server.encrypt(b"\x00\x21back")) == b"\x00\x21back"
    if method is AuthMethod.MSCHAP_V2:  # asymmetric keys
        send, recv = peer.result.keys.start_keys(128, is_server=False)
        assert send != recv


@pytest.mark.parametrize("method", [AuthMethod.PAP, AuthMethod.CHAP_MD5])
def test_no_mppe_keys_for_pap_and_md5(method: AuthMethod) -> None:
    peer, auth = pair(method)
    run(peer, auth)
    assert isinstance(peer.result, AuthSuccess) and peer.result.keys is None


@pytest.mark.parametrize("method", ALL)
def test_wrong_password(method: AuthMethod) -> None:
    peer, auth = pair(method, password="wrong")
    run(peer, auth)
    assert isinstance(peer.result, AuthFailure)
    assert peer.result.bad_credentials
    assert "wrong user name or password" in peer.result.reason
    assert isinstance(auth.result, AuthFailure)
    assert auth.result.reason == "wrong password for user 'alice'"


@pytest.mark.parametrize("method", ALL)
def test_unknown_user(method: AuthMethod) -> None:
    peer, auth = pair(method, user="mallory")
    run(peer, auth)
    assert isinstance(peer.result, AuthFailure) and peer.result.bad_credentials
    assert isinstance(auth.result, AuthFailure)
    assert auth.result.reason == "unknown user 'mallory'"


@pytest.mark.parametrize("method", ALL)
def test_domain_user(method: AuthMethod) -> None:
    peer, auth = pair(method, user="CORP\\bob", password="b0b-pass")
    run(peer, auth)
    assert isinstance(peer.result, AuthSuccess) and isinstance(auth.result, AuthSuccess)


def test_mschapv2_failure_packet_format() -> None:
    peer, auth = pair(AuthMethod.MSCHAP_V2, password="nope")
    sent: list[bytes] = []

    def spy(direction: str, index: int, packet: bytes) -> int:
        sent.append(packet)
        return 1

    run(peer, auth, spy)
    code, _, data = decode_packet(sent[-1])
    assert code == FAILURE
    text = data.decode()
    fields = dict(tok.split("=", 1) for tok in text.split(" M=")[0].split())
    assert fields["E"] == "691" and fields["R"] == "0" and fields["V"] == "3"
    assert len(fields["C"]) == 32 and bytes.fromhex(fields["C"])
    assert text.endswith(" M=Authentication failed")


def test_mschapv2_success_packet_carries_authenticator_response() -> None:
    peer, auth = pair(AuthMethod.MSCHAP_V2)
    sent: list[tuple[str, bytes]] = []

    def spy(direction: str, index: int, packet: bytes) -> int:
        sent.append((direction, packet))
        return 1

    run(peer, auth, spy)
    response = next(p for d, p in sent if d == "p2a")
    challenge = next(p for d, p in sent if d == "a2p")
    code, _, data = decode_packet(sent[-1][1])
    assert code == SUCCESS
    # recompute S= independently from the packets on the wire
    chal_value = decode_packet(challenge)[2][1:17]
    resp_value = decode_packet(response)[2][1:50]
    expected = generate_authenticator_response(
        nt_password_hash(Secret(PASSWORD)), resp_value[24:48], resp_value[0:16], chal_value, "alice"
    )
    assert data.decode() == f"{expected} M=Access granted"


def _v2_peer_after_response(seed: int = 3) -> tuple[AuthPeer, int, bytes, bytes]:
    peer = make_peer(AuthMethod.MSCHAP_V2, "alice", Secret(PASSWORD), random.Random(seed))
    peer.start(0.0)
    challenge = bytes(range(16))
    [resp] = peer.receive(encode_value_name(CHALLENGE, 9, challenge, b"srv"), 0.0)
    value = decode_packet(resp)[2][1:50]
    return peer, 9, challenge, value


def test_mschapv2_peer_refuses_forged_authenticator_response() -> None:
    peer, ident, _challenge, _value = _v2_peer_after_response()
    forged = b"S=" + b"0" * 40 + b" M=welcome"
    assert peer.receive(encode_packet(SUCCESS, ident, forged), 0.1) == []
    assert isinstance(peer.result, AuthFailure)
    assert "could not prove it knows the password" in peer.result.reason
    assert "possible impostor" in peer.result.reason
    assert not peer.result.bad_credentials


def test_mschapv2_peer_refuses_success_without_authenticator_response() -> None:
    peer, ident, _c, _v = _v2_peer_after_response()
    peer.receive(encode_packet(SUCCESS, ident, b"M=welcome"), 0.1)
    assert isinstance(peer.result, AuthFailure) and "impostor" in peer.result.reason


def test_mschapv2_peer_refuses_response_for_other_password() -> None:
    # an impostor that guessed the protocol but not the password: S= computed with another password
    peer, ident, challenge, value = _v2_peer_after_response()
    fake = generate_authenticator_response(
        nt_password_hash(Secret("not-it")), value[24:48], value[0:16], challenge, "alice"
    )
    peer.receive(encode_packet(SUCCESS, ident, fake.encode()), 0.1)
    assert isinstance(peer.result, AuthFailure) and "impostor" in peer.result.reason


def test_mschapv2_peer_accepts_genuine_response_with_keys() -> None:
    peer, ident, challenge, value = _v2_peer_after_response()
    real = generate_authenticator_response(
        nt_password_hash(Secret(PASSWORD)), value[24:48], value[0:16], challenge, "alice"
    )
    peer.receive(encode_packet(SUCCESS, ident, ("S=" + real[2:].lower() + " M=hi").encode()), 0.1)
    assert isinstance(peer.result, AuthSuccess)
    assert peer.result.message == "hi"
    assert peer.result.keys is not None


@pytest.mark.parametrize(
    ("error", "words", "bad"),
    [
        (691, "authentication failed: wrong user name or password", True),
        (646, "restricted logon hours", False),
        (647, "disabled", True),
        (648, "password has expired", True),
        (649, "no dial-in permission", True),
        (709, "error changing the password", False),
        (123, "server error E=123", False),
    ],
)
@pytest.mark.parametrize("method", KEYED)
def test_mschap_error_codes(method: AuthMethod, error: int, words: str, bad: bool) -> None:
    peer = make_peer(method, "alice", Secret(PASSWORD), random.Random(1))
    peer.start(0.0)
    size = 16 if method is AuthMethod.MSCHAP_V2 else 8
    peer.receive(encode_value_name(CHALLENGE, 4, bytes(size), b"srv"), 0.0)
    peer.receive(encode_packet(FAILURE, 4, f"E={error} R=0 C={'00' * size} V=3 M=go away".encode()), 0.1)
    assert isinstance(peer.result, AuthFailure)
    assert words in peer.result.reason
    assert "(server says: go away)" in peer.result.reason
    assert peer.result.bad_credentials is bad


@pytest.mark.parametrize("method", ALL)
def test_authenticator_gives_up_when_peer_is_silent(method: AuthMethod) -> None:
    _, auth = pair(method)
    out = auth.start(0.0)
    sends = len(out)
    t = 0.0
    while auth.next_deadline() is not None:
        deadline = auth.next_deadline()
        assert deadline is not None and deadline > t
        t = deadline
        sends += len(auth.timeout(t))
    assert isinstance(auth.result, AuthFailure)
    assert "peer" in auth.result.reason
    if method is not AuthMethod.PAP:  # the Challenge is resent, up to max_transmits in all
        assert sends == 4
    assert t <= 4.0 + 1e-9


@pytest.mark.parametrize("method", ALL)
def test_peer_gives_up_when_server_is_silent(method: AuthMethod) -> None:
    peer, _ = pair(method)
    sends = len(peer.start(0.0))
    t = 0.0
    while (deadline := peer.next_deadline()) is not None:
        t = deadline
        sends += len(peer.timeout(t))
    assert isinstance(peer.result, AuthFailure)
    assert "server" in peer.result.reason
    if method is AuthMethod.PAP:
        assert sends == 4  # Authenticate-Request resent up to max_transmits
        assert "did not answer" in peer.result.reason
    else:
        assert "sent no CHAP Challenge" in peer.result.reason
    assert t <= 4.0 + 1e-9


def test_timeout_before_deadline_does_nothing() -> None:
    peer, _ = pair(AuthMethod.PAP)
    peer.start(0.0)
    assert peer.timeout(0.5) == []
    assert peer.result is None and peer.counters.retransmits == 0
    assert len(peer.timeout(1.0)) == 1 and peer.counters.retransmits == 1


def test_pap_retransmission_uses_new_identifiers() -> None:
    peer, _ = pair(AuthMethod.PAP)
    ids = [decode_packet(p)[1] for p in peer.start(0.0)]
    ids += [decode_packet(p)[1] for p in peer.timeout(1.0)]
    ids += [decode_packet(p)[1] for p in peer.timeout(2.0)]
    assert len(set(ids)) == 3


def test_chap_challenge_resend_is_identical() -> None:
    _, auth = pair(AuthMethod.MSCHAP_V2)
    first = auth.start(0.0)
    assert auth.timeout(1.0) == first


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("lost", ["first-p2a", "first-a2p", "second-a2p", "all-a2p-once"])
def test_lost_packets_recover(method: AuthMethod, lost: str) -> None:
    peer, auth = pair(method)

    def deliver(direction: str, index: int, packet: bytes) -> int:
        if lost == "first-p2a":
            return 0 if (direction, index) == ("p2a", 0) else 1
        if lost == "first-a2p":
            return 0 if (direction, index) == ("a2p", 0) else 1
        if lost == "second-a2p":  # CHAP: the Success is lost; PAP: nothing to lose (one reply)
            return 0 if (direction, index) == ("a2p", 1) else 1
        return 0 if index % 2 == 0 and direction == "a2p" else 1

    took = run(peer, auth, deliver)
    assert isinstance(peer.result, AuthSuccess), peer.result
    assert isinstance(auth.result, AuthSuccess), auth.result
    assert took < 4.0


@pytest.mark.parametrize("method", ALL)
def test_duplicated_packets(method: AuthMethod) -> None:
    peer, auth = pair(method)
    run(peer, auth, lambda d, i, p: 2)
    assert isinstance(peer.result, AuthSuccess) and isinstance(auth.result, AuthSuccess)


@settings(max_examples=60, deadline=None)
@given(
    method=st.sampled_from(ALL),
    pattern=st.lists(st.integers(min_value=0, max_value=2), min_size=0, max_size=12),
    good=st.booleans(),
)
def test_any_loss_pattern_terminates_consistently(method: AuthMethod, pattern: list[int], good: bool) -> None:
    peer, auth = pair(method, password=PASSWORD if good else "bad")
    plan = iter(pattern)

    def deliver(direction: str, index: int, packet: bytes) -> int:
        return next(plan, 1)

    took = run(peer, auth, deliver)
    assert peer.result is not None and auth.result is not None
    assert peer.next_deadline() is None and auth.next_deadline() is None
    assert took <= 20.0
    if isinstance(peer.result, AuthSuccess):
        assert good and isinstance(auth.result, AuthSuccess)
    if not good:
        assert isinstance(peer.result, AuthFailure) and isinstance(auth.result, AuthFailure)
    for result in (peer.result, auth.result):
        if isinstance(result, AuthFailure):
            assert result.reason


@pytest.mark.parametrize("method", ALL)
def test_garbage_is_dropped_and_counted(method: AuthMethod) -> None:
    peer, auth = pair(method)
    peer.start(0.0)
    auth.start(0.0)
    for junk in (
        b"",
        b"\x01",
        b"\x01\x02\x00\x02",
        b"\x01\x02\xff\xff",
        b"\x02\x01\x00\x05\xff",
        b"\x09\x01\x00\x04",
    ):
        assert peer.receive(junk, 0.0) == []
        assert auth.receive(junk, 0.0) == []
    assert peer.result is None and auth.result is None
    assert peer.counters.bad_packets + peer.counters.unexpected == 6
    assert auth.counters.bad_packets + auth.counters.unexpected == 6


@settings(max_examples=200, deadline=None)
@given(method=st.sampled_from(ALL), blobs=st.lists(st.binary(max_size=80), max_size=8))
def test_random_bytes_never_raise(method: AuthMethod, blobs: list[bytes]) -> None:
    peer, auth = pair(method)
    peer.start(0.0)
    auth.start(0.0)
    for b in blobs:
        peer.receive(b, 0.0)
        auth.receive(b, 0.0)


def test_option_data() -> None:
    assert AuthMethod.PAP.option_data() == bytes.fromhex("c023")
    assert AuthMethod.CHAP_MD5.option_data() == bytes.fromhex("c22305")
    assert AuthMethod.MSCHAP_V1.option_data() == bytes.fromhex("c22380")
    assert AuthMethod.MSCHAP_V2.option_data() == bytes.fromhex("c22381")
    for m in AuthMethod:
        assert AuthMethod.from_option_data(m.option_data()) is m
        assert AuthMethod.from_option_data(memoryview(m.option_data())) is m
    assert AuthMethod.from_option_data(bytes.fromhex("c22306")) is None  # CHAP-SHA1: not spoken
    assert AuthMethod.from_option_data(b"") is None


def _texts(obj: object) -> list[str]:
    out = [repr(obj), str(obj)]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out += [repr(getattr(obj, f.name)) for f in dataclasses.fields(obj)]
    return out


@pytest.mark.parametrize("method", ALL)
def test_secrets_never_in_repr_or_str(method: AuthMethod) -> None:
    peer, auth = pair(method)
    run(peer, auth)
    bad_peer, bad_auth = pair(method, password="Wr0ng-Secret-Value")
    run(bad_peer, bad_auth)
    pw_hash = nt_password_hash(Secret(PASSWORD))
    forbidden = [PASSWORD, "Wr0ng-Secret-Value", pw_hash.hex(), hash_nt_password_hash(pw_hash).hex()]
    forbidden_bytes = [pw_hash, hash_nt_password_hash(pw_hash)]
    objects: list[object] = [peer, auth, peer.result, auth.result, bad_peer, bad_auth]
    objects += [bad_peer.result, bad_auth.result, peer.counters, auth.counters]
    assert peer.result is not None and isinstance(peer.result, AuthSuccess)
    if peer.result.keys is not None:
        objects.append(peer.result.keys)
        for bits in (40, 128):
            send, recv = peer.result.keys.start_keys(bits, is_server=False)
            forbidden += [send.hex(), recv.hex()]
            forbidden_bytes += [send, recv]
            codec = MppeCodec(send, recv, bits, stateful=True)
            objects += [codec, codec.counters]
    for obj in objects:
        for text in _texts(obj):
            for f in forbidden:
                assert f.lower() not in text.lower(), (type(obj).__name__, text)
            for fb in forbidden_bytes:
                assert repr(fb) not in text
                assert fb.hex() not in text.lower()
