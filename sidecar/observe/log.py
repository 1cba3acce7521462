"""Logging: text or JSON lines on stderr, and a filter that keeps the password out of them.

Rules: the code logs through ``logging.getLogger("sidecar.<module>")`` and passes structured facts
with ``extra={...}``; this module decides how a record looks. JSON format is one object per line with
``ts`` (UTC, ISO 8601, milliseconds), ``level``, ``logger``, ``msg`` and every extra field; text format
is ``ts LEVEL logger: msg key=value ...``.

Secrets are kept out by construction (:class:`~sidecar.proto.secret.Secret` prints ``***``). The
:class:`RedactFilter` is defence in depth: it replaces any occurrence of the configured password (and
of its NT hash in hex, the thing MS-CHAP derives from it) in the message, the extra fields and the
traceback text with ``***``. Passwords shorter than :data:`MIN_REDACT` characters are not searched
for: redacting every ``a`` would make the logs useless, and such a password has bigger problems.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import sys
import traceback
from collections.abc import Iterable
from typing import IO, Any

from sidecar.proto.secret import Secret

MASK = "***"
MIN_REDACT = 4

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _nt_hash_hex(password: str) -> str | None:
    try:
        from Crypto.Hash import MD4
    except ImportError:  # pragma: no cover - pycryptodome is a dependency
        return None
    return MD4.new(password.encode("utf-16-le")).hexdigest()


class RedactFilter(logging.Filter):
    """Replace secret values in a record (message, args, extras, traceback) with ``***``."""

    def __init__(self, secrets: Iterable[Secret | str]) -> None:
        super().__init__()
        needles: set[str] = set()
        for s in secrets:
            value = s.reveal() if isinstance(s, Secret) else s
            if len(value) < MIN_REDACT:
                continue
            needles.add(value)
            digest = _nt_hash_hex(value)
            if digest:
                needles.update((digest, digest.upper()))
        # Longest first, so a secret that contains another is masked whole.
        self._needles = sorted(needles, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for needle in self._needles:
            if needle in text:
                text = text.replace(needle, MASK)
        return text

    def _value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, (list, tuple)):
            return type(value)(self._value(v) for v in value)
        if isinstance(value, dict):
            return {k: self._value(v) for k, v in value.items()}
        if isinstance(value, (int, float, bool)) or value is None:
            return value
        return self.redact(str(value))

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._needles:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: keep the raw parts
            message = f"{record.msg} {record.args}"
        record.msg = self.redact(message)
        record.args = None
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD:
                record.__dict__[key] = self._value(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def _ts(record: logging.LogRecord) -> str:
    stamp = _dt.datetime.fromtimestamp(record.created, tz=_dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(record.msecs):03d}Z"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, extra fields, exc (traceback) if any."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": _ts(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extras(record).items():
            if key not in obj:
                obj[key] = _jsonable(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            obj["exc"] = record.exc_text
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``2024-01-01T00:00:00.000Z INFO    sidecar.tunnel: link up key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_ts(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{k}={_text_value(v)}" for k, v in extras.items())
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        return line


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(_jsonable(value))
    if not text or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text)
    return text


_installed: logging.Handler | None = None
_active: RedactFilter | None = None


def redact(text: str) -> str:
    """Mask the configured secrets in any text (the HTTP listener runs /status and /metrics through it)."""
    return _active.redact(text) if _active is not None else text


def setup_logging(
    level: str = "info",
    fmt: str = "text",
    *,
    secrets: Iterable[Secret | str] = (),
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Send all logging to ``stream`` (stderr) in the chosen format, with the redaction filter.

    Calling it again replaces the handler this module installed (not others).
    """
    global _installed, _active
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    _active = RedactFilter(secrets)
    handler.addFilter(_active)
    root = logging.getLogger()
    if _installed is not None:
        root.removeHandler(_installed)
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(level, logging.INFO))
    _installed = handler
    return handler


def reset_logging() -> None:
    """Remove the handler :func:`setup_logging` installed (tests; embedding)."""
    global _installed, _active
    if _installed is not None:
        logging.getLogger().removeHandler(_installed)
        _installed = None
    _active = None
