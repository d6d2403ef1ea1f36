"""Jitsi Meet links, with a JWT when the server checks tokens.

Pure: no HTTP.  A Jitsi meeting is just ``<server_url>/<room>``; the room is
created by the first person who opens the link.  A self-hosted Jitsi with
token authentication (prosody ``authentication = "token"``, shared secret)
also needs ``?jwt=<token>``: an HS256 JSON Web Token (RFC 7519) signed with
``app_secret`` and carrying the claims Jitsi checks:

``iss``  the application id (``app_id``)
``aud``  ``"jitsi"`` (what Jitsi's token plugin and JaaS expect by default)
``sub``  the server's host name in lower case (the XMPP domain / tenant)
``room`` the room name the token opens (never ``*`` here)
``nbf``, ``exp``  validity, in seconds since the epoch
``context.user``  ``id``, ``name`` and ``moderator`` (``"true"``/``"false"``),
          strings only: Jitsi rejects tokens whose user fields are not strings

The token is built with hmac/hashlib/base64 only (no JWT library).

Room names are sanitised: lower case ASCII letters, digits, ``-`` and ``_``;
everything else (spaces, slashes, dots, ``?``, ``#``, ``%``) becomes ``-`` so
that a name can never change the path or query of the link.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import unicodedata
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

__all__ = ["JitsiClient", "jwt_encode", "sanitise_room_name"]

#: Longest room name kept (Jitsi has no hard limit; long names make poor links).
MAX_ROOM_LENGTH = 64

#: Seconds ``nbf`` is set before "now", for servers whose clock is a little behind.
CLOCK_SKEW = 10

_UNSAFE = re.compile(r"[^a-z0-9_-]+")
_DASHES = re.compile(r"-{2,}")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwt_encode(claims: dict[str, Any], secret: str) -> str:
    """An HS256 JWT (RFC 7519 §7.1 / RFC 7515): base64url(header) "."
    base64url(claims) "." base64url(HMAC-SHA256(secret, the first two parts))."""
    header = {"alg": "HS256", "typ": "JWT"}
    signing_input = ".".join(
        _b64url(json.dumps(part, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
        for part in (header, claims)
    )
    signature = hmac.new(secret.encode("utf-8"), signing_input.encode("ascii"), hashlib.sha256).digest()
    return signing_input + "." + _b64url(signature)


def sanitise_room_name(text: str) -> str:
    """``text`` as a safe room name, or "" when nothing usable is left.

    Accents are folded to ASCII (``Müller`` -> ``muller``), everything but
    ``a-z 0-9 - _`` becomes one ``-``, leading/trailing dashes are dropped
    and the result is cut to MAX_ROOM_LENGTH.  ``../admin`` -> ``admin``.
    """
    folded = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode("ascii")
    name = _DASHES.sub("-", _UNSAFE.sub("-", folded.lower()))
    name = name.strip("-_")[:MAX_ROOM_LENGTH]
    return name.strip("-_")


def _timestamp(value: Any, field: str) -> float:
    """A datetime, an ISO 8601 string or epoch seconds -> epoch seconds.
    Naive times are taken as UTC.  Raises ValueError naming ``field``."""
    if isinstance(value, bool):
        raise ValueError(f"{field}: expected an ISO 8601 date-time")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{field}: expected an ISO 8601 date-time, got {value!r}") from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.timestamp()
    raise ValueError(f"{field}: expected an ISO 8601 date-time")


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class JitsiClient:
    """Meeting links for ``integrations.jitsi``.

    ``clock`` provides ``seconds()`` (the reactor, or a ``task.Clock`` in
    tests).  ``audience`` is the ``aud`` claim; ``random_suffix`` makes the
    unguessable part of generated room names (tests may replace it).
    """

    integration = "jitsi"

    def __init__(self, config: Any, clock: Any, *, audience: str = "jitsi",
                 random_suffix: Any = None) -> None:
        self.config = config
        self.clock = clock
        self.audience = audience
        self.server_url = config.server_url.rstrip("/")
        self.domain = (urlsplit(self.server_url).hostname or "").lower()
        self._random_suffix = random_suffix or (lambda: secrets.token_hex(5))

    @property
    def uses_tokens(self) -> bool:
        """True when links carry a JWT (both app_id and app_secret set)."""
        return bool(self.config.app_id and self.config.app_secret)

    # -- names and tokens --------------------------------------------------

    def room_name(self, text: str) -> str:
        """The sanitised form of ``text``; a generated name when nothing
        usable is left (``"../"`` -> ``meeting-<random>``)."""
        return sanitise_room_name(text) or self._generated("meeting")

    def _generated(self, prefix: str) -> str:
        return sanitise_room_name(f"{prefix}-{self._random_suffix()}")

    def token(self, room: str, *, user_name: str | None = None, user_id: str | None = None,
              moderator: bool = False, email: str | None = None,
              not_before: float | None = None, expires: float | None = None) -> str:
        """The JWT for ``room``.  Valid from ``not_before`` (default now -
        CLOCK_SKEW) to ``expires`` (default now + token_ttl)."""
        if not self.uses_tokens:
            raise ValueError("Jitsi tokens need integrations.jitsi.app_id and app_secret")
        now = int(self.clock.seconds())
        user: dict[str, str] = {"moderator": "true" if moderator else "false"}
        if user_id is not None:
            user["id"] = str(user_id)
        if user_name is not None:
            user["name"] = str(user_name)
        if email is not None:
            user["email"] = str(email)
        claims = {
            "iss": self.config.app_id,
            "aud": self.audience,
            "sub": self.domain,
            "room": room,
            "nbf": int(not_before) if not_before is not None else now - CLOCK_SKEW,
            "exp": int(expires) if expires is not None else now + self.config.token_ttl,
            "context": {"user": user},
        }
        return jwt_encode(claims, self.config.app_secret)

    def _link(self, room: str, token: str | None) -> str:
        url = f"{self.server_url}/{quote(room, safe='')}"
        return f"{url}?jwt={token}" if token else url

    # -- meetings ----------------------------------------------------------

    async def meeting(self, room_name: str | None = None, subject: str | None = None,
                      moderator_name: str | None = None, participants: list[str] | None = None,
                      scheduled_time: Any = None, duration: int | None = None) -> dict[str, Any]:
        """A meeting link.

        ``room_name`` is sanitised (generated from ``subject`` or at random
        when absent); ``scheduled_time`` is an ISO 8601 date-time (naive =
        UTC) and ``duration`` minutes.  With tokens, ``url`` carries a
        participant token and ``moderator_url`` a moderator token named
        ``moderator_name``; both stay valid until the scheduled end (or
        token_ttl from now, whichever is later).  Without tokens both links
        are the same.  Raises ValueError naming the field on bad input.
        """
        if room_name is not None and not isinstance(room_name, str):
            raise ValueError("room_name: expected a string")
        if duration is not None and (isinstance(duration, bool) or not isinstance(duration, int) or duration <= 0):
            raise ValueError("duration: expected a positive number of minutes")
        if participants is not None and (
            not isinstance(participants, (list, tuple)) or not all(isinstance(p, str) for p in participants)
        ):
            raise ValueError("participants: expected a list of strings")
        start = _timestamp(scheduled_time, "scheduled_time") if scheduled_time is not None else None

        if room_name:
            room = self.room_name(room_name)
        elif subject:
            room = sanitise_room_name(subject)[: MAX_ROOM_LENGTH - 11].strip("-_")
            room = sanitise_room_name(f"{room}-{self._random_suffix()}") if room else self._generated("meeting")
        else:
            room = self._generated("meeting")

        url = moderator_url = self._link(room, None)
        if self.uses_tokens:
            now = self.clock.seconds()
            expires = now + self.config.token_ttl
            if start is not None:
                expires = max(expires, start + (duration or 0) * 60 + self.config.token_ttl)
            url = self._link(room, self.token(room, expires=expires))
            moderator_url = self._link(room, self.token(
                room, user_name=moderator_name, user_id=moderator_name, moderator=True, expires=expires))
        return {
            "room_name": room,
            "url": url,
            "moderator_url": moderator_url,
            "subject": subject,
            "scheduled_time": _iso(start) if start is not None else None,
            "duration": duration,
            "participants": list(participants or []),
        }

    async def instant(self, extension: str, contact_name: str | None = None) -> dict[str, Any]:
        """An instant meeting for a call with ``extension``: a fresh,
        unguessable room ``call-<extension>-<random>``; the moderator link
        is for the extension, ``url`` is for the other party."""
        extension = str(extension)
        if not extension or not sanitise_room_name(extension):
            raise ValueError("extension: expected an extension number")
        room = self._generated(f"call-{extension}")
        subject = f"Call with {contact_name}" if contact_name else f"Call with extension {extension}"
        url = moderator_url = self._link(room, None)
        if self.uses_tokens:
            url = self._link(room, self.token(
                room, user_name=contact_name, user_id=contact_name, moderator=False))
            moderator_url = self._link(room, self.token(
                room, user_name=extension, user_id=extension, moderator=True))
        return {
            "room_name": room,
            "url": url,
            "moderator_url": moderator_url,
            "subject": subject,
            "scheduled_time": None,
            "duration": None,
            "extension": extension,
            "contact_name": contact_name,
        }
