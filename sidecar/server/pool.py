"""The server's address pool: which client has which IPv4 address.

Rules: pure bookkeeping (no sockets, no clock). An address is handed out at most once at a time and
comes back with :meth:`AddressPool.release` when its client goes, whatever the reason. The server's
own address and addresses the secrets file pins to named users are never handed to anyone else.

``--pool`` takes a range ``10.0.0.10-10.0.0.50`` (both ends included; the second may be written as
just the last octet, ``10.0.0.10-50``, as pptpd's ``remoteip`` does), a CIDR ``10.0.0.0/28`` (its
network and broadcast addresses left out when the prefix is shorter than /31), or a single address.
Several may be joined with commas.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from ipaddress import IPv4Address, IPv4Network

MAX_POOL = 65536


class PoolError(ValueError):
    """A pool specification that cannot be used (the message says why and how to write it)."""


class PoolExhausted(RuntimeError):
    """No free address for a client."""


def _parse_one(part: str) -> list[IPv4Address]:
    part = part.strip()
    if not part:
        raise PoolError("empty pool entry (expected A-B, A.B.C.D/N or one address)")
    try:
        if "/" in part:
            net = IPv4Network(part, strict=False)
            if net.num_addresses > MAX_POOL:
                raise PoolError(f"pool {part} has {net.num_addresses} addresses; the limit is {MAX_POOL}")
            if net.prefixlen >= 31:
                return list(net)
            return list(net.hosts())
        if "-" in part:
            start_text, end_text = (p.strip() for p in part.split("-", 1))
            start = IPv4Address(start_text)
            if end_text.isdigit() and "." not in end_text:
                if int(end_text) > 255:
                    raise PoolError(f"pool {part}: last octet {end_text} is larger than 255")
                end = IPv4Address((int(start) & 0xFFFFFF00) | int(end_text))
            else:
                end = IPv4Address(end_text)
            if end < start:
                raise PoolError(f"pool {part}: the range ends before it starts ({end} < {start})")
            count = int(end) - int(start) + 1
            if count > MAX_POOL:
                raise PoolError(f"pool {part} has {count} addresses; the limit is {MAX_POOL}")
            return [IPv4Address(i) for i in range(int(start), int(end) + 1)]
        return [IPv4Address(part)]
    except PoolError:
        raise
    except ValueError as exc:
        raise PoolError(
            f"pool {part!r} is not understood ({exc}); write a range like 10.0.0.10-10.0.0.50 "
            "or a subnet like 10.0.0.0/28"
        ) from None


def parse_pool(spec: str) -> tuple[IPv4Address, ...]:
    """Parse ``--pool``: ranges, subnets and addresses, comma-separated, duplicates removed, in order."""
    seen: dict[IPv4Address, None] = {}
    for part in spec.split(","):
        for addr in _parse_one(part):
            seen.setdefault(addr, None)
    if not seen:
        raise PoolError("the address pool is empty")
    return tuple(seen)


def describe(addresses: tuple[IPv4Address, ...]) -> str:
    """Short text for a pool: ``10.0.0.10-10.0.0.50`` when contiguous, else first..last (n addresses)."""
    if not addresses:
        return "(empty)"
    first, last = addresses[0], addresses[-1]
    if len(addresses) == 1:
        return str(first)
    if int(last) - int(first) + 1 == len(addresses):
        return f"{first}-{last}"
    return f"{first}..{last} ({len(addresses)} addresses)"


class AddressPool:
    """Hands out addresses from a fixed list; lowest free first, so a returning client often gets its
    old address back."""

    def __init__(
        self,
        addresses: Iterable[IPv4Address],
        *,
        local_ip: IPv4Address | None = None,
        reserved: Iterable[IPv4Address] = (),
    ) -> None:
        all_addresses = tuple(addresses)
        reserved_set = set(reserved)
        if local_ip is not None:
            reserved_set.add(local_ip)
        self.addresses: tuple[IPv4Address, ...] = tuple(a for a in all_addresses if a not in reserved_set)
        self._all = all_addresses
        self.local_ip = local_ip
        self._reserved = frozenset(reserved_set)
        self._free = set(self.addresses)
        self._in_use: dict[IPv4Address, str] = {}
        if not self.addresses:
            raise PoolError(
                f"the address pool {describe(self._all)} has no address left once the server's own "
                "address and fixed client addresses are taken out; widen --pool"
            )

    @property
    def size(self) -> int:
        return len(self.addresses)

    @property
    def free(self) -> int:
        return len(self._free)

    @property
    def in_use(self) -> dict[IPv4Address, str]:
        return dict(self._in_use)

    def acquire(
        self,
        owner: str,
        *,
        fixed: IPv4Address | None = None,
        allowed: Callable[[IPv4Address], bool] | None = None,
    ) -> IPv4Address:
        """Give ``owner`` an address. ``fixed`` = the one the secrets file names (may lie outside the
        pool); ``allowed`` restricts pool addresses (a subnet in the secrets file)."""
        if fixed is not None:
            if fixed == self.local_ip:
                raise PoolExhausted(
                    f"the secrets file gives {owner!r} the address {fixed}, which is the server's own "
                    "address (--local-ip); give the client another address"
                )
            holder = self._in_use.get(fixed)
            if holder is not None:
                raise PoolExhausted(f"address {fixed} for {owner!r} is already in use by {holder!r}")
            self._free.discard(fixed)
            self._in_use[fixed] = owner
            return fixed
        candidates = self._free if allowed is None else {a for a in self._free if allowed(a)}
        if not candidates:
            if allowed is not None and self._free:
                raise PoolExhausted(
                    f"no free address for {owner!r} in the subnet the secrets file allows "
                    f"({self.free} other pool addresses are free); widen --pool or that subnet"
                )
            raise PoolExhausted(
                f"address pool {describe(self.addresses)} is exhausted: all {self.size} addresses are "
                f"in use; widen --pool or lower --max-clients"
            )
        addr = min(candidates)
        self._free.discard(addr)
        self._in_use[addr] = owner
        return addr

    def release(self, addr: IPv4Address) -> None:
        """Return an address. Releasing one that is not in use is harmless (returns nothing twice)."""
        if self._in_use.pop(addr, None) is None:
            return
        if addr in self.addresses:
            self._free.add(addr)

    def __repr__(self) -> str:
        return f"AddressPool({describe(self.addresses)}, {self.free}/{self.size} free)"
