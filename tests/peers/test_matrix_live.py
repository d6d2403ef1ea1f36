"""Matrix against a real Synapse (tests/synapse.py: PyPI matrix-synapse in its own cached virtualenv, SQLite,
loopback).  Skipped with the reason when Synapse cannot be installed.

(a) MatrixClient alone: a bot logs in, creates a room, invites a user who joins and reads what the bot sent.
(b) The real PBX (twistd) with integrations.matrix pointing at the Synapse: the REST route posts into the room,
    a missed call placed with SIPp posts a notice naming caller and callee, and with Synapse down the call still
    completes and the notice arrives once Synapse is back (the outbox retries).
"""

from __future__ import annotations

import importlib.util
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest
import pytest_twisted

from pbxproc import PBXProcess, have
from synapse import Synapse

pytestmark = pytest.mark.peers

BOT, BOT_PASSWORD = "pbxbot", "bot-password-for-tests"
ALICE, ALICE_PASSWORD = "alice", "alice-password-for-tests"
API_TOKEN = "matrix-live-test-token"

WIRING = ("pbx.integrations.service", "pbx.integrations.dispatch")
wiring_missing = [name for name in WIRING if importlib.util.find_spec(name) is None]
needs_wiring = pytest.mark.skipif(bool(wiring_missing), reason="the PBX's integration wiring is not there yet "
                                  f"(missing: {', '.join(wiring_missing)})")
needs_sipp = pytest.mark.skipif(not have("sipp"), reason="sipp is not installed")


@pytest.fixture(scope="module")
def synapse(tmp_path_factory):
    server = Synapse(tmp_path_factory.mktemp("synapse"))
    server.start()  # skips the module's tests when Synapse cannot be installed
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def accounts(synapse):
    """Registered users: {"bot": ..., "alice": ...}, each the /register answer (user_id, access_token)."""
    return {"bot": synapse.register(BOT, BOT_PASSWORD), "alice": synapse.register(ALICE, ALICE_PASSWORD)}


@pytest.fixture
def room(synapse, accounts):
    """A fresh room created by the bot, which alice has joined: its room id."""
    bot, alice = accounts["bot"], accounts["alice"]
    room_id = synapse.api("POST", "/_matrix/client/v3/createRoom",
                          {"name": f"pbx-{uuid.uuid4().hex[:8]}", "preset": "private_chat",
                           "invite": [alice["user_id"]]}, bot["access_token"])["room_id"]
    synapse.join(room_id, alice["access_token"])
    return room_id


@pytest.fixture(autouse=True)
def synapse_running(synapse):
    """Every test starts and ends with Synapse up (a test may stop it)."""
    synapse.start()
    yield
    synapse.start()


def has_body(*parts: str, msgtype: str | None = None):
    def predicate(content: dict) -> bool:
        body = content.get("body", "")
        return all(part in body for part in parts) and (msgtype is None or content.get("msgtype") == msgtype)

    return predicate


# ---------------------------------------------------------------- (a) the client alone

def _client(synapse, reactor, **config):
    from pbx.config import MatrixConfig
    from pbx.integrations.http import JSONClient
    from pbx.integrations.matrix import MatrixClient

    values = {"enabled": True, "homeserver_url": synapse.url, "bot_username": BOT, "bot_password": BOT_PASSWORD}
    values.update(config)
    http = JSONClient("Matrix", synapse.url, reactor=reactor, timeout=10.0)
    return MatrixClient(MatrixConfig(**values), http, reactor)


@pytest_twisted.ensureDeferred
async def test_bot_creates_a_room_invites_and_its_message_arrives(synapse, accounts):
    from twisted.internet import reactor

    client = _client(synapse, reactor)
    alice = accounts["alice"]
    created = await client.create_room("PBX live test", topic="calls")
    room_id = created["room_id"]
    assert room_id.startswith("!")
    assert client.user_id == accounts["bot"]["user_id"]  # logged in lazily, with the password

    assert await client.invite(room_id, alice["user_id"]) == {"room_id": room_id, "user_id": alice["user_id"]}
    synapse.join(room_id, alice["access_token"])

    sent = await client.send_message(room_id, "Hello from the PBX")
    again = await client.send_message(room_id, "Hello from the PBX", txn_id=sent["txn_id"])
    assert again["event_id"] == sent["event_id"]  # same txnId: Synapse answers with the same event

    event = synapse.wait_message(room_id, alice["access_token"], has_body("Hello from the PBX"))
    assert event is not None, synapse.messages(room_id, alice["access_token"])
    assert event["event_id"] == sent["event_id"]
    assert event["sender"] == accounts["bot"]["user_id"]
    assert event["content"] == {"msgtype": "m.text", "body": "Hello from the PBX"}
    bodies = [e["content"].get("body") for e in synapse.messages(room_id, alice["access_token"])]
    assert bodies.count("Hello from the PBX") == 1


@pytest_twisted.ensureDeferred
async def test_notice_through_an_alias_and_login_again_after_logout(synapse, accounts, room):
    from twisted.internet import reactor

    alias = f"#pbx-{uuid.uuid4().hex[:8]}:{synapse.server_name}"
    synapse.api("PUT", f"/_matrix/client/v3/directory/room/{urllib.parse.quote(alias, safe='')}",
                {"room_id": room}, accounts["bot"]["access_token"])
    client = _client(synapse, reactor, notification_room=alias)

    first = await client.notice(None, "Missed call from 1001 to 1002", "txn-notice-1")
    assert first["room_id"] == room
    token = client.access_token
    # The session ends on the server (as after a logout or an expiry): the next request gets M_UNKNOWN_TOKEN,
    # the client logs in again and repeats it.
    synapse.api("POST", "/_matrix/client/v3/logout", {}, token)
    second = await client.notice(None, "Missed call from 1003 to 1002", "txn-notice-2")
    assert client.access_token != token and client.logins == 2
    alice = accounts["alice"]["access_token"]
    for event_id, text in ((first["event_id"], "1001"), (second["event_id"], "1003")):
        event = synapse.wait_message(room, alice, has_body(text, msgtype="m.notice"))
        assert event is not None and event["event_id"] == event_id


@pytest_twisted.ensureDeferred
async def test_bot_invited_to_a_room_joins_it_on_its_first_message(synapse, accounts):
    from twisted.internet import reactor

    alice = accounts["alice"]["access_token"]
    room_id = synapse.api("POST", "/_matrix/client/v3/createRoom",
                          {"name": "alice's room", "preset": "private_chat", "invite": [accounts["bot"]["user_id"]]},
                          alice)["room_id"]
    client = _client(synapse, reactor)
    sent = await client.notice(room_id, "The PBX is here", "txn-join-1")
    event = synapse.wait_message(room_id, alice, has_body("The PBX is here", msgtype="m.notice"))
    assert event is not None and event["event_id"] == sent["event_id"]


@pytest_twisted.ensureDeferred
async def test_stopped_homeserver_is_an_upstream_error(synapse, accounts, room):
    from twisted.internet import reactor

    from pbx.integrations.http import UpstreamError

    client = _client(synapse, reactor, access_token=accounts["bot"]["access_token"], bot_password=None,
                     bot_username=None)
    synapse.stop()
    with pytest.raises(UpstreamError) as info:
        await client.send_message(room, "nobody hears this")
    assert info.value.status is None


# ---------------------------------------------------------------- (b) the PBX

def pbx_for(synapse, tmp_path, room_id: str, **features) -> PBXProcess:
    matrix = {"enabled": True, "homeserver_url": synapse.url, "bot_username": BOT, "bot_password": BOT_PASSWORD,
              "notification_room": room_id, "missed_call_notifications": True}
    integrations = {"timeout": 2.0, "matrix": matrix}
    integrations.update(_fast_outbox())
    return PBXProcess(tmp_path / "pbx", api={"tokens": [API_TOKEN]}, integrations=integrations,
                      features={"no_answer_timeout": 20, **features})


def _fast_outbox() -> dict:
    """Short outbox retry delays, when the configuration offers them."""
    from dataclasses import fields

    from pbx.config import IntegrationsConfig

    names = {f.name for f in fields(IntegrationsConfig)}
    for key in ("outbox_retry_base", "retry_base"):
        if key in names:
            return {key: 1.0}
    if "outbox" in names:
        return {"outbox": {"retry_base": 1.0}}
    return {}


def api_post(pbx: PBXProcess, path: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{pbx.api_port}{path}", data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=15) as answer:
            return answer.status, json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def missed_call(pbx: PBXProcess, workdir) -> None:
    """1001 calls 1002, which rings and never answers; 1001 gives up (CANCEL).  Both SIPp runs must pass."""
    from calls import register_then_uas, run_sipp, sipp_report, stop_sipp, wait_sipp

    callee = register_then_uas(pbx, "1002", "secret1002", "uas_ring_no_answer", workdir)
    try:
        caller = run_sipp("uac_cancel", pbx.sip_port, ["1001;secret1001;1002"], workdir, "-d", "500")
        assert caller.returncode == 0, sipp_report(caller)
        callee_result = wait_sipp(callee)
        assert callee_result.returncode == 0, sipp_report(callee_result)
    finally:
        stop_sipp(callee)


@needs_wiring
def test_message_through_the_rest_route_arrives(synapse, accounts, room, tmp_path):
    with pbx_for(synapse, tmp_path, room) as pbx:
        # `room` is what current Synapse creates (room version 12): "!" and an opaque id, no ":server" part;
        # the route must accept it.
        status, answer = api_post(pbx, "/api/integrations/matrix/messages",
                                  {"room_id": room, "message": "Sent through the REST API"})
        assert status in (200, 201), (answer, pbx.log()[-3000:])
        event = synapse.wait_message(room, accounts["alice"]["access_token"], has_body("Sent through the REST API"))
        assert event is not None, pbx.log()[-3000:]
        assert event["sender"] == accounts["bot"]["user_id"]
        if isinstance(answer, dict) and answer.get("event_id"):
            assert answer["event_id"] == event["event_id"]

        # Without room_id, a notification goes to notification_room, as an m.notice.
        status, answer = api_post(pbx, "/api/integrations/matrix/notifications", {"message": "A REST notice"})
        assert status in (200, 201), answer
        assert synapse.wait_message(room, accounts["alice"]["access_token"],
                                    has_body("A REST notice", msgtype="m.notice")) is not None

        status, answer = api_post(pbx, "/api/integrations/matrix/rooms",
                                  {"name": "Made through the API", "invite_users": [accounts["alice"]["user_id"]]})
        assert status in (200, 201), answer
        new_room = answer["room_id"]
        assert synapse.join(new_room, accounts["alice"]["access_token"]) == new_room


@needs_wiring
@needs_sipp
def test_missed_call_posts_a_notice(synapse, accounts, room, tmp_path):
    with pbx_for(synapse, tmp_path, room) as pbx:
        missed_call(pbx, tmp_path)
        event = synapse.wait_message(room, accounts["alice"]["access_token"], has_body("1001", "1002"),
                                     timeout=15)
        assert event is not None, pbx.log()[-4000:]
        assert event["content"]["msgtype"] == "m.notice"
        assert event["sender"] == accounts["bot"]["user_id"]


@needs_wiring
@needs_sipp
def test_missed_call_with_synapse_down_completes_and_the_notice_follows(synapse, accounts, room, tmp_path):
    alice = accounts["alice"]["access_token"]
    with pbx_for(synapse, tmp_path, room) as pbx:
        synapse.stop()
        began = time.monotonic()
        missed_call(pbx, tmp_path)  # SIPp exits 0 on both sides: the call is not held up by the homeserver
        call_seconds = time.monotonic() - began
        assert call_seconds < 10, f"the call took {call_seconds:.1f}s with the homeserver down"
        time.sleep(1.5)  # the first delivery attempt fails while Synapse is down
        synapse.start()
        # The outbox retries (5 s, then 10 s by default; shorter when the config allows it).
        event = synapse.wait_message(room, alice, has_body("1001", "1002"), timeout=35, interval=0.5)
        assert event is not None, pbx.log()[-4000:]
        assert event["content"]["msgtype"] == "m.notice"
        time.sleep(1.0)
        notices = [e for e in synapse.messages(room, alice) if has_body("1001", "1002")(e["content"])]
        assert len(notices) == 1, notices  # delivered once, however many attempts it took
