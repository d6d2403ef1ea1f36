"""A fake Zoom: Server-to-Server OAuth and the create-meeting API on one server.

Zoom cannot run here (a cloud service), so this follows Zoom's documentation:

- ``POST /oauth/token?grant_type=account_credentials&account_id={id}`` with
  ``Authorization: Basic base64(client_id:client_secret)`` answers
  ``200 {"access_token", "token_type": "bearer", "expires_in": 3599,
  "scope", "api_url"}``.  Wrong credentials: ``400 {"reason": "Invalid
  client_id or client_secret", "error": "invalid_client"}``; another grant
  type: ``400 {"reason": "unsupported grant type", "error":
  "unsupported_grant_type"}``; unknown account: ``400 {"reason": "Invalid
  request : Bad Request", "error": "invalid_request"}``.
- ``POST /v2/users/{userId}/meetings`` with ``Authorization: Bearer
  {token}`` and a JSON body (topic, type 1 instant / 2 scheduled,
  start_time, duration, timezone, agenda) answers ``201`` with the meeting
  (id, uuid, join_url, start_url, password, ...).  Errors use Zoom's body
  ``{"code": n, "message": "..."}``: ``401 {"code": 124, "message":
  "Invalid access token."}``, ``404 {"code": 1001, "message": "User does not
  exist: ..."}``, ``400 {"code": 300, ...}`` for invalid fields.

Point ``oauth_url`` at ``{base}/oauth/token`` and ``api_base_url`` at
``{base}/v2``.  ``revoke_tokens()`` makes every issued token invalid, as an
expiry on Zoom's side would; ``reject_every_token = True`` makes the API
answer 401 to any token.
"""

from __future__ import annotations

import base64
import itertools
from typing import Any
from urllib.parse import unquote

from fakes.base import FakeServer, Recorded, Reply


class FakeZoom(FakeServer):
    def __init__(self, account_id: str = "acct-123", client_id: str = "client-abc",
                 client_secret: str = "secret-xyz", users: tuple[str, ...] = ("me", "host@example.com")) -> None:
        super().__init__()
        self.account_id = account_id
        self.client_id = client_id
        self.client_secret = client_secret
        self.users = set(users)
        self.valid_tokens: set[str] = set()
        self.reject_every_token = False  # the API answers 401 whatever the token
        self.issued: list[str] = []
        self.meetings: list[dict[str, Any]] = []
        self._token_numbers = itertools.count(1)
        self._meeting_ids = itertools.count(85746065001)

    def revoke_tokens(self) -> None:
        self.valid_tokens.clear()

    def handle(self, recorded: Recorded) -> Reply:
        if recorded.path == "/oauth/token":
            return self._token(recorded)
        if recorded.path.startswith("/v2/"):
            return self._api(recorded)
        return Reply(404, {"code": 404, "message": "Not Found"})

    def _token(self, recorded: Recorded) -> Reply:
        if recorded.method != "POST":
            return Reply(405, {"reason": "Method not allowed", "error": "invalid_request"})
        expected = "Basic " + base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        if recorded.header("authorization") != expected:
            return Reply(400, {"reason": "Invalid client_id or client_secret", "error": "invalid_client"})
        params = dict(recorded.query)
        if params.get("grant_type") != "account_credentials":
            return Reply(400, {"reason": "unsupported grant type", "error": "unsupported_grant_type"})
        if params.get("account_id") != self.account_id:
            return Reply(400, {"reason": "Invalid request : Bad Request", "error": "invalid_request"})
        token = f"zoom-token-{next(self._token_numbers)}"
        self.valid_tokens.add(token)
        self.issued.append(token)
        return Reply(200, {"access_token": token, "token_type": "bearer", "expires_in": 3599,
                           "scope": "meeting:write:admin meeting:read:admin user:read:admin",
                           "api_url": "https://api.zoom.us"})

    def _api(self, recorded: Recorded) -> Reply:
        authorization = recorded.header("authorization") or ""
        token = authorization[7:] if authorization.startswith("Bearer ") else None
        if token not in self.valid_tokens or self.reject_every_token:
            return Reply(401, {"code": 124, "message": "Invalid access token."})
        parts = recorded.path.split("/")
        # ["", "v2", "users", "{userId}", "meetings"]
        if len(parts) != 5 or parts[2] != "users" or parts[4] != "meetings":
            return Reply(404, {"code": 404, "message": "Not Found"})
        if recorded.method != "POST":
            return Reply(405, {"code": 405, "message": "Method not allowed"})
        user = unquote(parts[3])
        if user not in self.users:
            return Reply(404, {"code": 1001, "message": f"User does not exist: {user}."})
        body = recorded.body if isinstance(recorded.body, dict) else None
        if body is None:
            return Reply(400, {"code": 300, "message": "Request Body should be a valid JSON object."})
        topic = body.get("topic", "")
        if not isinstance(topic, str) or len(topic) > 200:
            return Reply(400, {"code": 300, "message": "Invalid field.", "errors": [
                {"field": "topic", "message": "Invalid field."}]})
        kind = body.get("type", 2)
        if kind not in (1, 2, 3, 8, 10):
            return Reply(400, {"code": 300, "message": "Invalid field.", "errors": [
                {"field": "type", "message": "Invalid field."}]})
        meeting_id = next(self._meeting_ids)
        meeting = {
            "uuid": f"uuid-{meeting_id}==",
            "id": meeting_id,
            "host_id": "host-id-1",
            "host_email": "host@example.com",
            "topic": topic,
            "type": kind,
            "status": "waiting",
            "timezone": body.get("timezone", "UTC"),
            "agenda": body.get("agenda", ""),
            "created_at": "2024-01-01T00:00:00Z",
            "start_url": f"https://zoom.us/s/{meeting_id}?zak=start-secret",
            "join_url": f"https://zoom.us/j/{meeting_id}?pwd=encrypted",
            "password": "a1B2c3",
            "h323_password": "123456",
            "pstn_password": "123456",
            "encrypted_password": "encrypted",
            "settings": {"host_video": False, "participant_video": False, "join_before_host": False},
            "pre_schedule": False,
        }
        if kind == 2:
            meeting["start_time"] = body.get("start_time")
            meeting["duration"] = body.get("duration", 60)
        else:
            meeting["duration"] = body.get("duration", 60)
        self.meetings.append(meeting)
        return Reply(201, meeting)
