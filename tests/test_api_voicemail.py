"""/api/voicemail over real HTTP, against the real voicemail store on a tmp database and spool."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor, threads
from twisted.internet.defer import ensureDeferred
from twisted.logger import globalLogPublisher

from pbx.api.http import MAX_UPLOAD
from pbx.api.voicemail import GreetingError, greeting_pcm
from pbx.api.schemas import SCHEMAS, validate
from pbx.apps.mailbox import VoicemailStore
from pbx.media import g711, wav
from pbx.store.voicemail import VoicemailRepository
from test_api import Harness, assert_error, header

WAV = "audio/wav"


def riff(fmt: int, channels: int, rate: int, bits: int, data: bytes) -> bytes:
    """A WAV file of any layout (the PCM, float and G.711 ones pbx.media.wav reads)."""
    block = channels * bits // 8 & 0xFFFF
    body = struct.pack("<HHIIHH", fmt, channels, rate, rate * block & 0xFFFFFFFF, block, bits)
    chunks = b"fmt " + struct.pack("<I", len(body)) + body + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def s16(samples: list[int]) -> bytes:
    return struct.pack(f"<{len(samples)}h", *samples)


def values(pcm: bytes) -> list[int]:
    return list(struct.unpack(f"<{len(pcm) // 2}h", pcm))


def tone(frequency: float, seconds: float, rate: int = 8000, amplitude: int = 9000) -> list[int]:
    return [round(amplitude * math.sin(2 * math.pi * frequency * n / rate)) for n in range(int(rate * seconds))]


@pytest_twisted.async_yield_fixture
async def api(tmp_path: Path):
    harness = Harness(tmp_path)
    spool = tmp_path / "spool"
    harness.pbx.voicemail = VoicemailStore(VoicemailRepository(harness.pbx.db), str(spool), reactor,
                                           harness.pbx.events)
    harness.spool = spool
    await harness.start()
    yield harness
    await harness.stop()


async def deposit(api: Harness, mailbox: str, frequency: float = 440.0, seconds: float = 1.5,
                  caller: str = "1002", caller_name: str = "Bob") -> tuple[Any, bytes]:
    pcm = s16(tone(frequency, seconds))
    message = await api.pbx.voicemail.deposit(mailbox, caller, caller_name, pcm, call_id=f"call-{frequency}")
    assert message is not None
    return message, pcm


def with_max_greeting(api: Harness, seconds: int) -> None:
    config = api.pbx.config
    api.pbx.config = dataclasses.replace(
        config, voicemail=dataclasses.replace(config.voicemail, max_greeting_duration=seconds))


# ---------------------------------------------------------------------------
# mailbox and messages


@pytest_twisted.ensureDeferred
async def test_a_mailbox_lists_its_messages_oldest_first_with_counts(api: Harness) -> None:
    empty = await api.json("GET", "/api/voicemail/1001", 200)
    assert empty == {"mailbox": "1001", "new": 0, "old": 0, "messages": []}
    first, _ = await deposit(api, "1001", 440.0)
    second, _ = await deposit(api, "1001", 880.0, caller="1003", caller_name="Carol")
    await deposit(api, "1002", 660.0, caller="1001", caller_name="Alice")

    body = await api.json("GET", "/api/voicemail/1001", 200)
    validate(body, SCHEMAS["VoicemailMailbox"])  # what the OpenAPI document promises
    assert (body["mailbox"], body["new"], body["old"]) == ("1001", 2, 0)
    assert [m["id"] for m in body["messages"]] == [first.id, second.id]
    item = body["messages"][1]
    assert item["caller"] == "1003" and item["caller_name"] == "Carol"
    assert item["mailbox"] == "1001" and item["heard"] is False and item["saved"] is False
    assert item["duration"] == pytest.approx(1.5)
    assert item["received"].endswith("Z") and item["call_id"] == "call-880.0"
    assert item["audio"] == f"/api/voicemail/1001/{second.id}/audio"
    assert "file" not in item, "where the spool is stays inside the PBX"

    assert [m["id"] for m in (await api.json("GET", "/api/voicemail/1001?folder=new", 200))["messages"]] == [
        first.id, second.id]
    assert (await api.json("GET", "/api/voicemail/1001?folder=old", 200))["messages"] == []


@pytest_twisted.ensureDeferred
async def test_mailbox_query_and_unknown_mailboxes(api: Harness) -> None:
    for query, field in (("folder=saved", "folder"), ("folder=", "folder"), ("sort=id", "sort"),
                         ("folder=new&folder=old", "folder")):
        response, content = await api.request("GET", f"/api/voicemail/1001?{query}")
        assert response.code == 400, query
        assert_error(content, field)
    for number in ("9999", "2000", "abc", "*97"):
        response, content = await api.request("GET", f"/api/voicemail/{number.replace('*', '%2A')}")
        assert response.code == 404, number
        assert number in assert_error(content, "number")["error"]
    # An extension created through the API has a mailbox at once.
    await api.json("POST", "/api/extensions", 201, body={"number": "3001", "password": "password-3001"})
    assert (await api.json("GET", "/api/voicemail/3001", 200))["messages"] == []


@pytest_twisted.ensureDeferred
async def test_one_message_and_ids_that_are_not_there(api: Harness) -> None:
    mine, _ = await deposit(api, "1001")
    theirs, _ = await deposit(api, "1002")
    body = await api.json("GET", f"/api/voicemail/1001/{mine.id}", 200)
    assert body == (await api.json("GET", "/api/voicemail/1001", 200))["messages"][0]
    for path in (f"/api/voicemail/1001/{theirs.id}", "/api/voicemail/1001/987654",
                 f"/api/voicemail/9999/{mine.id}", f"/api/voicemail/1001/{2**63}", "/api/voicemail/1001/-1",
                 "/api/voicemail/1001/abc", "/api/voicemail/1001/1.5", f"/api/voicemail/1001/{theirs.id}/audio"):
        response, content = await api.request("GET", path)
        assert response.code == 404, (path, content)
        assert_error(content)
    response, content = await api.request("GET", f"/api/voicemail/1001/{theirs.id}")
    assert assert_error(content, "message_id")["error"] == f"no message {theirs.id} in mailbox 1001"


@pytest_twisted.ensureDeferred
async def test_the_audio_is_the_recording_that_was_deposited(api: Harness) -> None:
    message, pcm = await deposit(api, "1001", 1000.0, seconds=2.0)
    response, content = await api.request("GET", f"/api/voicemail/1001/{message.id}/audio")
    assert response.code == 200
    assert header(response, "content-type") == "audio/wav"
    assert response.length == len(content), "sent with Content-Length, not chunked"
    assert header(response, "content-disposition") == f'inline; filename="voicemail-1001-{message.id}.wav"'
    rate, channels, samples = wav.decode_wav(content)
    assert (rate, channels) == (8000, 1)
    assert s16(list(samples)) == pcm

    head, body = await api.request("HEAD", f"/api/voicemail/1001/{message.id}/audio")
    assert head.code == 200 and body == b""
    assert int(header(head, "content-length")) == len(content)


@pytest_twisted.ensureDeferred
async def test_a_recording_missing_from_disk_is_a_404_not_a_500(api: Harness) -> None:
    message, _ = await deposit(api, "1001")
    os.remove(api.pbx.voicemail.audio_path(message))
    response, content = await api.request("GET", f"/api/voicemail/1001/{message.id}/audio")
    assert response.code == 404
    assert "missing" in assert_error(content, "message_id")["error"]
    assert header(response, "content-type") == "application/json"


@pytest_twisted.ensureDeferred
async def test_patch_heard_moves_a_message_to_old_and_lights_the_lamp(api: Harness) -> None:
    first, _ = await deposit(api, "1001")
    second, _ = await deposit(api, "1001", 880.0)
    changes: list[dict] = []
    api.pbx.events.subscribe("voicemail.changed", lambda name, fields: changes.append(fields))

    body = await api.json("PATCH", f"/api/voicemail/1001/{first.id}", 200, body={"heard": True})
    validate(body, SCHEMAS["VoicemailMessage"])
    assert body["id"] == first.id and body["heard"] is True and body["saved"] is False
    counts = await api.json("GET", "/api/voicemail/1001", 200)
    assert (counts["new"], counts["old"]) == (1, 1)
    assert [m["id"] for m in (await api.json("GET", "/api/voicemail/1001?folder=old", 200))["messages"]] == [first.id]
    assert changes == [{"mailbox": "1001", "new": 1, "old": 1}]

    body = await api.json("PATCH", f"/api/voicemail/1001/{second.id}", 200, body={"saved": True, "heard": True})
    assert body["saved"] is True and body["heard"] is True
    assert changes[-1] == {"mailbox": "1001", "new": 0, "old": 2}
    body = await api.json("PATCH", f"/api/voicemail/1001/{first.id}", 200, body={"heard": False})
    assert body["heard"] is False
    assert (await api.json("GET", f"/api/voicemail/1001/{first.id}", 200))["heard"] is False
    assert changes[-1] == {"mailbox": "1001", "new": 1, "old": 1}


@pytest_twisted.ensureDeferred
async def test_patch_refuses_bad_bodies_and_changes_nothing(api: Harness) -> None:
    message, _ = await deposit(api, "1001")
    other, _ = await deposit(api, "1002")
    path = f"/api/voicemail/1001/{message.id}"
    for body, field in (({}, None), ({"heard": True, "deleted": True}, "deleted"), ({"heard": "yes"}, "heard"),
                        ({"saved": 1}, "saved"), ({"heard": None}, "heard"), ([], None), ("heard", None)):
        response, content = await api.request("PATCH", path, body=body)
        assert response.code == 400, (body, content)
        error = assert_error(content, field)
        if field is not None:
            assert field in error["error"]
    response, content = await api.request("PATCH", path, data=b'{"heard": tru', content_type="application/json")
    assert response.code == 400
    response, content = await api.request("PATCH", path, data=b"heard=1", content_type="application/x-www-form-urlencoded")
    assert response.code == 415
    for target in (f"/api/voicemail/1001/{other.id}", "/api/voicemail/1001/424242", f"/api/voicemail/9999/{message.id}"):
        response, content = await api.request("PATCH", target, body={"heard": True})
        assert response.code == 404, target
    assert (await api.json("GET", path, 200))["heard"] is False
    assert (await api.json("GET", f"/api/voicemail/1002/{other.id}", 200))["heard"] is False
    assert (await api.pbx.voicemail.counts("1001")) == (1, 0)


@pytest_twisted.ensureDeferred
async def test_delete_removes_the_message_and_its_recording(api: Harness) -> None:
    message, _ = await deposit(api, "1001")
    other, _ = await deposit(api, "1002")
    audio = Path(api.pbx.voicemail.audio_path(message))
    assert audio.exists()
    response, content = await api.request("DELETE", f"/api/voicemail/1001/{other.id}")
    assert response.code == 404, "another mailbox's message is not this one's"
    await api.json("DELETE", f"/api/voicemail/1001/{message.id}", 204)
    assert not audio.exists()
    assert (await api.json("GET", "/api/voicemail/1001", 200))["messages"] == []
    for method in ("GET", "DELETE"):
        response, content = await api.request(method, f"/api/voicemail/1001/{message.id}")
        assert response.code == 404, method
        assert_error(content, "message_id")
    assert (await api.json("GET", f"/api/voicemail/1002/{other.id}", 200))["id"] == other.id


# ---------------------------------------------------------------------------
# greeting


@pytest_twisted.ensureDeferred
async def test_greeting_upload_download_and_delete(api: Harness) -> None:
    response, content = await api.request("GET", "/api/voicemail/1001/greeting")
    assert response.code == 404 and "no greeting" in assert_error(content)["error"]
    pcm = s16(tone(500.0, 1.0))
    for content_type in (WAV, "audio/x-wav; charset=binary", "Audio/WAV"):
        await api.json("PUT", "/api/voicemail/1001/greeting", 204, data=wav.encode_wav(pcm), content_type=content_type)
    response, content = await api.request("GET", "/api/voicemail/1001/greeting")
    assert response.code == 200
    assert header(response, "content-type") == "audio/wav"
    assert response.length == len(content), "sent with Content-Length, not chunked"
    rate, channels, samples = wav.decode_wav(content)
    assert (rate, channels, s16(list(samples))) == (8000, 1, pcm)
    assert await api.pbx.voicemail.greeting("1001") == pcm
    assert await api.pbx.voicemail.greeting("1002") is None, "only this mailbox's greeting changed"
    # Replacing a greeting leaves one file, not one per upload.
    assert len(list((api.spool / "1001").glob("greeting-*.wav"))) == 1

    await api.json("DELETE", "/api/voicemail/1001/greeting", 204)
    for method in ("GET", "DELETE"):
        response, content = await api.request(method, "/api/voicemail/1001/greeting")
        assert response.code == 404, method
        assert_error(content)
    assert list((api.spool / "1001").glob("greeting-*.wav")) == []


@pytest_twisted.ensureDeferred
async def test_greetings_in_other_formats_are_converted(api: Harness) -> None:
    source = tone(400.0, 0.5, rate=16000)
    uploads = {
        "16 kHz stereo": riff(1, 2, 16000, 16, s16([v for v in source for _ in range(2)])),
        "8-bit": riff(1, 1, 8000, 8, bytes((v >> 8) + 128 for v in tone(400.0, 0.5))),
        "u-law": riff(7, 1, 8000, 8, g711.encode_ulaw(s16(tone(400.0, 0.5)))),
        "a-law": riff(6, 1, 8000, 8, g711.encode_alaw(s16(tone(400.0, 0.5)))),
        "44.1 kHz": riff(1, 1, 44100, 16, s16(tone(400.0, 0.3, rate=44100))),
    }
    for name, upload in uploads.items():
        await api.json("PUT", "/api/voicemail/1002/greeting", 204, data=upload, content_type=WAV)
        response, content = await api.request("GET", "/api/voicemail/1002/greeting")
        rate, channels, samples = wav.decode_wav(content)
        assert (rate, channels) == (8000, 1), name
        # The same conversion as a prompt dropped into the prompts directory.
        path = api.spool / "upload.wav"
        path.write_bytes(upload)
        assert s16(list(samples)) == wav.read_wav(path), name
        seconds = len(samples) / 8000
        assert seconds == pytest.approx(0.3 if name == "44.1 kHz" else 0.5, abs=0.01), name


@pytest_twisted.ensureDeferred
async def test_greeting_uploads_that_are_refused(api: Harness) -> None:
    path = "/api/voicemail/1001/greeting"
    good = wav.encode_wav(s16(tone(500.0, 0.5)))
    for content_type in ("application/json", "audio/mpeg", "application/octet-stream", None):
        response, content = await api.request("PUT", path, data=good, content_type=content_type)
        assert response.code == 415, content_type
        assert "audio/wav" in assert_error(content)["error"]
    response, content = await api.request("PUT", path, body={"greeting": "x"})
    assert response.code == 415
    cases = {
        b"": "required",
        b"hello, world": "not a WAV",
        good[:30]: "cut short",  # the fmt chunk ends early
        riff(2, 1, 8000, 16, bytes(64)): "unsupported",  # ADPCM
        riff(1, 1, 8000, 16, b""): "no audio",
        riff(1, 1, 4_000_000, 16, bytes(800)): "sample rate",
        riff(1, 1, 44100, 16, bytes(6)): "less than one sample",
        riff(3, 1, 8000, 32, struct.pack("<2f", float("nan"), 0.5)): "not a WAV",
    }
    for data, reason in cases.items():
        response, content = await api.request("PUT", path, data=data, content_type=WAV)
        assert response.code == 400, (data[:40], content)
        assert reason in assert_error(content)["error"], (reason, content)
    response, content = await api.request("PUT", "/api/voicemail/9999/greeting", data=good, content_type=WAV)
    assert response.code == 404
    response, content = await api.request("PUT", path, data=good, content_type=WAV, token=None)
    assert response.code == 401
    assert await api.pbx.voicemail.greeting_path("1001") is None, "nothing was saved"


@pytest_twisted.ensureDeferred
async def test_greeting_length_and_size_limits(api: Harness) -> None:
    path = "/api/voicemail/1001/greeting"
    with_max_greeting(api, 2)
    two_seconds = riff(7, 1, 8000, 8, g711.encode_ulaw(s16(tone(500.0, 2.0))))
    await api.json("PUT", path, 204, data=two_seconds, content_type=WAV)
    longer = riff(7, 1, 8000, 8, g711.encode_ulaw(s16(tone(500.0, 2.5))))
    response, content = await api.request("PUT", path, data=longer, content_type=WAV)
    assert response.code == 400
    assert assert_error(content)["error"] == "the greeting lasts 2.5 s, longer than the 2 s allowed"
    # Uploads may exceed the JSON body limit (a minute of 48 kHz stereo WAV is 11 MB), up to MAX_UPLOAD.
    too_big = wav.encode_wav(bytes(MAX_UPLOAD + 2))
    response, content = await api.request("PUT", path, data=too_big, content_type=WAV)
    assert response.code == 413
    assert str(MAX_UPLOAD) in assert_error(content)["error"]
    response, content = await api.request("GET", path)
    assert len(wav.decode_wav(content)[2]) == 16000, "the accepted greeting is still there"


@pytest_twisted.ensureDeferred
async def test_greetings_may_last_a_minute_unless_configured_otherwise(api: Harness) -> None:
    """voicemail.max_greeting_duration, 60 s by default."""
    path = "/api/voicemail/1001/greeting"
    minute = riff(7, 1, 8000, 8, bytes([0xFF]) * 8000 * 60)
    longer = riff(7, 1, 8000, 8, bytes([0xFF]) * (8000 * 60 + 800))
    assert api.pbx.config.voicemail.max_greeting_duration == 60
    await api.json("PUT", path, 204, data=minute, content_type=WAV)
    response, content = await api.request("PUT", path, data=longer, content_type=WAV)
    assert response.code == 400
    assert assert_error(content)["error"] == "the greeting lasts 60.1 s, longer than the 60 s allowed"


def test_greeting_pcm_checks_the_length_before_converting() -> None:
    minute = wav.encode_wav(bytes(2 * 8000 * 60))
    assert greeting_pcm(minute, 60) == bytes(2 * 8000 * 60)
    # Ten minutes at 48 kHz would take a while to resample: refused at once.
    with pytest.raises(GreetingError, match="600.0 s, longer than the 60 s allowed"):
        greeting_pcm(riff(1, 1, 48000, 16, bytes(2 * 48000 * 600)), 60)


@settings(max_examples=300, deadline=None, database=None)
@given(st.binary(max_size=64), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1),
       st.sampled_from([0, 1, 4, 8, 16, 24, 32, 64]))
def test_greeting_decoding_fails_only_with_a_reason(payload: bytes, fmt: int, channels: int, rate: int,
                                                     bits: int) -> None:
    """Whatever the header claims, an upload is converted or refused with GreetingError, never a crash."""
    for data in (payload, riff(fmt, channels, rate, bits, payload), riff(fmt, channels, rate, bits, payload)[:40]):
        try:
            pcm = greeting_pcm(data, 60)
        except GreetingError as error:
            assert str(error)
        else:
            assert pcm and len(pcm) % 2 == 0


@pytest_twisted.ensureDeferred
async def test_greeting_is_not_taken_for_a_message_id(api: Harness) -> None:
    for method, allow in (("PATCH", "DELETE, GET, PUT"), ("POST", "DELETE, GET, PUT")):
        response, content = await api.request(method, "/api/voicemail/1001/greeting", body={"heard": True})
        assert response.code == 405, method
        assert header(response, "allow") == allow
    message, _ = await deposit(api, "1001")
    response, _ = await api.request("PUT", f"/api/voicemail/1001/{message.id}", data=b"x", content_type=WAV)
    assert response.code == 405


# ---------------------------------------------------------------------------
# the group as a whole


@pytest_twisted.ensureDeferred
async def test_voicemail_routes_wait_for_the_pbx_and_for_a_store(api: Harness) -> None:
    api.pbx.core.ready = False
    try:
        response, content = await api.request("GET", "/api/voicemail/1001")
        assert response.code == 503 and header(response, "retry-after") == "1"
    finally:
        api.pbx.core.ready = True
    store, api.pbx.voicemail = api.pbx.voicemail, None
    try:
        response, content = await api.request("GET", "/api/voicemail/1001")
        assert response.code == 503
        assert assert_error(content)["error"] == "voicemail is not enabled (voicemail.enabled)"
    finally:
        api.pbx.voicemail = store
    config = api.pbx.config
    api.pbx.config = dataclasses.replace(config, voicemail=dataclasses.replace(config.voicemail, enabled=False))
    try:
        response, content = await api.request("GET", "/api/voicemail/1001")
        assert response.code == 503, "mailboxes are not served while voicemail is off"
    finally:
        api.pbx.config = config


@pytest_twisted.ensureDeferred
async def test_a_browser_may_upload_a_greeting_after_a_preflight(tmp_path: Path) -> None:
    origin = "https://admin.example.org"
    harness = Harness(tmp_path, cors=[origin])
    await harness.start()
    try:
        response, content = await harness.request(
            "OPTIONS", "/api/voicemail/1001/greeting", token=None,
            headers={"Origin": origin, "Access-Control-Request-Method": "PUT"})
        assert response.code == 204, content
        assert header(response, "access-control-allow-methods") == "DELETE, GET, PUT"
        assert header(response, "access-control-allow-origin") == origin
    finally:
        await harness.stop()


@pytest_twisted.ensureDeferred
async def test_changes_are_logged_without_the_audio_or_the_token(api: Harness) -> None:
    from test_api import TOKEN

    message, _ = await deposit(api, "1001")
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        await api.json("PATCH", f"/api/voicemail/1001/{message.id}", 200, body={"heard": True})
        await api.json("PUT", "/api/voicemail/1001/greeting", 204, data=wav.encode_wav(s16(tone(300.0, 0.5))),
                       content_type=WAV)
        await api.json("DELETE", f"/api/voicemail/1001/{message.id}", 204)
    finally:
        globalLogPublisher.removeObserver(events.append)
    ours = [e for e in events if e.get("log_namespace") == "pbx.api.voicemail.VoicemailRoutes"]
    assert {(e.get("mailbox"), e.get("message_id")) for e in ours} == {("1001", message.id), ("1001", None)}
    assert TOKEN not in repr(events)


@pytest_twisted.ensureDeferred
async def test_generated_patch_bodies_answer_200_or_400(api: Harness) -> None:
    message, _ = await deposit(api, "1001")
    fields = st.one_of(st.booleans(), st.none(), st.integers(), st.text(max_size=5))
    bodies = st.one_of(
        st.fixed_dictionaries({}, optional={"heard": fields, "saved": fields}),
        st.dictionaries(st.text(max_size=6), fields, max_size=3),
        st.lists(st.booleans(), max_size=2), st.booleans(), st.none(),
    )

    async def send(body: Any) -> tuple[int, bytes]:
        response, content = await api.request("PATCH", f"/api/voicemail/1001/{message.id}",
                                              data=json.dumps(body).encode(), content_type="application/json")
        return response.code, content

    @settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(bodies)
    def run(body: Any) -> None:
        code, content = threads.blockingCallFromThread(reactor, lambda: ensureDeferred(send(body)))
        valid = (isinstance(body, dict) and body and set(body) <= {"heard", "saved"}
                 and all(isinstance(v, bool) for v in body.values()))
        assert code == (200 if valid else 400), (body, code, content)
        if valid:
            answer = json.loads(content)
            for name, value in body.items():
                assert answer[name] is value

    await threads.deferToThread(run)
