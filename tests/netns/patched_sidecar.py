"""Run ``sidecar`` (the real CLI) with test-only patches: a hostile embedded server, a GRE sequence
that starts near 2**32.

Used by the reliability tests and benchmarks (``tests/netns/test_hostile.py``, ``test_faults.py``,
``bench/faults.py``) as ``python -m tests.netns.patched_sidecar serve|up ...`` with the patches named
in the environment variable ``PST_PATCHES`` (comma list). Nothing here is imported by the product;
the patches replace module attributes in this process only, before the CLI starts.

Patches:

- ``lcp_nak_forever``: the server answers every LCP Configure-Request of the client with a
  Configure-Nak (suggesting a different MRU each time) and never acks;
- ``ipcp_nak_forever``: the same for IPCP (suggesting a different IP-Address each time);
- ``bad_authenticator``: the server's MS-CHAPv2 Success carries a wrong authenticator response
  (``S=``), i.e. a server that does not know the password but claims success;
- ``gre_initial_seq=N``: every GRE session of this process starts sending at sequence number N
  (e.g. 4294967200: the numbers wrap through 2**32 after a few dozen packets).

The hostile behaviours are a subclass of :class:`sidecar.proto.ppp.link.PppLink` that the server's
stack factory builds instead of the real class (it imports the name at call time).
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any

PATCH_ENV = "PST_PATCHES"


def _hostile_link_class(mode: set[str]) -> type:
    from sidecar.proto.ppp import frame as F
    from sidecar.proto.ppp.link import PppLink

    class HostileLink(PppLink):
        """The embedded server's link with one protocol step made hostile (see the module doc)."""

        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            self._hostile_out: list[bytes] = []
            self._naks = 0

        def receive(self, frame: bytes | memoryview, now: float) -> list[bytes]:
            try:
                protocol, info = F.decode_frame(frame)
                packet = F.decode_control(info) if protocol in (F.LCP, F.IPCP) else None
            except Exception:
                packet = None
            if packet is not None and packet.code == F.CONFIGURE_REQUEST:
                nak = self._nak_for(protocol, packet)
                if nak is not None:
                    self._hostile_out.append(nak)
                    return []
            return super().receive(frame, now)

        def _nak_for(self, protocol: int, packet: Any) -> bytes | None:
            self._naks += 1
            if protocol == F.LCP and "lcp_nak_forever" in mode:
                option = F.Option(1, (1000 + self._naks % 300).to_bytes(2, "big"))  # MRU
            elif protocol == F.IPCP and "ipcp_nak_forever" in mode:
                option = F.Option(3, bytes((10, 77, 0, 100 + self._naks % 100)))  # IP-Address
            else:
                return None
            body = F.encode_control(F.CONFIGURE_NAK, packet.identifier, F.encode_options([option]))
            return F.encode_frame(protocol, body, acfc=False, pfc=False)

        def frames_to_send(self) -> list[bytes]:
            frames = super().frames_to_send()
            if "bad_authenticator" in mode:
                frames = [self._spoil_success(f) for f in frames]
            out, self._hostile_out = self._hostile_out + frames, []
            return out

        @staticmethod
        def _spoil_success(frame: bytes) -> bytes:
            try:
                protocol, info = F.decode_frame(frame)
            except Exception:
                return frame
            if protocol != F.CHAP or len(info) < 4 or info[0] != 3:  # CHAP Success
                return frame
            text = bytes(info)
            at = text.find(b"S=")
            if at < 0:
                return frame
            digit = text[at + 2 : at + 3]
            wrong = b"0" if digit != b"0" else b"1"
            spoiled = text[: at + 2] + wrong + text[at + 3 :]
            return bytes(frame[: len(frame) - len(info)]) + spoiled

    return HostileLink


def apply(spec: str) -> list[str]:
    """Apply the patches named in ``spec`` (comma list); returns their names."""
    names = [p.strip() for p in spec.split(",") if p.strip()]
    hostile = {n for n in names if n in ("lcp_nak_forever", "ipcp_nak_forever", "bad_authenticator")}
    for name in names:
        if name.startswith("gre_initial_seq="):
            import sidecar.stack
            from sidecar.proto.gre import GreSession

            initial = int(name.split("=", 1)[1])
            sidecar.stack.__dict__["GreSession"] = functools.partial(GreSession, initial_seq=initial)
        elif name not in hostile:
            raise SystemExit(f"patched_sidecar: unknown patch {name!r}")
    if hostile:
        import sidecar.proto.ppp.link as link_module

        link_module.__dict__["PppLink"] = _hostile_link_class(hostile)
    return names


def main() -> None:
    names = apply(os.environ.get(PATCH_ENV, ""))
    if names:
        print(f"patched_sidecar: test patches active: {', '.join(names)}", file=sys.stderr, flush=True)
    from sidecar.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
