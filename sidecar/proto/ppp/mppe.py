"""MPPE: Microsoft Point-to-Point Encryption (RFC 3078) and its keys (RFC 3079).

What lives here:

- the CCP option 18 ("MPPE") bit constants and helpers to build and parse its 4-byte value;
- :class:`MppePolicy` (what the link does when the peer will not encrypt);
- :class:`MppeKeySource`: the key material that MS-CHAPv1/v2 authentication leaves behind, turned
  into start keys on demand (RFC 3079 §2 and §3); it never shows its material;
- :class:`MppeCodec`: encrypt/decrypt of PPP data frames with the 2-byte MPPE header, rekeying
  (stateless: before every packet; stateful: every 256 packets, and when the flushed bit is set)
  and loss handling.
- the RC4 implementations it can run on (:data:`RC4_BACKENDS`: the ``arc4`` C extension,
  ``cryptography``'s binding and its public API), each checked against the public API at import;
  the codec takes the cheapest for its mode unless told otherwise.

What does not live here: CCP negotiation and Reset-Request/Reset-Ack packets (``ccp.py`` and
``link.py``), dropping unencrypted frames once MPPE is up (the link does that), compression (MPPC,
the C bit, is refused). This module does not know whether it is the client or the server; only
:meth:`MppeKeySource.start_keys` asks, because the two directions use different keys.

Theory of operation (RFC 3078 §3 and §7, RFC 3079 §3):

Each direction has a *start key* (8 octets for 40/56-bit, 16 for 128-bit). The first session key is
``GetNewKeyFromSHA(start, start)``, reduced (40-bit: the first three octets become D1 26 9E; 56-bit:
the first octet becomes D1). A rekey computes ``interim = GetNewKeyFromSHA(start, current)``, then
``new = RC4(interim).encrypt(interim)`` and reduces it. The RC4 cipher is re-initialised with the new
session key.

The header is ``A B C D`` flag bits and a 12-bit coherency count that increments per packet (mod
4096). Stateless mode: every packet is sent with a fresh key (and the A bit); the receiver rekeys
once per count step, so a gap only means more rekeys. Stateful mode: one RC4 stream across packets;
the key changes on "flag" packets (count low octet 0xFF, sent with the A bit) and after a CCP
Reset-Request (the next packet carries the A bit). A receiver that sees a gap cannot recover the RC4
stream: it sets :attr:`MppeCodec.needs_reset` (the link sends CCP Reset-Request) and drops until a
packet with the A bit arrives, then rekeys once per skipped flag packet plus once for the flush.
The first packet has count 0 (both counters start at 4095), as Windows and Linux do.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from cryptography.hazmat.decrepit.ciphers.algorithms import ARC4
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext

from sidecar.proto.errors import PppError

# --- CCP option 18 -------------------------------------------------------------------------------

CCP_OPTION_MPPE: Final = 18
MPPE_H: Final = 0x01000000  # stateless mode ("history-less")
MPPE_M: Final = 0x00000080  # 56-bit
MPPE_S: Final = 0x00000040  # 128-bit
MPPE_L: Final = 0x00000020  # 40-bit
MPPE_D: Final = 0x00000010  # obsolete (was 56-bit in drafts); never offered
MPPE_C: Final = 0x00000001  # MPPC compression: refused

_BIT_FOR_KEY: Final = {40: MPPE_L, 56: MPPE_M, 128: MPPE_S}
KEY_BITS: Final = frozenset(_BIT_FOR_KEY)


class MppePolicy(enum.Enum):
    REQUIRE = "require"  # no encryption -> link fails
    OPTIONAL = "optional"  # encrypt if the peer agrees, else run in the clear
    REFUSE = "refuse"  # never negotiate MPPE


@dataclass(frozen=True)
class MppeOption:
    """The parsed value of CCP option 18."""

    key_bits: frozenset[int]
    stateless: bool
    mppc: bool = False
    unknown_bits: int = 0  # bits we do not know (incl. the obsolete D bit)

    def to_bits(self) -> int:
        return mppe_option_bits(self.key_bits, stateless=self.stateless) | (MPPE_C if self.mppc else 0)

    def strongest(self) -> int | None:
        return strongest_key_bits(self.key_bits)


def mppe_option_bits(key_bits: Iterable[int], *, stateless: bool) -> int:
    bits = MPPE_H if stateless else 0
    for k in key_bits:
        try:
            bits |= _BIT_FOR_KEY[k]
        except KeyError:
            raise PppError(f"MPPE key length {k} bits is not one of 40, 56, 128") from None
    return bits


def build_mppe_option(key_bits: Iterable[int], *, stateless: bool) -> bytes:
    """The 4-byte value of CCP option 18 (without the type/length octets)."""
    return mppe_option_bits(key_bits, stateless=stateless).to_bytes(4, "big")


def parse_mppe_option(value: bytes | memoryview) -> MppeOption:
    if len(value) != 4:
        raise PppError(f"CCP MPPE option value must be 4 octets, got {len(value)}")
    bits = int.from_bytes(value, "big")
    keys = frozenset(k for k, b in _BIT_FOR_KEY.items() if bits & b)
    known = MPPE_H | MPPE_M | MPPE_S | MPPE_L | MPPE_C
    return MppeOption(
        key_bits=keys, stateless=bool(bits & MPPE_H), mppc=bool(bits & MPPE_C), unknown_bits=bits & ~known
    )


def strongest_key_bits(key_bits: Iterable[int]) -> int | None:
    usable = [k for k in key_bits if k in KEY_BITS]
    return max(usable) if usable else None


# --- RFC 3079 key derivation ---------------------------------------------------------------------

_SHS_PAD1: Final = b"\x00" * 40
_SHS_PAD2: Final = b"\xf2" * 40
_sha1: Final = hashlib.sha1
_MAGIC1: Final = b"This is the MPPE Master Key"
_MAGIC2: Final = b"On the client side, this is the send key; on the server side, it is the receive key."
_MAGIC3: Final = b"On the client side, this is the receive key; on the server side, it is the send key."


def session_key_length(key_bits: int) -> int:
    if key_bits == 128:
        return 16
    if key_bits in (40, 56):
        return 8
    raise PppError(f"MPPE key length {key_bits} bits is not one of 40, 56, 128")


def get_master_key(password_hash_hash: bytes, nt_response: bytes) -> bytes:
    """RFC 3079 §3.4 GetMasterKey (MS-CHAPv2)."""
    return hashlib.sha1(password_hash_hash + nt_response + _MAGIC1).digest()[:16]


def get_asymmetric_start_key(master_key: bytes, length: int, *, is_send: bool, is_server: bool) -> bytes:
    """RFC 3079 §3.4 GetAsymmetricStartKey: the client's send key is the server's receive key."""
    magic = _MAGIC3 if is_send == is_server else _MAGIC2
    return hashlib.sha1(master_key + _SHS_PAD1 + magic + _SHS_PAD2).digest()[:length]


def get_new_key_from_sha(start_key: bytes, session_key: bytes, length: int) -> bytes:
    """RFC 3079 §3.3 / RFC 3078 §7.3 GetNewKeyFromSHA."""
    return hashlib.sha1(start_key[:length] + _SHS_PAD1 + session_key[:length] + _SHS_PAD2).digest()[:length]


def mschap_v1_start_key(password_hash_hash: bytes, challenge: bytes) -> bytes:
    """RFC 3079 §2.4 Get_Start_Key for MS-CHAPv1 (16 octets; the same key in both directions).

    40/56-bit keys use its first 8 octets, as Linux pppd and Windows do with NT hashes (the LAN
    Manager hash variant of RFC 3079 §2.1/§2.2 is not implemented: we never compute LM hashes).
    """
    return hashlib.sha1(password_hash_hash + password_hash_hash + challenge).digest()[:16]


def reduce_key(key: bytes, key_bits: int) -> bytes:
    """RFC 3079 §3.1-§3.2: weaken a 64-bit key to 40 or 56 effective bits."""
    if key_bits == 40:
        return b"\xd1\x26\x9e" + key[3:8]
    if key_bits == 56:
        return b"\xd1" + key[1:8]
    return key


class MppeKeySource:
    """The MPPE start keys an MS-CHAP authentication produced. Never shows its material."""

    __slots__ = ("_material", "_method")

    def __init__(self, method: str, material: bytes) -> None:
        self._method = method  # "MS-CHAPv1" | "MS-CHAPv2"
        self._material = material  # v2: MasterKey; v1: the 16-octet start key

    @classmethod
    def from_mschap_v2(cls, password_hash_hash: bytes, nt_response: bytes) -> MppeKeySource:
        return cls("MS-CHAPv2", get_master_key(password_hash_hash, nt_response))

    @classmethod
    def from_mschap_v1(cls, password_hash_hash: bytes, challenge: bytes) -> MppeKeySource:
        return cls("MS-CHAPv1", mschap_v1_start_key(password_hash_hash, challenge))

    @property
    def method(self) -> str:
        return self._method

    def start_keys(self, key_bits: int, *, is_server: bool) -> tuple[bytes, bytes]:
        """(send start key, receive start key) for this side."""
        length = session_key_length(key_bits)
        if self._method == "MS-CHAPv1":
            key = self._material[:length]
            return key, key
        send = get_asymmetric_start_key(self._material, length, is_send=True, is_server=is_server)
        recv = get_asymmetric_start_key(self._material, length, is_send=False, is_server=is_server)
        return send, recv

    def __repr__(self) -> str:
        return f"MppeKeySource({self._method}, material=***)"

    __str__ = __repr__

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("MPPE key material cannot be pickled")


# --- the codec -----------------------------------------------------------------------------------

HEADER_A: Final = 0x80  # flushed
HEADER_B: Final = 0x40  # MPPC: packet at front of history buffer
HEADER_C: Final = 0x20  # MPPC: compressed
HEADER_D: Final = 0x10  # encrypted
CCOUNT_SPACE: Final = 4096
_CCOUNT_MASK: Final = 0x0FFF
_MAX_STATELESS_GAP: Final = CCOUNT_SPACE // 2  # beyond this, a packet is late, not ahead
MAX_EXTRA_REKEYS: Final = 8
_PLAIN_HEADER: Final = HEADER_D << 8  # a stateful packet between flag packets: D bit + count
# A + D bits + count for each count: stateless sends one per packet (a lookup instead of building it)
_FLUSHED_HEADER: Final = tuple(
    ((HEADER_A | HEADER_D) << 8 | n).to_bytes(2, "big") for n in range(CCOUNT_SPACE)
)

PlausibleCheck = Callable[[bytes], bool]


def ip_plausible(head: bytes) -> bool:
    """Does a decrypted frame start like IPv4/IPv6 under PPP (protocol 0x0021/0x0057, or the
    PFC-compressed 0x21/0x57, followed by the matching IP version nibble)?"""
    if len(head) >= 3 and head[0] == 0x00 and head[1] in (0x21, 0x57):
        return head[2] >> 4 == (4 if head[1] == 0x21 else 6)
    if len(head) >= 2 and head[0] in (0x21, 0x57):
        return head[1] >> 4 == (4 if head[0] == 0x21 else 6)
    return False


# --- RC4 backends --------------------------------------------------------------------------------


class Rc4Backend(NamedTuple):
    """One implementation of RC4: ``new(key)`` makes a context; ``crypt(context, data)`` runs the key
    stream over ``data`` (``bytes``) and advances it, so successive calls continue one stream."""

    name: str
    new: Callable[[bytes], Any]
    crypt: Callable[..., bytes]  # (context, data: bytes, or any buffer if `buffers`) -> bytes
    buffers: bool  # crypt also takes a memoryview (no copy to bytes needed)


def _public_new(key: bytes) -> CipherContext:
    return Cipher(ARC4(key), mode=None).encryptor()


def _public_crypt(context: CipherContext, data: bytes) -> bytes:
    return context.update(data)


_PUBLIC: Final = Rc4Backend("cryptography", _public_new, _public_crypt, True)


def _arc4() -> Rc4Backend:
    """The ``arc4`` package: a small C extension, no OpenSSL context to set up. A fresh context + one
    1300-byte packet costs 2.5 us here against 4.1 (``cryptography``'s binding), + 16 bytes 0.73 vs
    2.45 (bench/mppe_crypto.py). Its ``encrypt`` takes ``bytes`` only (no memoryview)."""
    from arc4 import ARC4 as Arc4

    return Rc4Backend("arc4", Arc4, Arc4.encrypt, False)


def _cryptography_binding() -> Rc4Backend:
    """``cryptography``'s binding that builds the OpenSSL context, called directly: the public
    ``Cipher(...).encryptor()`` spends ~0.7 us of its ~2.9 us in Python wrappers (ABC ``isinstance``
    checks) first. A private API: it is only used while it agrees with the public one."""
    from cryptography.hazmat.bindings._rust import openssl as rust_openssl

    create = rust_openssl.ciphers.create_encryption_ctx

    def new(key: bytes) -> CipherContext:
        return create(ARC4(key), None)

    return Rc4Backend("cryptography-binding", new, type(new(b"\x01" * 16)).update, True)


def agrees_with_public(backend: Rc4Backend) -> bool:
    """Same key stream as ``cryptography``'s public API, for a 16- and an 8-octet key (128- and
    40-bit MPPE), over one call and continued across a second call (how MPPE uses a kept context)?"""
    for key in (bytes(range(1, 17)), b"\xd1\x26\x9e" + bytes(range(5))):
        data = bytes(range(256)) * 2
        want = _public_new(key).update(data)
        context = backend.new(key)
        got = backend.crypt(context, data[:100]) + backend.crypt(context, data[100:])
        if got != want or backend.crypt(backend.new(key), data) != want:
            return False
    return True


def verified_backends(candidates: Iterable[Callable[[], Rc4Backend]]) -> dict[str, Rc4Backend]:
    """The candidates that build (their package is installed) and agree with ``cryptography``'s
    public API, in order, then the public API itself."""
    found: dict[str, Rc4Backend] = {}
    for make in candidates:
        try:
            backend = make()
            if agrees_with_public(backend):
                found[backend.name] = backend
        except Exception:  # not installed, or a private API that moved: not a candidate
            continue
    found[_PUBLIC.name] = _PUBLIC
    return found


RC4_BACKENDS: Final = verified_backends((_arc4, _cryptography_binding))


def _first(*names: str) -> Rc4Backend:
    return next(RC4_BACKENDS[n] for n in names if n in RC4_BACKENDS)


# Measured here (2 cores, best of 5 x 100k calls): a fresh context per packet
# (stateless) is cheapest with arc4 (above); a kept context (stateful) costs about the same in both
# (1300 bytes: cryptography 1.74 us, arc4 1.79; 100 bytes: 0.21 vs 0.17), and cryptography's
# ``update`` takes a memoryview without a copy.
RC4_FRESH: Final = _first("arc4", "cryptography-binding", "cryptography")
RC4_KEPT: Final = _first("cryptography-binding", "arc4", "cryptography")


class _Direction:
    """Key schedule and RC4 state of one direction."""

    __slots__ = (
        "buffers",
        "ccount",
        "crypt",
        "key_bits",
        "length",
        "new",
        "prefix",
        "session",
        "start",
        "stream",
    )

    def __init__(self, start_key: bytes, key_bits: int, rc4: Rc4Backend) -> None:
        length = session_key_length(key_bits)
        if len(start_key) < length:
            raise PppError(f"MPPE {key_bits}-bit start key must be at least {length} octets")
        self.key_bits = key_bits
        self.length = length
        self.start = start_key[:length]
        self.prefix = self.start + _SHS_PAD1  # GetNewKeyFromSHA's input up to the session key
        self.new = rc4.new
        self.crypt = rc4.crypt
        self.buffers = rc4.buffers
        self.session = reduce_key(get_new_key_from_sha(self.start, self.start, length), key_bits)
        self.stream: Any = self.new(self.session)
        self.ccount = _CCOUNT_MASK  # first packet carries count 0

    def following_key(self, session: bytes, times: int = 1) -> bytes:
        """RFC 3078 §7.3: the session key ``times`` rekeys after ``session`` (each: GetNewKeyFromSHA,
        RC4 of the interim key with itself, reduce)."""
        prefix, length, new, crypt = self.prefix, self.length, self.new, self.crypt
        while True:
            interim = _sha1(prefix + session + _SHS_PAD2).digest()[:length]
            session = crypt(new(interim), interim)
            if self.key_bits != 128:
                session = reduce_key(session, self.key_bits)
            times -= 1
            if times <= 0:
                return session

    def rekey(self, times: int = 1) -> None:
        """Advance the session key ``times`` and restart the kept RC4 stream with it."""
        self.session = self.following_key(self.session, times)
        self.stream = self.new(self.session)


# A stateless jump up to this far is committed at once (ordinary loss); a farther one is checked.
_STATELESS_CHECKED_JUMP = 16


@dataclass
class MppeCounters:
    encrypted: int = 0
    decrypted: int = 0
    tx_rekeys: int = 0
    rx_rekeys: int = 0
    tx_flushed: int = 0  # packets sent with the A bit after a Reset-Request
    dropped_short: int = 0
    dropped_unencrypted: int = 0  # D bit clear
    dropped_compressed: int = 0  # C bit set (MPPC, which we refuse)
    dropped_not_flushed: int = 0  # stateless packet or flag packet without the A bit
    dropped_late: int = 0  # stateless: count behind or equal to the last one
    dropped_resync: int = 0  # stateful: dropped while waiting for a flushed packet
    losses: int = 0  # stateful: coherency gaps detected (each asks for a CCP Reset-Request)
    resyncs: int = 0  # stateful: recovered with a flushed packet
    extra_rekeys: int = 0  # stateful: rekeys beyond the RFC count (a flushed packet was lost)
    resync_failed: int = 0  # stateful: a flushed packet that fit no candidate key (dropped)
    dropped_implausible: int = 0  # stateless: a far jump whose plaintext is not ours (forged?)


class MppeCodec:
    """Encrypts and decrypts PPP frames (protocol field + payload) for one MPPE session.

    ``encrypt`` returns the MPPE header + ciphertext, to be sent under PPP protocol 0x00FD.
    ``decrypt`` returns the plaintext (PPP protocol field + payload) or None (dropped, counted).
    """

    __slots__ = (
        "_plausible",
        "_rx",
        "_tx",
        "_tx_flush",
        "counters",
        "key_bits",
        "needs_reset",
        "rc4_backend",
        "resync_pending",
        "stateful",
    )

    def __init__(
        self,
        send_key: bytes,
        recv_key: bytes,
        key_bits: int,
        stateful: bool,
        *,
        plausible: PlausibleCheck = ip_plausible,
        rc4: Rc4Backend | None = None,
    ) -> None:
        """``rc4``: the RC4 implementation (one of :data:`RC4_BACKENDS`); by default the cheapest
        for the mode (:data:`RC4_FRESH` stateless, :data:`RC4_KEPT` stateful)."""
        self.key_bits = key_bits
        self._plausible = plausible
        self.stateful = stateful
        if rc4 is None:
            rc4 = RC4_KEPT if stateful else RC4_FRESH
        self.rc4_backend = rc4.name
        self._tx = _Direction(send_key, key_bits, rc4)
        self._rx = _Direction(recv_key, key_bits, rc4)
        self._tx_flush = False
        # needs_reset: set on a stateful gap; the link sends a CCP Reset-Request and may clear it.
        # resync_pending: we drop packets until one with the A bit arrives (the codec clears it).
        self.needs_reset = False
        self.resync_pending = False
        self.counters = MppeCounters()

    def __repr__(self) -> str:
        mode = "stateful" if self.stateful else "stateless"
        return f"MppeCodec({self.key_bits}-bit, {mode}, keys=***)"

    __str__ = __repr__

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("MPPE key material cannot be pickled")

    def reset_requested(self) -> None:
        """The peer sent CCP Reset-Request: the next packet is flushed (A bit, new key)."""
        self._tx_flush = True

    def encrypt(self, plaintext: bytes | memoryview, prefix: bytes = b"") -> bytes:
        """The MPPE header + ciphertext of ``plaintext``, behind ``prefix`` (the frame's PPP header,
        so that the frame is built with one copy of the payload, not two)."""
        tx = self._tx
        count = (tx.ccount + 1) & _CCOUNT_MASK
        tx.ccount = count
        c = self.counters
        c.encrypted += 1
        if type(plaintext) is not bytes and not tx.buffers:
            plaintext = bytes(plaintext)
        if not self.stateful:
            # one fresh key per packet: the key stream starts over, no context is kept
            c.tx_rekeys += 1
            session = tx.session = tx.following_key(tx.session)
            return b"".join((prefix, _FLUSHED_HEADER[count], tx.crypt(tx.new(session), plaintext)))
        if (count & 0xFF) == 0xFF or self._tx_flush:
            if self._tx_flush:
                c.tx_flushed += 1
                self._tx_flush = False
            tx.rekey()
            c.tx_rekeys += 1
            header = _FLUSHED_HEADER[count]
        else:
            header = (_PLAIN_HEADER | count).to_bytes(2, "big")
        return b"".join((prefix, header, tx.crypt(tx.stream, plaintext)))

    def decrypt(self, data: bytes | memoryview) -> bytes | None:
        c = self.counters
        if len(data) < 3:
            c.dropped_short += 1
            return None
        b0 = data[0]
        if not b0 & HEADER_D:
            c.dropped_unencrypted += 1
            return None
        if b0 & HEADER_C:
            c.dropped_compressed += 1
            return None
        count = ((b0 & 0x0F) << 8) | data[1]
        flushed = b0 & HEADER_A
        rx = self._rx
        if not self.stateful:
            if not flushed:
                c.dropped_not_flushed += 1
                return None
            step = (count - rx.ccount) & _CCOUNT_MASK
            if step == 0 or step > _MAX_STATELESS_GAP:
                c.dropped_late += 1
                return None
            if step > _STATELESS_CHECKED_JUMP:
                return self._stateless_jump(data, count, step)
            session = rx.session = rx.following_key(rx.session, step)
            rx.ccount = count
            c.rx_rekeys += step
            c.decrypted += 1
            return rx.crypt(rx.new(session), data[2:] if rx.buffers else bytes(data[2:]))
        is_flag = (count & 0xFF) == 0xFF
        if is_flag and not flushed:
            c.dropped_not_flushed += 1
            return None
        step = (count - rx.ccount) & _CCOUNT_MASK
        if not self.resync_pending and (step == 0 or step > _MAX_STATELESS_GAP):
            # a duplicate or reordered old packet: its key stream is gone, but nothing is lost
            c.dropped_late += 1
            return None
        if step == 1 and not self.resync_pending:
            if flushed:
                rx.rekey()
                c.rx_rekeys += 1
        elif flushed:
            # Resynchronise: one rekey per flag packet we missed in [last + 1, count), then one
            # for this flushed packet (RFC 3078 §7.1 as Windows and Linux do it).
            skipped = 0
            probe = (rx.ccount + 1) & _CCOUNT_MASK
            while (probe & ~0xFF) != (count & ~0xFF):
                skipped += 1
                probe = (probe + 256) & _CCOUNT_MASK
            return self._resync(data, count, skipped + 1)
        else:
            if self.resync_pending:
                c.dropped_resync += 1
            else:
                c.losses += 1
                self.resync_pending = True
                self.needs_reset = True
            return None
        rx.ccount = count
        c.decrypted += 1
        return rx.crypt(rx.stream, data[2:] if rx.buffers else bytes(data[2:]))

    def _try_key(self, data: bytes | memoryview, session: bytes) -> tuple[Any, bytes] | None:
        """Decrypt the first octets of ``data`` with a fresh stream of ``session``: (the stream,
        those octets) when they start like a packet we carry (``plausible``), else None."""
        rx = self._rx
        stream = rx.new(session)
        head = rx.crypt(stream, bytes(data[2:5]))
        return (stream, head) if self._plausible(head) else None

    def _stateless_jump(self, data: bytes | memoryview, count: int, step: int) -> bytes | None:
        """A stateless packet far ahead of the last one (a loss burst, or a forged count).

        Committing the jump unchecked would let one forged packet move the key far ahead, so that
        the next ~2000 genuine packets drop as late. The key is only taken when the plaintext starts
        like a packet we carry (``plausible``), as in the stateful resync.
        """
        c = self.counters
        rx = self._rx
        session = rx.following_key(rx.session, step)
        found = self._try_key(data, session)
        if found is None:
            c.dropped_implausible += 1
            return None
        stream, head = found
        rx.session = session
        rx.stream = stream
        rx.ccount = count
        c.rx_rekeys += step
        c.decrypted += 1
        return head + rx.crypt(stream, bytes(data[5:]))

    def _resync(self, data: bytes | memoryview, count: int, rekeys: int) -> bytes | None:
        """Find the key of a flushed packet after loss.

        The count of rekeys is exact unless a flushed packet was itself lost (each flush is a rekey
        the receiver never saw). So: try the RFC count first, then up to ``MAX_EXTRA_REKEYS`` more,
        and take the first whose plaintext starts like a packet we carry (``plausible``). Nothing
        is committed for a packet that fits no candidate: it is dropped and a reset asked again.
        """
        c = self.counters
        rx = self._rx
        session = rx.following_key(rx.session, rekeys)
        for extra in range(MAX_EXTRA_REKEYS + 1):
            found = self._try_key(data, session)
            if found is not None:
                stream, head = found
                rx.session = session
                rx.stream = stream
                rx.ccount = count
                c.rx_rekeys += rekeys + extra
                c.resyncs += 1
                c.extra_rekeys += extra
                c.decrypted += 1
                self.resync_pending = False
                self.needs_reset = False
                return head + rx.crypt(stream, bytes(data[5:]))
            session = rx.following_key(session)
        c.resync_failed += 1
        if not self.resync_pending:
            c.losses += 1
        self.resync_pending = True
        self.needs_reset = True
        return None
