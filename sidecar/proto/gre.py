"""Enhanced GRE (RFC 2637 §4): the header codec and one call's data session (sequence, ack, reorder).

Rules: this file owns the enhanced-GRE wire format and the per-call sequence/acknowledgement state.
It does not know IP (the caller strips the IP header and sends to the right address), PPP (payloads
are opaque frames) or which side is the client. Sans-IO: ``now`` comes in, bytes come out. Sequence
and ack numbers are compared only through :mod:`sidecar.proto.serial` (RFC 1982, 32 bits).

Wire format (RFC 2637 §4.1), network byte order::

    byte 0: C R K S s Recur(3)   must be 0 0 1 S 0 000     (K: key present, S: sequence present)
    byte 1: A Flags(4) Ver(3)    must be A 0000 001        (A: ack present, version 1)
    bytes 2-3: protocol 0x880B (PPP)
    bytes 4-5: payload length    bytes 6-7: call ID   (together the "key")
    [sequence number, 4 bytes, if S]   [acknowledgement number, 4 bytes, if A]
    payload (exactly ``payload length`` bytes; present only with S)

Theory of operation (:class:`GreSession`)
-----------------------------------------
* Receive: decode and validate; a packet with a bad header or for another call ID is dropped and
  counted, never raised. The ack (if any) updates ``peer_ack`` (the highest of our numbers the peer
  has acknowledged). The payload goes through the :class:`~sidecar.proto.reorder.ReorderQueue`,
  which returns frames in order.
* What we acknowledge: the highest sequence number *accepted* from the peer (delivered, or buffered
  in the reorder queue waiting for a gap), which is RFC 2637's "highest numbered GRE packet
  received". Acking accepted rather than delivered packets keeps a peer that honours its send
  window from stalling while we wait on a gap; dropped packets (late, duplicate, over-window) are
  never acked.
* Piggybacking: :meth:`GreSession.send` sets the A bit whenever an ack is owed (a newer number was
  accepted since our last ack). An ack-only packet (no S bit, no payload) is sent only by
  :meth:`GreSession.timeout`, when an ack has been owed for ``ack_delay`` seconds (default 10 ms,
  measured from the first unacked arrival, not the latest, so a one-way flow is still acked every
  ``ack_delay``) and no data packet carried it meanwhile - or at once when :data:`ACK_EVERY` accepted
  packets are owed, so a one-way flow from a peer that honours our receive window (RFC 2637 §4.2;
  ``--gre-window``: the server announces 256, the client 64) never waits ``ack_delay`` for credit.
  In a bidirectional flow almost every ack rides on data.
* Send window (RFC 2637 §4.2): the peer's Packet Receive Window Size (``peer_window``, from the call
  setup) bounds the data packets we have in flight; :meth:`GreSession.send_room` says how many more
  it takes, the caller reads no more than that before the next ack. A peer that overflows drops
  what does not fit (pptpd's pptpctrl, a userspace relay, does: its raw socket overflowed and upload
  TCP collapsed to a few Mbit/s). Lost acks must not stop the tunnel: after :data:`WINDOW_STALL`
  seconds without one the caller calls :meth:`GreSession.window_stalled`, which counts what was
  sent as acknowledged (RFC 2637 §4.4: recover from lost acks with a time-out); a peer that never
  acked anything is not paced.
* Receive fast path: a data packet of the usual shape (K+S with or without A, version 1, PPP, the
  length matching) is decoded with one ``struct`` unpack and integer comparisons; anything else
  takes the full validation in :func:`_parse`. Both accept and reject exactly the same packets.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

from sidecar.proto.errors import GreError
from sidecar.proto.reorder import ReorderCounters, ReorderQueue
from sidecar.proto.serial import SERIAL_HALF, SERIAL_MASK, serial_diff, serial_max

GRE_PROTOCOL_PPP: Final = 0x880B
GRE_VERSION: Final = 1

FLAG_C: Final = 0x80  # byte 0
FLAG_R: Final = 0x40
FLAG_K: Final = 0x20
FLAG_S: Final = 0x10
FLAG_SSR: Final = 0x08
RECUR_MASK: Final = 0x07
FLAG_A: Final = 0x80  # byte 1
FLAGS_MASK: Final = 0x78
VERSION_MASK: Final = 0x07

BASE_HEADER_LEN: Final = 8
MAX_PAYLOAD: Final = 0xFFFF
DEFAULT_ACK_DELAY: Final = 0.010
ACK_EVERY: Final = 16  # ack-only at once after this many unacked packets (a quarter of pptpd's window of 64)
WINDOW_STALL: Final = 0.25  # s without an ack while the peer's window is full: take the acks as lost
NO_WINDOW: Final = 1 << 30  # send_room() when no window applies

_BASE: Final = struct.Struct("!BBHHH")
_U32: Final = struct.Struct("!I")
_HDR_S: Final = struct.Struct("!BBHHHI")
_HDR_SA: Final = struct.Struct("!BBHHHII")
_B0_DATA: Final = FLAG_K | FLAG_S
_B1_ACK: Final = FLAG_A | GRE_VERSION
# the receive fast path: flag bytes 0 and 1 as one big-endian 16-bit number, then the rest
_FAST: Final = struct.Struct("!HHHHII")  # flags+version, protocol, payload length, call ID, seq, ack
_FLAGS_SA: Final = (_B0_DATA << 8) | _B1_ACK  # 0x3081: sequence and ack
_FLAGS_S: Final = (_B0_DATA << 8) | GRE_VERSION  # 0x3001: sequence only


class GreTruncated(GreError):
    """The packet is shorter than its header or its declared payload."""


class GreBadLength(GreError):
    """The packet carries bytes beyond its declared payload length, or a payload without a sequence."""


class GreBadVersion(GreError):
    """The GRE version is not 1 (enhanced GRE)."""


class GreBadProtocol(GreError):
    """The protocol type is not PPP (0x880B)."""


class GreBadFlags(GreError):
    """Flags that enhanced GRE forbids (C, R, s, Recur, Flags) are set, or K is clear."""


@dataclass(frozen=True, slots=True)
class GreHeader:
    call_id: int
    payload_len: int
    seq: int | None
    ack: int | None

    @property
    def header_len(self) -> int:
        return BASE_HEADER_LEN + (4 if self.seq is not None else 0) + (4 if self.ack is not None else 0)


def _parse(buf: bytes | bytearray | memoryview) -> tuple[int, int, int | None, int | None, int]:
    """Validate one GRE packet; returns (call_id, payload_len, seq, ack, header_len). Raises GreError."""
    n = len(buf)
    if n < BASE_HEADER_LEN:
        raise GreTruncated(f"GRE packet of {n} bytes is shorter than the 8-byte enhanced GRE header")
    b0, b1, proto, payload_len, call_id = _BASE.unpack_from(buf, 0)
    if b1 & VERSION_MASK != GRE_VERSION:
        raise GreBadVersion(f"GRE version {b1 & VERSION_MASK}, expected 1 (enhanced GRE, RFC 2637)")
    if proto != GRE_PROTOCOL_PPP:
        raise GreBadProtocol(f"GRE protocol type 0x{proto:04x}, expected 0x880b (PPP)")
    if b0 & ~FLAG_S != FLAG_K or b1 & FLAGS_MASK:
        raise GreBadFlags(
            f"GRE flags 0x{b0:02x}{b1:02x} not allowed in enhanced GRE "
            "(need K set; C, R, s, Recur and Flags clear)"
        )
    has_seq = b0 & FLAG_S
    has_ack = b1 & FLAG_A
    if not has_seq and not has_ack:
        raise GreBadFlags("GRE packet carries neither a sequence number (S) nor an acknowledgement (A)")
    off = BASE_HEADER_LEN
    seq: int | None = None
    ack: int | None = None
    if has_seq:
        if n < off + 4:
            raise GreTruncated(f"GRE packet of {n} bytes truncated inside its sequence number")
        (seq,) = _U32.unpack_from(buf, off)
        off += 4
    elif payload_len:
        raise GreBadLength(f"GRE payload length {payload_len} without a sequence number (S bit clear)")
    if has_ack:
        if n < off + 4:
            raise GreTruncated(f"GRE packet of {n} bytes truncated inside its acknowledgement number")
        (ack,) = _U32.unpack_from(buf, off)
        off += 4
    rest = n - off
    if rest < payload_len:
        raise GreTruncated(f"GRE payload truncated: header says {payload_len} bytes, {rest} present")
    if rest > payload_len:
        raise GreBadLength(f"GRE packet has {rest - payload_len} bytes beyond its payload length")
    return call_id, payload_len, seq, ack, off


def decode_header(buf: bytes | bytearray | memoryview) -> tuple[GreHeader, memoryview]:
    """Decode one enhanced GRE packet (starting at the GRE header) into header and payload view."""
    call_id, payload_len, seq, ack, off = _parse(buf)
    mv = memoryview(buf)
    return GreHeader(call_id, payload_len, seq, ack), mv[off : off + payload_len]


def encode_packet(
    call_id: int, payload: bytes | bytearray | memoryview, seq: int | None, ack: int | None
) -> bytes:
    """Build one enhanced GRE packet. ``seq`` must be given when there is a payload."""
    n = len(payload)
    if not 0 <= call_id <= 0xFFFF:
        raise GreError(f"GRE call ID {call_id} out of range 0..65535")
    if n > MAX_PAYLOAD:
        raise GreError(f"GRE payload of {n} bytes exceeds 65535")
    if seq is None and n:
        raise GreError("a GRE packet with a payload needs a sequence number")
    if seq is None and ack is None:
        raise GreError("a GRE packet needs a sequence number, an acknowledgement or both")
    for name, v in (("sequence", seq), ("acknowledgement", ack)):
        if v is not None and not 0 <= v <= SERIAL_MASK:
            raise GreError(f"GRE {name} number {v} out of range 0..2**32-1")
    b0 = FLAG_K | (FLAG_S if seq is not None else 0)
    b1 = GRE_VERSION | (FLAG_A if ack is not None else 0)
    head = _BASE.pack(b0, b1, GRE_PROTOCOL_PPP, n, call_id)
    if seq is not None:
        head += _U32.pack(seq)
    if ack is not None:
        head += _U32.pack(ack)
    return head + bytes(payload)


@dataclass
class GreCounters:
    rx_packets: int = 0  # valid packets for our call (data and ack-only)
    rx_bytes: int = 0  # payload bytes of those
    rx_ack_only: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0  # payload bytes sent
    tx_ack_only: int = 0
    bad_version: int = 0
    bad_protocol: int = 0
    bad_flags: int = 0
    bad_call_id: int = 0
    truncated: int = 0
    bad_length: int = 0
    ack_ignored: int = 0  # acks for a number we never sent (older acks are harmless, not counted)
    reorder: ReorderCounters = field(default_factory=ReorderCounters)


_ERROR_COUNTER: Final[dict[type[GreError], str]] = {
    GreTruncated: "truncated",
    GreBadLength: "bad_length",
    GreBadVersion: "bad_version",
    GreBadProtocol: "bad_protocol",
    GreBadFlags: "bad_flags",
}


class GreSession:
    """One call's GRE data channel: sequence numbers out, acks both ways, reorder in."""

    def __init__(
        self,
        local_call_id: int,
        peer_call_id: int,
        *,
        reorder_window: int,
        reorder_timeout: float,
        ack_delay: float = DEFAULT_ACK_DELAY,
        initial_seq: int = 0,
        peer_window: int = 0,
    ) -> None:
        for name, v in (("local_call_id", local_call_id), ("peer_call_id", peer_call_id)):
            if not 0 <= v <= 0xFFFF:
                raise ValueError(f"{name} must be 0..65535, got {v}")
        if not 0 <= initial_seq <= SERIAL_MASK:
            raise ValueError(f"initial_seq must be 0..2**32-1, got {initial_seq}")
        if not ack_delay >= 0:
            raise ValueError(f"ack_delay must be >= 0 seconds, got {ack_delay!r}")
        self.local_call_id = local_call_id
        self.peer_call_id = peer_call_id
        self.ack_delay = float(ack_delay)
        self.reorder: ReorderQueue[bytes] = ReorderQueue(reorder_window, reorder_timeout)
        self.counters = GreCounters(reorder=self.reorder.counters)
        self._initial_seq = initial_seq
        self._tx_seq = initial_seq  # next sequence number we send
        self._sent_any = False
        self._rx_highest: int | None = None  # highest accepted peer sequence number
        self._ack_owed_since: float | None = None  # first unacked arrival, None = nothing owed
        self._owed = 0  # packets accepted since our last ack
        self.peer_ack: int | None = None  # highest of our numbers the peer acked
        self.peer_window = max(0, peer_window)  # the peer's Packet Receive Window Size; 0 = not paced
        self._window_base: int | None = None  # our last sequence number counted as acked after a stall

    # -- flow info -----------------------------------------------------------------------------
    @property
    def last_sent_seq(self) -> int | None:
        return (self._tx_seq - 1) & SERIAL_MASK if self._sent_any else None

    @property
    def unacked(self) -> int:
        """Data packets we sent that the peer has not acknowledged yet."""
        if not self._sent_any:
            return 0
        last = (self._tx_seq - 1) & SERIAL_MASK
        if self.peer_ack is None:
            return serial_diff(last, self._initial_seq) + 1
        return serial_diff(last, self.peer_ack)

    @property
    def highest_received(self) -> int | None:
        return self._rx_highest

    @property
    def ack_owed(self) -> bool:
        return self._ack_owed_since is not None

    # -- entry points --------------------------------------------------------------------------
    def receive(self, packet: bytes | bytearray | memoryview, now: float) -> list[bytes]:
        """One GRE packet (IP header stripped) in; PPP frames out, in order. Never raises on bad input."""
        c = self.counters
        n = len(packet)
        if n >= 16:  # the fast path: a data packet of the usual shape, for our call
            flags, proto, payload_len, call_id, seq, ack = _FAST.unpack_from(packet, 0)
            if proto == GRE_PROTOCOL_PPP and call_id == self.local_call_id:
                if flags == _FLAGS_SA and n - 16 == payload_len:
                    c.rx_packets += 1
                    self._peer_acked(ack)
                    return self._data(seq, packet[16:], payload_len, now)
                if flags == _FLAGS_S and n - 12 == payload_len:
                    c.rx_packets += 1
                    return self._data(seq, packet[12:], payload_len, now)
        try:
            call_id, payload_len, seq_or_none, ack_or_none, off = _parse(packet)
        except GreError as exc:
            name = _ERROR_COUNTER.get(type(exc), "bad_flags")
            setattr(c, name, getattr(c, name) + 1)
            return []
        if call_id != self.local_call_id:
            c.bad_call_id += 1
            return []
        c.rx_packets += 1
        if ack_or_none is not None:
            self._peer_acked(ack_or_none)
        if seq_or_none is None:
            c.rx_ack_only += 1
            return []
        return self._data(seq_or_none, packet[off:] if payload_len else b"", payload_len, now)

    def _data(
        self, seq: int, payload: bytes | bytearray | memoryview, payload_len: int, now: float
    ) -> list[bytes]:
        """A valid data packet's payload: through the reorder queue, owing an ack if accepted."""
        self.counters.rx_bytes += payload_len
        rq = self.reorder
        rc = rq.counters
        before = rc.in_order + rc.buffered
        # a slice of bytes is already a copy of its own; a view or bytearray slice is not
        out = rq.push(seq, payload if type(payload) is bytes else bytes(payload), now)
        if rc.in_order + rc.buffered != before:  # accepted: owe an ack
            hi = self._rx_highest
            if hi is None or ((seq - hi + SERIAL_HALF) & SERIAL_MASK) - SERIAL_HALF > 0:
                self._rx_highest = seq
                if self._ack_owed_since is None:
                    self._ack_owed_since = now
                self._owed += 1
                if self._owed >= ACK_EVERY:
                    self._ack_owed_since = now - self.ack_delay  # due now: timeout() sends it
        if b"" in out:
            out = [f for f in out if f]
        return out

    def send(self, ppp_frame: bytes | bytearray | memoryview, now: float) -> bytes:
        """One PPP frame in; one GRE data packet out, with the ack piggybacked if one is owed."""
        n = len(ppp_frame)
        if n > MAX_PAYLOAD:
            raise GreError(f"PPP frame of {n} bytes exceeds the GRE payload limit of 65535")
        seq = self._tx_seq
        self._tx_seq = (seq + 1) & SERIAL_MASK
        self._sent_any = True
        c = self.counters
        c.tx_packets += 1
        c.tx_bytes += n
        if self._ack_owed_since is not None:
            self._ack_owed_since = None
            self._owed = 0
            return (
                _HDR_SA.pack(_B0_DATA, _B1_ACK, GRE_PROTOCOL_PPP, n, self.peer_call_id, seq, self._rx_highest)
                + ppp_frame
            )
        return _HDR_S.pack(_B0_DATA, GRE_VERSION, GRE_PROTOCOL_PPP, n, self.peer_call_id, seq) + ppp_frame

    def timeout(self, now: float) -> tuple[list[bytes], list[bytes]]:
        """Timers: reorder gaps given up (frames delivered) and a delayed ack-only packet (to send)."""
        frames = self.reorder.timeout(now)
        if b"" in frames:
            frames = [f for f in frames if f]
        packets: list[bytes] = []
        since = self._ack_owed_since
        if since is not None and now >= since + self.ack_delay:
            assert self._rx_highest is not None
            self._ack_owed_since = None
            self._owed = 0
            packets.append(encode_packet(self.peer_call_id, b"", None, self._rx_highest))
            self.counters.tx_packets += 1
            self.counters.tx_ack_only += 1
        return frames, packets

    def send_room(self) -> int:
        """How many more data packets the peer's receive window takes before the next ack (RFC 2637
        §4.2); :data:`NO_WINDOW` when none applies. 0 or less: wait for an ack (``window_stalled``
        after :data:`WINDOW_STALL`)."""
        window = self.peer_window
        if window <= 0:
            return NO_WINDOW
        if not self._sent_any:
            return window
        last = (self._tx_seq - 1) & SERIAL_MASK
        ref = self.peer_ack
        base = self._window_base
        if base is not None:
            ref = base if ref is None else serial_max(ref, base)
        in_flight = self.unacked if ref is None else max(0, serial_diff(last, ref))
        return window - in_flight

    def window_stalled(self) -> None:
        """No ack for :data:`WINDOW_STALL` with the window full: what we sent counts as acked, so
        lost acks cannot stop the tunnel; a peer that has never acked anything is not paced."""
        if self.peer_ack is None:
            self.peer_window = 0
        else:
            self._window_base = self.last_sent_seq

    def next_deadline(self) -> float | None:
        d = self.reorder.next_deadline()
        if self._ack_owed_since is not None:
            a = self._ack_owed_since + self.ack_delay
            return a if d is None or a < d else d
        return d

    # -- internals -----------------------------------------------------------------------------
    def _peer_acked(self, ack: int) -> None:
        # serial_diff written out (once per received packet): ack must lie in [first sent, last sent]
        first = self._initial_seq
        span = ((self._tx_seq - 1 - first + SERIAL_HALF) & SERIAL_MASK) - SERIAL_HALF
        if not self._sent_any or not 0 <= ((ack - first + SERIAL_HALF) & SERIAL_MASK) - SERIAL_HALF <= span:
            self.counters.ack_ignored += 1  # acks a number we never sent
            return
        prev = self.peer_ack
        if prev is None or ((ack - prev + SERIAL_HALF) & SERIAL_MASK) - SERIAL_HALF > 0:
            self.peer_ack = ack
