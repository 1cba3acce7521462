"""A string that never shows itself.

Rules: a :class:`Secret` never appears in ``repr``, ``str``, f-strings or exception messages; the only
way to the value is :meth:`Secret.reveal`, which the code calls exactly where the value is needed
(hashing it for authentication). Config, auth and the server's user table all hold passwords this way.
"""

from __future__ import annotations

from typing import Final

_MASK: Final = "***"


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret holds a str")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({_MASK!r})"

    def __str__(self) -> str:
        return _MASK

    def __format__(self, spec: str) -> str:
        return _MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> str | tuple[object, ...]:  # never pickled into a log or a crash dump
        raise TypeError("a Secret cannot be pickled")
