"""Where a ping's round trip goes, hop by hop, inside the two tunnel processes. Prints figures.

Run against a tunnel held up by ``bench/tunnel.py --hold ROW`` (it prints the PIDs and namespaces),
under the benchmark lock::

    flock /tmp/pptp-bench.lock .venv/bin/python bench/rtt_hops.py \\
        --client-pid C --server-pid S --netns <client ns> --target 10.77.0.1

It runs ``ping -c N -i 0.01`` in the client namespace while ``perf record`` samples the syscall and
scheduler tracepoints of the two tunnel processes and of ping (a few microseconds of overhead per
event, against ~1 ms of strace), then splits every round trip into its four process hops:

    C1 client TUN -> GRE   S1 server GRE -> TUN   S2 server TUN -> GRE   C2 client GRE -> TUN

and each hop into: ``deliver`` (the previous hop's forwarding syscall entered -> this process's
``epoll_wait`` returned: kernel delivery and the context switch), ``sched`` (``epoll_wait``
returned -> our read/recvfrom entered: trio and whatever else ran first), ``work`` (the read
returned -> the forwarding write/sendto entered: our Python per packet, including the EAGAIN read
that ends the batch), ``fwd`` (the forwarding syscall itself) and ``after`` (from its return to
the process blocking in ``epoll_wait`` again: bookkeeping after the packet left; on a machine where
both ends and ping share a core, the next process often runs only then, so it counts too). S2
needs no ``epoll_wait`` of its own when S1's TUN write already queued the reply: its ``deliver``
then starts at S1's write.
Medians (and 90th percentiles) over the pings; also the syscalls each process made per ping.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

READ, WRITE, SENDTO, RECVFROM, SENDMSG, RECVMSG, EPOLL_WAIT, EPOLL_CTL = 0, 1, 44, 45, 46, 47, 232, 233
NAMES = {READ: "read", WRITE: "write", SENDTO: "sendto", RECVFROM: "recvfrom", SENDMSG: "sendmsg",
         RECVMSG: "recvmsg", EPOLL_WAIT: "epoll_wait", EPOLL_CTL: "epoll_ctl"}  # fmt: skip
EVENTS = "raw_syscalls:sys_enter,raw_syscalls:sys_exit,sched:sched_switch"
_LINE = re.compile(r"^\s*\S+\s+(\d+)\s+\[\d+\]\s+([\d.]+):\s+(\S+):\s+(.*)$")
_ENTER = re.compile(r"NR (\d+) \(([0-9a-f]+), [0-9a-f]+, [0-9a-f]+, ([0-9a-f]+)")
_EXIT = re.compile(r"NR (\d+) = (-?\d+)")


@dataclass
class Call:
    nr: int
    fd: int
    enter: float
    arg3: int  # epoll_wait: the timeout (0 = a poll, trio has runnable tasks)
    exit: float = 0.0
    ret: int = 0


@dataclass
class Trace:
    calls: dict[int, list[Call]] = field(default_factory=dict)  # pid -> syscalls in order


def parse(script: str) -> Trace:
    trace = Trace()
    open_: dict[int, Call] = {}
    for line in script.splitlines():
        m = _LINE.match(line)
        if m is None:
            continue
        pid, ts, event, rest = int(m[1]), float(m[2]), m[3], m[4]
        if event == "raw_syscalls:sys_enter":
            e = _ENTER.match(rest)
            if e:
                call = Call(int(e[1]), int(e[2], 16), ts, int(e[3], 16))
                open_[pid] = call
                trace.calls.setdefault(pid, []).append(call)
        elif event == "raw_syscalls:sys_exit":
            x = _EXIT.match(rest)
            call_or_none = open_.pop(pid, None)
            if x and call_or_none is not None and call_or_none.nr == int(x[1]):
                call_or_none.exit, call_or_none.ret = ts, int(x[2])
    return trace


def _first(calls: list[Call], start: float, nr: int, *, data: bool = True) -> Call | None:
    for c in calls:
        if c.enter >= start and c.nr == nr and (c.ret > 0 or not data):
            return c
    return None


def _last_wake(calls: list[Call], before: float, after: float) -> Call | None:
    """The last epoll_wait that returned events between ``after`` and ``before``."""
    best = None
    for c in calls:
        if c.nr == EPOLL_WAIT and c.ret > 0 and after <= c.exit <= before:
            best = c
    return best


HOPS = (("C1", "client", READ, SENDTO), ("S1", "server", RECVFROM, WRITE),
        ("S2", "server", READ, SENDTO), ("C2", "client", RECVFROM, WRITE))  # fmt: skip


def analyse(trace: Trace, pids: dict[str, int], ping_pid: int) -> None:
    ping_calls = trace.calls.get(ping_pid, [])
    sends = [c for c in ping_calls if c.nr == SENDTO and c.ret > 0]
    rows: dict[str, list[float]] = {}
    syscalls: dict[str, list[int]] = {"client": [], "server": []}
    extra_wakes: dict[str, list[int]] = {"client": [], "server": []}
    rtts: list[float] = []
    for k, send in enumerate(sends):
        end = sends[k + 1].enter if k + 1 < len(sends) else send.enter + 0.01
        reply = _first([c for c in ping_calls if c.enter < end], send.enter, RECVMSG)
        if reply is None:
            continue
        prev_fwd = send.enter
        ok = True
        figures: dict[str, float] = {}
        for hop, end_name, nr_in, nr_out in HOPS:
            calls = trace.calls.get(pids[end_name], [])
            got = _first(calls, prev_fwd, nr_in)
            if got is None or got.exit > reply.exit:
                ok = False
                break
            out = _first(calls, got.exit, nr_out)
            if out is None or out.exit > reply.exit:
                ok = False
                break
            wake = _last_wake(calls, got.enter, prev_fwd)
            woke_at = wake.exit if wake is not None else prev_fwd
            figures[f"{hop} deliver"] = woke_at - prev_fwd
            figures[f"{hop} sched"] = got.enter - woke_at
            figures[f"{hop} work"] = out.enter - got.exit
            figures[f"{hop} fwd"] = out.exit - out.enter
            sleep = next((c for c in calls if c.enter >= out.exit and c.nr == EPOLL_WAIT and c.arg3), None)
            if sleep is not None:
                figures[f"{hop} after"] = sleep.enter - out.exit
            prev_fwd = out.enter
        if not ok:
            continue
        figures["ping <- TUN"] = reply.exit - prev_fwd
        rtts.append(reply.exit - send.enter)
        for name, v in figures.items():
            rows.setdefault(name, []).append(v)
        for end_name in ("client", "server"):
            window = [c for c in trace.calls.get(pids[end_name], []) if send.enter <= c.enter < end]
            syscalls[end_name].append(len(window))
            extra_wakes[end_name].append(sum(1 for c in window if c.nr == EPOLL_WAIT and c.ret == 0))
    if not rtts:
        print("no complete round trip found in the trace")
        return
    print(f"{len(rtts)} round trips; in-trace RTT median {statistics.median(rtts) * 1e6:.0f} us "
          f"(p90 {_p90(rtts) * 1e6:.0f})")  # fmt: skip
    print(f"  {'segment':<14} {'median us':>9} {'p90 us':>7}")
    for name, values in rows.items():
        print(f"  {name:<14} {statistics.median(values) * 1e6:9.1f} {_p90(values) * 1e6:7.1f}")
    for hop in ("C1", "S1", "S2", "C2"):
        total = sum(statistics.median(rows[f"{hop} {s}"]) for s in ("deliver", "sched", "work", "fwd"))
        print(f"  {hop} total (sum of medians) {total * 1e6:.0f} us")
    for end_name in ("client", "server"):
        print(f"  {end_name}: {statistics.median(syscalls[end_name]):.0f} syscalls per ping interval, "
              f"{statistics.median(extra_wakes[end_name]):.0f} epoll_wait returning nothing")  # fmt: skip


def _p90(values: list[float]) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * 0.9))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--client-pid", type=int, required=True)
    ap.add_argument("--server-pid", type=int, required=True)
    ap.add_argument("--netns", required=True, help="the client's namespace (ping runs there)")
    ap.add_argument("--target", default="10.77.0.1")
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--interval", default="0.01")
    ap.add_argument("--keep", type=Path, help="also keep perf's text output here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="rtt-hops-") as tmp:
        data = Path(tmp) / "perf.data"
        # the ping process is started first, paused by a short sleep, so perf can follow its PID
        ping_cmd = f"sleep 0.5; exec ip netns exec {args.netns} ping -q -c {args.count} -i {args.interval}"
        ping_cmd += f" {args.target}"
        ping = subprocess.Popen(["sh", "-c", ping_cmd], stdout=subprocess.PIPE, text=True)
        pids = f"{args.client_pid},{args.server_pid},{ping.pid}"
        perf = subprocess.Popen(["perf", "record", "-q", "-o", str(data), "-e", EVENTS, "-p", pids],
                                stderr=subprocess.DEVNULL)  # fmt: skip
        out, _ = ping.communicate(timeout=args.count * 0.05 + 30)
        perf.send_signal(2)
        perf.wait(timeout=30)
        script = subprocess.run(["perf", "script", "-i", str(data)], capture_output=True, text=True,
                                check=True).stdout  # fmt: skip
    if args.keep is not None:
        args.keep.write_text(script)
    print(out.strip().splitlines()[-1] if out.strip() else "ping printed nothing")
    analyse(parse(script), {"client": args.client_pid, "server": args.server_pid}, ping.pid)


if __name__ == "__main__":
    main()
