import subprocess
import sys

from sidecar import __version__


def test_version_command_prints_the_package_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sidecar", "version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"pptp-sidecar {__version__}"


def test_help_lists_commands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sidecar", "--help"], capture_output=True, text=True, check=True
    )
    assert "version" in out.stdout
