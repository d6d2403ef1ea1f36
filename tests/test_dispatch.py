"""pbx.integrations.dispatch and .service: what events do, and how the clients are built.

The PBX is reduced to what the dispatch uses (events, b2bua.calls,
directory, config, db); the outbox is real (SQLite in tmp_path); the
EspoCRM and Matrix clients are fakes that record their calls.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.logger import globalLogPublisher

from pbx.config import parse_config
from pbx.core.events import EventBus
from pbx.integrations.dispatch import Dispatch, missed_call_text
from pbx.integrations.http import JSONClient, UpstreamTimeout
from pbx.integrations.service import Integrations, make_integrations
from pbx.store.db import Database

T0 = 1_717_236_000.0  # 2024-06-01 10:00:00 UTC

ENABLED = """
database: {{path: "{db}"}}
integrations:
  timeout: 2.5
  espocrm: {{enabled: true, api_key: espo-key-1234, auto_create_contacts: {create}, auto_log_calls: true}}
  matrix:
    enabled: true
    homeserver_url: http://127.0.0.1:8008
    access_token: matrix-token-5678
    notification_room: "!notify:example.com"
    voicemail_room: {voicemail}
"""


class FakeEspo:
    def __init__(self, contacts: dict[str, dict] | None = None) -> None:
        self.contacts = contacts or {}
        self.searches: list[str] = []
        self.created: list[dict] = []
        self.logged: list[tuple] = []
        self.block: Deferred[None] | None = None

    async def search_contacts(self, phone: str) -> dict:
        self.searches.append(phone)
        if self.block is not None:
            await self.block
        found = [self.contacts[phone]] if phone in self.contacts else []
        return {"phone": phone, "total": len(found), "contacts": found}

    async def create_contact(self, name: str, phone: str | None = None, **kw: Any) -> dict:
        contact = {"id": f"new-{phone}", "name": name, "phoneNumber": phone}
        self.created.append(contact)
        return contact

    async def log_call(self, contact_id: str | None, direction: str, duration: int, status: str, **kw: Any) -> dict:
        self.logged.append((contact_id, direction, duration, status, kw))
        return {"id": "call-1"}


class FakeMatrix:
    def __init__(self, fail_times: int = 0) -> None:
        self.notices: list[tuple] = []
        self.fail_times = fail_times

    async def notice(self, room: str | None, text: str, txn_id: str | None = None) -> dict:
        self.notices.append((room, text, txn_id))
        if self.fail_times:
            self.fail_times -= 1
            raise UpstreamTimeout("matrix", "no answer")
        return {"event_id": "$e", "room_id": room, "txn_id": txn_id}


class Env:
    """A pared-down PBX with its integrations, on a task.Clock."""

    def __init__(self, tmp_path: Path, *, create: bool = False, voicemail_room: str | None = None) -> None:
        self.db = Database(str(tmp_path / "pbx.db"))
        text = ENABLED.format(db=tmp_path / "pbx.db", create=str(create).lower(),
                              voicemail=json.dumps(voicemail_room))
        self.clock = Clock()
        self.clock.advance(T0)
        directory = {"1001": SimpleNamespace(name="Alice"), "1002": SimpleNamespace(name="Bob")}
        self.pbx = SimpleNamespace(
            config=parse_config(text, environ={}), events=EventBus(), db=self.db,
            b2bua=SimpleNamespace(calls={}), directory=Directory(directory),
        )
        self.integrations: Integrations = make_integrations(self.pbx, self.clock)
        self.espo = FakeEspo({"+4930123456": {"id": "c-42", "name": "Carol Customer"}})
        self.matrix = FakeMatrix()
        self.integrations.espocrm = self.espo
        self.integrations.matrix = self.matrix
        self.dispatch: Dispatch = self.integrations.dispatch
        self.outbox = self.integrations.outbox

    async def start(self) -> None:
        await self.db.open()
        self.integrations.startService()

    async def stop(self) -> None:
        await self.integrations.stopService()
        self.db.close()

    def incoming(self, caller: str, callee: str = "1002", *, name: str = "", call_id: str = "call-1",
                 rang: bool = False) -> SimpleNamespace:
        call = SimpleNamespace(id=call_id, ringing_sent=rang, forks=[])
        self.pbx.b2bua.calls[call_id] = call
        self.pbx.events.emit("call.incoming", **event(call_id, caller, callee, name))
        return call

    def ended(self, call_id: str, caller: str, callee: str, disposition: str, cause: str, *,
              billable: int = 0, answered_by: str | None = None) -> None:
        self.pbx.b2bua.calls.pop(call_id, None)
        fields = event(call_id, caller, callee, "", disposition=disposition, hangup_cause=cause,
                       billable=billable, duration=billable + 5, end="2024-06-01T10:01:00.000Z",
                       answered_by=answered_by)
        self.pbx.events.emit("call.ended", **fields, media={})

    async def tick(self, seconds: float = 0.0) -> None:
        """Let the clock run ``seconds`` (timers, the outbox's TimerService), then the database threads."""
        self.clock.advance(seconds)
        await settle()
        self.clock.advance(0)
        await settle()

    async def items(self) -> list[tuple[str, dict, int]]:
        rows = await self.db.run_query("SELECT kind, payload, attempts FROM outbox ORDER BY id")
        return [(kind, json.loads(payload), attempts) for kind, payload, attempts in rows]


class Directory:
    def __init__(self, entries: dict[str, Any]) -> None:
        self.entries = entries

    def get(self, number: str) -> Any:
        return self.entries.get(number)

    def __contains__(self, number: object) -> bool:
        return number in self.entries


def event(call_id: str, caller: str, callee: str, name: str, **extra: Any) -> dict[str, Any]:
    fields = {"call_id": call_id, "sip_call_id": "sip-" + call_id, "caller": caller, "caller_name": name,
              "callee": callee, "answered_by": None, "start": "2024-06-01T10:00:00.000Z", "answer": None,
              "end": None, "duration": None, "billable": None, "disposition": None, "hangup_cause": None,
              "hangup_side": None}
    fields.update(extra)
    return fields


async def settle() -> None:
    for _ in range(4):
        await deferLater(reactor, 0.01, lambda: None)


@pytest_twisted.async_yield_fixture
async def env(tmp_path: Path):
    environment = Env(tmp_path)
    await environment.start()
    yield environment
    await environment.stop()


# ---------------------------------------------------------------------------
# screen pop


@pytest_twisted.ensureDeferred
async def test_incoming_call_lookup_runs_after_the_subscriber_and_lands_on_the_call(env: Env) -> None:
    env.espo.block = Deferred()
    call = env.incoming("+4930123456", name="Carol")
    assert env.espo.searches == [], "the subscriber only schedules"
    await env.tick()
    assert env.espo.searches == ["+4930123456"]
    assert not hasattr(call, "screen_pop"), "the lookup is still waiting for the CRM"
    env.espo.block.callback(None)
    await settle()
    assert call.screen_pop == {"source": "espocrm", "phone": "+4930123456", "found": True, "created": False,
                               "contact": {"id": "c-42", "name": "Carol Customer"}}


@pytest_twisted.ensureDeferred
async def test_lookups_are_cached_briefly(env: Env) -> None:
    env.incoming("+4930123456", call_id="a")
    env.incoming("+4930123456", call_id="b")
    await env.tick()
    assert env.espo.searches == ["+4930123456"], "two calls at once share one lookup"
    assert env.pbx.b2bua.calls["b"].screen_pop["found"]
    env.incoming("+4930123456", call_id="c")
    await env.tick(10)
    assert len(env.espo.searches) == 1
    await env.tick(env.dispatch.cache_ttl)
    env.incoming("+4930123456", call_id="d")
    await env.tick()
    assert len(env.espo.searches) == 2


@pytest_twisted.ensureDeferred
async def test_an_unknown_caller_becomes_a_contact_when_configured(tmp_path: Path) -> None:
    env = Env(tmp_path, create=True)
    await env.start()
    try:
        call = env.incoming("+4940999", name="Dave Doe")
        local = env.incoming("1001", call_id="internal")
        await env.tick()
        assert env.espo.created == [{"id": "new-+4940999", "name": "Dave Doe", "phoneNumber": "+4940999"}]
        assert call.screen_pop["created"] and call.screen_pop["contact"]["id"] == "new-+4940999"
        assert local.screen_pop == {"source": "espocrm", "phone": "1001", "found": False, "created": False,
                                    "contact": None}, "local extensions are never created as contacts"
    finally:
        await env.stop()


@pytest_twisted.ensureDeferred
async def test_a_failing_lookup_is_logged_and_the_call_goes_on(env: Env) -> None:
    async def broken(phone: str) -> dict:
        raise UpstreamTimeout("EspoCRM", "EspoCRM did not answer GET /api/v1/Contact within 2.5s")

    env.espo.search_contacts = broken
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        call = env.incoming("+4930123456")
        await env.tick()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert not hasattr(call, "screen_pop")
    assert any("lookup for call" in str(e.get("log_format")) for e in events)


# ---------------------------------------------------------------------------
# call.ended: CRM call log and missed-call notices, through the outbox


@pytest_twisted.ensureDeferred
async def test_an_ended_call_is_logged_in_the_crm_through_the_outbox(env: Env) -> None:
    env.incoming("+4930123456", call_id="x")
    await env.tick()
    env.ended("x", "+4930123456", "1002", "answered", "normal", billable=42, answered_by="1002")
    assert env.espo.logged == [], "only enqueued in the subscriber"
    await settle()
    (kind, payload, _), = await env.items()
    assert kind == "espocrm.log_call" and payload["contact_id"] == "c-42" and payload["status"] == "Held"
    await env.tick(1.0)
    assert env.espo.logged == [("c-42", "Inbound", 42, "Held", {
        "description": "PBX call +4930123456 -> 1002: answered (normal), answered by 1002",
        "date_start": "2024-06-01T10:00:00.000Z", "date_end": "2024-06-01T10:01:00.000Z",
        "phone": "+4930123456"})]
    assert await env.items() == []


@pytest_twisted.ensureDeferred
async def test_an_outgoing_call_to_an_outside_number_is_outbound(env: Env) -> None:
    env.ended("y", "1001", "+4930123456", "busy", "busy")
    await settle()
    await env.tick(1.0)
    (contact_id, direction, duration, status, kw), = env.espo.logged
    assert (contact_id, direction, duration, status) == ("c-42", "Outbound", 0, "Not Held")
    assert kw["phone"] == "+4930123456"


@pytest_twisted.ensureDeferred
async def test_a_missed_call_posts_a_notice_and_retries_with_the_same_txn_id(env: Env) -> None:
    env.matrix.fail_times = 1
    env.incoming("1001", "1002", call_id="m", name="Alice")
    env.ended("m", "1001", "1002", "missed", "no-answer")
    await settle()
    kinds = [kind for kind, _, _ in await env.items()]
    assert sorted(kinds) == ["espocrm.log_call", "matrix.notice"]
    await env.tick(1.0)
    assert len(env.matrix.notices) == 1
    await env.tick(5.0)  # the outbox's first retry is 5 s later
    first, second = env.matrix.notices
    assert first == second
    room, text, txn_id = first
    assert room == "!notify:example.com" and txn_id.startswith("pbx-")
    assert text == "Missed call from Alice (1001) to Bob (1002) at 2024-06-01 10:00 UTC"
    assert await env.items() == []


@pytest_twisted.ensureDeferred
async def test_a_call_cancelled_after_ringing_is_missed_before_ringing_is_not(env: Env) -> None:
    env.incoming("1001", call_id="rang", rang=True)
    env.ended("rang", "1001", "1002", "cancelled", "caller-cancel")
    env.incoming("1001", call_id="quick", rang=False)
    env.ended("quick", "1001", "1002", "cancelled", "caller-cancel")
    env.ended("busy", "1001", "1002", "busy", "busy")
    env.ended("answered", "1001", "1002", "answered", "normal")
    await settle()
    notices = [payload for kind, payload, _ in await env.items() if kind == "matrix.notice"]
    assert [n["call_id"] for n in notices] == ["rang"]


@pytest_twisted.ensureDeferred
async def test_a_new_voicemail_posts_to_the_voicemail_room(tmp_path: Path) -> None:
    for configured, expected in (("!vm:example.com", "!vm:example.com"), (None, "!notify:example.com")):
        (tmp_path / str(configured)).mkdir()
        env = Env(tmp_path / str(configured), voicemail_room=configured)
        await env.start()
        try:
            env.pbx.events.emit("voicemail.new", caller="+4930123456", caller_name="Carol", mailbox="1002",
                                duration=17)
            await settle()
            await env.tick(1.0)
            (room, text, _), = env.matrix.notices
            assert room == expected
            assert text == "New voicemail for 1002 from Carol (+4930123456), 17 s"
        finally:
            await env.stop()


def test_missed_call_text_without_names() -> None:
    assert missed_call_text({"caller": "5551234", "callee": "1002", "start": None}) == \
        "Missed call from 5551234 to 1002 at ?"


# ---------------------------------------------------------------------------
# the service: building clients, reporting what is missing


def config_pbx(text: str, tmp_path: Path) -> SimpleNamespace:
    return SimpleNamespace(config=parse_config(f'database: {{path: "{tmp_path / "pbx.db"}"}}\n' + text, environ={}),
                           events=EventBus(), db=Database(str(tmp_path / "pbx.db")),
                           b2bua=SimpleNamespace(calls={}), directory=Directory({}))


def test_disabled_integrations_are_none(tmp_path: Path) -> None:
    integrations = make_integrations(config_pbx("", tmp_path), Clock())
    assert (integrations.jitsi, integrations.matrix, integrations.espocrm, integrations.zoom) == (None,) * 4
    assert integrations.unavailable == {}


def test_enabled_integrations_are_built_from_their_sections(tmp_path: Path) -> None:
    text = """
integrations:
  timeout: 2.5
  jitsi: {enabled: true, server_url: "https://meet.example.com", app_id: pbx, app_secret: jitsi-secret}
  matrix: {enabled: true, homeserver_url: "http://127.0.0.1:8008", bot_username: "@pbx:x", bot_password: pw-123456}
  espocrm: {enabled: true, api_url: "http://127.0.0.1:8000/api/v1", api_key: espo-key-1234}
  zoom: {enabled: true, account_id: acc, client_id: cid, client_secret: zoom-secret-99,
         api_base_url: "http://127.0.0.1:9001/v2", oauth_url: "http://127.0.0.1:9001/oauth/token"}
"""
    integrations = make_integrations(config_pbx(text, tmp_path), Clock())
    assert integrations.unavailable == {}
    from pbx.integrations.espocrm import EspoCRMClient
    from pbx.integrations.jitsi import JitsiClient
    from pbx.integrations.matrix import MatrixClient
    from pbx.integrations.zoom import ZoomClient

    assert isinstance(integrations.jitsi, JitsiClient)
    assert isinstance(integrations.matrix, MatrixClient)
    assert isinstance(integrations.espocrm, EspoCRMClient)
    assert isinstance(integrations.zoom, ZoomClient)
    http_clients = [integrations.matrix.client, integrations.espocrm.client, integrations.zoom.api,
                    integrations.zoom.oauth]
    assert all(isinstance(c, JSONClient) and c.timeout == 2.5 for c in http_clients)
    assert [c.base_url for c in http_clients] == [
        "http://127.0.0.1:8008", "http://127.0.0.1:8000/api/v1", "http://127.0.0.1:9001/v2",
        "http://127.0.0.1:9001/oauth/token"]
    assert "pw-123456" in integrations.matrix.client._secrets
    assert "espo-key-1234" in integrations.espocrm.client._secrets
    assert "zoom-secret-99" in integrations.zoom.api._secrets


@pytest.mark.parametrize(("section", "name", "message"), [
    ("espocrm: {enabled: true}", "espocrm",
     "EspoCRM integration is enabled but not configured: integrations.espocrm.api_key missing"),
    ("zoom: {enabled: true, account_id: a, client_id: b}", "zoom",
     "Zoom integration is enabled but not configured: integrations.zoom.client_secret missing"),
    ("matrix: {enabled: true, bot_username: '@pbx:x'}", "matrix",
     "Matrix integration is enabled but not configured: integrations.matrix.bot_password missing "
     "(or set integrations.matrix.access_token)"),
    ("jitsi: {enabled: true, app_id: pbx}", "jitsi",
     "Jitsi integration is enabled but not configured: integrations.jitsi.app_secret missing"),
])  # fmt: skip
def test_a_missing_key_is_reported_at_start_up(tmp_path: Path, section: str, name: str, message: str) -> None:
    integrations = make_integrations(config_pbx(f"integrations:\n  {section}\n", tmp_path), Clock())
    assert getattr(integrations, name) is None
    assert integrations.unavailable[name].message == message
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        integrations.startService()
    finally:
        globalLogPublisher.removeObserver(events.append)
        integrations.stopService()
    assert [e["message"] for e in events if e.get("message") == message] == [message]


def test_the_pbx_service_owns_the_integrations(tmp_path: Path) -> None:
    from pbx.service import PBXService

    pbx = PBXService(parse_config(f'database: {{path: "{tmp_path / "pbx.db"}"}}\n', environ={}), reactor)
    assert isinstance(pbx.integrations, Integrations)
    assert pbx.integrations.parent is pbx
    assert pbx.integrations.outbox.db is pbx.db
