"""The raw GRE socket (IP protocol 47), both roles.

Rules: this file moves bytes between the kernel and the caller. It knows the IPv4 header (to strip
it) and nothing of GRE or PPP. It never awaits per packet: the caller awaits :meth:`wait_readable`
once, then :meth:`recv_batch` drains the socket until EAGAIN (or ``max`` packets).

Theory of operation:

- Client (``remote`` given): the socket is ``connect()``-ed to the server, so the kernel delivers only
  GRE from the server (the kernel's raw-socket match compares the source with the connected
  address) and :meth:`send` needs no destination. The source is checked again here, and anything
  from another host is dropped and counted in ``counters.rx_foreign``; ``connect=False`` keeps the
  socket unconnected (every GRE packet of the namespace is then filtered here, and counted).
- Server (``remote=None``): unconnected; the batch carries every source, the caller demultiplexes by
  (source, call ID) and sends with ``dest``. The ``(address text, 0)`` tuple ``sendto`` needs is
  made once per destination and kept (formatting an ``IPv4Address`` per packet cost ~0.6 us).
- Receive on a raw IPv4 socket includes the IP header; it is stripped using its IHL field.
- Sending lets the kernel write the IP header. ``IP_MTU_DISCOVER=IP_PMTUDISC_DO`` sets DF and makes
  the kernel refuse (EMSGSIZE, counted in ``tx_too_big``) a packet bigger than the path MTU instead of
  fragmenting GRE. A full send buffer (EAGAIN) drops the packet (counted): GRE is a datagram service.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from ipaddress import IPv4Address

import trio

IPPROTO_GRE = 47
_IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
_IP_PMTUDISC_DO = getattr(socket, "IP_PMTUDISC_DO", 2)
_BUFSIZE = 65535


_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
# errno values by which the kernel reports ICMP errors (unreachable, bad parameter) on a raw socket
_TRANSIENT_ICMP = frozenset(
    (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENOPROTOOPT, errno.EPROTO)
)
# ... and on send also a full queue, or the kill switch / a firewall dropping the packet (EPERM)
_TRANSIENT_SEND = _TRANSIENT_ICMP | {errno.ENOBUFS, errno.EPERM, errno.EACCES}


@dataclass
class GreSocketCounters:
    rx_packets: int = 0
    rx_bytes: int = 0
    rx_foreign: int = 0  # from a host other than the server (client role): dropped
    rx_malformed: int = 0  # shorter than its own IP header / not IPv4: dropped
    icmp_errors: int = 0  # an ICMP error the kernel reported on the socket (transient)
    tx_packets: int = 0
    tx_bytes: int = 0
    tx_dropped: int = 0  # send buffer full or a transient error
    tx_too_big: int = 0  # bigger than the path MTU (DF): dropped, never fragmented

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class GreSocketError(OSError):
    """The raw GRE socket cannot be opened; ``strerror`` names the cause and the fix."""

    def __str__(self) -> str:
        return f"cannot open the raw GRE socket: {self.strerror}"


class GreSocket:
    """A non-blocking raw GRE socket. ``remote`` = the server (client role) or None (server role)."""

    def __init__(
        self,
        remote: IPv4Address | None,
        *,
        connect: bool = True,
        bind: IPv4Address | None = None,
        rcvbuf: int = 4 * 1024 * 1024,
        sndbuf: int = 1024 * 1024,
    ) -> None:
        self.remote = remote
        self._remote_packed = remote.packed if remote is not None else None
        self.counters = GreSocketCounters()
        self._sources: dict[bytes, IPv4Address] = {}
        self._dests: dict[IPv4Address, tuple[str, int]] = {}  # dest -> sendto's address, made once
        if remote is not None:
            self._sources[remote.packed] = remote
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_GRE)
        except PermissionError as exc:  # EPERM: raw sockets need CAP_NET_RAW
            raise GreSocketError(
                exc.errno, f"{exc.strerror}; needs CAP_NET_RAW (container: --cap-add NET_RAW)"
            ) from exc
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_DO)
            for force, opt, size in (
                (_SO_RCVBUFFORCE, socket.SO_RCVBUF, rcvbuf),
                (_SO_SNDBUFFORCE, socket.SO_SNDBUF, sndbuf),
            ):
                # The FORCE variant (CAP_NET_ADMIN, which we hold) passes net.core.rmem_max, whose
                # 208 KiB default overflows under bursts; else the capped size, else the default.
                try:
                    sock.setsockopt(socket.SOL_SOCKET, force, size)
                except OSError:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, opt, size)
            if bind is not None:
                sock.bind((str(bind), 0))
            self._connected = remote is not None and connect
            if self._connected:
                sock.connect((str(remote), 0))
        except BaseException:
            sock.close()
            raise
        self._sock = sock

    # -- receive ---------------------------------------------------------------------------------
    async def wait_readable(self) -> None:
        await trio.lowlevel.wait_readable(self._sock)

    def recv_batch(self, max: int = 64) -> list[tuple[IPv4Address, bytes]]:
        """Drain up to ``max`` packets without blocking: ``(source, GRE packet)`` pairs, IP header
        stripped. Empty when nothing is queued."""
        out: list[tuple[IPv4Address, bytes]] = []
        recv, counters, remote, sources = self._sock.recv, self.counters, self._remote_packed, self._sources
        while len(out) < max:
            try:
                data = recv(_BUFSIZE)  # a fresh bytes: slicing it below is the one payload copy
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                # ICMP errors surface on raw sockets as errno values: transient, the next read goes
                # on. ENOPROTOOPT is a protocol-unreachable from a peer whose own GRE socket
                # overflowed (seen under UDP bursts); it must not end the session.
                if exc.errno in _TRANSIENT_ICMP:
                    counters.icmp_errors += 1
                    continue
                raise
            n = len(data)
            if n < 20 or (data[0] >> 4) != 4:
                counters.rx_malformed += 1
                continue
            ihl = (data[0] & 0x0F) * 4
            if ihl < 20 or n < ihl:
                counters.rx_malformed += 1
                continue
            src = data[12:16]
            if remote is not None and src != remote:
                counters.rx_foreign += 1
                continue
            source = sources.get(src)
            if source is None:
                source = IPv4Address(src)
                if len(sources) < 4096:
                    sources[src] = source
            counters.rx_packets += 1
            counters.rx_bytes += n - ihl
            out.append((source, data[ihl:]))
        return out

    # -- send ------------------------------------------------------------------------------------
    def send(self, packet: bytes | bytearray | memoryview, dest: IPv4Address | None = None) -> bool:
        """Send one GRE packet (the kernel adds the IP header). False = dropped (counted)."""
        try:
            if dest is None:
                if self._connected:
                    self._sock.send(packet)
                elif self.remote is not None:
                    self._sock.sendto(packet, self._address(self.remote))
                else:
                    raise ValueError("GreSocket in server role: send() needs dest")
            else:
                self._sock.sendto(packet, self._address(dest))
        except OSError as exc:
            self._send_failed(exc)
            return False
        self.counters.tx_packets += 1
        self.counters.tx_bytes += len(packet)
        return True

    def _send_failed(self, exc: OSError) -> None:
        """A send that raised: dropped and counted when transient, else re-raised."""
        if isinstance(exc, (BlockingIOError, InterruptedError)) or exc.errno in _TRANSIENT_SEND:
            # a full buffer, transient, or a firewall (EPERM from an nft drop in OUTPUT)
            self.counters.tx_dropped += 1
        elif exc.errno == errno.EMSGSIZE:
            self.counters.tx_too_big += 1
        else:
            raise exc

    def _address(self, dest: IPv4Address) -> tuple[str, int]:
        addr = self._dests.get(dest)
        if addr is None:
            addr = (str(dest), 0)
            if len(self._dests) < 4096:  # bounded like the source cache: one entry per client
                self._dests[dest] = addr
        return addr

    def send_batch(self, packets: Sequence[bytes], dest: IPv4Address | None = None) -> int:
        """Send several packets, each as :meth:`send` does; returns how many went out. The
        destination's address is resolved once per batch, and counters move once per batch."""
        sock = self._sock
        address = None
        if dest is not None:
            address = self._address(dest)
        elif not self._connected:
            if self.remote is None:
                raise ValueError("GreSocket in server role: send_batch() needs dest")
            address = self._address(self.remote)
        sent = size = 0
        for packet in packets:
            try:
                if address is None:
                    sock.send(packet)
                else:
                    sock.sendto(packet, address)
            except OSError as exc:
                self._send_failed(exc)
                continue
            sent += 1
            size += len(packet)
        counters = self.counters
        counters.tx_packets += sent
        counters.tx_bytes += size
        return sent

    # -- misc ------------------------------------------------------------------------------------
    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> GreSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        role = f"client to {self.remote}" if self.remote is not None else "server"
        return f"GreSocket({role}, fd={self._sock.fileno()})"
