"""MatrixClient against a fake homeserver (twisted.web resource served through treq's StubTreq).

The fake records each request as it arrived (method, raw path with its
percent-encoding, Authorization, JSON body) and answers like Synapse does,
or with an answer queued by the test.  Time is a task.Clock: nothing waits.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from pbx.config import MatrixConfig
from pbx.integrations.http import JSONClient, NotConfigured, UpstreamError, UpstreamTimeout
from pbx.integrations.matrix import MatrixClient, missing_keys, new_txn_id

HS = "http://hs.test:8008"
API = "/_matrix/client/v3"


class FakeHomeserver(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[dict[str, Any]] = []
        self.tokens: set[str] = set()
        self.logins = 0
        self.queued: list[tuple[str, str, int, Any]] = []  # (method, path prefix, status, body)
        self.hanging: list[Any] = []
        self.aliases = {"#alias:server": "!resolved:server"}
        self.sent: dict[str, str] = {}  # txn path -> event id (Synapse: same txnId, same event)

    def queue(self, method: str, prefix: str, status: int, body: Any) -> None:
        """Answer the next request matching method and path prefix with (status, body); body "hang": never."""
        self.queued.append((method, prefix, status, body))

    def paths(self, method: str | None = None) -> list[str]:
        return [r["path"] for r in self.requests if method is None or r["method"] == method]

    def render(self, request):
        method = request.method.decode()
        path = request.uri.decode()
        raw = request.content.read()
        body = json.loads(raw) if raw else None
        auth = request.getHeader("authorization")
        self.requests.append({"method": method, "path": path, "auth": auth, "json": body,
                              "content_type": request.getHeader("content-type")})
        for index, (m, prefix, status, answer) in enumerate(self.queued):
            if m == method and path.startswith(prefix):
                del self.queued[index]
                if answer == "hang":
                    self.hanging.append(request)
                    return NOT_DONE_YET
                return self._answer(request, status, answer)
        if path == f"{API}/login" and method == "POST":
            self.logins += 1
            token = f"tok-{self.logins}"
            self.tokens.add(token)
            return self._answer(request, 200, {"access_token": token, "user_id": "@bot:server",
                                               "device_id": body.get("device_id") or "DEV1"})
        if auth is None:
            return self._answer(request, 401, {"errcode": "M_MISSING_TOKEN", "error": "Missing access token"})
        if auth.removeprefix("Bearer ") not in self.tokens:
            return self._answer(request, 401, {"errcode": "M_UNKNOWN_TOKEN", "error": "Invalid access token passed.",
                                               "soft_logout": False})
        if path.startswith(f"{API}/directory/room/") and method == "GET":
            alias = request.path.decode().rsplit("/", 1)[1]
            from urllib.parse import unquote

            room = self.aliases.get(unquote(alias))
            if room is None:
                return self._answer(request, 404, {"errcode": "M_NOT_FOUND", "error": "Room alias not found"})
            return self._answer(request, 200, {"room_id": room, "servers": ["server"]})
        if "/send/m.room.message/" in path and method == "PUT":
            event = self.sent.setdefault(path, f"$event{len(self.sent) + 1}")
            return self._answer(request, 200, {"event_id": event})
        if path == f"{API}/createRoom" and method == "POST":
            return self._answer(request, 200, {"room_id": "!new:server"})
        if path.endswith("/invite") and method == "POST":
            return self._answer(request, 200, {})
        if path.startswith(f"{API}/join/") and method == "POST":
            return self._answer(request, 200, {"room_id": "!joined:server"})
        return self._answer(request, 404, {"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"})

    def release(self, status: int, body: Any) -> None:
        """Answer the oldest request left hanging."""
        request = self.hanging.pop(0)
        request.write(self._answer(request, status, body))
        request.finish()

    @staticmethod
    def _answer(request, status: int, body: Any) -> bytes:
        request.setResponseCode(status)
        if isinstance(body, (bytes, str)):
            request.setHeader("content-type", "text/html")
            return body.encode() if isinstance(body, str) else body
        request.setHeader("content-type", "application/json")
        return json.dumps(body).encode()


class Harness:
    def __init__(self, **config: Any) -> None:
        self.clock = Clock()
        self.server = FakeHomeserver()
        self.stub = StubTreq(self.server)
        values = {"enabled": True, "homeserver_url": HS, "bot_username": "bot", "bot_password": "bot-secret"}
        values.update(config)
        self.config = MatrixConfig(**values)
        self.http = JSONClient("Matrix", HS, reactor=self.clock, timeout=5.0, retries=2, backoff=0.5,
                               http_client=self.stub,
                               secrets=[s for s in (self.config.bot_password, self.config.access_token) if s])
        self.matrix = MatrixClient(self.config, self.http, self.clock)

    def run(self, coroutine, advance: float = 0.0) -> Deferred:
        """Start a coroutine and pump the fake server (and the clock) until it is done or stuck."""
        d = Deferred.fromCoroutine(coroutine)
        for _ in range(200):
            self.stub.flush()
            if d.called:
                break
            if advance:
                self.clock.advance(advance)
        return d

    def result(self, coroutine, advance: float = 0.0) -> Any:
        d = self.run(coroutine, advance)
        results: list[Any] = []
        d.addBoth(results.append)
        assert results, "the call did not finish"
        outcome = results[0]
        if hasattr(outcome, "raiseException"):
            outcome.raiseException()
        return outcome

    def failure(self, coroutine, advance: float = 0.0) -> BaseException:
        with pytest.raises(Exception) as info:
            self.result(coroutine, advance)
        return info.value


@pytest.fixture
def h() -> Harness:
    return Harness()


def test_first_send_logs_in_with_a_user_identifier_then_reuses_the_token(h):
    answer = h.result(h.matrix.send_message("!room:server", "hello", txn_id="t1"))
    assert answer == {"event_id": "$event1", "room_id": "!room:server", "txn_id": "t1"}
    login, send = h.server.requests
    assert (login["method"], login["path"]) == ("POST", f"{API}/login")
    assert login["json"] == {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": "bot"},
        "password": "bot-secret",
        "initial_device_display_name": "PBX",
    }
    assert login["auth"] is None
    assert (send["method"], send["path"]) == ("PUT", f"{API}/rooms/%21room%3Aserver/send/m.room.message/t1")
    assert send["auth"] == "Bearer tok-1"
    assert send["json"] == {"msgtype": "m.text", "body": "hello"}
    assert send["content_type"].startswith("application/json")

    h.result(h.matrix.send_message("!room:server", "again", txn_id="t2"))
    assert h.server.logins == 1
    assert h.server.requests[-1]["auth"] == "Bearer tok-1"
    assert h.server.paths() == [f"{API}/login", f"{API}/rooms/%21room%3Aserver/send/m.room.message/t1",
                                f"{API}/rooms/%21room%3Aserver/send/m.room.message/t2"]


def test_configured_access_token_is_used_without_login():
    h = Harness(bot_username=None, bot_password=None, access_token="configured")
    h.server.tokens.add("configured")
    h.result(h.matrix.send_message("!room:server", "hi", txn_id="x"))
    assert h.server.logins == 0
    assert [r["auth"] for r in h.server.requests] == ["Bearer configured"]


def test_generated_txn_ids_are_unique_and_path_safe(h):
    ids = {new_txn_id() for _ in range(1000)}
    assert len(ids) == 1000
    first = h.result(h.matrix.send_message("!room:server", "a"))
    second = h.result(h.matrix.send_message("!room:server", "b"))
    assert first["txn_id"] != second["txn_id"]
    assert h.server.paths("PUT")[0].endswith("/" + first["txn_id"])


def test_txn_id_is_percent_encoded(h):
    h.result(h.matrix.send_message("!room:server", "a", txn_id="a/b c"))
    assert h.server.paths("PUT") == [f"{API}/rooms/%21room%3Aserver/send/m.room.message/a%2Fb%20c"]


def test_room_version_12_ids_without_a_server_part_are_sent_as_they_are(h):
    """Room version 12 ids (the default of current Synapse) are "!" and an opaque hash, without ":server"."""
    h.result(h.matrix.send_message("!AdmqZkx1el1u3W-TlvpvRn6iGD7zO3GKi0FUPc74_Bc", "x", txn_id="t"))
    assert h.server.paths("PUT") == [f"{API}/rooms/%21AdmqZkx1el1u3W-TlvpvRn6iGD7zO3GKi0FUPc74_Bc"
                                     "/send/m.room.message/t"]


def test_alias_is_resolved_encoded_and_cached(h):
    answer = h.result(h.matrix.send_message("#alias:server", "via alias", txn_id="t1"))
    assert answer["room_id"] == "!resolved:server"
    h.result(h.matrix.send_message("#alias:server", "again", txn_id="t2"))
    assert h.server.paths()[1:] == [
        f"{API}/directory/room/%23alias%3Aserver",
        f"{API}/rooms/%21resolved%3Aserver/send/m.room.message/t1",
        f"{API}/rooms/%21resolved%3Aserver/send/m.room.message/t2",
    ]


def test_unknown_alias_is_an_upstream_error(h):
    error = h.failure(h.matrix.send_message("#nope:server", "x"))
    assert isinstance(error, UpstreamError) and error.status == 404
    assert error.body["errcode"] == "M_NOT_FOUND"
    assert h.server.paths("PUT") == []


def test_unknown_token_logs_in_again_and_repeats_the_same_transaction(h):
    h.result(h.matrix.send_message("!room:server", "one", txn_id="t1"))
    h.server.tokens.clear()  # the homeserver forgot the session (logout, expiry)
    answer = h.result(h.matrix.send_message("!room:server", "two", txn_id="t2"))
    assert answer["event_id"] == "$event2"
    assert [(r["method"], r["path"], r["auth"]) for r in h.server.requests[2:]] == [
        ("PUT", f"{API}/rooms/%21room%3Aserver/send/m.room.message/t2", "Bearer tok-1"),
        ("POST", f"{API}/login", None),
        ("PUT", f"{API}/rooms/%21room%3Aserver/send/m.room.message/t2", "Bearer tok-2"),
    ]
    # The second login asks for the same device, so sessions do not pile up.
    assert h.server.requests[3]["json"]["device_id"] == "DEV1"


def test_unknown_token_is_retried_only_once(h):
    h.result(h.matrix.send_message("!room:server", "one", txn_id="t1"))
    h.server.tokens.clear()
    h.server.queue("PUT", f"{API}/rooms/", 401, {"errcode": "M_UNKNOWN_TOKEN", "error": "no"})
    h.server.queue("PUT", f"{API}/rooms/", 401, {"errcode": "M_UNKNOWN_TOKEN", "error": "no"})
    error = h.failure(h.matrix.send_message("!room:server", "two", txn_id="t2"))
    assert isinstance(error, UpstreamError) and error.status == 401
    assert h.server.paths("PUT").count(f"{API}/rooms/%21room%3Aserver/send/m.room.message/t2") == 2
    assert h.server.logins == 2


def test_unknown_configured_token_without_password_is_an_error():
    h = Harness(bot_username=None, bot_password=None, access_token="revoked")
    error = h.failure(h.matrix.send_message("!room:server", "x", txn_id="t"))
    assert isinstance(error, UpstreamError) and error.status == 401
    assert error.body["errcode"] == "M_UNKNOWN_TOKEN"
    assert h.server.logins == 0


def test_configured_token_falls_back_to_login_when_a_password_is_set():
    h = Harness(access_token="revoked")
    h.result(h.matrix.send_message("!room:server", "x", txn_id="t"))
    assert [r["auth"] for r in h.server.requests] == ["Bearer revoked", None, "Bearer tok-1"]


def test_concurrent_first_requests_share_one_login(h):
    h.server.queue("POST", f"{API}/login", 0, "hang")
    d1 = Deferred.fromCoroutine(h.matrix.send_message("!room:server", "a", txn_id="t1"))
    d2 = Deferred.fromCoroutine(h.matrix.send_message("!room:server", "b", txn_id="t2"))
    h.stub.flush()
    assert not d1.called and not d2.called
    assert h.server.paths() == [f"{API}/login"]
    h.server.release(200, {"access_token": "shared", "user_id": "@bot:server", "device_id": "D"})
    h.server.tokens.add("shared")
    for _ in range(20):
        h.stub.flush()
    assert d1.called and d2.called
    assert h.server.paths("POST") == [f"{API}/login"]
    assert [r["auth"] for r in h.server.requests if r["method"] == "PUT"] == ["Bearer shared"] * 2


def test_failed_login_fails_every_waiter_and_the_next_call_tries_again(h):
    h.server.queue("POST", f"{API}/login", 0, "hang")
    d1 = Deferred.fromCoroutine(h.matrix.send_message("!room:server", "a", txn_id="t1"))
    d2 = Deferred.fromCoroutine(h.matrix.send_message("!room:server", "b", txn_id="t2"))
    h.stub.flush()
    h.server.release(403, {"errcode": "M_FORBIDDEN", "error": "Invalid username or password"})
    for _ in range(20):
        h.stub.flush()
    errors: list[BaseException] = []
    d1.addErrback(lambda f: errors.append(f.value))
    d2.addErrback(lambda f: errors.append(f.value))
    assert len(errors) == 2 and all(isinstance(e, UpstreamError) and e.status == 403 for e in errors)
    assert all("bot-secret" not in str(e) for e in errors)
    # A refused login is not taken for a room the bot has not joined: no /join, no send.
    assert h.server.paths() == [f"{API}/login"]
    h.result(h.matrix.send_message("!room:server", "c", txn_id="t3"))
    assert h.server.paths("POST") == [f"{API}/login"] * 2


def test_server_error_on_send_is_retried_with_the_same_txn_id(h):
    h.server.queue("PUT", f"{API}/rooms/", 502, "<html>bad gateway</html>")
    answer = h.result(h.matrix.send_message("!room:server", "x", txn_id="same"), advance=0.5)
    assert answer["event_id"] == "$event1"
    assert h.server.paths("PUT") == [f"{API}/rooms/%21room%3Aserver/send/m.room.message/same"] * 2


def test_outbox_style_resend_reuses_the_event(h):
    """The outbox repeats a delivery with the txn_id of its payload: Synapse answers the same event."""
    first = h.result(h.matrix.notice("!room:server", "Missed call", "outbox-7"))
    again = h.result(h.matrix.notice("!room:server", "Missed call", "outbox-7"))
    assert first["event_id"] == again["event_id"]


def test_notice_goes_to_the_notification_room_as_m_notice():
    h = Harness(notification_room="#alias:server")
    answer = h.result(h.matrix.notice(None, "Missed call from 1001 to 1002", "n1"))
    assert answer["room_id"] == "!resolved:server"
    send = h.server.requests[-1]
    assert send["path"] == f"{API}/rooms/%21resolved%3Aserver/send/m.room.message/n1"
    assert send["json"] == {"msgtype": "m.notice", "body": "Missed call from 1001 to 1002"}


def test_notice_without_any_room_is_not_configured(h):
    error = h.failure(h.matrix.notice(None, "x", "n1"))
    assert isinstance(error, NotConfigured)
    assert "notification_room" in str(error)
    assert h.server.requests == []


def test_create_room_and_invite(h):
    room = h.result(h.matrix.create_room("PBX alerts", topic="missed calls", invite_users=["@alice:server"]))
    assert room == {"room_id": "!new:server", "name": "PBX alerts", "topic": "missed calls",
                    "invited": ["@alice:server"]}
    create = h.server.requests[-1]
    assert (create["method"], create["path"]) == ("POST", f"{API}/createRoom")
    assert create["json"] == {"name": "PBX alerts", "preset": "private_chat", "topic": "missed calls",
                              "invite": ["@alice:server"]}
    answer = h.result(h.matrix.invite("!new:server", "@bob:server"))
    assert answer == {"room_id": "!new:server", "user_id": "@bob:server"}
    invite = h.server.requests[-1]
    assert (invite["method"], invite["path"]) == ("POST", f"{API}/rooms/%21new%3Aserver/invite")
    assert invite["json"] == {"user_id": "@bob:server"}


def test_create_room_minimal_body(h):
    h.result(h.matrix.create_room("Plain"))
    assert h.server.requests[-1]["json"] == {"name": "Plain", "preset": "private_chat"}


def test_send_to_a_room_the_bot_has_not_joined_joins_once(h):
    h.server.queue("PUT", f"{API}/rooms/", 403, {"errcode": "M_FORBIDDEN", "error": "not in room"})
    answer = h.result(h.matrix.send_message("!room:server", "x", txn_id="t"))
    assert answer["event_id"] == "$event1"
    assert h.server.paths()[1:] == [f"{API}/rooms/%21room%3Aserver/send/m.room.message/t",
                                    f"{API}/join/%21room%3Aserver",
                                    f"{API}/rooms/%21room%3Aserver/send/m.room.message/t"]


def test_forbidden_send_when_the_join_fails_reports_the_send_error(h):
    h.server.queue("PUT", f"{API}/rooms/", 403, {"errcode": "M_FORBIDDEN", "error": "not in room"})
    h.server.queue("POST", f"{API}/join/", 403, {"errcode": "M_FORBIDDEN", "error": "not invited"})
    error = h.failure(h.matrix.send_message("!room:server", "x", txn_id="t"))
    assert isinstance(error, UpstreamError) and error.status == 403
    assert error.body == {"errcode": "M_FORBIDDEN", "error": "not in room"}


def test_rate_limit_waits_then_repeats_once(h):
    h.server.queue("PUT", f"{API}/rooms/", 429, {"errcode": "M_LIMIT_EXCEEDED", "error": "slow down",
                                                  "retry_after_ms": 300})
    d = Deferred.fromCoroutine(h.matrix.send_message("!room:server", "x", txn_id="t"))
    for _ in range(10):
        h.stub.flush()
    assert not d.called and len(h.server.paths("PUT")) == 1
    h.clock.advance(0.3)
    for _ in range(10):
        h.stub.flush()
    assert d.called
    assert h.server.paths("PUT") == [f"{API}/rooms/%21room%3Aserver/send/m.room.message/t"] * 2


def test_create_room_server_error_is_upstream_error_and_not_repeated(h):
    h.server.queue("POST", f"{API}/createRoom", 500, {"errcode": "M_UNKNOWN", "error": "Internal server error"})
    error = h.failure(h.matrix.create_room("x"), advance=1.0)
    assert isinstance(error, UpstreamError) and error.status == 500
    assert h.server.paths("POST").count(f"{API}/createRoom") == 1


def test_send_timeout_is_upstream_timeout(h):
    for _ in range(3):  # the first attempt and both retries hang
        h.server.queue("PUT", f"{API}/rooms/", 0, "hang")
    error = h.failure(h.matrix.send_message("!room:server", "x", txn_id="t"), advance=1.0)
    assert isinstance(error, UpstreamTimeout)


def test_not_configured_names_the_missing_keys():
    with pytest.raises(NotConfigured) as info:
        Harness(bot_username=None, bot_password=None)
    assert "bot_username" in str(info.value) and "bot_password" in str(info.value)
    assert missing_keys(MatrixConfig(enabled=True, bot_username="bot")) == ["bot_password"]
    assert missing_keys(MatrixConfig(enabled=True, access_token="t")) == []
