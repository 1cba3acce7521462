"""The embedded PPTP server (``sidecar serve``): the client's protocol machines in the server role.

Modules: :mod:`.secrets` (chap-secrets), :mod:`.pool` (addresses), :mod:`.demux` (GRE by source and
call ID), :mod:`.misorder` (``--test-reorder``), :mod:`.ipcheck` (anti-spoofing), :mod:`.wiring`
(one client's machines), :mod:`.session` (one client), :mod:`.main` (listener, shared sockets,
shutdown). Entry point: :func:`run`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sidecar.config import ServeSettings


def run(settings: ServeSettings) -> int:
    """``sidecar serve``: serve until SIGTERM/SIGINT; returns the exit code."""
    from sidecar.server.main import run as _run

    return _run(settings)


__all__ = ["run"]
