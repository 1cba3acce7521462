"""The server's user table: pppd's ``chap-secrets`` format, so an existing pptpd setup can be reused.

Rules: this module reads text and answers "which secret, which address for this user"; it knows
nothing about sockets or PPP. Passwords live in :class:`~sidecar.proto.secret.Secret` from the
moment they are parsed; no message, repr or log line ever contains one (a parse error names the
file, the line and the column that is wrong, never the field's text when that field is a secret).

Format (one entry per line)::

    # client     server    secret              IP addresses
    alice        pptpd     "correct horse"     *
    bob          *         s3cret              10.0.0.50
    *            pptpd     shared-for-anyone   10.0.0.0/28

- Words are separated by blanks or tabs. A word may be quoted with ``"..."`` or ``'...'`` (so it can
  hold spaces or ``#``); quoted and unquoted parts next to each other join into one word
  (``ab"c d"`` is ``abc d``). A backslash escapes the next character (``\\"``, ``\\\\``, ``\\ ``), and
  ``\\n``/``\\t``/``\\r`` mean newline/tab/carriage return, inside or outside quotes.
- ``#`` where a word would start begins a comment that runs to the end of the line (``pa#ss`` is a
  password, not a comment). A backslash at the end of a line continues the entry on the next line.
- ``*`` in the client column matches any user name; in the server column any server name.
- The 4th and later columns list the addresses the client may have: ``*`` or nothing means any
  address from the pool; a single address (``10.0.0.50``) is assigned to that client; a subnet
  (``10.0.0.0/28``) restricts the pool address to that subnet.
- When several entries match, the first with an exact client name wins over a wildcard client,
  and an exact server name wins over ``*`` (as pppd prefers the best match).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from sidecar.proto.secret import Secret

WILDCARD = "*"
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}


class SecretsError(ValueError):
    """The secrets file cannot be used. The message names the file, the line and the problem."""


@dataclass(frozen=True)
class SecretEntry:
    client: str
    server: str
    secret: Secret = dataclasses.field(repr=False)
    addresses: tuple[IPv4Network, ...]  # empty = any pool address
    line: int

    @property
    def fixed_address(self) -> IPv4Address | None:
        """The one address this client is given (the first single-host entry), if the file names one."""
        for net in self.addresses:
            if net.prefixlen == 32:
                return net.network_address
        return None

    def allows(self, address: IPv4Address) -> bool:
        return not self.addresses or any(address in net for net in self.addresses)


@dataclass(frozen=True)
class _Word:
    text: str
    column: int
    line: int


def _words(text: str, where: str) -> Iterator[list[_Word]]:
    """Split the file into entries (lists of words), handling quotes, escapes, comments, continuations."""
    line_no = 1
    col = 0
    i = 0
    n = len(text)
    entry: list[_Word] = []
    while i < n:
        c = text[i]
        if c == "\n":
            if entry:
                yield entry
                entry = []
            i += 1
            line_no += 1
            col = 0
            continue
        if c in " \t\r\f\v":
            i += 1
            col += 1
            continue
        if c == "#":
            while i < n and text[i] != "\n":
                i += 1
            continue
        if c == "\\" and i + 1 < n and text[i + 1] == "\n":  # continuation before a word
            i += 2
            line_no += 1
            col = 0
            continue
        # a word starts here
        start_col = col + 1
        start_line = line_no
        out: list[str] = []
        quote: str | None = None
        quote_col = 0
        while i < n:
            c = text[i]
            if quote is None and c in " \t\r\f\v\n":
                break
            if c == "\\":
                if i + 1 >= n:
                    raise SecretsError(f"{where}:{line_no}:{col + 1}: backslash at the end of the file")
                nxt = text[i + 1]
                if nxt == "\n":  # continuation inside a word (or inside quotes)
                    i += 2
                    line_no += 1
                    col = 0
                    continue
                out.append(_ESCAPES.get(nxt, nxt))
                i += 2
                col += 2
                continue
            if quote is not None:
                if c == quote:
                    quote = None
                elif c == "\n":
                    raise SecretsError(
                        f"{where}:{line_no}:{quote_col}: quote {quote} opened here is not closed on "
                        "this line (close it, or end the line with a backslash to continue)"
                    )
                else:
                    out.append(c)
                i += 1
                col += 1
                continue
            if c in "\"'":
                quote = c
                quote_col = col + 1
                i += 1
                col += 1
                continue
            out.append(c)
            i += 1
            col += 1
        if quote is not None:
            raise SecretsError(f"{where}:{line_no}:{quote_col}: quote {quote} is never closed")
        entry.append(_Word("".join(out), start_col, start_line))
    if entry:
        yield entry


def _parse_address(word: _Word, where: str) -> IPv4Network | None:
    text = word.text
    pos = f"{where}:{word.line}:{word.column}"
    if text == WILDCARD:
        return None
    if text.startswith(("-", "!")):
        raise SecretsError(
            f"{pos}: address exclusions ({text[:1]}ADDR) are not supported; list the allowed "
            "address or subnet instead, or * for any pool address"
        )
    if text.startswith("@") or text.endswith("+"):
        raise SecretsError(
            f"{pos}: {text!r}: address files and '+' forms are not supported; use an IPv4 address, "
            "a subnet like 10.0.0.0/28, or *"
        )
    try:
        if "/" in text:
            return IPv4Network(text, strict=False)
        return IPv4Network(IPv4Address(text))
    except ValueError:
        raise SecretsError(
            f"{pos}: {text!r} is not an IPv4 address, a subnet (A.B.C.D/N) or *; "
            "host names are not supported here"
        ) from None


def parse_secrets(text: str, source: str = "<secrets>") -> tuple[SecretEntry, ...]:
    """Parse chap-secrets text. ``source`` names the file in error messages."""
    entries: list[SecretEntry] = []
    for words in _words(text, source):
        first = words[0]
        if len(words) < 3:
            missing = "server and secret" if len(words) == 1 else "secret"
            raise SecretsError(
                f"{source}:{first.line}: entry for client {first.text!r} has no {missing} "
                "(expected: client server secret [addresses...])"
            )
        client, server, secret = words[0], words[1], words[2]
        if client.text == "":
            raise SecretsError(f"{source}:{client.line}:{client.column}: the client name is empty")
        if server.text == "":
            raise SecretsError(
                f"{source}:{server.line}:{server.column}: the server name is empty (use * for any server)"
            )
        addrs = [_parse_address(w, source) for w in words[3:]]
        if None in addrs and len(addrs) > 1:
            w = words[3 + addrs.index(None)]
            raise SecretsError(
                f"{source}:{w.line}:{w.column}: * (any address) cannot be combined with other addresses"
            )
        entries.append(
            SecretEntry(
                client=client.text,
                server=server.text,
                secret=Secret(secret.text),
                addresses=tuple(a for a in addrs if a is not None),
                line=client.line,
            )
        )
    return tuple(entries)


class SecretsTable:
    """The parsed file, answering lookups by (user name, our server name)."""

    def __init__(self, entries: tuple[SecretEntry, ...], server_name: str, source: str = "<secrets>"):
        self.entries = entries
        self.server_name = server_name
        self.source = source

    @classmethod
    def load(cls, path: Path, server_name: str) -> SecretsTable:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SecretsError(f"{path}: secrets file not found (set --secrets or PPTP_SECRETS)") from None
        except PermissionError:
            raise SecretsError(f"{path}: cannot read the secrets file (permission denied)") from None
        except UnicodeDecodeError as exc:
            raise SecretsError(f"{path}: not UTF-8 text (byte offset {exc.start})") from None
        except OSError as exc:
            raise SecretsError(f"{path}: cannot read the secrets file: {exc.strerror}") from None
        return cls(parse_secrets(text, str(path)), server_name, str(path))

    def find(self, user: str) -> SecretEntry | None:
        """The best entry for ``user`` talking to us: exact client beats *, exact server beats *."""
        best: SecretEntry | None = None
        best_score = -1
        for e in self.entries:
            if e.client != user and e.client != WILDCARD:
                continue
            if e.server != self.server_name and e.server != WILDCARD:
                continue
            score = (2 if e.client == user else 0) + (1 if e.server == self.server_name else 0)
            if score > best_score:
                best, best_score = e, score
        return best

    def lookup(self, user: str) -> Secret | None:
        entry = self.find(user)
        return entry.secret if entry is not None else None

    def unused_entries(self) -> list[SecretEntry]:
        """Entries that can never match because their server column names another server."""
        return [e for e in self.entries if e.server not in (WILDCARD, self.server_name)]

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return f"SecretsTable({self.source!r}, {len(self.entries)} entries, server_name={self.server_name!r})"


def fixed_addresses(entries: tuple[SecretEntry, ...]) -> dict[IPv4Address, str]:
    """Addresses the file pins to a client (address -> client), to keep them out of the shared pool."""
    out: dict[IPv4Address, str] = {}
    for e in entries:
        addr = e.fixed_address
        if addr is not None and e.client != WILDCARD:
            out.setdefault(addr, e.client)
    return out
