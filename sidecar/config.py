"""Settings: one frozen object per command, built from flags, ``PPTP_*`` variables and secret files.

Rules: this module turns raw text into validated values and nothing else. It does not touch the
network; it reads only the files it is pointed at (password file, secrets file). Every problem is
collected and reported together, one line each, in the form ``NAME='value': what is expected``
(``NAME`` is the flag or the variable the value came from). A secret's value never appears in a
message: a password problem names its source only.

Where a value comes from, first match wins:

1. the command-line flag (``--mtu 1400``);
2. the environment variable (``PPTP_MTU=1400``);
3. for secrets, ``PPTP_<NAME>_FILE`` (``--password-file`` is the flag form); setting both
   ``PPTP_PASSWORD`` and ``PPTP_PASSWORD_FILE`` is an error, since it is unclear which one is meant;
4. the default.

The password is never a command-line flag: it would show in ``ps`` and in shell history.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, ip_address
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from sidecar.proto.reorder import DEFAULT_REORDER_TIMEOUT, DEFAULT_REORDER_WINDOW
from sidecar.proto.secret import Secret

if TYPE_CHECKING:
    from sidecar.proto.ppp.auth import AuthMethod
    from sidecar.proto.ppp.mppe import MppePolicy

ENV_PREFIX = "PPTP_"
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
AUTH_NAMES = ("mschapv2", "mschap", "chap", "pap")
MPPE_NAMES = ("require", "optional", "refuse")
TUN_OFFLOAD_NAMES = ("auto", "off")
MPPE_BITS = (128, 56, 40)
PPTP_PORT = 1723
# Our Packet Receive Window Size (RFC 2637 §4.2): the peer's GRE packets in flight before our ack.
# The server announces 256: 64 capped an upload at 64 x 1456 bytes per round trip of the two
# processes, and 256 measured +20 % TCP (docs/perf.md). The client announces pptpd's 64: pptpd's
# pptpctrl, a single-threaded userspace relay, overflowed its own raw socket (our packets to it)
# in 2 of 6 interop runs when it could send us 256, and in none of 14 at 64. The GRE socket's 4 MB
# buffer holds 2048.
DEFAULT_GRE_WINDOW_UP = 64
DEFAULT_GRE_WINDOW_SERVE = 256
MAX_GRE_WINDOW = 2048
DEFAULT_HTTP = ("127.0.0.1", 9101)
MAX_SECRET_FILE = 64 * 1024

DEFAULT_LOCAL_IP = IPv4Address("192.168.77.1")
DEFAULT_POOL: tuple[IPv4Address, ...] = tuple(IPv4Address(f"192.168.77.{i}") for i in range(10, 100))
DEFAULT_ROUTES: Literal["default"] = "default"

T = TypeVar("T")
D = TypeVar("D")


class ConfigError(Exception):
    """Invalid configuration: ``problems`` holds one line per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


# --------------------------------------------------------------------------------------------------
# The settings objects (CONTRACTS.md, "Settings, state and entry points")
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class TunnelSettings:
    """What ``up`` and ``serve`` share: authentication, MPPE, keepalives, capture and logging. Each
    subclass adds its own and sets its own defaults where the two ends differ."""

    auth: tuple[AuthMethod, ...] = ()
    mppe: MppePolicy | None = None
    mppe_stateful: bool = False
    mppe_key_bits: frozenset[int] = frozenset({128})
    tun_offload: bool = False  # "auto": TUN segmentation/receive offload when the kernel has it
    echo_interval: float = 60.0  # PPTP control-connection Echo-Request after this idle time
    echo_timeout: float = 15.0
    lcp_echo_interval: float = 10.0
    lcp_echo_failures: int = 3
    pcap: Path | None = None
    log_level: str = "info"
    log_format: Literal["text", "json"] = "text"

    def __post_init__(self) -> None:
        # Direct construction (tests, the demo) gets the same defaults as the CLI.
        if not self.auth:
            object.__setattr__(self, "auth", (_auth_method("mschapv2"),))
        if self.mppe is None:
            object.__setattr__(self, "mppe", _mppe_policy("require"))


@dataclass(frozen=True, kw_only=True)
class UpSettings(TunnelSettings):
    server: str
    user: str
    password: Secret = field(repr=False)
    port: int = PPTP_PORT
    routes: Literal["default"] | tuple[IPv4Network, ...] = "default"
    dns: bool = True
    mtu: int | None = None
    interface: str = "pptp0"
    tcp_ack_filter: bool = False  # leave out pure TCP acks a later one in the same batch supersedes
    gre_window: int = DEFAULT_GRE_WINDOW_UP  # our Packet Receive Window Size, announced in the call set-up
    reorder_window: int = DEFAULT_REORDER_WINDOW
    reorder_timeout: float = DEFAULT_REORDER_TIMEOUT
    kill_switch: bool = True
    allow_subnets: tuple[IPv4Network, ...] = ()
    http: tuple[str, int] | None = DEFAULT_HTTP
    pcap_auth_hashes: bool = False  # keep MS-CHAP/CHAP response values in the capture (PAP: never)
    max_auth_failures: int = 3
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    connect_timeout: float = 15.0


@dataclass(frozen=True, kw_only=True)
class ServeSettings(TunnelSettings):
    secrets: Path
    listen: tuple[str, int] = ("0.0.0.0", PPTP_PORT)
    local_ip: IPv4Address = DEFAULT_LOCAL_IP
    pool: tuple[IPv4Address, ...] = DEFAULT_POOL
    dns: tuple[IPv4Address, ...] = ()
    interface: str = "pptpsrv0"
    tcp_ack_filter: bool = True
    gre_window: int = DEFAULT_GRE_WINDOW_SERVE
    test_reorder: float = 0.0
    max_clients: int = 16
    http: tuple[str, int] | None = None


@dataclass(frozen=True)
class ProbeSettings:
    server: str
    user: str
    password: Secret = field(repr=False)
    port: int = PPTP_PORT
    auth: tuple[AuthMethod, ...] = ()
    timeout: float = 10.0
    log_level: str = "info"
    log_format: Literal["text", "json"] = "text"

    def __post_init__(self) -> None:
        if not self.auth:
            object.__setattr__(self, "auth", (_auth_method("mschapv2"),))


# --------------------------------------------------------------------------------------------------
# The option table: one row per option, shared by the CLI (flag names, help) and the env lookup
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Opt:
    name: str  # settings field / key in the flags mapping
    flag: str  # "--mtu"
    env: str  # "PPTP_MTU"
    help: str
    file_env: str | None = None  # secrets: "PPTP_PASSWORD_FILE"


def _o(name: str, help: str, *, env: str | None = None, flag: str | None = None) -> Opt:
    return Opt(
        name=name,
        flag=flag or "--" + name.replace("_", "-"),
        env=env or ENV_PREFIX + name.upper(),
        help=help,
    )


_LOG = (
    _o("log_level", "Log level: debug, info, warning, error [default: info]"),
    _o("log_format", "Log format: text or json (one JSON object per line) [default: text]"),
)
_AUTH = _o("auth", "Accepted authentication, in order of preference: mschapv2,mschap,chap,pap")
_MPPE = _o("mppe", "MPPE encryption: require, optional or refuse [default: require]")
_MPPE_STATEFUL = _o("mppe_stateful", "Allow stateful MPPE (default: stateless only)")
_MPPE_BITS = _o("mppe_bits", "Accepted MPPE key lengths, comma list of 128,56,40 [default: 128]")
_TUN_OFFLOAD = _o(
    "tun_offload",
    "TUN segmentation/receive offload (64 KB TCP super-packets to and from the kernel): auto (on "
    "when the kernel supports it) or off; measured no faster with stateless MPPE, see docs/offload.md "
    "[default: off]",
)
_ACK_FILTER_HELP = (
    "Leave out a pure TCP ack when a later one of the same connection in the same read says more "
    "(fewer packets for bulk transfers; SACK, duplicate and flagged acks always pass): on or off"
)
_TCP_ACK_FILTER_UP = _o(
    "tcp_ack_filter",
    f"{_ACK_FILTER_HELP}. Thinned acks make the server's TCP send in bigger bursts, which can "
    "overflow the reorder window where the path reorders, see docs/perf.md [default: off]",
)
_TCP_ACK_FILTER_SERVE = _o("tcp_ack_filter", f"{_ACK_FILTER_HELP}, see docs/perf.md [default: on]")
_GRE_WINDOW_HELP = "GRE packets the peer may send before our ack (the Packet Receive Window Size we announce)"
_GRE_WINDOW_UP = _o(
    "gre_window",
    f"{_GRE_WINDOW_HELP}, 1-{MAX_GRE_WINDOW}; more than 64 can overflow pptpd "
    f"[default: {DEFAULT_GRE_WINDOW_UP}]",
)
_GRE_WINDOW_SERVE = _o(
    "gre_window", f"{_GRE_WINDOW_HELP}, 1-{MAX_GRE_WINDOW} [default: {DEFAULT_GRE_WINDOW_SERVE}]"
)
_ECHO = (
    _o("echo_interval", "PPTP control Echo-Request after this many idle seconds [default: 60]"),
    _o("echo_timeout", "Seconds to wait for the Echo-Reply before the peer is dead [default: 15]"),
    _o("lcp_echo_interval", "Seconds between LCP Echo-Requests [default: 10]"),
    _o(
        "lcp_echo_failures",
        "LCP echo intervals in a row with no reply and no data from the peer before the link is "
        "declared dead [default: 3]",
    ),
)

UP_OPTIONS: tuple[Opt, ...] = (
    _o("server", "PPTP server: host name or IPv4 address, optionally :port"),
    _o("user", "User name (PPTP_USER_FILE also works)"),
    Opt(
        "password_file",
        "--password-file",
        "PPTP_PASSWORD_FILE",
        "File holding the password (or set PPTP_PASSWORD). Never a flag: it would show in ps",
    ),
    _AUTH,
    _MPPE,
    _MPPE_STATEFUL,
    _MPPE_BITS,
    _o("routes", "'default' (everything through the tunnel) or comma-separated CIDRs [default: default]"),
    _o("dns", "Use the DNS servers the peer offers (rewrites /etc/resolv.conf) [default: on]"),
    _o("mtu", "Tunnel MTU, 576-1500 [default: negotiated]"),
    _o("interface", "TUN interface name [default: pptp0]"),
    _TUN_OFFLOAD,
    _TCP_ACK_FILTER_UP,
    _GRE_WINDOW_UP,
    _o("reorder_window", f"GRE reorder buffer in packets, 0 = off [default: {DEFAULT_REORDER_WINDOW}]"),
    _o(
        "reorder_timeout",
        f"Seconds a gap may wait in the reorder buffer [default: {DEFAULT_REORDER_TIMEOUT:g}]",
    ),
    *_ECHO,
    _o("kill_switch", "Drop all traffic that does not go through the tunnel [default: on]"),
    _o(
        "allow_subnet",
        "Subnet allowed outside the tunnel (repeatable or comma list)",
        env="PPTP_ALLOW_SUBNETS",
    ),
    _o("http", "Health/metrics listener host:port, or 'off' [default: 127.0.0.1:9101]"),
    _o("pcap", "Write the tunnel's PPP control frames and decrypted IP packets to this pcap file"),
    _o(
        "pcap_auth_hashes",
        "Keep the CHAP/MS-CHAP response values in the pcap (they allow offline password guessing) "
        "[default: masked]",
    ),
    _o("max_auth_failures", "Give up after this many authentication failures in a row, 0 = never [3]"),
    _o("backoff_initial", "First reconnect delay in seconds [default: 1]"),
    _o("backoff_max", "Longest reconnect delay in seconds [default: 60]"),
    _o("connect_timeout", "Seconds allowed for the TCP connect and the PPTP call setup [default: 15]"),
    *_LOG,
)

SERVE_OPTIONS: tuple[Opt, ...] = (
    _o("listen", "Address and port to accept PPTP control connections on [default: 0.0.0.0:1723]"),
    _o("local_ip", "The server's tunnel address [default: 192.168.77.1]"),
    _o("pool", "Client addresses: range A-B, CIDR, or a comma list [default: 192.168.77.10-99]"),
    _o("secrets", "chap-secrets file (client server secret [addresses])"),
    _AUTH,
    _MPPE,
    _MPPE_STATEFUL,
    _MPPE_BITS,
    _o("dns", "DNS server addresses handed to clients (comma list)"),
    _o("interface", "TUN interface name [default: pptpsrv0]"),
    _TUN_OFFLOAD,
    _TCP_ACK_FILTER_SERVE,
    _GRE_WINDOW_SERVE,
    *_ECHO,
    _o("test_reorder", "Fraction 0-1 of sent GRE packets deliberately reordered (testing) [default: 0]"),
    _o("max_clients", "Most clients connected at once [default: 16]"),
    _o("http", "Health/metrics listener host:port, or 'off' [default: off]"),
    _o("pcap", "Write the tunnel packets to this pcap file"),
    *_LOG,
)

PROBE_OPTIONS: tuple[Opt, ...] = (
    _o("server", "PPTP server: host name or IPv4 address, optionally :port"),
    _o("user", "User name (PPTP_USER_FILE also works)"),
    Opt("password_file", "--password-file", "PPTP_PASSWORD_FILE", "File holding the password"),
    _AUTH,
    _o("timeout", "Seconds allowed for the whole probe [default: 10]", env="PPTP_PROBE_TIMEOUT"),
    *_LOG,
)

HTTP_CLIENT_OPTIONS: tuple[Opt, ...] = (
    _o("http", "The sidecar's health listener host:port [default: 127.0.0.1:9101]"),
)

# Variables read directly (not through a flag).
_EXTRA_ENV = {"PPTP_PASSWORD", "PPTP_USER_FILE"}

COMMAND_OPTIONS: dict[str, tuple[Opt, ...]] = {
    "up": UP_OPTIONS,
    "serve": SERVE_OPTIONS,
    "probe": PROBE_OPTIONS,
    "healthcheck": HTTP_CLIENT_OPTIONS,
    "status": HTTP_CLIENT_OPTIONS,
}


def env_names(command: str) -> set[str]:
    names = {o.env for o in COMMAND_OPTIONS.get(command, ())}
    if command in ("up", "probe"):
        names |= _EXTRA_ENV
    return names


def opt_help(opt: Opt) -> str:
    return f"{opt.help}  [env: {opt.env}]"


def option(command: str, name: str) -> Opt:
    for o in COMMAND_OPTIONS[command]:
        if o.name == name:
            return o
    raise KeyError(name)


# --------------------------------------------------------------------------------------------------
# Value parsers: each takes the raw text and returns the value or raises ValueError("expected ...")
# --------------------------------------------------------------------------------------------------
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_IFNAME = re.compile(r"^[A-Za-z0-9_.\-]{1,15}$")


def parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError("expected true or false (also 1/0, yes/no, on/off)")


def int_between(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip(), 10)
        except ValueError:
            value = None
        if value is None or not lo <= value <= hi:
            raise ValueError(f"expected an integer between {lo} and {hi}")
        return value

    return parse


def float_between(lo: float, hi: float, *, lo_open: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value: float | None = float(text.strip())
        except ValueError:
            value = None
        ok = value is not None and value == value and (value > lo if lo_open else value >= lo) and value <= hi
        if not ok or value is None:
            low = f"more than {lo:g}" if lo_open else f"at least {lo:g}"
            raise ValueError(f"expected a number of seconds, {low} and at most {hi:g}")
        return value

    return parse


def parse_fraction(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise ValueError("expected a fraction between 0 and 1 (0.01 = 1% of packets)")
    return value


def parse_hostname(text: str) -> str:
    host = text.strip()
    try:
        addr = ip_address(host)
    except ValueError:
        addr = None
    if addr is not None:
        if addr.version != 4:
            raise ValueError("expected an IPv4 address or host name (PPTP here runs over IPv4)")
        return host
    name = host[:-1] if host.endswith(".") else host
    if not name or len(name) > 253 or not all(_HOST_LABEL.match(p) for p in name.split(".")):
        raise ValueError("expected a host name or IPv4 address, optionally with :port")
    if all(p.isdigit() for p in name.split(".")):
        raise ValueError("expected a valid IPv4 address (each part 0-255) or a host name")
    return host


def parse_server(text: str) -> tuple[str, int]:
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or host.count(":") or host.startswith("["):  # no port, or an IPv6 address
        return parse_hostname(text), PPTP_PORT
    port = _parse_port(port_text)
    return parse_hostname(host), port


def _parse_port(text: str) -> int:
    try:
        port = int(text, 10)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise ValueError("expected a port number between 1 and 65535 after ':'")
    return port


def parse_hostport(text: str, *, allow_off: bool) -> tuple[str, int] | None:
    raw = text.strip()
    if allow_off and raw.lower() in ("off", "none", "false", "no", "0", ""):
        return None
    expected = "expected host:port (for example 127.0.0.1:9101 or [::1]:9101)" + (
        " or 'off'" if allow_off else ""
    )
    if raw.startswith("["):
        host, sep, rest = raw[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(expected)
        port_text = rest[1:]
    else:
        host, sep, port_text = raw.rpartition(":")
        if not sep:
            if raw.isdigit():  # a bare port: loopback
                host, port_text = "127.0.0.1", raw
            else:
                raise ValueError(expected)
    host = host or "0.0.0.0"
    try:
        ip_address(host)
    except ValueError:
        try:
            parse_hostname(host)
        except ValueError:
            raise ValueError(expected) from None
    try:
        port = int(port_text, 10)
    except ValueError:
        raise ValueError(expected) from None
    if not 0 <= port <= 65535:
        raise ValueError(expected)
    return host, port


def parse_ipv4(text: str) -> IPv4Address:
    try:
        return IPv4Address(text.strip())
    except ValueError:
        raise ValueError("expected an IPv4 address like 192.168.77.1") from None


def _split(text: str) -> list[str]:
    return [p for p in re.split(r"[,\s]+", text.strip()) if p]


def parse_ipv4_list(text: str) -> tuple[IPv4Address, ...]:
    out = []
    for part in _split(text):
        try:
            out.append(IPv4Address(part))
        except ValueError:
            raise ValueError(f"{part!r} is not an IPv4 address; expected a comma list of addresses") from None
    return tuple(out)


def parse_network(part: str) -> IPv4Network:
    try:
        return IPv4Network(part, strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            fixed = IPv4Network(part, strict=False)
            raise ValueError(f"{part!r} has host bits set; did you mean {fixed}?") from None
        raise ValueError(f"{part!r} is not an IPv4 CIDR like 10.0.0.0/8") from None


def parse_networks(text: str) -> tuple[IPv4Network, ...]:
    nets: dict[IPv4Network, None] = {}
    for part in _split(text):
        nets.setdefault(parse_network(part), None)
    return tuple(nets)


def parse_routes(text: str) -> Literal["default"] | tuple[IPv4Network, ...]:
    if text.strip().lower() == "default":
        return "default"
    try:
        nets = parse_networks(text)
    except ValueError as exc:
        raise ValueError(f"expected 'default' or comma-separated CIDRs ({exc})") from None
    if not nets:
        raise ValueError("expected 'default' or comma-separated CIDRs like 10.0.0.0/8,192.168.1.0/24")
    return nets


def parse_interface(text: str) -> str:
    name = text.strip()
    if not _IFNAME.match(name) or name in (".", ".."):
        raise ValueError("expected an interface name of 1-15 letters, digits, '-', '_' or '.'")
    return name


def parse_choice(choices: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        low = text.strip().lower()
        if low not in choices:
            raise ValueError("expected one of " + ", ".join(choices))
        return low

    return parse


def _auth_method(name: str) -> AuthMethod:
    from sidecar.proto.ppp.auth import AuthMethod

    return {
        "mschapv2": AuthMethod.MSCHAP_V2,
        "mschap": AuthMethod.MSCHAP_V1,
        "chap": AuthMethod.CHAP_MD5,
        "pap": AuthMethod.PAP,
    }[name]


def _mppe_policy(name: str) -> MppePolicy:
    from sidecar.proto.ppp.mppe import MppePolicy

    return {"require": MppePolicy.REQUIRE, "optional": MppePolicy.OPTIONAL, "refuse": MppePolicy.REFUSE}[name]


_AUTH_ALIASES = {"mschap-v2": "mschapv2", "ms-chap-v2": "mschapv2", "ms-chap": "mschap", "chap-md5": "chap"}


def parse_auth_names(text: str) -> tuple[str, ...]:
    names: dict[str, None] = {}
    expected = "expected a comma-separated list of " + ", ".join(AUTH_NAMES)
    for part in _split(text.lower()):
        part = _AUTH_ALIASES.get(part, part)
        if part not in AUTH_NAMES:
            raise ValueError(expected)
        names.setdefault(part, None)
    if not names:
        raise ValueError(expected)
    return tuple(names)


def parse_mppe_bits(text: str) -> frozenset[int]:
    expected = "expected a comma-separated list of 128, 56, 40"
    bits = set()
    for part in _split(text):
        if part not in ("128", "56", "40"):
            raise ValueError(expected)
        bits.add(int(part))
    if not bits:
        raise ValueError(expected)
    return frozenset(bits)


def parse_mtu(text: str) -> int | None:
    if text.strip().lower() == "auto":
        return None
    try:
        return int_between(576, 1500)(text)
    except ValueError:
        raise ValueError("expected an integer between 576 and 1500 (or 'auto')") from None


def parse_user(text: str) -> str:
    name = text.strip("\r\n")
    if not name:
        raise ValueError("expected a non-empty user name")
    if len(name.encode()) > 255:
        raise ValueError("expected a user name of at most 255 bytes")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError("expected a user name without control characters")
    return name


# --------------------------------------------------------------------------------------------------
# The reader: looks each option up (flag, env), parses, collects problems
# --------------------------------------------------------------------------------------------------
class _Reader:
    def __init__(self, options: Iterable[Opt], flags: Mapping[str, Any], env: Mapping[str, str]) -> None:
        self.opts = {o.name: o for o in options}
        self.flags = flags
        self.env = env
        self.problems: list[str] = []

    def raw(self, name: str) -> tuple[str, Any] | None:
        """(source name, raw value) or None when the option is not given."""
        opt = self.opts[name]
        value = self.flags.get(name)
        if value is not None and value != [] and value != ():
            return opt.flag, value
        if opt.env in self.env:
            return opt.env, self.env[opt.env]
        return None

    def problem(self, source: str, raw: object, why: str) -> None:
        self.problems.append(f"{source}={_show(raw)}: {why}")

    def get(self, name: str, parse: Callable[[str], T], default: D) -> T | D:
        found = self.raw(name)
        if found is None:
            return default
        source, raw = found
        if isinstance(raw, bool):  # --x/--no-x flags arrive parsed
            return raw  # type: ignore[return-value]
        if isinstance(raw, (list, tuple)):
            raw = ",".join(str(r) for r in raw)
        try:
            return parse(str(raw))
        except ValueError as exc:
            self.problem(source, raw, str(exc))
            return default

    def required(self, name: str, parse: Callable[[str], T], what: str) -> T | None:
        found = self.raw(name)
        if found is None:
            opt = self.opts[name]
            extra = f" or {opt.env}_FILE" if name == "user" else ""
            self.problems.append(f"{opt.flag} / {opt.env}{extra}: required ({what})")
            return None
        return self.get(name, parse, None)

    def secret_from_file(self, source: str, path_text: str, what: str) -> str | None:
        path = Path(path_text)
        try:
            with path.open("rb") as fh:
                data = fh.read(MAX_SECRET_FILE + 1)
        except FileNotFoundError:
            self.problem(source, path_text, f"file not found (expected a file holding the {what})")
            return None
        except IsADirectoryError:
            self.problem(source, path_text, f"is a directory (expected a file holding the {what})")
            return None
        except PermissionError:
            self.problem(source, path_text, f"permission denied (the {what} file must be readable)")
            return None
        except OSError as exc:
            self.problem(source, path_text, f"cannot read: {exc.strerror}")
            return None
        if len(data) > MAX_SECRET_FILE:
            self.problem(source, path_text, f"file is too large for a {what} ({MAX_SECRET_FILE} bytes max)")
            return None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            self.problem(source, path_text, f"the {what} file is not UTF-8 text")
            return None
        # One trailing newline is the file's, not the secret's (echo "pw" > file).
        if text.endswith("\r\n"):
            text = text[:-2]
        elif text.endswith("\n"):
            text = text[:-1]
        return text

    def password(self) -> Secret | None:
        flag = self.flags.get("password_file")
        if flag is not None:
            text = self.secret_from_file("--password-file", str(flag), "password")
            source = "--password-file"
        elif "PPTP_PASSWORD" in self.env and "PPTP_PASSWORD_FILE" in self.env:
            self.problems.append(
                "PPTP_PASSWORD and PPTP_PASSWORD_FILE: both are set; keep one (the file is safer)"
            )
            return None
        elif "PPTP_PASSWORD_FILE" in self.env:
            text = self.secret_from_file("PPTP_PASSWORD_FILE", self.env["PPTP_PASSWORD_FILE"], "password")
            source = "PPTP_PASSWORD_FILE"
        elif "PPTP_PASSWORD" in self.env:
            text = self.env["PPTP_PASSWORD"]
            source = "PPTP_PASSWORD"
        else:
            self.problems.append(
                "PPTP_PASSWORD / PPTP_PASSWORD_FILE / --password-file: required (the password; "
                "it is never accepted as a command-line flag)"
            )
            return None
        if text is None:
            return None
        if not text:
            self.problems.append(f"{source}: the password is empty")
            return None
        if len(text) > 256:
            self.problems.append(f"{source}: the password is longer than 256 characters (MS-CHAP limit)")
            return None
        if "\n" in text or "\0" in text:
            self.problems.append(f"{source}: the password contains a newline or NUL character")
            return None
        return Secret(text)

    def user(self) -> str | None:
        if self.raw("user") is None and "PPTP_USER_FILE" in self.env:
            text = self.secret_from_file("PPTP_USER_FILE", self.env["PPTP_USER_FILE"], "user name")
            if text is None:
                return None
            try:
                return parse_user(text)
            except ValueError as exc:
                self.problems.append(f"PPTP_USER_FILE: {exc}")
                return None
        return self.required("user", parse_user, "the user name to log in with")

    def common_auth(self) -> tuple[tuple[AuthMethod, ...], tuple[str, ...]]:
        default: tuple[str, ...] = ("mschapv2",)
        names = self.get("auth", parse_auth_names, default)
        return tuple(_auth_method(n) for n in names), names

    def log(self) -> tuple[str, Literal["text", "json"]]:
        level = self.get("log_level", parse_choice(LOG_LEVELS), "info")
        fmt = self.get("log_format", parse_choice(LOG_FORMATS), "text")
        return level, "json" if fmt == "json" else "text"


def _show(raw: object) -> str:
    text = raw if isinstance(raw, str) else str(raw)
    if len(text) > 80:
        text = text[:77] + "..."
    return repr(text)


def _check_mppe_auth(r: _Reader, mppe_name: str, auth_names: tuple[str, ...]) -> None:
    if mppe_name == "require" and not any(n.startswith("mschap") for n in auth_names):
        r.problems.append(
            f"--mppe/PPTP_MPPE='require' with --auth/PPTP_AUTH={','.join(auth_names)!r}: MPPE keys come "
            "from MS-CHAP; add mschapv2 (or mschap) to the auth list, or set the MPPE policy to optional"
        )


def _mppe(r: _Reader) -> tuple[MppePolicy, str, bool, frozenset[int]]:
    name = r.get("mppe", parse_choice(MPPE_NAMES), "require")
    stateful = r.get("mppe_stateful", parse_bool, False)
    bits = r.get("mppe_bits", parse_mppe_bits, frozenset({128}))
    return _mppe_policy(name), name, stateful, bits


def _keepalive(r: _Reader) -> dict[str, Any]:
    """The four keepalive options ``up`` and ``serve`` share (the _ECHO rows), as settings fields."""
    return {
        "echo_interval": r.get("echo_interval", float_between(1.0, 3600.0), 60.0),
        "echo_timeout": r.get("echo_timeout", float_between(1.0, 600.0), 15.0),
        "lcp_echo_interval": r.get("lcp_echo_interval", float_between(0.5, 3600.0), 10.0),
        "lcp_echo_failures": r.get("lcp_echo_failures", int_between(1, 100), 3),
    }


def _finish(r: _Reader) -> None:
    if r.problems:
        raise ConfigError(r.problems)


# --------------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------------
def build_up_settings(flags: Mapping[str, Any], env: Mapping[str, str]) -> UpSettings:
    """Build :class:`UpSettings` or raise :class:`ConfigError` listing every problem."""
    r = _Reader(UP_OPTIONS, flags, env)
    server = r.required("server", parse_server, "the PPTP server's host name or IPv4 address")
    user = r.user()
    password = r.password()
    auth, auth_names = r.common_auth()
    mppe, mppe_name, stateful, bits = _mppe(r)
    _check_mppe_auth(r, mppe_name, auth_names)
    routes = r.get("routes", parse_routes, DEFAULT_ROUTES)
    dns = r.get("dns", parse_bool, True)
    mtu = r.get("mtu", parse_mtu, None)
    interface = r.get("interface", parse_interface, "pptp0")
    tun_offload = r.get("tun_offload", _parse_tun_offload, False)
    tcp_ack_filter = r.get("tcp_ack_filter", _parse_on_off, False)
    gre_window = r.get("gre_window", int_between(1, MAX_GRE_WINDOW), DEFAULT_GRE_WINDOW_UP)
    reorder_window = r.get("reorder_window", int_between(0, 4096), DEFAULT_REORDER_WINDOW)
    reorder_timeout = r.get(
        "reorder_timeout", float_between(0.0, 10.0, lo_open=True), DEFAULT_REORDER_TIMEOUT
    )
    keepalive = _keepalive(r)
    kill_switch = r.get("kill_switch", parse_bool, True)
    allow_subnets = r.get("allow_subnet", _networks_or_fail, ())
    http = r.get("http", lambda t: parse_hostport(t, allow_off=True), DEFAULT_HTTP)
    pcap = r.get("pcap", _pcap_path, None)
    pcap_auth_hashes = r.get("pcap_auth_hashes", parse_bool, False)
    max_auth_failures = r.get("max_auth_failures", int_between(0, 1000), 3)
    backoff_initial = r.get("backoff_initial", float_between(0.0, 3600.0, lo_open=True), 1.0)
    backoff_max = r.get("backoff_max", float_between(0.0, 86400.0, lo_open=True), 60.0)
    if backoff_max < backoff_initial:
        r.problems.append(
            f"--backoff-max/PPTP_BACKOFF_MAX={backoff_max:g}: expected at least the initial backoff "
            f"({backoff_initial:g})"
        )
    connect_timeout = r.get("connect_timeout", float_between(0.0, 600.0, lo_open=True), 15.0)
    level, fmt = r.log()
    _finish(r)
    assert server is not None and user is not None and password is not None
    return UpSettings(
        server=server[0],
        port=server[1],
        user=user,
        password=password,
        auth=auth,
        mppe=mppe,
        mppe_stateful=stateful,
        mppe_key_bits=bits,
        routes=routes,
        dns=dns,
        mtu=mtu,
        interface=interface,
        tun_offload=tun_offload,
        tcp_ack_filter=tcp_ack_filter,
        gre_window=gre_window,
        reorder_window=reorder_window,
        reorder_timeout=reorder_timeout,
        **keepalive,
        kill_switch=kill_switch,
        allow_subnets=allow_subnets,
        http=http,
        pcap=pcap,
        pcap_auth_hashes=pcap_auth_hashes,
        max_auth_failures=max_auth_failures,
        backoff_initial=backoff_initial,
        backoff_max=backoff_max,
        connect_timeout=connect_timeout,
        log_level=level,
        log_format=fmt,
    )


def _parse_tun_offload(text: str) -> bool:
    return parse_choice(TUN_OFFLOAD_NAMES)(text) == "auto"


def _parse_on_off(text: str) -> bool:
    return parse_choice(("on", "off"))(text) == "on"


def _networks_or_fail(text: str) -> tuple[IPv4Network, ...]:
    try:
        return parse_networks(text)
    except ValueError as exc:
        raise ValueError(f"expected comma-separated IPv4 CIDRs ({exc})") from None


def _pcap_path(text: str) -> Path:
    path = Path(text.strip())
    if not text.strip():
        raise ValueError("expected a file path")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"expected a file in an existing directory ({parent} does not exist)")
    if path.is_dir():
        raise ValueError("expected a file path, not a directory")
    return path


def _parse_pool(text: str) -> tuple[IPv4Address, ...]:
    try:
        from sidecar.server.pool import parse_pool
    except ImportError:  # pragma: no cover - the server package is part of the distribution
        return parse_ipv4_list(text)
    try:
        return parse_pool(text)
    except ValueError as exc:
        raise ValueError(f"expected a range A-B, a CIDR or a comma list ({exc})") from None


def _check_secrets_file(r: _Reader, source: str, path: Path) -> None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        r.problem(source, str(path), "file not found (expected a chap-secrets file)")
        return
    except IsADirectoryError:
        r.problem(source, str(path), "is a directory (expected a chap-secrets file)")
        return
    except PermissionError:
        r.problem(source, str(path), "permission denied (the secrets file must be readable)")
        return
    except UnicodeDecodeError:
        r.problem(source, str(path), "not UTF-8 text (expected a chap-secrets file)")
        return
    except OSError as exc:
        r.problem(source, str(path), f"cannot read: {exc.strerror}")
        return
    try:
        from sidecar.server.secrets import parse_secrets
    except ImportError:  # pragma: no cover
        return
    try:
        entries = parse_secrets(text, str(path))
    except ValueError as exc:  # SecretsError: names file, line and column, never a secret
        r.problems.append(f"{source}: {exc}")
        return
    if not entries:
        r.problem(source, str(path), "the secrets file has no entries (client server secret [addresses])")


def build_serve_settings(flags: Mapping[str, Any], env: Mapping[str, str]) -> ServeSettings:
    """Build :class:`ServeSettings` or raise :class:`ConfigError` listing every problem."""
    r = _Reader(SERVE_OPTIONS, flags, env)
    listen = r.get("listen", lambda t: parse_hostport(t, allow_off=False), ("0.0.0.0", PPTP_PORT))
    assert listen is not None
    local_ip = r.get("local_ip", parse_ipv4, DEFAULT_LOCAL_IP)
    pool = r.get("pool", _parse_pool, DEFAULT_POOL)
    if local_ip in pool:  # a CIDR pool naturally contains the server's own address: leave it out
        pool = tuple(a for a in pool if a != local_ip)
        if not pool:
            r.problems.append(
                f"--pool/PPTP_POOL: holds only the server's own address {local_ip} (--local-ip); "
                "give the clients other addresses"
            )
    secrets_path: Path | None = None
    found = r.raw("secrets")
    if found is None:
        r.problems.append("--secrets / PPTP_SECRETS: required (path of the chap-secrets file)")
    else:
        secrets_path = Path(str(found[1]))
        _check_secrets_file(r, found[0], secrets_path)
    auth, auth_names = r.common_auth()
    mppe, mppe_name, stateful, bits = _mppe(r)
    _check_mppe_auth(r, mppe_name, auth_names)
    dns = r.get("dns", parse_ipv4_list, ())
    interface = r.get("interface", parse_interface, "pptpsrv0")
    tun_offload = r.get("tun_offload", _parse_tun_offload, False)
    tcp_ack_filter = r.get("tcp_ack_filter", _parse_on_off, True)
    gre_window = r.get("gre_window", int_between(1, MAX_GRE_WINDOW), DEFAULT_GRE_WINDOW_SERVE)
    keepalive = _keepalive(r)
    test_reorder = r.get("test_reorder", parse_fraction, 0.0)
    max_clients = r.get("max_clients", int_between(1, 4096), 16)
    http = r.get("http", lambda t: parse_hostport(t, allow_off=True), None)
    pcap = r.get("pcap", _pcap_path, None)
    level, fmt = r.log()
    _finish(r)
    assert secrets_path is not None
    return ServeSettings(
        listen=listen,
        local_ip=local_ip,
        pool=pool,
        secrets=secrets_path,
        auth=auth,
        mppe=mppe,
        mppe_stateful=stateful,
        mppe_key_bits=bits,
        dns=dns,
        interface=interface,
        tun_offload=tun_offload,
        tcp_ack_filter=tcp_ack_filter,
        gre_window=gre_window,
        **keepalive,
        test_reorder=test_reorder,
        max_clients=max_clients,
        http=http,
        pcap=pcap,
        log_level=level,
        log_format=fmt,
    )


def build_probe_settings(flags: Mapping[str, Any], env: Mapping[str, str]) -> ProbeSettings:
    r = _Reader(PROBE_OPTIONS, flags, env)
    server = r.required("server", parse_server, "the PPTP server's host name or IPv4 address")
    # credentials are optional here: without them the probe stops after LCP (user "" = not given)
    given = r.raw("user") is not None or r.raw("password_file") is not None
    given = given or any(k in env for k in ("PPTP_USER_FILE", "PPTP_PASSWORD", "PPTP_PASSWORD_FILE"))
    user = r.user() if given else ""
    password = r.password() if given else Secret("")
    auth, _ = r.common_auth()
    timeout = r.get("timeout", float_between(0.0, 600.0, lo_open=True), 10.0)
    level, fmt = r.log()
    _finish(r)
    assert server is not None and user is not None and password is not None
    return ProbeSettings(
        server=server[0],
        port=server[1],
        user=user,
        password=password,
        auth=auth,
        timeout=timeout,
        log_level=level,
        log_format=fmt,
    )


def http_target(flags: Mapping[str, Any], env: Mapping[str, str]) -> tuple[str, int] | None:
    """Where ``healthcheck``/``status`` find the listener (``--http``, then ``PPTP_HTTP``)."""
    r = _Reader(HTTP_CLIENT_OPTIONS, flags, env)
    target = r.get("http", lambda t: parse_hostport(t, allow_off=True), DEFAULT_HTTP)
    _finish(r)
    return target


# --------------------------------------------------------------------------------------------------
# Unknown variables
# --------------------------------------------------------------------------------------------------
def env_warnings(command: str, env: Mapping[str, str]) -> list[str]:
    """One warning per ``PPTP_*`` variable the command does not read, with the closest valid name."""
    valid = env_names(command)
    everywhere = set().union(*(env_names(c) for c in COMMAND_OPTIONS))
    out = []
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in valid:
            continue
        if name in everywhere:
            users = sorted(c for c in COMMAND_OPTIONS if name in env_names(c))
            out.append(f"{name} is not used by '{command}' (it is read by: {', '.join(users)}); ignored")
            continue
        close = difflib.get_close_matches(name, sorted(valid), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        out.append(f"unknown environment variable {name} ignored{hint}")
    return out
