"""sidecar.cli: commands, exit codes, configuration errors, the password rule, healthcheck/status."""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from typer.testing import CliRunner

import sidecar.server
from sidecar import __version__
from sidecar.cli import app
from sidecar.config import ProbeSettings, ServeSettings, UpSettings
from sidecar.observe.http import serve_http
from sidecar.observe.log import reset_logging
from sidecar.state import StatusBoard

PASSWORD = "hunter2-Very-Secret"
runner = CliRunner()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("PPTP_"):
            monkeypatch.delenv(name)
    yield
    reset_logging()  # `up` installed a handler on CliRunner's (now closed) stderr


@pytest.fixture
def fake_supervisor(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Stands in for sidecar.supervisor (another engineer's module): records what the CLI hands over."""
    calls: list[Any] = []
    module = types.ModuleType("sidecar.supervisor")

    def run(settings: UpSettings) -> int:
        calls.append(settings)
        return 7

    module.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sidecar.supervisor", module)
    return calls


def invoke(args: list[str], env: dict[str, str] | None = None) -> Any:
    return runner.invoke(app, args, env=env or {}, catch_exceptions=False)


GOOD_ENV = {"PPTP_SERVER": "vpn.example.com", "PPTP_USER": "alice", "PPTP_PASSWORD": PASSWORD}


# -- basics ---------------------------------------------------------------------------------------------
def test_version_command_prints_the_package_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sidecar", "version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"pptp-sidecar {__version__}"


def test_help_lists_commands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sidecar", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("up", "serve", "probe", "demo", "healthcheck", "status", "version"):
        assert command in out.stdout


def test_up_help_works_without_importing_the_supervisor() -> None:
    code = (
        "import sys; from sidecar.cli import app; from typer.testing import CliRunner; "
        "r = CliRunner().invoke(app, ['up', '--help']); "
        "print(r.exit_code, 'sidecar.supervisor' in sys.modules, '--password-file' in r.output)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "False", "True"]


# -- up: configuration ----------------------------------------------------------------------------------
def test_up_hands_validated_settings_to_the_supervisor(fake_supervisor: list[Any]) -> None:
    result = invoke(["up", "--mtu", "1400", "--allow-subnet", "10.0.0.0/8", "--no-dns"], GOOD_ENV)
    assert result.exit_code == 7  # the supervisor's exit code
    [settings] = fake_supervisor
    assert isinstance(settings, UpSettings)
    assert settings.mtu == 1400 and settings.dns is False and str(settings.allow_subnets[0]) == "10.0.0.0/8"
    assert settings.password.reveal() == PASSWORD


def test_invalid_configuration_exits_2_with_one_line_per_problem(fake_supervisor: list[Any]) -> None:
    env = {**GOOD_ENV, "PPTP_MTU": "9000", "PPTP_AUTH": "kerberos"}
    result = invoke(["up", "--interface", "x" * 20], env)
    assert result.exit_code == 2
    assert fake_supervisor == []  # nothing was started
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        "error: PPTP_AUTH='kerberos': expected a comma-separated list of mschapv2, mschap, chap, pap",
        "error: PPTP_MTU='9000': expected an integer between 576 and 1500 (or 'auto')",
        f"error: --interface={'x' * 20!r}: expected an interface name of 1-15 letters, digits, "
        "'-', '_' or '.'",
    ]
    assert "3 configuration problem(s)" in result.stderr
    assert PASSWORD not in result.output


def test_password_flag_is_refused_without_echoing_it(fake_supervisor: list[Any]) -> None:
    for args in (["up", "--password", PASSWORD], ["up", f"--password={PASSWORD}"]):
        result = invoke(args, GOOD_ENV)
        assert result.exit_code == 2
        assert fake_supervisor == []
        assert "never accepted on the command line" in result.stderr
        assert PASSWORD not in result.output
    # the refused flag is not even advertised
    assert "--password " not in invoke(["up", "--help"]).output.replace("--password-file", "")


def test_password_file_flag(tmp_path: Path, fake_supervisor: list[Any]) -> None:
    f = tmp_path / "pw"
    f.write_text(PASSWORD + "\n")
    env = {k: v for k, v in GOOD_ENV.items() if k != "PPTP_PASSWORD"}
    assert invoke(["up", "--password-file", str(f)], env).exit_code == 7
    assert fake_supervisor[0].password.reveal() == PASSWORD


def test_unknown_variable_warns_and_continues(fake_supervisor: list[Any]) -> None:
    result = invoke(["up"], {**GOOD_ENV, "PPTP_REORDER_WINDOWS": "8"})
    assert result.exit_code == 7
    assert (
        "warning: unknown environment variable PPTP_REORDER_WINDOWS ignored; "
        "did you mean PPTP_REORDER_WINDOW?" in result.stderr
    )


def test_password_never_in_the_process_command_line(tmp_path: Path) -> None:
    """What `ps` shows for a running `sidecar up` (password from a file) holds no password."""
    f = tmp_path / "pw"
    f.write_text(PASSWORD)
    marker = tmp_path / "reached"
    code = (
        "import sys, time, types, pathlib\n"
        "m = types.ModuleType('sidecar.supervisor')\n"
        "def run(s):\n"
        f"    tmp = pathlib.Path({str(marker)!r} + '.tmp'); tmp.write_text(s.user)\n"
        f"    tmp.rename({str(marker)!r})\n    time.sleep(30)\n    return 0\n"
        "m.run = run\nsys.modules['sidecar.supervisor'] = m\n"
        "from sidecar.cli import main\nsys.argv = ['sidecar'] + sys.argv[1:]\nmain()\n"
    )
    env = {**os.environ, "PPTP_SERVER": "vpn.example.com", "PPTP_USER": "alice", "PPTP_PASSWORD_FILE": str(f)}
    proc = subprocess.Popen([sys.executable, "-c", code, "up", "--mtu", "1400"], env=env)
    try:
        deadline = time.monotonic() + 20
        while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert marker.read_text() == "alice"
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes()
        assert b"1400" in cmdline and PASSWORD.encode() not in cmdline and PASSWORD.encode() not in environ
    finally:
        proc.kill()
        proc.wait()


# -- serve, probe, demo -----------------------------------------------------------------------------------
def test_serve_hands_settings_to_the_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = tmp_path / "chap-secrets"
    secrets.write_text("alice * pw *\n")
    calls: list[ServeSettings] = []
    monkeypatch.setattr(sidecar.server, "run", lambda s: calls.append(s) or 0)
    result = invoke(["serve", "--secrets", str(secrets), "--pool", "10.1.0.10-20", "--local-ip", "10.1.0.1"])
    assert result.exit_code == 0, result.output
    assert calls[0].secrets == secrets and len(calls[0].pool) == 11


def test_serve_invalid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sidecar.server, "run", lambda s: pytest.fail("must not start"))
    result = invoke(["serve", "--test-reorder", "1.5"])
    assert result.exit_code == 2
    assert "error: --test-reorder='1.5': expected a fraction between 0 and 1" in result.stderr
    assert "error: --secrets / PPTP_SECRETS: required" in result.stderr


def test_probe_and_demo_call_their_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    probe = types.ModuleType("sidecar.probe")
    probe.run_probe = lambda s: seen.setdefault("probe", s) and 3  # type: ignore[attr-defined]
    demo = types.ModuleType("sidecar.demo")
    demo.run_demo = lambda keep_going=False: seen.setdefault("demo", keep_going) and 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sidecar.probe", probe)
    monkeypatch.setitem(sys.modules, "sidecar.demo", demo)
    assert invoke(["probe", "--server", "1.2.3.4", "--timeout", "2"], GOOD_ENV).exit_code == 3
    assert isinstance(seen["probe"], ProbeSettings) and seen["probe"].timeout == 2
    assert seen["probe"].server == "1.2.3.4"
    assert invoke(["demo", "--keep-going"]).exit_code == 0 and seen["demo"] is True
    result = invoke(["probe", "--password", PASSWORD], GOOD_ENV)
    assert result.exit_code == 2 and PASSWORD not in result.output


def test_missing_entry_module_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sidecar.demo", None)  # import raises ImportError
    result = invoke(["demo"])
    assert result.exit_code == 1 and "the demo is not available in this build" in result.stderr


# -- healthcheck and status against a live listener ------------------------------------------------------
@pytest.fixture
def live() -> Iterator[tuple[StatusBoard, int]]:
    """serve_http running in a trio loop on a background thread."""
    board = StatusBoard(server="vpn.example", interface="pptp0", echo_interval=10.0)
    started: queue.Queue[tuple[int, trio.lowlevel.TrioToken, trio.CancelScope]] = queue.Queue()

    async def main() -> None:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                port = await nursery.start(serve_http, "127.0.0.1", 0, board)
                started.put((port, trio.lowlevel.current_trio_token(), scope))

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    port, token, scope = started.get(timeout=10)
    try:
        yield board, port
    finally:
        trio.from_thread.run_sync(scope.cancel, trio_token=token)
        thread.join(timeout=10)


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_healthcheck_exit_codes(live: tuple[StatusBoard, int]) -> None:
    board, port = live
    target = f"127.0.0.1:{port}"
    assert invoke(["healthcheck", "--http", target]).exit_code == 0
    result = invoke(["healthcheck", "--ready", "--http", target])
    assert result.exit_code == 1 and "answered 503: not ready: tunnel is starting" in result.stderr
    board.link_up(local_ip="10.0.0.2", peer_ip="10.0.0.1")
    assert invoke(["healthcheck", "--ready"], {"PPTP_HTTP": target}).exit_code == 0


def test_healthcheck_as_a_process(live: tuple[StatusBoard, int]) -> None:
    """What Docker's HEALTHCHECK and a Kubernetes exec probe run."""
    _, port = live
    env = {**os.environ, "PPTP_HTTP": f"127.0.0.1:{port}"}
    ok = subprocess.run(
        [sys.executable, "-m", "sidecar", "healthcheck"], env=env, capture_output=True, text=True
    )
    assert ok.returncode == 0 and ok.stdout.strip() == "ok"
    env["PPTP_HTTP"] = f"127.0.0.1:{dead_port()}"
    bad = subprocess.run(
        [sys.executable, "-m", "sidecar", "healthcheck"], env=env, capture_output=True, text=True
    )
    assert bad.returncode == 1 and "unhealthy: no answer from http://127.0.0.1:" in bad.stderr


def test_healthcheck_dead_port_and_off() -> None:
    assert invoke(["healthcheck", "--http", f"127.0.0.1:{dead_port()}", "--timeout", "1"]).exit_code == 1
    result = invoke(["healthcheck", "--http", "off"])
    assert result.exit_code == 1 and "the health listener is off" in result.stderr
    result = invoke(["healthcheck", "--http", "nonsense"])
    assert result.exit_code == 2 and "error: --http='nonsense'" in result.stderr


def test_status_human_and_json(live: tuple[StatusBoard, int]) -> None:
    board, port = live
    board.link_up(
        local_ip="10.0.0.2", peer_ip="10.0.0.1", dns=["10.0.0.53"], mtu=1400, encryption="mppe-128 stateless"
    )
    board.publish_counters({"bytes_in": 99, "gre_rx": 3})
    board.record_echo(0.0123)
    result = invoke(["status", "--http", f"127.0.0.1:{port}"])
    assert result.exit_code == 0
    out = result.stdout
    assert "state:        up" in out and "address:      10.0.0.2 (peer 10.0.0.1)" in out
    assert "encryption:   mppe-128 stateless" in out and "echo rtt:     12.3 ms" in out
    assert "bytes_in=99" in out and "gre_rx=3" in out and "ready:        yes" in out
    import json

    doc = json.loads(invoke(["status", "--json", "--http", f"127.0.0.1:{port}"]).stdout)
    assert doc["state"] == "up" and doc["counters"]["gre_rx"] == 3


def test_status_dead_port() -> None:
    result = invoke(["status", "--http", f"127.0.0.1:{dead_port()}"])
    assert result.exit_code == 1 and "no status from" in result.stderr
