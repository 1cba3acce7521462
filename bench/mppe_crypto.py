"""Micro-benchmark: the crypto under MPPE, per RC4 backend side by side. Figures, not pass/fail.

Run: .venv/bin/python bench/mppe_crypto.py [--packets N] [--size BYTES]

Prints per-call cost (best of 3 x N calls) for:
- RC4 on every backend the codec has verified (``sidecar.proto.ppp.mppe.RC4_BACKENDS``: arc4,
  cryptography's binding, cryptography's public API) and pycryptodome for reference: a context kept
  across packets (stateful MPPE), a new context + one packet and a new context + 16 octets (stateless
  MPPE makes both per packet: the session cipher and the RC4 of the interim key);
- SHA-1 of the 112-octet GetNewKeyFromSHA input: hashlib (what we use) vs pycryptodome;
- MppeCodec.encrypt/decrypt end to end, stateful and stateless, 128-bit, on every backend, next to
  the floor of the same crypto written inline (stateless: SHA-1 + two new RC4 contexts + the header;
  stateful: one kept context + the header), so ``ours/floor`` is what the codec's Python costs.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from collections.abc import Callable

from Crypto.Cipher import ARC4 as PcdARC4
from Crypto.Hash import SHA1 as PcdSHA1

from sidecar.proto.ppp.mppe import RC4_BACKENDS, RC4_FRESH, RC4_KEPT, MppeCodec, Rc4Backend

PAD1, PAD2 = bytes(40), b"\xf2" * 40


def per_call_us(fn: Callable[[], object], n: int) -> float:
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e6


def rc4_calls(rc4: Rc4Backend, key: bytes, pkt: bytes, short: bytes) -> tuple[Callable[[], object], ...]:
    """kept context + packet, new context + packet, new context + 16 octets."""
    new, crypt, kept = rc4.new, rc4.crypt, rc4.new(key)
    return (lambda: crypt(kept, pkt), lambda: crypt(new(key), pkt), lambda: crypt(new(key), short))


def rc4_table(n: int, pkt: bytes, key: bytes) -> None:
    short = bytes(16)
    cols = {name: rc4_calls(rc4, key, pkt, short) for name, rc4 in RC4_BACKENDS.items()}
    pcd = PcdARC4.new(key)
    cols["pycryptodome"] = (
        lambda: pcd.encrypt(pkt),
        lambda: PcdARC4.new(key).encrypt(pkt),
        lambda: PcdARC4.new(key).encrypt(short),
    )
    print("RC4, us per call: " + ", ".join(cols))
    print(f"  {'':32}" + "".join(f"{name:>22}" for name in cols))
    for i, label in enumerate(
        ("kept context, one packet", "new context + one packet", "new context + 16 octets")
    ):
        print(f"  {label:32}" + "".join(f"{per_call_us(fns[i], n):22.2f}" for fns in cols.values()))


def codec_us(rc4: Rc4Backend, stateful: bool, n: int, pkt: bytes) -> tuple[float, float]:
    """(encrypt, decrypt) us per packet; decrypt gets a memoryview, as the link hands it."""
    key = bytes(range(16))
    best_e = best_d = float("inf")
    for _ in range(3):
        tx = MppeCodec(key, key[::-1], 128, stateful, rc4=rc4)
        encrypt = tx.encrypt
        t0 = time.perf_counter()
        for _ in range(n):
            encrypt(pkt)
        best_e = min(best_e, time.perf_counter() - t0)
        tx = MppeCodec(key, key[::-1], 128, stateful, rc4=rc4)  # the same frames again, for decrypt
        views = [memoryview(tx.encrypt(pkt)) for _ in range(n)]
        rx = MppeCodec(key[::-1], key, 128, stateful, rc4=rc4)
        decrypt = rx.decrypt
        t0 = time.perf_counter()
        for f in views:
            decrypt(f)
        best_d = min(best_d, time.perf_counter() - t0)
        assert rx.counters.decrypted == n
    return best_e / n * 1e6, best_d / n * 1e6


def floor_us(rc4: Rc4Backend, stateful: bool, n: int, pkt: bytes) -> float:
    """Encrypt's crypto written inline: what any MPPE sender on this backend must spend."""
    new, crypt, sha1 = rc4.new, rc4.crypt, hashlib.sha1
    start = bytes(range(16))
    prefix = start + PAD1
    best = float("inf")
    for _ in range(3):
        session, kept = start, new(start)
        t0 = time.perf_counter()
        for _ in range(n):
            if stateful:
                _ = b"\x10\x00" + crypt(kept, pkt)
            else:
                interim = sha1(prefix + session + PAD2).digest()[:16]
                session = crypt(new(interim), interim)
                _ = b"\x90\x00" + crypt(new(session), pkt)
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--packets", type=int, default=20_000)
    ap.add_argument("--size", type=int, default=1302, help="PPP frame (protocol field + IP packet)")
    args = ap.parse_args()
    n, size = args.packets, args.size
    key = bytes(range(16))
    pkt = bytes(size)

    print(f"MPPE crypto, {size}-byte frames, best of 3 x {n} calls\n")
    rc4_table(n, pkt, key)
    sha_in = key + PAD1 + key + PAD2
    hashlib_us = per_call_us(lambda: hashlib.sha1(sha_in).digest(), n)
    pcd_us = per_call_us(lambda: PcdSHA1.new(sha_in).digest(), n)
    print(f"\nSHA-1 of 112 octets: hashlib {hashlib_us:.2f} us, pycryptodome {pcd_us:.2f} us\n")

    print("MppeCodec, 128-bit, us per packet (ours/floor: encrypt against the inline crypto)")
    print("| mode | RC4 | encrypt | decrypt | sum | encrypt floor | ours/floor | encrypt Mbit/s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for stateful in (False, True):
        mode = "stateful" if stateful else "stateless"
        default = RC4_KEPT if stateful else RC4_FRESH
        for name, rc4 in RC4_BACKENDS.items():
            enc, dec = codec_us(rc4, stateful, n, pkt)
            floor = floor_us(rc4, stateful, n, pkt)
            label = f"{name} (default)" if rc4 is default else name
            print(
                f"| {mode} | {label} | {enc:.2f} | {dec:.2f} | {enc + dec:.2f} | {floor:.2f} "
                f"| {enc / floor:.2f}x | {size * 8 / enc:,.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
