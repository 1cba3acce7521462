"""Command line (typer). Thin: parse, validate through :mod:`sidecar.config`, hand over.

Rules: every option is read as text (or a ``--x/--no-x`` switch) and handed to
:mod:`sidecar.config`, which validates all of them at once and reports every problem, one line each,
with exit code 2, before anything touches the network. The heavy modules (supervisor, server, probe,
demo) are imported inside their command, so ``--help`` and ``healthcheck`` stay fast and work even
when one of them is missing. The password is never a flag: ``--password`` exists only to refuse it
with a pointer to ``PPTP_PASSWORD`` / ``--password-file``.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar, cast

import typer
from typer._coercion import RuntimeParam
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from sidecar import __version__, config

S = TypeVar("S")


@dataclass(frozen=True)
class _AsParsed(RuntimeParam):
    """Typer's per-parameter coercion for text, switch and repeated-text options, without pydantic.

    click's parser already yields ``str`` (a tuple of ``str`` for a repeated option) and typer skips
    the coercion of ``bool`` and missing values; :mod:`sidecar.config` checks every value. Typer 0.29
    would build a pydantic ``TypeAdapter`` per parameter of the invoked command to do the same: that
    imports pydantic's schema machinery, +9 MB of peak RSS in the long-running ``up`` and ``serve``.
    """

    def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
        return list(value) if isinstance(value, tuple) else value


_AS_PARSED = (str, bool, list[str])  # the annotations _AsParsed takes over; others keep typer's own


def _as_parsed(params: Iterable[Any]) -> None:
    for param in params:
        if isinstance(param, TyperOption | TyperArgument) and param._runtime_param is None:
            desc = param.type_descriptor
            if desc.annotation in _AS_PARSED:
                param._runtime_param = _AsParsed(
                    annotation=desc.annotation, parameter_info=desc.parameter_info
                )


class _Group(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        _as_parsed(params)
        return params


class _Command(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        _as_parsed(params)
        return params


app = typer.Typer(
    cls=_Group,
    name="sidecar",
    help="Userspace PPTP VPN client that runs as a container sidecar (no pppd, no /dev/ppp).",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)

EXIT_CONFIG = 2
PASSWORD_REFUSED = (
    "--password: the password is never accepted on the command line (it would show in ps and in "
    "shell history); set PPTP_PASSWORD, PPTP_PASSWORD_FILE or --password-file"
)


def _help(command: str, name: str) -> str:
    return config.opt_help(config.option(command, name))


def _up(name: str) -> Any:
    return typer.Option(config.option("up", name).flag, help=_help("up", name), show_default=False)


def _serve(name: str) -> Any:
    return typer.Option(config.option("serve", name).flag, help=_help("serve", name), show_default=False)


def _probe(name: str) -> Any:
    return typer.Option(config.option("probe", name).flag, help=_help("probe", name), show_default=False)


def _switch(command: str, name: str) -> Any:
    flag = config.option(command, name).flag
    return typer.Option(f"{flag}/--no-{flag[2:]}", help=_help(command, name), show_default=False)


_PASSWORD_TRAP: Any = typer.Option("--password", hidden=True, show_default=False)

Str = str | None


def _err(line: str) -> None:
    typer.echo(line, err=True)


def _configure(
    command: str,
    flags: Mapping[str, Any],
    build: Callable[[Mapping[str, Any], Mapping[str, str]], S],
    refused_password: object = None,
) -> S:
    """Warnings for unknown variables, then settings or exit 2 with every problem."""
    env = dict(os.environ)
    for warning in config.env_warnings(command, env):
        _err(f"warning: {warning}")
    problems: list[str] = []
    if refused_password is not None:
        problems.append(PASSWORD_REFUSED)
    try:
        settings = build(flags, env)
    except config.ConfigError as exc:
        problems.extend(exc.problems)
    if problems:
        for line in problems:
            _err(f"error: {line}")
        _err(f"sidecar {command}: {len(problems)} configuration problem(s); see 'sidecar {command} --help'")
        raise typer.Exit(EXIT_CONFIG)
    return settings


def _logging(level: str, fmt: str, secrets: tuple[Any, ...] = ()) -> None:
    from sidecar.observe.log import setup_logging

    setup_logging(level, fmt, secrets=secrets)


def _entry(module: str, name: str, what: str) -> Callable[..., int]:
    """Import an entry point lazily (``--help`` must work without the heavy modules)."""
    try:
        func = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        _err(f"sidecar: {what} is not available in this build ({exc})")
        raise typer.Exit(1) from None
    return cast("Callable[..., int]", func)


@app.callback()
def _root() -> None:
    """Userspace PPTP VPN client that runs as a container sidecar."""


@app.command(cls=_Command)
def up(
    server: Annotated[Str, _up("server")] = None,
    user: Annotated[Str, _up("user")] = None,
    password_file: Annotated[Str, _up("password_file")] = None,
    auth: Annotated[Str, _up("auth")] = None,
    mppe: Annotated[Str, _up("mppe")] = None,
    mppe_stateful: Annotated[bool | None, _switch("up", "mppe_stateful")] = None,
    mppe_bits: Annotated[Str, _up("mppe_bits")] = None,
    routes: Annotated[Str, _up("routes")] = None,
    dns: Annotated[bool | None, _switch("up", "dns")] = None,
    mtu: Annotated[Str, _up("mtu")] = None,
    interface: Annotated[Str, _up("interface")] = None,
    tun_offload: Annotated[Str, _up("tun_offload")] = None,
    tcp_ack_filter: Annotated[Str, _up("tcp_ack_filter")] = None,
    gre_window: Annotated[Str, _up("gre_window")] = None,
    reorder_window: Annotated[Str, _up("reorder_window")] = None,
    reorder_timeout: Annotated[Str, _up("reorder_timeout")] = None,
    echo_interval: Annotated[Str, _up("echo_interval")] = None,
    echo_timeout: Annotated[Str, _up("echo_timeout")] = None,
    lcp_echo_interval: Annotated[Str, _up("lcp_echo_interval")] = None,
    lcp_echo_failures: Annotated[Str, _up("lcp_echo_failures")] = None,
    kill_switch: Annotated[bool | None, _switch("up", "kill_switch")] = None,
    allow_subnet: Annotated[list[str] | None, _up("allow_subnet")] = None,
    http: Annotated[Str, _up("http")] = None,
    pcap: Annotated[Str, _up("pcap")] = None,
    pcap_auth_hashes: Annotated[bool | None, _switch("up", "pcap_auth_hashes")] = None,
    max_auth_failures: Annotated[Str, _up("max_auth_failures")] = None,
    backoff_initial: Annotated[Str, _up("backoff_initial")] = None,
    backoff_max: Annotated[Str, _up("backoff_max")] = None,
    connect_timeout: Annotated[Str, _up("connect_timeout")] = None,
    log_level: Annotated[Str, _up("log_level")] = None,
    log_format: Annotated[Str, _up("log_format")] = None,
    password: Annotated[Str, _PASSWORD_TRAP] = None,
) -> None:
    """Connect to a PPTP server and keep the tunnel up (reconnecting with backoff)."""
    flags = dict(locals())
    flags.pop("password")
    settings = _configure("up", flags, config.build_up_settings, password)
    _logging(settings.log_level, settings.log_format, (settings.password,))
    run = _entry("sidecar.supervisor", "run", "the client supervisor")
    raise typer.Exit(run(settings))


@app.command(cls=_Command)
def serve(
    listen: Annotated[Str, _serve("listen")] = None,
    local_ip: Annotated[Str, _serve("local_ip")] = None,
    pool: Annotated[Str, _serve("pool")] = None,
    secrets: Annotated[Str, _serve("secrets")] = None,
    auth: Annotated[Str, _serve("auth")] = None,
    mppe: Annotated[Str, _serve("mppe")] = None,
    mppe_stateful: Annotated[bool | None, _switch("serve", "mppe_stateful")] = None,
    mppe_bits: Annotated[Str, _serve("mppe_bits")] = None,
    dns: Annotated[Str, _serve("dns")] = None,
    interface: Annotated[Str, _serve("interface")] = None,
    tun_offload: Annotated[Str, _serve("tun_offload")] = None,
    tcp_ack_filter: Annotated[Str, _serve("tcp_ack_filter")] = None,
    gre_window: Annotated[Str, _serve("gre_window")] = None,
    echo_interval: Annotated[Str, _serve("echo_interval")] = None,
    echo_timeout: Annotated[Str, _serve("echo_timeout")] = None,
    lcp_echo_interval: Annotated[Str, _serve("lcp_echo_interval")] = None,
    lcp_echo_failures: Annotated[Str, _serve("lcp_echo_failures")] = None,
    test_reorder: Annotated[Str, _serve("test_reorder")] = None,
    max_clients: Annotated[Str, _serve("max_clients")] = None,
    http: Annotated[Str, _serve("http")] = None,
    pcap: Annotated[Str, _serve("pcap")] = None,
    log_level: Annotated[Str, _serve("log_level")] = None,
    log_format: Annotated[Str, _serve("log_format")] = None,
) -> None:
    """Run the embedded PPTP server (demo, tests, a small LAN)."""
    settings = _configure("serve", dict(locals()), config.build_serve_settings)
    _logging(settings.log_level, settings.log_format)
    run = _entry("sidecar.server", "run", "the embedded server")
    raise typer.Exit(run(settings))


@app.command(cls=_Command)
def probe(
    server: Annotated[Str, _probe("server")] = None,
    user: Annotated[Str, _probe("user")] = None,
    password_file: Annotated[Str, _probe("password_file")] = None,
    auth: Annotated[Str, _probe("auth")] = None,
    timeout: Annotated[Str, _probe("timeout")] = None,
    log_level: Annotated[Str, _probe("log_level")] = None,
    log_format: Annotated[Str, _probe("log_format")] = None,
    password: Annotated[Str, _PASSWORD_TRAP] = None,
) -> None:
    """Check a server: connect, authenticate, report what it offers, disconnect (no routes changed)."""
    flags = dict(locals())
    flags.pop("password")
    settings = _configure("probe", flags, config.build_probe_settings, password)
    _logging(settings.log_level, settings.log_format, (settings.password,))
    run_probe = _entry("sidecar.probe", "run_probe", "the probe")
    raise typer.Exit(run_probe(settings))


@app.command(cls=_Command)
def demo(
    keep_going: Annotated[
        bool, typer.Option("--keep-going", help="Keep the demo tunnel up until interrupted")
    ] = False,
) -> None:
    """Start the embedded server and a client in network namespaces and show the tunnel working."""
    run_demo = _entry("sidecar.demo", "run_demo", "the demo")
    raise typer.Exit(run_demo(keep_going=keep_going))


_HTTP_OPT: Any = typer.Option(
    "--http", help=config.opt_help(config.HTTP_CLIENT_OPTIONS[0]), show_default=False
)
_TIMEOUT_OPT: Any = typer.Option("--timeout", help="Seconds to wait for the answer", min=0.1, max=60.0)


def _url(target: tuple[str, int], path: str) -> str:
    host, port = target
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}{path}"


def _target(http: str | None) -> tuple[str, int]:
    target = _configure("healthcheck", {"http": http}, config.http_target)
    if target is None:
        _err("error: the health listener is off (--http/PPTP_HTTP=off); nothing to ask")
        raise typer.Exit(1)
    return target


def _get(url: str, timeout: float) -> tuple[int, bytes]:
    """(status, body); raises OSError (URLError) when nothing answers."""
    import urllib.error  # here, not at the top: `up`/`serve` never need it (~2 MB of RSS)
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@app.command(cls=_Command)
def healthcheck(
    ready: Annotated[
        bool, typer.Option("--ready", help="Ask /readyz (tunnel up) instead of /healthz (process alive)")
    ] = False,
    http: Annotated[Str, _HTTP_OPT] = None,
    timeout: Annotated[float, _TIMEOUT_OPT] = 3.0,
) -> None:
    """Exit 0 when the running sidecar is healthy (or --ready: its tunnel is up), else 1."""
    url = _url(_target(http), "/readyz" if ready else "/healthz")
    try:
        code, body = _get(url, timeout)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        _err(f"unhealthy: no answer from {url}: {reason}")
        raise typer.Exit(1) from None
    text = body.decode("utf-8", "replace").strip()
    if code == 200:
        typer.echo(text or "ok")
        raise typer.Exit(0)
    _err(f"unhealthy: {url} answered {code}: {text}")
    raise typer.Exit(1)


def format_status(snap: Mapping[str, Any]) -> str:
    """Human-readable summary of a /status document."""
    lines = [f"state:        {snap.get('state')} (for {snap.get('state_age_s')} s)"]
    if snap.get("server"):
        lines.append(f"server:       {snap['server']}")
    if snap.get("interface"):
        lines.append(f"interface:    {snap['interface']}")
    if snap.get("local_ip"):
        lines.append(f"address:      {snap['local_ip']} (peer {snap.get('peer_ip')})")
    if snap.get("dns"):
        lines.append(f"dns:          {', '.join(snap['dns'])}")
    if snap.get("mtu"):
        lines.append(f"mtu:          {snap['mtu']}")
    if snap.get("encryption"):
        lines.append(f"encryption:   {snap['encryption']}")
    if snap.get("auth_method"):
        lines.append(f"auth:         {snap['auth_method']}")
    if snap.get("uptime_s") is not None:
        lines.append(f"up for:       {snap['uptime_s']} s")
    if snap.get("echo_rtt_s") is not None:
        lines.append(f"echo rtt:     {snap['echo_rtt_s'] * 1000:.1f} ms")
    lines.append(f"alive:        {'yes' if snap.get('alive') else 'no: ' + str(snap.get('alive_reason'))}")
    lines.append(f"ready:        {'yes' if snap.get('ready') else 'no: ' + str(snap.get('ready_reason'))}")
    lines.append(f"reconnects:   {snap.get('reconnects', 0)}   auth failures: {snap.get('auth_failures', 0)}")
    if snap.get("last_error"):
        lines.append(f"last error:   {snap['last_error']}")
    counters = snap.get("counters") or {}
    if counters:
        traffic = " ".join(
            f"{k}={counters.get(k, 0)}" for k in ("packets_in", "packets_out", "bytes_in", "bytes_out")
        )
        lines.append(f"traffic:      {traffic}")
        others = {
            k: v
            for k, v in counters.items()
            if k not in ("packets_in", "packets_out", "bytes_in", "bytes_out") and v
        }
        if others:
            lines.append("counters:     " + " ".join(f"{k}={v}" for k, v in sorted(others.items())))
    timeline = snap.get("timeline") or []
    if timeline:
        lines.append("timeline:")
        for entry in timeline[-15:]:
            detail = f"  {entry['detail']}" if entry.get("detail") else ""
            lines.append(f"  +{entry['at_s']:9.3f}s  {entry['phase']}{detail}")
    return "\n".join(lines)


@app.command(cls=_Command)
def status(
    http: Annotated[Str, _HTTP_OPT] = None,
    timeout: Annotated[float, _TIMEOUT_OPT] = 3.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON document")] = False,
) -> None:
    """Show the running sidecar's state (from its /status endpoint)."""
    url = _url(_target(http), "/status")
    try:
        code, body = _get(url, timeout)
        snap = json.loads(body)
    except (OSError, ValueError) as exc:
        _err(f"no status from {url}: {getattr(exc, 'reason', exc)}")
        raise typer.Exit(1) from None
    if code != 200 or not isinstance(snap, dict):
        _err(f"no status from {url}: HTTP {code}")
        raise typer.Exit(1)
    typer.echo(json.dumps(snap, indent=2, sort_keys=True) if as_json else format_status(snap))


@app.command(cls=_Command)
def version() -> None:
    """Print the version and exit."""
    typer.echo(f"pptp-sidecar {__version__}")


def main() -> None:
    app(prog_name="sidecar")


if __name__ == "__main__":  # pragma: no cover
    main()
    sys.exit(0)
