"""Fault measurements: ``sidecar up`` against ``sidecar serve`` in two namespaces, one fault at a time.
Prints a table - detection time, recovery time, whether the kill switch held - and the data figures
under loss and reordering. Figures, never pass/fail (the pass/fail versions are
``tests/netns/test_faults.py``).

Run (root):

    .venv/bin/python bench/faults.py                 # fast keepalive (LCP echo 0.5 s x 2), 3 runs
    .venv/bin/python bench/faults.py --runs 5
    .venv/bin/python bench/faults.py --default-keepalive   # also: blackhole with the defaults

Definitions:
- detection: fault injected -> the client logs "session ended: <reason>";
- recovery: fault removed (server restarted, nft rule deleted) -> the client logs "tunnel up" again;
- kill switch held: an app in the client namespace sends a UDP datagram to an outside address every
  10 ms all along; an nft counter on the server side of the client's uplink counts those that arrive
  outside the tunnel. "held" = 0 leaked (the counter is first shown to count: the app's packets leave
  before the client starts). "blocked" = the client kill switch's own drop counter over the outage.
- data rows: a 4 MB TCP transfer server -> client through the tunnel (MB/s, capped at 60 s), 100
  pings at 20 ms (answered), reconnects during the row.

Topology and processes come from ``tests/netns/faultlib.py``; everything is removed at the end, also
on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.netns import faultlib as fl  # noqa: E402
from tests.netns import nslib  # noqa: E402
from tests.netns.serve_helpers import SERVER_TUN_IP  # noqa: E402

FAST = [*fl.FAST_KEEPALIVE]
CLIENT_FAST = [*FAST, "--connect-timeout", "1.5"]
WRAP_START = 2**32 - 300


class Stop(Exception):
    pass


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


@dataclass
class OutageRow:
    fault: str
    runs: list[fl.Outage] = field(default_factory=list)

    def cells(self) -> list[str]:
        detect = [o.detect_s for o in self.runs if o.detect_s is not None]
        recover = [o.recover_s for o in self.runs if o.recover_s is not None]
        leaked = sum(o.leaked for o in self.runs)
        blocked = sum(o.blocked for o in self.runs)
        reason = self.runs[-1].reason if self.runs else ""
        return [
            self.fault,
            _stat(detect),
            _stat(recover),
            f"{'yes' if leaked == 0 else 'NO'} ({leaked} leaked, {blocked} blocked)",
            reason[:70],
        ]


def _stat(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} (max {max(values):.2f})"


def outage_rows(tmp: Path, runs: int) -> list[OutageRow]:
    rows = [OutageRow("server process killed (SIGKILL)"), OutageRow("server network blackholed (nft drop)"),
            OutageRow("TCP reset of the control connection")]  # fmt: skip
    with fl.Lab(tmp / "outages", server_args=FAST, client_args=CLIENT_FAST) as lab:
        for _ in range(runs):
            for row in rows:
                fl.wait_up(lab.client, 20)
                time.sleep(1.5)  # a stable session (the backoff starts over after 1 s up)
                row.runs.append(_one_outage(lab, row.fault))
                print(f"  {row.fault}: {row.runs[-1].detect_s:.2f} s / {row.runs[-1].recover_s:.2f} s",
                      file=sys.stderr)  # fmt: skip
    return rows


def _one_outage(lab: fl.Lab, fault: str) -> fl.Outage:
    ns = lab.server_ns
    if fault.startswith("server process killed"):
        old = lab.server

        def heal() -> None:
            lab.server = lab.start_server()

        return lab.outage(fault, lambda: old.signal(signal.SIGKILL), heal)
    if fault.startswith("server network"):
        return lab.outage(fault, lambda: fl.fault_blackhole(ns), lambda: fl.fault_clear(ns))
    return lab.outage(fault, lambda: fl.fault_tcp_reset(ns), lambda: fl.fault_clear(ns))


def default_keepalive_blackhole(tmp: Path) -> OutageRow:
    row = OutageRow("blackhole, default keepalive (LCP 10 s x 3)")
    with fl.Lab(tmp / "defaults") as lab:
        time.sleep(1.5)
        row.runs.append(lab.outage(row.fault, lambda: fl.fault_blackhole(lab.server_ns),
                                   lambda: fl.fault_clear(lab.server_ns), detect_timeout=120,
                                   recover_timeout=60))  # fmt: skip
    return row


@dataclass
class DataRow:
    name: str
    mbps: float | None
    intact: bool
    pings: int
    reconnects: int
    notes: str


def data_row(
    tmp: Path,
    name: str,
    *,
    server_args: list[str] | None = None,
    client_args: list[str] | None = None,
    patches: list[str] | None = None,
    fault: Callable[[fl.Lab], None] | None = None,
    notes: Callable[[dict[str, int]], str] = lambda c: "",
) -> DataRow:
    sub = tmp / name.replace(" ", "_").replace("%", "pct").replace("/", "_")
    sub.mkdir()
    with fl.Lab(sub, server_args=server_args or [], client_args=client_args or [], leak_watch=False,
                server_patches=patches or [], client_patches=patches or []) as lab:  # fmt: skip
        if fault is not None:
            fault(lab)
        size = 4_000_000
        try:
            intact, got, seconds = fl.transfer(lab, size, timeout=60)
            mbps: float | None = got / seconds / 1e6 if intact else None
        except Exception:
            intact, mbps = False, None
        pings = fl.ping(lab.client_ns, SERVER_TUN_IP, 100, 0.02)
        fl.fault_clear(lab.server_ns)
        time.sleep(1.1)
        status = lab.client.status()
        return DataRow(name, mbps, intact, pings, status["reconnects"], notes(status["counters"]))


def _reorder_notes(c: dict[str, int]) -> str:
    return (f"reorder: buffered {c.get('reorder_buffered', 0)}, lost {c.get('reorder_lost', 0)}, "
            f"late {c.get('reorder_late', 0)}, timeouts {c.get('reorder_timeouts', 0)}")  # fmt: skip


def _mppe_notes(c: dict[str, int]) -> str:
    return (f"Reset-Requests {c.get('link_reset_requests_sent', 0)}, decrypt drops "
            f"{c.get('link_rx_decrypt_dropped', 0)}; " + _reorder_notes(c))  # fmt: skip


def sigterm_row(tmp: Path, runs: int) -> list[str]:
    times = []
    seen = []
    for i in range(runs):
        with fl.Lab(tmp / f"sigterm{i}", leak_watch=False) as lab:
            time.sleep(0.5)
            sniffer = fl.Sniffer(lab.server_ns, lab.uplink)
            t0 = time.monotonic()
            lab.client.signal(signal.SIGTERM)
            code = lab.client.popen.wait(10)
            times.append(time.monotonic() - t0)
            time.sleep(0.1)
            captured = sniffer.stop()
            incoming = [c for c in captured if not c.outgoing]
            types = fl.pptp_control_types(incoming)
            cleared = 12 in types or 13 in fl.pptp_control_types([c for c in captured if c.outgoing])
            seen.append(5 in fl.lcp_codes(incoming) and cleared and (3 in types or 4 in types) and code == 0)
    return [
        "SIGTERM: exit time (s)",
        _stat(times),
        f"LCP TermReq, call cleared (CCRQ or the server's CDN), Stop, exit 0: {sum(seen)}/{len(seen)}",
    ]


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    out = [line, "-+-".join("-" * w for w in widths)]
    out += [" | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="repetitions of each outage [3]")
    parser.add_argument("--default-keepalive", action="store_true",
                        help="also measure the blackhole with the default keepalive (~45 s)")  # fmt: skip
    parser.add_argument("--skip-data", action="store_true", help="outages only")
    args = parser.parse_args()
    reason = nslib.skip_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGHUP, _raise_stop)
    tmp = Path(tempfile.mkdtemp(prefix="pst-faults-"))
    try:
        print(f"outages ({args.runs} runs each; client: {' '.join(CLIENT_FAST)}; backoff 0.2-1 s)",
              file=sys.stderr)  # fmt: skip
        outages = outage_rows(tmp, args.runs)
        if args.default_keepalive:
            outages.append(default_keepalive_blackhole(tmp))
        shutdown = sigterm_row(tmp, args.runs)
        data: list[DataRow] = []
        if not args.skip_data:
            reorder = ["--test-reorder", "0.3"]
            stateful = ["--mppe-stateful"]
            specs: list[tuple[str, dict[str, object]]] = [
                ("baseline (no fault)", {}),
                ("5 % GRE loss each way", {"fault": lambda lab: fl.fault_gre_loss(lab.server_ns, 5),
                                           "notes": _reorder_notes}),
                ("reordering --test-reorder 0.3", {"server_args": reorder, "notes": _reorder_notes}),
                ("seq from 2^32-300 + reorder 0.3", {"server_args": reorder,
                                                     "patches": [f"gre_initial_seq={WRAP_START}"],
                                                     "notes": _reorder_notes}),
                ("stateful MPPE (no fault)", {"server_args": stateful, "client_args": stateful,
                                              "notes": _mppe_notes}),
                ("stateful MPPE + 1 % GRE loss", {"server_args": stateful, "client_args": stateful,
                                                  "fault": lambda lab: fl.fault_gre_loss(lab.server_ns, 1),
                                                  "notes": _mppe_notes}),
                ("stateful MPPE + 5 % GRE loss", {"server_args": stateful, "client_args": stateful,
                                                  "fault": lambda lab: fl.fault_gre_loss(lab.server_ns, 5),
                                                  "notes": _mppe_notes}),
            ]  # fmt: skip
            for name, kw in specs:
                print(f"  data: {name}", file=sys.stderr)
                data.append(data_row(tmp, name, **kw))  # type: ignore[arg-type]
    except (KeyboardInterrupt, Stop) as exc:
        print(f"interrupted ({exc or 'Ctrl-C'}): namespaces and processes removed", file=sys.stderr)
        return 130
    print(f"logs: {tmp}", file=sys.stderr)
    print()
    print(table(["fault", "detection s (median, max)", "recovery s (median, max)", "kill switch held",
                 "reason (last run)"], [r.cells() for r in outages]))  # fmt: skip
    print()
    print(table(["shutdown", "s (median, max)", "what the server saw"], [shutdown]))
    if data:
        print()
        print(table(["data (4 MB TCP server->client, 100 pings)", "MB/s", "intact", "pings", "reconnects",
                     "counters"],
                    [[d.name, f"{d.mbps:.2f}" if d.mbps else "stalled (>60 s)", "yes" if d.intact else "no",
                      f"{d.pings}/100", str(d.reconnects), d.notes] for d in data]))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
