"""``sidecar probe`` in process: the real probe against the real embedded server (its sessions and
protocol machines, both roles) over in-memory TCP and GRE, with trio's MockClock so every timeout is
free; plus a scripted PPTP peer for refusals the embedded server does not produce, and faked kernel
errors for the DNS/TCP/privilege classes. The same paths over real sockets: tests/netns/test_probe.py.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address as A
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from sidecar.config import ProbeSettings, build_probe_settings
from sidecar.kernel.control import ControlConnectError
from sidecar.probe import GRE_HINT, STEPS, ProbeExit, probe
from sidecar.proto.ppp.auth import AuthMethod
from sidecar.proto.ppp.mppe import MppePolicy
from sidecar.proto.pptp import (
    CallClearRequest,
    CallDisconnectNotify,
    OutgoingCallReply,
    OutgoingCallRequest,
    StartControlConnectionReply,
    StartControlConnectionRequest,
    StopControlConnectionReply,
    StopControlConnectionRequest,
    StreamDecoder,
    encode_message,
)
from sidecar.proto.secret import Secret
from tests.unit.server_harness import SERVER_ADDR, Network, make_server, serve_settings

PASSWORD = "alice pass word"
SECRETS = f'alice  pptpd  "{PASSWORD}"  *\n'
CLIENT = A("192.0.2.1")


class ClientGre:
    """The probe's side of the in-memory GRE network; can lose either direction (a firewall)."""

    def __init__(self, net: Network, *, drop_out: bool = False, drop_in: bool = False) -> None:
        self.net, self.drop_out, self.drop_in = net, drop_out, drop_in
        self.closed = False

    async def wait_readable(self) -> None:
        while not self.net.client_inbox[CLIENT]:
            await self.net.client_ready[CLIENT].wait()
            self.net.client_ready[CLIENT] = trio.Event()

    def recv_batch(self, max: int = 64) -> list[tuple[A, bytes]]:
        inbox = self.net.client_inbox[CLIENT]
        out = inbox[:max]
        del inbox[:max]
        return [] if self.drop_in else [(SERVER_ADDR, p) for p in out]

    def send(self, packet: bytes, dest: A | None = None) -> bool:
        if not self.drop_out:
            self.net.to_server(CLIENT, bytes(packet))
        return True

    def close(self) -> None:
        self.closed = True


async def resolve_ok(host: str) -> A:
    return SERVER_ADDR


def settings(user: str = "alice", password: str = PASSWORD, **kw: Any) -> ProbeSettings:
    return ProbeSettings(server="vpn.example.test", user=user, password=Secret(password), **kw)


def run_against_server(
    tmp_path: Path,
    probe_settings: ProbeSettings,
    *,
    serve_kw: dict[str, Any] | None = None,
    gre: dict[str, bool] | None = None,
) -> tuple[int, list[str], dict[str, Any]]:
    """Probe the embedded server; returns (exit code, printed lines, what the server saw after)."""
    serve = serve_settings(tmp_path, SECRETS, **(serve_kw or {}))
    lines: list[str] = []
    seen: dict[str, Any] = {}

    async def main() -> None:
        net = Network()
        server, _tun, _routes = make_server(serve, net)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.gre_loop)
            nursery.start_soon(server.tun_loop)

            async def connect(ip: A, port: int, *, timeout: float) -> trio.abc.Stream:
                assert ip == SERVER_ADDR and port == 1723
                server_end, client_end = trio.testing.memory_stream_pair()
                seen["session"] = server.start_session(server_end, CLIENT, nursery)
                return client_end

            client_gre = ClientGre(net, **(gre or {}))
            with trio.fail_after(120):
                code = await probe(
                    probe_settings,
                    lines.append,
                    resolve=resolve_ok,
                    connect=connect,
                    open_gre=lambda ip: client_gre,
                )
            seen["code"] = code
            seen["gre_closed"] = client_gre.closed
            await trio.sleep(5)  # let the server notice the goodbye / its own timeouts
            seen["sessions_left"] = len(server.sessions)
            seen["addresses_in_use"] = dict(server.pool.in_use)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return seen["code"], lines, seen


def step(lines: list[str], n: int) -> str:
    prefix = f"[{n}/{len(STEPS)}] {STEPS[n - 1]}"
    found = [line for line in lines if line.startswith(prefix)]
    assert len(found) == 1, lines
    return found[0]


def status(lines: list[str], n: int) -> str:
    return step(lines, n)[len(f"[{n}/{len(STEPS)}] ") + 12 :].split()[0]


def no_secret(lines: list[str]) -> None:
    assert all(PASSWORD not in line for line in lines), lines


# -- against the embedded server ----------------------------------------------------------------------
def test_all_good(tmp_path: Path) -> None:
    code, lines, seen = run_against_server(tmp_path, settings())
    assert code == ProbeExit.OK, "\n".join(lines)
    assert [status(lines, n) for n in range(1, 10)] == ["ok"] * 9
    assert "vpn.example.test -> 198.51.100.1" in step(lines, 1)
    assert "vendor 'pptp-sidecar'" in step(lines, 3) and "protocol 1.0" in step(lines, 3)
    assert "result 1 (successful channel establishment)" in step(lines, 3)
    assert "connected: our call ID" in step(lines, 4)
    assert "LCP over GRE works both ways" in step(lines, 5)
    assert "the server asks for MS-CHAPv2" in step(lines, 6)
    assert "authenticated as 'alice' with MS-CHAPv2" in step(lines, 7)
    assert "MPPE-128 stateless" in step(lines, 8) and "MPPE 128-bit stateless" in step(lines, 8)
    assert "10.77.0.10" in step(lines, 9) and "10.77.0.1" in step(lines, 9) and "10.77.0.53" in step(lines, 9)
    assert lines[-1].startswith("verdict: OK: a tunnel to vpn.example.test:1723 should come up")
    no_secret(lines)
    # a clean goodbye: the server's session ended and gave its address back; the socket is closed
    assert seen["sessions_left"] == 0 and seen["addresses_in_use"] == {} and seen["gre_closed"]
    outcome = seen["session"].stack.outcome
    assert outcome is not None and "probe finished" in outcome.reason, outcome


def test_wrong_password(tmp_path: Path) -> None:
    code, lines, seen = run_against_server(tmp_path, settings(password="not the password"))
    assert code == 15
    assert status(lines, 7) == "FAIL" and "wrong user name or password" in step(lines, 7)
    assert [status(lines, n) for n in (8, 9)] == ["skip", "skip"]
    assert "verdict: FAIL at step 7 (credentials)" in lines[-1] and "(exit 15)" in lines[-1]
    assert "not the password" not in "\n".join(lines)
    assert seen["sessions_left"] == 0


def test_without_credentials_stops_after_lcp(tmp_path: Path) -> None:
    code, lines, seen = run_against_server(tmp_path, settings(user="", password=""))
    assert code == ProbeExit.OK
    assert [status(lines, n) for n in range(1, 7)] == ["ok"] * 6
    assert [status(lines, n) for n in (7, 8, 9)] == ["skip"] * 3
    assert "the server asks for MS-CHAPv2" in step(lines, 6)
    assert lines[-1].startswith("verdict: OK so far")
    assert seen["sessions_left"] == 0


def test_server_moves_to_the_method_we_suggest(tmp_path: Path) -> None:
    code, lines, _ = run_against_server(
        tmp_path,
        settings(auth=(AuthMethod.MSCHAP_V1,)),
        serve_kw={"auth": (AuthMethod.MSCHAP_V2, AuthMethod.MSCHAP_V1)},
    )
    assert code == ProbeExit.OK, "\n".join(lines)
    assert "asks for MS-CHAPv1 (it first asked for MS-CHAPv2, then took our suggestion)" in step(lines, 6)


def test_no_common_auth_method(tmp_path: Path) -> None:
    code, lines, _ = run_against_server(tmp_path, settings(auth=(AuthMethod.PAP,)))
    assert code == 17, "\n".join(lines)
    assert status(lines, 6) == "FAIL"
    assert "the server asks for MS-CHAPv2; --auth allows only PAP: allow it with --auth pap,mschapv2" in step(
        lines, 6
    )
    assert [status(lines, n) for n in (7, 8, 9)] == ["skip"] * 3


@pytest.mark.parametrize(
    "serve_kw",
    [
        {"mppe": MppePolicy.REFUSE},
        # CHAP-MD5 gives no MPPE keys: the tunnel could only run in the clear
        {"mppe": MppePolicy.OPTIONAL, "auth": (AuthMethod.CHAP_MD5,)},
    ],
)
def test_encryption_refused(tmp_path: Path, serve_kw: dict[str, Any]) -> None:
    auth = serve_kw.get("auth", (AuthMethod.MSCHAP_V2,))
    code, lines, _ = run_against_server(tmp_path, settings(auth=auth), serve_kw=serve_kw)
    assert code == 16, "\n".join(lines)
    assert status(lines, 7) == "ok" and status(lines, 8) == "FAIL"
    assert "the server will not encrypt" in step(lines, 8) and "--mppe optional" in step(lines, 8)


def test_weaker_key_is_reported_with_the_flag_up_needs(tmp_path: Path) -> None:
    code, lines, _ = run_against_server(tmp_path, settings(), serve_kw={"mppe_key_bits": frozenset({40})})
    assert code == ProbeExit.OK, "\n".join(lines)
    assert "MPPE-40 stateless" in step(lines, 8) and "--mppe-bits 40" in step(lines, 8)


@pytest.mark.parametrize(
    ("gre", "expect"),
    [
        ({"drop_out": True, "drop_in": True}, "no GRE from the server within 3 s: " + GRE_HINT),
        ({"drop_out": True}, "the server's LCP reaches us over GRE"),
    ],
)
def test_gre_blocked(tmp_path: Path, gre: dict[str, bool], expect: str) -> None:
    code, lines, seen = run_against_server(tmp_path, settings(timeout=3.0), gre=gre)
    assert code == 14, "\n".join(lines)
    assert [status(lines, n) for n in (1, 2, 3, 4)] == ["ok"] * 4
    assert status(lines, 5) == "FAIL" and expect in step(lines, 5) and GRE_HINT in step(lines, 5)
    assert "verdict: FAIL at step 5 (GRE)" in lines[-1]
    assert seen["sessions_left"] == 0  # Call-Clear and Stop went over TCP even without GRE


# -- faked kernel errors ------------------------------------------------------------------------------
def run_with(
    probe_settings: ProbeSettings,
    *,
    resolve: Callable[[str], Awaitable[A]] = resolve_ok,
    connect: Any = None,
    open_gre: Any = None,
) -> tuple[int, list[str]]:
    lines: list[str] = []

    async def never(*_: Any, **__: Any) -> Any:
        raise AssertionError("not reached")

    async def main() -> int:
        return await probe(
            probe_settings, lines.append, resolve=resolve, connect=connect or never, open_gre=open_gre
        )

    code = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return code, lines


def _raiser(exc: BaseException) -> Callable[..., Awaitable[Any]]:
    async def fail(*_: Any, **__: Any) -> Any:
        raise exc

    return fail


def _connect_error(msg: str, cause: OSError | None) -> ControlConnectError:
    exc = ControlConnectError(msg)
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(
    ("cause", "expect"),
    [
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "does not exist in DNS"),
        (socket.gaierror(socket.EAI_AGAIN, "Temporary failure"), "no DNS server answered"),
    ],
)
def test_dns_failures(cause: OSError, expect: str) -> None:
    code, lines = run_with(
        settings(), resolve=_raiser(_connect_error("cannot resolve PPTP server 'x'", cause))
    )
    assert code == 10
    assert status(lines, 1) == "FAIL" and expect in step(lines, 1)
    assert [status(lines, n) for n in range(2, 10)] == ["skip"] * 8


def test_dns_timeout_is_bounded_by_the_probe_budget() -> None:
    async def slow(host: str) -> A:
        await trio.sleep_forever()
        raise AssertionError

    code, lines = run_with(settings(timeout=2.0), resolve=slow)
    assert code == ProbeExit.DNS and "no DNS answer for 'vpn.example.test' within 2 s" in step(lines, 1)


def test_literal_address_needs_no_lookup() -> None:
    s = ProbeSettings(server="198.51.100.7", user="", password=Secret(""))
    code, lines = run_with(s, resolve=_raiser(AssertionError("no lookup")), connect=_raiser(
        _connect_error("refused", ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"))
    ))  # fmt: skip
    assert "198.51.100.7 is an IPv4 address" in step(lines, 1) and code == ProbeExit.TCP


@pytest.mark.parametrize(
    ("cause", "expect"),
    [
        (
            ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
            "refused: nothing listens on 1723",
        ),
        (None, "timed out: a firewall drops TCP 1723"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), "unreachable"),
    ],
)
def test_tcp_failures(cause: OSError | None, expect: str) -> None:
    code, lines = run_with(settings(), connect=_raiser(_connect_error("cannot connect", cause)))
    assert code == 11
    assert status(lines, 2) == "FAIL" and expect in step(lines, 2), lines


def test_no_raw_socket_privilege(tmp_path: Path) -> None:
    async def connect(*_: Any, **__: Any) -> trio.abc.Stream:
        return await _scripted_server()

    def no_gre(ip: A) -> Any:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    code, lines = run_with(settings(), connect=connect, open_gre=no_gre)
    assert code == 18
    assert [status(lines, n) for n in (3, 4)] == ["ok", "ok"]
    assert "CAP_NET_RAW" in step(lines, 5)


# -- a scripted PPTP peer: refusals -------------------------------------------------------------------
async def _scripted_server(
    *, sccrp_result: int = 1, ocrp_result: int = 1, answer_sccrq: bool = True
) -> trio.abc.Stream:
    """A PPTP server in a few lines, from the message codec: answers SCCRQ, OCRQ, CCRQ and StopCCRQ."""
    server_end, client_end = trio.testing.memory_stream_pair()

    async def serve() -> None:
        decoder = StreamDecoder()
        while True:
            data = await server_end.receive_some(4096)
            if not data:
                return
            for msg in decoder.feed(data):
                reply: Any = None
                if isinstance(msg, StartControlConnectionRequest) and answer_sccrq:
                    reply = StartControlConnectionReply(
                        result_code=sccrp_result,
                        error_code=0,
                        firmware_revision=0x0203,
                        host_name="gw-01",
                        vendor_string="Acme PPTP",
                    )
                elif isinstance(msg, OutgoingCallRequest):
                    reply = OutgoingCallReply(
                        call_id=777,
                        peer_call_id=msg.call_id,
                        result_code=ocrp_result,
                        connect_speed=64000,
                        packet_recv_window_size=16,
                    )
                elif isinstance(msg, CallClearRequest):
                    reply = CallDisconnectNotify(call_id=777, result_code=3)
                elif isinstance(msg, StopControlConnectionRequest):
                    reply = StopControlConnectionReply(result_code=1)
                if reply is not None:
                    await server_end.send_all(encode_message(reply))

    trio.lowlevel.spawn_system_task(serve)
    return client_end


def test_control_connection_refused_with_the_servers_identity() -> None:
    async def connect(*_: Any, **__: Any) -> trio.abc.Stream:
        return await _scripted_server(sccrp_result=4)

    code, lines = run_with(settings(), connect=connect, open_gre=lambda ip: _NoGre())
    assert code == 12
    line = step(lines, 3)
    assert "FAIL" in line and "vendor 'Acme PPTP'" in line and "hostname 'gw-01'" in line
    assert "firmware 0x0203" in line and "not authorized" in line


def test_no_answer_to_pptp() -> None:
    async def connect(*_: Any, **__: Any) -> trio.abc.Stream:
        return await _scripted_server(answer_sccrq=False)

    code, lines = run_with(settings(timeout=4.0), connect=connect, open_gre=lambda ip: _NoGre())
    assert code == ProbeExit.CONTROL
    assert "no Start-Control-Connection-Reply within 4 s" in step(lines, 3)


def test_call_refused() -> None:
    async def connect(*_: Any, **__: Any) -> trio.abc.Stream:
        return await _scripted_server(ocrp_result=7)

    code, lines = run_with(settings(), connect=connect, open_gre=lambda ip: _NoGre())
    assert code == 13
    assert status(lines, 3) == "ok" and "vendor 'Acme PPTP'" in step(lines, 3)
    assert "refused the outgoing call: do not accept" in step(lines, 4)


class _NoGre:
    async def wait_readable(self) -> None:
        await trio.sleep_forever()

    def recv_batch(self, max: int = 64) -> list[tuple[A, bytes]]:
        return []

    def send(self, packet: bytes, dest: A | None = None) -> bool:
        return True

    def close(self) -> None:
        pass


# -- settings -----------------------------------------------------------------------------------------
def test_probe_settings_without_credentials() -> None:
    s = build_probe_settings({"server": "vpn.example.test"}, {})
    assert s.user == "" and not s.password
    with_user = build_probe_settings({"server": "vpn.example.test", "user": "alice"}, {"PPTP_PASSWORD": "pw"})
    assert with_user.user == "alice" and with_user.password.reveal() == "pw"
    from sidecar.config import ConfigError

    with pytest.raises(ConfigError) as info:  # a user without a password is a mistake, not "no credentials"
        build_probe_settings({"server": "vpn.example.test", "user": "alice"}, {})
    assert any("PPTP_PASSWORD" in p for p in info.value.problems)


def test_exit_codes_are_the_documented_ones() -> None:
    expected = {"OK": 0, "ERROR": 1, "CONFIG": 2, "DNS": 10, "TCP": 11, "CONTROL": 12, "CALL": 13, "GRE": 14,
                "AUTH": 15, "ENCRYPTION": 16, "PPP": 17, "PRIVILEGE": 18}  # fmt: skip
    assert {e.name: int(e) for e in ProbeExit} == expected
    doc = (Path(__file__).resolve().parents[2] / "docs/diagnosis.md").read_text()
    for code in expected.values():
        assert f"| {code} |" in doc, f"exit code {code} is not in the table of docs/diagnosis.md"


def test_garbage_on_1723_is_a_control_failure_not_a_crash() -> None:
    async def connect(*_: Any, **__: Any) -> trio.abc.Stream:
        server_end, client_end = trio.testing.memory_stream_pair()

        async def babble() -> None:
            await server_end.receive_some(4096)
            await server_end.send_all(b"HTTP/1.1 400 Bad Request\r\n\r\n" + bytes(range(256)))

        trio.lowlevel.spawn_system_task(babble)
        return client_end

    code, lines = run_with(settings(), connect=connect, open_gre=lambda ip: _NoGre())
    assert code == 12
    assert "FAIL" in step(lines, 3) and "does not speak PPTP" in step(lines, 3)
