"""The TUN device (pytun-pmd3), both roles.

Rules: bytes in, bytes out; no protocol logic. pytun-pmd3 creates the device (``IFF_TUN|IFF_NO_PI``:
raw IP packets, no 4-byte packet-information header), sets its MTU and brings it up; it cannot set
IPv4 addresses, so :mod:`sidecar.kernel.netconf` does that through netlink. The fd is non-blocking:
the caller awaits :meth:`TunDevice.wait_readable` once, then :meth:`TunDevice.read_batch` drains the
queue until EAGAIN.

The device is not persistent: closing the fd removes it, and with it every address and route the
kernel attached to it.
"""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import asdict, dataclass

import trio
from pytun_pmd3 import TunTapDevice

IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFNAMSIZ = 16


class TunError(OSError):
    """The TUN device could not be created or configured; the message says why and what to do."""


@dataclass
class TunCounters:
    rx_packets: int = 0  # read from the device (apps -> tunnel)
    rx_bytes: int = 0
    tx_packets: int = 0  # written to the device (tunnel -> apps)
    tx_bytes: int = 0
    tx_dropped: int = 0  # write refused (EAGAIN/EINVAL/EIO): dropped

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class TunDevice:
    def __init__(self, name: str, mtu: int, *, up: bool = True) -> None:
        self._mtu = 0
        if not name or len(name.encode()) >= IFNAMSIZ or "/" in name or " " in name:
            raise TunError(errno.EINVAL, f"bad interface name {name!r}: 1-15 characters, no '/' or space")
        try:
            self._dev = TunTapDevice(name=name, flags=IFF_TUN | IFF_NO_PI)
        except OSError as exc:
            hint = {
                errno.ENOENT: "is /dev/net/tun present? (container: --device /dev/net/tun)",
                errno.EPERM: "needs CAP_NET_ADMIN (container: --cap-add NET_ADMIN)",
                errno.EACCES: "needs CAP_NET_ADMIN and access to /dev/net/tun",
                errno.EBUSY: f"interface {name!r} exists and is in use: pick another --interface",
            }.get(exc.errno or 0, "check /dev/net/tun and CAP_NET_ADMIN")
            raise TunError(exc.errno, f"cannot create TUN device {name!r}: {exc.strerror}; {hint}") from exc
        try:
            self.name: str = self._dev.name
            self._fd: int = self._dev.fileno()
            os.set_blocking(self._fd, False)
            self.set_mtu(mtu)
            if up:
                self._dev.up()
        except BaseException:
            self._dev.close()
            raise
        self.counters = TunCounters()
        self._bufsize = 65535

    @property
    def mtu(self) -> int:
        """The MTU this object set (pytun's getter would ask the *calling thread's* namespace)."""
        return self._mtu

    def set_mtu(self, mtu: int) -> None:
        """Set the MTU. pytun does it with an ioctl on a fresh socket, i.e. in the calling thread's
        network namespace: call it where the device was created (or use NetConf.set_mtu)."""
        if not 68 <= mtu <= 65535:
            raise TunError(errno.EINVAL, f"bad MTU {mtu}: IPv4 needs 68..65535")
        try:
            self._dev.mtu = mtu
        except OSError as exc:
            raise TunError(exc.errno, f"cannot set MTU {mtu} on {self.name}: {exc.strerror}") from exc
        self._mtu = mtu

    @property
    def ifindex(self) -> int:
        return socket.if_nametoindex(self.name)

    def fileno(self) -> int:
        return self._fd

    async def wait_readable(self) -> None:
        await trio.lowlevel.wait_readable(self._fd)

    def read_batch(self, max: int = 64) -> list[bytes]:
        """IP packets the apps sent into the tunnel; drains until EAGAIN or ``max``."""
        out: list[bytes] = []
        read, fd, size, counters = os.read, self._fd, self._bufsize, self.counters
        while len(out) < max:
            try:
                packet = read(fd, size)
            except (BlockingIOError, InterruptedError):
                break
            if not packet:
                break
            counters.rx_packets += 1
            counters.rx_bytes += len(packet)
            out.append(packet)
        return out

    def write(self, packet: bytes | bytearray | memoryview) -> bool:
        """Hand one IP packet to the kernel (tunnel -> apps). False = dropped (counted)."""
        try:
            n = os.write(self._fd, packet)
        except (BlockingIOError, InterruptedError):
            self.counters.tx_dropped += 1
            return False
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.EIO, errno.EMSGSIZE, errno.ENOBUFS):
                self.counters.tx_dropped += 1  # not an IP packet the kernel accepts
                return False
            raise
        self.counters.tx_packets += 1
        self.counters.tx_bytes += n
        return True

    def close(self) -> None:
        self._dev.close()

    def __enter__(self) -> TunDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TunDevice({self.name!r}, fd={self._fd})"
