"""End-to-end tunnel benchmark: pptp-sidecar vs plain veth and OpenVPN 2.6, in two namespaces.

Our PPTP tunnel (sidecar up <-> sidecar serve) side by side with plain veth (the limit) and OpenVPN
2.6 (the C userspace reference), on one topology, in one run. Prints figures and same-run ratios,
never pass/fail.

Run (root; needs iperf3, ping, openvpn, openssl):

    .venv/bin/python bench/tunnel.py --runs 3

Topology: two network namespaces joined by one veth pair (see ``bench/_topology.py``). Every row
starts its own tunnel (both ends), measures, and tears it down; rows are interleaved per run (the
order rotates) so slow drifts of a shared, noisy machine spread over all rows. Medians over runs.

Columns:
- TCP 1 / TCP 4: iperf3 TCP, client -> server, one stream and four, received Mbit/s;
- UDP: highest delivered rate of 1300-byte datagrams with < 1 % loss (short probes, searched);
- pps: 64-byte UDP datagrams offered without a rate limit, delivered per second;
- RTT: median of ``ping -c N -i 0.01`` on the idle tunnel;
- CPU s/GB: user + system CPU seconds of both tunnel processes (client and server end) per GB of
  TCP payload delivered, over the two TCP tests (/proc/<pid>/stat before and after);
- RSS: peak resident set size (VmHWM) of the client end + the server end, MB;
- vs OpenVPN: this row's TCP 1 figure divided by OpenVPN's in the same run (median of the runs), and
  the same for CPU s/GB (lower is better there).

After the tables, the crypto alone, measured in this process on the libraries each tunnel uses
(``crypto_floor``): what stateless MPPE-128's RFC 3078 work costs per GB on this host, next to
AES-256-GCM, and the budget stateless would have to fit in for 1.0x OpenVPN (OpenVPN's CPU s/GB
less our no-MPPE row's). The ratio to OpenVPN depends on the host: RC4 is latency-bound, AES-GCM
runs on AES-NI/VAES, and the two move differently from one CPU to the next.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _measure import (
    IperfResult,
    MeasureError,
    iperf,
    ping_median_ms,
    ping_once,
    small_packet_pps,
    udp_search,
)
from _topology import Interrupted, Lab, LabError, Proc, preflight, signals_ignored, signals_raise, wait_until

SERVER_TUN_IP = "10.77.0.1"
POOL = "10.77.0.10-10.77.0.20"
OVPN_SERVER_IP, OVPN_CLIENT_IP = "10.8.0.1", "10.8.0.2"
OUR_MTU, OVPN_MTU = 1456, 1400  # our tunnel's MTU against the embedded server; OpenVPN's --tun-mtu
TCP_OVERHEAD = 52  # IPv4 20 + TCP 20 + timestamps 12: TCP payload per packet = MTU - 52
CLIENT_HTTP = "127.0.0.1:9109"
USER, PASSWORD = "bench", "bench password (never logged)"
SIDECAR = [sys.executable, "-m", "sidecar"]  # --sidecar replaces it (e.g. another checkout's venv)


# -- tunnels ---------------------------------------------------------------------------------------
@dataclass
class Tunnel:
    target: str  # the server end's address, reached through the tunnel (or the veth)
    procs: list[Proc] = field(default_factory=list)  # client end first, then server end
    mode: str = ""  # what was actually negotiated (from the client's log)
    counters: Callable[[], dict[str, int]] | None = None


def _veth(lab: Lab, _spec: dict[str, Any]) -> Tunnel:
    return Tunnel(target=lab.server_ip, mode="kernel veth")


def _pptp(lab: Lab, spec: dict[str, Any]) -> Tunnel:
    secrets = lab.tmp / "chap-secrets"
    password = lab.tmp / "password"
    if not secrets.exists():
        secrets.write_text(f'{USER} * "{PASSWORD}" *\n')
        secrets.chmod(0o600)
        password.write_text(PASSWORD)
        password.chmod(0o600)
    mppe = spec.get("mppe", "require")
    stateful = ["--mppe-stateful"] if spec.get("stateful") else []
    server_argv = [*SIDECAR, "serve", "--listen", f"{lab.server_ip}:1723",
                   "--local-ip", SERVER_TUN_IP, "--pool", POOL, "--interface", "pbsrv0",
                   "--http", "off", "--mppe", mppe, *stateful,
                   "--test-reorder", str(spec.get("reorder", 0.0))]  # fmt: skip
    server = lab.start(lab.server, server_argv, "sidecar-serve", env={"PPTP_SECRETS": str(secrets)})
    wait_until("sidecar serve listening", lambda: "serving PPTP on" in server.log.read_text(), 20, server)
    client_argv = [*SIDECAR, "up", "--server", lab.server_ip, "--user", USER,
                   "--password-file", str(password), "--interface", "pbcli0", "--no-dns",
                   "--no-kill-switch", "--routes", "10.77.0.0/24", "--http", CLIENT_HTTP,
                   "--mppe", mppe, *stateful, "--backoff-initial", "0.3", "--backoff-max", "1"]  # fmt: skip
    client = lab.start(lab.client, client_argv, "sidecar-up")
    tunnel = Tunnel(target=SERVER_TUN_IP, procs=[client, server])
    wait_until("sidecar up: tunnel up", lambda: "tunnel up on" in client.log.read_text(), 20, client)
    line = next(ln for ln in client.log.read_text().splitlines() if "tunnel up on" in ln)
    tunnel.mode = line.split("encryption ", 1)[-1].split(",")[0].strip() if "encryption " in line else "?"
    tunnel.counters = lambda: _client_counters(lab)
    return tunnel


def _client_counters(lab: Lab) -> dict[str, int]:
    code = (
        "import sys,urllib.request;sys.stdout.write(urllib.request.urlopen("
        f"'http://{CLIENT_HTTP}/status',timeout=2).read().decode())"
    )
    done = lab.run(lab.client, [sys.executable, "-c", code], timeout=10)
    if done.returncode != 0:
        return {}
    counters: dict[str, int] = json.loads(done.stdout).get("counters", {})
    return counters


def _openvpn_keys(lab: Lab) -> dict[str, str]:
    """Self-signed EC certificates for both ends (made once per lab) -> their SHA-256 fingerprints."""
    fingerprints = {}
    for end in ("server", "client"):
        key, crt = lab.tmp / f"ovpn-{end}.key", lab.tmp / f"ovpn-{end}.crt"
        if not crt.exists():
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-keyout", str(key), "-out", str(crt), "-nodes", "-days", "2", "-subj", f"/CN=bench-{end}"],
                check=True, capture_output=True, timeout=30,
            )  # fmt: skip
        fingerprints[end] = subprocess.run(
            ["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(crt)],
            check=True, capture_output=True, text=True, timeout=30,
        ).stdout.strip().split("=", 1)[1]  # fmt: skip
    return fingerprints


def _openvpn(lab: Lab, _spec: dict[str, Any]) -> Tunnel:
    fp = _openvpn_keys(lab)
    common = ["openvpn", "--dev", "tun", "--proto", "udp", "--port", "1194", "--cipher", "AES-256-GCM",
              "--data-ciphers", "AES-256-GCM", "--tun-mtu", str(OVPN_MTU), "--disable-dco", "--verb", "3",
              "--ping", "10", "--ping-restart", "60"]  # fmt: skip
    server = lab.start(
        lab.server,
        [*common, "--local", lab.server_ip, "--tls-server", "--dh", "none",
         "--cert", str(lab.tmp / "ovpn-server.crt"), "--key", str(lab.tmp / "ovpn-server.key"),
         "--peer-fingerprint", fp["client"], "--ifconfig", OVPN_SERVER_IP, OVPN_CLIENT_IP],
        "openvpn-server",
    )  # fmt: skip
    client = lab.start(
        lab.client,
        [*common, "--remote", lab.server_ip, "--nobind", "--tls-client",
         "--cert", str(lab.tmp / "ovpn-client.crt"), "--key", str(lab.tmp / "ovpn-client.key"),
         "--peer-fingerprint", fp["server"], "--ifconfig", OVPN_CLIENT_IP, OVPN_SERVER_IP],
        "openvpn-client",
    )  # fmt: skip
    tunnel = Tunnel(target=OVPN_SERVER_IP, procs=[client, server])
    for proc in (client, server):
        wait_until(
            f"{proc.name}: Initialization Sequence Completed",
            lambda p=proc: "Initialization Sequence Completed" in p.log.read_text(),  # type: ignore[misc]
            30,
            proc,
        )
    cipher = [ln for ln in client.log.read_text().splitlines() if "Data Channel: cipher" in ln]
    tunnel.mode = cipher[-1].split("Data Channel: ", 1)[1].strip() if cipher else "AES-256-GCM"
    return tunnel


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    make: Callable[[Lab, dict[str, Any]], Tunnel]
    spec: dict[str, Any] = field(default_factory=dict)


ROWS = [
    Row("veth", "plain veth (the limit)", _veth),
    Row("stateless", "pptp-sidecar, MPPE-128 stateless", _pptp, {"mppe": "require"}),
    Row("stateful", "pptp-sidecar, MPPE-128 stateful", _pptp, {"mppe": "require", "stateful": True}),
    Row("clear", "pptp-sidecar, no MPPE", _pptp, {"mppe": "refuse"}),
    Row("reorder", "pptp-sidecar, stateless, 25 % reordered", _pptp, {"mppe": "require", "reorder": 0.25}),
    Row("openvpn", "OpenVPN 2.6, UDP, AES-256-GCM", _openvpn),
]


# -- one row, one run ------------------------------------------------------------------------------
def measure_row(lab: Lab, row: Row, args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"row": row.key}
    tunnel = row.make(lab, row.spec)
    try:
        result["mode"] = tunnel.mode
        wait_until(f"{row.key}: first ping through the tunnel", lambda: ping_once(lab, tunnel.target), 10)
        result["rtt_ms"] = ping_median_ms(lab, tunnel.target, count=args.ping_count)
        ends0 = _cpu_ends(tunnel)
        tcp1 = _try(lambda: iperf(lab, tunnel.target, seconds=args.duration))
        tcp4 = _try(lambda: iperf(lab, tunnel.target, seconds=args.duration, streams=4))
        ends1 = _cpu_ends(tunnel)
        cpu0, cpu1 = sum(ends0), sum(ends1)
        result["tcp1"] = tcp1.mbps if tcp1 else None
        result["tcp4"] = tcp4.mbps if tcp4 else None
        delivered = sum(r.bytes for r in (tcp1, tcp4) if r)
        if tunnel.procs and delivered:
            result["cpu_s_per_gb"] = (cpu1 - cpu0) / (delivered / 1e9)
            result["cpu_s_per_gb_ends"] = [
                (b - a) / (delivered / 1e9) for a, b in zip(ends0, ends1, strict=True)
            ]
            result["cpu_pct"] = (cpu1 - cpu0) / (2 * args.duration) * 100  # of one core, both ends
        first = (tcp1.mbps if tcp1 else 100.0) * 1.2
        result["udp"] = udp_search(
            lab,
            tunnel.target,
            first_mbps=first,
            probes=args.udp_probes,
            seconds=args.udp_seconds,
            verbose=args.verbose,
        )
        pps = _try(lambda: small_packet_pps(lab, tunnel.target, seconds=args.udp_seconds))
        result["pps"] = pps.delivered_pps if pps else None
        result["pps_loss"] = pps.lost_percent if pps else None
        if tunnel.procs:
            result["rss_mb"] = [p.peak_rss_kb() / 1024 for p in tunnel.procs]
            notes = [f"{p.name} exited during the row" for p in tunnel.procs if not p.alive()]
            ups = sum(p.log.read_text(errors="replace").count("tunnel up on") for p in tunnel.procs)
            if ups > 1:
                notes.append(f"the tunnel went down and came back {ups - 1} time(s)")
            if any(result.get(k) is None for k in ("tcp1", "tcp4", "pps")):
                notes.append("a measurement failed")
            if notes:
                result["note"] = "; ".join(notes) + f"; logs kept in {keep_logs(lab, tunnel, row)}"
        if tunnel.counters is not None:
            counters = tunnel.counters()
            skip = ("reorder_in_order",)
            result["reorder"] = {
                k: v for k, v in counters.items() if k.startswith("reorder_") and k not in skip and v
            }
            drops = {k: v for k, v in counters.items() if ("drop" in k or "lost" in k) and v}
            if drops:
                result["drops"] = drops
    finally:
        for proc in tunnel.procs:  # client end first: it says goodbye to the server
            lab.stop(proc, 5)
    return result


def keep_logs(lab: Lab, tunnel: Tunnel, row: Row) -> Path:
    """Copy the row's process logs out of the lab (which is removed at the end) for a post-mortem."""
    dest = Path(tempfile.gettempdir()) / f"sidecar-bench-logs-{os.getpid()}"
    dest.mkdir(exist_ok=True)
    stamp = time.strftime("%H%M%S")
    for proc in tunnel.procs:
        shutil.copy(proc.log, dest / f"{stamp}-{row.key}-{proc.name}.log")
    return dest


def _cpu_ends(tunnel: Tunnel) -> list[float]:
    """CPU seconds so far of each end (client, server)."""
    return [p.cpu_seconds() if p.alive() else 0.0 for p in tunnel.procs]


def _try(fn: Callable[[], IperfResult]) -> IperfResult | None:
    try:
        return fn()
    except MeasureError as exc:
        print(f"    ({exc})", file=sys.stderr, flush=True)
        return None


def hold(lab: Lab, row: Row) -> None:
    """Bring one row up and wait (for profiling by hand); Ctrl-C tears everything down."""
    tunnel = row.make(lab, row.spec)
    try:
        wait_until("first ping through the tunnel", lambda: ping_once(lab, tunnel.target), 10)
        print(f"{row.label} is up ({tunnel.mode}); target {tunnel.target}")
        print(f"  client: ip netns exec {lab.client.name} ...  server: ip netns exec {lab.server.name} ...")
        for proc in tunnel.procs:
            print(f"  {proc.name}: pid {proc.pid}, log {proc.log}")
        print(f"  e.g. ip netns exec {lab.server.name} iperf3 -s -1 &  "
              f"ip netns exec {lab.client.name} iperf3 -c {tunnel.target} -t 20")  # fmt: skip
        print("Ctrl-C ends it and removes everything", flush=True)
        while all(p.alive() for p in tunnel.procs):
            time.sleep(0.5)
        print("a tunnel process exited", file=sys.stderr)
    finally:
        for proc in tunnel.procs:
            lab.stop(proc, 5)


# -- the report ------------------------------------------------------------------------------------
COLUMNS = [
    ("tcp1", "TCP 1 stream Mbit/s", "{:.0f}"),
    ("tcp4", "TCP 4 streams Mbit/s", "{:.0f}"),
    ("udp", "UDP <1 % loss Mbit/s", "{:.0f}"),
    ("pps", "pps (64 B UDP)", "{:,.0f}"),
    ("rtt_ms", "ping RTT ms (median)", "{:.3f}"),
    ("cpu_s_per_gb", "CPU s/GB (both ends)", "{:.1f}"),
    ("rss", "peak RSS MB (client + server)", "{}"),
    ("ratio_tcp1", "TCP 1 vs OpenVPN", "{:.2f}x"),
    ("ratio_cpu", "CPU/GB vs OpenVPN", "{:.2f}x"),
]


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(runs: list[dict[str, dict[str, Any]]], rows: list[Row]) -> list[dict[str, Any]]:
    summary = []
    for row in rows:
        per_run = [run[row.key] for run in runs if row.key in run]
        s: dict[str, Any] = {"row": row.key, "label": row.label, "runs": len(per_run)}
        for key in ("tcp1", "tcp4", "udp", "pps", "rtt_ms", "cpu_s_per_gb", "cpu_pct"):
            s[key] = _median([r.get(key) for r in per_run])
            present = [r[key] for r in per_run if r.get(key) is not None]
            s[key + "_range"] = (min(present), max(present)) if present else None
        rss = [r["rss_mb"] for r in per_run if r.get("rss_mb")]
        if rss:
            client, server = (statistics.median(x[i] for x in rss) for i in (0, 1))
            s["rss"] = f"{client:.0f} + {server:.0f}"
        ratios_tcp, ratios_cpu = [], []
        for run in runs:
            mine, ref = run.get(row.key, {}), run.get("openvpn", {})
            if mine.get("tcp1") and ref.get("tcp1"):
                ratios_tcp.append(mine["tcp1"] / ref["tcp1"])
            if mine.get("cpu_s_per_gb") and ref.get("cpu_s_per_gb"):
                ratios_cpu.append(mine["cpu_s_per_gb"] / ref["cpu_s_per_gb"])
        s["ratio_tcp1"] = statistics.median(ratios_tcp) if ratios_tcp else None
        s["ratio_cpu"] = statistics.median(ratios_cpu) if ratios_cpu else None
        s["modes"] = sorted({r.get("mode", "") for r in per_run})
        summary.append(s)
    return summary


def markdown(summary: list[dict[str, Any]]) -> str:
    head = "| row | " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    sep = "|---|" + "---:|" * len(COLUMNS)
    lines = [head, sep]
    for s in summary:
        cells = []
        for key, _, fmt in COLUMNS:
            value = s.get(key)
            cells.append("-" if value is None else fmt.format(value))
        lines.append(f"| {s['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def crypto_floor(n: int = 10_000) -> dict[str, Any]:
    """The crypto alone, in this process: CPU seconds per GB of TCP payload for both ends together
    (one encrypts, the other decrypts), data packets only (acks would add more). MPPE through our
    codec on its default RC4 backends, and the RC4 pass over the payload alone on the fastest backend
    (what RFC 3078 leaves even a perfect codec); AES-256-GCM through ``cryptography`` (OpenSSL, the
    library OpenVPN uses; Python's call overhead included, so OpenVPN's own figure is lower still)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from mppe_crypto import codec_us, per_call_us

    from sidecar.proto.ppp.mppe import RC4_BACKENDS, RC4_FRESH, RC4_KEPT

    frame = bytes(OUR_MTU + 2)  # PPP protocol field + a full-sized IP packet
    ours_per_gb = 1e9 / (OUR_MTU - TCP_OVERHEAD)
    out: dict[str, Any] = {"rc4_stateless": RC4_FRESH.name, "rc4_stateful": RC4_KEPT.name}
    for key, stateful, rc4 in (("stateless", False, RC4_FRESH), ("stateful", True, RC4_KEPT)):
        enc, dec = codec_us(rc4, stateful, n, frame)
        out[key] = (enc + dec) * 1e-6 * ours_per_gb
    kept = {name: (rc4.crypt, rc4.new(bytes(16))) for name, rc4 in RC4_BACKENDS.items()}
    fastest_us = min(per_call_us(lambda c=crypt, k=ctx: c(k, frame), n) for crypt, ctx in kept.values())
    out["rc4_payload"] = 2 * fastest_us * 1e-6 * ours_per_gb
    aead, nonce, packet = AESGCM(bytes(32)), bytes(12), bytes(OVPN_MTU)
    sealed = aead.encrypt(nonce, packet, None)

    def seal_and_open() -> None:  # one end seals, the other opens
        aead.encrypt(nonce, packet, None)
        aead.decrypt(nonce, sealed, None)

    out["aes_gcm"] = per_call_us(seal_and_open, n) * 1e-6 * 1e9 / (OVPN_MTU - TCP_OVERHEAD)
    return out


def crypto_lines(floor: dict[str, Any], summary: list[dict[str, Any]]) -> str:
    cpu = {s["row"]: s.get("cpu_s_per_gb") for s in summary}
    lines = [
        "crypto alone, in this process (CPU s per GB of TCP payload, both ends, data packets only):",
        f"  MPPE-128 stateless {floor['stateless']:.1f} ({floor['rc4_stateless']}; of which the RC4 pass "
        f"over the payload alone {floor['rc4_payload']:.1f}), stateful {floor['stateful']:.1f} "
        f"({floor['rc4_stateful']}); AES-256-GCM {floor['aes_gcm']:.1f} (cryptography/OpenSSL, "
        f"{OVPN_MTU}-byte packets)",
    ]
    if cpu.get("openvpn") and cpu.get("clear"):
        budget = cpu["openvpn"] - cpu["clear"]
        lines.append(
            f"  stateless at 1.0x OpenVPN would need its crypto within OpenVPN's CPU s/GB less our no-MPPE "
            f"row's: {cpu['openvpn']:.1f} - {cpu['clear']:.1f} = {budget:.1f} s/GB"
        )
    return "\n".join(lines)


def spread(summary: list[dict[str, Any]]) -> str:
    lines = ["| row | TCP 1 min-max | TCP 4 min-max | UDP min-max | pps min-max | CPU % of a core |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip

    def rng(s: dict[str, Any], key: str, fmt: str) -> str:
        r = s.get(key + "_range")
        return "-" if r is None else f"{fmt.format(r[0])}-{fmt.format(r[1])}"

    for s in summary:
        cpu = "-" if s.get("cpu_pct") is None else f"{s['cpu_pct']:.0f}"
        lines.append(
            f"| {s['label']} | {rng(s, 'tcp1', '{:.0f}')} | {rng(s, 'tcp4', '{:.0f}')} | "
            f"{rng(s, 'udp', '{:.0f}')} | {rng(s, 'pps', '{:.0f}')} | {cpu} |"
        )
    return "\n".join(lines)


def _progress(row: Row, r: dict[str, Any], seconds: float) -> str:
    def f(key: str, fmt: str) -> str:
        v = r.get(key)
        return "-" if v is None else fmt.format(v)

    rss = "+".join(f"{x:.0f}" for x in r.get("rss_mb", [])) or "-"
    split = r.get("cpu_s_per_gb_ends")
    ends = f" (client {split[0]:.1f} + server {split[1]:.1f})" if split else ""
    extra = f" reorder {r['reorder']}" if r.get("reorder") else ""
    extra += f" drops {r['drops']}" if r.get("drops") else ""
    extra += f" NOTE {r['note']}" if r.get("note") else ""
    return (
        f"  {row.key:<10} tcp1 {f('tcp1', '{:.0f}')} tcp4 {f('tcp4', '{:.0f}')} udp {f('udp', '{:.0f}')} "
        f"pps {f('pps', '{:.0f}')} rtt {f('rtt_ms', '{:.3f}')} ms cpu/GB {f('cpu_s_per_gb', '{:.1f}')}{ends} "
        f"rss {rss} MB [{r.get('mode', '')}] ({seconds:.0f} s){extra}"
    )


# -- main ------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=3, help="repetitions; rows interleaved per run [3]")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per iperf3 TCP test [5]")
    ap.add_argument("--udp-seconds", type=float, default=1.5, help="seconds per UDP probe and pps test [1.5]")
    ap.add_argument("--udp-probes", type=int, default=4, help="UDP rate search probes per row [4]")
    ap.add_argument("--ping-count", type=int, default=200, help="pings for the RTT median [200]")
    all_rows = ",".join(r.key for r in ROWS)
    ap.add_argument("--rows", default=all_rows, help=f"comma list of rows [{all_rows}]")
    ap.add_argument("--verbose", action="store_true", help="print every UDP probe")
    ap.add_argument(
        "--sidecar",
        metavar="CMD",
        help="command that runs the sidecar CLI, for A/B runs of another build [python -m sidecar]",
    )
    ap.add_argument(
        "--hold", metavar="ROW", help="bring up one row's tunnel, print how to reach it, wait for Ctrl-C"
    )
    ap.add_argument("--json", type=Path, help="also write every run's raw figures to this file")
    args = ap.parse_args()
    wanted = [k.strip() for k in args.rows.split(",") if k.strip()]
    unknown = [k for k in wanted if k not in {r.key for r in ROWS}]
    if unknown:
        ap.error(f"unknown rows {unknown}; choose from {[r.key for r in ROWS]}")
    rows = [r for r in ROWS if r.key in wanted]
    if args.sidecar:
        SIDECAR[:] = shlex.split(args.sidecar)
    if args.hold:
        rows = [r for r in ROWS if r.key == args.hold]
        if not rows:
            ap.error(f"unknown row {args.hold!r}; choose from {[r.key for r in ROWS]}")
    tools = ["iperf3", "ping", "ss"] + (["openvpn", "openssl"] if "openvpn" in wanted else [])
    try:
        preflight(tools)
    except LabError as exc:
        print(f"bench/tunnel.py: {exc}", file=sys.stderr)
        return 1

    runs: list[dict[str, dict[str, Any]]] = []
    code = 0
    lab: Lab | None = None
    t0 = time.monotonic()
    try:
        with signals_raise():
            lab = Lab()
            print(f"lab: client ns {lab.client.name} {lab.client_ip} <-> server ns {lab.server.name} "
                  f"{lab.server_ip} (veth); {args.runs} runs, rows {', '.join(r.key for r in rows)}",
                  flush=True)  # fmt: skip
            if args.hold:
                hold(lab, rows[0])
                return 0
            for n in range(args.runs):
                order = rows[n % len(rows) :] + rows[: n % len(rows)]
                print(f"run {n + 1}/{args.runs}", flush=True)
                run: dict[str, dict[str, Any]] = {}
                for row in order:
                    t = time.monotonic()
                    try:
                        run[row.key] = measure_row(lab, row, args)
                    except (LabError, MeasureError, subprocess.SubprocessError) as exc:
                        print(f"  {row.key:<10} FAILED: {exc}", flush=True)
                        continue
                    print(_progress(row, run[row.key], time.monotonic() - t), flush=True)
                runs.append(run)
    except (KeyboardInterrupt, Interrupted):
        print("\ninterrupted; cleaning up (partial results below)", file=sys.stderr)
        code = 130
    finally:
        if lab is not None:
            with signals_ignored():
                for problem in lab.close():
                    print(f"cleanup: {problem}", file=sys.stderr)

    if runs:
        summary = summarize(runs, rows)
        print(f"\nmedians of {len(runs)} run(s), {time.monotonic() - t0:.0f} s in all; "
              f"TCP tests {args.duration:g} s, UDP probes {args.udp_seconds:g} s\n")  # fmt: skip
        print(markdown(summary))
        print("\nspread over runs, and CPU use of both tunnel ends during the TCP tests (100 = one core):\n")
        print(spread(summary))
        modes = "; ".join(f"{s['row']}: {', '.join(s['modes'])}" for s in summary)
        print(f"\nnegotiated: {modes}")
        floor = crypto_floor()
        print("\n" + crypto_lines(floor, summary))
        if args.json:
            out = {"runs": runs, "summary": summary, "crypto_floor": floor}
            args.json.write_text(json.dumps(out, indent=1, default=str))
    return code


if __name__ == "__main__":
    sys.exit(main())
