"""``sidecar demo``: runs end to end, reports what it promises, and leaves nothing behind."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PPTP_")}
    env["PYTHONPATH"] = str(REPO)
    return env


def test_demo_reports_and_cleans_up() -> None:
    pytest.importorskip("sidecar.supervisor", reason="the client has not landed yet")
    proc = subprocess.run(
        [sys.executable, "-m", "sidecar", "demo"],
        capture_output=True,
        text=True,
        timeout=90,
        env=_env(),
        cwd=REPO,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    for phase in ("control connected", "lcp up", "authenticated", "mppe on", "ipcp up"):
        assert phase in out, phase
    assert re.search(r"address 10\.77\.0\.\d+ +peer 10\.77\.0\.1 +DNS 10\.77\.0\.53", out)
    assert re.search(r"ping 10\.78\.\d+\.2: ok +rtt min/avg/max/mdev [\d.]+/", out)
    assert out.count("content identical") == 2
    # reordering: none without --test-reorder, absorbed (nothing lost) with it
    buffered = re.search(r"reorder_buffered +(\d+) +(\d+)", out)
    lost = re.search(r"reorder_lost +(\d+) +(\d+)", out)
    assert buffered and lost
    assert int(buffered.group(1)) == 0 and int(buffered.group(2)) > 0
    assert lost.groups() == ("0", "0")
    assert "ping: blocked   TCP: blocked" in out
    made = set(re.findall(r"\b(sd(?:app|srv|lan)\d+)\b", out))
    assert len(made) == 3, made
    assert not made & _netns()  # every namespace it made is gone


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is not installed")
def test_demo_refuses_without_root() -> None:
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         sys.executable, "-m", "sidecar", "demo"],
        capture_output=True, text=True, timeout=60, env=_env(), cwd="/",
    )  # fmt: skip
    assert proc.returncode == 1
    assert "needs root" in proc.stderr
