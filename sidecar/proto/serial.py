"""32-bit serial-number arithmetic (RFC 1982), shared by GRE sequence/ack numbers and the reorder queue.

Rules: this module owns the only definition of "newer" and "older" for 32-bit sequence numbers; no
other module compares sequence numbers with ``<`` or ``>``. Pure functions, no state.

Theory: sequence numbers live on a circle of 2**32 values. ``a`` is newer than ``b`` when going
forward from ``b`` reaches ``a`` in fewer than 2**31 steps (RFC 1982 §3.2). RFC 1982 leaves the
comparison undefined when the two numbers are exactly 2**31 apart; :func:`serial_diff` resolves that
case as "older" (distance -2**31), so every pair of numbers has one defined, antisymmetric answer
except that single antipode, where both directions answer "older" (never both "newer").
"""

from __future__ import annotations

from typing import Final

SERIAL_BITS: Final = 32
SERIAL_MOD: Final = 1 << SERIAL_BITS
SERIAL_MASK: Final = SERIAL_MOD - 1
SERIAL_HALF: Final = 1 << (SERIAL_BITS - 1)


def serial_add(a: int, n: int) -> int:
    """``a + n`` on the 32-bit circle. RFC 1982 §3.1 only defines ``0 <= n < 2**31``; negative ``n``
    (stepping back) is accepted here for convenience."""
    return (a + n) & SERIAL_MASK


def serial_diff(a: int, b: int) -> int:
    """Signed forward distance from ``b`` to ``a``, in ``[-2**31, 2**31)``.

    Positive: ``a`` is newer than ``b``; zero: equal; negative: ``a`` is older.
    """
    return ((a - b + SERIAL_HALF) & SERIAL_MASK) - SERIAL_HALF


def serial_gt(a: int, b: int) -> bool:
    """``a`` is newer than ``b`` (RFC 1982 §3.2 ``s1 > s2``)."""
    return serial_diff(a, b) > 0


def serial_lt(a: int, b: int) -> bool:
    """``a`` is older than ``b``."""
    return serial_diff(a, b) < 0


def serial_max(a: int, b: int) -> int:
    """The newer of ``a`` and ``b``."""
    return a if serial_diff(a, b) > 0 else b
