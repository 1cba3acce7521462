"""chap-secrets parser: the pppd format as pptpd setups write it, with clear errors."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.server.secrets import SecretsError, SecretsTable, fixed_addresses, parse_secrets

SAMPLE = """\
# Secrets for authentication using CHAP
# client        server  secret                  IP addresses
alice           pptpd   "correct horse battery" *
bob             *       s3cret                  10.0.0.50
"carol smith"   pptpd   'it''s'                 10.0.0.0/28
*               pptpd   anyone-pw
dave            other   nope                    *
eve   pptpd   pa#ss   # a trailing comment
"""


def table(text: str = SAMPLE, name: str = "pptpd") -> SecretsTable:
    return SecretsTable(parse_secrets(text, "/etc/ppp/chap-secrets"), name, "/etc/ppp/chap-secrets")


def test_sample_entries() -> None:
    entries = parse_secrets(SAMPLE, "x")
    assert [(e.client, e.server, e.line) for e in entries] == [
        ("alice", "pptpd", 3),
        ("bob", "*", 4),
        ("carol smith", "pptpd", 5),
        ("*", "pptpd", 6),
        ("dave", "other", 7),
        ("eve", "pptpd", 8),
    ]
    assert entries[0].secret.reveal() == "correct horse battery"
    assert entries[0].addresses == ()
    assert entries[1].fixed_address == IPv4Address("10.0.0.50")
    assert entries[2].secret.reveal() == "its"  # adjacent quoted parts join
    assert entries[2].addresses == (IPv4Network("10.0.0.0/28"),)
    assert entries[2].fixed_address is None
    assert entries[3].addresses == ()
    assert entries[5].secret.reveal() == "pa#ss"  # '#' inside a word is not a comment


def test_lookup_prefers_exact_matches() -> None:
    t = table()
    alice = t.lookup("alice")
    assert alice is not None and alice.reveal() == "correct horse battery"
    bob = t.lookup("bob")
    assert bob is not None and bob.reveal() == "s3cret"
    # unknown user falls back to the wildcard client entry for our server
    anyone = t.lookup("zed")
    assert anyone is not None and anyone.reveal() == "anyone-pw"
    # dave's only entry is for another server: the wildcard client entry applies instead
    dave = t.find("dave")
    assert dave is not None and dave.client == "*"
    assert [e.client for e in t.unused_entries()] == ["dave"]


def test_lookup_without_wildcard_client() -> None:
    t = table("alice pptpd pw *\n", name="pptpd")
    assert t.lookup("mallory") is None
    assert table("alice pptpd pw *\n", name="elsewhere").lookup("alice") is None


def test_exact_server_beats_wildcard_server() -> None:
    t = table("alice * first\nalice pptpd second\n")
    secret = t.lookup("alice")
    assert secret is not None and secret.reveal() == "second"


def test_escapes_and_continuation() -> None:
    entries = parse_secrets('a\\ b srv "x\\"y\\\\z\\tq" \\\n  10.1.2.3\n', "f")
    assert entries[0].client == "a b"
    assert entries[0].secret.reveal() == 'x"y\\z\tq'
    assert entries[0].fixed_address == IPv4Address("10.1.2.3")


def test_fixed_addresses_only_for_named_clients() -> None:
    entries = parse_secrets("bob * pw 10.0.0.50\n* * pw 10.0.0.60\n", "f")
    assert fixed_addresses(entries) == {IPv4Address("10.0.0.50"): "bob"}


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("alice\n", "f:1: entry for client 'alice' has no server and secret"),
        ("\n\nalice pptpd\n", "f:3: entry for client 'alice' has no secret"),
        ('alice pptpd "unterminated\n', 'f:1:13: quote " opened here is not closed'),
        ("alice pptpd 'x", "f:1:13: quote ' is never closed"),
        ("alice pptpd pw host.example\n", "f:1:16: 'host.example' is not an IPv4 address"),
        ("alice pptpd pw 10.0.0.300\n", "f:1:16: '10.0.0.300' is not an IPv4 address"),
        ("alice pptpd pw * 10.0.0.1\n", "f:1:16: * (any address) cannot be combined"),
        ("alice pptpd pw -10.0.0.1\n", "f:1:16: address exclusions"),
        ('alice "" pw\n', "f:1:7: the server name is empty"),
        ("alice pptpd pw \\", "backslash at the end of the file"),
    ],
)
def test_errors_name_file_line_and_problem(text: str, expect: str) -> None:
    with pytest.raises(SecretsError) as info:
        parse_secrets(text, "f")
    assert expect in str(info.value)


def test_errors_never_show_the_secret() -> None:
    with pytest.raises(SecretsError) as info:
        parse_secrets('alice pptpd "hunter2 secret 10.0.0.1\n', "f")
    assert "hunter2" not in str(info.value)
    entries = parse_secrets("alice pptpd hunter2 *\n", "f")
    assert "hunter2" not in repr(entries)
    assert "hunter2" not in repr(table("alice pptpd hunter2 *\n"))


def test_load_names_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(SecretsError, match=f"{missing}: secrets file not found"):
        SecretsTable.load(missing, "pptpd")
    good = tmp_path / "chap-secrets"
    good.write_text("alice pptpd pw *\n")
    t = SecretsTable.load(good, "pptpd")
    assert len(t) == 1 and t.source == str(good)
    bad = tmp_path / "bad"
    bad.write_text("ok pptpd pw *\nbroken\n")
    with pytest.raises(SecretsError, match=f"{bad}:2: entry for client 'broken'"):
        SecretsTable.load(bad, "pptpd")


# --- property: any field survives quoting the way an operator would write it -------------------

field_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\x00")
    | st.sampled_from([" ", "\t", "#", '"', "'", "\\", "*"]),
    min_size=1,
    max_size=30,
)


def quote_double(value: str) -> str:
    """How an operator escapes a field by hand: backslash before \\ and ", then wrap in quotes."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\t", "\\t") + '"'


def quote_single(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'").replace("\t", "\\t") + "'"


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.tuples(field_text, field_text, field_text, st.booleans()), min_size=1, max_size=5),
    comment=st.booleans(),
)
def test_quoted_fields_round_trip(rows: list[tuple[str, str, str, bool]], comment: bool) -> None:
    lines = []
    for client, server, secret, single in rows:
        q = quote_single if single else quote_double
        line = f"{q(client)}\t{q(server)}  {q(secret)} *"
        if comment:
            line += "   # note: 'quoted' \"stuff\" \\"
        lines.append(line)
        if comment:
            lines.append("# " + secret)  # a whole-line comment is skipped whatever it holds
    entries = parse_secrets("\n".join(lines) + "\n", "f")
    assert [(e.client, e.server, e.secret.reveal()) for e in entries] == [(c, s, p) for c, s, p, _ in rows]
    assert [e.line for e in entries] == [1 + i * (2 if comment else 1) for i in range(len(rows))]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_parses_or_raises_secrets_error(text: str) -> None:
    try:
        parse_secrets(text, "f")
    except SecretsError as exc:
        assert str(exc).startswith("f:")
