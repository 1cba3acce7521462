"""The kill switch: one nftables table, applied atomically with ``nft -f -``.

Rules: the whole ruleset is one nft script, so the kernel swaps it in as a single transaction - there
is never a moment with half the rules. The script first creates the table, then deletes it, then
defines it: that replaces an old copy (a restart, a changed server address) atomically and works
when there was none. Our table is ``inet pptp_sidecar`` (IPv4 and IPv6), nothing else is touched.

What passes (everything else, IPv4 and IPv6, is dropped and counted):

- output: loopback; the tunnel interface (by name, so the rule holds across reconnects while the
  device comes and goes); TCP to the server's control port (1723); GRE (IP protocol 47) to the
  server; ``allow_subnets``; and replies (``ct direction reply``) of connections that came in
  (the HTTP port), so health probes get answers.
- input: established/related traffic; loopback; TCP from the server's control port; GRE from the
  server; new TCP connections to the HTTP port.

Lifetime (decided in :mod:`sidecar.supervisor`): installed before the first tunnel comes up, kept
through every reconnect, removed when the process stops cleanly (exit 0). On a failure exit it stays
(fail closed: nothing leaks while the sidecar restarts); the next start replaces it atomically.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

TABLE = "pptp_sidecar"
FAMILY = "inet"


class FirewallError(OSError):
    """nft is missing or refused the ruleset; the message carries nft's answer and the fix."""


@dataclass(frozen=True)
class KillSwitchRules:
    server: IPv4Address
    interface: str
    control_port: int = 1723
    allow_subnets: tuple[IPv4Network, ...] = ()
    http_port: int | None = None
    extra_interfaces: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        for name in (self.interface, *self.extra_interfaces):
            if not name or len(name) > 15 or any(c in name for c in '"\\ \n\t;{}'):
                raise ValueError(f"bad interface name {name!r} for the kill switch")
        if not 0 < self.control_port < 65536:
            raise ValueError(f"bad control port {self.control_port}")
        if self.http_port is not None and not 0 < self.http_port < 65536:
            raise ValueError(f"bad HTTP port {self.http_port}")


def render(rules: KillSwitchRules) -> str:
    """The nft script (pure: unit tests read it; :func:`apply` feeds it to ``nft -f -``)."""
    s = rules.server
    ifaces = ", ".join(f'"{name}"' for name in (rules.interface, *rules.extra_interfaces))
    out = [
        "# pptp-sidecar kill switch (one transaction)",
        f"table {FAMILY} {TABLE}",
        f"delete table {FAMILY} {TABLE}",
        f"table {FAMILY} {TABLE} {{",
        "  chain output {",
        "    type filter hook output priority filter; policy drop;",
        '    oifname "lo" accept',
        f"    oifname {{ {ifaces} }} accept",
        f"    ip daddr {s} tcp dport {rules.control_port} accept",
        f"    ip daddr {s} ip protocol gre accept",
    ]
    if rules.allow_subnets:
        out.append(f"    ip daddr {{ {', '.join(str(n) for n in rules.allow_subnets)} }} accept")
    out += [
        "    ct state established,related ct direction reply accept",
        '    counter drop comment "kill switch: output blocked"',
        "  }",
        "  chain input {",
        "    type filter hook input priority filter; policy drop;",
        "    ct state established,related accept",
        '    iifname "lo" accept',
        f"    ip saddr {s} tcp sport {rules.control_port} accept",
        f"    ip saddr {s} ip protocol gre accept",
    ]
    if rules.http_port is not None:
        out.append(f"    tcp dport {rules.http_port} accept")
    out += [
        '    counter drop comment "kill switch: input blocked"',
        "  }",
        "}",
    ]
    return "\n".join(out) + "\n"


def _nft(script: str, *, nft: str = "nft") -> None:
    binary = shutil.which(nft)
    if binary is None:
        raise FirewallError(
            f"the kill switch needs `{nft}` (apt-get install nftables), or turn it off with --no-kill-switch"
        )
    proc = subprocess.run([binary, "-f", "-"], input=script, capture_output=True, text=True, timeout=10)
    if proc.returncode != 0:
        hint = ""
        if "Operation not permitted" in proc.stderr:
            hint = "; the kill switch needs CAP_NET_ADMIN (container: --cap-add NET_ADMIN)"
        raise FirewallError(f"nft refused the kill switch ruleset: {proc.stderr.strip()}{hint}")


def apply(rules: KillSwitchRules) -> None:
    """Install (or atomically replace) the kill switch."""
    _nft(render(rules))


def remove() -> None:
    """Remove our table (no-op when absent)."""
    _nft(f"table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n")


def is_installed() -> bool:
    binary = shutil.which("nft")
    if binary is None:
        return False
    proc = subprocess.run(
        [binary, "list", "table", FAMILY, TABLE], capture_output=True, text=True, timeout=10
    )
    return proc.returncode == 0


def blocked_counts(lines: Sequence[str] | None = None) -> dict[str, int]:
    """Packets the kill switch dropped so far: ``{"output": n, "input": n}`` (for metrics)."""
    if lines is None:
        binary = shutil.which("nft")
        if binary is None:
            return {}
        proc = subprocess.run([binary, "list", "table", FAMILY, TABLE], capture_output=True, text=True,
                              timeout=10)  # fmt: skip
        if proc.returncode != 0:
            return {}
        lines = proc.stdout.splitlines()
    counts: dict[str, int] = {}
    for line in lines:
        if "kill switch:" in line and "packets" in line:
            words = line.split()
            direction = "output" if "output blocked" in line else "input"
            counts[direction] = int(words[words.index("packets") + 1])
    return counts
