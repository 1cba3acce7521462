"""DNS: point resolv.conf at the servers the PPTP server handed out (IPCP, RFC 1877), and restore it.

Rules: the file is rewritten *in place* (truncate + write), never replaced by rename: in containers
``/etc/resolv.conf`` is usually a bind mount, and a rename over a mount point fails (EBUSY). ``search``
and ``options`` lines of the original are kept (cluster search domains keep working for names the
VPN's DNS also knows). The original bytes are journaled before the first write, so the undo journal
restores them exactly - or removes the file if there was none.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from ipaddress import IPv4Address
from pathlib import Path

from sidecar.kernel.netconf import UndoJournal

log = logging.getLogger(__name__)

RESOLV_CONF = Path("/etc/resolv.conf")
MAXNS = 3  # glibc reads at most three nameserver lines


def render(servers: Sequence[IPv4Address], original: str = "", *, interface: str = "") -> str:
    """The new resolv.conf: our nameservers first, the original's search/options kept."""
    lines = [f"# written by pptp-sidecar for the tunnel {interface}; restored on exit".rstrip()]
    lines += [f"nameserver {server}" for server in servers[:MAXNS]]
    for line in original.splitlines():
        word = line.split(maxsplit=1)[0] if line.strip() else ""
        if word in ("search", "domain", "options"):
            lines.append(line.rstrip())
    return "\n".join(lines) + "\n"


class ResolvConf:
    def __init__(self, path: Path = RESOLV_CONF) -> None:
        self.path = Path(path)

    def apply(self, servers: Sequence[IPv4Address], journal: UndoJournal, *, interface: str = "") -> bool:
        """Write ``servers`` (journaled). False (nothing changed) when ``servers`` is empty."""
        if not servers:
            log.warning("DNS requested but the server handed out no DNS servers; %s unchanged", self.path)
            return False
        try:
            original: bytes | None = self.path.read_bytes()
        except FileNotFoundError:
            original = None
        text = render(servers, original.decode(errors="replace") if original is not None else "",
                      interface=interface)  # fmt: skip
        journal.push(f"DNS in {self.path}", lambda: self._restore(original))
        self._write(text.encode())
        return True

    def _restore(self, original: bytes | None) -> None:
        if original is None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return
        self._write(original)

    def _write(self, data: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, 0)
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
        finally:
            os.close(fd)
