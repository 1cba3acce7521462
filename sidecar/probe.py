"""``sidecar probe --server HOST``: why will a tunnel to this server not come up?

The probe walks the way a session comes up and prints one line per step, each with a verdict (``ok``,
``FAIL`` with the cause and what to do, or ``skip``), then a verdict line, and exits with a code per
failure class (:class:`ProbeExit`, documented in docs/diagnosis.md):

 1. DNS          the server name resolves to an IPv4 address
 2. TCP          TCP port 1723 accepts a connection (refused and timed out are told apart)
 3. control      the server's Start-Control-Connection-Reply (vendor, host name, firmware, version)
 4. call         an Outgoing-Call-Request is accepted (or the server's refusal, in its words)
 5. GRE          LCP answers over GRE (IP protocol 47), both ways: the most common PPTP failure
 6. auth offer   which authentication the server asks for in LCP (and what it offers after our Nak)
 7. credentials  the user name and password are accepted (only when given)
 8. encryption   CCP/MPPE: whether, and how, the server encrypts (knowable only after auth)
 9. IPCP         the addresses the server would hand out

Rules: the probe changes nothing in the namespace (no TUN device, no address, route or firewall
rule): it opens the TCP control connection and a raw GRE socket and drives the same protocol
machines as ``up`` (:class:`sidecar.stack.SessionStack` over ControlConnection + GreSession +
PppLink) and observes them. It always says goodbye (LCP Terminate, Call-Clear-Request,
Stop-Control-Connection-Request) before it exits. It never prints a secret: the password only
reaches the authentication machine.

The kernel side (resolver, TCP connect, GRE socket) is passed in, so the tests run the same probe
against the embedded server in memory (and against a real one in namespaces).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import math
import os
import random
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any, Protocol

import trio

from sidecar.kernel.control import ControlConnectError, connect_control, resolve_ipv4
from sidecar.kernel.gre_socket import GreSocket
from sidecar.proto.errors import ProtocolError
from sidecar.proto.ppp import frame as F
from sidecar.proto.ppp.auth.base import AuthMethod
from sidecar.proto.ppp.lcp import OPT_AUTH as LCP_OPT_AUTH
from sidecar.proto.ppp.mppe import CCP_OPTION_MPPE, MppePolicy, parse_mppe_option
from sidecar.proto.pptp import (
    OUTGOING_CALL_RESULTS,
    START_CONTROL_CONNECTION_RESULTS,
    CallEstablished,
    ControlConfig,
    ControlConnection,
    OutgoingCallReply,
    Role,
    StartControlConnectionReply,
    StreamDecoder,
    describe,
)
from sidecar.stack import LinkLike, SessionStack, max_mru

log = logging.getLogger("sidecar.probe")


class ProbeExit(enum.IntEnum):
    OK = 0
    ERROR = 1  # the probe itself failed (a bug, an unexpected OS error)
    CONFIG = 2  # bad flags / environment (reported by the CLI before the probe runs)
    DNS = 10  # the server name does not resolve
    TCP = 11  # TCP 1723 refused, timed out or unreachable
    CONTROL = 12  # no Start-Control-Connection-Reply, or a refusal
    CALL = 13  # the Outgoing-Call-Request was refused or not answered
    GRE = 14  # no LCP over GRE: protocol 47 blocked or not NATed
    AUTH = 15  # authentication failed (wrong user name or password, or no answer)
    ENCRYPTION = 16  # the server will not encrypt the way `up` requires (MPPE)
    PPP = 17  # PPP negotiation failed otherwise: no common auth method, LCP or IPCP failure
    PRIVILEGE = 18  # the probe may not open a raw GRE socket (needs CAP_NET_RAW)


STEPS = ("DNS", "TCP", "control", "call", "GRE", "auth offer", "credentials", "encryption", "IPCP")
GOODBYE_BUDGET = 2.0  # seconds for LCP Terminate, Call-Clear and Stop after the last step
PROBE_RESTART_INTERVAL = 1.0  # LCP/auth retransmission: quicker than up's 3 s, the budget is short
AUTH_FLAG = {  # the --auth names (sidecar.config.AUTH_NAMES)
    AuthMethod.MSCHAP_V2: "mschapv2",
    AuthMethod.MSCHAP_V1: "mschap",
    AuthMethod.CHAP_MD5: "chap",
    AuthMethod.PAP: "pap",
}
GRE_HINT = (
    "GRE (IP protocol 47) is blocked or not NATed: the host needs the PPTP conntrack helper "
    "(nf_conntrack_pptp) or a firewall rule allowing protocol 47"
)


# -- what the kernel side must offer (real: sidecar.kernel; tests: in-memory fakes) -------------------
class GreLike(Protocol):
    async def wait_readable(self) -> None: ...
    def recv_batch(self, max: int = 64) -> list[tuple[IPv4Address, bytes]]: ...
    def send(self, packet: bytes, dest: IPv4Address | None = None) -> bool: ...
    def close(self) -> None: ...


Resolve = Callable[[str], Awaitable[IPv4Address]]
Connect = Callable[..., Awaitable[trio.abc.Stream]]  # (server, port, *, timeout)
OpenGre = Callable[[IPv4Address], GreLike]


# -- the report ---------------------------------------------------------------------------------------
class Failed(Exception):
    """A step failed: the probe stops here (the line is already printed)."""

    def __init__(self, code: ProbeExit) -> None:
        super().__init__(code.name)
        self.code = code


class Report:
    """Prints the step lines as they are decided and remembers the first failure."""

    def __init__(self, out: Callable[[str], None]) -> None:
        self.out = out
        self.failed_step: int | None = None
        self.failure = ""
        self.code = ProbeExit.OK
        self.done: set[int] = set()

    def line(self, step: int, status: str, detail: str) -> None:
        self.done.add(step)
        self.out(f"[{step}/{len(STEPS)}] {STEPS[step - 1]:<11} {status:<4}  {detail}")

    def ok(self, step: int, detail: str) -> None:
        self.line(step, "ok", detail)

    def skip(self, step: int, detail: str) -> None:
        self.line(step, "skip", detail)

    def fail(self, step: int, code: ProbeExit, why: str) -> Failed:
        self.line(step, "FAIL", why)
        if self.failed_step is None:
            self.failed_step, self.failure, self.code = step, why, code
        return Failed(code)

    def skip_rest(self) -> None:
        for step in range(1, len(STEPS) + 1):
            if step not in self.done:
                self.skip(step, f"not tested: step {self.failed_step} failed")


# -- what the probe saw -------------------------------------------------------------------------------
@dataclass
class Facts:
    sccrp: StartControlConnectionReply | None = None
    ocrp: OutgoingCallReply | None = None
    call: CallEstablished | None = None
    call_at: float | None = None
    cleared: str | None = None  # CallCleared reason
    closed: str | None = None  # ControlClosed reason
    gre_packets: int = 0  # GRE packets from the server
    server_lcp: int = 0  # LCP packets from the server
    lcp_answer: str | None = None  # the server's first answer to our Configure-Request
    lcp_answer_at: float | None = None
    auth_offers: list[str] = field(default_factory=list)  # the server's Auth-Protocol, in order
    mppe_offers: list[str] = field(default_factory=list)  # the server's CCP MPPE option, in order
    lcp_up: Any = None
    authenticated: Any = None
    auth_failed: Any = None
    encryption_up: Any = None
    encryption_off: Any = None
    link_up: Any = None
    link_down: Any = None


class Probe:
    def __init__(
        self,
        settings: Any,
        out: Callable[[str], None],
        *,
        resolve: Resolve = resolve_ipv4,
        connect: Connect = connect_control,
        open_gre: OpenGre | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.report = Report(out)
        self._resolve = resolve
        self._connect = connect
        self._open_gre: OpenGre = open_gre if open_gre is not None else _open_gre_socket
        self.rng = rng if rng is not None else random.SystemRandom()
        self.facts = Facts()
        self.credentials = bool(settings.user) and bool(settings.password)
        self.stack: SessionStack | None = None
        self.stream: trio.abc.Stream | None = None
        self.gre: GreLike | None = None
        self.gre_error: OSError | None = None
        self.deadline = math.inf
        self._changed = trio.Event()
        self._wake = trio.Event()
        self._control_dirty = trio.Event()
        self._scheduled = math.inf
        self._send_lock = trio.Lock()
        self._tap = StreamDecoder()
        self._tap_ok = True

    # -- the walk ---------------------------------------------------------------------------------------
    async def run(self) -> int:
        s = self.settings
        self.deadline = trio.current_time() + s.timeout
        try:
            ip = await self._dns()
            self.stream = await self._tcp(ip)
            try:
                self.gre = self._open_gre(ip)
            except OSError as exc:
                self.gre_error = exc
            await self._session()
        except Failed:
            pass
        finally:
            await self._close()
        if self.report.failed_step is not None:
            self.report.skip_rest()
        self._verdict()
        return int(self.report.code)

    def _remaining(self) -> float:
        return max(0.0, self.deadline - trio.current_time())

    async def _dns(self) -> IPv4Address:
        host = self.settings.server
        try:
            literal = IPv4Address(host)
        except ValueError:
            pass
        else:
            self.report.ok(1, f"{host} is an IPv4 address (no lookup needed)")
            return literal
        with trio.move_on_at(self.deadline):
            try:
                ip = await self._resolve(host)
            except ControlConnectError as exc:
                raise self.report.fail(1, ProbeExit.DNS, _dns_failure(host, exc)) from None
            self.report.ok(1, f"{host} -> {ip}")
            return ip
        raise self.report.fail(
            1,
            ProbeExit.DNS,
            f"no DNS answer for {host!r} within {self.settings.timeout:g} s: check the DNS servers in "
            "/etc/resolv.conf and the way to them",
        )

    async def _tcp(self, ip: IPv4Address) -> trio.abc.Stream:
        port = self.settings.port
        started = trio.current_time()
        try:
            stream = await self._connect(ip, port, timeout=max(0.001, self._remaining()))
        except ControlConnectError as exc:
            raise self.report.fail(2, ProbeExit.TCP, _tcp_failure(ip, port, exc)) from None
        ms = (trio.current_time() - started) * 1000
        self.report.ok(2, f"connected to {ip}:{port} in {ms:.0f} ms")
        return stream

    async def _session(self) -> None:
        assert self.stream is not None
        self.stack = self._build_stack()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._control_reader)
            nursery.start_soon(self._control_writer)
            nursery.start_soon(self._timer)
            if self.gre is not None:
                nursery.start_soon(self._gre_reader)
            now = trio.current_time()
            self.stack.start(now)
            self._after_input(now)
            with contextlib.suppress(Failed):  # (raised in the nursery body it would become a group)
                await self._steps()
            await self._goodbye()
            nursery.cancel_scope.cancel()

    async def _steps(self) -> None:
        await self._step_control()
        await self._step_call()
        await self._step_gre()
        await self._step_auth_offer()
        if not self.credentials:
            why = "no user name and password given: authentication, encryption and addresses not tested"
            for step in (7, 8, 9):
                self.report.skip(step, why)
            return
        await self._step_credentials()
        await self._step_encryption()
        await self._step_ipcp()

    # -- steps 3-9 --------------------------------------------------------------------------------------
    def _ended(self) -> bool:
        f = self.facts
        return f.closed is not None or (self.stack is not None and self.stack.finished())

    async def _step_control(self) -> None:
        f = self.facts
        await self._until(lambda: f.sccrp is not None or self._ended())
        port = self.settings.port
        if f.sccrp is None:
            if f.closed is not None:
                why = (
                    f"the server closed the connection without a Start-Control-Connection-Reply "
                    f"({f.closed}): something accepts TCP {port} but does not speak PPTP to us "
                    "(another service on this port, or the server's connection limit)"
                )
            else:
                why = (
                    f"no Start-Control-Connection-Reply within {self.settings.timeout:g} s: something "
                    f"accepts TCP {port} but does not answer PPTP (another service on this port?)"
                )
            raise self.report.fail(3, ProbeExit.CONTROL, why)
        r = f.sccrp
        major, minor = divmod(r.protocol_version, 256)
        result = describe(START_CONTROL_CONNECTION_RESULTS, r.result_code, r.error_code)
        text = (
            f"vendor {_printable(r.vendor_string)!r}, hostname {_printable(r.host_name)!r}, "
            f"firmware {r.firmware_revision:#06x}, protocol {major}.{minor}, "
            f"result {r.result_code} ({result})"
        )
        if r.result_code != 1:
            hint = {
                3: "a control connection from this address already exists (another client behind the "
                "same NAT address?)",
                4: "the server does not allow this client address to connect",
                5: "the server does not speak PPTP version 1.0",
            }.get(r.result_code, "see the server's log")
            raise self.report.fail(
                3, ProbeExit.CONTROL, f"the server refused the control connection: {text}; {hint}"
            )
        self.report.ok(3, text)

    async def _step_call(self) -> None:
        f = self.facts
        await self._until(lambda: f.call is not None or f.cleared is not None or self._ended())
        if f.call is not None:
            c = f.call
            self.report.ok(
                4,
                f"connected: our call ID {c.local_call_id}, server's call ID {c.peer_call_id}, "
                f"{c.connect_speed} bit/s, server's receive window {c.peer_window}",
            )
            return
        if f.ocrp is not None and f.ocrp.result_code != 1:
            why = describe(OUTGOING_CALL_RESULTS, f.ocrp.result_code, f.ocrp.error_code)
            if f.ocrp.cause_code:
                why += f" (cause code {f.ocrp.cause_code})"
            raise self.report.fail(
                4,
                ProbeExit.CALL,
                f"the server refused the outgoing call: {why}; the server could not start PPP for "
                "this call (pptpd: pppd missing or failing, address pool exhausted, call limit): "
                "see the server's log",
            )
        reason = f.cleared or f.closed
        why = (
            f"the call ended before it was answered: {reason}"
            if reason
            else f"no Outgoing-Call-Reply within {self.settings.timeout:g} s"
        )
        raise self.report.fail(4, ProbeExit.CALL, why)

    async def _step_gre(self) -> None:
        f = self.facts
        if self.gre is None:
            err = self.gre_error
            detail = err.strerror if err is not None and err.strerror else str(err)
            raise self.report.fail(
                5,
                ProbeExit.PRIVILEGE,
                f"cannot open a raw GRE socket ({detail}): the probe needs CAP_NET_RAW, as `up` does "
                "(run it as root or in the sidecar container)",
            )
        await self._until(
            lambda: (
                f.lcp_answer is not None or f.lcp_up is not None or f.link_down is not None or self._ended()
            )
        )
        if f.lcp_answer is not None or f.lcp_up is not None:
            at = f.lcp_answer_at if f.lcp_answer_at is not None else trio.current_time()
            ms = (at - (f.call_at or at)) * 1000
            got = "its Configure-Request arrived and " if f.server_lcp else ""
            self.report.ok(
                5,
                f"LCP over GRE works both ways: {got}ours was answered ({f.lcp_answer or 'LCP up'}) "
                f"{ms:.0f} ms after the call",
            )
            return
        waited = f"within {self.settings.timeout:g} s"
        if f.gre_packets == 0:
            why = f"no GRE from the server {waited}: {GRE_HINT}"
        else:
            why = (
                f"the server's LCP reaches us over GRE ({_count(f.server_lcp, 'packet')}) but ours is never "
                f"answered {waited}: GRE from this host to the server is lost on the way; {GRE_HINT}"
            )
        if f.cleared or f.closed:
            why += f" (the server then ended the call: {f.cleared or f.closed})"
        raise self.report.fail(5, ProbeExit.GRE, why)

    async def _step_auth_offer(self) -> None:
        f = self.facts
        await self._until(lambda: f.lcp_up is not None or f.link_down is not None or self._ended())
        offers = _dedup(f.auth_offers)
        if f.lcp_up is not None:
            if not offers or offers[-1] == "none":
                text = "the server asks for no authentication (anyone can connect; MPPE needs MS-CHAP)"
            else:
                text = f"the server asks for {offers[-1]}"
                if len(offers) > 1:
                    text += f" (it first asked for {', '.join(offers[:-1])}, then took our suggestion)"
            mru = f", LCP up (our MRU {f.lcp_up.mru}, the server's {f.lcp_up.peer_mru})"
            self.report.ok(6, text + mru)
            return
        reason = (
            _reason(f.link_down)
            or f.cleared
            or f.closed
            or f"no LCP agreement within {self.settings.timeout:g} s"
        )
        allowed = [m.label for m in self.settings.auth]
        methods = [m for m in AuthMethod if m.label in offers]
        if offers and not any(o in allowed for o in offers):
            why = f"the server asks for {', '.join(offers)}; --auth allows only {', '.join(allowed)}"
            if methods:
                names = [AUTH_FLAG[m] for m in self.settings.auth] + [AUTH_FLAG[methods[0]]]
                why += f": allow it with --auth {','.join(names)}"
        else:
            offered = ", ".join(offers) if offers else "no Auth-Protocol we saw"
            why = f"LCP failed: {reason} (the server asked for: {offered})"
        raise self.report.fail(6, ProbeExit.PPP, why)

    async def _step_credentials(self) -> None:
        f = self.facts
        await self._until(
            lambda: (
                f.authenticated is not None
                or f.auth_failed is not None
                or f.link_down is not None
                or self._ended()
            )
        )
        user = self.settings.user
        if f.authenticated is not None:
            method = getattr(f.authenticated.method, "label", f.authenticated.method)
            self.report.ok(7, f"accepted: authenticated as {user!r} with {method}")
            return
        if f.auth_failed is not None:
            reason = _reason(f.auth_failed)
            if f.auth_failed.bad_credentials:
                why = "authentication failed: wrong user name or password"
                if "wrong user name or password" not in reason:
                    why += f" ({reason})"
                why += "; check --user and PPTP_PASSWORD / PPTP_PASSWORD_FILE"
            else:
                why = f"authentication failed: {reason}"
            raise self.report.fail(7, ProbeExit.AUTH, why)
        ended = _reason(f.link_down) or f.cleared or f.closed
        why = (
            f"authentication did not finish: {ended}"
            if ended
            else f"no answer to our authentication within {self.settings.timeout:g} s"
        )
        raise self.report.fail(7, ProbeExit.AUTH, why)

    async def _step_encryption(self) -> None:
        f = self.facts
        await self._until(
            lambda: (
                f.encryption_up is not None
                or f.encryption_off is not None
                or f.link_down is not None
                or self._ended()
            )
        )
        offered = f" (the server offered {', '.join(_dedup(f.mppe_offers))})" if f.mppe_offers else ""
        if f.encryption_up is not None:
            bits, stateful = f.encryption_up.key_bits, f.encryption_up.stateful
            text = f"MPPE-{bits} {'stateful' if stateful else 'stateless'}{offered}"
            if bits != 128:
                text += f"; note: `up` accepts only 128-bit keys by default: add --mppe-bits {bits}"
            self.report.ok(8, text)
            return
        reason = _reason(f.encryption_off) or _reason(f.link_down) or f.cleared or f.closed
        if not reason:
            reason = f"no CCP agreement within {self.settings.timeout:g} s"
        elif not reason.startswith("the server will not encrypt"):
            reason = f"the server will not encrypt: {reason}"
        why = reason + offered
        if "--mppe optional" not in why:
            why += (
                "; `up` refuses an unencrypted tunnel by default (--mppe require); --mppe optional allows it"
            )
        why += " (without MPPE anyone on the way can read the traffic)"
        raise self.report.fail(8, ProbeExit.ENCRYPTION, why)

    async def _step_ipcp(self) -> None:
        f = self.facts
        await self._until(lambda: f.link_up is not None or f.link_down is not None or self._ended())
        up = f.link_up
        if up is not None:
            dns = ", ".join(str(d) for d in up.dns) or "none offered"
            self.report.ok(
                9, f"the server would give us {up.local_ip} (its end {up.peer_ip}), DNS {dns}, MTU {up.mtu}"
            )
            return
        reason = (
            _reason(f.link_down)
            or f.cleared
            or f.closed
            or f"no IPCP agreement within {self.settings.timeout:g} s"
        )
        raise self.report.fail(9, ProbeExit.PPP, f"IPCP failed: {reason}")

    def _verdict(self) -> None:
        r = self.report
        target = f"{self.settings.server}:{self.settings.port}"
        if r.failed_step is not None:
            r.out(
                f"verdict: FAIL at step {r.failed_step} ({STEPS[r.failed_step - 1]}): a tunnel to {target} "
                f"will not come up (exit {int(r.code)})"
            )
        elif not self.credentials:
            r.out(
                f"verdict: OK so far: {target} answers PPTP, calls and LCP over GRE; give --user and a "
                "password to test authentication, encryption and addresses (exit 0)"
            )
        else:
            r.out(f"verdict: OK: a tunnel to {target} should come up (exit 0)")

    # -- the machines -----------------------------------------------------------------------------------
    def _build_stack(self) -> SessionStack:
        from sidecar.proto.ppp.link import LinkConfig, LinkRole, PppLink

        s = self.settings
        control = ControlConnection(
            Role.CLIENT,
            ControlConfig(
                hostname="pptp-sidecar-probe",
                echo_interval=0,
                call_timeout=max(1.0, float(s.timeout)),
            ),
            self.rng,
        )

        def make_link() -> LinkLike:
            config = LinkConfig(
                mru=min(1500, max_mru(1500)),
                auth_methods=tuple(s.auth),
                username=s.user if self.credentials else "",
                password=s.password if self.credentials else None,
                mppe=MppePolicy.OPTIONAL,  # to tell "no encryption" from a failure
                mppe_key_bits=frozenset({128, 56, 40}),
                mppe_stateful=False,
                echo_interval=0,
                restart_interval=PROBE_RESTART_INTERVAL,
            )
            link: LinkLike = PppLink(LinkRole.PEER, config, self.rng)
            return link

        stack = SessionStack(control, make_link, reorder_window=0, reorder_timeout=0.1)
        stack.on_link = self._observe_link
        return stack

    def _observe_link(self, link: Any) -> None:
        """See the server's LCP and CCP packets as the link receives them (read-only)."""
        receive = link.receive

        def receive_observed(frame: Any, now: float) -> list[bytes]:
            self._saw_frame(frame, now)
            packets: list[bytes] = receive(frame, now)
            return packets

        link.receive = receive_observed

    def _saw_frame(self, frame: Any, now: float) -> None:
        f = self.facts
        try:
            protocol, info = F.decode_frame(frame)
            if protocol not in (F.LCP, F.CCP):
                return
            packet = F.decode_control(info)
            request = packet.code == F.CONFIGURE_REQUEST
            options = F.decode_options(packet.data) if request else []
        except ProtocolError:
            return
        if protocol == F.CCP:
            for o in options:
                if o.type == CCP_OPTION_MPPE:
                    f.mppe_offers.append(_mppe_text(o.data))
            return
        f.server_lcp += 1
        if request:
            auth = [o for o in options if o.type == LCP_OPT_AUTH]
            method = AuthMethod.from_option_data(auth[0].data) if auth else None
            if not auth:
                f.auth_offers.append("none")
            else:
                f.auth_offers.append(method.label if method else f"protocol 0x{auth[0].data.hex()}")
        elif packet.code in (F.CONFIGURE_ACK, F.CONFIGURE_NAK, F.CONFIGURE_REJECT) and f.lcp_answer is None:
            f.lcp_answer = F.CODE_NAMES.get(packet.code, str(packet.code))
            f.lcp_answer_at = now

    # -- I/O tasks (the same shape as sidecar.tunnel, without a TUN device) -----------------------------
    async def _control_reader(self) -> None:
        assert self.stream is not None and self.stack is not None
        while True:
            try:
                data = bytes(await self.stream.receive_some(65536))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                data = b""
            now = trio.current_time()
            self._tap_control(data)
            self.stack.control_received(data, now)
            self._after_input(now)
            if not data:
                return

    def _tap_control(self, data: bytes) -> None:
        if not data or not self._tap_ok:
            return
        messages, error = self._tap.feed_partial(data)
        for msg in messages:
            if isinstance(msg, StartControlConnectionReply) and self.facts.sccrp is None:
                self.facts.sccrp = msg
            elif isinstance(msg, OutgoingCallReply) and self.facts.ocrp is None:
                self.facts.ocrp = msg
        if error is not None:
            self._tap_ok = False  # the machine reports the framing error itself

    async def _control_writer(self) -> None:
        assert self.stream is not None and self.stack is not None
        while True:
            await self._control_dirty.wait()
            self._control_dirty = trio.Event()
            await self._flush_control()

    async def _flush_control(self) -> None:
        assert self.stream is not None and self.stack is not None
        async with self._send_lock:
            data = self.stack.control_to_send()
            if data:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    await self.stream.send_all(data)

    async def _gre_reader(self) -> None:
        gre, stack = self.gre, self.stack
        assert gre is not None and stack is not None
        while True:
            await gre.wait_readable()
            try:
                batch = gre.recv_batch(64)
            except OSError as exc:
                log.debug("GRE socket: %s", exc)
                return
            if not batch:
                continue
            now = trio.current_time()
            for _source, packet in batch:
                self.facts.gre_packets += 1
                stack.gre_received(packet, now)  # IP packets (none expected) go nowhere
            self._after_input(now)

    async def _timer(self) -> None:
        stack = self.stack
        assert stack is not None
        while True:
            deadline = stack.next_deadline()
            self._scheduled = math.inf if deadline is None else deadline
            with trio.move_on_at(self._scheduled):
                await self._wake.wait()
            self._wake = trio.Event()
            self._scheduled = math.inf
            now = trio.current_time()
            _ips, packets = stack.timeout(now)
            self._send_gre(packets)
            self._scheduled = -math.inf  # the timer re-arms at the top of its loop: no self-wake
            self._after_input(now)
            after = stack.next_deadline()
            if after is not None and after <= now:
                await trio.sleep(0.001)

    def _send_gre(self, packets: list[bytes]) -> None:
        gre = self.gre
        if gre is None:
            return
        for packet in packets:
            gre.send(packet)

    def _after_input(self, now: float) -> None:
        stack = self.stack
        assert stack is not None
        self._send_gre(stack.gre_to_send(now))
        for event in stack.events(now):
            self._record(event, now)
        self._send_gre(stack.gre_to_send(now))
        if stack.control_pending():
            self._control_dirty.set()
        deadline = stack.next_deadline()
        if deadline is not None and deadline < self._scheduled:
            self._wake.set()
        self._changed.set()

    def _record(self, ev: Any, now: float) -> None:
        f = self.facts
        kind = type(ev).__name__
        log.debug("%s: %s", kind, ev)
        if kind == "CallEstablished":
            f.call, f.call_at = ev, now
        elif kind == "CallCleared":
            f.cleared = f.cleared or ev.reason
        elif kind == "ControlClosed":
            f.closed = f.closed or ev.reason
        elif kind == "LcpUp":
            f.lcp_up = ev
        elif kind == "Authenticated":
            f.authenticated = ev
        elif kind == "AuthFailed":
            f.auth_failed = ev
        elif kind == "EncryptionUp":
            f.encryption_up = ev
        elif kind == "EncryptionOff":
            f.encryption_off = ev
        elif kind == "LinkUp":
            f.link_up = ev
        elif kind == "LinkDown":
            f.link_down = f.link_down or ev

    async def _until(self, predicate: Callable[[], bool], deadline: float | None = None) -> bool:
        """Wait until ``predicate()`` holds (re-checked after every input) or the deadline passes."""
        limit = self.deadline if deadline is None else deadline
        while not predicate():
            if trio.current_time() >= limit:
                return False
            self._changed = trio.Event()
            with trio.move_on_at(limit):
                await self._changed.wait()
        return True

    # -- the end ----------------------------------------------------------------------------------------
    async def _goodbye(self) -> None:
        """LCP Terminate-Request -> Call-Clear-Request -> Stop-Control-Connection-Request, bounded."""
        stack = self.stack
        if stack is None:
            return
        now = trio.current_time()
        stack.close(now, "probe finished", grace=GOODBYE_BUDGET * 0.75)
        self._after_input(now)
        await self._until(stack.finished, now + GOODBYE_BUDGET)
        with trio.move_on_after(0.3):
            await self._flush_control()

    async def _close(self) -> None:
        if self.gre is not None:
            with contextlib.suppress(OSError):
                self.gre.close()
        if self.stream is not None:
            with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                await self.stream.aclose()


# -- helpers ------------------------------------------------------------------------------------------
def _open_gre_socket(server: IPv4Address) -> GreLike:
    return GreSocket(server)


def _mppe_text(data: bytes) -> str:
    try:
        mppe = parse_mppe_option(data)
    except ProtocolError:
        return "a malformed MPPE option"
    keys = "/".join(str(b) for b in sorted(mppe.key_bits, reverse=True)) or "no key length"
    return f"MPPE {keys}-bit {'stateless' if mppe.stateless else 'stateful'}"


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _dedup(items: list[str]) -> list[str]:
    out: list[str] = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


def _reason(ev: Any) -> str:
    return str(getattr(ev, "reason", "") or "") if ev is not None else ""


def _printable(text: Any) -> str:
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    return "".join(c if c.isprintable() else "?" for c in str(text).rstrip("\0"))


def _dns_failure(host: str, exc: ControlConnectError) -> str:
    cause = exc.__cause__
    code = cause.errno if isinstance(cause, socket.gaierror) else None
    if code in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None)):
        return f"{host!r} does not exist in DNS (or has no IPv4 address): check the spelling of --server"
    if code == socket.EAI_AGAIN:
        return (
            f"no DNS server answered for {host!r} (temporary failure): check the DNS servers in "
            "/etc/resolv.conf and the way to them"
        )
    if cause is None:
        return f"{exc}: use the server's IPv4 address (PPTP over IPv6 is not supported)"
    return f"cannot resolve {host!r}: {getattr(cause, 'strerror', None) or cause}"


def _tcp_failure(ip: IPv4Address, port: int, exc: ControlConnectError) -> str:
    cause = exc.__cause__
    code = cause.errno if isinstance(cause, OSError) else None
    if code == errno.ECONNREFUSED:
        return (
            f"refused: nothing listens on {port} at {ip} (is the PPTP server running, on this port?) or "
            "a firewall rejects the connection"
        )
    if cause is None:  # connect_control's own time limit
        return (
            f"timed out: a firewall drops TCP {port} (no answer from {ip}): allow TCP {port} to the "
            "server, or check the address"
        )
    if code in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return f"{ip} is unreachable ({os.strerror(code)}): check this host's routes and the address"
    if code == errno.ETIMEDOUT:
        return f"timed out: a firewall drops TCP {port} (the kernel gave up on {ip})"
    strerror = getattr(cause, "strerror", None) or str(cause)
    return f"cannot connect to {ip}:{port}: {strerror}"


def _print(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def probe(settings: Any, out: Callable[[str], None] = _print, **kernel: Any) -> int:
    """Run the probe under an existing trio loop (tests pass in-memory ``resolve``/``connect``/
    ``open_gre``)."""
    return await Probe(settings, out, **kernel).run()


def run_probe(settings: Any, *, out: Callable[[str], None] | None = None) -> int:
    """``sidecar probe``: :class:`~sidecar.config.ProbeSettings` in, the exit code out."""
    writer = out if out is not None else _print
    try:
        return trio.run(probe, settings, writer)
    except KeyboardInterrupt:
        writer("probe interrupted")
        return 130
    except Exception as exc:  # a bug or an OS surprise: say so in one line, the log has the rest
        log.debug("probe crashed", exc_info=True)
        writer(f"probe error: {type(exc).__name__}: {exc}")
        return int(ProbeExit.ERROR)
