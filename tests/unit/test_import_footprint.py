"""What a fresh ``sidecar up`` / ``sidecar serve`` has imported when its data path starts.

Each test runs the real CLI in a fresh interpreter with real flags; only the long-running entry
point (``supervisor.run`` / ``server.run``) is replaced by one that reports ``sys.modules`` and
exits. Modules imported there stay for the life of the process and count in its peak RSS
(``docs/perf.md``), so the heavy ones must only come with the option that needs them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# never on the data path without the option that needs them (or never at all)
HEAVY = (
    "pydantic",  # typer's TypeAdapters: cli.py coerces text/switch options itself
    "scapy",  # --pcap only
    "prometheus_client",  # --http only
    "urllib.request",  # healthcheck/status only
    "pyroute2.ndb",  # pyroute2's package __init__ (netconf.py imports IPRoute without it)
    "sqlite3",  # the same
)

_SCRIPT = """
import json, sys
for name in {preload!r}:
    __import__(name)
entry = sys.modules[{module!r}]

def report(settings):
    print(json.dumps(sorted(name for name in {heavy!r} if name in sys.modules)))
    return 0

setattr(entry, {func!r}, report)
from sidecar.cli import main
sys.argv = ["sidecar", *{argv!r}]
main()
"""


def _heavy_loaded(
    module: str, func: str, argv: list[str], env: dict[str, str], preload: list[str]
) -> list[str]:
    script = _SCRIPT.format(preload=[*preload, module], module=module, func=func, heavy=HEAVY, argv=argv)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PPTP_")}
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**clean, **env, "PYTHONPATH": str(REPO)},
        cwd=str(REPO),
        timeout=60,
        check=True,
    )
    loaded: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return loaded


def test_up_data_path_imports_nothing_heavy(tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("not-a-real-password")
    argv = ["up", "--server", "192.0.2.1", "--user", "alice", "--password-file", str(password)]
    argv += ["--http", "off", "--no-dns", "--no-kill-switch", "--routes", "10.77.0.0/24"]
    assert _heavy_loaded("sidecar.supervisor", "run", argv, {}, []) == []


def test_serve_data_path_imports_nothing_heavy(tmp_path: Path) -> None:
    secrets = tmp_path / "chap-secrets"
    secrets.write_text('alice * "not-a-real-password" *\n')
    secrets.chmod(0o600)
    argv = ["serve", "--local-ip", "10.77.0.1", "--pool", "10.77.0.10-10.77.0.20", "--http", "off"]
    # what sidecar.server.main imports inside serve() before its loops start
    preload = [
        "sidecar.kernel.gre_socket",
        "sidecar.kernel.tun",
        "sidecar.kernel.netconf",
        "sidecar.server.wiring",
    ]
    assert _heavy_loaded("sidecar.server", "run", argv, {"PPTP_SECRETS": str(secrets)}, preload) == []


def test_netconf_queries_leave_pyroute2_package_init_out() -> None:
    """IPRoute at work (read-only queries on loopback) does not pull the package ``__init__`` in."""
    script = (
        "import json, sys\n"
        "from ipaddress import IPv4Address\n"
        "from sidecar.kernel.netconf import NetConf\n"
        "with NetConf() as netconf:\n"
        "    route = netconf.route_to(IPv4Address('127.0.0.1'))\n"
        "    assert route.ifname == 'lo' and netconf.ifindex('lo') == route.oif, route\n"
        f"print(json.dumps(sorted(name for name in {HEAVY!r} if name in sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
        check=True,
    )
    assert json.loads(out.stdout) == []
