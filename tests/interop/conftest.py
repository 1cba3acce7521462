"""Fixtures for the interop tests against Debian's pptpd in a user-mode-linux VM (see vm.py and
README.md here). Everything under tests/interop/ is marked ``interop``; the tests skip, saying why
and how to fix it, when root or the Debian packages are missing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop import vm as vmmod
from tests.interop.vm import PptpdConfig, Vm

_HERE = Path(__file__).resolve().parent
_TIMINGS: dict[str, float] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "pptpd(config): server scenario for the `pptpd` fixture: a PptpdConfig, a tuple of pppd "
        "option lines, or a preset name from tests.interop.vm.PRESETS",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.interop)


@pytest.fixture(scope="session")
def pptpd_image() -> Path:
    """The VM image (built on first use, ~20-60 s; cached by a hash of build_image.sh)."""
    why = vmmod.missing_requirements()
    if why is not None:
        pytest.skip(why)
    vmmod.cleanup_leftovers()
    t0 = time.monotonic()
    image = vmmod.ensure_image()
    _TIMINGS["image"] = time.monotonic() - t0
    return image


@pytest.fixture(scope="session")
def pptpd_vm(pptpd_image: Path) -> Iterator[Vm]:
    """One booted VM for the whole session (default scenario MSCHAPV2_MPPE128). Prefer the
    per-test ``pptpd`` fixture, which resets it; use this one directly only for read-only checks."""
    vm = Vm.boot(pptpd_image)
    _TIMINGS["boot"] = vm.boot_seconds
    try:
        yield vm
    finally:
        vm.stop()


@pytest.fixture
def pptpd(request: pytest.FixtureRequest, pptpd_vm: Vm) -> Vm:
    """The session VM reset for this test: no calls, no netem, empty logs, and the scenario from
    ``@pytest.mark.pptpd(...)`` (or ``request.param`` with indirect parametrization) active."""
    marker = request.node.get_closest_marker("pptpd")
    spec = getattr(request, "param", None)
    if spec is None and marker is not None:
        spec = marker.args[0] if marker.args else None
    if not pptpd_vm.alive():
        pytest.fail(f"the pptpd VM died earlier in this session; see {pptpd_vm.console_log}")
    pptpd_vm.reset(PptpdConfig.of(spec))
    return pptpd_vm


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _TIMINGS:
        parts = [f"{k} {v:.1f} s" for k, v in _TIMINGS.items()]
        terminalreporter.write_line(f"pptpd VM: {', '.join(parts)}")
