"""Micro-benchmark: the crypto under MPPE, side by side with the alternatives. Figures, not pass/fail.

Run: .venv/bin/python bench/mppe_crypto.py [--packets N] [--size BYTES]

Prints per-packet cost for:
- RC4 over one packet: cryptography's decrepit ARC4 (what we use) vs pycryptodome's ARC4, both with a
  context kept across packets (stateful MPPE) and with a new context per packet (stateless MPPE);
- SHA-1 of the 100-octet GetNewKeyFromSHA input: hashlib (what we use) vs pycryptodome;
- MppeCodec.encrypt/decrypt end to end, stateful and stateless, 128-bit.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from collections.abc import Callable

from Crypto.Cipher import ARC4 as PcdARC4
from Crypto.Hash import SHA1 as PcdSHA1
from cryptography.hazmat.decrepit.ciphers.algorithms import ARC4
from cryptography.hazmat.primitives.ciphers import Cipher

from sidecar.proto.ppp.mppe import MppeCodec


def per_call_us(fn: Callable[[], object], n: int) -> float:
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e6


def row(label: str, ours: float, other: float | None = None, other_label: str = "") -> None:
    if other is None:
        print(f"  {label:<44} {ours:8.2f} us")
    else:
        print(f"  {label:<44} {ours:8.2f} us   {other_label}: {other:8.2f} us   ratio {other / ours:5.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--packets", type=int, default=20_000)
    ap.add_argument("--size", type=int, default=1400)
    args = ap.parse_args()
    n, size = args.packets, args.size
    key = bytes(range(16))
    pkt = bytes(size)
    sha_in = key + bytes(40) + key + b"\xf2" * 40

    print(f"MPPE crypto, {size}-byte packets, best of 3 x {n} calls")
    print("RC4 (ours = cryptography decrepit ARC4, vs pycryptodome ARC4)")
    ours_ctx = Cipher(ARC4(key), mode=None).encryptor()
    pcd_ctx = PcdARC4.new(key)
    row(
        "kept context, one packet",
        per_call_us(lambda: ours_ctx.update(pkt), n),
        per_call_us(lambda: pcd_ctx.encrypt(pkt), n),
        "pycryptodome",
    )
    row(
        "new context + one packet",
        per_call_us(lambda: Cipher(ARC4(key), mode=None).encryptor().update(pkt), n),
        per_call_us(lambda: PcdARC4.new(key).encrypt(pkt), n),
        "pycryptodome",
    )
    print("SHA-1 of GetNewKeyFromSHA input (ours = hashlib, vs pycryptodome)")
    row(
        "sha1(100 octets)",
        per_call_us(lambda: hashlib.sha1(sha_in).digest(), n),
        per_call_us(lambda: PcdSHA1.new(sha_in).digest(), n),
        "pycryptodome",
    )
    print("MppeCodec, 128-bit, end to end")
    for stateful in (True, False):
        mode = "stateful" if stateful else "stateless"
        tx = MppeCodec(key, key[::-1], 128, stateful)
        rx = MppeCodec(key[::-1], key, 128, stateful)
        frames = [tx.encrypt(pkt) for _ in range(n)]
        it = iter(frames)
        enc = per_call_us(lambda tx=tx: tx.encrypt(pkt), n)
        t0 = time.perf_counter()
        for f in it:
            rx.decrypt(f)
        dec = (time.perf_counter() - t0) / n * 1e6
        assert rx.counters.decrypted == n
        mbps = size * 8 / enc
        row(f"{mode} encrypt ({mbps:,.0f} Mbit/s on one core)", enc)
        row(f"{mode} decrypt", dec)


if __name__ == "__main__":
    main()
