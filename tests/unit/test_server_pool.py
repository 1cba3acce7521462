"""Address pool: range and CIDR specs, exhaustion message, release, fixed addresses."""

from __future__ import annotations

from ipaddress import IPv4Address as A

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.server.pool import AddressPool, PoolError, PoolExhausted, describe, parse_pool


def test_range() -> None:
    assert parse_pool("10.0.0.10-10.0.0.13") == (
        A("10.0.0.10"),
        A("10.0.0.11"),
        A("10.0.0.12"),
        A("10.0.0.13"),
    )
    assert parse_pool("10.0.0.10-12") == (A("10.0.0.10"), A("10.0.0.11"), A("10.0.0.12"))
    assert parse_pool("10.0.0.255-10.0.1.1") == (A("10.0.0.255"), A("10.0.1.0"), A("10.0.1.1"))


def test_cidr_skips_network_and_broadcast() -> None:
    pool = parse_pool("192.168.7.0/29")
    assert pool[0] == A("192.168.7.1") and pool[-1] == A("192.168.7.6") and len(pool) == 6
    assert parse_pool("10.0.0.4/31") == (A("10.0.0.4"), A("10.0.0.5"))
    assert parse_pool("10.0.0.9/32") == (A("10.0.0.9"),)


def test_several_parts_deduplicated() -> None:
    assert parse_pool("10.0.0.1-3, 10.0.0.2, 10.0.0.9") == (
        A("10.0.0.1"),
        A("10.0.0.2"),
        A("10.0.0.3"),
        A("10.0.0.9"),
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("10.0.0.9-10.0.0.1", "the range ends before it starts"),
        ("10.0.0.1-300", "larger than 255"),
        ("banana", "is not understood"),
        ("10.0.0.0/8", "the limit is 65536"),
        ("", "empty pool entry"),
    ],
)
def test_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(PoolError, match=message):
        parse_pool(spec)


def test_acquire_release_and_exhaustion() -> None:
    pool = AddressPool(parse_pool("10.0.0.1-10.0.0.4"), local_ip=A("10.0.0.1"))
    assert pool.size == 3  # the server's own address is never handed out
    got = [pool.acquire(f"c{i}") for i in range(3)]
    assert got == [A("10.0.0.2"), A("10.0.0.3"), A("10.0.0.4")]
    with pytest.raises(PoolExhausted) as info:
        pool.acquire("c3")
    assert str(info.value) == (
        "address pool 10.0.0.2-10.0.0.4 is exhausted: all 3 addresses are in use; "
        "widen --pool or lower --max-clients"
    )
    pool.release(A("10.0.0.3"))
    pool.release(A("10.0.0.3"))  # twice is harmless: it does not free it twice
    assert pool.free == 1
    assert pool.acquire("c4") == A("10.0.0.3")
    assert pool.in_use[A("10.0.0.3")] == "c4"


def test_fixed_addresses() -> None:
    pool = AddressPool(parse_pool("10.0.0.10-12"), local_ip=A("10.0.0.1"), reserved=[A("10.0.0.10")])
    assert A("10.0.0.10") not in pool.addresses
    assert pool.acquire("bob", fixed=A("10.0.0.10")) == A("10.0.0.10")
    with pytest.raises(PoolExhausted, match="already in use by 'bob'"):
        pool.acquire("bob-again", fixed=A("10.0.0.10"))
    with pytest.raises(PoolExhausted, match="server's own address"):
        pool.acquire("x", fixed=A("10.0.0.1"))
    pool.release(A("10.0.0.10"))
    assert A("10.0.0.10") not in pool.addresses and pool.free == 2  # never joins the shared pool
    # outside the pool entirely
    assert pool.acquire("far", fixed=A("172.16.0.5")) == A("172.16.0.5")


def test_allowed_subnet() -> None:
    pool = AddressPool(parse_pool("10.0.0.1-10.0.0.20"))
    assert pool.acquire("c", allowed=lambda a: a >= A("10.0.0.16")) == A("10.0.0.16")
    with pytest.raises(PoolExhausted, match="in the subnet the secrets file allows"):
        pool.acquire("d", allowed=lambda a: a > A("10.0.0.99"))


def test_pool_that_is_only_the_local_ip() -> None:
    with pytest.raises(PoolError, match="has no address left"):
        AddressPool(parse_pool("10.0.0.1"), local_ip=A("10.0.0.1"))


def test_describe() -> None:
    assert describe(parse_pool("10.0.0.1-5")) == "10.0.0.1-10.0.0.5"
    assert describe(parse_pool("10.0.0.1,10.0.0.5")) == "10.0.0.1..10.0.0.5 (2 addresses)"


@given(st.lists(st.sampled_from(["acq", "rel"]), max_size=60), st.randoms(use_true_random=False))
def test_never_hands_out_an_address_twice(ops: list[str], rnd: object) -> None:
    import random

    assert isinstance(rnd, random.Random)
    pool = AddressPool(parse_pool("10.9.0.0/29"))
    held: list[A] = []
    for op in ops:
        if op == "acq":
            if pool.free == 0:
                with pytest.raises(PoolExhausted):
                    pool.acquire("x")
            else:
                addr = pool.acquire("x")
                assert addr not in held and addr in pool.addresses
                held.append(addr)
        elif held:
            pool.release(held.pop(rnd.randrange(len(held))))
        assert pool.free + len(held) == pool.size
