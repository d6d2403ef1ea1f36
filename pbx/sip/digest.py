"""SIP digest authentication (RFC 3261 §22, RFC 7616, RFC 8760).

Pure logic: no sockets, no global state, time comes from an injected clock
(anything with ``.seconds()``, e.g. ``twisted.internet.task.Clock`` or the
reactor).  It sits on the registrar's hot path, so each request costs one
header parse (a single compiled regex), one keyed hash to check the nonce and two
hashes for the response.

Only ``qop=auth`` is offered.  ``-sess`` algorithms and ``auth-int`` are not
supported and are rejected as ``failed`` so the caller re-challenges.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, cast
from pbx.sip.ids import random_bytes

__all__ = [
    "ALGORITHMS",
    "AuthResult",
    "DigestAuthenticator",
    "DigestError",
    "NonceManager",
    "compute_ha1",
    "compute_response",
    "parse_auth_params",
]

ALGORITHMS = ("MD5", "SHA-256")


class DigestError(ValueError):
    """A header value that cannot be parsed as an auth scheme + parameters."""


class SecondsClock(Protocol):
    """The only thing we need from a clock; lets tests drive time."""

    def seconds(self) -> float: ...


def _md5(data: bytes) -> str:
    # usedforsecurity=False keeps MD5 usable on FIPS builds: digest auth
    # mandates it, it is not our choice.
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_HASHES: dict[str, Callable[[bytes], str]] = {"MD5": _md5, "SHA-256": _sha256}


def _hash_for(algorithm: str) -> Callable[[bytes], str]:
    try:
        return _HASHES[algorithm.upper()]
    except KeyError:
        raise DigestError(f"unsupported digest algorithm {algorithm!r}") from None


def compute_ha1(
    username: str, realm: str, password: str, algorithm: str = "MD5"
) -> str:
    """Return hex H(username:realm:password); store this, never the password."""
    return _hash_for(algorithm)(f"{username}:{realm}:{password}".encode())


def compute_response(
    ha1: str,
    method: str,
    uri: str,
    nonce: str,
    algorithm: str = "MD5",
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
) -> str:
    """Return the hex ``response`` a client sends (RFC 7616 §3.4.1).

    With ``qop`` the RFC 2617/7616 form is used, without it the RFC 2069
    form.  Public so tests and the outbound (trunk) side can use it.
    """
    h = _hash_for(algorithm)
    ha2 = h(f"{method}:{uri}".encode())
    if qop:
        return h(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}".encode())
    return h(f"{ha1}:{nonce}:{ha2}".encode())


# --------------------------------------------------------------------------
# Header parsing

# RFC 7230 tchar; used for the scheme and parameter names.
_TCHARS = (
    "!#$%&'*+-.^_`|~0123456789"
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)
_LWS = " \t\r\n"

# One parameter, with its separator: optional leading commas (empty list
# elements are legal), name, "=", then a quoted-string (unrolled loop, no
# backtracking blow-up) or a lenient token (some phones send uri unquoted),
# then a comma or the end.
_PARAM = re.compile(
    r"[ \t\r\n,]*"
    r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+)"
    r"[ \t\r\n]*=[ \t\r\n]*"
    r'(?:"([^"\\]*(?:\\.[^"\\]*)*)"|([^ \t\r\n",]+))'
    r"[ \t\r\n]*(?:,|\Z)"
)


def _unescape(value: str) -> str:
    """Undo quoted-pair escapes; only reached when a backslash is present."""
    out = []
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if c == "\\" and i + 1 < n:
            i += 1
            c = value[i]
        out.append(c)
        i += 1
    return "".join(out)


def _split_scheme(value: str) -> tuple[str, str]:
    value = value.strip(_LWS)
    if not value:
        raise DigestError("empty authorization header")
    i = 0
    n = len(value)
    while i < n and value[i] not in _LWS:
        i += 1
    scheme = value[:i]
    # str.strip(chars) leaves something iff a char outside the set is present.
    if scheme.strip(_TCHARS):
        raise DigestError("invalid auth scheme")
    return scheme, value[i:].lstrip(_LWS)


def _parse_params(rest: str) -> dict[str, str]:
    params: dict[str, str] = {}
    pos = 0
    end = len(rest)
    match = _PARAM.match
    while pos < end:
        m = match(rest, pos)
        if m is None:
            raise DigestError(f"malformed auth parameter at offset {pos}")
        name, quoted, token = m.groups()
        name = name.lower()
        if name in params:
            # RFC 7616 §3.4: parameters MUST NOT repeat; ambiguity is unsafe.
            raise DigestError(f"duplicate auth parameter {name!r}")
        if quoted is None:
            params[name] = token
        elif "\\" in quoted:
            params[name] = _unescape(quoted)
        else:
            params[name] = quoted
        pos = m.end()
    return params


def parse_auth_params(value: str) -> tuple[str, dict[str, str]]:
    """Split an Authorization-style header into (scheme, {lowercase name: value}).

    Quoted values are unescaped; token values are returned as is.  Anything
    that is not ``scheme [param=value *(, param=value)]``, or that repeats a
    parameter, raises ``DigestError``.  Token68 credentials (Basic, Bearer)
    are not understood: they raise or give a meaningless dict, which is why
    ``verify`` checks the scheme before the parameters.
    """
    if not isinstance(value, str):
        raise DigestError("header value must be str")
    scheme, rest = _split_scheme(value)
    return scheme, _parse_params(rest)


# --------------------------------------------------------------------------
# Nonces

_TS = struct.Struct(">Q")
_RAND_LEN = 8
_MAC_LEN = 16
_RAW_LEN = _TS.size + _RAND_LEN + _MAC_LEN  # 32 bytes
_NONCE_LEN = 43  # base64url of 32 bytes, '=' padding stripped
_B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_PURGE_BUCKETS = 8


class NonceManager:
    """Stateless MAC-protected nonces plus bounded per-nonce replay (nc) tracking.

    A nonce is base64url(issue time in ms | 8 random bytes | 16-byte keyed
    BLAKE2b of both), so validating one needs no storage, only the
    secret (nonces also survive a restart that keeps the secret).  Only nonces that have been used in a
    verified request are remembered (their highest ``nc``), so memory is
    proportional to authenticated traffic within ``ttl``.

    Call ``purge()`` periodically (e.g. every ``ttl / 8`` seconds from a
    ``LoopingCall``) to drop expired entries; nothing is dropped otherwise.
    """

    def __init__(self, clock: SecondsClock, secret: bytes, ttl: float = 300) -> None:
        if not isinstance(secret, bytes) or not secret:
            raise ValueError("secret must be non-empty bytes")
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self._clock = clock
        # BLAKE2b takes keys of up to 64 bytes; a longer secret is hashed down.
        self._secret = secret if len(secret) <= 64 else hashlib.blake2b(secret).digest()
        self._ttl_ms = int(ttl * 1000)
        # Entries are grouped by issue-time bucket so purge() drops whole
        # dicts instead of scanning every nonce.
        self._bucket_ms = max(1, self._ttl_ms // _PURGE_BUCKETS)
        self._buckets: dict[int, dict[str, int]] = {}

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    def _mac(self, head: bytes) -> bytes:
        # Keyed BLAKE2b is a MAC by design (RFC 7693 §2.5) and, unlike HMAC
        # through OpenSSL, costs no algorithm lookup per call: two per login.
        return hashlib.blake2b(head, key=self._secret, digest_size=_MAC_LEN).digest()

    def new_nonce(self) -> str:
        """Return a fresh nonce; unique even when issued in the same ms."""
        head = _TS.pack(max(0, self._now_ms())) + random_bytes(_RAND_LEN)
        return base64.urlsafe_b64encode(head + self._mac(head)).rstrip(b"=").decode("ascii")

    def _inspect(self, nonce: str) -> tuple[str, int]:
        """Return (status, issue time in ms); one MAC, no storage."""
        if (
            not isinstance(nonce, str)
            or len(nonce) != _NONCE_LEN
            or nonce.strip(_B64URL)
        ):
            return "invalid", 0
        try:
            raw = base64.urlsafe_b64decode(nonce + "=")
        except (binascii.Error, ValueError):
            return "invalid", 0
        if len(raw) != _RAW_LEN:
            return "invalid", 0
        head = raw[: _TS.size + _RAND_LEN]
        if not hmac.compare_digest(self._mac(head), raw[-_MAC_LEN:]):
            return "invalid", 0
        (issued,) = _TS.unpack_from(raw)
        if self._now_ms() - issued > self._ttl_ms:
            return "stale", issued
        return "ok", issued

    def check_nonce(self, nonce: str) -> Literal["ok", "stale", "invalid"]:
        """Say whether a nonce is ours and still fresh ("stale" = ours but expired)."""
        return cast(Literal["ok", "stale", "invalid"], self._inspect(nonce)[0])

    def _accept(self, nonce: str, issued: int, nc: int) -> bool:
        bucket = self._buckets.get(issued // self._bucket_ms)
        if bucket is None:
            bucket = self._buckets[issued // self._bucket_ms] = {}
        if nc <= bucket.get(nonce, 0):
            return False
        bucket[nonce] = nc
        return True

    def accept_nc(self, nonce: str, nc: int) -> bool:
        """Record ``nc`` for a fresh, authentic nonce; False on replay/reorder.

        Unauthentic or expired nonces are refused without being stored, so
        callers cannot grow the table with garbage.
        """
        status, issued = self._inspect(nonce)
        if status != "ok":
            return False
        return self._accept(nonce, issued, nc)

    def purge(self) -> None:
        """Forget nonces older than ttl (whole buckets, so up to ttl/8 late).

        Forgetting is safe: a forgotten nonce is already expired, so
        ``check_nonce`` reports it stale and it can never be accepted again.
        """
        # A bucket can go once even its newest possible nonce is expired.
        cutoff = self._now_ms() - self._ttl_ms
        width = self._bucket_ms
        for key in [k for k in self._buckets if (k + 1) * width <= cutoff]:
            del self._buckets[key]

    def __len__(self) -> int:
        """Number of nonces currently tracked for replay protection."""
        return sum(len(b) for b in self._buckets.values())


# --------------------------------------------------------------------------
# Authenticator

Outcome = Literal["ok", "stale", "failed", "bad-request"]


@dataclass(frozen=True, slots=True)
class AuthResult:
    """Verdict of ``DigestAuthenticator.verify``.

    ``failed`` -> re-challenge (401/407); ``stale`` -> re-challenge with
    stale=true; ``bad-request`` -> 400.  ``reason`` is a fixed string for
    logs and never contains secrets or client-supplied values.
    """

    outcome: Outcome
    username: str | None
    reason: str


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


_REQUIRED = ("username", "realm", "nonce", "uri", "response")


class DigestAuthenticator:
    """Issues challenges and verifies credentials for one realm.

    Challenges never depend on the user, and unknown users cost the same
    hashing as known ones, so extension scanners (svwar) learn nothing.

    Requests without ``qop`` (RFC 2069 style, still sent by old phones) are
    accepted, but they carry no ``nc``, so they can be replayed while their
    nonce is fresh; keep ``ttl`` short if that matters.  The caller should
    also check that ``uri`` matches the Request-URI if it wants to.
    ``opaque`` is sent (RFC 7616 SHOULD) but not checked: it carries no
    security value since the nonce is already authenticated, and some
    phones mangle or drop it.
    """

    def __init__(
        self,
        nonces: NonceManager,
        realm: str,
        algorithms: Sequence[str] = ("MD5", "SHA-256"),
    ) -> None:
        if isinstance(algorithms, str):
            algorithms = (algorithms,)
        algs = tuple(a.upper() for a in algorithms)
        if not algs:
            raise ValueError("at least one algorithm is required")
        for a in algs:
            if a not in ALGORITHMS:
                raise ValueError(f"unsupported digest algorithm {a!r}")
        if len(set(algs)) != len(algs):
            raise ValueError("duplicate digest algorithm")
        self._nonces = nonces
        self._realm = realm
        self._algorithms = algs
        self._hashes = {a: _HASHES[a] for a in algs}
        opaque = _sha256(b"pbx-digest-opaque\0" + realm.encode())[:32]
        prefix = f"Digest realm={_quote(realm)}, nonce=\""
        # Pre-built halves: a challenge is then a couple of concatenations.
        self._challenge_parts = [
            (prefix, f'", opaque="{opaque}", algorithm={a}, qop="auth"') for a in algs
        ]
        # Same hash lengths as real HA1s; random so no password matches.
        dummy = os.urandom(16).hex()
        self._dummy_ha1 = {a: compute_ha1("\0", realm, dummy, a) for a in algs}

    @property
    def realm(self) -> str:
        return self._realm

    @property
    def algorithms(self) -> tuple[str, ...]:
        return self._algorithms

    def challenges(self, stale: bool = False) -> list[str]:
        """One header value per algorithm, in configured order, sharing a nonce.

        Order matters: SIPp 3.6.1 and some phones answer only the first
        challenge and fail if it is SHA-256.
        """
        nonce = self._nonces.new_nonce()
        tail = ", stale=true" if stale else ""
        return [p + nonce + s + tail for p, s in self._challenge_parts]

    def verify(
        self,
        method: str,
        header_value: str,
        lookup_ha1: Callable[[str, str], str | None],
    ) -> AuthResult:
        """Check an Authorization/Proxy-Authorization header value.

        ``lookup_ha1(username, algorithm)`` returns the stored HA1 or None
        for an unknown user.
        """
        try:
            scheme, rest = _split_scheme(header_value)
        except DigestError:
            return AuthResult("bad-request", None, "unparsable authorization header")
        if scheme.lower() != "digest":
            return AuthResult("failed", None, "auth scheme is not Digest")
        try:
            params = _parse_params(rest)
        except DigestError:
            return AuthResult("bad-request", None, "unparsable digest parameters")

        username = params.get("username")
        for name in _REQUIRED:
            if name not in params:
                return AuthResult("bad-request", username, f"missing {name}")

        qop = params.get("qop")
        nc_text = params.get("nc")
        cnonce = params.get("cnonce")
        if qop is not None:
            if qop.lower() != "auth":
                return AuthResult("failed", username, "unsupported qop")
            if not nc_text or not cnonce:
                return AuthResult("bad-request", username, "qop without nc/cnonce")
            if len(nc_text) > 8 or nc_text.strip("0123456789abcdefABCDEF"):
                return AuthResult("bad-request", username, "nc is not hex")

        if params["realm"] != self._realm:
            return AuthResult("failed", username, "realm mismatch")
        algorithm = params.get("algorithm", "MD5").upper()
        h = self._hashes.get(algorithm)
        if h is None:
            return AuthResult("failed", username, "unsupported algorithm")

        nonce = params["nonce"]
        status, issued = self._nonces._inspect(nonce)
        if status == "invalid":
            return AuthResult("failed", username, "nonce not issued by us")

        assert username is not None  # checked in _REQUIRED
        ha1 = lookup_ha1(username, algorithm)
        known = ha1 is not None
        if ha1 is None:
            ha1 = self._dummy_ha1[algorithm]

        ha2 = h(f"{method}:{params['uri']}".encode())
        if qop is not None:
            expected = h(f"{ha1}:{nonce}:{nc_text}:{cnonce}:{qop}:{ha2}".encode())
        else:
            expected = h(f"{ha1}:{nonce}:{ha2}".encode())
        matches = hmac.compare_digest(
            expected.encode(), params["response"].lower().encode("utf-8", "replace")
        )
        if not known:
            return AuthResult("failed", username, "unknown user")
        if not matches:
            return AuthResult("failed", username, "wrong response")
        if status == "stale":
            # RFC 7616 §3.3: stale only when the credentials were right.
            return AuthResult("stale", username, "nonce expired")
        if qop is not None:
            assert nc_text is not None
            if not self._nonces._accept(nonce, issued, int(nc_text, 16)):
                return AuthResult("failed", username, "nonce count replayed")
        return AuthResult("ok", username, "authenticated")
