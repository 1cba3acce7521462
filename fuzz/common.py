"""What every fuzz target shares: a reader that turns fuzz bytes into a script of operations, the
writer that builds such scripts (seed corpus, hypothesis strategies), and cheap invariant checks.

A machine target reads its input as ``setup byte`` followed by operations ``opcode, arguments...``.
Every read past the end yields zeros / empty bytes, so any byte string is a valid script: the fuzzer
never wastes inputs on a parse error of the script itself.
"""

from __future__ import annotations

import dataclasses
import math
import random
import struct
from collections.abc import Callable, Iterator
from typing import Any

from sidecar.proto.errors import ProtocolError

# A script's operation count is bounded so that one input stays fast (libFuzzer counts per input).
MAX_OPS = 64


class InvariantError(AssertionError):
    """A property the protocol code promises was broken (a bug, like a crash)."""


def check(condition: object, message: str) -> None:
    if not condition:
        raise InvariantError(message)


class Reader:
    """Consumes fuzz bytes; reads past the end give 0 / b"" (never raise)."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out

    def u8(self) -> int:
        if self.pos >= len(self.data):
            return 0
        b = self.data[self.pos]
        self.pos += 1
        return b

    def u16(self) -> int:
        return int.from_bytes(self.take(2).ljust(2, b"\0"), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4).ljust(4, b"\0"), "big")

    def blob(self) -> bytes:
        """Length-prefixed bytes: one length octet, or 0xFF then a 16-bit length."""
        n = self.u8()
        if n == 0xFF:
            n = self.u16()
        return self.take(n)

    def ops(self, count: int) -> Iterator[int]:
        """Opcodes (``0..count-1``) until the input or the operation budget runs out."""
        for _ in range(MAX_OPS):
            if self.remaining <= 0:
                return
            yield self.u8() % count


def blob(data: bytes) -> bytes:
    """The :meth:`Reader.blob` encoding of ``data``."""
    if len(data) < 0xFF:
        return bytes((len(data),)) + data
    return b"\xff" + struct.pack("!H", min(len(data), 0xFFFF)) + data[:0xFFFF]


def u8(v: int) -> bytes:
    return bytes((v & 0xFF,))


def u16(v: int) -> bytes:
    return struct.pack("!H", v & 0xFFFF)


def u32(v: int) -> bytes:
    return struct.pack("!I", v & 0xFFFFFFFF)


# -- invariants ---------------------------------------------------------------------------------------


def check_deadline(deadline: object, what: str) -> None:
    """``next_deadline()`` is None or a finite float (an int is tolerated: it compares the same)."""
    if deadline is None:
        return
    check(
        isinstance(deadline, (int, float)) and not isinstance(deadline, bool),
        f"{what}.next_deadline() returned {deadline!r}, not a float",
    )
    check(math.isfinite(float(deadline)), f"{what}.next_deadline() returned {deadline!r}, not finite")  # type: ignore[arg-type]


_FIELDS: dict[type, tuple[tuple[str, ...], tuple[str, ...]]] = {}


def _counter_fields(cls: type) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(int fields, nested dataclass fields) of a counters dataclass, cached per class."""
    got = _FIELDS.get(cls)
    if got is None:
        ints: list[str] = []
        nested: list[str] = []
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            (nested if dataclasses.is_dataclass(default) else ints).append(f.name)
        got = _FIELDS[cls] = (tuple(ints), tuple(nested))
    return got


def check_counters(counters: object, what: str) -> None:
    """Every int field of a counters dataclass (recursively) is a non-negative int."""
    cls = type(counters)
    if not dataclasses.is_dataclass(cls):
        raise InvariantError(f"{what} counters are not a dataclass instance: {counters!r}")
    ints, nested = _counter_fields(cls)
    for name in ints:
        value = getattr(counters, name)
        if type(value) is not int or value < 0:
            raise InvariantError(f"counter {what}.{name} = {value!r} is not a non-negative int")
    for name in nested:
        check_counters(getattr(counters, name), f"{what}.{name}")


def rng_from(reader: Reader) -> random.Random:
    return random.Random(reader.u32())


def decoder_guard(fn: Callable[[], Any]) -> Any:
    """Call a decoder: ``ProtocolError`` is its documented answer to bad input (returns None);
    anything else propagates (a bug)."""
    try:
        return fn()
    except ProtocolError:
        return None
