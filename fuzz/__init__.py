"""Fuzzing the protocol wing: atheris harnesses, a seed corpus, and the targets the unit tests reuse.

- :mod:`fuzz.targets` — the registry: one ``bytes -> None`` function per target. A target raises
  only for a bug: an exception other than ``ProtocolError`` escaping a decoder, any exception
  escaping a machine's entry point, or a broken invariant (:class:`fuzz.common.InvariantError`).
- :mod:`fuzz.worker` — runs one target under atheris (coverage-guided libFuzzer).
- :mod:`fuzz.run` — runs targets for a time budget and prints inputs tried and crashes per target.
- :mod:`fuzz.make_corpus` — writes ``fuzz/corpus/<target>/`` from our encoders and scapy.
"""
