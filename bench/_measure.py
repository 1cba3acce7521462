"""Measurements inside a :class:`~_topology.Lab`: iperf3 (TCP, UDP, small-packet UDP), ping RTT, and
the search for the highest UDP rate with under 1 % loss. Figures only, never pass/fail.

iperf3 runs as a one-off server (``iperf3 -s -1``) in the server namespace for every test, so a test
that broke (a tunnel that died mid-way) cannot leave a busy server behind for the next one. The
client runs in the client namespace and sends towards the server (client -> server direction).
"""

from __future__ import annotations

import contextlib
import json
import re
import statistics
import subprocess
from dataclasses import dataclass

from _topology import Lab, Proc, wait_until

IPERF_PORT = 5201
UDP_LEN = 1300  # datagram payload: 1328-byte IP packets fit every tunnel here (MTU 1396/1400)
SMALL_LEN = 64  # small-packet UDP payload for the packets-per-second test (92-byte IP packets)
UDP_BUFFER = "4M"  # -w for UDP: the receiving iperf3 is otherwise the first thing to drop
LOSS_LIMIT = 1.0  # percent


@dataclass(frozen=True)
class IperfResult:
    bits_per_second: float  # received (TCP: sum_received; UDP: delivered = sent - lost)
    bytes: int  # received payload bytes
    seconds: float
    packets: int = 0  # UDP: sent datagrams
    lost: int = 0  # UDP
    lost_percent: float = 0.0  # UDP

    @property
    def mbps(self) -> float:
        return self.bits_per_second / 1e6

    @property
    def delivered_pps(self) -> float:
        return (self.packets - self.lost) / self.seconds if self.seconds else 0.0


class MeasureError(Exception):
    pass


def _start_server(lab: Lab) -> Proc:
    proc = lab.start(lab.server, ["iperf3", "-s", "-1", "-p", str(IPERF_PORT)], "iperf3-server")

    def listening() -> bool:
        out = lab.run(lab.server, ["ss", "-Hltn", f"sport = :{IPERF_PORT}"], timeout=5).stdout
        return bool(out.strip())

    wait_until("iperf3 server listening", listening, 5, proc)
    return proc


def iperf(
    lab: Lab,
    target: str,
    *,
    seconds: float,
    streams: int = 1,
    udp_rate: str | None = None,
    length: int | None = None,
) -> IperfResult:
    """One iperf3 test client -> server; raises :class:`MeasureError` when it produced no result."""
    server = _start_server(lab)
    argv = ["iperf3", "-c", target, "-p", str(IPERF_PORT), "-t", f"{seconds:g}", "-J",
            "--connect-timeout", "3000"]  # fmt: skip
    if streams > 1:
        argv += ["-P", str(streams)]
    if udp_rate is not None:
        argv += ["-u", "-b", udp_rate, "-w", UDP_BUFFER]
    if length is not None:
        argv += ["-l", str(length)]
    try:
        done = lab.run(lab.client, argv, timeout=seconds + 20)
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.popen.wait(3)
        lab.stop(server, 1)
    try:
        data = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise MeasureError(f"iperf3 gave no JSON: {done.stderr.strip()[-300:]}") from None
    if "error" in data and "end" not in data:
        raise MeasureError(f"iperf3: {data['error']}")
    end = data.get("end", {})
    if udp_rate is None:
        rx = end.get("sum_received") or {}
        if not rx.get("seconds"):
            raise MeasureError(f"iperf3: no TCP result ({data.get('error', 'empty')})")
        return IperfResult(float(rx["bits_per_second"]), int(rx["bytes"]), float(rx["seconds"]))
    rx = end.get("sum_received") or end.get("sum") or {}
    if not rx.get("seconds"):
        raise MeasureError(f"iperf3: no UDP result ({data.get('error', 'empty')})")
    return IperfResult(
        bits_per_second=float(rx["bits_per_second"]),
        bytes=int(rx["bytes"]),
        seconds=float(rx["seconds"]),
        packets=int(rx.get("packets", 0)),
        lost=int(rx.get("lost_packets", 0)),
        lost_percent=float(rx.get("lost_percent", 0.0)),
    )


def udp_search(
    lab: Lab, target: str, *, first_mbps: float, probes: int, seconds: float, verbose: bool = False
) -> float | None:
    """The highest delivered UDP rate (Mbit/s, 1300-byte datagrams) seen with < 1 % loss.

    Probe 1 offers ``first_mbps``. While no probe has lost, the offer doubles; once one has, the
    next offer is 80 % of what that probe delivered (the capacity estimate; at most 60 % of the
    lossy offer), then bisection between the best clean offer and the lowest lossy one. None if no
    probe stayed under the limit (the table then shows the other runs' median).
    """
    good = 0.0
    lo, hi = 0.0, 0.0
    rate = max(first_mbps, 1.0)
    for _ in range(probes):
        try:
            r = iperf(lab, target, seconds=seconds, udp_rate=f"{rate:.1f}M", length=UDP_LEN)
        except MeasureError:
            r = None
        if verbose:
            got = "failed" if r is None else f"{r.mbps:.0f} Mbit/s delivered, {r.lost_percent:.2f} % lost"
            print(f"      udp probe {rate:.0f} Mbit/s: {got}", flush=True)
        if r is not None and r.lost_percent < LOSS_LIMIT:
            good = max(good, r.mbps)
            lo = max(lo, rate)
        else:
            hi = rate if not hi else min(hi, rate)
        if not hi:
            rate *= 2
        elif not lo:
            delivered = r.mbps if r is not None else rate / 4
            rate = min(0.8 * delivered, 0.6 * hi)
        else:
            rate = (lo + hi) / 2
            if hi - lo < 0.03 * hi:
                break
    return good or None


def small_packet_pps(lab: Lab, target: str, *, seconds: float) -> IperfResult:
    """64-byte UDP payloads at an unlimited offered rate: what arrives per second."""
    return iperf(lab, target, seconds=seconds, udp_rate="0", length=SMALL_LEN)


_TIME = re.compile(r"time=([0-9.]+) ms")


def ping_median_ms(lab: Lab, target: str, *, count: int) -> float:
    """Median RTT over ``count`` echo requests sent every 10 ms (``ping -c N -i 0.01``)."""
    argv = ["ping", "-n", "-c", str(count), "-i", "0.01", "-W", "1", target]
    done = lab.run(lab.client, argv, timeout=count * 0.05 + 15)
    times = [float(m.group(1)) for m in _TIME.finditer(done.stdout)]
    if not times:
        raise MeasureError(f"ping {target}: no replies ({done.stderr.strip() or done.stdout.strip()[-200:]})")
    return statistics.median(times)


def ping_once(lab: Lab, target: str) -> bool:
    return lab.run(lab.client, ["ping", "-n", "-c", "1", "-W", "1", target], timeout=5).returncode == 0
