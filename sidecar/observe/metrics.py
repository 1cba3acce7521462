"""Prometheus metrics, read from the status board at scrape time.

Rules: nothing here counts anything itself. :class:`BoardCollector` is a custom ``prometheus_client``
collector that turns one :meth:`StatusBoard.snapshot` into metric families on every scrape, so the
protocol and kernel code never import ``prometheus_client`` and there is no second copy of a counter
to keep in sync. Counters published by the session are totals across reconnects (the board folds each
finished session's values in), so they are true Prometheus counters.

Families (all prefixed ``pptp_sidecar_``): ``info``, ``state`` (a state set: one series per state),
``up``, ``ready``, ``alive``, ``sessions_total``, ``reconnects_total``, ``auth_failures_total``,
``tunnel_bytes_total{direction}``, ``tunnel_packets_total{direction}``, ``gre_events_total{counter}``,
``reorder_events_total{counter}``, ``events_total{area,counter}`` (every other published counter),
``lcp_echo_rtt_seconds``, ``lcp_echo_reply_age_seconds``, ``encryption_info{encryption}``, ``mtu``,
``tunnel_up_since_seconds`` (Unix time), ``heartbeat_age_seconds``; plus the standard ``process_*``.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
    StateSetMetricFamily,
)
from prometheus_client.registry import Collector

from sidecar import __version__
from sidecar.state import TRAFFIC_KEYS, State, StatusBoard

PREFIX = "pptp_sidecar"
__all__ = ["CONTENT_TYPE_LATEST", "BoardCollector", "make_registry", "render"]


class BoardCollector(Collector):
    def __init__(self, board: StatusBoard) -> None:
        self.board = board

    def collect(self) -> Iterator[Metric]:
        snap = self.board.snapshot()
        p = PREFIX
        yield InfoMetricFamily(
            f"{p}_build",
            "Version, role, server and interface of this process",
            value={
                "version": __version__,
                "role": snap["role"],
                "server": snap["server"],
                "interface": snap["interface"],
            },
        )
        yield StateSetMetricFamily(
            f"{p}_state",
            "Current state of the tunnel (1 for the current state)",
            value={s.value: snap["state"] == s.value for s in State},
        )
        yield GaugeMetricFamily(f"{p}_up", "1 when the tunnel is up", value=int(snap["state"] == "up"))
        yield GaugeMetricFamily(f"{p}_ready", "1 when /readyz answers ok", value=int(snap["ready"]))
        yield GaugeMetricFamily(f"{p}_alive", "1 when /healthz answers ok", value=int(snap["alive"]))
        yield CounterMetricFamily(f"{p}_sessions", "Sessions started", value=snap["sessions"])
        yield CounterMetricFamily(
            f"{p}_reconnects", "Reconnections after a lost session", value=snap["reconnects"]
        )
        yield CounterMetricFamily(
            f"{p}_auth_failures", "Authentication failures", value=snap["auth_failures"]
        )

        counters: dict[str, int] = snap["counters"]
        traffic_bytes = CounterMetricFamily(
            f"{p}_tunnel_bytes", "IP bytes through the tunnel (in = from the peer)", labels=["direction"]
        )
        traffic_packets = CounterMetricFamily(
            f"{p}_tunnel_packets", "IP packets through the tunnel (in = from the peer)", labels=["direction"]
        )
        for direction in ("in", "out"):
            traffic_bytes.add_metric([direction], counters.get(f"bytes_{direction}", 0))
            traffic_packets.add_metric([direction], counters.get(f"packets_{direction}", 0))
        yield traffic_bytes
        yield traffic_packets

        gre = CounterMetricFamily(f"{p}_gre_events", "GRE counters", labels=["counter"])
        reorder = CounterMetricFamily(f"{p}_reorder_events", "GRE reorder queue counters", labels=["counter"])
        other = CounterMetricFamily(f"{p}_events", "Other session counters", labels=["area", "counter"])
        for key in sorted(counters):
            if key in TRAFFIC_KEYS:
                continue
            area, _, name = key.partition("_")
            value = counters[key]
            if area == "gre" and name:
                gre.add_metric([name], value)
            elif area == "reorder" and name:
                reorder.add_metric([name], value)
            else:
                other.add_metric([area if name else "", name or key], value)
        yield gre
        yield reorder
        yield other

        if snap["echo_rtt_s"] is not None:
            yield GaugeMetricFamily(
                f"{p}_lcp_echo_rtt_seconds", "Round-trip time of the last LCP echo", value=snap["echo_rtt_s"]
            )
        if snap["last_echo_reply_age_s"] is not None:
            yield GaugeMetricFamily(
                f"{p}_lcp_echo_reply_age_seconds",
                "Seconds since the peer last answered an LCP echo",
                value=snap["last_echo_reply_age_s"],
            )
        enc = GaugeMetricFamily(
            f"{p}_encryption_info", "Negotiated encryption (MPPE mode) of the link", labels=["encryption"]
        )
        if snap["encryption"] is not None:
            enc.add_metric([snap["encryption"]], 1)
        yield enc
        if snap["mtu"] is not None:
            yield GaugeMetricFamily(f"{p}_mtu", "MTU of the tunnel interface", value=snap["mtu"])
        if snap["up_since"] is not None:
            yield GaugeMetricFamily(
                f"{p}_tunnel_up_since_seconds", "Unix time the tunnel came up", value=snap["up_since"]
            )
        yield GaugeMetricFamily(
            f"{p}_heartbeat_age_seconds",
            "Seconds since the supervisor's last heartbeat",
            value=snap["heartbeat_age_s"],
        )


def make_registry(board: StatusBoard, *, process: bool = True) -> CollectorRegistry:
    """A private registry (not the global one) with the board collector and the process metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BoardCollector(board))
    if process:
        ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
