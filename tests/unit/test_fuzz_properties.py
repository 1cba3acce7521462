"""Property-based fuzzing of every protocol decoder and machine entry point, in the normal suite.

Each test feeds one fuzz target (``fuzz/targets.py``: the same code atheris runs) with inputs that
hypothesis builds: mutations of the seed corpus (real frames and scripts from our encoders, scapy
and a recorded session) and plain random bytes. A target raises only for a bug: an exception other
than ``ProtocolError`` out of a decoder, anything out of a machine's receive/timeout, or a broken
invariant (round trip, finite deadlines, counters >= 0, bounded reorder buffer, our own output
decodes, one LinkUp/LinkDown, no clear text under MPPE REQUIRE, no password in events...).

Bugs already reported (``fuzz/known.py``, each with a strict-xfail test) are skipped with
``reject()`` so that this suite fails only on new ones. Example counts are moderate; the long runs
are ``python -m fuzz.run`` (see docs/fuzz.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from fuzz.known import match
from fuzz.targets import TARGETS, load

CORPUS = Path(__file__).resolve().parents[2] / "fuzz" / "corpus"

# examples per target: the cheap codecs get more, the whole-machine scripts fewer
EXAMPLES = {
    "pptp_decode": 300,
    "gre_decode": 300,
    "ppp_frame": 300,
    "auth_codecs": 300,
    "pptp_stream": 150,
    "reorder": 150,
    "ppp_options": 150,
    "mppe": 60,
    "link": 60,
    "stack": 40,
}
DEFAULT_EXAMPLES = 100


def seeds(target: str) -> list[bytes]:
    return [f.read_bytes() for f in sorted((CORPUS / target).iterdir())]


@st.composite
def mutated(draw: st.DrawFn, pool: list[bytes]) -> bytes:
    """A seed with a few byte-level edits: overwrite, insert, delete, truncate, splice."""
    data = bytearray(draw(st.sampled_from(pool)))
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 4))
        pos = draw(st.integers(0, len(data)))
        if kind == 0 and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif kind == 1:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == 2:
            del data[pos : pos + draw(st.integers(1, 8))]
        elif kind == 3:
            del data[pos:]
        else:
            other = draw(st.sampled_from(pool))
            start = draw(st.integers(0, len(other)))
            data[pos:pos] = other[start : start + draw(st.integers(1, 64))]
    return bytes(data)


def inputs(target: str) -> st.SearchStrategy[bytes]:
    pool = seeds(target)
    return st.one_of(mutated(pool), st.binary(max_size=400))


def run(target: str, data: bytes) -> None:
    try:
        load(target)(data)
    except Exception as exc:
        if match(exc) is None:
            raise
        reject()  # a reported bug (fuzz/known.py); its regression test tracks it


@pytest.mark.parametrize("target", list(TARGETS))
def test_fuzz_target(target: str) -> None:
    @settings(
        max_examples=EXAMPLES.get(target, DEFAULT_EXAMPLES),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(inputs(target))
    def prop(data: bytes) -> None:
        run(target, data)

    prop()


# -- a few properties that are sharper with structured strategies -------------------------------------


@given(
    st.integers(0, 40),
    st.lists(st.tuples(st.integers(0, 7), st.integers(0, 0xFFFFFFFF)), min_size=1, max_size=60),
)
@settings(max_examples=150, deadline=None, database=None)
def test_gre_session_random_walk(window: int, steps: list[tuple[int, int]]) -> None:
    """GRE session under an adversarial sequence walk: the same checks as the atheris target."""
    script = bytes((window, 5)) + bytes(8)
    for op, value in steps:
        if op == 1:  # flags: seq + ack; seq = base + 16-bit delta; ack delta byte; payload blob
            script += bytes((1, 3)) + (value & 0xFFFF).to_bytes(2, "big") + bytes((value >> 24, 1, 0x21))
        elif op == 2:  # the same with 32-bit seq and ack offsets
            script += bytes((2, 3)) + value.to_bytes(4, "big") + (value ^ 0x5A5A5A5A).to_bytes(4, "big")
            script += b"\x01\x21"
        else:
            script += bytes((op,)) + value.to_bytes(4, "big")
    run("gre_session", script)


@given(st.integers(0, 255), st.lists(st.integers(0, 255), max_size=120))
@settings(max_examples=150, deadline=None, database=None)
def test_pptp_control_any_op_sequence(setup: int, ops: list[int]) -> None:
    """Every role/prelude/keepalive setup, any sequence of operations with small arguments."""
    run("pptp_control", bytes((setup, 0, 0, *ops)))


@given(st.integers(0, 255), st.integers(0, 255), st.lists(st.integers(0, 255), max_size=150))
@settings(max_examples=80, deadline=None, database=None)
def test_link_any_op_sequence(setup: int, extra: int, ops: list[int]) -> None:
    """Both roles, every configuration and prelude depth, any operation sequence."""
    run("link", bytes((setup, extra, 0, 1, *ops)))
