"""Line coverage of ``sidecar/proto`` and ``sidecar/stack.py`` reached by the fuzz corpora
(seeds + what the fuzzers kept).

    .venv/bin/python -m fuzz.coverage [--missing] [TARGET ...]

Uses the standard library's ``sys.settrace`` (no extra package): every corpus input of the chosen
targets (default: all) is replayed once; the report gives, per module, executable lines reached
and, with ``--missing``, the line numbers never reached. It shows what the fuzzers do not get to.
"""

from __future__ import annotations

import argparse
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed import TraceFunction

from fuzz.known import match
from fuzz.targets import TARGETS, load

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "sidecar" / "proto"
STACK = ROOT / "sidecar" / "stack.py"  # the session wiring (target ``stack``)


def executable_lines(path: Path) -> set[int]:
    code = compile(path.read_text(), str(path), "exec")
    lines: set[int] = set()

    def walk(co: types.CodeType) -> None:
        for _, _, line in co.co_lines():
            if line is not None:
                lines.add(line)
        for const in co.co_consts:
            if isinstance(const, types.CodeType):
                walk(const)

    walk(code)
    return lines


def corpus_files(target: str) -> Iterator[Path]:
    for d in (ROOT / "fuzz" / "corpus" / target, ROOT / "fuzz" / "work" / target):
        if d.is_dir():
            yield from sorted(d.iterdir())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Line coverage of sidecar/proto by the fuzz corpora.")
    ap.add_argument("targets", nargs="*", help="targets (default: all)")
    ap.add_argument("--missing", action="store_true", help="list the lines never reached")
    args = ap.parse_args(argv)
    targets = args.targets or list(TARGETS)
    fns = {t: load(t) for t in targets}  # import first: module-level lines are not what we measure
    hit: set[tuple[str, int]] = set()
    prefix = str(PROTO)
    stack = str(STACK)

    def tracer(frame: types.FrameType, event: str, arg: Any) -> TraceFunction | None:
        name = frame.f_code.co_filename
        if not name.startswith(prefix) and name != stack:
            return None

        def local(frame: types.FrameType, event: str, arg: Any) -> TraceFunction:
            if event == "line":
                hit.add((frame.f_code.co_filename, frame.f_lineno))
            return local

        hit.add((frame.f_code.co_filename, frame.f_lineno))
        return local

    inputs = 0
    sys.settrace(tracer)
    try:
        for target, fn in fns.items():
            for f in corpus_files(target):
                inputs += 1
                try:
                    fn(f.read_bytes())
                except Exception as exc:
                    if match(exc) is None:
                        print(f"note: {target} {f.name}: {exc!r}", file=sys.stderr)
    finally:
        sys.settrace(None)

    total_lines = total_hit = 0
    print(f"{inputs} corpus inputs replayed ({', '.join(targets)})")
    print(f"{'module':40s} {'lines':>6s} {'reached':>8s} {'%':>6s}")
    for path in [*sorted(PROTO.rglob("*.py")), STACK]:
        lines = executable_lines(path)
        if not lines:
            continue
        reached = {n for n in lines if (str(path), n) in hit}
        # module-level statements (imports, class bodies) run at import, before tracing: count
        # them as reached when the module was imported at all
        if path.stem != "__init__" and reached:
            body = _module_level_lines(path)
            reached |= body & lines
        total_lines += len(lines)
        total_hit += len(reached)
        rel = path.relative_to(ROOT)
        pct = 100.0 * len(reached) / len(lines)
        print(f"{rel!s:40s} {len(lines):6d} {len(reached):8d} {pct:6.1f}")
        if args.missing and reached != lines:
            print("    missing:", _ranges(sorted(lines - reached)))
    print(f"{'total':40s} {total_lines:6d} {total_hit:8d} {100.0 * total_hit / max(1, total_lines):6.1f}")
    return 0


def _module_level_lines(path: Path) -> set[int]:
    """Lines that run at import: top-level statements, class bodies, def/decorator lines."""
    import ast

    tree = ast.parse(path.read_text())
    out: set[int] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.add(node.lineno)
                out.update(d.lineno for d in node.decorator_list)
                if node.body and isinstance(node.body[0], ast.Expr):
                    out.add(node.body[0].lineno)
            elif isinstance(node, ast.ClassDef):
                out.add(node.lineno)
                out.update(d.lineno for d in node.decorator_list)
                visit(node.body)
            else:
                out.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))

    visit(tree.body)
    return out


def _ranges(numbers: list[int]) -> str:
    parts: list[str] = []
    start = prev = numbers[0]
    for n in numbers[1:]:
        if n == prev + 1:
            prev = n
            continue
        parts.append(f"{start}-{prev}" if prev > start else str(start))
        start = prev = n
    parts.append(f"{start}-{prev}" if prev > start else str(start))
    return ", ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
