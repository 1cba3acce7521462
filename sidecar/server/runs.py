"""Splits a batch of packets, each with the session it is for, into runs per session.

Rules: pure. The server's readers hand a session its consecutive packets together (one call, one
round of bookkeeping per run instead of per packet); the order of packets is kept, within a session
and across sessions.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby
from operator import itemgetter
from typing import TypeVar

T = TypeVar("T")
P = TypeVar("P")

_TARGET = itemgetter(0)


def runs(targets: Sequence[T | None], packets: Sequence[P]) -> list[tuple[T, list[P]]]:
    """``(target, packets)`` for each run of consecutive packets with the same target (compared by
    equality: sessions by identity); packets whose target is None are left out and end a run."""
    return [
        (target, [packet for _, packet in group])
        for target, group in groupby(zip(targets, packets, strict=True), key=_TARGET)
        if target is not None
    ]
