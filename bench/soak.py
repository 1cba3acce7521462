"""Soak: ``sidecar up`` against ``sidecar serve`` for a while, with mixed TCP/UDP traffic through the
tunnel, deliberate reordering, and a reconnect forced every so often. Prints throughput over time
and the resident memory of both ends at the start and the end. Figures, never pass/fail.

Run (root; needs iperf3):

    .venv/bin/python bench/soak.py                   # 3 minutes
    .venv/bin/python bench/soak.py --minutes 10 --reconnect-every 60

Every interval (``--interval`` s, default 10; fresh one-shot iperf3 servers each time): an iperf3
TCP stream (alternately client -> server and server -> client, ``-R``) and, at the same time, an
iperf3 UDP stream at ``--udp-rate`` from the client; one line with TCP Mbit/s, UDP delivered Mbit/s
and loss, the client's reorder counters, the reconnect count and both RSS figures. The server
reorders 20 % of its data packets (``--test-reorder 0.2``). Every ``--reconnect-every`` seconds the
control connection is reset (an nft ``reject with tcp reset`` in the server namespace for one
second): the client notices, the kill switch holds, it reconnects; the server process stays the
same, so its RSS is comparable from start to end. An interval cut by a reconnect shows the iperf3
error instead of figures.

Topology and processes come from ``tests/netns/faultlib.py``; everything is removed at the end, also
on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.netns import faultlib as fl  # noqa: E402
from tests.netns import nslib  # noqa: E402
from tests.netns.serve_helpers import SERVER_TUN_IP  # noqa: E402

TCP_PORT, UDP_PORT = 5201, 5202


class Stop(Exception):
    pass


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


def iperf(lab: fl.Lab, args: list[str], seconds: float) -> dict[str, Any] | str:
    argv = ["iperf3", "-c", str(SERVER_TUN_IP), "-J", "-t", str(int(seconds)), "--connect-timeout", "2000",
            *args]  # fmt: skip
    try:
        proc = lab.client_ns.run(argv, check=False, timeout=seconds + 15)
    except subprocess.TimeoutExpired:
        return "timed out"
    try:
        data: dict[str, Any] = json.loads(proc.stdout)
    except ValueError:
        return (proc.stderr or proc.stdout).strip()[:60] or f"exit {proc.returncode}"
    if "error" in data:
        return str(data["error"])[:60]
    return data


def start_iperf_servers(lab: fl.Lab) -> list[subprocess.Popen[bytes]]:
    procs = [lab.server_ns.popen(["iperf3", "-s", "-1", "-p", str(port)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL) for port in (TCP_PORT, UDP_PORT)]  # fmt: skip

    def listening() -> bool:
        out = lab.server_ns.run(["ss", "-Hltn"], check=False).stdout
        return f":{TCP_PORT} " in out and f":{UDP_PORT} " in out

    fl.wait_until(listening, 5, "iperf3 servers listening")
    return procs


def tcp_mbps(result: dict[str, Any] | str) -> float | None:
    if isinstance(result, str):
        return None
    return float(result["end"]["sum_received"]["bits_per_second"]) / 1e6


def udp_figures(result: dict[str, Any] | str) -> tuple[float, float] | None:
    if isinstance(result, str):
        return None
    s = result["end"]["sum"]
    delivered = float(s["bits_per_second"]) * (1 - float(s.get("lost_percent", 0.0)) / 100)
    return delivered / 1e6, float(s.get("lost_percent", 0.0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="how long [3]")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds per measurement [10]")
    parser.add_argument(
        "--reconnect-every", type=float, default=45.0, help="force a reconnect every N s [45]"
    )
    parser.add_argument("--udp-rate", default="5M", help="UDP offered rate (iperf3 -b) [5M]")
    parser.add_argument("--reorder", default="0.2", help="server --test-reorder fraction [0.2]")
    args = parser.parse_args()
    reason = nslib.skip_reason() or (None if shutil.which("iperf3") else "iperf3 is not installed")
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGHUP, _raise_stop)
    tmp = Path(tempfile.mkdtemp(prefix="pst-soak-"))
    server_args = [*fl.FAST_KEEPALIVE, "--test-reorder", args.reorder]
    client_args = [*fl.FAST_KEEPALIVE, "--connect-timeout", "1.5"]
    rows: list[tuple[float, float | None, tuple[float, float] | None]] = []
    try:
        with fl.Lab(tmp, server_args=server_args, client_args=client_args) as lab:
            client_pid, server_pid = lab.client.pid(), lab.server.pid()
            rss0 = (fl.rss_kb(client_pid), fl.rss_kb(server_pid))
            cpu0 = (fl.cpu_seconds(client_pid), fl.cpu_seconds(server_pid))
            leaked0 = lab.leaked()
            print(f"logs: {tmp}", file=sys.stderr)
            print(f"start: RSS client {rss0[0] / 1024:.1f} MB, server {rss0[1] / 1024:.1f} MB; "
                  f"{args.minutes:g} min, interval {args.interval:g} s, reconnect every "
                  f"{args.reconnect_every:g} s, server --test-reorder {args.reorder}, "
                  f"UDP {args.udp_rate}")  # fmt: skip
            print(f"{'t s':>6} {'dir':>3} {'TCP Mbit/s':>10} {'UDP Mbit/s':>10} {'UDP loss%':>9} "
                  f"{'reorder buf/lost':>16} {'reconn':>6} {'RSS c/s MB':>12}")  # fmt: skip
            start = time.monotonic()
            next_reconnect = start + args.reconnect_every
            forced = 0
            n = 0
            while time.monotonic() - start < args.minutes * 60:
                if time.monotonic() >= next_reconnect:
                    fl.fault_tcp_reset(lab.server_ns)
                    threading.Timer(1.0, fl.fault_clear, (lab.server_ns,)).start()
                    next_reconnect += args.reconnect_every
                    forced += 1
                reverse = n % 2 == 1
                n += 1
                began = time.monotonic()
                servers = start_iperf_servers(lab)
                out: dict[str, Any] = {}
                udp_args = ["-p", str(UDP_PORT), "-u", "-b", args.udp_rate, "-l", "1200"]

                def run_udp(box: dict[str, Any] = out, udp_args: list[str] = udp_args) -> None:
                    box["udp"] = iperf(lab, udp_args, args.interval)

                udp = threading.Thread(target=run_udp)
                udp.start()
                tcp = iperf(lab, ["-p", str(TCP_PORT), *(["-R"] if reverse else [])], args.interval)
                udp.join(args.interval + 20)
                for proc in servers:  # one-shot servers: a broken test cannot block the next interval
                    if proc.poll() is None:
                        proc.kill()
                    proc.wait(5)
                t = time.monotonic() - start
                status = fl.status_of(lab.client)
                c = status.get("counters", {})
                mbps, u = tcp_mbps(tcp), udp_figures(out.get("udp", "no result"))
                rows.append((t, mbps, u))
                tcp_text = f"{mbps:10.1f}" if mbps is not None else f"{'-':>10}"
                udp_text = f"{u[0]:10.2f} {u[1]:9.2f}" if u is not None else f"{'-':>10} {'-':>9}"
                note = "" if mbps is not None else f"  ({tcp})"
                print(f"{t:6.0f} {'s>c' if reverse else 'c>s':>3} {tcp_text} {udp_text} "
                      f"{c.get('reorder_buffered', 0):>8}/{c.get('reorder_lost', 0):<7} "
                      f"{status.get('reconnects', '?'):>6} "
                      f"{fl.rss_kb(client_pid) / 1024:5.1f}/{fl.rss_kb(server_pid) / 1024:<5.1f}{note}",
                      flush=True)  # fmt: skip
                rest = args.interval - (time.monotonic() - began)
                if rest > 0:  # an interval cut short (a reconnect) still lasts an interval: no spinning
                    time.sleep(rest)
            rss1 = (fl.rss_kb(client_pid), fl.rss_kb(server_pid))
            cpu1 = (fl.cpu_seconds(client_pid), fl.cpu_seconds(server_pid))
            leaked = lab.leaked() - leaked0
            final = lab.client.status()
    except (KeyboardInterrupt, Stop) as exc:
        print(f"interrupted ({exc or 'Ctrl-C'}): namespaces and processes removed", file=sys.stderr)
        return 130
    tcp_ok = [m for _, m, _ in rows if m is not None]
    udp_ok = [u for _, _, u in rows if u is not None]
    print()
    print(f"intervals: {len(rows)}, TCP measured in {len(tcp_ok)} (median {statistics.median(tcp_ok):.1f} "
          f"Mbit/s, min {min(tcp_ok):.1f})" if tcp_ok else "no TCP interval completed")  # fmt: skip
    if udp_ok:
        print(f"UDP delivered median {statistics.median(u[0] for u in udp_ok):.2f} Mbit/s, "
              f"loss median {statistics.median(u[1] for u in udp_ok):.2f} %")  # fmt: skip
    print(f"reconnects: {final['reconnects']} (forced {forced}); kill switch leaks: {leaked}")
    print(f"RSS client: {rss0[0] / 1024:.1f} MB -> {rss1[0] / 1024:.1f} MB; "
          f"server: {rss0[1] / 1024:.1f} MB -> {rss1[1] / 1024:.1f} MB")  # fmt: skip
    print(f"CPU seconds: client {cpu1[0] - cpu0[0]:.1f}, server {cpu1[1] - cpu0[1]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
