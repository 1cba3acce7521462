"""Run one fuzz target under atheris (coverage-guided libFuzzer).

    .venv/bin/python -m fuzz.worker TARGET [libFuzzer flags...] [corpus dirs...]

Normally started by ``fuzz/run.py``. ``sidecar`` and ``fuzz`` are imported under
``atheris.instrument_imports`` so libFuzzer sees their branch coverage.

A bug (an exception escaping the target) does not stop the run: its first input per distinct
signature (exception type + the innermost ``sidecar``/``fuzz`` frame) is saved to
``$FUZZ_CRASH_DIR/<signature hash>.bin`` with a ``.txt`` traceback beside it, and one line
``FUZZ-CRASH <target> <signature>`` goes to stderr (``FUZZ-KNOWN`` for a bug listed in
:mod:`fuzz.known`); fuzzing goes on to find more. Set
``FUZZ_STOP_ON_CRASH=1`` to re-raise instead (libFuzzer then writes its own crash artifact).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import traceback
from pathlib import Path

import atheris


def signature(exc: BaseException) -> str:
    """A stable name for a bug: exception type, where in our code it surfaced, and (for invariant
    errors) the message with numbers blanked."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/sidecar/" in f.filename] or [
        f for f in frames if "/fuzz/" in f.filename and not f.filename.endswith("common.py")
    ]
    where = ours[-1] if ours else (frames[-1] if frames else None)
    place = f"{Path(where.filename).name}:{where.lineno}" if where is not None else "?"
    text = ""
    if isinstance(exc, AssertionError):
        text = " " + re.sub(r"\b(0x[0-9a-fA-F]+|[0-9a-fA-F]*\d[0-9a-fA-F]*)\b", "N", str(exc))[:45]
    return f"{type(exc).__name__}@{place}{text}"


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m fuzz.worker TARGET [libFuzzer flags...] [corpus dirs...]")
    name = sys.argv[1]
    import fuzz.common  # noqa: F401  (not instrumented: the checks are not worth guiding the fuzzer)
    from fuzz.known import match
    from fuzz.targets import TARGETS, load

    if name not in TARGETS:
        raise SystemExit(f"unknown target {name!r}; targets: {', '.join(TARGETS)}")
    with atheris.instrument_imports(include=["sidecar", "fuzz"], exclude=["fuzz.common"]):
        fn = load(name)
    crash_dir = Path(os.environ.get("FUZZ_CRASH_DIR", f"fuzz/crashes/{name}"))
    stop = os.environ.get("FUZZ_STOP_ON_CRASH") == "1"
    seen: set[str] = set()

    def one_input(data: bytes) -> None:
        try:
            fn(data)
        except Exception as exc:
            if stop:
                raise
            bug = match(exc)
            sig = f"known:{bug.key}" if bug is not None else signature(exc)
            if sig in seen:
                return
            seen.add(sig)
            crash_dir.mkdir(parents=True, exist_ok=True)
            stem = f"known-{bug.key}" if bug is not None else hashlib.sha1(sig.encode()).hexdigest()[:12]
            (crash_dir / f"{stem}.bin").write_bytes(data)
            (crash_dir / f"{stem}.txt").write_text(
                f"target: {name}\nsignature: {sig}\ninput: {data.hex()}\n\n" + traceback.format_exc()
            )
            tag = "FUZZ-KNOWN" if bug is not None else "FUZZ-CRASH"
            print(f"{tag} {name} {sig} -> {crash_dir / stem}.bin", file=sys.stderr, flush=True)

    atheris.Setup([sys.argv[0], *sys.argv[2:]], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
