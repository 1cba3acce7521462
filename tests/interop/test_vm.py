"""The harness itself, against the real pptpd: the VM boots, pptpd answers a hand-built PPTP
control connection (RFC 2637), an outgoing call starts pppd, which speaks LCP over enhanced GRE;
the control knobs (scenarios, kill/start, netem, guest commands) do what they say.

These tests do not use our client: the PPTP messages are packed here with ``struct`` straight
from the RFC's tables and cross-checked with scapy's independent PPTP dissector.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import time

import pytest
from scapy.layers.l2 import GRE_PPTP
from scapy.layers.pptp import PPTP, PPTPOutgoingCallReply, PPTPStartControlConnectionReply

from tests.interop.vm import CHAP_MD5, MSCHAPV1_MPPE128, MSCHAPV2_MPPE128, PAP, GuestCommandError, Vm

MAGIC = 0x1A2B3C4D
HEADER = struct.Struct(">HHIHH")  # length, PPTP message type (1 = control), magic, type, reserved
SCCRQ, SCCRP, STOP_RQ, STOP_RP = 1, 2, 3, 4
OCRQ, OCRP, CCRQ = 7, 8, 12
PPTP_PORT = 1723
OUR_CALL_ID = 0x5EC1


def control(msg_type: int, body: bytes) -> bytes:
    return HEADER.pack(HEADER.size + len(body), 1, MAGIC, msg_type, 0) + body


def sccrq() -> bytes:
    # RFC 2637 2.1: version 1.0, reserved, framing caps (async|sync), bearer caps (analog|digital),
    # max channels, firmware revision, host name, vendor string.
    body = struct.pack(">HHIIHH64s64s", 0x0100, 0, 3, 3, 0, 1, b"interop-test", b"pptp-sidecar tests")
    return control(SCCRQ, body)


def ocrq(call_id: int) -> bytes:
    # RFC 2637 2.7: call ID, serial, min/max bps, bearer type (any), framing type (any),
    # receive window, processing delay, phone number length, reserved, phone number, subaddress.
    body = struct.pack(">HHIIIIHHHH64s64s", call_id, 1, 300, 100_000_000, 3, 3, 64, 0, 0, 0, b"", b"")
    return control(OCRQ, body)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"pptpd closed the control connection after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def recv_control(sock: socket.socket, want: int) -> bytes:
    """The next control message of type ``want`` (others, like Set-Link-Info, are skipped)."""
    for _ in range(10):
        head = recv_exact(sock, HEADER.size)
        length, pptp_type, magic, msg_type, _ = HEADER.unpack(head)
        assert (pptp_type, magic) == (1, MAGIC), f"not a PPTP control message: {head.hex()}"
        assert length >= HEADER.size
        msg = head + recv_exact(sock, length - HEADER.size)
        if msg_type == want:
            return msg
    raise AssertionError(f"no control message of type {want} among the next 10")


def connect(vm: Vm) -> socket.socket:
    s = vm.socket()
    s.settimeout(10)
    s.connect((vm.server_ip, PPTP_PORT))
    return s


def handshake(vm: Vm) -> tuple[socket.socket, bytes]:
    s = connect(vm)
    s.sendall(sccrq())
    return s, recv_control(s, SCCRP)


def read_until_close(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")


def test_vm_runs_the_debian_versions(pptpd_vm: Vm) -> None:
    # The interop claims in the docs name these versions: fail loudly if the image drifts.
    assert pptpd_vm.versions["pptpd"].startswith("1.4.0-")
    assert pptpd_vm.versions["ppp"].startswith("2.4.9-")
    assert pptpd_vm.boot_seconds < 60


def test_start_control_connection(pptpd: Vm) -> None:
    s, reply = handshake(pptpd)
    with s:
        assert len(reply) == 156
        (version, result, error, framing, bearer, channels, firmware, host, vendor) = struct.unpack(
            ">HBBIIHH64s64s", reply[HEADER.size :]
        )
        assert version == 0x0100
        assert (result, error) == (1, 0), "SCCRP result code 1 = control connection established"
        # What pptpd 1.4.0 says about itself (observed; a client must accept it): host name
        # "local", vendor "linux", no framing or bearer capability bits, 1 channel, firmware 1.
        assert cstr(host) == "local"
        assert cstr(vendor) == "linux"
        assert (framing, bearer, channels, firmware) == (0, 0, 1, 1)
        # scapy's dissector, written independently, reads the same reply.
        parsed = PPTP(reply)
        assert isinstance(parsed, PPTPStartControlConnectionReply)
        assert parsed.result_code == 1
        assert parsed.protocol_version == 0x0100
        assert parsed.host_name.rstrip(b"\0") == host.rstrip(b"\0")
        assert parsed.vendor_string.rstrip(b"\0") == vendor.rstrip(b"\0")
        assert (channels, firmware) == (parsed.maximum_channels, parsed.firmware_revision)

        s.sendall(control(STOP_RQ, struct.pack(">BBH", 1, 0, 0)))
        stop = recv_control(s, STOP_RP)
        assert stop[HEADER.size] == 1, "Stop-Control-Connection-Reply result 1 = OK"


def _first_gre(gre: socket.socket, server_ip: str, deadline: float) -> bytes:
    while time.monotonic() < deadline:
        data, (src, _) = gre.recvfrom(65535)
        if src == server_ip:
            ihl = (data[0] & 0x0F) * 4
            return data[ihl:]
    raise AssertionError("no GRE packet from pptpd")


def _lcp_options(payload: bytes) -> dict[int, bytes]:
    # payload: FF 03 C0 21, code, id, length, options...
    assert payload[:4] == b"\xff\x03\xc0\x21", f"not an LCP frame: {payload[:8].hex()}"
    code, _ident, length = struct.unpack(">BBH", payload[4:8])
    assert code == 1, "LCP Configure-Request"
    opts, data = {}, payload[8 : 4 + length]
    while data:
        t, n = data[0], data[1]
        opts[t] = data[2:n]
        data = data[n:]
    return opts


@pytest.mark.parametrize(
    ("scenario", "auth_option"),
    [
        (MSCHAPV2_MPPE128, "c22381"),
        (MSCHAPV1_MPPE128, "c22380"),
        (CHAP_MD5, "c22305"),
        (PAP, "c023"),
    ],
    ids=["mschapv2", "mschapv1", "chap-md5", "pap"],
)
def test_outgoing_call_starts_pppd(pptpd_vm: Vm, scenario: tuple[str, ...], auth_option: str) -> None:
    vm = pptpd_vm
    vm.reset(scenario)
    gre = vm.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_GRE)
    gre.settimeout(10)
    s, reply = handshake(vm)
    with s, gre:
        assert reply[HEADER.size + 2] == 1
        s.sendall(ocrq(OUR_CALL_ID))
        answer = recv_control(s, OCRP)
        assert len(answer) == 32
        server_call_id, peer_call_id, result, error, _cause, speed, window, _delay, _chan = struct.unpack(
            ">HHBBHIHHI", answer[HEADER.size :]
        )
        assert (result, error) == (1, 0), "OCRP result 1 = connected"
        assert peer_call_id == OUR_CALL_ID
        assert window > 0 and speed > 0
        parsed = PPTP(answer)
        assert isinstance(parsed, PPTPOutgoingCallReply)
        assert (parsed.call_id, parsed.peer_call_id) == (server_call_id, OUR_CALL_ID)

        # pppd starts and its first LCP Configure-Request comes to us over enhanced GRE,
        # addressed with our call ID and starting at sequence number 0.
        packet = _first_gre(gre, vm.server_ip, time.monotonic() + 10)
        flags, proto, length, call_id, seq = struct.unpack(">HHHHI", packet[:12])
        assert flags & 0x2000 and flags & 0x1000, "Key and Sequence bits set"
        assert flags & 0x0007 == 1, "GRE version 1 (enhanced)"
        assert proto == 0x880B
        assert call_id == OUR_CALL_ID
        assert seq == 0
        header_len = 16 if flags & 0x0080 else 12
        payload = packet[header_len : header_len + length]
        assert _lcp_options(payload)[3].hex() == auth_option, "pppd asks for the scenario's auth"
        scapy_gre = GRE_PPTP(packet)
        assert (scapy_gre.call_id, scapy_gre.sequence_number) == (OUR_CALL_ID, 0)

        # pppd's first lines go to syslog only (its logfile option is not read yet).
        vm.wait_for_log(r"pppd\[\d+\]: pppd 2\.4\.9 started", log="pptpd")
        vm.wait_for_log(r"^sent \[LCP ConfReq id=0x1 ")
        assert len(vm.sessions()) == 1

        # Call-Clear-Request: pptpd 1.4.0 logs "Made a CALL DISCONNECT RPLY packet" but never
        # sends it: it ends pppd and closes the whole control connection (one call per control
        # connection). A client must take that close as the end of the call, not as an error.
        s.sendall(control(CCRQ, struct.pack(">HH", OUR_CALL_ID, 0)))
        assert read_until_close(s) == b"", "pptpd 1.4.0 sends nothing after Call-Clear-Request"
        vm.wait_for_log(r"Received CALL CLR request", log="pptpd", timeout=5)
        deadline = time.monotonic() + 10
        while vm.sessions() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert vm.sessions() == []
        vm.wait_for_log(r"pppd\[\d+\]: Exit\.", log="pptpd", timeout=5)


def test_pptpd_drops_a_call_when_the_client_has_no_gre_socket(pptpd: Vm) -> None:
    # Without a raw GRE socket the client's kernel answers pppd's first GRE packet with ICMP
    # protocol-unreachable; pptpctrl's GRE read then fails (ENOPROTOOPT) and it ends the call
    # and the control connection. A client must open its GRE socket before the
    # Outgoing-Call-Request.
    s, _ = handshake(pptpd)
    with s:
        s.sendall(ocrq(OUR_CALL_ID))
        recv_control(s, OCRP)
        s.settimeout(10)
        assert read_until_close(s) == b"", "no Call-Disconnect-Notify: the connection just closes"
    pptpd.wait_for_log(r"GRE: read.*Protocol not available", log="pptpd", timeout=5)


def test_kill_and_start_pptpd(pptpd: Vm) -> None:
    pptpd.kill_pptpd("KILL")
    with pptpd.socket() as s:
        s.settimeout(3)
        with pytest.raises(ConnectionRefusedError):
            s.connect((pptpd.server_ip, PPTP_PORT))
    pptpd.start_pptpd()
    s, reply = handshake(pptpd)
    s.close()
    assert reply[HEADER.size + 2] == 1
    # Started through the command channel, pptpd has no controlling terminal (field 7 of
    # /proc/PID/stat is tty_nr), so nothing the channel does can SIGHUP it.
    ttys = pptpd.guest_exec(
        ". /host/guest/lib.sh; for p in $(pids_of pptpd); do cut -d' ' -f7 /proc/$p/stat; done"
    )
    assert ttys.stdout.split() == ["0"]


def test_restart_with_a_scenario_installs_its_options(pptpd: Vm) -> None:
    pptpd.restart_pptpd(PAP)
    options = pptpd.guest_exec("cat /etc/ppp/pptpd-options").stdout.splitlines()
    assert "require-pap" in options and "require-mschap-v2" not in options
    assert "logfile /host/log/pppd.log" in options


def _connect_seconds(vm: Vm) -> float:
    with vm.socket() as s:
        s.settimeout(5)
        t0 = time.monotonic()
        s.connect((vm.server_ip, PPTP_PORT))
        return time.monotonic() - t0


@pytest.mark.parametrize("direction", ["out", "in"])
def test_netem_delays_the_link(pptpd: Vm, direction: str) -> None:
    assert _connect_seconds(pptpd) < 0.15
    pptpd.netem("delay 200ms", direction=direction)
    shown = pptpd.guest_exec("tc qdisc show").stdout
    assert "netem" in shown and "delay 200" in shown
    assert _connect_seconds(pptpd) >= 0.2  # the SYN-ACK (out) or the SYN (in) waits 200 ms
    pptpd.netem(None)
    assert "netem" not in pptpd.guest_exec("tc qdisc show").stdout
    assert _connect_seconds(pptpd) < 0.15


def test_guest_exec_reports_status_and_output(pptpd: Vm) -> None:
    r = pptpd.guest_exec("echo out; echo err >&2; exit 3", check=False)
    assert (r.rc, r.stdout, r.stderr) == (3, "out\n", "err\n")
    with pytest.raises(GuestCommandError, match="rc 7"):
        pptpd.guest_exec("exit 7")
    assert pptpd.guest_exec("cat /proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"


def test_guest_services_answer(pptpd: Vm) -> None:
    # The TCP echo (port 7) that tunnel tests use through inside_ip answers on every address.
    with pptpd.socket() as s:
        s.settimeout(5)
        s.connect((pptpd.server_ip, 7))
        s.sendall(b"ping through the tap\n")
        assert recv_exact(s, 21) == b"ping through the tap\n"
    assert "iperf3 -s" in pptpd.guest_exec("pgrep -a iperf3").stdout


def test_netns_has_its_own_resolv_conf(pptpd: Vm) -> None:
    out = subprocess.run(
        pptpd.netns_cmd(["cat", "/etc/resolv.conf"]), capture_output=True, text=True, check=True
    ).stdout
    assert pptpd.netns in out


def test_command_channel_survives_an_agent_restart(pptpd: Vm) -> None:
    # busybox init respawns the agent; commands rung while it was gone still run (the host rings
    # again, the new agent runs what is pending).
    agent_file = pptpd.run_dir / "state" / "agent"
    old_pid = agent_file.read_text().strip()
    pptpd.guest_exec(f"kill -KILL {old_pid}")
    assert pptpd.guest_exec("echo still here", timeout=15).stdout == "still here\n"
    assert agent_file.read_text().strip() != old_pid
