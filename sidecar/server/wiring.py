"""Builds one client's protocol stack in the server role: :class:`sidecar.stack.SessionStack` over
ControlConnection(SERVER) and PppLink(AUTHENTICATOR), from the server's settings.

Rules: no I/O. The order of a session (GRE once the call is up, PPP on top, the goodbye LCP
Terminate -> Call-Disconnect-Notify -> Stop-Control-Connection) is :mod:`sidecar.stack`'s, shared with
the client; this module only chooses the server-role machines and their configuration.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Any

from sidecar.proto.pptp import ControlConfig, ControlConnection, Role
from sidecar.proto.reorder import DEFAULT_REORDER_TIMEOUT, DEFAULT_REORDER_WINDOW
from sidecar.stack import LinkLike, SessionStack, max_mru, tunnel_mtu

if TYPE_CHECKING:
    from sidecar.config import ServeSettings

REORDER_WINDOW = DEFAULT_REORDER_WINDOW
REORDER_TIMEOUT = DEFAULT_REORDER_TIMEOUT
# What we accept from clients: the largest PPP frame whose GRE packet fits an Ethernet path (1460).
# A client on a narrower path caps its own packets (its tunnel MTU comes from its path MTU).
SERVER_MRU = max_mru(1500)
# The server's TUN device: the largest IP packet under SERVER_MRU with MPPE (1456). Each client's
# host route carries that client's own MTU (its LinkUp.mtu, from its MRU), so the kernel never hands
# us a packet bigger than that client accepts.
SERVER_TUN_MTU = tunnel_mtu(1500, peer_mru=SERVER_MRU)
# The client's address is chosen during authentication (it may depend on the user), after the link
# exists; the link insists on an address at construction, so it gets this placeholder, replaced by
# assign_peer_ip() before IPCP can start. A link that came up with it is refused by the session.
PLACEHOLDER_PEER_IP = IPv4Address("0.0.0.0")


def assign_peer_ip(stack: SessionStack, address: IPv4Address) -> None:
    """Give the client ``address`` in IPCP. ``SessionStack.set_peer_ip`` updates the link's config;
    PppLink reads its IPCP address from the IPCP option handler it built at construction, so that
    is updated too (before IPCP starts: authentication comes first)."""
    stack.set_peer_ip(address)
    handler = getattr(stack.link, "_ipcp_h", None)
    if handler is not None and hasattr(handler, "config_peer"):
        handler.config_peer = address


def stack_factory(settings: ServeSettings) -> Callable[[Any, Callable[[str], Any]], SessionStack]:
    """``make(session, lookup)`` -> a fresh stack for one client; ``lookup(user)`` gives the secret
    (and, as a side effect in the session, picks the client's address before IPCP starts)."""
    from sidecar.proto.ppp.link import LinkConfig, LinkRole, PppLink
    from sidecar.proto.ppp.mppe import MppePolicy

    control_config = ControlConfig(
        hostname="pptp-sidecar",
        echo_interval=settings.echo_interval,
        echo_timeout=settings.echo_timeout,
        window=settings.gre_window,
    )

    tap: Any = None
    pcap = getattr(settings, "pcap", None)
    if pcap is not None:
        # --pcap: every client's PPP control frames and clear IP packets, in one file (the kernel
        # wing's tap, the same as the client's; auth secrets masked)
        from sidecar.observe.pcap import PcapTap

        tap = PcapTap.shared(pcap)

    def make(_session: Any, lookup: Callable[[str], Any]) -> SessionStack:
        rng = random.SystemRandom()  # call IDs and challenges must not be predictable
        control = ControlConnection(Role.SERVER, control_config, rng)

        def make_link() -> LinkLike:
            config = LinkConfig(
                mru=SERVER_MRU,
                auth_methods=tuple(settings.auth),
                lookup_secret=lookup,
                mppe=settings.mppe or MppePolicy.REQUIRE,
                mppe_key_bits=frozenset(settings.mppe_key_bits),
                mppe_stateful=settings.mppe_stateful,
                local_ip=settings.local_ip,
                peer_ip=PLACEHOLDER_PEER_IP,
                dns=tuple(settings.dns),
                echo_interval=settings.lcp_echo_interval,
                echo_failures=settings.lcp_echo_failures,
            )
            link: LinkLike = PppLink(LinkRole.AUTHENTICATOR, config, rng)
            return link

        stack = SessionStack(
            control,
            make_link,
            reorder_window=REORDER_WINDOW,
            reorder_timeout=REORDER_TIMEOUT,
            ack_filter=settings.tcp_ack_filter,
        )
        if tap is not None:
            from sidecar.observe.pcap import tap_link

            stack.on_link = lambda link: tap_link(link, tap)
        return stack

    return make
