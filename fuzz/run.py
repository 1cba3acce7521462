"""Run fuzz targets under atheris for a time budget; print inputs tried and crashes per target.

    .venv/bin/python -m fuzz.run --target pptp_control --seconds 60
    .venv/bin/python -m fuzz.run --all --seconds-per-target 3          # the CI smoke run
    .venv/bin/python -m fuzz.run --all --seconds-per-target 180 --jobs 2 --json out.json

Each target runs in its own process (``fuzz/worker.py``) on the seed corpus ``fuzz/corpus/<target>``;
new interesting inputs go to ``--work`` (default ``fuzz/work/<target>``, git-ignored; ``--fresh``
uses a temporary directory instead so a run starts from the seeds only). Crashes (first input per
distinct bug) land in ``fuzz/crashes/<target>/``. Bugs listed in ``fuzz/known.py`` (reported, with
a strict-xfail regression test) are counted apart as "known". The exit status is 1 when any target
found a new bug, hung or failed to run (``--strict``: known bugs too), else 0.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


@dataclass
class Result:
    target: str
    seconds: float
    inputs: int = 0
    coverage: int = 0
    features: int = 0
    corpus: int = 0
    crashes: list[str] = field(default_factory=list)
    known: list[str] = field(default_factory=list)  # bugs listed in fuzz/known.py (reported already)
    error: str = ""  # the worker itself failed (not a bug found by fuzzing)
    slowest_input_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.crashes and not self.error


def target_names() -> list[str]:
    sys.path.insert(0, str(ROOT))
    from fuzz.targets import TARGETS

    return list(TARGETS)


def run_target(
    name: str, seconds: float, *, work: Path | None, crash_root: Path, max_len: int, timeout: int
) -> Result:
    seeds = ROOT / "fuzz" / "corpus" / name
    tmp: str | None = None
    if work is None:
        tmp = tempfile.mkdtemp(prefix=f"fuzz-{name}-")
        work_dir = Path(tmp)
    else:
        work_dir = work / name
        work_dir.mkdir(parents=True, exist_ok=True)
    crash_dir = crash_root / name
    artifacts = Path(tempfile.mkdtemp(prefix=f"fuzz-art-{name}-"))
    cmd = [
        PYTHON,
        "-m",
        "fuzz.worker",
        name,
        f"-max_total_time={max(1, round(seconds))}",
        f"-max_len={max_len}",
        f"-timeout={timeout}",
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
        f"-artifact_prefix={artifacts}/",
        str(work_dir),
    ]
    if seeds.is_dir():
        cmd.append(str(seeds))
    env = dict(os.environ, FUZZ_CRASH_DIR=str(crash_dir), PYTHONPATH=str(ROOT))
    env.pop("FUZZ_STOP_ON_CRASH", None)
    started = time.monotonic()
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=seconds + 120, check=False
        )
        stderr, rc = proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr
        stderr = err.decode(errors="replace") if isinstance(err, bytes) else (err or "")
        rc = -1
    res = Result(name, round(time.monotonic() - started, 1))
    for line in stderr.splitlines():
        if line.startswith("FUZZ-CRASH "):
            res.crashes.append(line.split(" ", 2)[2])
        elif line.startswith("FUZZ-KNOWN "):
            res.known.append(line.split(" ", 2)[2])
        elif line.startswith("stat::number_of_executed_units:"):
            res.inputs = int(line.split(":")[-1])
        elif line.startswith("stat::slowest_unit_time_sec:"):
            res.slowest_input_s = float(line.split(":")[-1])
        elif m := re.match(r"#\d+\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)", line):
            res.coverage, res.features, res.corpus = (int(g) for g in m.groups())
    if not res.inputs:
        m = re.search(r"Done (\d+) runs", stderr)
        res.inputs = int(m.group(1)) if m else 0
    # libFuzzer's own findings: a hang (timeout), memory blow-up, or a crash with the stop flag
    for kind in ("timeout", "oom", "crash", "leak", "slow-unit"):
        for art in artifacts.glob(f"{kind}-*"):
            if kind == "slow-unit":
                continue
            crash_dir.mkdir(parents=True, exist_ok=True)
            dest = crash_dir / art.name
            shutil.copy(art, dest)
            res.crashes.append(f"libFuzzer {kind}: input saved to {dest}")
    if rc not in (0,) and not res.crashes:
        tail = "\n".join(stderr.splitlines()[-15:])
        res.error = f"worker exited with status {rc}:\n{tail}"
    shutil.rmtree(artifacts, ignore_errors=True)
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


ROW = "{:14s} {:>7} {:>10} {:>8} {:>6} {:>6}  {}"


def print_table(results: list[Result]) -> None:
    print(ROW.format("target", "seconds", "inputs", "exec/s", "cov", "corpus", "crashes (known)"))
    for r in results:
        rate = round(r.inputs / r.seconds) if r.seconds else 0
        status = f"{len(r.crashes)} ({len(r.known)})" if not r.error else "worker failed"
        print(ROW.format(r.target, f"{r.seconds:.1f}", r.inputs, rate, r.coverage, r.corpus, status))
        for c in r.crashes:
            print(f"    NEW {c}")
        for c in r.known:
            print(f"    known {c}")
        if r.error:
            print("    " + r.error.replace("\n", "\n    "))
    total = sum(r.inputs for r in results)
    bad = sum(len(r.crashes) for r in results)
    known = sum(len(r.known) for r in results)
    print(ROW.format("total", "", total, "", "", "", f"{bad} ({known})"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run atheris fuzz targets for a time budget.")
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--target", action="append", help="target name (repeatable)")
    which.add_argument("--all", action="store_true", help="every target")
    which.add_argument("--list", action="store_true", help="list the targets")
    ap.add_argument("--seconds", type=float, default=None, help="budget for each --target")
    ap.add_argument("--seconds-per-target", type=float, default=None, help="budget per target with --all")
    ap.add_argument("--jobs", type=int, default=1, help="targets run in parallel (this machine: 2 cores)")
    ap.add_argument("--work", type=Path, default=ROOT / "fuzz" / "work", help="where new inputs accumulate")
    ap.add_argument("--fresh", action="store_true", help="start from the seed corpus only (temp work dir)")
    ap.add_argument("--crashes", type=Path, default=ROOT / "fuzz" / "crashes")
    ap.add_argument("--max-len", type=int, default=2048)
    ap.add_argument("--timeout", type=int, default=10, help="seconds one input may take before it is a hang")
    ap.add_argument("--json", type=Path, help="also write the results as JSON")
    ap.add_argument("--strict", action="store_true", help="fail on known bugs (fuzz/known.py) too")
    args = ap.parse_args(argv)

    names = target_names()
    if args.list:
        print("\n".join(names))
        return 0
    chosen = names if args.all else args.target
    unknown = [t for t in chosen if t not in names]
    if unknown:
        print(f"unknown target(s) {', '.join(unknown)}; choose from: {', '.join(names)}", file=sys.stderr)
        return 2
    seconds = args.seconds_per_target if args.all else args.seconds
    if seconds is None:
        seconds = 10.0
    work = None if args.fresh else args.work

    def one(name: str) -> Result:
        r = run_target(
            name, seconds, work=work, crash_root=args.crashes, max_len=args.max_len, timeout=args.timeout
        )
        print(
            f"  {name}: {r.inputs} inputs, {len(r.crashes)} crashes{' (worker failed)' if r.error else ''}",
            flush=True,
        )
        return r

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(one, chosen))
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    failed = not all(r.ok for r in results) or (args.strict and any(r.known for r in results))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
