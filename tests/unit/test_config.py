"""sidecar.config: flags, PPTP_* variables, *_FILE secrets, precedence and every validation line."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from sidecar import config
from sidecar.config import ConfigError, build_probe_settings, build_serve_settings, build_up_settings
from sidecar.proto.ppp.auth import AuthMethod
from sidecar.proto.ppp.mppe import MppePolicy
from sidecar.proto.secret import Secret

PASSWORD = "s3cr3t-Passw0rd!"
BASE_ENV = {"PPTP_SERVER": "vpn.example.com", "PPTP_USER": "alice", "PPTP_PASSWORD": PASSWORD}


def up(flags: dict[str, Any] | None = None, **env: str) -> config.UpSettings:
    return build_up_settings(flags or {}, {**BASE_ENV, **env})


def problems_up(flags: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        build_up_settings(flags or {}, env if env is not None else BASE_ENV)
    return info.value.problems


# -- defaults and happy paths ----------------------------------------------------------------------
def test_defaults_with_only_the_required_values() -> None:
    s = up()
    assert s.server == "vpn.example.com" and s.port == 1723 and s.user == "alice"
    assert s.password == Secret(PASSWORD) and s.password.reveal() == PASSWORD
    assert s.auth == (AuthMethod.MSCHAP_V2,)
    assert s.mppe is MppePolicy.REQUIRE and s.mppe_stateful is False and s.mppe_key_bits == {128}
    assert s.routes == "default" and s.dns is True and s.mtu is None and s.interface == "pptp0"
    assert s.kill_switch is True and s.allow_subnets == () and s.http == ("127.0.0.1", 9101)
    assert s.pcap is None and s.max_auth_failures == 3 and s.log_level == "info" and s.log_format == "text"
    assert s.backoff_initial <= s.backoff_max


def test_every_up_option_from_the_environment(tmp_path: Path) -> None:
    s = up(
        PPTP_SERVER="10.1.2.3:1724",
        PPTP_AUTH="pap,MSCHAPv2,chap,mschap,pap",
        PPTP_MPPE="optional",
        PPTP_MPPE_STATEFUL="yes",
        PPTP_MPPE_BITS="40,128",
        PPTP_ROUTES="10.0.0.0/8, 192.168.1.0/24",
        PPTP_DNS="off",
        PPTP_MTU="1400",
        PPTP_INTERFACE="vpn-1",
        PPTP_REORDER_WINDOW="0",
        PPTP_REORDER_TIMEOUT="0.25",
        PPTP_ECHO_INTERVAL="30",
        PPTP_ECHO_TIMEOUT="5",
        PPTP_LCP_ECHO_INTERVAL="2.5",
        PPTP_LCP_ECHO_FAILURES="4",
        PPTP_KILL_SWITCH="0",
        PPTP_ALLOW_SUBNETS="10.96.0.0/12,10.244.0.0/16",
        PPTP_HTTP="0.0.0.0:9200",
        PPTP_PCAP=str(tmp_path / "t.pcap"),
        PPTP_MAX_AUTH_FAILURES="0",
        PPTP_BACKOFF_INITIAL="0.5",
        PPTP_BACKOFF_MAX="5",
        PPTP_CONNECT_TIMEOUT="3",
        PPTP_LOG_LEVEL="DEBUG",
        PPTP_LOG_FORMAT="json",
    )
    assert (s.server, s.port) == ("10.1.2.3", 1724)
    # order of preference kept, duplicates dropped
    assert s.auth == (AuthMethod.PAP, AuthMethod.MSCHAP_V2, AuthMethod.CHAP_MD5, AuthMethod.MSCHAP_V1)
    assert s.mppe is MppePolicy.OPTIONAL and s.mppe_stateful is True and s.mppe_key_bits == {40, 128}
    assert s.routes == (IPv4Network("10.0.0.0/8"), IPv4Network("192.168.1.0/24"))
    assert s.dns is False and s.mtu == 1400 and s.interface == "vpn-1"
    assert s.reorder_window == 0 and s.reorder_timeout == 0.25
    assert (s.echo_interval, s.echo_timeout, s.lcp_echo_interval, s.lcp_echo_failures) == (30, 5, 2.5, 4)
    assert s.kill_switch is False
    assert s.allow_subnets == (IPv4Network("10.96.0.0/12"), IPv4Network("10.244.0.0/16"))
    assert s.http == ("0.0.0.0", 9200) and s.pcap == tmp_path / "t.pcap"
    assert s.max_auth_failures == 0 and (s.backoff_initial, s.backoff_max, s.connect_timeout) == (0.5, 5, 3)
    assert s.log_level == "debug" and s.log_format == "json"


def test_flag_wins_over_environment() -> None:
    s = up(
        {"mtu": "1300", "dns": True, "kill_switch": False, "server": "other.example"},
        PPTP_MTU="1400",
        PPTP_DNS="false",
        PPTP_KILL_SWITCH="true",
    )
    assert s.mtu == 1300 and s.dns is True and s.kill_switch is False and s.server == "other.example"


def test_allow_subnet_flag_is_repeatable_and_takes_comma_lists() -> None:
    s = up({"allow_subnet": ["10.0.0.0/8,172.16.0.0/12", "192.168.0.0/16", "10.0.0.0/8"]})
    assert s.allow_subnets == tuple(IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))


@pytest.mark.parametrize("text", ["off", "OFF", "none", ""])
def test_http_off(text: str) -> None:
    assert up(PPTP_HTTP=text).http is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[::1]:9101", ("::1", 9101)),
        ("9300", ("127.0.0.1", 9300)),
        (":9101", ("0.0.0.0", 9101)),
        ("localhost:80", ("localhost", 80)),
    ],
)
def test_http_forms(text: str, expected: tuple[str, int]) -> None:
    assert up(PPTP_HTTP=text).http == expected


def test_mtu_auto_is_none() -> None:
    assert up(PPTP_MTU="auto").mtu is None


# -- secrets -----------------------------------------------------------------------------------------
def test_password_file_env_strips_one_trailing_newline(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_text(PASSWORD + "\n")
    env = {**BASE_ENV, "PPTP_PASSWORD_FILE": str(f)}
    del env["PPTP_PASSWORD"]
    assert build_up_settings({}, env).password.reveal() == PASSWORD
    f.write_bytes(b" spaced pw \r\n")
    assert build_up_settings({}, env).password.reveal() == " spaced pw "


def test_password_file_flag_wins_over_both_variables(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_text("from-flag")
    env = {**BASE_ENV, "PPTP_PASSWORD_FILE": "/nonexistent"}
    s = build_up_settings({"password_file": str(f)}, env)
    assert s.password.reveal() == "from-flag"


def test_user_file(tmp_path: Path) -> None:
    f = tmp_path / "user"
    f.write_text("bob\n")
    env = {k: v for k, v in BASE_ENV.items() if k != "PPTP_USER"} | {"PPTP_USER_FILE": str(f)}
    assert build_up_settings({}, env).user == "bob"


def test_password_never_in_repr() -> None:
    s = up()
    assert PASSWORD not in repr(s) and PASSWORD not in str(s)


def _password_problem(env_extra: dict[str, str], drop_password: bool = True) -> list[str]:
    env = dict(BASE_ENV)
    if drop_password:
        del env["PPTP_PASSWORD"]
    env.update(env_extra)
    return problems_up(env=env)


def test_both_password_sources_is_an_error(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_text(PASSWORD)
    lines = _password_problem({"PPTP_PASSWORD_FILE": str(f)}, drop_password=False)
    assert lines == ["PPTP_PASSWORD and PPTP_PASSWORD_FILE: both are set; keep one (the file is safer)"]


def test_missing_password_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    assert _password_problem({"PPTP_PASSWORD_FILE": str(missing)}) == [
        f"PPTP_PASSWORD_FILE={str(missing)!r}: file not found (expected a file holding the password)"
    ]


def test_password_file_is_a_directory(tmp_path: Path) -> None:
    assert _password_problem({"PPTP_PASSWORD_FILE": str(tmp_path)}) == [
        f"PPTP_PASSWORD_FILE={str(tmp_path)!r}: is a directory (expected a file holding the password)"
    ]


def test_empty_and_bad_passwords(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_text("\n")
    assert _password_problem({"PPTP_PASSWORD_FILE": str(f)}) == ["PPTP_PASSWORD_FILE: the password is empty"]
    f.write_bytes(b"\xff\xfe")
    assert _password_problem({"PPTP_PASSWORD_FILE": str(f)}) == [
        f"PPTP_PASSWORD_FILE={str(f)!r}: the password file is not UTF-8 text"
    ]
    assert _password_problem({"PPTP_PASSWORD": "x" * 257}) == [
        "PPTP_PASSWORD: the password is longer than 256 characters (MS-CHAP limit)"
    ]
    f.write_text("two\nlines\n")
    assert _password_problem({"PPTP_PASSWORD_FILE": str(f)}) == [
        "PPTP_PASSWORD_FILE: the password contains a newline or NUL character"
    ]


def test_required_values_missing_all_reported() -> None:
    assert problems_up(env={}) == [
        "--server / PPTP_SERVER: required (the PPTP server's host name or IPv4 address)",
        "--user / PPTP_USER or PPTP_USER_FILE: required (the user name to log in with)",
        "PPTP_PASSWORD / PPTP_PASSWORD_FILE / --password-file: required (the password; it is never "
        "accepted as a command-line flag)",
    ]


# -- one line per problem, exact text ---------------------------------------------------------------
INTEGER_MTU = "expected an integer between 576 and 1500 (or 'auto')"
CASES: list[tuple[str, str, str]] = [
    ("PPTP_MTU", "9000", INTEGER_MTU),
    ("PPTP_MTU", "abc", INTEGER_MTU),
    ("PPTP_MTU", "575", INTEGER_MTU),
    ("PPTP_SERVER", "300.1.2.3", "expected a valid IPv4 address (each part 0-255) or a host name"),
    ("PPTP_SERVER", "bad_host!", "expected a host name or IPv4 address, optionally with :port"),
    ("PPTP_SERVER", "::1", "expected an IPv4 address or host name (PPTP here runs over IPv4)"),
    ("PPTP_SERVER", "[::1]:1723", "expected a host name or IPv4 address, optionally with :port"),
    ("PPTP_SERVER", "vpn:0", "expected a port number between 1 and 65535 after ':'"),
    ("PPTP_USER", "", "expected a non-empty user name"),
    ("PPTP_USER", "a\tb", "expected a user name without control characters"),
    ("PPTP_AUTH", "mschapv3", "expected a comma-separated list of mschapv2, mschap, chap, pap"),
    ("PPTP_AUTH", ",", "expected a comma-separated list of mschapv2, mschap, chap, pap"),
    ("PPTP_MPPE", "always", "expected one of require, optional, refuse"),
    ("PPTP_MPPE_STATEFUL", "maybe", "expected true or false (also 1/0, yes/no, on/off)"),
    ("PPTP_MPPE_BITS", "64", "expected a comma-separated list of 128, 56, 40"),
    (
        "PPTP_ROUTES",
        "10.0.0.1/8",
        "expected 'default' or comma-separated CIDRs ('10.0.0.1/8' has host bits set; "
        "did you mean 10.0.0.0/8?)",
    ),
    (
        "PPTP_ROUTES",
        "nowhere",
        "expected 'default' or comma-separated CIDRs ('nowhere' is not an IPv4 CIDR like 10.0.0.0/8)",
    ),
    ("PPTP_DNS", "2", "expected true or false (also 1/0, yes/no, on/off)"),
    (
        "PPTP_INTERFACE",
        "a-very-long-interface",
        "expected an interface name of 1-15 letters, digits, '-', '_' or '.'",
    ),
    ("PPTP_INTERFACE", "eth/0", "expected an interface name of 1-15 letters, digits, '-', '_' or '.'"),
    ("PPTP_REORDER_WINDOW", "-1", "expected an integer between 0 and 4096"),
    ("PPTP_GRE_WINDOW", "0", "expected an integer between 1 and 2048"),
    ("PPTP_GRE_WINDOW", "4096", "expected an integer between 1 and 2048"),
    ("PPTP_REORDER_TIMEOUT", "0", "expected a number of seconds, more than 0 and at most 10"),
    ("PPTP_REORDER_TIMEOUT", "nan", "expected a number of seconds, more than 0 and at most 10"),
    ("PPTP_ECHO_INTERVAL", "0.5", "expected a number of seconds, at least 1 and at most 3600"),
    ("PPTP_ECHO_TIMEOUT", "x", "expected a number of seconds, at least 1 and at most 600"),
    ("PPTP_LCP_ECHO_INTERVAL", "0", "expected a number of seconds, at least 0.5 and at most 3600"),
    ("PPTP_LCP_ECHO_FAILURES", "0", "expected an integer between 1 and 100"),
    ("PPTP_KILL_SWITCH", "enabled", "expected true or false (also 1/0, yes/no, on/off)"),
    (
        "PPTP_ALLOW_SUBNETS",
        "10.0.0.0/33",
        "expected comma-separated IPv4 CIDRs ('10.0.0.0/33' is not an IPv4 CIDR like 10.0.0.0/8)",
    ),
    ("PPTP_HTTP", "localhost", "expected host:port (for example 127.0.0.1:9101 or [::1]:9101) or 'off'"),
    ("PPTP_HTTP", "1.2.3.4:70000", "expected host:port (for example 127.0.0.1:9101 or [::1]:9101) or 'off'"),
    (
        "PPTP_PCAP",
        "/nonexistent-dir/x.pcap",
        "expected a file in an existing directory (/nonexistent-dir does not exist)",
    ),
    ("PPTP_MAX_AUTH_FAILURES", "-3", "expected an integer between 0 and 1000"),
    ("PPTP_BACKOFF_INITIAL", "0", "expected a number of seconds, more than 0 and at most 3600"),
    ("PPTP_CONNECT_TIMEOUT", "-1", "expected a number of seconds, more than 0 and at most 600"),
    ("PPTP_LOG_LEVEL", "verbose", "expected one of debug, info, warning, error"),
    ("PPTP_LOG_FORMAT", "xml", "expected one of text, json"),
]


@pytest.mark.parametrize(("name", "value", "why"), CASES, ids=[f"{c[0]}={c[1]}" for c in CASES])
def test_each_problem_is_one_exact_line(name: str, value: str, why: str) -> None:
    assert problems_up(env={**BASE_ENV, name: value}) == [f"{name}={value!r}: {why}"]


def test_flag_problems_name_the_flag() -> None:
    assert problems_up({"mtu": "9000", "reorder_window": "many"}) == [
        f"--mtu='9000': {INTEGER_MTU}",
        "--reorder-window='many': expected an integer between 0 and 4096",
    ]


def test_all_problems_at_once_in_option_order() -> None:
    env = {**BASE_ENV, "PPTP_MTU": "9000", "PPTP_AUTH": "foo", "PPTP_LOG_FORMAT": "xml", "PPTP_DNS": "?"}
    lines = problems_up(env=env)
    assert [line.split("=", 1)[0] for line in lines] == [
        "PPTP_AUTH",
        "PPTP_DNS",
        "PPTP_MTU",
        "PPTP_LOG_FORMAT",
    ]


def test_cross_field_problems() -> None:
    assert problems_up(env={**BASE_ENV, "PPTP_AUTH": "pap,chap"}) == [
        "--mppe/PPTP_MPPE='require' with --auth/PPTP_AUTH='pap,chap': MPPE keys come from MS-CHAP; add "
        "mschapv2 (or mschap) to the auth list, or set the MPPE policy to optional"
    ]
    # optional MPPE with PAP is fine
    assert up(PPTP_AUTH="pap", PPTP_MPPE="optional").auth == (AuthMethod.PAP,)
    assert problems_up(env={**BASE_ENV, "PPTP_BACKOFF_INITIAL": "10", "PPTP_BACKOFF_MAX": "5"}) == [
        "--backoff-max/PPTP_BACKOFF_MAX=5: expected at least the initial backoff (10)"
    ]


def test_no_problem_line_ever_contains_the_password(tmp_path: Path) -> None:
    # The password placed everywhere a value could be echoed.
    env = {k: PASSWORD for k in ("PPTP_MTU", "PPTP_AUTH", "PPTP_ROUTES", "PPTP_HTTP", "PPTP_INTERFACE")}
    env |= {"PPTP_SERVER": "x", "PPTP_USER": "u", "PPTP_PASSWORD": "y" * 300}
    lines = problems_up(env=env)
    assert len(lines) == 6
    assert not any("y" * 20 in line for line in lines)
    f = tmp_path / "pw"
    f.write_text(PASSWORD + "\n\n")
    lines = _password_problem({"PPTP_PASSWORD_FILE": str(f)})
    assert lines and not any(PASSWORD in line for line in lines)


def test_long_values_are_shortened_in_messages() -> None:
    [line] = problems_up(env={**BASE_ENV, "PPTP_MTU": "9" * 500})
    assert len(line) < 200 and "..." in line


# -- unknown variables -------------------------------------------------------------------------------
def test_unknown_variables_suggest_the_closest_name() -> None:
    warnings = config.env_warnings(
        "up", {"PPTP_MTUU": "1", "PPTP_ALLOW_SUBNET": "x", "PPTP_LISTEN": "x", "HOME": "/", "PPTP_MTU": "1"}
    )
    assert warnings == [
        "unknown environment variable PPTP_ALLOW_SUBNET ignored; did you mean PPTP_ALLOW_SUBNETS?",
        "PPTP_LISTEN is not used by 'up' (it is read by: serve); ignored",
        "unknown environment variable PPTP_MTUU ignored; did you mean PPTP_MTU?",
    ]
    assert config.env_warnings("up", {"PPTP_ZZZZZZZZZZZ": "1"}) == [
        "unknown environment variable PPTP_ZZZZZZZZZZZ ignored"
    ]
    assert config.env_warnings("up", dict(BASE_ENV, PPTP_PASSWORD_FILE="x", PPTP_USER_FILE="y")) == []


def test_every_up_option_has_a_distinct_flag_and_env() -> None:
    flags = [o.flag for o in config.UP_OPTIONS]
    envs = [o.env for o in config.UP_OPTIONS]
    assert len(set(flags)) == len(flags) and len(set(envs)) == len(envs)
    assert all(e.startswith("PPTP_") for e in envs)
    assert "--password" not in flags and "PPTP_PASSWORD_FILE" in envs


# -- serve ---------------------------------------------------------------------------------------------
@pytest.fixture
def secrets_file(tmp_path: Path) -> Path:
    f = tmp_path / "chap-secrets"
    f.write_text('# users\nalice * "pass word" *\nbob pptpd s3cret 192.168.77.60\n')
    return f


def test_serve_defaults(secrets_file: Path) -> None:
    s = build_serve_settings({"secrets": str(secrets_file)}, {})
    assert s.listen == ("0.0.0.0", 1723) and s.local_ip == IPv4Address("192.168.77.1")
    assert s.local_ip not in s.pool and len(s.pool) == 90
    assert s.secrets == secrets_file and s.auth == (AuthMethod.MSCHAP_V2,) and s.mppe is MppePolicy.REQUIRE
    assert s.dns == () and s.test_reorder == 0.0 and s.http is None and s.max_clients == 16
    assert (s.echo_interval, s.echo_timeout, s.lcp_echo_interval, s.lcp_echo_failures) == (60, 15, 10, 3)


def test_serve_from_environment(secrets_file: Path) -> None:
    s = build_serve_settings(
        {},
        {
            "PPTP_SECRETS": str(secrets_file),
            "PPTP_LISTEN": "127.0.0.1:11723",
            "PPTP_LOCAL_IP": "10.9.0.1",
            "PPTP_POOL": "10.9.0.0/29",
            "PPTP_DNS": "1.1.1.1, 9.9.9.9",
            "PPTP_TEST_REORDER": "0.05",
            "PPTP_MPPE": "refuse",
            "PPTP_AUTH": "chap,pap",
            "PPTP_HTTP": "127.0.0.1:9102",
            "PPTP_ECHO_INTERVAL": "20",
            "PPTP_ECHO_TIMEOUT": "4",
            "PPTP_LCP_ECHO_INTERVAL": "1.5",
            "PPTP_LCP_ECHO_FAILURES": "5",
        },
    )
    assert (s.echo_interval, s.echo_timeout, s.lcp_echo_interval, s.lcp_echo_failures) == (20, 4, 1.5, 5)
    assert s.listen == ("127.0.0.1", 11723)
    # the CIDR's hosts minus the server's own address
    assert s.pool == tuple(IPv4Address(f"10.9.0.{i}") for i in range(2, 7))
    assert s.dns == (IPv4Address("1.1.1.1"), IPv4Address("9.9.9.9"))
    assert s.test_reorder == 0.05 and s.mppe is MppePolicy.REFUSE and s.http == ("127.0.0.1", 9102)


def test_serve_problems(tmp_path: Path, secrets_file: Path) -> None:
    with pytest.raises(ConfigError) as info:
        build_serve_settings({}, {"PPTP_TEST_REORDER": "2", "PPTP_LOCAL_IP": "10.0.0.300"})
    assert info.value.problems == [
        "PPTP_LOCAL_IP='10.0.0.300': expected an IPv4 address like 192.168.77.1",
        "--secrets / PPTP_SECRETS: required (path of the chap-secrets file)",
        "PPTP_TEST_REORDER='2': expected a fraction between 0 and 1 (0.01 = 1% of packets)",
    ]
    with pytest.raises(ConfigError) as info:
        build_serve_settings(
            {"secrets": str(tmp_path / "missing"), "pool": "192.168.77.1", "dns": "1.1.1"}, {}
        )
    assert info.value.problems == [
        "--pool/PPTP_POOL: holds only the server's own address 192.168.77.1 (--local-ip); give the clients "
        "other addresses",
        f"--secrets={str(tmp_path / 'missing')!r}: file not found (expected a chap-secrets file)",
        "--dns='1.1.1': '1.1.1' is not an IPv4 address; expected a comma list of addresses",
    ]


def test_serve_secrets_syntax_error_names_line_not_secret(tmp_path: Path) -> None:
    f = tmp_path / "chap-secrets"
    f.write_text('alice * "unterminated-secret-value *\n')
    with pytest.raises(ConfigError) as info:
        build_serve_settings({"secrets": str(f)}, {})
    [line] = info.value.problems
    assert line.startswith(f"--secrets: {f}:1") and "unterminated-secret-value" not in line


def test_serve_bad_pool() -> None:
    with pytest.raises(ConfigError) as info:
        build_serve_settings({"pool": "10.0.0.50-10.0.0.10"}, {"PPTP_SECRETS": "/dev/null"})
    assert info.value.problems[0].startswith("--pool='10.0.0.50-10.0.0.10': expected a range A-B, a CIDR")


# -- probe ---------------------------------------------------------------------------------------------
def test_probe_settings() -> None:
    s = build_probe_settings({"timeout": "4"}, {**BASE_ENV, "PPTP_AUTH": "mschap"})
    assert s.server == "vpn.example.com" and s.timeout == 4 and s.auth == (AuthMethod.MSCHAP_V1,)
    with pytest.raises(ConfigError) as info:
        build_probe_settings({}, {"PPTP_PROBE_TIMEOUT": "0"})
    assert (
        info.value.problems[-1]
        == "PPTP_PROBE_TIMEOUT='0': expected a number of seconds, more than 0 and at most 600"
    )


def test_direct_construction_gets_cli_defaults() -> None:
    s = config.UpSettings(server="h", user="u", password=Secret("p"))
    assert s.auth == (AuthMethod.MSCHAP_V2,) and s.mppe is MppePolicy.REQUIRE


def test_gre_window_reaches_the_call_set_up_of_both_roles(tmp_path: Path) -> None:
    """The window each end announces (Outgoing-Call-Request / -Reply) is the other's send window."""
    from sidecar.server.wiring import stack_factory
    from sidecar.stack import client_stack

    secrets = tmp_path / "chap-secrets"
    secrets.write_text("alice * pw *\n")
    assert build_up_settings({}, BASE_ENV).gre_window == config.DEFAULT_GRE_WINDOW_UP == 64
    serve_default = build_serve_settings({"secrets": str(secrets)}, {}).gre_window
    assert serve_default == config.DEFAULT_GRE_WINDOW_SERVE == 256
    up = build_up_settings({"gre_window": "100"}, BASE_ENV)
    serve = build_serve_settings({"secrets": str(secrets)}, {"PPTP_GRE_WINDOW": "300"})
    client, server = client_stack(up), stack_factory(serve)(None, lambda user: None)
    assert (client.control.config.window, server.control.config.window) == (100, 300)
    now = 1.0
    client.start(now)
    server.start(now)
    for _ in range(10):  # control messages both ways until the call is up
        for a, b in ((client, server), (server, client)):
            data = a.control_to_send()
            if data:
                b.control_received(data, now)
    assert client.peer_window == 300 and server.peer_window == 100
