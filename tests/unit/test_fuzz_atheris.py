"""The bounded atheris run: every fuzz target, coverage-guided, for a couple of seconds each (about
30-40 s in all on this machine with two targets at a time). Fails on any new crash, hang or worker
failure; bugs already reported (``fuzz/known.py``) are printed, not failed on.

Needs ``atheris`` (``pip install atheris``); skipped without it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz.targets import TARGETS

pytest.importorskip("atheris")

ROOT = Path(__file__).resolve().parents[2]
SECONDS_PER_TARGET = 2
JOBS = 2


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_atheris_every_target_briefly(tmp_path: Path) -> None:
    out = tmp_path / "fuzz.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fuzz.run",
            "--all",
            "--seconds-per-target",
            str(SECONDS_PER_TARGET),
            "--jobs",
            str(JOBS),
            "--fresh",
            "--crashes",
            str(tmp_path / "crashes"),
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )
    print(proc.stdout)
    results = json.loads(out.read_text()) if out.exists() else []
    assert {r["target"] for r in results} == set(TARGETS), proc.stdout + proc.stderr
    new = {r["target"]: r["crashes"] for r in results if r["crashes"]}
    broken = {r["target"]: r["error"] for r in results if r["error"]}
    assert not new, f"fuzzing found new bugs (inputs in {tmp_path / 'crashes'}): {new}"
    assert not broken, f"fuzz workers failed: {broken}"
    idle = [r["target"] for r in results if r["inputs"] < 100]
    assert not idle, f"targets that barely ran: {idle}"
    assert proc.returncode == 0, proc.stdout + proc.stderr
