"""The harness's own logic that needs no VM: apt source discovery, requirement checks (the skip
reasons), scenario parsing and argument validation."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.interop import vm as vmmod
from tests.interop.vm import PAP, PptpdConfig, Vm

DEB822 = """\
Types: deb
# a comment line
URIs: http://mirror.invalid/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb deb-src
URIs: http://mirror.invalid/debian-security
Suites: bookworm-security
Components: main

Types: deb
URIs: http://mirror.invalid/disabled
Suites: bookworm
Components: main
Enabled: no

Types: deb
URIs: http://third-party.invalid/node
Suites: nodistro
Components: main

Types: deb-src
URIs: http://mirror.invalid/sources-only
Suites: bookworm
Components: main
"""

ONE_LINE = """\
deb [arch=amd64 signed-by=/k.gpg] http://mirror.invalid/old bookworm main  # trailing comment
# deb http://mirror.invalid/commented bookworm main
deb http://third-party.invalid/apt cloud-sdk-bookworm main
deb http://mirror.invalid/other trixie main
"""


def test_apt_sources_keeps_only_enabled_binary_entries_of_the_suite(tmp_path: Path) -> None:
    sources = tmp_path / "debian.sources"
    sources.write_text(DEB822)
    one_line = tmp_path / "extra.list"
    one_line.write_text(ONE_LINE)
    got = vmmod.apt_sources("bookworm", lists=[one_line], deb822=[sources])
    assert got == [
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
        "http://mirror.invalid/debian bookworm main contrib",
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
        "http://mirror.invalid/debian bookworm-updates main contrib",
        "deb http://mirror.invalid/debian-security bookworm-security main",
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror.invalid/old bookworm main",
    ]


def test_apt_sources_of_this_machine_are_one_line_entries() -> None:
    for line in vmmod.apt_sources():
        assert line.startswith("deb ") and " bookworm" in line


def test_apt_options_forward_only_fetch_settings() -> None:
    for line in vmmod.apt_options():
        assert line.startswith("Acquire::") and line.endswith(";")


def test_missing_root_is_the_skip_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    why = vmmod.missing_requirements()
    assert why is not None and "root" in why


def test_missing_packages_are_named_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(os.path, "exists", lambda p: True)
    monkeypatch.setattr(vmmod, "uml_binary", lambda: None)
    monkeypatch.setattr(shutil, "which", lambda tool: None if tool == "mmdebstrap" else "/x")
    why = vmmod.missing_requirements()
    assert why is not None
    assert "user-mode-linux" in why and "mmdebstrap" in why
    assert "apt-get install" in why and "scripts/setup.sh" in why
    assert "cpio" not in why


def test_scenarios_by_name_tuple_or_config() -> None:
    assert PptpdConfig.of("pap") == PptpdConfig(ppp=PAP) == PptpdConfig.of(PAP)
    assert PptpdConfig.of(None) == PptpdConfig()
    with pytest.raises(ValueError, match=r"unknown pptpd scenario 'papp'.*'pap'"):
        PptpdConfig.of("papp")
    text = PptpdConfig(ppp=PAP, pptpd=("stimeout 5",))
    assert text.ppp_options_text().splitlines()[-1] == "require-pap"
    assert "logfile /host/log/pppd.log" in text.ppp_options_text()
    assert text.pptpd_conf_text().splitlines()[-1] == "stimeout 5"


def test_bad_arguments_are_refused_before_reaching_the_guest() -> None:
    vm = Vm(image=Path("/nonexistent"))  # not booted: a guest command would raise VmError
    with pytest.raises(ValueError, match="direction"):
        vm.netem("delay 10ms", direction="sideways")
    with pytest.raises(ValueError, match="characters"):
        vm.netem("delay 10ms; reboot")
    with pytest.raises(ValueError, match="signal"):
        vm.kill_pptpd("TERM; reboot")
    with pytest.raises(vmmod.VmError, match="not running"):
        vm.guest_exec("true")
