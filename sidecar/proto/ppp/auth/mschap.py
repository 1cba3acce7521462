"""MS-CHAPv1 (RFC 2433) and MS-CHAPv2 (RFC 2759): the crypto, the packets and both roles.

What lives here: the RFC 2759 §8 functions (NtPasswordHash, HashNtPasswordHash, ChallengeHash,
ChallengeResponse, GenerateNTResponse, GenerateAuthenticatorResponse) and RFC 2433's NT
ChallengeResponse; the Response value layouts; Success/Failure message parsing (``S=``, ``E= R= C=
V= M=``) with readable errors; the peer and authenticator machines on top of ``chap.py``.

MS-CHAPv2 is mutual: the peer checks the authenticator response (``S=...``) in the Success packet
and refuses a server that cannot prove it knows the password. Both methods leave an
:class:`~sidecar.proto.ppp.mppe.MppeKeySource` in :class:`AuthSuccess` for MPPE.

Deliberately not implemented: LAN Manager hashes (MS-CHAPv1 responses carry a zero LM response and
the "use NT" flag; an LM-only response is refused), password change (CHAP codes 5-7) and the retry
(R=1) dance: a Failure ends the attempt, the supervisor decides whether to try again.

MD4 and DES come from pycryptodome (OpenSSL 3 keeps MD4 out of the default provider); SHA-1 from
hashlib. These run once per authentication, never on the data path.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Final

from Crypto.Cipher import DES
from Crypto.Hash import MD4

from sidecar.proto.errors import PppError
from sidecar.proto.ppp.auth.base import (
    AuthMethod,
    printable,
)
from sidecar.proto.ppp.auth.chap import ChapAuthenticator, ChapPeer, Verdict
from sidecar.proto.ppp.mppe import MppeKeySource
from sidecar.proto.secret import Secret

V1_CHALLENGE_LENGTH: Final = 8
V2_CHALLENGE_LENGTH: Final = 16
RESPONSE_LENGTH: Final = 49
MAX_PASSWORD_CHARS: Final = 256

# RFC 2759 §8.7 magic constants
_SIGN_MAGIC1: Final = b"Magic server to client signing constant"
_SIGN_MAGIC2: Final = b"Pad to make it do more than one iteration"

# Windows RAS error codes carried in MS-CHAP Failure packets (RFC 2433 §6, RFC 2759 §6)
ERROR_RESTRICTED_LOGON_HOURS: Final = 646
ERROR_ACCT_DISABLED: Final = 647
ERROR_PASSWD_EXPIRED: Final = 648
ERROR_NO_DIALIN_PERMISSION: Final = 649
ERROR_AUTHENTICATION_FAILURE: Final = 691
ERROR_CHANGING_PASSWORD: Final = 709

# error -> (readable reason, bad_credentials: retrying with the same credentials is pointless)
_ERRORS: Final[dict[int, tuple[str, bool]]] = {
    ERROR_RESTRICTED_LOGON_HOURS: (
        "the account may not log in at this time (restricted logon hours, E=646)",
        False,
    ),
    ERROR_ACCT_DISABLED: ("the account is disabled on the server (E=647)", True),
    ERROR_PASSWD_EXPIRED: ("the password has expired (E=648): change it on the server", True),
    ERROR_NO_DIALIN_PERMISSION: ("the account has no dial-in permission on the server (E=649)", True),
    ERROR_AUTHENTICATION_FAILURE: ("authentication failed: wrong user name or password", True),
    ERROR_CHANGING_PASSWORD: ("the server reported an error changing the password (E=709)", False),
}

IMPOSTOR_REASON: Final = (
    "the server could not prove it knows the password (bad MS-CHAPv2 authenticator response): "
    "possible impostor"
)


# --- crypto (RFC 2759 §8, RFC 2433 §A) -----------------------------------------------------------


def nt_password_hash(password: Secret) -> bytes:
    """NtPasswordHash: MD4 of the password in UTF-16LE (RFC 2759 §8.3)."""
    text = password.reveal()
    if len(text) > MAX_PASSWORD_CHARS:
        raise PppError(f"MS-CHAP passwords are at most {MAX_PASSWORD_CHARS} characters")
    return MD4.new(text.encode("utf-16-le")).digest()


def hash_nt_password_hash(password_hash: bytes) -> bytes:
    """HashNtPasswordHash (RFC 2759 §8.4)."""
    return MD4.new(password_hash).digest()


def _des_key(key7: bytes) -> bytes:
    """Spread 56 key bits over 8 octets (7 bits each, low bit = odd parity)."""
    bits = int.from_bytes(key7, "big")
    out = bytearray(8)
    for i in range(8):
        b = ((bits >> (49 - 7 * i)) & 0x7F) << 1
        out[i] = b | (bin(b).count("1") & 1 ^ 1)
    return bytes(out)


def des_encrypt(clear: bytes, key7: bytes) -> bytes:
    """DesEncrypt (RFC 2759 §8.6): one DES-ECB block with a 7-octet key."""
    return DES.new(_des_key(key7), DES.MODE_ECB).encrypt(clear)


def challenge_response(challenge: bytes, password_hash: bytes) -> bytes:
    """ChallengeResponse (RFC 2759 §8.5, RFC 2433 §A.5): 24 octets."""
    z = password_hash + b"\x00" * 5
    return des_encrypt(challenge, z[0:7]) + des_encrypt(challenge, z[7:14]) + des_encrypt(challenge, z[14:21])


def strip_domain(username: str) -> str:
    """RFC 2759 §8.2: only the user name, without a ``DOMAIN\\`` prefix, enters ChallengeHash."""
    return username.rsplit("\\", 1)[-1]


def challenge_hash(peer_challenge: bytes, authenticator_challenge: bytes, username: str) -> bytes:
    """ChallengeHash (RFC 2759 §8.2): 8 octets."""
    name = strip_domain(username).encode()
    return hashlib.sha1(peer_challenge + authenticator_challenge + name).digest()[:8]


def generate_nt_response(
    authenticator_challenge: bytes, peer_challenge: bytes, username: str, password_hash: bytes
) -> bytes:
    """GenerateNTResponse (RFC 2759 §8.1), given NtPasswordHash rather than the password."""
    return challenge_response(
        challenge_hash(peer_challenge, authenticator_challenge, username), password_hash
    )


def generate_authenticator_response(
    password_hash: bytes,
    nt_response: bytes,
    peer_challenge: bytes,
    authenticator_challenge: bytes,
    username: str,
) -> str:
    """GenerateAuthenticatorResponse (RFC 2759 §8.7): ``"S="`` + 40 upper-case hex digits."""
    phh = hash_nt_password_hash(password_hash)
    digest = hashlib.sha1(phh + nt_response + _SIGN_MAGIC1).digest()
    chal = challenge_hash(peer_challenge, authenticator_challenge, username)
    return "S=" + hashlib.sha1(digest + chal + _SIGN_MAGIC2).hexdigest().upper()


def v1_nt_response(challenge: bytes, password_hash: bytes) -> bytes:
    """MS-CHAPv1 NtChallengeResponse (RFC 2433 §A.5)."""
    return challenge_response(challenge, password_hash)


# --- Response values and messages ----------------------------------------------------------------


def encode_v2_response(peer_challenge: bytes, nt_response: bytes, flags: int = 0) -> bytes:
    return peer_challenge + b"\x00" * 8 + nt_response + bytes((flags,))


def decode_v2_response(value: bytes) -> tuple[bytes, bytes, int]:
    """(peer_challenge, nt_response, flags) from a 49-octet MS-CHAPv2 Response value."""
    if len(value) != RESPONSE_LENGTH:
        raise PppError(f"MS-CHAPv2 Response value must be {RESPONSE_LENGTH} octets, got {len(value)}")
    return value[0:16], value[24:48], value[48]


def encode_v1_response(nt_response: bytes) -> bytes:
    return b"\x00" * 24 + nt_response + b"\x01"  # no LM response; flag 1 = use the NT response


def decode_v1_response(value: bytes) -> tuple[bytes, bytes, int]:
    """(lm_response, nt_response, use_nt_flag) from a 49-octet MS-CHAPv1 Response value."""
    if len(value) != RESPONSE_LENGTH:
        raise PppError(f"MS-CHAPv1 Response value must be {RESPONSE_LENGTH} octets, got {len(value)}")
    return value[0:24], value[24:48], value[48]


@dataclass(frozen=True)
class FailureMessage:
    """An MS-CHAP Failure message ``E=eeee R=r C=cccc V=vvvv M=text`` (RFC 2759 §6)."""

    error: int | None
    retry: bool = False
    challenge: bytes | None = None
    version: int | None = None
    message: str = ""

    def encode(self) -> bytes:
        parts = []
        if self.error is not None:
            parts.append(f"E={self.error}")
        parts.append(f"R={int(self.retry)}")
        if self.challenge is not None:
            parts.append(f"C={self.challenge.hex().upper()}")
        if self.version is not None:
            parts.append(f"V={self.version}")
        if self.message:
            parts.append(f"M={self.message}")
        return " ".join(parts).encode()

    def describe(self) -> tuple[str, bool]:
        """(readable reason, bad_credentials)."""
        if self.error is None:
            reason, bad = "authentication failed (the server gave no error code)", True
        else:
            reason, bad = _ERRORS.get(
                self.error, (f"authentication failed (server error E={self.error})", False)
            )
        if self.message:
            reason += f" (server says: {printable(self.message)})"
        return reason, bad


def parse_failure(message: bytes) -> FailureMessage:
    """Lenient parse: unknown or malformed fields are skipped; text after ``M=`` is the message."""
    text = message.decode("utf-8", "replace")
    head, sep, tail = text.partition("M=")
    msg = tail.strip() if sep else ""
    error: int | None = None
    retry = False
    challenge: bytes | None = None
    version: int | None = None
    for token in head.split():
        key, _, val = token.partition("=")
        try:
            if key == "E":
                error = int(val)
            elif key == "R":
                retry = val == "1"
            elif key == "C":
                challenge = bytes.fromhex(val)
            elif key == "V":
                version = int(val)
        except ValueError:
            continue
    return FailureMessage(error, retry, challenge, version, msg)


def parse_success(message: bytes) -> tuple[str | None, str]:
    """(``S=`` value as 40 upper-case hex digits or None, ``M=`` text) of an MS-CHAPv2 Success."""
    text = message.decode("ascii", "replace")
    auth: str | None = None
    msg = ""
    if text.startswith("S=") and len(text) >= 42:
        candidate = text[2:42]
        if all(c in "0123456789abcdefABCDEF" for c in candidate):
            auth = candidate.upper()
    _, sep, tail = text.partition("M=")
    if sep:
        msg = tail.strip()
    return auth, msg


# --- peers ---------------------------------------------------------------------------------------


class _MsChapPeer(ChapPeer):
    def _read_failure(self, message: bytes) -> tuple[str, bool]:
        return parse_failure(message).describe()


class MsChapV2Peer(_MsChapPeer):
    challenge_length = V2_CHALLENGE_LENGTH

    METHOD = AuthMethod.MSCHAP_V2
    # per-exchange values, set by _response_value (bytes are immutable: class defaults are safe)
    _peer_challenge = b""
    _auth_challenge = b""
    _nt_response = b""

    def _response_value(self, identifier: int, challenge: bytes) -> bytes:
        self._auth_challenge = challenge
        self._peer_challenge = self._rng.randbytes(V2_CHALLENGE_LENGTH)
        password_hash = nt_password_hash(self._password)
        self._nt_response = generate_nt_response(
            challenge, self._peer_challenge, self.username, password_hash
        )
        return encode_v2_response(self._peer_challenge, self._nt_response)

    def _accept_success(self, message: bytes) -> None:
        got, text = parse_success(message)
        password_hash = nt_password_hash(self._password)
        expected = generate_authenticator_response(
            password_hash, self._nt_response, self._peer_challenge, self._auth_challenge, self.username
        )[2:]
        if got is None or not hmac.compare_digest(got, expected):
            self._fail(IMPOSTOR_REASON)
            return
        keys = MppeKeySource.from_mschap_v2(hash_nt_password_hash(password_hash), self._nt_response)
        self._succeed(self.server_name, printable(text), keys)


class MsChapV1Peer(_MsChapPeer):
    challenge_length = V1_CHALLENGE_LENGTH

    METHOD = AuthMethod.MSCHAP_V1
    _auth_challenge = b""  # set by _response_value

    def _response_value(self, identifier: int, challenge: bytes) -> bytes:
        self._auth_challenge = challenge
        return encode_v1_response(v1_nt_response(challenge, nt_password_hash(self._password)))

    def _accept_success(self, message: bytes) -> None:
        phh = hash_nt_password_hash(nt_password_hash(self._password))
        keys = MppeKeySource.from_mschap_v1(phh, self._auth_challenge)
        self._succeed(self.server_name, printable(message), keys)


# --- authenticators ------------------------------------------------------------------------------


class MsChapV2Authenticator(ChapAuthenticator):
    METHOD = AuthMethod.MSCHAP_V2

    def _new_challenge(self) -> bytes:
        return self._rng.randbytes(V2_CHALLENGE_LENGTH)

    def _failure(self, reason: str) -> Verdict:
        msg = FailureMessage(
            ERROR_AUTHENTICATION_FAILURE,
            retry=False,
            challenge=self._rng.randbytes(V2_CHALLENGE_LENGTH),
            version=3,
            message="Authentication failed",
        )
        return Verdict(False, msg.encode(), reason, True)

    def _check(self, identifier: int, challenge: bytes, value: bytes, username: str) -> Verdict:
        peer_challenge, nt_response, _flags = decode_v2_response(value)
        secret = self._lookup_secret(username)
        if secret is None:
            return self._failure(f"unknown user {printable(username)!r}")
        password_hash = nt_password_hash(secret)
        expected = generate_nt_response(challenge, peer_challenge, username, password_hash)
        if not hmac.compare_digest(expected, nt_response):
            return self._failure(f"wrong password for user {printable(username)!r}")
        auth = generate_authenticator_response(
            password_hash, nt_response, peer_challenge, challenge, username
        )
        keys = MppeKeySource.from_mschap_v2(hash_nt_password_hash(password_hash), nt_response)
        return Verdict(True, f"{auth} M=Access granted".encode(), keys=keys)


class MsChapV1Authenticator(ChapAuthenticator):
    METHOD = AuthMethod.MSCHAP_V1

    def _new_challenge(self) -> bytes:
        return self._rng.randbytes(V1_CHALLENGE_LENGTH)

    @staticmethod
    def _failure(reason: str) -> Verdict:
        return Verdict(False, FailureMessage(ERROR_AUTHENTICATION_FAILURE).encode(), reason, True)

    def _check(self, identifier: int, challenge: bytes, value: bytes, username: str) -> Verdict:
        _lm, nt_response, use_nt = decode_v1_response(value)
        if use_nt != 1:
            return self._failure(
                "the peer sent only a LAN Manager response, which we refuse (LM hashes are insecure)"
            )
        secret = self._lookup_secret(username)
        if secret is None:
            return self._failure(f"unknown user {printable(username)!r}")
        password_hash = nt_password_hash(secret)
        if not hmac.compare_digest(v1_nt_response(challenge, password_hash), nt_response):
            return self._failure(f"wrong password for user {printable(username)!r}")
        keys = MppeKeySource.from_mschap_v1(hash_nt_password_hash(password_hash), challenge)
        return Verdict(True, b"Access granted", keys=keys)
