"""The health, readiness, status and metrics listener: a minimal HTTP/1.1 GET server on trio streams.

Rules: read-only view of the :class:`~sidecar.state.StatusBoard`; it never changes the tunnel. Four
fixed paths, ``GET``/``HEAD`` only, one request per connection (``Connection: close``), no request
bodies. That is all a Docker HEALTHCHECK, a Kubernetes probe and a Prometheus scrape need, so it is
written directly on trio streams instead of adding an HTTP library (h11 would parse the same request
line and headers; there is nothing else to parse here). Limits keep a misbehaving client harmless:
8 KiB of request head, 5 s to send it, at most 32 connections at once (more are closed at once).

- ``/healthz``: 200 when the process and its supervisor are alive, else 503 with the reason.
- ``/readyz``: 200 when the tunnel is up and the peer answered an LCP echo recently, else 503.
- ``/metrics``: Prometheus text format (``sidecar.observe.metrics``).
- ``/status``: the board's snapshot as JSON (it never holds a secret).
"""

from __future__ import annotations

import json
import logging

import trio

from sidecar.observe import health, metrics
from sidecar.observe.log import redact
from sidecar.state import StatusBoard

log = logging.getLogger("sidecar.observe.http")

MAX_HEAD = 8192
READ_TIMEOUT = 5.0
MAX_CONNECTIONS = 32

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_TEXT = "text/plain; charset=utf-8"
_INDEX = "pptp-sidecar: /healthz /readyz /metrics /status\n"


class HttpApp:
    """Turns a request line into a response; separate from the socket code so it is easy to test."""

    def __init__(self, board: StatusBoard) -> None:
        self.board = board
        self.registry = metrics.make_registry(board)

    def handle(self, method: str, target: str) -> tuple[int, str, bytes, dict[str, str]]:
        """(status, content type, body, extra headers)."""
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, _TEXT, b"only GET and HEAD\n", {"Allow": "GET, HEAD"}
        if path == "/healthz":
            code, text = health.liveness(self.board)
            return code, _TEXT, text.encode(), {}
        if path == "/readyz":
            code, text = health.readiness(self.board)
            return code, _TEXT, text.encode(), {}
        # The board never holds a secret; masking the configured password here as well is defence in
        # depth against one slipping into an error text (last_error, timeline details, labels).
        if path in ("/metrics", "/status"):
            self.board.refresh()
        if path == "/metrics":
            text = metrics.render(self.registry).decode()
            return 200, metrics.CONTENT_TYPE_LATEST, redact(text).encode(), {}
        if path == "/status":
            text = json.dumps(self.board.snapshot(), indent=2, sort_keys=True) + "\n"
            return 200, "application/json", redact(text).encode(), {}
        if path == "/":
            return 200, _TEXT, _INDEX.encode(), {}
        return 404, _TEXT, b"not found: try /healthz /readyz /metrics /status\n", {}


def _response(
    code: int, ctype: str, body: bytes, headers: dict[str, str], *, head_only: bool = False
) -> bytes:
    lines = [
        f"HTTP/1.1 {code} {_REASONS.get(code, 'Unknown')}",
        f"Content-Type: {ctype}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "Connection: close",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return head if head_only else head + body


def _error(code: int, text: str) -> bytes:
    return _response(code, _TEXT, text.encode(), {})


async def _read_head(stream: trio.abc.ReceiveStream) -> bytes | None:
    """The request head up to the blank line; None if the client closed early."""
    buf = bytearray()
    while b"\r\n\r\n" not in buf and b"\n\n" not in buf:
        if len(buf) > MAX_HEAD:
            raise OverflowError
        chunk = await stream.receive_some(4096)
        if not chunk:
            return None if not buf else bytes(buf)
        buf += chunk
    return bytes(buf)


async def _serve_one(app: HttpApp, stream: trio.SocketStream) -> None:
    out: bytes | None
    try:
        with trio.move_on_after(READ_TIMEOUT) as scope:
            head = await _read_head(stream)
        if scope.cancelled_caught:
            out = _error(408, "request head not received in time\n")
        elif head is None:
            return
        else:
            request_line = head.split(b"\n", 1)[0].rstrip(b"\r").decode("latin-1")
            parts = request_line.split()
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                out = _error(400, "expected: GET /path HTTP/1.1\n")
            else:
                method, target, _version = parts
                code, ctype, body, headers = app.handle(method, target)
                out = _response(code, ctype, body, headers, head_only=method == "HEAD")
    except OverflowError:
        out = _error(431, f"request head larger than {MAX_HEAD} bytes\n")
    except trio.BrokenResourceError:
        return
    except Exception:
        log.exception("health listener: error while answering a request")
        out = _error(500, "internal error\n")
    try:
        with trio.move_on_after(READ_TIMEOUT):
            await stream.send_all(out)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        with trio.move_on_after(1):
            await stream.aclose()


async def serve_http(
    host: str,
    port: int,
    board: StatusBoard,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``host:port`` and answer until cancelled. ``task_status.started`` gets the bound port
    (useful with ``port=0``)."""
    app = HttpApp(board)
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    log.info(
        "health listener on %s:%d", host, bound, extra={"endpoints": "/healthz /readyz /metrics /status"}
    )
    limiter = trio.Semaphore(MAX_CONNECTIONS)

    async def handler(stream: trio.SocketStream) -> None:
        if limiter.value == 0:
            await stream.aclose()
            return
        async with limiter:
            await _serve_one(app, stream)

    task_status.started(bound)
    await trio.serve_listeners(handler, listeners)
