"""Zoom client against a fake Zoom on loopback.

Zoom cannot run here (a cloud service); the fake in tests/fakes/zoom.py
follows Zoom's documentation for Server-to-Server OAuth (``POST
/oauth/token?grant_type=account_credentials&account_id=...`` with Basic
client_id:client_secret, answering access_token / bearer / expires_in 3599)
and for ``POST /v2/users/{userId}/meetings`` (Bearer token, 201 with the
meeting, errors as ``{"code", "message"}``).  Both endpoints live on one
local server; the config's oauth_url and api_base_url point at it.  The
fake records every request and the tests assert on the exact requests.
"""

from __future__ import annotations

import base64

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.defer import ensureDeferred as as_deferred
from twisted.internet.task import Clock

from fakes.zoom import FakeZoom
from pbx.config import ZoomConfig
from pbx.integrations.http import JSONClient, NotConfigured, UpstreamError, UpstreamTimeout
from pbx.integrations.zoom import ZoomClient

BASIC = "Basic " + base64.b64encode(b"client-abc:secret-xyz").decode()
GRANT = [("grant_type", "account_credentials"), ("account_id", "acct-123")]


@pytest_twisted.async_yield_fixture
async def zoom():
    fake = FakeZoom()
    fake.base = fake.start(reactor)
    yield fake
    await fake.stop()


def make(fake: FakeZoom, *, timeout: float = 2.0, clock: Clock | None = None, **overrides) -> ZoomClient:
    values = {"enabled": True, "account_id": "acct-123", "client_id": "client-abc",
              "client_secret": "secret-xyz", "api_base_url": fake.base + "/v2",
              "oauth_url": fake.base + "/oauth/token"}
    values.update(overrides)

    def factory(base_url: str) -> JSONClient:
        return JSONClient("Zoom", base_url, reactor=reactor, timeout=timeout, retries=2, backoff=0.01)

    return ZoomClient(ZoomConfig(**values), factory, clock or Clock())


def assert_token_request(request) -> None:
    assert (request.method, request.path) == ("POST", "/oauth/token")
    assert request.query == GRANT
    assert request.header("Authorization") == BASIC


# ---------------------------------------------------------------------------
# the happy paths


@pytest_twisted.ensureDeferred
async def test_instant_meeting_exact_requests(zoom):
    meeting = await make(zoom).create_meeting("Support call")

    assert meeting["id"] == 85746065001
    assert meeting["join_url"] == "https://zoom.us/j/85746065001?pwd=encrypted"
    assert meeting["start_url"] == "https://zoom.us/s/85746065001?zak=start-secret"
    assert meeting["password"] == "a1B2c3"
    assert (meeting["topic"], meeting["type"]) == ("Support call", 1)

    token_request, api_request = zoom.requests
    assert_token_request(token_request)
    assert token_request.raw_query == "grant_type=account_credentials&account_id=acct-123"
    assert (api_request.method, api_request.path) == ("POST", "/v2/users/me/meetings")
    assert api_request.header("Authorization") == "Bearer zoom-token-1"
    assert api_request.header("Content-Type") == "application/json"
    assert api_request.body == {"topic": "Support call", "type": 1}


@pytest_twisted.ensureDeferred
async def test_scheduled_meeting_body(zoom):
    client = make(zoom)
    meeting = await client.create_meeting("Quarterly review", start_time="2024-03-01T10:00:00+01:00",
                                          duration=45, timezone="Europe/Berlin", agenda="Numbers, plans")
    assert meeting["start_time"] == "2024-03-01T09:00:00Z"
    assert meeting["duration"] == 45
    assert zoom.requests[1].body == {"topic": "Quarterly review", "type": 2, "start_time": "2024-03-01T09:00:00Z",
                                     "duration": 45, "timezone": "Europe/Berlin", "agenda": "Numbers, plans"}
    # A time without offset is local time in `timezone`, sent without "Z".
    await client.create_meeting("Stand-up", start_time="2024-03-04T09:30:00", timezone="Europe/Berlin")
    assert zoom.requests[2].body == {"topic": "Stand-up", "type": 2, "start_time": "2024-03-04T09:30:00",
                                     "timezone": "Europe/Berlin"}


@pytest_twisted.ensureDeferred
async def test_meeting_for_another_user_is_url_encoded(zoom):
    await make(zoom, user="host@example.com").create_meeting("Demo")
    assert zoom.requests[1].path == "/v2/users/host%40example.com/meetings"


# ---------------------------------------------------------------------------
# the token


@pytest_twisted.ensureDeferred
async def test_token_is_cached_until_shortly_before_it_expires(zoom):
    clock = Clock()
    client = make(zoom, clock=clock)
    await client.create_meeting("one")
    clock.advance(3599 - 60 - 1)
    await client.create_meeting("two")
    assert [r.path for r in zoom.requests] == ["/oauth/token", "/v2/users/me/meetings", "/v2/users/me/meetings"]
    assert zoom.requests[2].header("Authorization") == "Bearer zoom-token-1"

    clock.advance(2)  # 3600 s after: within the last 60 s of the token's life
    await client.create_meeting("three")
    assert [r.path for r in zoom.requests[3:]] == ["/oauth/token", "/v2/users/me/meetings"]
    assert_token_request(zoom.requests[3])
    assert zoom.requests[4].header("Authorization") == "Bearer zoom-token-2"
    assert client.token_fetches == 2


@pytest_twisted.ensureDeferred
async def test_concurrent_meetings_share_one_token_request(zoom):
    client = make(zoom)
    meetings = await gatherResults([as_deferred(client.create_meeting(f"m{n}")) for n in range(3)])
    assert len({m["id"] for m in meetings}) == 3
    assert [r.path for r in zoom.requests].count("/oauth/token") == 1


@pytest_twisted.ensureDeferred
async def test_401_fetches_a_new_token_once_and_retries(zoom):
    client = make(zoom)
    await client.create_meeting("first")
    zoom.revoke_tokens()
    zoom.requests.clear()
    meeting = await client.create_meeting("second")
    assert meeting["topic"] == "second"
    assert [(r.path, r.header("Authorization")) for r in zoom.requests] == [
        ("/v2/users/me/meetings", "Bearer zoom-token-1"),
        ("/oauth/token", BASIC),
        ("/v2/users/me/meetings", "Bearer zoom-token-2"),
    ]


@pytest_twisted.ensureDeferred
async def test_401_twice_is_upstream_error(zoom):
    zoom.reject_every_token = True
    with pytest.raises(UpstreamError) as caught:
        await make(zoom).create_meeting("never")
    assert caught.value.status == 401
    assert caught.value.body == {"code": 124, "message": "Invalid access token."}
    assert [r.path for r in zoom.requests] == ["/oauth/token", "/v2/users/me/meetings"] * 2
    for secret in ("secret-xyz", "zoom-token-1", "zoom-token-2", BASIC[6:]):
        assert secret not in str(caught.value)


@pytest_twisted.ensureDeferred
async def test_wrong_credentials_is_upstream_error(zoom):
    with pytest.raises(UpstreamError) as caught:
        await make(zoom, client_secret="wrong-secret").create_meeting("x")
    assert caught.value.status == 400
    assert caught.value.body == {"reason": "Invalid client_id or client_secret", "error": "invalid_client"}
    assert "wrong-secret" not in str(caught.value)
    assert [r.path for r in zoom.requests] == ["/oauth/token"]


def test_missing_credentials_are_not_configured():
    for key in ("account_id", "client_id", "client_secret"):
        values = {"enabled": True, "account_id": "a", "client_id": "b", "client_secret": "c", key: None}
        with pytest.raises(NotConfigured) as caught:
            ZoomClient.build(ZoomConfig(**values), reactor)
        assert caught.value.key == f"integrations.zoom.{key}"


# ---------------------------------------------------------------------------
# errors


@pytest_twisted.ensureDeferred
async def test_unknown_user_is_upstream_error_with_zooms_body(zoom):
    with pytest.raises(UpstreamError) as caught:
        await make(zoom, user="nobody@example.com").create_meeting("x")
    assert caught.value.status == 404
    assert caught.value.body == {"code": 1001, "message": "User does not exist: nobody@example.com."}
    assert "User does not exist" in str(caught.value)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(("status", "body"), [
    (429, {"code": 429, "message": "You have reached the maximum per-second rate limit for this API."}),
    (500, {"code": 500, "message": "Internal server error."}),
    (503, {"code": 503, "message": "Service unavailable."}),
])
async def test_error_answers_are_upstream_errors_and_posts_are_not_retried(zoom, status, body):
    client = make(zoom)
    await client.access_token()
    zoom.fail_next(status, body, count=3)
    with pytest.raises(UpstreamError) as caught:
        await client.create_meeting("x")
    assert (caught.value.status, caught.value.body) == (status, body)
    assert [r.path for r in zoom.requests] == ["/oauth/token", "/v2/users/me/meetings"]


@pytest_twisted.ensureDeferred
async def test_token_endpoint_5xx_is_retried(zoom):
    zoom.fail_next(502, "Bad Gateway")
    await make(zoom).create_meeting("x")
    assert [r.path for r in zoom.requests] == ["/oauth/token", "/oauth/token", "/v2/users/me/meetings"]


@pytest_twisted.ensureDeferred
async def test_api_that_hangs_is_a_timeout(zoom):
    client = make(zoom, timeout=0.3)
    await client.access_token()
    zoom.hang_next()
    with pytest.raises(UpstreamTimeout):
        await client.create_meeting("x")


@pytest_twisted.ensureDeferred
async def test_bad_input_names_the_field(zoom):
    client = make(zoom)
    for kwargs, field in [({"topic": ""}, "topic"), ({"topic": "x" * 201}, "topic"),
                          ({"topic": "x", "start_time": "soon"}, "start_time"),
                          ({"topic": "x", "duration": 0}, "duration"),
                          ({"topic": "x", "agenda": "y" * 2001}, "agenda")]:
        with pytest.raises(ValueError, match=field):
            await client.create_meeting(**kwargs)
    assert zoom.requests == []
