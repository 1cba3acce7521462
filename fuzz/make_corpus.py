"""Write the seed corpus: ``fuzz/corpus/<target>/`` from our encoders, from scapy's independent
builders, from a recorded in-process session (client vs server, real frames) and from any pcap of
a real pptpd session found under ``tests/interop/`` (or given with ``--pcap``).

    .venv/bin/python -m fuzz.make_corpus [--out fuzz/corpus] [--pcap FILE ...]

Files are named ``<source>-<sha1 prefix>`` and the script rewrites only files it owns (the
prefixes below), so it can be re-run at any time. Scripts for machine targets wrap real frames in
the target's operation format (see ``fuzz/common.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
from collections.abc import Iterable
from ipaddress import IPv4Address
from pathlib import Path

from fuzz.common import blob, u8, u16, u32
from fuzz.targets import TARGETS, encoder_seeds

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("enc", "scapy", "session", "pcap")


# -- scapy-built frames (an independent implementation of the formats) -------------------------------


def scapy_pptp() -> list[bytes]:
    from scapy.compat import raw
    from scapy.layers import pptp

    msgs = [
        pptp.PPTPStartControlConnectionRequest(host_name=b"scapy-client", vendor_string=b"scapy"),
        pptp.PPTPStartControlConnectionReply(host_name=b"pptpd", vendor_string=b"linux"),
        pptp.PPTPStopControlConnectionRequest(),
        pptp.PPTPStopControlConnectionReply(),
        pptp.PPTPEchoRequest(identifier=0x01020304),
        pptp.PPTPEchoReply(identifier=0x01020304),
        pptp.PPTPOutgoingCallRequest(call_id=0x1234, call_serial_number=1),
        pptp.PPTPOutgoingCallReply(call_id=0x4321, peer_call_id=0x1234),
        pptp.PPTPIncomingCallRequest(call_id=7),
        pptp.PPTPIncomingCallReply(call_id=0, peer_call_id=7),
        pptp.PPTPIncomingCallConnected(peer_call_id=7),
        pptp.PPTPCallClearRequest(call_id=0x1234),
        pptp.PPTPCallDisconnectNotify(call_id=0x4321),
        pptp.PPTPWANErrorNotify(peer_call_id=0x1234),
        pptp.PPTPSetLinkInfo(peer_call_id=0x1234),
    ]
    return [raw(m) for m in msgs]


def scapy_ppp() -> list[bytes]:
    """PPP frames (with FF 03) built by scapy: LCP, PAP, CHAP, IPCP, echo, rejects."""
    from scapy.compat import raw
    from scapy.layers import ppp

    lcp_opts = [
        ppp.PPP_LCP_MRU_Option(max_recv_unit=1400),
        ppp.PPP_LCP_Auth_Protocol_Option(auth_protocol=0xC223, algorithm=0x81),
        ppp.PPP_LCP_Magic_Number_Option(magic_number=0x12345678),
        ppp.PPP_LCP_ACCM_Option(accm=0),
    ]
    ipcp_opts = [
        ppp.PPP_IPCP_Option_IPAddress(data="0.0.0.0"),
        ppp.PPP_IPCP_Option_DNS1(data="0.0.0.0"),
        ppp.PPP_IPCP_Option_DNS2(data="0.0.0.0"),
    ]
    layers = [
        ppp.PPP_LCP_Configure(code=1, id=1, options=lcp_opts),
        ppp.PPP_LCP_Configure(code=2, id=1, options=lcp_opts[:1]),
        ppp.PPP_LCP_Configure(code=3, id=2, options=[ppp.PPP_LCP_MRU_Option(max_recv_unit=1500)]),
        ppp.PPP_LCP_Configure(code=4, id=3, options=[ppp.PPP_LCP_Quality_Protocol_Option()]),
        ppp.PPP_LCP_Echo(code=9, id=4, magic_number=0x01020304, data=b"ping"),
        ppp.PPP_LCP_Echo(code=10, id=4, magic_number=0x04030201),
        ppp.PPP_LCP_Terminate(code=5, id=5, data=b"bye"),
        ppp.PPP_LCP_Protocol_Reject(id=6, rejected_protocol=0x8057, rejected_information=b"\x01\x01\x00\x04"),
        ppp.PPP_LCP_Code_Reject(id=7),
        ppp.PPP_LCP_Discard_Request(id=8),
        ppp.PPP_IPCP(code=1, id=1, options=ipcp_opts),
        ppp.PPP_IPCP(code=3, id=1, options=[ppp.PPP_IPCP_Option_IPAddress(data="10.0.0.2")]),
        ppp.PPP_PAP_Request(id=1, username=b"alice", password=b"secret"),
        ppp.PPP_PAP_Response(code=2, id=1, message=b"welcome"),
        ppp.PPP_CHAP_ChallengeResponse(code=1, id=1, value=bytes(range(16)), optional_name=b"pptpd"),
        ppp.PPP_CHAP_ChallengeResponse(code=2, id=1, value=bytes(49), optional_name=b"alice"),
        ppp.PPP_CHAP(code=3, id=1, data=b"S=" + b"A" * 40 + b" M=ok"),
        ppp.PPP_CHAP(code=4, id=1, data=b"E=691 R=0 C=" + b"0" * 32 + b" V=3 M=nope"),
    ]
    out = []
    for layer in layers:
        out.append(raw(ppp.HDLC() / ppp.PPP() / layer))
        out.append(raw(ppp.PPP() / layer))
    return out


def scapy_gre(frames: Iterable[bytes], call_id: int) -> list[bytes]:
    from scapy.compat import raw
    from scapy.layers import l2

    out = []
    for i, frame in enumerate(frames):
        g = l2.GRE_PPTP(
            seqnum_present=1, acknum_present=i & 1, call_id=call_id, sequence_number=i, ack_number=i // 2
        )
        out.append(raw(g / frame))
    out.append(raw(l2.GRE_PPTP(seqnum_present=0, acknum_present=1, call_id=call_id, ack_number=9)))
    return out


# -- a recorded in-process session: real frames from both directions ---------------------------------


def session_frames(seed: int = 1) -> tuple[list[bytes], list[bytes]]:
    """(frames the server sent, frames the client sent) in a full MS-CHAPv2 + MPPE session with data."""
    from sidecar.proto.ppp.link import LinkConfig, LinkRole, PppLink
    from sidecar.proto.secret import Secret

    pw = Secret("corpus password")
    client = PppLink(
        LinkRole.PEER,
        LinkConfig(username="alice", password=pw, echo_interval=1.0, ipv6=True),
        random.Random(seed),
    )
    server = PppLink(
        LinkRole.AUTHENTICATOR,
        LinkConfig(
            lookup_secret=lambda n: pw if n == "alice" else None,
            local_ip=IPv4Address("10.1.0.1"),
            peer_ip=IPv4Address("10.1.0.2"),
            dns=(IPv4Address("10.1.0.53"),),
            ipv6=True,
            echo_interval=1.0,
        ),
        random.Random(seed + 1),
    )
    from_server: list[bytes] = []
    from_client: list[bytes] = []
    now = 0.0
    client.start(now)
    server.start(now)
    for _ in range(20):
        c = client.frames_to_send()
        s = server.frames_to_send()
        from_client += c
        from_server += s
        for f in c:
            server.receive(f, now)
        for f in s:
            client.receive(f, now)
        now += 0.01
    for i in range(4):
        pkt = b"\x45\x00\x00\x1c" + bytes(8) + bytes((10, 1, 0, 2, 10, 1, 0, 1)) + i.to_bytes(8, "big")
        for link, sink in ((client, from_client), (server, from_server)):
            data_frame = link.send_ip(pkt, now)
            if data_frame is not None:
                sink.append(data_frame)
    now += 1.5
    client.timeout(now)
    server.timeout(now)
    from_client += client.frames_to_send()
    from_server += server.frames_to_send()
    client.close(now, "corpus done")
    from_client += client.frames_to_send()
    return from_server, from_client


def control_streams(seed: int = 1) -> tuple[bytes, bytes]:
    """(bytes the server sent, bytes the client sent) over a whole control connection."""
    from sidecar.proto.pptp import ControlConfig, ControlConnection, Role

    c = ControlConnection(Role.CLIENT, ControlConfig(hostname="corpus"), random.Random(seed))
    s = ControlConnection(Role.SERVER, ControlConfig(hostname="srv"), random.Random(seed + 1))
    now = 0.0
    s.start(now)
    c.start(now)
    to_client = b""
    to_server = b""
    for step in range(6):
        a = c.data_to_send()
        to_server += a
        s.receive_data(a, now)
        b = s.data_to_send()
        to_client += b
        c.receive_data(b, now)
        if step == 2:
            c.set_link_info(now, 0, 0)
            now += 61.0
            c.timeout(now)
            s.timeout(now)
        if step == 4:
            c.clear_call(now, "corpus done")
    return to_client, to_server


# -- pcaps of real sessions ---------------------------------------------------------------------------


def pcap_items(paths: Iterable[Path]) -> dict[str, list[bytes]]:
    """GRE packets, PPP frames and control streams from pcaps (IPv4)."""
    out: dict[str, list[bytes]] = {}
    try:
        from scapy.layers.inet import IP, TCP
        from scapy.utils import rdpcap
    except ImportError:  # pragma: no cover
        return out
    for path in paths:
        streams: dict[tuple[str, int], bytes] = {}
        for pkt in rdpcap(str(path)):
            if IP not in pkt:
                continue
            ip = pkt[IP]
            payload = bytes(ip.payload)
            if ip.proto == 47:
                out.setdefault("gre_decode", []).append(payload)
                from sidecar.proto.gre import decode_header

                try:
                    _, frame = decode_header(payload)
                except Exception:
                    continue
                if len(frame):
                    out.setdefault("ppp_frame", []).append(bytes(frame))
                    out.setdefault("link", []).append(u8(1) + u8(0) + u16(0) + u8(0) + blob(bytes(frame)))
            elif TCP in pkt and 1723 in (pkt[TCP].sport, pkt[TCP].dport):
                key = (ip.src, pkt[TCP].sport)
                streams[key] = streams.get(key, b"") + bytes(pkt[TCP].payload)
        for stream in streams.values():
            if stream:
                out.setdefault("pptp_stream", []).append(u8(0) + stream)
                out.setdefault("pptp_control", []).append(u8(1) + u16(0) + u8(0) + blob(stream[:4000]))
    return out


# -- assembling ---------------------------------------------------------------------------------------


def build(pcaps: list[Path]) -> dict[str, dict[str, list[bytes]]]:
    """source -> target -> seed inputs."""
    corpus: dict[str, dict[str, list[bytes]]] = {s: {} for s in SOURCES}
    corpus["enc"] = encoder_seeds()

    sc = corpus["scapy"]
    pptp_msgs = scapy_pptp()
    sc["pptp_decode"] = pptp_msgs
    sc["pptp_stream"] = [u8(0) + b"".join(pptp_msgs), u8(1) + u16(100) + b"".join(pptp_msgs[:4])]
    sc["pptp_control"] = [
        u8(r) + u16(0) + b"".join(u8(0) + blob(m) for m in pptp_msgs) for r in (0, 1, 3, 5, 7)
    ]
    frames = scapy_ppp()
    sc["ppp_frame"] = frames
    gre = scapy_gre(frames, 0x1234)
    sc["gre_decode"] = gre
    sc["gre_session"] = [u8(8) + u8(10) + u32(0) + u32(0) + b"".join(u8(0) + blob(g) for g in gre)]
    sc["link"] = [
        u8(r) + u8(0) + u16(0) + b"".join(u8(0) + blob(f) for f in frames) for r in (0x21, 0x40, 0x01, 0xE1)
    ]
    sc["auth_codecs"] = [
        f[4:] for f in frames if f[:2] == b"\xff\x03" and f[2:4] in (b"\xc0\x23", b"\xc2\x23")
    ]

    ss = corpus["session"]
    from_server, from_client = session_frames()
    ss["ppp_frame"] = from_server + from_client
    # the client under test (setup bit 0 = 1) replaying what the real server sent, and vice versa
    ss["link"] = [
        u8(0x01) + u8(0) + u16(0) + b"".join(u8(0) + blob(f) for f in from_server),
        u8(0x00) + u8(0) + u16(0) + b"".join(u8(0) + blob(f) for f in from_client),
        u8(0x09) + u8(0) + u16(0) + b"".join(u8(0) + blob(f) for f in from_server),
    ]
    ss["gre_session"] = [
        u8(16)
        + u8(10)
        + u32(0)
        + u32(0)
        + b"".join(u8(1) + u8(1) + u16(i) + blob(f) for i, f in enumerate(from_server))
    ]
    to_client, to_server = control_streams()
    ss["pptp_stream"] = [u8(0) + to_client, u8(0) + to_server]
    ss["pptp_control"] = [
        u8(0x01) + u16(0) + u8(0) + blob(to_client),
        u8(0x00) + u16(0) + u8(0) + blob(to_server),
        u8(0x11) + u16(0) + u8(0) + blob(to_client),
    ]

    corpus["pcap"] = pcap_items(pcaps)
    for source in corpus.values():
        unknown = set(source) - set(TARGETS)
        assert not unknown, f"seeds for unknown targets {unknown}"
    return corpus


def write(corpus: dict[str, dict[str, list[bytes]]], out: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for target in TARGETS:
        d = out / target
        d.mkdir(parents=True, exist_ok=True)
        for old in d.iterdir():
            if old.name.split("-", 1)[0] in SOURCES:
                old.unlink()
        n = 0
        for source, by_target in corpus.items():
            for item in by_target.get(target, []):
                name = f"{source}-{hashlib.sha1(item).hexdigest()[:16]}"
                (d / name).write_bytes(item)
                n += 1
        counts[target] = n
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "fuzz" / "corpus")
    ap.add_argument("--pcap", type=Path, action="append", default=[], help="extra pcap of a real session")
    args = ap.parse_args(argv)
    pcaps = sorted((ROOT / "tests" / "interop").rglob("*.pcap")) + list(args.pcap)
    counts = write(build(pcaps), args.out)
    for target, n in counts.items():
        print(f"{target:14s} {n:4d} seeds")
    if pcaps:
        print("pcaps:", ", ".join(str(p) for p in pcaps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
