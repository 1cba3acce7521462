"""Pure parts of the kernel wing: the kill-switch script, resolv.conf rendering/restoring, the undo
journal. (The namespace behaviour is in tests/netns.)"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from sidecar.kernel import dns, firewall
from sidecar.kernel.netconf import UndoJournal

SERVER = IPv4Address("203.0.113.7")


def rules(**kw: object) -> firewall.KillSwitchRules:
    return firewall.KillSwitchRules(server=SERVER, interface="pptp0", **kw)  # type: ignore[arg-type]


def test_kill_switch_script_is_one_atomic_replace() -> None:
    script = firewall.render(rules())
    lines = script.splitlines()
    # create + delete + define: replaces an old copy in one transaction, works when absent
    assert lines[1:4] == [
        "table inet pptp_sidecar",
        "delete table inet pptp_sidecar",
        "table inet pptp_sidecar {",
    ]
    assert script.count("policy drop;") == 2  # output and input, IPv4 and IPv6 (inet)


def test_kill_switch_allows_exactly_the_listed_traffic() -> None:
    script = firewall.render(
        rules(allow_subnets=(IPv4Network("10.0.0.0/8"), IPv4Network("192.168.1.0/24")), http_port=8000)
    )
    output = script.split("chain output")[1].split("chain input")[0]
    inp = script.split("chain input")[1]
    assert '"pptp0"' in output and 'oifname "lo" accept' in output
    assert f"ip daddr {SERVER} tcp dport 1723 accept" in output
    assert f"ip daddr {SERVER} ip protocol gre accept" in output
    assert "ip daddr { 10.0.0.0/8, 192.168.1.0/24 } accept" in output
    assert "ct state established,related ct direction reply accept" in output
    assert "ct state established,related accept" in inp and 'iifname "lo" accept' in inp
    assert f"ip saddr {SERVER} tcp sport 1723 accept" in inp and f"ip saddr {SERVER} ip protocol gre" in inp
    assert "tcp dport 8000 accept" in inp
    assert "8000" not in output


def test_kill_switch_without_http_or_subnets_has_no_such_rules() -> None:
    script = firewall.render(rules(control_port=1800))
    assert "tcp dport 1800" in script and "1723" not in script
    assert "dport 8000" not in script and "ip daddr {" not in script


@pytest.mark.parametrize("name", ["", "a" * 16, 'tun"0', "tun 0", "tun0;drop"])
def test_kill_switch_refuses_names_that_would_inject_rules(name: str) -> None:
    with pytest.raises(ValueError, match="bad interface name"):
        firewall.KillSwitchRules(server=SERVER, interface=name)


def test_blocked_counts_parses_nft_listing() -> None:
    listing = [
        '\t\tcounter packets 12 bytes 900 drop comment "kill switch: output blocked"',
        '\t\tcounter packets 3 bytes 120 drop comment "kill switch: input blocked"',
    ]
    assert firewall.blocked_counts(listing) == {"output": 12, "input": 3}


def test_resolv_conf_render_keeps_search_and_options() -> None:
    original = "nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local\noptions ndots:5\n"
    text = dns.render([IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2")], original, interface="pptp0")
    lines = text.splitlines()
    assert lines[1:3] == ["nameserver 10.0.0.1", "nameserver 10.0.0.2"]
    assert "nameserver 10.96.0.10" not in text
    assert "search default.svc.cluster.local svc.cluster.local" in lines and "options ndots:5" in lines


def test_resolv_conf_is_rewritten_in_place_and_restored(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    original = b"# managed\nnameserver 192.0.2.53\nsearch example.org\n"
    path.write_bytes(original)
    inode = path.stat().st_ino
    journal = UndoJournal()
    assert dns.ResolvConf(path).apply([IPv4Address("10.0.0.1")], journal)
    assert "nameserver 10.0.0.1" in path.read_text() and "192.0.2.53" not in path.read_text()
    assert path.stat().st_ino == inode  # in place: bind mounts survive
    assert journal.unwind() == []
    assert path.read_bytes() == original


def test_resolv_conf_created_by_us_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    journal = UndoJournal()
    dns.ResolvConf(path).apply([IPv4Address("10.0.0.1")], journal)
    assert path.exists()
    journal.unwind()
    assert not path.exists()


def test_resolv_conf_untouched_without_servers(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 192.0.2.53\n")
    journal = UndoJournal()
    assert not dns.ResolvConf(path).apply([], journal)
    assert len(journal) == 0 and path.read_text() == "nameserver 192.0.2.53\n"


def test_journal_unwinds_newest_first_and_survives_failures() -> None:
    done: list[str] = []
    journal = UndoJournal()
    journal.push("a", lambda: done.append("a"))

    def boom() -> None:
        raise OSError("device busy")

    journal.push("b", boom)
    journal.push("c", lambda: done.append("c"))
    failures = journal.unwind()
    assert done == ["c", "a"]
    assert failures == ["undo b: device busy"]
    assert len(journal) == 0 and journal.unwind() == []
