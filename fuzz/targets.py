"""The registry of fuzz targets: name -> ``bytes -> None``.

A target returns normally for any input the code handles as documented (a decoder raising
``ProtocolError``, a machine dropping and counting a bad packet). It raises for a bug: any other
exception escaping a decoder, any exception escaping a machine's entry point, or a broken invariant
(:class:`fuzz.common.InvariantError`). The same functions run under atheris (``fuzz/worker.py``)
and under hypothesis (``tests/unit/test_fuzz_*.py``).

Targets are imported lazily (:func:`load`), so an atheris worker instruments only the modules its
target needs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

Target = Callable[[bytes], None]

# name -> (module, function)
TARGETS: dict[str, tuple[str, str]] = {
    "pptp_decode": ("fuzz.t_pptp", "target_pptp_decode"),
    "pptp_stream": ("fuzz.t_pptp", "target_pptp_stream"),
    "pptp_control": ("fuzz.t_pptp", "target_pptp_control"),
    "gre_decode": ("fuzz.t_gre", "target_gre_decode"),
    "gre_session": ("fuzz.t_gre", "target_gre_session"),
    "reorder": ("fuzz.t_gre", "target_reorder"),
    "ppp_frame": ("fuzz.t_ppp", "target_ppp_frame"),
    "ppp_options": ("fuzz.t_ppp", "target_ppp_options"),
    "ppp_fsm": ("fuzz.t_ppp", "target_ppp_fsm"),
    "lcp": ("fuzz.t_ppp", "target_lcp"),
    "ipcp": ("fuzz.t_ppp", "target_ipcp"),
    "ipv6cp": ("fuzz.t_ppp", "target_ipv6cp"),
    "ccp": ("fuzz.t_ppp", "target_ccp"),
    "auth_codecs": ("fuzz.t_auth", "target_auth_codecs"),
    "auth": ("fuzz.t_auth", "target_auth"),
    "mppe": ("fuzz.t_mppe", "target_mppe"),
    "link": ("fuzz.t_link", "target_link"),
    "stack": ("fuzz.t_stack", "target_stack"),
    "offload_segment": ("fuzz.t_offload", "target_offload_segment"),
    "offload_coalesce": ("fuzz.t_offload", "target_offload_coalesce"),
}

SEED_MODULES = (
    "fuzz.t_pptp",
    "fuzz.t_gre",
    "fuzz.t_ppp",
    "fuzz.t_auth",
    "fuzz.t_mppe",
    "fuzz.t_link",
    "fuzz.t_stack",
    "fuzz.t_offload",
)


def load(name: str) -> Target:
    """The target function called ``name`` (imports its module)."""
    module, function = TARGETS[name]
    fn: Target = getattr(importlib.import_module(module), function)
    return fn


def encoder_seeds() -> dict[str, list[bytes]]:
    """Seed inputs built with our own encoders, per target (make_corpus adds scapy-built ones)."""
    out: dict[str, list[bytes]] = {}
    for module in SEED_MODULES:
        for name, items in importlib.import_module(module).seeds().items():
            out.setdefault(name, []).extend(items)
    missing = set(TARGETS) - set(out)
    assert not missing, f"targets without seeds: {missing}"
    return out
