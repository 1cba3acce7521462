"""RFC 1982 serial arithmetic (32-bit) used by GRE sequence/ack numbers and the reorder queue."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.proto.serial import (
    SERIAL_HALF,
    SERIAL_MASK,
    serial_add,
    serial_diff,
    serial_gt,
    serial_lt,
    serial_max,
)

U32 = st.integers(0, SERIAL_MASK)


def test_rfc1982_examples_at_the_edges() -> None:
    assert serial_add(SERIAL_MASK, 1) == 0
    assert serial_add(SERIAL_MASK - 4, 10) == 5
    assert serial_add(0, -1) == SERIAL_MASK
    assert serial_gt(0, SERIAL_MASK)  # 0 follows 2**32 - 1
    assert serial_lt(SERIAL_MASK, 0)
    assert serial_gt(0x80000000, 0x7FFFFFFF)
    assert serial_diff(5, SERIAL_MASK - 4) == 10
    assert serial_diff(SERIAL_MASK - 4, 5) == -10
    assert serial_gt(0x7FFFFFFF, 0) and not serial_gt(0x80000000, 0)  # 2**31 - 1 ahead vs antipode
    assert serial_max(3, SERIAL_MASK) == 3


@settings(max_examples=200)
@given(a=U32, n=st.integers(0, SERIAL_HALF - 1))
def test_add_then_diff(a: int, n: int) -> None:
    b = serial_add(a, n)
    assert serial_diff(b, a) == n
    assert serial_diff(a, b) == -n
    assert serial_gt(b, a) == (n > 0)
    assert serial_lt(a, b) == (n > 0)


@settings(max_examples=200)
@given(a=U32, b=U32)
def test_antisymmetry_except_antipode(a: int, b: int) -> None:
    d = serial_diff(a, b)
    assert -SERIAL_HALF <= d < SERIAL_HALF
    if d != -SERIAL_HALF:
        assert serial_diff(b, a) == -d
    assert not (serial_gt(a, b) and serial_gt(b, a))
