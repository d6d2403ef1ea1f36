"""Zoom meetings through a Server-to-Server OAuth app.

Follows Zoom's documentation:

- Access token: ``POST {oauth_url}?grant_type=account_credentials&account_id={account_id}``
  with ``Authorization: Basic base64(client_id:client_secret)``; the answer
  is ``{"access_token", "token_type": "bearer", "expires_in": 3599, "scope"}``.
  There is no refresh token: a new access token is requested when the
  cached one is about to expire (``refresh_margin`` seconds before
  ``expires_in`` runs out, on the injected clock) and once more after the
  API answers 401 (a token revoked or expired early).
- ``POST {api_base_url}/users/{userId}/meetings`` with ``Authorization:
  Bearer {token}`` and ``{topic, type, start_time, duration, timezone,
  agenda}``: type 1 (instant) without ``start_time``, 2 (scheduled) with it;
  ``start_time`` as ``yyyy-MM-ddTHH:mm:ssZ`` (UTC) or, for a time without
  offset, ``yyyy-MM-ddTHH:mm:ss`` in ``timezone``; ``duration`` in minutes.
  The answer is ``201`` with the meeting (id, join_url, start_url, password...).
- Errors carry ``{"code": n, "message": "..."}`` (401 code 124: invalid
  access token); they become `UpstreamError` (status and body kept).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from twisted.internet.defer import DeferredLock

from pbx.integrations.http import JSONClient, NotConfigured, UpstreamError

__all__ = ["ZoomClient"]

INTEGRATION = "Zoom"
MAX_TOPIC = 200
MAX_AGENDA = 2000


def _start_time(value: Any) -> str:
    """Zoom's start_time: UTC with ``Z`` for a time with an offset, local
    (no suffix, read in ``timezone``) for one without."""
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"start_time: expected an ISO 8601 date-time, got {value!r}") from None
    if not isinstance(value, datetime):
        raise ValueError("start_time: expected an ISO 8601 date-time")
    if value.tzinfo is None:
        return value.strftime("%Y-%m-%dT%H:%M:%S")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ZoomClient:
    """``integrations.zoom``.

    ``client_factory(base_url) -> JSONClient`` makes the two clients (one
    for ``oauth_url``, one for ``api_base_url``); ``clock`` (``seconds()``)
    times the token cache.  Raises `NotConfigured` naming the first missing
    key of account_id, client_id, client_secret.
    """

    integration = INTEGRATION

    def __init__(self, config: Any, client_factory: Callable[[str], JSONClient], clock: Any, *,
                 refresh_margin: float = 60.0) -> None:
        for key in ("account_id", "client_id", "client_secret"):
            if not getattr(config, key):
                raise NotConfigured(INTEGRATION, key=f"integrations.zoom.{key}")
        self.config = config
        self.clock = clock
        self.refresh_margin = refresh_margin
        self.oauth = client_factory(config.oauth_url)
        self.api = client_factory(config.api_base_url)
        credentials = f"{config.client_id}:{config.client_secret}".encode()
        self._basic = "Basic " + base64.b64encode(credentials).decode("ascii")
        for client in (self.oauth, self.api):
            client.add_secret(config.client_secret)
            client.add_secret(self._basic[len("Basic "):])
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = DeferredLock()
        self.token_fetches = 0

    @classmethod
    def build(cls, config: Any, reactor: Any, *, timeout: float = 5.0, http_client: Any = None,
              **client_options: Any) -> ZoomClient:
        """A client whose JSONClients use ``reactor`` and ``timeout``
        (``client_options``: retries, backoff, concurrency)."""
        def factory(base_url: str) -> JSONClient:
            return JSONClient(INTEGRATION, base_url, reactor=reactor, timeout=timeout,
                              http_client=http_client, **client_options)

        return cls(config, factory, reactor)

    # -- OAuth ---------------------------------------------------------------------

    async def access_token(self) -> str:
        """The cached access token, or a new one when it is (about to be)
        expired.  Concurrent callers share one request."""
        await self._lock.acquire()
        try:
            if self._token is not None and self.clock.seconds() < self._expires_at:
                return self._token
            self._token = None
            response = await self.oauth.request(
                "POST", "",
                params=[("grant_type", "account_credentials"), ("account_id", self.config.account_id)],
                headers={"Authorization": self._basic, "Content-Type": "application/x-www-form-urlencoded"},
                data=b"", idempotent=True, expect=(200,))
            self.token_fetches += 1
            answer = response.json if isinstance(response.json, dict) else {}
            token = answer.get("access_token")
            if not isinstance(token, str) or not token:
                raise UpstreamError(INTEGRATION, "Zoom answered the token request without an access_token",
                                    status=response.status)
            for client in (self.oauth, self.api):
                client.add_secret(token)
            try:
                expires_in = float(answer.get("expires_in", 3599))
            except (TypeError, ValueError):
                expires_in = 3599.0
            self._token = token
            self._expires_at = self.clock.seconds() + max(0.0, expires_in - self.refresh_margin)
            return token
        finally:
            self._lock.release()

    def forget_token(self, token: str | None = None) -> None:
        """Drop the cached token (only if it is still ``token``, when given)."""
        if token is None or token == self._token:
            self._token = None
            self._expires_at = 0.0

    # -- meetings ------------------------------------------------------------------

    async def create_meeting(self, topic: str, start_time: Any = None, duration: int | None = None,
                             timezone: str | None = None, agenda: str | None = None) -> dict[str, Any]:
        """A meeting of ``user`` (default "me"): instant (type 1) without
        ``start_time``, scheduled (type 2) with it.  Returns ``{id, join_url,
        start_url, password, topic, type, start_time, duration, timezone}``.
        Raises ValueError naming the field on bad input."""
        if not isinstance(topic, str) or not topic.strip():
            raise ValueError("topic: expected a non-empty string")
        if len(topic) > MAX_TOPIC:
            raise ValueError(f"topic: at most {MAX_TOPIC} characters")
        if agenda is not None and (not isinstance(agenda, str) or len(agenda) > MAX_AGENDA):
            raise ValueError(f"agenda: expected a string of at most {MAX_AGENDA} characters")
        if duration is not None and (isinstance(duration, bool) or not isinstance(duration, int) or duration <= 0):
            raise ValueError("duration: expected a positive number of minutes")
        if timezone is not None and (not isinstance(timezone, str) or not timezone):
            raise ValueError("timezone: expected a time zone name such as Europe/Berlin")
        body: dict[str, Any] = {"topic": topic, "type": 2 if start_time is not None else 1}
        if start_time is not None:
            body["start_time"] = _start_time(start_time)
        if duration is not None:
            body["duration"] = duration
        if timezone:
            body["timezone"] = timezone
        if agenda:
            body["agenda"] = agenda
        path = f"/users/{quote(self.config.user, safe='')}/meetings"

        for attempt in range(2):
            token = await self.access_token()
            try:
                response = await self.api.request("POST", path, json=body,
                                                  headers={"Authorization": f"Bearer {token}"}, expect=(201,))
                break
            except UpstreamError as error:
                if error.status == 401 and attempt == 0:
                    self.forget_token(token)
                    continue
                raise
        meeting = response.json
        if not isinstance(meeting, dict) or "id" not in meeting or "join_url" not in meeting:
            raise UpstreamError(INTEGRATION, f"Zoom answered POST {path} without a meeting id and join_url",
                                status=response.status)
        return {
            "id": meeting["id"],
            "join_url": meeting["join_url"],
            "start_url": meeting.get("start_url"),
            "password": meeting.get("password"),
            "topic": meeting.get("topic", topic),
            "type": meeting.get("type", body["type"]),
            "start_time": meeting.get("start_time"),
            "duration": meeting.get("duration"),
            "timezone": meeting.get("timezone"),
        }
