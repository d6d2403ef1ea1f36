"""Matrix: a bot posting messages and notices through the client-server API (v3).

    client = MatrixClient(config.integrations.matrix, JSONClient("matrix", config.homeserver_url, reactor=reactor),
                          reactor)
    await client.send_message("!room:example.com", "hello")          # {"event_id", "room_id", "txn_id"}
    await client.notice(None, "Missed call from 1001 to 1002", txn_id)  # to notification_room, msgtype m.notice

Authentication: the configured access_token when there is one; otherwise
the bot logs in with ``m.login.password`` and a user identifier, lazily on
the first request, and again when the homeserver answers M_UNKNOWN_TOKEN
(the request is then repeated once).  Concurrent requests share one login.

Messages are sent with ``PUT /rooms/{roomId}/send/m.room.message/{txnId}``:
the homeserver treats a repeated txnId from the same device as the same
event, so a retry never posts twice.  The outbox puts the txnId into its
payload when it enqueues a notice, so retries across restarts reuse it
too.  Room ids (``!id:server``, or since room version 12 ``!`` and an
opaque hash) and aliases (``#alias:server``) go into paths percent-encoded;
an alias is resolved to its room id first (GET /directory/room/{alias},
cached).
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from pbx.integrations.http import NotConfigured, UpstreamError

__all__ = ["LoginFailed", "MatrixClient", "missing_keys", "new_txn_id"]

API = "/_matrix/client/v3"
NAME = "Matrix"
#: The longest wait honoured for M_LIMIT_EXCEEDED before the single retry.
MAX_RATE_LIMIT_WAIT = 5.0


def _q(value: str) -> str:
    """A path segment: everything but unreserved characters percent-encoded ("!" "#" ":" "/" included)."""
    return quote(value, safe="")


def new_txn_id() -> str:
    """A transaction id unique for this bot (reuse it when a send is retried)."""
    return "pbx-" + uuid.uuid4().hex


def missing_keys(config: Any) -> list[str]:
    """The keys an enabled Matrix integration lacks to authenticate (empty when usable)."""
    if getattr(config, "access_token", None):
        return []
    return [key for key in ("bot_username", "bot_password") if not getattr(config, key, None)]


def _errcode(error: UpstreamError) -> str | None:
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        code = body.get("errcode")
        return code if isinstance(code, str) else None
    return None


class LoginFailed(UpstreamError):
    """The homeserver refused the bot's login (wrong password, deactivated user...): still a 502."""


class MatrixClient:
    """The bot's side of the client-server API.

    config: a MatrixConfig (homeserver_url, bot_username, bot_password,
    access_token, notification_room, voicemail_room); client: a JSONClient
    whose base URL is the homeserver; clock: for waits (rate limits).
    Raises NotConfigured at construction when neither an access token nor
    a username and password are configured.
    """

    log = Logger()

    def __init__(self, config: Any, client: Any, clock: Any) -> None:
        missing = missing_keys(config)
        if missing:
            raise NotConfigured(
                NAME, "Matrix integration is enabled but not configured: set integrations.matrix.access_token, "
                "or " + " and ".join(f"integrations.matrix.{key}" for key in missing),
                key=f"integrations.matrix.{missing[0]}")
        self.config = config
        self.client = client
        self.clock = clock
        self.access_token: str | None = config.access_token
        self.user_id: str | None = None
        self.device_id: str | None = None
        self._login_waiters: list[Deferred[str]] | None = None  # set while a login is in progress
        self._aliases: dict[str, str] = {}
        self.logins = 0
        add_secret = getattr(client, "add_secret", None)
        if add_secret is not None:
            add_secret(config.bot_password)
            add_secret(config.access_token)

    # ------------------------------------------------------------ authentication

    def can_login(self) -> bool:
        return bool(self.config.bot_username and self.config.bot_password)

    async def login(self) -> str:
        """Log in with m.login.password (user identifier); the new access token."""
        body: dict[str, Any] = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": self.config.bot_username},
            "password": self.config.bot_password,
            "initial_device_display_name": "PBX",
        }
        if self.device_id:
            body["device_id"] = self.device_id  # log in again on the same device: no device pile-up
        try:
            response = await self.client.request("POST", f"{API}/login", json=body, expect=(200,))
        except UpstreamError as error:
            raise LoginFailed(NAME, f"Matrix login of {self.config.bot_username} failed: {error}",
                              status=error.status, body=error.body) from None
        answer = response.json if isinstance(response.json, dict) else {}
        token = answer.get("access_token")
        if not isinstance(token, str) or not token:
            raise LoginFailed(NAME, "Matrix login answered without an access_token", status=response.status)
        self.access_token = token
        if hasattr(self.client, "add_secret"):
            self.client.add_secret(token)
        self.user_id = answer.get("user_id") or self.user_id
        self.device_id = answer.get("device_id") or self.device_id
        self.logins += 1
        self.log.info("matrix: logged in as {user} (device {device})", user=self.user_id, device=self.device_id)
        return token

    async def _token(self) -> str:
        """The access token, logging in first when there is none; concurrent callers share one login."""
        if self.access_token:
            return self.access_token
        if self._login_waiters is not None:
            waiter: Deferred[str] = Deferred()
            self._login_waiters.append(waiter)
            return await waiter
        self._login_waiters = []
        try:
            token = await self.login()
        except BaseException:
            failure = Failure()
            waiters, self._login_waiters = self._login_waiters, None
            for waiter in waiters:
                waiter.errback(failure)
            raise
        waiters, self._login_waiters = self._login_waiters, None
        for waiter in waiters:
            waiter.callback(token)
        return token

    async def _call(self, method: str, path: str, *, json: Any = None, params: Any = None,
                    idempotent: bool | None = None, expect=(200,)) -> Any:
        """One authenticated request; logs in again and repeats once on M_UNKNOWN_TOKEN, waits once on
        M_LIMIT_EXCEEDED.  The decoded JSON answer."""
        relogged = waited = False
        while True:
            token = await self._token()
            try:
                response = await self.client.request(
                    method, path, json=json, params=params, idempotent=idempotent, expect=expect,
                    headers={"Authorization": f"Bearer {token}"},
                )
            except UpstreamError as error:
                code = _errcode(error)
                if code == "M_UNKNOWN_TOKEN" and not relogged and self.can_login():
                    relogged = True
                    self.log.info("matrix: access token rejected (M_UNKNOWN_TOKEN), logging in again")
                    if self.access_token == token:
                        self.access_token = None
                    continue
                if code == "M_LIMIT_EXCEEDED" and not waited:
                    waited = True
                    body = error.body if isinstance(error.body, dict) else {}
                    delay = body.get("retry_after_ms", 1000)
                    delay = min(MAX_RATE_LIMIT_WAIT, max(0.0, float(delay) / 1000.0)) if isinstance(
                        delay, (int, float)) else 1.0
                    await deferLater(self.clock, delay, lambda: None)
                    continue
                raise
            return response.json if response.json is not None else {}

    # ------------------------------------------------------------ rooms

    async def resolve_room(self, room: str) -> str:
        """A room id for a room id or an alias (#alias:server, resolved through the directory, cached)."""
        if not isinstance(room, str) or not room:
            raise ValueError("room: a room id (!id:server) or an alias (#alias:server)")
        if not room.startswith("#"):
            return room
        cached = self._aliases.get(room)
        if cached:
            return cached
        answer = await self._call("GET", f"{API}/directory/room/{_q(room)}")
        room_id = answer.get("room_id") if isinstance(answer, dict) else None
        if not isinstance(room_id, str):
            raise UpstreamError(NAME, f"alias {room} resolved without a room_id", status=200, body=answer)
        self._aliases[room] = room_id
        return room_id

    async def create_room(self, name: str, topic: str | None = None,
                          invite_users: list[str] | None = None) -> dict:
        """POST /createRoom (private chat); {"room_id", "name", "topic", "invited"}."""
        body: dict[str, Any] = {"name": name, "preset": "private_chat"}
        if topic:
            body["topic"] = topic
        if invite_users:
            body["invite"] = list(invite_users)
        answer = await self._call("POST", f"{API}/createRoom", json=body)
        room_id = answer.get("room_id") if isinstance(answer, dict) else None
        if not isinstance(room_id, str):
            raise UpstreamError(NAME, "createRoom answered without a room_id", status=200, body=answer)
        return {"room_id": room_id, "name": name, "topic": topic, "invited": list(invite_users or [])}

    async def invite(self, room_id: str, user_id: str) -> dict:
        """POST /rooms/{roomId}/invite; {"room_id", "user_id"}."""
        room_id = await self.resolve_room(room_id)
        await self._call("POST", f"{API}/rooms/{_q(room_id)}/invite", json={"user_id": user_id})
        return {"room_id": room_id, "user_id": user_id}

    async def join(self, room: str) -> dict:
        """POST /join/{roomIdOrAlias} (the bot accepts an invitation or enters a public room); {"room_id"}."""
        answer = await self._call("POST", f"{API}/join/{_q(room)}", json={})
        room_id = answer.get("room_id") if isinstance(answer, dict) else None
        return {"room_id": room_id if isinstance(room_id, str) else room}

    # ------------------------------------------------------------ messages

    async def send_message(self, room_id: str, message: str, msg_type: str = "m.text",
                           txn_id: str | None = None) -> dict:
        """PUT /rooms/{roomId}/send/m.room.message/{txnId}; {"event_id", "room_id", "txn_id"}.

        Pass the same txn_id to repeat a send without posting twice (a new one
        is made when None).  When the bot is not in the room yet (M_FORBIDDEN),
        it joins once (it may have been invited) and sends again.
        """
        txn_id = txn_id or new_txn_id()
        target = await self.resolve_room(room_id)
        content = {"msgtype": msg_type, "body": message}
        joined = False
        while True:
            try:
                answer = await self._call(
                    "PUT", f"{API}/rooms/{_q(target)}/send/m.room.message/{_q(txn_id)}", json=content,
                    idempotent=True,
                )
                break
            except UpstreamError as error:
                if isinstance(error, LoginFailed) or _errcode(error) != "M_FORBIDDEN" or joined:
                    raise
                joined = True
                try:
                    await self.join(target)
                except UpstreamError:
                    raise error from None
                self.log.info("matrix: joined {room} to send to it", room=target)
        event_id = answer.get("event_id") if isinstance(answer, dict) else None
        return {"event_id": event_id, "room_id": target, "txn_id": txn_id}

    async def notice(self, room: str | None, text: str, txn_id: str | None = None) -> dict:
        """An m.notice (what bots post) to `room`, else to notification_room; for the outbox."""
        room = room or self.config.notification_room
        if not room:
            raise NotConfigured(NAME, "no room given and integrations.matrix.notification_room is not set",
                                key="integrations.matrix.notification_room")
        return await self.send_message(room, text, msg_type="m.notice", txn_id=txn_id)

