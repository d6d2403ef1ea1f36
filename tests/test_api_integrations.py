"""/api/integrations/...: every route against fake clients (success, disabled,
bad input, upstream error, timeout), and EspoCRM end to end through the real
client to a local HTTP server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from fakesip import Network
from pbx.api.openapi import OPERATIONS
from pbx.config import parse_config
from pbx.integrations.http import UpstreamError, UpstreamTimeout
from pbx.service import PBXService
from test_api import CONFIG, TOKEN, Harness, api, assert_error  # noqa: F401 - api is a fixture

NAMES = {"jitsi": "Jitsi", "espocrm": "EspoCRM", "matrix": "Matrix", "zoom": "Zoom"}


class FakeClient:
    """Any integration's client: records calls; ``mode`` says how they end."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.mode = "ok"
        self.calls: list[tuple[str, tuple, dict]] = []
        self.config = type("Config", (), {"notification_room": "!notify:example.com"})()

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_"):
            raise AttributeError(method)

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((method, args, kwargs))
            name = NAMES[self.key]
            if self.mode == "upstream":
                raise UpstreamError(self.key, f"{name} answered 500 to POST /x: internal", status=500)
            if self.mode == "timeout":
                raise UpstreamTimeout(self.key, f"{name} did not answer POST /x within 5s")
            if self.mode == "value":
                raise ValueError("duration: expected a positive number of minutes")
            return {"method": method, "ok": True}

        return call


# (method, path, integration, good body or query, bad body or query, field at fault, expected call)
ROUTES: list[tuple[str, str, str, Any, Any, str, tuple]] = [
    ("POST", "/jitsi/meetings", "jitsi",
     {"room_name": "Team Sync", "subject": "Weekly", "participants": ["Ann"], "duration": 30,
      "scheduled_time": "2024-06-01T10:00:00Z"},
     {"duration": 0}, "duration",
     ("meeting", (), {"room_name": "Team Sync", "subject": "Weekly", "participants": ["Ann"], "duration": 30,
                      "scheduled_time": "2024-06-01T10:00:00Z"})),
    ("POST", "/jitsi/instant", "jitsi", {"extension": "1001", "contact_name": "Carol"}, {"contact_name": "x"},
     "extension", ("instant", ("1001", "Carol"), {})),
    ("GET", "/espocrm/contacts/search", "espocrm", "?phone=%2B4930123456", "?phone=call-me", "phone",
     ("search_contacts", ("+4930123456",), {})),
    ("POST", "/espocrm/contacts", "espocrm", {"name": "Carol Customer", "phone": "+4930123456", "email": None},
     {"name": "Carol", "email": "not-an-address"}, "email",
     ("create_contact", ("Carol Customer",), {"phone": "+4930123456"})),
    ("POST", "/espocrm/calls", "espocrm",
     {"contact_id": "c-42", "direction": "Inbound", "duration": 60, "status": "Held", "description": "hi"},
     {"contact_id": "c-42", "direction": "Sideways", "duration": 60, "status": "Held"}, "direction",
     ("log_call", ("c-42", "Inbound", 60, "Held"), {"description": "hi"})),
    ("POST", "/matrix/messages", "matrix", {"room_id": "#support:example.com", "message": "hello"},
     {"room_id": "support", "message": "hello"}, "room_id",
     ("send_message", ("#support:example.com", "hello", "m.text"), {})),
    ("POST", "/matrix/notifications", "matrix", {"message": "hello"}, {"room_id": "!r:example.com"}, "message",
     ("notice", ("!notify:example.com", "hello"), {})),
    ("POST", "/matrix/rooms", "matrix", {"name": "Support", "topic": "t", "invite_users": ["@ann:example.com"]},
     {"name": "Support", "invite_users": ["ann"]}, "invite_users.0",
     ("create_room", ("Support",), {"topic": "t", "invite_users": ["@ann:example.com"]})),
    ("POST", "/zoom/meetings", "zoom", {"topic": "Demo", "duration": 30, "timezone": "Europe/Berlin"},
     {"topic": "Demo", "start_time": "tomorrow"}, "start_time",
     ("create_meeting", ("Demo",), {"duration": 30, "timezone": "Europe/Berlin"})),
]  # fmt: skip
IDS = [f"{method} {path}" for method, path, *_ in ROUTES]


async def send(api: Harness, method: str, path: str, payload: Any) -> tuple[int, Any]:  # noqa: F811
    url = "/api/integrations" + path
    if method == "GET":
        response, content = await api.request("GET", url + payload)
    else:
        response, content = await api.request(method, url, body=payload)
    return response.code, json.loads(content)


def install(api: Harness, key: str) -> FakeClient:  # noqa: F811
    fake = FakeClient(key)
    setattr(api.pbx.integrations, key, fake)
    return fake


def test_every_integration_route_is_covered() -> None:
    documented = {(op.method, op.path) for op in OPERATIONS if op.path.startswith("/api/integrations/")}
    assert documented == {(method, "/api/integrations" + path) for method, path, *_ in ROUTES}


@pytest.mark.parametrize("route", ROUTES, ids=IDS)
@pytest_twisted.ensureDeferred
async def test_success(api: Harness, route: tuple) -> None:  # noqa: F811
    method, path, key, good, _bad, _field, expected = route
    fake = install(api, key)
    status, body = await send(api, method, path, good)
    assert status == (200 if method == "GET" else 201), body
    assert body == {"method": expected[0], "ok": True}
    assert fake.calls == [expected]


@pytest.mark.parametrize("route", ROUTES, ids=IDS)
@pytest_twisted.ensureDeferred
async def test_disabled_is_503(api: Harness, route: tuple) -> None:  # noqa: F811
    method, path, key, good, *_ = route
    status, body = await send(api, method, path, good)
    assert status == 503
    assert body == {"error": f"{NAMES[key]} integration not enabled"}


@pytest.mark.parametrize("route", ROUTES, ids=IDS)
@pytest_twisted.ensureDeferred
async def test_bad_input_is_400_naming_the_field(api: Harness, route: tuple) -> None:  # noqa: F811
    method, path, key, _good, bad, field, _expected = route
    fake = install(api, key)
    status, body = await send(api, method, path, bad)
    assert status == 400, body
    assert body["field"] == field, body
    assert fake.calls == []


@pytest.mark.parametrize("route", ROUTES, ids=IDS)
@pytest_twisted.ensureDeferred
async def test_upstream_error_is_502(api: Harness, route: tuple) -> None:  # noqa: F811
    method, path, key, good, *_ = route
    install(api, key).mode = "upstream"
    status, body = await send(api, method, path, good)
    assert status == 502
    assert body == {"error": f"{NAMES[key]} answered 500 to POST /x: internal"}


@pytest.mark.parametrize("route", ROUTES, ids=IDS)
@pytest_twisted.ensureDeferred
async def test_timeout_is_504(api: Harness, route: tuple) -> None:  # noqa: F811
    method, path, key, good, *_ = route
    install(api, key).mode = "timeout"
    status, body = await send(api, method, path, good)
    assert status == 504
    assert body == {"error": f"{NAMES[key]} did not answer POST /x within 5s"}


@pytest_twisted.ensureDeferred
async def test_a_value_the_client_refuses_is_400_naming_the_field(api: Harness) -> None:  # noqa: F811
    install(api, "jitsi").mode = "value"
    status, body = await send(api, "POST", "/jitsi/meetings", {"duration": 5})
    assert status == 400
    assert body == {"error": "duration: expected a positive number of minutes", "field": "duration"}


@pytest_twisted.ensureDeferred
async def test_search_needs_a_phone_and_no_other_parameter(api: Harness) -> None:  # noqa: F811
    install(api, "espocrm")
    assert await send(api, "GET", "/espocrm/contacts/search", "") == (
        400, {"error": "phone: required (?phone=N)", "field": "phone"})
    status, body = await send(api, "GET", "/espocrm/contacts/search", "?phone=1&name=x")
    assert status == 400 and body["field"] == "name"


@pytest_twisted.ensureDeferred
async def test_notifications_need_a_room_when_none_is_configured(api: Harness) -> None:  # noqa: F811
    fake = install(api, "matrix")
    fake.config.notification_room = None
    status, body = await send(api, "POST", "/matrix/notifications", {"message": "hi"})
    assert status == 400 and body["field"] == "room_id"
    status, _ = await send(api, "POST", "/matrix/notifications", {"message": "hi", "room_id": "!r:example.com"})
    assert status == 201
    assert fake.calls == [("notice", ("!r:example.com", "hi"), {})]


# ---------------------------------------------------------------------------
# real clients, from the configuration


class ConfiguredHarness(Harness):
    """The API harness with an integrations block added to its configuration."""

    def __init__(self, tmp_path: Path, integrations: str) -> None:
        super().__init__(tmp_path)
        text = CONFIG.format(tokens=json.dumps([TOKEN]), cors="[]", db=str(self.db_path)) + integrations
        self.pbx = PBXService(parse_config(text, environ={}), reactor)
        self.net = Network(self.pbx.core)


@pytest_twisted.ensureDeferred
async def test_enabled_but_not_configured_is_503_naming_the_key(tmp_path: Path) -> None:
    harness = ConfiguredHarness(tmp_path, "integrations:\n  espocrm: {enabled: true}\n  zoom: {enabled: true}\n")
    await harness.start()
    try:
        status, body = await send(harness, "GET", "/espocrm/contacts/search", "?phone=1234")
        assert status == 503
        assert body == {"error": "EspoCRM integration is enabled but not configured: integrations.espocrm.api_key "
                                 "missing"}
        status, body = await send(harness, "POST", "/zoom/meetings", {"topic": "x"})
        assert status == 503
        assert body["error"].startswith("Zoom integration is enabled but not configured: integrations.zoom.account_id")
    finally:
        await harness.stop()


class FakeEspoCRM(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.mode = "ok"
        self.seen: list[tuple[str, list[tuple[str, str]], str | None]] = []

    def render(self, request: Any) -> Any:
        uri = urlsplit(request.uri.decode())
        self.seen.append((uri.path, parse_qsl(uri.query), (request.getHeader(b"x-api-key") or b"").decode()))
        request.setHeader(b"content-type", b"application/json")
        if self.mode == "down":
            request.setResponseCode(500)
            return b'{"message": "database gone"}'
        if self.mode == "slow":
            return NOT_DONE_YET
        return json.dumps({"total": 1, "list": [{"id": "c-42", "name": "Carol Customer"}]}).encode()


@pytest_twisted.ensureDeferred
async def test_espocrm_search_end_to_end(tmp_path: Path) -> None:
    crm = FakeEspoCRM()
    site = Site(crm)
    site.log = lambda request: None
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
    harness = ConfiguredHarness(tmp_path, f"""
integrations:
  timeout: 0.5
  espocrm: {{enabled: true, api_url: "http://127.0.0.1:{port.getHost().port}/api/v1", api_key: key-0123456789}}
""")
    await harness.start()
    try:
        status, body = await send(harness, "GET", "/espocrm/contacts/search", "?phone=%2B4930123456")
        assert status == 200
        assert body["contacts"] == [{"id": "c-42", "name": "Carol Customer"}]
        path, query, key = crm.seen[0]
        assert path == "/api/v1/Contact" and key == "key-0123456789"
        assert ("where[0][attribute]", "phoneNumber") in query

        crm.mode = "down"
        status, body = await send(harness, "GET", "/espocrm/contacts/search", "?phone=%2B4930123456")
        assert status == 502 and "EspoCRM" in body["error"] and "key-0123456789" not in body["error"]

        crm.mode = "slow"
        status, body = await send(harness, "GET", "/espocrm/contacts/search", "?phone=%2B4930123456")
        assert status == 504
        assert body == {"error": "EspoCRM did not answer GET /api/v1/Contact within 0.5s"}
    finally:
        await harness.stop()
        await port.stopListening()
