"""Fuzz targets for PPP authentication (PAP, CHAP-MD5, MS-CHAPv1, MS-CHAPv2), both roles, from every
stage of the exchange, plus the packet/message codecs on their own."""

from __future__ import annotations

import random
from functools import partial

from fuzz.common import (
    InvariantError,
    Reader,
    blob,
    check,
    check_counters,
    check_deadline,
    decoder_guard,
    u8,
    u16,
)
from sidecar.proto.errors import PppError
from sidecar.proto.ppp.auth import (
    Authenticator,
    AuthFailure,
    AuthMethod,
    AuthPeer,
    AuthSuccess,
    make_authenticator,
    make_peer,
)
from sidecar.proto.ppp.auth.base import decode_packet, encode_packet, printable
from sidecar.proto.ppp.auth.chap import decode_value_name, encode_value_name
from sidecar.proto.ppp.auth.mschap import (
    decode_v1_response,
    decode_v2_response,
    parse_failure,
    parse_success,
)
from sidecar.proto.ppp.auth.pap import (
    decode_authenticate_request,
    decode_reply_message,
    encode_authenticate_request,
)
from sidecar.proto.secret import Secret

USER = "alice"
PASSWORD = "fuzz-Secret-p4ss"  # must never appear in a result, reason or repr
METHODS = (AuthMethod.PAP, AuthMethod.CHAP_MD5, AuthMethod.MSCHAP_V1, AuthMethod.MSCHAP_V2)


def _lookup(name: str) -> Secret | None:
    return Secret(PASSWORD) if name == USER else None


def target_auth_codecs(data: bytes) -> None:
    """The authentication packet codecs: only PppError; accepted input round-trips."""
    got = decoder_guard(lambda: decode_packet(data))
    if got is not None:
        code, ident, body = got
        again = encode_packet(code, ident, body)
        check(decode_packet(again) == got, "auth packet round trip changed it")
        vn = decoder_guard(lambda: decode_value_name(body))
        if vn is not None:
            value, name = vn
            check(decode_value_name(encode_value_name(code, ident, value, name)[4:]) == vn, "CHAP value/name")
        pr = decoder_guard(lambda: decode_authenticate_request(body))
        if pr is not None:
            peer_id, pw = pr
            check(
                decode_authenticate_request(encode_authenticate_request(ident, peer_id, pw)[4:]) == pr,
                "PAP request round trip",
            )
        decode_reply_message(body)
        decoder_guard(partial(decode_v1_response, body))
        decoder_guard(partial(decode_v2_response, body))
    f = parse_failure(data)
    reason, bad = f.describe()
    check(isinstance(reason, str) and isinstance(bad, bool), "FailureMessage.describe types")
    f.encode()
    auth, msg = parse_success(data)
    check(auth is None or (len(auth) == 40 and auth == auth.upper()), f"parse_success gave {auth!r}")
    check(isinstance(msg, str), "parse_success message")
    p = printable(data)
    check(all(ch.isprintable() for ch in p), "printable() left a control character")


class _AuthWatch:
    def __init__(self, machine: AuthPeer | Authenticator, what: str) -> None:
        self.m = machine
        self.what = what
        self.result: AuthSuccess | AuthFailure | None = machine.result

    def packets(self, out: list[bytes]) -> list[bytes]:
        check(isinstance(out, list), f"{self.what} returned {type(out).__name__}")
        for p in out:
            try:
                decode_packet(p)
            except PppError as exc:
                raise InvariantError(f"{self.what} sent a malformed packet {p.hex()}: {exc}") from exc
        return out

    def state(self) -> None:
        m = self.m
        check_deadline(m.next_deadline(), self.what)
        check_counters(m.counters, f"{self.what}.counters")
        res = m.result
        check(res is None or isinstance(res, (AuthSuccess, AuthFailure)), f"{self.what} result {res!r}")
        if self.result is not None:
            check(
                res is self.result,
                f"verdict changed after it was given ({self.what}): {self.result!r} -> {res!r}",
            )
        self.result = res
        if res is not None:
            check(m.next_deadline() is None, f"{self.what} decided but keeps a timer")
            for text in (str(res), repr(res), getattr(res, "reason", ""), getattr(res, "message", "")):
                check(PASSWORD not in text, f"{self.what} result shows the password")
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as exc:
                    raise InvariantError(f"{self.what} result text is not encodable as UTF-8: {exc}") from exc
        check(PASSWORD not in repr(m), f"{self.what} repr shows the password")


def _pair(method: AuthMethod, password: str, seed: int) -> tuple[AuthPeer, Authenticator]:
    peer = make_peer(
        method, USER, Secret(password), random.Random(seed), restart_interval=1.0, max_transmits=4
    )
    auth = make_authenticator(
        method, _lookup, "fuzzsrv", random.Random(seed + 1), restart_interval=1.0, max_transmits=4
    )
    return peer, auth


def _ms_success(r: Reader) -> bytes:
    hexes = r.take(20).hex().upper()
    return b"S=" + hexes.encode() + b" M=" + r.blob()


def _ms_failure(r: Reader) -> bytes:
    return b"E=%d R=%d C=%s V=%d M=" % (r.u16(), r.u8() & 1, r.take(16).hex().encode(), r.u8()) + r.blob()


def target_auth(data: bytes) -> None:
    """One authentication machine (either role, any method) from any stage, fed raw packets,
    structured packets with live identifiers, MS-CHAP Success/Failure messages, replays of the
    twin's packets and timers. Nothing escapes; the verdict never changes once given; no password
    in any result or repr."""
    r = Reader(data)
    setup = r.u8()
    method = METHODS[setup & 3]
    test_peer = bool(setup & 4)
    prelude = (setup >> 3) & 3
    wrong_password = bool(setup & 0x20)
    peer, auth = _pair(method, PASSWORD + "x" if wrong_password else PASSWORD, r.u16())
    now = 0.0
    to_peer = auth.start(now)
    to_auth = peer.start(now)
    history: list[bytes] = list(to_peer + to_auth)
    for _ in range(prelude):  # 0: nothing exchanged, 1..3: that many round trips
        to_auth += [q for p in to_peer for q in peer.receive(p, now)]
        to_peer = [q for p in to_auth for q in auth.receive(p, now)]
        to_auth = []
        history += to_peer
    m: AuthPeer | Authenticator = peer if test_peer else auth
    twin: AuthPeer | Authenticator = auth if test_peer else peer
    watch = _AuthWatch(m, f"{method.label} {'peer' if test_peer else 'authenticator'}")
    pending = to_peer if test_peer else to_auth  # what the twin sent us last
    watch.state()
    last_ident = 0
    for p in history:
        if len(p) >= 2:
            last_ident = p[1]
    for op in r.ops(8):
        out: list[bytes] = []
        if op == 0:
            out = m.receive(r.blob(), now)
        elif op == 1:
            code = r.u8() % 8
            ident = last_ident if r.u8() & 1 else r.u8()
            out = m.receive(encode_packet(code, ident, r.blob()), now)
        elif op == 2:  # MS-CHAP style Success / Failure with the live identifier
            body = _ms_success(r) if r.u8() & 1 else _ms_failure(r)
            out = m.receive(encode_packet(3 + (len(body) & 1), last_ident, body), now)
        elif op == 3:  # the twin's pending packets reach us; our answer reaches the twin
            for p in pending:
                out += m.receive(p, now)
            pending = []
        elif op == 4:
            now += r.u8() / 50.0
            out = m.timeout(now)
            pending += twin.timeout(now)
        elif op == 5:
            d = m.next_deadline()
            if d is not None:
                now = max(now, d)
            out = m.timeout(now)
        elif op == 6:
            if history:
                out = m.receive(history[r.u8() % len(history)], now)
        else:  # a CHAP Challenge / Response with a fuzzed value and name
            value = r.take(1 + r.u8() % 64) or b"\x00"
            out = m.receive(encode_value_name(1 + (r.u8() & 1), last_ident, value, r.blob()), now)
        for p in watch.packets(out):
            if len(p) >= 2:
                last_ident = p[1]
            reply = twin.receive(p, now)
            pending += reply
            history += reply
        for p in pending:
            if len(p) >= 2:
                last_ident = p[1]
        del history[:-12]
        watch.state()
        check_counters(twin.counters, "twin counters")


def seeds() -> dict[str, list[bytes]]:
    codecs = [
        encode_authenticate_request(1, b"alice", b"pw"),
        encode_value_name(1, 2, bytes(16), b"server"),
        encode_value_name(2, 2, bytes(49), b"alice"),
        encode_packet(3, 2, b"S=" + b"0" * 40 + b" M=Access granted"),
        encode_packet(4, 2, b"E=691 R=0 C=00112233445566778899AABBCCDDEEFF V=3 M=Authentication failed"),
        encode_packet(2, 9, b"\x0eAccess granted"),
    ]
    auth: list[bytes] = []
    for m in range(4):
        for role in (0, 4):
            for prelude in range(4):
                setup = m | role | (prelude << 3)
                ops = u8(3) + u8(3) + u8(5) + u8(3) + u8(2) + u8(1) + bytes(20) + blob(b"ok")
                ops += u8(1) + u8(1) + blob(b"\x10" + bytes(16) + b"srv") + u8(6) + u8(0) + u8(4) + u8(100)
                ops += u8(7) + u8(15) + bytes(16) + u8(1) + blob(b"alice") + u8(0) + blob(b"\x02\x01\x00\x04")
                auth.append(u8(setup) + u16(m * 17 + prelude) + ops)
    return {"auth_codecs": codecs, "auth": auth}
