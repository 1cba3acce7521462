"""sidecar.observe: the HTTP listener on a real loopback socket, Prometheus metrics, log formats."""

from __future__ import annotations

import io
import json
import logging
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from sidecar.observe import http as http_mod
from sidecar.observe.http import serve_http
from sidecar.observe.log import JsonFormatter, RedactFilter, reset_logging, setup_logging
from sidecar.state import State, StatusBoard


class Clock:
    def __init__(self) -> None:
        self.t = 500.0

    def __call__(self) -> float:
        return self.t


def with_listener(board: StatusBoard, body: Callable[[int], Any]) -> Any:
    """Run serve_http on 127.0.0.1:0, call body(port) in a thread, return its result."""
    result: list[Any] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_http, "127.0.0.1", 0, board)
            result.append(await trio.to_thread.run_sync(body, port))
            nursery.cancel_scope.cancel()

    trio.run(main)
    return result[0]


def get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def metrics_of(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


@pytest.fixture
def board_clock() -> tuple[StatusBoard, Clock]:
    clock = Clock()
    board = StatusBoard(server="vpn.example", interface="pptp0", echo_interval=10.0, clock=clock)
    return board, clock


def test_endpoints_follow_the_board(board_clock: tuple[StatusBoard, Clock]) -> None:
    board, clock = board_clock

    def body(port: int) -> None:
        assert get(port, "/healthz")[::2] == (200, b"ok\n")
        code, _, text = get(port, "/readyz")
        assert (code, text) == (503, b"not ready: tunnel is starting\n")

        board.link_up(local_ip="10.0.0.2", peer_ip="10.0.0.1", mtu=1400, encryption="mppe-128 stateless")
        assert get(port, "/readyz")[::2] == (200, b"ok\n")

        clock.t += 31  # no echo for > 3 x 10 s, and the supervisor stopped beating
        code, _, text = get(port, "/readyz")
        assert code == 503 and text.startswith(b"not ready: last LCP echo reply 31.0s ago")
        code, _, text = get(port, "/healthz")
        assert code == 503 and b"heartbeat" in text

        board.beat()
        board.record_echo(0.02)
        assert get(port, "/readyz")[0] == 200 and get(port, "/healthz")[0] == 200

        board.set_state(State.FAILED, "gave up")
        assert get(port, "/healthz")[0] == 503

    with_listener(board, body)


def test_status_is_the_snapshot_as_json(board_clock: tuple[StatusBoard, Clock]) -> None:
    board, _ = board_clock
    board.link_up(local_ip="10.0.0.2", peer_ip="10.0.0.1", dns=["10.0.0.53"])
    board.publish_counters({"bytes_in": 42})

    code, headers, body = with_listener(board, lambda port: get(port, "/status?pretty=1"))
    assert code == 200 and headers["Content-Type"] == "application/json"
    doc = json.loads(body)
    assert doc == json.loads(json.dumps(board.snapshot()))
    assert doc["local_ip"] == "10.0.0.2" and doc["counters"] == {"bytes_in": 42}


def test_reads_pull_live_counters_and_survive_a_failing_refresher(
    board_clock: tuple[StatusBoard, Clock],
) -> None:
    board, _ = board_clock
    live = {"bytes_in": 0}
    pulls: list[str] = []

    def refresher() -> None:
        pulls.append("pull")
        live["bytes_in"] += 100
        board.publish_counters(live)

    board.refresher = refresher

    def body(port: int) -> tuple[Any, ...]:
        first = json.loads(get(port, "/status")[2])["counters"]["bytes_in"]
        second = json.loads(get(port, "/status")[2])["counters"]["bytes_in"]
        scraped = metrics_of(get(port, "/metrics")[2].decode())
        get(port, "/healthz")  # probes do not pull
        return first, second, scraped

    first, second, scraped = with_listener(board, body)
    assert (first, second) == (100, 200) and len(pulls) == 3
    bytes_in = [
        v for (name, labels), v in scraped.items() if "tunnel_bytes" in name and ("direction", "in") in labels
    ]
    assert bytes_in == [300]

    def broken() -> None:
        raise RuntimeError("owner is gone")

    board.refresher = broken
    code, _, text = with_listener(board, lambda port: get(port, "/status"))
    assert code == 200 and json.loads(text)["counters"]["bytes_in"] == 300


def test_metrics_parse_and_reflect_the_board(board_clock: tuple[StatusBoard, Clock]) -> None:
    board, _ = board_clock
    board.begin_session()
    board.publish_counters(
        {
            "bytes_in": 1000,
            "bytes_out": 700,
            "packets_in": 10,
            "packets_out": 7,
            "gre_rx": 11,
            "gre_bad_call_id": 2,
            "reorder_late": 3,
            "reorder_from_buffer": 4,
            "mppe_dropped": 1,
        }
    )
    board.record_auth_failure("nope")
    board.record_reconnect("lost")
    board.begin_session()
    board.publish_counters({"bytes_in": 5})
    board.link_up(local_ip="10.0.0.2", peer_ip="10.0.0.1", mtu=1400, encryption="mppe-128 stateless")
    board.record_echo(0.015)

    code, headers, body = with_listener(board, lambda port: get(port, "/metrics"))
    assert code == 200 and headers["Content-Type"].startswith("text/plain; version=")
    m = metrics_of(body.decode())
    assert m[("pptp_sidecar_tunnel_bytes_total", (("direction", "in"),))] == 1005
    assert m[("pptp_sidecar_tunnel_bytes_total", (("direction", "out"),))] == 700
    assert m[("pptp_sidecar_tunnel_packets_total", (("direction", "in"),))] == 10
    assert m[("pptp_sidecar_gre_events_total", (("counter", "bad_call_id"),))] == 2
    assert m[("pptp_sidecar_gre_events_total", (("counter", "rx"),))] == 11
    assert m[("pptp_sidecar_reorder_events_total", (("counter", "late"),))] == 3
    assert m[("pptp_sidecar_events_total", (("area", "mppe"), ("counter", "dropped")))] == 1
    assert m[("pptp_sidecar_reconnects_total", ())] == 1
    assert m[("pptp_sidecar_auth_failures_total", ())] == 1
    assert m[("pptp_sidecar_sessions_total", ())] == 2
    assert m[("pptp_sidecar_state", (("pptp_sidecar_state", "up"),))] == 1
    assert m[("pptp_sidecar_state", (("pptp_sidecar_state", "reconnecting"),))] == 0
    assert m[("pptp_sidecar_up", ())] == 1 and m[("pptp_sidecar_ready", ())] == 1
    assert m[("pptp_sidecar_lcp_echo_rtt_seconds", ())] == 0.015
    assert m[("pptp_sidecar_encryption_info", (("encryption", "mppe-128 stateless"),))] == 1
    assert m[("pptp_sidecar_mtu", ())] == 1400
    assert ("pptp_sidecar_tunnel_up_since_seconds", ()) in m
    assert any(name == "process_resident_memory_bytes" for name, _ in m)


def test_metrics_when_down_have_no_link_series(board_clock: tuple[StatusBoard, Clock]) -> None:
    board, _ = board_clock
    board.set_state(State.CONNECTING)
    m = metrics_of(with_listener(board, lambda port: get(port, "/metrics"))[2].decode())
    assert m[("pptp_sidecar_up", ())] == 0
    assert m[("pptp_sidecar_state", (("pptp_sidecar_state", "connecting"),))] == 1
    assert not any(name.startswith(("pptp_sidecar_mtu", "pptp_sidecar_lcp_echo_rtt")) for name, _ in m)


def test_http_errors_and_head(board_clock: tuple[StatusBoard, Clock]) -> None:
    board, _ = board_clock

    def body(port: int) -> None:
        assert get(port, "/nope")[0] == 404
        code, headers, _ = get(port, "/healthz", method="POST")
        assert code == 405 and headers["Allow"] == "GET, HEAD"
        code, headers, text = get(port, "/healthz", method="HEAD")
        assert code == 200 and text == b"" and headers["Content-Length"] == "3"
        assert raw(port, b"garbage\r\n\r\n").startswith(b"HTTP/1.1 400 ")
        assert raw(port, b"GET /" + b"a" * 10000).startswith(b"HTTP/1.1 431 ")
        assert raw(port, b"") == b""  # a client that connects and closes gets nothing
        assert raw(port, b"GET /healthz HTTP/1.1").startswith(b"HTTP/1.1 200 ")  # head cut short by EOF
        assert get(port, "/")[0] == 200

    with_listener(board, body)


def test_slow_client_times_out(
    board_clock: tuple[StatusBoard, Clock], monkeypatch: pytest.MonkeyPatch
) -> None:
    board, _ = board_clock
    monkeypatch.setattr(http_mod, "READ_TIMEOUT", 0.2)

    def body(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\n")  # never finishes the head
            return s.recv(4096)

    assert with_listener(board, body).startswith(b"HTTP/1.1 408 ")


def test_serve_http_reports_the_bound_port() -> None:
    board = StatusBoard()

    async def main() -> int:
        async with trio.open_nursery() as nursery:
            port: int = await nursery.start(serve_http, "127.0.0.1", 0, board)
            nursery.cancel_scope.cancel()
        return port

    assert trio.run(main) > 0


# -- logging ------------------------------------------------------------------------------------------
SECRET = "correct-horse-battery"


def _capture(fmt: str, secrets: tuple[str, ...] = (SECRET,)) -> io.StringIO:
    buf = io.StringIO()
    setup_logging("debug", fmt, secrets=secrets, stream=buf)
    return buf


def test_json_lines_have_the_fields_and_extras() -> None:
    buf = _capture("json")
    logging.getLogger("sidecar.test").info("link up %s", "now", extra={"local_ip": "10.0.0.2", "mtu": 1400})
    logging.getLogger("sidecar.test").debug("second\nline")
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["level"] == "info" and first["logger"] == "sidecar.test" and first["msg"] == "link up now"
    assert first["local_ip"] == "10.0.0.2" and first["mtu"] == 1400
    assert first["ts"].endswith("Z") and "T" in first["ts"]
    assert json.loads(lines[1])["msg"] == "second\nline"


def test_text_format() -> None:
    buf = _capture("text")
    logging.getLogger("sidecar.test").warning("peer said %s", "bye", extra={"reason": "two words"})
    line = buf.getvalue().strip()
    assert ' WARNING sidecar.test: peer said bye reason="two words"' in line


def test_levels_filter() -> None:
    buf = io.StringIO()
    setup_logging("warning", "text", stream=buf)
    logging.getLogger("sidecar.test").info("hidden")
    logging.getLogger("sidecar.test").error("shown")
    assert "hidden" not in buf.getvalue() and "shown" in buf.getvalue()


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_password_is_redacted_everywhere(fmt: str) -> None:
    from Crypto.Hash import MD4

    nt_hash = MD4.new(SECRET.encode("utf-16-le")).hexdigest()
    buf = _capture(fmt)
    log = logging.getLogger("sidecar.test")
    log.info("password is %s", SECRET, extra={"detail": f"pw={SECRET}", "nested": {"a": [SECRET]}})
    log.info("hash %s and %s", nt_hash, nt_hash.upper())
    try:
        raise ValueError(f"bad {SECRET}")
    except ValueError:
        log.exception("failed")
    out = buf.getvalue()
    assert SECRET not in out and nt_hash not in out and nt_hash.upper() not in out
    assert out.count("***") >= 6


def test_short_passwords_are_not_searched_for() -> None:
    f = RedactFilter(["abc"])
    assert f.redact("abcdef") == "abcdef"
    assert RedactFilter(["abcd"]).redact("xabcdx") == "x***x"


def test_json_formatter_survives_odd_extras() -> None:
    record = logging.LogRecord("sidecar.x", logging.INFO, __file__, 1, "m", None, None)
    record.__dict__["obj"] = object()
    record.__dict__["addr"] = ("10.0.0.1", 5)
    doc = json.loads(JsonFormatter().format(record))
    assert doc["addr"] == ["10.0.0.1", 5] and doc["obj"].startswith("<object")


@pytest.fixture(autouse=True)
def _reset_logging() -> Any:
    yield
    reset_logging()


def test_status_and_metrics_mask_the_password_as_defence_in_depth(
    board_clock: tuple[StatusBoard, Clock],
) -> None:
    board, _ = board_clock
    setup_logging("info", "text", secrets=(SECRET,), stream=io.StringIO())
    board.record_error(f"server said: bad password {SECRET}")  # a careless message upstream
    board.link_up(local_ip="10.0.0.2", peer_ip="10.0.0.1", encryption=f"weird {SECRET}")

    def body(port: int) -> tuple[bytes, bytes]:
        return get(port, "/status")[2], get(port, "/metrics")[2]

    status, metrics = with_listener(board, body)
    assert SECRET.encode() not in status and b"bad password ***" in status
    assert SECRET.encode() not in metrics and b'encryption="weird ***"' in metrics
