"""The REST API over real HTTP on loopback, against an in-process PBX.

The PBX is a real `PBXService` on the global reactor with its SQLite
database in tmp_path, loaded but without SIP listeners: phones talk to its
SIP core through the in-memory network of tests/fakesip.py, so calls and
registrations are real while no SIP port is bound.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from fakesip import Network
from pbx.api import make_site
from pbx.api.openapi import OPERATIONS
from pbx.config import parse_config
from pbx.core.cdr import CallRecord
from pbx.service import PBXService
from pbx.sip.transport import Peer
from sipclient import authorization, parse, register

TOKEN = "test-token-" + "7" * 24

CONFIG = """
server: {{sip_host: 127.0.0.1, sip_port: 5060, rtp_port_range_start: 46000, rtp_port_range_end: 46398}}
features: {{no_answer_timeout: 30, max_call_duration: 0, rtp_timeout: 0}}
api: {{host: 127.0.0.1, port: 8080, tokens: {tokens}, cors_origins: {cors}}}
database: {{path: "{db}"}}
voicemail: {{storage_path: "{db}-voicemail"}}
groups:
  - {{number: "2000", name: Sales, members: ["1001", "1002"]}}
extensions:
  - {{number: "1001", name: Alice, password: secret1001}}
  - {{number: "1002", name: Bob, password: secret1002}}
"""


class Harness:
    """A loaded PBX, its API on an ephemeral loopback port, and an HTTP client."""

    def __init__(self, tmp_path: Path, tokens: list[str] | None = None, cors: list[str] | None = None) -> None:
        self.db_path = tmp_path / "pbx.db"
        text = CONFIG.format(
            tokens=json.dumps([TOKEN] if tokens is None else tokens),
            cors=json.dumps(cors or []),
            db=str(self.db_path),
        )
        self.pbx = PBXService(parse_config(text, environ={}), reactor)
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = treq.client.HTTPClient(Agent(reactor, pool=self.pool))
        self.net = Network(self.pbx.core)
        self.port: Any = None
        self.base = ""

    async def start(self) -> None:
        await ensureDeferred(self.pbx._load())
        self.site = make_site(self.pbx, reactor)
        self.port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(self.site)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"

    async def stop(self) -> None:
        await self.port.stopListening()
        await self.pool.closeCachedConnections()
        self.pbx.b2bua.stop()
        await self.pbx.relay.close()
        self.pbx.transactions.stop()
        await settle()  # let the last call records reach the database
        self.pbx.db.close()

    async def request(self, method: str, path: str, *, token: str | None = TOKEN, body: Any = None,
                      data: bytes | None = None, content_type: str | None = None,
                      headers: dict[str, str] | None = None) -> tuple[Any, bytes]:
        sent = {k.encode(): [v.encode()] for k, v in (headers or {}).items()}
        if token is not None:
            sent[b"authorization"] = [f"Bearer {token}".encode()]
        if body is not None:
            data = json.dumps(body).encode()
            content_type = content_type or "application/json"
        if content_type is not None:
            sent[b"content-type"] = [content_type.encode()]
        response = await self.http.request(method, self.base + path, headers=sent, data=data)
        return response, await response.content()

    async def json(self, method: str, path: str, expect: int, **kw: Any) -> Any:
        response, content = await self.request(method, path, **kw)
        assert response.code == expect, (response.code, content)
        if expect == 204:
            assert content == b""
            return None
        assert header(response, "content-type").startswith("application/json")
        return json.loads(content)

    # -- SIP through the in-memory network ------------------------------------

    def phone(self, user: str, port: int, password: str):
        return self.net.phone(user, "127.0.0.2", port, password)

    def register(self, user: str, password: str, port: int) -> int:
        """REGISTER with digest; the final status."""
        out: list[bytes] = []
        peer = Peer("UDP", "127.0.0.2", port, False, lambda d, a: out.append(d))
        call_id = f"reg-{user}-{uuid.uuid4().hex[:6]}"
        self.pbx.core.datagram_received(register(user, host="127.0.0.2", port=port, call_id=call_id), peer)
        challenge = parse(out[-1])
        if challenge.status != 401:
            return challenge.status
        auth = authorization(challenge, user, password)
        data = register(user, host="127.0.0.2", port=port, call_id=call_id, cseq=2, authorization=auth)
        self.pbx.core.datagram_received(data, peer)
        return parse(out[-1]).status


def header(response: Any, name: str) -> str:
    values = response.headers.getRawHeaders(name.encode())
    return values[0].decode() if values else ""


async def settle(seconds: float = 0.05) -> None:
    await deferLater(reactor, seconds, lambda: None)


def assert_error(content: bytes, field: str | None = None) -> dict:
    body = json.loads(content)
    assert isinstance(body.get("error"), str) and body["error"]
    assert set(body) <= {"error", "field", "request_id"}
    if field is not None:
        assert body.get("field") == field, body
    return body


@pytest_twisted.async_yield_fixture
async def api(tmp_path: Path):
    harness = Harness(tmp_path)
    await harness.start()
    yield harness
    await harness.stop()


def concrete(path: str) -> str:
    return path.replace("{number}", "1001").replace("{call_id}", "nope")


# ---------------------------------------------------------------------------
# auth


@pytest_twisted.ensureDeferred
async def test_health_is_open_and_reports_version_and_uptime(api: Harness) -> None:
    body = await api.json("GET", "/api/health", 200, token=None)
    assert body["status"] == "ok"
    assert isinstance(body["version"], str) and body["version"]
    assert body["uptime"] >= 0


@pytest_twisted.ensureDeferred
async def test_every_other_route_needs_the_token(api: Harness) -> None:
    for op in OPERATIONS:
        if op.public:
            continue
        for token in (None, "wrong-token", TOKEN + "x", ""):
            response, content = await api.request(op.method, concrete(op.path), token=token)
            assert response.code == 401, (op.method, op.path, token, content)
            assert_error(content)
            assert header(response, "www-authenticate").startswith("Bearer")
    response, content = await api.request("GET", "/api/status", token=None, headers={"Authorization": f"Basic {TOKEN}"})
    assert response.code == 401
    assert header(response, "x-request-id")


@pytest_twisted.ensureDeferred
async def test_tokens_and_passwords_never_reach_the_log(api: Harness) -> None:
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        await api.json("GET", "/api/status", 200)
        await api.json("POST", "/api/extensions", 201, body={"number": "3001", "password": "hunter2hunter2"})
        await api.json("PATCH", "/api/extensions/3001", 200, body={"password": "other-password"})
        await api.request("GET", "/api/status", token="a-wrong-token-value")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert events, "the API logs its requests"
    text = repr(events)
    for secret in (TOKEN, "hunter2hunter2", "other-password", "a-wrong-token-value"):
        assert secret not in text


@pytest_twisted.ensureDeferred
async def test_without_tokens_on_loopback_requests_need_none(tmp_path: Path) -> None:
    harness = Harness(tmp_path, tokens=[])
    await harness.start()
    try:
        body = await harness.json("GET", "/api/status", 200, token=None)
        assert body["extensions"]["total"] == 2
    finally:
        await harness.stop()


# ---------------------------------------------------------------------------
# status, registrations, ports


@pytest_twisted.ensureDeferred
async def test_status_counts_extensions_registrations_and_calls(api: Harness) -> None:
    assert api.register("1001", "secret1001", 5071) == 200
    body = await api.json("GET", "/api/status", 200)
    assert body["ready"] is True
    assert body["extensions"] == {"total": 2, "registered": 1}
    assert body["registrations"] == 1
    assert body["calls"] == {"active": 0, "ringing": 0, "answered": 0}
    assert "packets_relayed" in body["media"] and "received" in body["sip"]


@pytest_twisted.ensureDeferred
async def test_registrations_list_contact_expiry_user_agent_and_source(api: Harness) -> None:
    assert api.register("1002", "secret1002", 5072) == 200
    body = await api.json("GET", "/api/registrations", 200)
    assert body["total"] == 1
    [item] = body["items"]
    assert item["extension"] == "1002"
    assert item["contact"] == "sip:1002@127.0.0.2:5072"
    assert 3590 <= item["expires"] <= 3600 and item["expires_at"].endswith("Z")
    assert item["user_agent"] == "test-ua"
    assert item["source"] == "127.0.0.2:5072" and item["transport"] == "UDP"
    only = await api.json("GET", "/api/registrations?extension=1001", 200)
    assert only == {"items": [], "total": 0}
    response, content = await api.request("GET", "/api/registrations?aor=1001")
    assert response.code == 400 and assert_error(content, "aor")


@pytest_twisted.ensureDeferred
async def test_ports_is_the_port_plan(api: Harness) -> None:
    body = await api.json("GET", "/api/ports", 200)
    roles = {(listener["role"], listener["protocol"]): listener for listener in body["listeners"]}
    assert roles[("sip", "udp")]["port"] == 5060
    assert roles[("rtp", "udp")]["port"] == 46000 and roles[("rtp", "udp")]["port_end"] == 46398
    assert roles[("api", "tcp")]["address"] == "127.0.0.1:8080/tcp"
    assert body["conflicts"] == []


# ---------------------------------------------------------------------------
# extensions


@pytest_twisted.ensureDeferred
async def test_extension_crud_never_returns_a_password(api: Harness) -> None:
    response, content = await api.request(
        "POST", "/api/extensions",
        body={"number": "3001", "name": "Carol", "password": "carol-secret", "email": "carol@example.org",
              "voicemail_pin": "4321"},
    )  # fmt: skip
    assert response.code == 201, content
    assert header(response, "location") == "/api/extensions/3001"
    created = json.loads(content)
    assert created["number"] == "3001" and created["name"] == "Carol" and created["source"] == "api"
    assert created["voicemail_pin_set"] is True and created["registered"] is False
    for secret in (b"carol-secret", b"4321", b"ha1", b"pbkdf2"):
        assert secret not in content
    record = api.pbx.directory.get("3001")
    assert record is not None and record.source == "api"

    one = await api.json("GET", "/api/extensions/3001", 200)
    assert one == created
    listing = await api.json("GET", "/api/extensions", 200)
    assert [e["number"] for e in listing["items"]] == ["1001", "1002", "3001"]
    assert listing["total"] == 3
    assert {e["source"] for e in listing["items"][:2]} == {"config"}

    patched = await api.json("PATCH", "/api/extensions/3001", 200, body={"name": "Carol C.", "email": None})
    assert patched["name"] == "Carol C." and patched["email"] is None and patched["voicemail_pin_set"] is True
    old_ha1 = api.pbx.directory.get("3001").ha1_md5
    await api.json("PATCH", "/api/extensions/3001", 200, body={"password": "new-carol-secret"})
    assert api.pbx.directory.get("3001").ha1_md5 != old_ha1
    assert api.register("3001", "carol-secret", 5073) == 403
    assert api.register("3001", "new-carol-secret", 5073) == 200

    replaced = await api.json("PUT", "/api/extensions/3001", 200, body={"number": "3001", "name": "C"})
    assert replaced["name"] == "C" and replaced["email"] is None and replaced["voicemail_pin_set"] is False
    assert api.pbx.directory.get("3001").ha1_md5 != old_ha1, "PUT without a password keeps it"

    await api.json("DELETE", "/api/extensions/3001", 204)
    assert "3001" not in api.pbx.directory
    response, content = await api.request("GET", "/api/extensions/3001")
    assert response.code == 404 and assert_error(content)
    for method, body in (("DELETE", None), ("PATCH", {"name": "x"}), ("PUT", {"name": "x"})):
        response, content = await api.request(method, "/api/extensions/3001", body=body)
        assert response.code == 404, method
        assert_error(content)


@pytest_twisted.ensureDeferred
async def test_passwords_are_stored_only_as_hashes(api: Harness) -> None:
    await api.json("POST", "/api/extensions", 201, body={"number": "3002", "password": "plain-text-pw", "voicemail_pin": "98765"})
    await settle()
    raw = api.db_path.read_bytes()
    for wal in api.db_path.parent.glob("pbx.db-*"):
        raw += wal.read_bytes()
    assert b"plain-text-pw" not in raw and b"98765" not in raw
    with sqlite3.connect(api.db_path) as db:
        row = db.execute("SELECT realm, ha1_md5, source FROM extensions WHERE number = '3002'").fetchone()
    assert row[0] == "pbx" and len(row[1]) == 32 and row[2] == "api"


@pytest_twisted.ensureDeferred
async def test_duplicates_and_other_targets_are_409(api: Harness) -> None:
    await api.json("POST", "/api/extensions", 201, body={"number": "3003", "password": "password-3003"})
    for number, text in (("3003", "already exists"), ("1001", "already exists"), ("2000", "ring group")):
        response, content = await api.request("POST", "/api/extensions", body={"number": number, "password": "abcdefgh"})
        assert response.code == 409, number
        assert text in assert_error(content, "number")["error"]


@pytest_twisted.ensureDeferred
async def test_extensions_from_the_config_file_are_read_only(api: Harness) -> None:
    for method, body in (("PUT", {"name": "X"}), ("PATCH", {"name": "X"}), ("DELETE", None)):
        response, content = await api.request(method, "/api/extensions/1001", body=body)
        assert response.code == 403, method
        assert "configuration file" in assert_error(content, "number")["error"]
    assert api.pbx.directory.get("1001").name == "Alice"


@pytest_twisted.ensureDeferred
async def test_a_new_extension_registers_at_once_and_deleting_it_drops_its_bindings(api: Harness) -> None:
    assert api.register("3004", "password-3004", 5074) == 403, "unknown before it is created"
    await api.json("POST", "/api/extensions", 201, body={"number": "3004", "password": "password-3004"})
    assert api.register("3004", "password-3004", 5074) == 200
    one = await api.json("GET", "/api/extensions/3004", 200)
    assert one["registered"] is True and one["contacts"] == 1
    events: list[dict] = []
    api.pbx.events.subscribe("registration.changed", lambda name, fields: events.append(fields))

    await api.json("DELETE", "/api/extensions/3004", 204)
    assert api.pbx.location.lookup("3004") == []
    assert events == [{"aor": "3004", "contacts": []}]
    body = await api.json("GET", "/api/registrations", 200)
    assert all(item["extension"] != "3004" for item in body["items"])
    assert api.register("3004", "password-3004", 5074) == 403


@pytest_twisted.ensureDeferred
async def test_deleting_an_extension_keeps_its_call_in_progress(api: Harness) -> None:
    await api.json("POST", "/api/extensions", 201, body={"number": "3005", "password": "password-3005"})
    callee = api.phone("3005", 5075, "password-3005")
    assert api.register("3005", "password-3005", 5075) == 200
    callee.answer = "200"
    caller = api.phone("1001", 5076, "secret1001")
    invite = caller.call("3005")
    ok = caller.responses("INVITE")[-1]
    assert ok.status == 200
    caller.ack_failure(invite, ok)
    [call_id] = list(api.pbx.b2bua.calls)

    await api.json("DELETE", "/api/extensions/3005", 204)
    assert call_id in api.pbx.b2bua.calls and api.pbx.b2bua.calls[call_id].state == "answered"
    await api.json("DELETE", f"/api/calls/{call_id}", 204)


@pytest_twisted.ensureDeferred
async def test_bad_extension_bodies_name_the_field(api: Harness) -> None:
    cases = [
        ({"password": "abcdefgh"}, "number"),
        ({"number": "30a1", "password": "abcdefgh"}, "number"),
        ({"number": "3001\n", "password": "abcdefgh"}, "number"),
        ({"number": 3001, "password": "abcdefgh"}, "number"),
        ({"number": "3001"}, "password"),
        ({"number": "3001", "password": "short"}, "password"),
        ({"number": "3001", "password": "abcdefgh", "email": "not-an-address"}, "email"),
        ({"number": "3001", "password": "abcdefgh", "voicemail_pin": "12"}, "voicemail_pin"),
        ({"number": "3001", "password": "abcdefgh", "name": "a\nb"}, "name"),
        ({"number": "3001", "password": "abcdefgh", "ha1_md5": "x"}, "ha1_md5"),
    ]
    for body, field in cases:
        response, content = await api.request("POST", "/api/extensions", body=body)
        assert response.code == 400, (body, content)
        assert_error(content, field)
    response, content = await api.request("POST", "/api/extensions", body=["number"])
    assert response.code == 400 and "object" in assert_error(content)["error"]
    response, content = await api.request("PUT", "/api/extensions/1002", body={"number": "1003", "name": "x"})
    assert response.code == 400 and assert_error(content, "number")
    response, content = await api.request("PUT", "/api/extensions/1002", body={})
    assert response.code == 400 and assert_error(content, "name")


@pytest_twisted.ensureDeferred
async def test_invalid_json_wrong_type_empty_and_oversized_bodies(api: Harness) -> None:
    response, content = await api.request("POST", "/api/extensions", data=b'{"number": ', content_type="application/json")
    assert response.code == 400 and "invalid JSON" in assert_error(content)["error"]
    response, content = await api.request("POST", "/api/extensions", data=b'{"number": NaN}', content_type="application/json")
    assert response.code == 400
    response, content = await api.request("POST", "/api/extensions", data=b"\xff\xfe", content_type="application/json")
    assert response.code == 400 and assert_error(content)
    response, content = await api.request("POST", "/api/extensions", data=b"number=1", content_type="application/x-www-form-urlencoded")
    assert response.code == 415 and assert_error(content)
    response, content = await api.request("PATCH", "/api/extensions/1002", data=b"{}", content_type="text/plain")
    assert response.code == 415
    response, content = await api.request("POST", "/api/extensions", data=b"{}")
    assert response.code == 415, "no Content-Type is not JSON"
    response, content = await api.request("POST", "/api/extensions")
    assert response.code == 400 and "body is required" in assert_error(content)["error"]
    big = json.dumps({"number": "3001", "password": "abcdefgh", "name": "x" * (70 * 1024)}).encode()
    response, content = await api.request("POST", "/api/extensions", data=big, content_type="application/json")
    assert response.code == 413 and assert_error(content)
    assert "3001" not in api.pbx.directory
    # The connection and the server are fine afterwards.
    await api.json("GET", "/api/health", 200)
    response, content = await api.request("POST", "/api/extensions", body={"number": "3001", "password": "abcdefgh"},
                                          content_type="application/json; charset=utf-8")
    assert response.code == 201


# ---------------------------------------------------------------------------
# calls


async def answered_call(api: Harness) -> tuple[Any, Any, str]:
    callee = api.phone("1002", 5082, "secret1002")
    assert api.register("1002", "secret1002", 5082) == 200
    callee.answer = "200"
    caller = api.phone("1001", 5081, "secret1001")
    invite = caller.call("1002")
    ok = caller.responses("INVITE")[-1]
    assert ok.status == 200
    caller.ack_failure(invite, ok)
    [call_id] = list(api.pbx.b2bua.calls)
    return caller, callee, call_id


@pytest_twisted.ensureDeferred
async def test_calls_lists_live_calls_and_hangs_up_both_legs(api: Harness) -> None:
    assert await api.json("GET", "/api/calls", 200) == {"items": [], "total": 0}
    caller, callee, call_id = await answered_call(api)
    body = await api.json("GET", "/api/calls", 200)
    assert body["total"] == 1
    [call] = body["items"]
    assert call["id"] == call_id and call["caller"] == "1001" and call["callee"] == "1002"
    assert call["state"] == "answered" and call["answered_by"] == "1002"
    assert call["start"].endswith("Z") and call["answer"].endswith("Z")
    assert call["packets"] == {"relayed": 0, "lost": 0, "dropped": 0}
    assert call["legs"]["a"]["party"] == "1001" and call["legs"]["b"]["party"] == "1002"
    assert call["legs"]["a"]["media"]["local_port"] in range(46000, 46399)
    assert "codec" in call and call["screen_pop"] is None
    assert await api.json("GET", f"/api/calls/{call_id}", 200) == call
    # What the CRM lookup (pbx/integrations/dispatch.py) leaves on the call is shown as it is.
    pop = {"source": "espocrm", "phone": "1001", "found": True, "created": False, "contact": {"id": "c1"}}
    api.pbx.b2bua.calls[call_id].screen_pop = pop
    assert (await api.json("GET", f"/api/calls/{call_id}", 200))["screen_pop"] == pop
    status = await api.json("GET", "/api/status", 200)
    assert status["calls"] == {"active": 1, "ringing": 0, "answered": 1}

    await api.json("DELETE", f"/api/calls/{call_id}", 204)
    assert api.pbx.b2bua.calls == {}
    assert caller.requests("BYE") and callee.requests("BYE"), "both legs get a BYE"
    response, content = await api.request("DELETE", f"/api/calls/{call_id}")
    assert response.code == 404 and assert_error(content)
    response, content = await api.request("GET", f"/api/calls/{call_id}")
    assert response.code == 404

    for _ in range(100):  # the record is written behind the hang-up
        items = (await api.json("GET", "/api/cdr", 200))["items"]
        if items:
            break
        await settle(0.02)
    [record] = items
    assert record["call_id"] == call_id and record["disposition"] == "answered"
    assert record["hangup_cause"] == "admin" and record["hangup_side"] == "pbx"


@pytest_twisted.ensureDeferred
async def test_click_to_dial_is_not_implemented_yet(api: Harness) -> None:
    response, content = await api.request("POST", "/api/calls", body={"from": "1001", "to": "1002"})
    assert response.code == 501
    assert json.loads(content) == {"error": "click-to-dial not implemented yet"}
    response, content = await api.request("POST", "/api/calls", body={"from": "1001"})
    assert response.code == 400 and assert_error(content, "to")


# ---------------------------------------------------------------------------
# call records


T0 = 1_717_200_000.0  # 2024-06-01T00:00:00Z


async def add_records(api: Harness) -> list[CallRecord]:
    specs = [
        # caller, callee, start offset (s), disposition, answered
        ("1001", "1002", 0, "answered", True),
        ("1002", "1001", 3600, "missed", False),
        ("1001", "2000", 86400, "busy", False),
        ("=cmd|' /C calc'!A0", "1002", 2 * 86400, "failed", False),
        ("1002", "1003", 3 * 86400, "answered", True),
    ]
    records = []
    for caller, callee, offset, disposition, answered in specs:
        record = CallRecord.begin(f"sip-{uuid.uuid4().hex[:6]}", caller, callee, T0 + offset, caller_name="Ann, \"A\"")
        if answered:
            record.answer = record.start + 2
            record.answered_by = callee
        record.finish(record.start + 62, disposition, "normal" if answered else "no-answer", "caller")
        await api.pbx.cdr.close_call(record)
        records.append(record)
    return records


@pytest_twisted.ensureDeferred
async def test_cdr_filters_and_pages(api: Harness) -> None:
    records = await add_records(api)
    everything = await api.json("GET", "/api/cdr", 200)
    assert everything["total"] == 5 and everything["limit"] == 100 and everything["offset"] == 0
    assert [r["call_id"] for r in everything["items"]] == [r.call_id for r in reversed(records)]
    first = everything["items"][-1]
    assert first["start"] == "2024-06-01T00:00:00.000Z" and first["duration"] == 62 and first["billable"] == 60

    by_extension = await api.json("GET", "/api/cdr?extension=1001", 200)
    assert by_extension["total"] == 3
    answered = await api.json("GET", "/api/cdr?disposition=answered", 200)
    assert {r["callee"] for r in answered["items"]} == {"1002", "1003"}
    day_one = await api.json("GET", "/api/cdr?from=2024-06-01&to=2024-06-01", 200)
    assert day_one["total"] == 2, "a bare date as 'to' includes that whole day"
    window = await api.json("GET", "/api/cdr?from=2024-06-01T00:30:00Z&to=2024-06-02T00:00:00%2B00:00", 200)
    assert [r["disposition"] for r in window["items"]] == ["missed"]
    naive = await api.json("GET", "/api/cdr?from=2024-06-03T00:00:00", 200)
    assert naive["total"] == 2, "no zone means UTC"
    page = await api.json("GET", "/api/cdr?limit=2&offset=1", 200)
    assert page["total"] == 5 and [r["call_id"] for r in page["items"]] == [records[3].call_id, records[2].call_id]
    response, content = await api.request("GET", "/api/cdr", headers={"X-Ignored": "1"})
    assert header(response, "x-total-count") == "5"

    for query, field in (
        ("from=yesterday", "from"), ("to=2024-13-01", "to"), ("disposition=lost", "disposition"),
        ("limit=0", "limit"), ("limit=1001", "limit"), ("offset=-1", "offset"), ("limit=ten", "limit"),
        ("format=xml", "format"), ("color=red", "color"), ("extension=1&extension=2", "extension"),
        ("from=2024-06-02&to=2024-06-01T00:00:00Z", "to"), ("to=9999-12-31", "to"),
    ):
        response, content = await api.request("GET", "/api/cdr?" + query)
        assert response.code == 400, query
        assert_error(content, field)


@pytest_twisted.ensureDeferred
async def test_cdr_as_csv(api: Harness) -> None:
    records = await add_records(api)
    for path, headers in (("/api/cdr?format=csv", {}), ("/api/cdr", {"Accept": "text/csv"})):
        response, content = await api.request("GET", path, headers=headers)
        assert response.code == 200
        assert header(response, "content-type").startswith("text/csv")
        rows = list(csv.reader(io.StringIO(content.decode())))
        assert rows[0][:5] == ["call_id", "sip_call_id", "caller", "caller_name", "callee"]
        assert len(rows) == 6
        by_id = {row[0]: dict(zip(rows[0], row)) for row in rows[1:]}
        assert by_id[records[0].call_id]["caller_name"] == 'Ann, "A"'
        assert by_id[records[0].call_id]["disposition"] == "answered"
        assert by_id[records[3].call_id]["caller"].startswith("'="), "no formula injection"
    response, content = await api.request("GET", "/api/cdr?format=csv&disposition=busy")
    assert len(list(csv.reader(io.StringIO(content.decode())))) == 2
    response, content = await api.request("GET", "/api/cdr?format=json", headers={"Accept": "text/csv"})
    assert header(response, "content-type").startswith("application/json")


# ---------------------------------------------------------------------------
# metrics, integrations, errors, CORS


@pytest_twisted.ensureDeferred
async def test_metrics_in_prometheus_text_format(api: Harness) -> None:
    assert api.register("1001", "secret1001", 5091) == 200
    await api.json("GET", "/api/status", 200)
    await api.request("GET", "/api/extensions/9999")
    response, content = await api.request("GET", "/metrics")
    assert response.code == 200
    assert header(response, "content-type").startswith("text/plain")
    text = content.decode()
    for name in (
        "pbx_registrations 1.0", "pbx_registered_extensions 1.0", "pbx_extensions 2.0",
        'pbx_active_calls{state="answered"} 0.0', 'pbx_calls_total{disposition="answered"}',
        "pbx_rtp_packets_relayed_total", "pbx_rtp_packets_lost_total", 'pbx_sip_messages_total{kind="received"}',
        'pbx_sip_requests_received_total{method="REGISTER"} 2.0',
        'pbx_sip_responses_sent_total{status="401"} 1.0', 'pbx_sip_responses_sent_total{status="200"} 1.0',
        'pbx_api_requests_total{method="GET",route="/api/status",status="200"} 1.0',
        'pbx_api_requests_total{method="GET",route="/api/extensions/{number}",status="404"} 1.0',
    ):
        assert name in text, name
    response, _ = await api.request("GET", "/metrics", token=None)
    assert response.code == 401


@pytest_twisted.ensureDeferred
async def test_two_apis_keep_their_own_metrics(tmp_path: Path, api: Harness) -> None:
    (tmp_path / "other").mkdir()
    other = Harness(tmp_path / "other")
    await other.start()
    try:
        await api.json("GET", "/api/status", 200)
        _, content = await other.request("GET", "/metrics")
        assert 'route="/api/status"' not in content.decode()
    finally:
        await other.stop()


@pytest_twisted.ensureDeferred
async def test_integration_routes_answer_503_until_enabled(api: Harness) -> None:
    names = {"jitsi": "Jitsi", "espocrm": "EspoCRM", "matrix": "Matrix", "zoom": "Zoom"}
    integration_ops = [op for op in OPERATIONS if op.path.startswith("/api/integrations/")]
    assert len(integration_ops) == 9
    for op in integration_ops:
        body = {"topic": "x"} if op.method == "POST" else None
        response, content = await api.request(op.method, op.path, body=body)
        assert response.code == 503, op.path
        name = names[op.path.split("/")[3]]
        assert json.loads(content) == {"error": f"{name} integration not enabled"}


@pytest_twisted.ensureDeferred
async def test_unknown_routes_and_methods_answer_json(api: Harness) -> None:
    for path in ("/api/nope", "/", "/api/extensions/1001/more", "/api/integrations/slack/x", "/api/cdr/1"):
        response, content = await api.request("GET", path)
        assert response.code == 404, path
        assert header(response, "content-type") == "application/json"
        assert assert_error(content)["error"] == "not found"
    for method, path, allow in (
        ("DELETE", "/api/status", "GET"),
        ("PATCH", "/api/calls", "GET, POST"),
        ("POST", "/api/extensions/1001", "DELETE, GET, PATCH, PUT"),
        ("GET", "/api/integrations/zoom/meetings", "POST"),
    ):
        response, content = await api.request(method, path)
        assert response.code == 405, (method, path)
        assert assert_error(content)["error"] == "method not allowed"
        assert header(response, "allow") == allow
    response, _ = await api.request("GET", "/api/extensions/1001/more", token=None)
    assert response.code == 401, "a group's paths are behind the token"


@pytest_twisted.ensureDeferred
async def test_an_unexpected_error_is_500_with_a_request_id(api: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> list[str]:
        raise RuntimeError("boom: secret internals")

    monkeypatch.setattr(api.pbx.location, "aors", broken)
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        response, content = await api.request("GET", "/api/status")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert response.code == 500
    body = json.loads(content)
    assert body["error"] == "internal error"
    assert body["request_id"] == header(response, "x-request-id") and len(body["request_id"]) == 16
    assert b"boom" not in content and b"Traceback" not in content
    logged = [e for e in events if e.get("log_failure") is not None and e.get("request_id") == body["request_id"]]
    assert logged and "boom" in logged[0]["log_failure"].getTraceback()


@pytest_twisted.ensureDeferred
async def test_cors_is_off_unless_origins_are_configured(api: Harness, tmp_path: Path) -> None:
    response, _ = await api.request("GET", "/api/health", headers={"Origin": "https://admin.example"})
    assert header(response, "access-control-allow-origin") == ""
    response, _ = await api.request(
        "OPTIONS", "/api/extensions", token=None,
        headers={"Origin": "https://admin.example", "Access-Control-Request-Method": "POST"},
    )  # fmt: skip
    assert response.code == 401, "no preflight answer: OPTIONS is just another request"
    assert header(response, "access-control-allow-origin") == ""

    (tmp_path / "cors").mkdir()
    harness = Harness(tmp_path / "cors", cors=["https://admin.example"])
    await harness.start()
    try:
        response, _ = await harness.request("GET", "/api/status", headers={"Origin": "https://admin.example"})
        assert header(response, "access-control-allow-origin") == "https://admin.example"
        response, _ = await harness.request("GET", "/api/status", headers={"Origin": "https://evil.example"})
        assert header(response, "access-control-allow-origin") == ""
        response, content = await harness.request(
            "OPTIONS", "/api/extensions/1001", token=None,
            headers={"Origin": "https://admin.example", "Access-Control-Request-Method": "PATCH"},
        )  # fmt: skip
        assert response.code == 204, content
        assert header(response, "access-control-allow-methods") == "DELETE, GET, PATCH, PUT"
        assert "Authorization" in header(response, "access-control-allow-headers")
    finally:
        await harness.stop()


@implementer(IBodyProducer)
class _Chunked:
    """A body of unknown length: sent with chunked transfer encoding."""

    length = UNKNOWN_LENGTH

    def __init__(self, data: bytes) -> None:
        self.data = data

    def startProducing(self, consumer: Any) -> Any:
        for start in range(0, len(self.data), 8192):
            consumer.write(self.data[start:start + 8192])
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@pytest_twisted.ensureDeferred
async def test_a_chunked_body_over_the_limit_is_413(api: Harness) -> None:
    big = json.dumps({"number": "3300", "password": "abcdefgh", "name": "y" * (65 * 1024)}).encode()
    response = await api.http.request(
        "POST", api.base + "/api/extensions", data=_Chunked(big),
        headers={b"authorization": [f"Bearer {TOKEN}".encode()], b"content-type": [b"application/json"]},
    )  # fmt: skip
    content = await response.content()
    assert response.code == 413 and assert_error(content)
    small = json.dumps({"number": "3300", "password": "abcdefgh"}).encode()
    response = await api.http.request(
        "POST", api.base + "/api/extensions", data=_Chunked(small),
        headers={b"authorization": [f"Bearer {TOKEN}".encode()], b"content-type": [b"application/json"]},
    )  # fmt: skip
    assert response.code == 201, await response.content()


@pytest_twisted.ensureDeferred
async def test_odd_paths_and_head_still_answer_json(api: Harness) -> None:
    response, content = await api.request("GET", "/api/extensions/%ff")
    assert response.code == 400 and assert_error(content)
    assert header(response, "x-request-id")
    response, content = await api.request("GET", "/api/extensions/")
    assert response.code == 404 and assert_error(content)
    response, content = await api.request("HEAD", "/api/health", token=None)
    assert response.code == 200 and content == b""


@pytest_twisted.ensureDeferred
async def test_no_redirects_for_doubled_slashes(api: Harness) -> None:
    for method in ("GET", "PUT"):
        response, content = await api.request(method, "/api/extensions/%2F1001", body={"name": "x"} if method == "PUT" else None)
        assert response.code == 404, (method, content)
        assert_error(content)
    response, content = await api.request("GET", "/api//status")
    assert response.code == 404


def test_a_change_finishes_when_its_client_goes_away() -> None:
    from twisted.internet.defer import CancelledError, Deferred

    from pbx.deferreds import uncancellable

    applied: list[str] = []
    inner: Deferred = Deferred()
    inner.addCallback(lambda outcome: applied.append(outcome))
    outer = uncancellable(inner)
    failures: list = []
    outer.addErrback(failures.append)
    outer.cancel()
    assert failures and failures[0].check(CancelledError)
    inner.callback("ok")
    assert applied == ["ok"], "the in-memory update still ran"


@pytest_twisted.ensureDeferred
async def test_data_routes_wait_until_the_pbx_has_loaded(api: Harness) -> None:
    api.pbx.core.ready = False
    try:
        assert (await api.json("GET", "/api/health", 200, token=None))["status"] == "starting"
        assert (await api.json("GET", "/api/status", 200))["ready"] is False
        for path in ("/api/extensions", "/api/registrations", "/api/calls", "/api/cdr"):
            response, content = await api.request("GET", path)
            assert response.code == 503, path
            assert header(response, "retry-after") == "1"
            assert json.loads(content) == {"error": "the PBX is starting"}
        response, _ = await api.request("GET", "/api/extensions", token=None)
        assert response.code == 401, "the token is checked first"
    finally:
        api.pbx.core.ready = True
