"""The PPTP control connection's TCP socket (RFC 2637 §2: TCP port 1723), client side.

Rules: connect, resolve, and nothing else; the bytes on the stream belong to
:class:`sidecar.proto.pptp.ControlConnection`. IPv4 only (GRE is carried over IPv4 here).
"""

from __future__ import annotations

import socket
from ipaddress import IPv4Address

import trio

PPTP_PORT = 1723


class ControlConnectError(OSError):
    """The TCP control connection could not be opened; the message names the server and the cause."""


def split_server(server: str, default_port: int = PPTP_PORT) -> tuple[str, int]:
    """``"vpn.example.com"`` / ``"203.0.113.1:1723"`` -> (host, port)."""
    host, sep, port = server.strip().rpartition(":")
    if not sep or not port.isdigit():
        return server.strip(), default_port
    number = int(port)
    if not 0 < number < 65536:
        raise ValueError(f"bad port in server {server!r}: 1..65535")
    return host, number


async def resolve_ipv4(host: str) -> IPv4Address:
    """The first IPv4 address of ``host`` (a literal is returned as is)."""
    try:
        return IPv4Address(host)
    except ValueError:
        pass
    try:
        infos = await trio.socket.getaddrinfo(host, None, family=socket.AF_INET, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ControlConnectError(f"cannot resolve PPTP server {host!r}: {exc}") from exc
    for _family, _type, _proto, _canon, sockaddr in infos:
        return IPv4Address(sockaddr[0])
    raise ControlConnectError(f"PPTP server {host!r} has no IPv4 address")


async def connect_control(
    server: IPv4Address, port: int = PPTP_PORT, *, timeout: float = 10.0
) -> trio.SocketStream:
    """Open the TCP control connection, or raise :class:`ControlConnectError` within ``timeout``."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with trio.move_on_after(timeout) as scope:
            await sock.connect((str(server), port))
        if scope.cancelled_caught:
            raise ControlConnectError(f"connect to PPTP server {server}:{port} timed out after {timeout:g} s")
    except ControlConnectError:
        sock.close()
        raise
    except OSError as exc:
        sock.close()
        raise ControlConnectError(
            f"cannot connect to PPTP server {server}:{port}: {exc.strerror or exc}"
        ) from exc
    except BaseException:
        sock.close()
        raise
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return trio.SocketStream(sock)
