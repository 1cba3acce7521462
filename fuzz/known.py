"""Bugs the fuzzers found that are reported to their owners and not fixed yet.

Each has a strict-xfail regression test in ``tests/unit/test_fuzz_regressions.py`` with the minimal
input. The runner and the hypothesis tests report a matching failure as *known* instead of failing,
so CI stays red only for new bugs. When the owner fixes one, its xfail test turns XPASS (a failure
under ``strict=True``): delete the ``xfail`` marker and the entry here in the same commit.

A signature is what :func:`fuzz.worker.signature` prints: ``<exception>@<file>:<line> <message>``.
An entry matches on the exception type and a piece of the message, not on line numbers, so an
unrelated edit of the owner's file does not turn a known bug into a "new" one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KnownBug:
    key: str  # the regression test is test_<key>
    exception: str  # exception type name
    message_parts: tuple[str, ...]  # pieces the exception message must all contain
    where: str  # the owner's file and function
    summary: str


KNOWN_BUGS: tuple[KnownBug, ...] = ()


def match(exc: BaseException) -> KnownBug | None:
    """The known bug this exception is, if any."""
    name = type(exc).__name__
    text = str(exc)
    for bug in KNOWN_BUGS:
        if bug.exception == name and all(part in text for part in bug.message_parts):
            return bug
    return None
