"""Liveness and readiness verdicts for the HTTP endpoints and the ``healthcheck`` command.

Rules: the verdicts live in :class:`~sidecar.state.StatusBoard` (``alive()``/``ready()``); this module
only turns them into HTTP answers. ``/healthz`` = the process and its supervisor are alive (a recent
heartbeat, not given up). ``/readyz`` = the tunnel is up and the peer answered an LCP echo (or the link
came up) within three echo intervals.
"""

from __future__ import annotations

from sidecar.state import StatusBoard

OK = 200
UNAVAILABLE = 503


def liveness(board: StatusBoard) -> tuple[int, str]:
    ok, why = board.alive()
    return (OK, "ok\n") if ok else (UNAVAILABLE, f"not alive: {why}\n")


def readiness(board: StatusBoard) -> tuple[int, str]:
    ok, why = board.ready()
    return (OK, "ok\n") if ok else (UNAVAILABLE, f"not ready: {why}\n")
