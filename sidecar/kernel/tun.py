"""The TUN device (pytun-pmd3), both roles.

Rules: bytes in, bytes out; no protocol logic. pytun-pmd3 creates the device (``IFF_TUN|IFF_NO_PI``:
raw IP packets, no 4-byte packet-information header), sets its MTU and brings it up; it cannot set
IPv4 addresses, so :mod:`sidecar.kernel.netconf` does that through netlink. The fd is non-blocking:
the caller awaits :meth:`TunDevice.wait_readable` once, then :meth:`TunDevice.read_batch` drains the
queue until EAGAIN.

The device is not persistent: closing the fd removes it, and with it every address and route the
kernel attached to it.

No IPv6 on the device (the sidecar negotiates no IPV6CP for it), decided *before* it comes up: at
link-up the kernel would give the device a link-local address and, with no duplicate-address
detection on a NOARP device, send a Router Solicitation into the tunnel at once. ``disable_ipv6``
through /proc/sys where it is writable; where it is not (a container's read-only /proc/sys),
netlink: no link-local address generated (``IFLA_INET6_ADDR_GEN_MODE`` none), which leaves the
kernel nothing to send from.

Offload (``offload=True``, see docs/offload.md): the device is opened with ``IFF_VNET_HDR`` and
``TUNSETOFFLOAD(TUN_F_CSUM|TUN_F_TSO4|TUN_F_TSO6)``, so the kernel hands us TCP super-packets of
up to 64 KB and accepts them from us; every read and write then starts with a 10-byte
``virtio_net_hdr`` (little-endian, ``TUNSETVNETLE``). :meth:`TunDevice.read_batch` still returns
ordinary IP packets (:func:`sidecar.proto.offload.segment`; what does not fit ``max`` waits for
the next call), and :meth:`TunDevice.write_batch` coalesces the in-order TCP segments of a batch
(:class:`sidecar.proto.offload.Coalescer`). If any step fails the device falls back to the plain
mode, with one log line saying why.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from ipaddress import IPv4Address, IPv6Address

import trio
from pytun_pmd3 import TunTapDevice

from sidecar.proto.offload import VNET_HDR_LEN, ZERO_HEADER, Coalescer, OffloadError, VnetHeader, segment

log = logging.getLogger("sidecar.tun")

IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFNAMSIZ = 16
# <linux/if_tun.h>: _IOW('T', nr, unsigned int / int)
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUNSETVNETLE = 0x400454DC
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
PLAIN_READ = 65535
# a write the kernel refuses because the packet is not one it accepts: dropped, counted
_DROPPED_WRITE = frozenset((errno.EINVAL, errno.EIO, errno.EMSGSIZE, errno.ENOBUFS))
OFFLOAD_READ = VNET_HDR_LEN + 40 + 65535  # the largest frame: an IPv6 header and a 64 KB payload


class TunError(OSError):
    """The TUN device could not be created or configured; the message says why and what to do."""


def _no_ipv6(name: str) -> None:
    """No IPv6 on the device before it comes up (module docstring). Best effort: a kernel without
    IPv6 has nothing to turn off."""
    try:
        with open(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "w") as f:
            f.write("1")
        return
    except OSError as exc:
        if exc.errno == errno.ENOENT and not os.path.exists("/proc/sys/net/ipv6"):
            return  # no IPv6 in this kernel (or namespace)
        why = exc.strerror
    from sidecar.kernel.netconf import no_ipv6_link_local  # netlink: only on this path

    try:
        no_ipv6_link_local(name)
    except OSError as exc:
        log.debug("%s: IPv6 left on (/proc/sys: %s; netlink: %s)", name, why, exc)


@dataclass
class TunCounters:
    rx_packets: int = 0  # read from the device (apps -> tunnel)
    rx_bytes: int = 0
    tx_packets: int = 0  # written to the device (tunnel -> apps)
    tx_bytes: int = 0
    tx_dropped: int = 0  # write refused (EAGAIN/EINVAL/EIO): dropped
    # offload mode: frames that held more than one packet, and how many packets they held
    rx_super_packets: int = 0
    rx_segments: int = 0
    rx_offload_errors: int = 0  # frames that could not be segmented: dropped
    tx_super_packets: int = 0
    tx_coalesced: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class TunDevice:
    """The TUN device; ``offload=True`` asks for segmentation/receive offload (``self.offload`` says
    whether it is on)."""

    def __init__(self, name: str, mtu: int, *, up: bool = True, offload: bool = False) -> None:
        self._mtu = 0
        if not name or len(name.encode()) >= IFNAMSIZ or "/" in name or " " in name:
            raise TunError(errno.EINVAL, f"bad interface name {name!r}: 1-15 characters, no '/' or space")
        self.offload = False
        if offload:
            self.offload, why = self._open_offload(name)
            if why is not None:
                log.warning("TUN offload off on %s: %s; using plain packets", name, why)
        if not self.offload:
            self._dev = self._open(name, False)
        try:
            self.name: str = self._dev.name
            self._fd: int = self._dev.fileno()
            os.set_blocking(self._fd, False)
            self.set_mtu(mtu)
            _no_ipv6(self.name)
            if up:
                self._dev.up()
        except BaseException:
            self._dev.close()
            raise
        self.counters = TunCounters()
        self._bufsize = OFFLOAD_READ if self.offload else PLAIN_READ
        self._pending: list[bytes] = []  # segments read but beyond the caller's max
        self._coalescer = Coalescer()
        if self.offload:
            log.debug("%s: TUN offload on (TCP super-packets both ways)", self.name)

    def _open_offload(self, name: str) -> tuple[bool, str | None]:
        """Open with virtio headers and offload on; (done, why not)."""
        try:
            dev = self._open(name, True)
        except TunError as exc:
            return False, str(exc)
        why = _enable_offload(dev.fileno())
        if why is not None:
            dev.close()
            return False, why
        self._dev = dev
        return True, None

    @staticmethod
    def _open(name: str, offload: bool) -> TunTapDevice:
        try:
            return TunTapDevice(name=name, flags=IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if offload else 0))
        except OSError as exc:
            hint = {
                errno.ENOENT: "is /dev/net/tun present? (container: --device /dev/net/tun)",
                errno.EPERM: "needs CAP_NET_ADMIN (container: --cap-add NET_ADMIN)",
                errno.EACCES: "needs CAP_NET_ADMIN and access to /dev/net/tun",
                errno.EBUSY: f"interface {name!r} exists and is in use: pick another --interface",
            }.get(exc.errno or 0, "check /dev/net/tun and CAP_NET_ADMIN")
            raise TunError(exc.errno, f"cannot create TUN device {name!r}: {exc.strerror}; {hint}") from exc

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
        if self._pending:  # segments of a super-packet are still waiting for read_batch
            await trio.lowlevel.checkpoint()
            return
        await trio.lowlevel.wait_readable(self._fd)

    def read_batch(self, max: int = 64) -> list[bytes]:
        """IP packets the apps sent into the tunnel (at most ``max``); drains until EAGAIN or ``max``."""
        if self.offload:
            return self._read_offload(max)
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

    def _read_offload(self, max: int) -> list[bytes]:
        out, self._pending = self._pending[:max], self._pending[max:]
        read, fd, size, counters = os.read, self._fd, self._bufsize, self.counters
        while len(out) < max:
            try:
                frame = read(fd, size)
            except (BlockingIOError, InterruptedError):
                break
            if not frame:
                break
            try:
                packets = segment(VnetHeader.unpack(frame), frame[VNET_HDR_LEN:])
            except OffloadError as exc:
                counters.rx_offload_errors += 1
                log.debug("%s: dropped a frame the kernel handed over: %s", self.name, exc)
                continue
            if len(packets) > 1:
                counters.rx_super_packets += 1
                counters.rx_segments += len(packets)
            counters.rx_packets += len(packets)
            counters.rx_bytes += sum(map(len, packets))
            room = max - len(out)
            out += packets[:room]
            self._pending += packets[room:]
        return out

    def write(self, packet: bytes | bytearray | memoryview) -> bool:
        """Hand one IP packet to the kernel (tunnel -> apps). False = dropped (counted)."""
        return self._write_frame(ZERO_HEADER + packet if self.offload else packet, 1, len(packet))

    def write_batch(self, packets: Sequence[bytes]) -> int:
        """Hand a batch of IP packets, in arrival order, to the kernel; in offload mode consecutive
        in-order TCP segments of one flow go as one super-packet. Returns how many were accepted."""
        counters = self.counters
        if not self.offload:
            write, fd = os.write, self._fd
            written = size = 0
            for packet in packets:
                try:
                    write(fd, packet)
                except OSError as exc:
                    self._write_failed(exc, 1)
                    continue
                written += 1
                size += len(packet)
            counters.tx_packets += written
            counters.tx_bytes += size
            return written
        accepted = 0
        for frame, count, size in self._coalescer.coalesce(packets):
            if self._write_frame(frame, count, size):
                accepted += count
                if count > 1:
                    counters.tx_super_packets += 1
                    counters.tx_coalesced += count
        return accepted

    def set_local_addresses(self, addresses: Iterable[IPv4Address | IPv6Address]) -> None:
        """The device's own addresses: TCP written to them is delivered here, and the kernel
        verifies a super-packet's checksum itself (see :class:`~sidecar.proto.offload.Coalescer`)."""
        self._coalescer.local = frozenset(a.packed for a in addresses)

    def _write_frame(self, frame: bytes | bytearray | memoryview, count: int, size: int) -> bool:
        """Write one frame holding ``count`` IP packets of ``size`` bytes together."""
        try:
            os.write(self._fd, frame)
        except OSError as exc:
            self._write_failed(exc, count)
            return False
        counters = self.counters
        counters.tx_packets += count
        counters.tx_bytes += size
        return True

    def _write_failed(self, exc: OSError, count: int) -> None:
        """A write that raised: ``count`` packets dropped and counted when the kernel refused them
        (full queue, or not an IP packet it accepts), else re-raised."""
        if isinstance(exc, (BlockingIOError, InterruptedError)) or exc.errno in _DROPPED_WRITE:
            self.counters.tx_dropped += count
        else:
            raise exc

    def close(self) -> None:
        self._dev.close()

    def __enter__(self) -> TunDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TunDevice({self.name!r}, fd={self._fd}{', offload' if self.offload else ''})"


def _enable_offload(fd: int) -> str | None:
    """Little-endian 10-byte virtio headers and TCP segmentation offload; None, or why not."""
    for what, request, arg in (
        ("TUNSETVNETHDRSZ 10", TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN)),
        ("TUNSETVNETLE", TUNSETVNETLE, struct.pack("i", 1)),
        ("TUNSETOFFLOAD", TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6),
    ):
        try:
            fcntl.ioctl(fd, request, arg)
        except OSError as exc:
            return f"{what} failed: {exc.strerror or exc}"
    return None
