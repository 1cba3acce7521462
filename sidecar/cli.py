"""Command line (typer). Thin: parse, validate through :mod:`sidecar.config`, hand over."""

from __future__ import annotations

import typer

from sidecar import __version__

app = typer.Typer(
    name="sidecar",
    help="Userspace PPTP VPN client that runs as a container sidecar (no pppd, no /dev/ppp).",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Userspace PPTP VPN client that runs as a container sidecar."""


@app.command()
def version() -> None:
    """Print the version and exit."""
    typer.echo(f"pptp-sidecar {__version__}")


def main() -> None:
    app()
