"""Tests for pbx.core.cdr (pure) and pbx.store.cdr (a real SQLite file)."""

from __future__ import annotations

import json
import sqlite3
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
import pytest_twisted
from twisted.logger import capturedLogs

from pbx.core.cdr import (
    CAUSES,
    DISPOSITIONS,
    CallRecord,
    cause_for,
    disposition_for,
    iso_utc,
    new_call_id,
)
from pbx.core.events import EventBus
from pbx.store.cdr import CDRRepository
from pbx.store.db import MIGRATIONS, Database

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def record(caller: str = "1001", callee: str = "1002", start: float = T0, **changes: object) -> CallRecord:
    r = CallRecord.begin(f"sip-{uuid.uuid4().hex[:8]}@phone", caller, callee, start, caller_name="Alice")
    for name, value in changes.items():
        setattr(r, name, value)
    return r


def finished(disposition: str = "answered", cause: str = "normal", side: str | None = "caller",
             *, answer: float | None = 5.0, end: float = 65.0, **kw: object) -> CallRecord:
    r = record(**kw)
    if answer is not None:
        r.answer = r.start + answer
        r.answered_by = r.callee
    r.finish(r.start + end, disposition, cause, side)
    return r


# ---------------------------------------------------------------------------
# dispositions and causes


@pytest.mark.parametrize("status, answered, cancelled, disposition, cause", [
    (200, True, False, "answered", "normal"),
    (None, True, False, "answered", "normal"),
    (200, False, False, "answered", "normal"),
    (None, False, True, "cancelled", "caller-cancel"),
    (487, False, True, "cancelled", "caller-cancel"),
    (487, False, False, "cancelled", "caller-cancel"),
    (486, False, True, "cancelled", "caller-cancel"),  # the caller gave up first
    (486, False, False, "busy", "busy"),
    (600, False, False, "busy", "busy"),
    (603, False, False, "missed", "declined"),
    (607, False, False, "missed", "declined"),
    (408, False, False, "missed", "no-answer"),
    (480, False, False, "missed", "no-answer"),
    (None, False, False, "missed", "no-answer"),
    (404, False, False, "failed", "not-found"),
    (604, False, False, "failed", "not-found"),
    (484, False, False, "failed", "not-found"),
    (503, False, False, "failed", "callee-error"),
    (500, False, False, "failed", "callee-error"),
    (488, False, False, "failed", "rejected"),
    (403, False, False, "failed", "rejected"),
])
def test_disposition_table(status: int | None, answered: bool, cancelled: bool,
                           disposition: str, cause: str) -> None:
    assert disposition_for(status, answered, cancelled) == disposition
    assert cause_for(status, answered, cancelled) == cause
    assert disposition in DISPOSITIONS and cause in CAUSES


# ---------------------------------------------------------------------------
# CallRecord


def test_call_ids_are_uuid4_hex() -> None:
    r = record()
    assert len(r.call_id) == 32 and uuid.UUID(hex=r.call_id).version == 4
    assert new_call_id() != new_call_id()
    assert r.caller_name == "Alice" and r.end is None and r.disposition is None


def test_open_record_has_no_duration() -> None:
    r = record(answer=T0 + 3)
    assert (r.duration, r.billable, r.ended) == (None, None, False)


@pytest.mark.parametrize("answer, end, duration, billable", [
    (None, 30.0, 30, 0),
    (5.0, 65.0, 65, 60),
    (0.4, 10.5, 11, 10),      # half up, not banker's rounding
    (2.5, 2.5, 3, 0),         # answered and hung up at once
    (0.2, 0.49, 0, 0),
    (0.6, 10.4, 10, 10),      # 9.8 -> 10: rounding never makes billable exceed duration
])
def test_duration_and_billable(answer: float | None, end: float, duration: int, billable: int) -> None:
    r = finished(answer=answer, end=end)
    assert (r.duration, r.billable) == (duration, billable)
    assert r.billable <= r.duration


def test_finish_once() -> None:
    r = finished("answered", "normal", "caller")
    assert not r.finish(T0 + 999, "failed", "restart", "pbx")
    assert (r.end, r.disposition, r.hangup_cause, r.hangup_side) == (T0 + 65, "answered", "normal", "caller")


def test_answered_without_answer_time_is_failed() -> None:
    r = record()
    assert r.finish(T0 + 1, "answered", "normal", "pbx")
    assert r.disposition == "failed" and r.billable == 0


def test_interrupted_answered_call_may_be_failed() -> None:
    r = finished("failed", "restart", "pbx", answer=10.0, end=70.0)
    assert (r.disposition, r.billable) == ("failed", 60)


def test_finish_never_raises_and_logs_bad_values() -> None:
    r = record()
    with capturedLogs() as events:
        assert r.finish(T0 + 3, "exploded", "", "nobody")
    assert (r.disposition, r.hangup_cause, r.hangup_side) == ("failed", "unknown", None)
    texts = [e["log_format"] for e in events]
    assert any("unknown disposition" in t for t in texts) and any("unknown hangup side" in t for t in texts)
    assert all(e.get("call_id") == r.call_id for e in events)


def test_times_are_kept_in_order() -> None:
    r = record(answer=T0 - 5)
    r.finish(T0 - 10, "answered", "normal", "callee")
    assert r.start == r.answer == r.end == T0
    assert (r.duration, r.billable) == (0, 0)
    r = record()
    r.finish(float("nan"), "missed", "no-answer", "pbx")
    assert r.end == T0


def test_as_event_is_json_friendly() -> None:
    r = record(start=T0 + 0.25)
    event = r.as_event()
    assert event["start"] == "2023-11-14T22:13:20.250Z"
    assert event["answer"] is None and event["end"] is None and event["duration"] is None
    r.answer, r.answered_by = T0 + 2, "1002"
    r.finish(T0 + 62, "answered", "normal", "callee")
    event = r.as_event()
    assert json.loads(json.dumps(event)) == event
    assert event == {
        "call_id": r.call_id, "sip_call_id": r.sip_call_id, "caller": "1001", "caller_name": "Alice",
        "callee": "1002", "answered_by": "1002",
        "start": "2023-11-14T22:13:20.250Z", "answer": "2023-11-14T22:13:22.000Z",
        "end": "2023-11-14T22:14:22.000Z", "duration": 62, "billable": 60,
        "disposition": "answered", "hangup_cause": "normal", "hangup_side": "callee",
    }  # fmt: skip


def test_as_event_fields_can_be_emitted() -> None:
    bus, seen = EventBus(), []
    bus.subscribe("call.ended", lambda name, fields: seen.append(fields))
    r = finished()
    bus.emit("call.ended", **r.as_event(), media={"packets": 1})
    assert seen[0]["call_id"] == r.call_id and seen[0]["media"] == {"packets": 1}


def test_iso_utc() -> None:
    assert iso_utc(None) is None
    assert iso_utc(0) == "1970-01-01T00:00:00.000Z"
    parsed = datetime.fromisoformat(iso_utc(T0).replace("Z", "+00:00"))  # type: ignore[union-attr]
    assert parsed == datetime.fromtimestamp(T0, timezone.utc)


def test_dict_round_trip_ignores_unknown_keys() -> None:
    r = finished()
    assert CallRecord.from_dict(r.as_dict()) == r
    data = dict(record().as_dict(), future_field=1)
    loaded = CallRecord.from_dict(data)
    assert loaded.caller == "1001" and not hasattr(loaded, "future_field")


# ---------------------------------------------------------------------------
# the repository, against a real SQLite file


async def open_db(tmp_path: Path) -> Database:
    db = Database(str(tmp_path / "x.db"))
    assert await db.open() == len(MIGRATIONS)
    return db


async def open_rows(db: Database) -> dict[str, CallRecord]:
    rows = await db.run_query("SELECT call_id, record FROM calls_open")
    return {call_id: CallRecord.from_dict(json.loads(text)) for call_id, text in rows}


@pytest_twisted.ensureDeferred
async def test_call_life_open_update_close(tmp_path: Path) -> None:
    db = await open_db(tmp_path)
    try:
        repo = CDRRepository(db)
        r = record()
        await repo.open_call(r)
        assert await open_rows(db) == {r.call_id: r}
        r.answer, r.answered_by = T0 + 4, "1002"
        await repo.update_open(r)
        assert (await open_rows(db))[r.call_id].answer == T0 + 4
        r.finish(T0 + 34, "answered", "normal", "caller")
        await repo.close_call(r)
        assert await open_rows(db) == {}
        assert await repo.get(r.call_id) == r
        rows = await db.run_query("SELECT duration, billable FROM cdr WHERE call_id = ?", (r.call_id,))
        assert rows == [(34, 30)]
        assert await repo.get("nope") is None
    finally:
        db.close()


@pytest_twisted.ensureDeferred
async def test_writes_are_snapshots_taken_at_call_time(tmp_path: Path) -> None:
    db = await open_db(tmp_path)
    try:
        repo = CDRRepository(db)
        r = record()
        d = repo.open_call(r)
        r.answer = T0 + 1  # the B2BUA goes on before the database thread writes
        await d
        assert (await open_rows(db))[r.call_id].answer is None
    finally:
        db.close()


@pytest_twisted.ensureDeferred
async def test_late_update_does_not_reopen_a_closed_call(tmp_path: Path) -> None:
    db = await open_db(tmp_path)
    try:
        repo = CDRRepository(db)
        r = finished()
        await repo.open_call(r)
        await repo.close_call(r)
        await repo.update_open(r)
        await repo.open_call(r)
        assert await open_rows(db) == {}
        assert await repo.recover(T0 + 1000) == []
        assert await repo.get(r.call_id) == r
    finally:
        db.close()


@pytest_twisted.ensureDeferred
async def test_close_needs_a_finished_record(tmp_path: Path) -> None:
    db = await open_db(tmp_path)
    try:
        repo = CDRRepository(db)
        r = record()
        await repo.open_call(r)
        with pytest.raises(ValueError, match="finished record"):
            await repo.close_call(r)
        assert r.call_id in await open_rows(db)  # still open: recover will record it
    finally:
        db.close()


@pytest_twisted.ensureDeferred
async def test_recover_closes_every_open_call(tmp_path: Path) -> None:
    db = await open_db(tmp_path)
    try:
        repo = CDRRepository(db)
        ringing = record(callee="1003")
        talking = record(start=T0 + 10, answer=T0 + 15, answered_by="1002")
        done = record(start=T0 + 20, answer=T0 + 22, answered_by="1002")
        for r in (ringing, talking, done):
            await repo.open_call(r)
        done.finish(T0 + 40, "answered", "normal", "callee")
        await repo.update_open(done)  # finished, but the PBX died before close_call
        await db.run_query(
            "INSERT INTO calls_open (call_id, record, start_time, updated_at) VALUES (?, ?, ?, ?)",
            ("broken", "{not json", T0 + 30, T0 + 31))
        now = T0 + 100
        with capturedLogs() as events:
            recovered = await repo.recover(now)
        assert [r.call_id for r in recovered] == [ringing.call_id, talking.call_id, done.call_id, "broken"]
        by_id = {r.call_id: r for r in recovered}
        assert (by_id[ringing.call_id].disposition, by_id[ringing.call_id].hangup_cause,
                by_id[ringing.call_id].hangup_side, by_id[ringing.call_id].end) == ("failed", "restart", "pbx", now)
        assert by_id[ringing.call_id].billable == 0 and by_id[ringing.call_id].duration == 100
        assert (by_id[talking.call_id].disposition, by_id[talking.call_id].billable) == ("failed", 85)
        assert by_id[done.call_id] == done  # its real outcome is kept
        assert (by_id["broken"].start, by_id["broken"].disposition) == (T0 + 30, "failed")
        assert any(e.get("call_id") == "broken" for e in events)
        assert await open_rows(db) == {}
        assert await repo.count() == 4
        for r in recovered:
            assert await repo.get(r.call_id) == r
        assert await repo.recover(now + 1) == []
    finally:
        db.close()


@pytest_twisted.ensureDeferred
async def test_records_survive_reopening_the_database(tmp_path: Path) -> None:
    db = await open_db(tmp_path)
    repo = CDRRepository(db)
    closed, left_open = finished(), record()
    await repo.close_call(closed)
    await repo.open_call(left_open)
    db.close()
    db = await open_db(tmp_path)
    try:
        repo = CDRRepository(db)
        (recovered,) = await repo.recover(T0 + 50)
        assert recovered.call_id == left_open.call_id
        assert await repo.get(closed.call_id) == closed
    finally:
        db.close()


@pytest_twisted.ensureDeferred
async def test_list_and_count_filters(tmp_path: Path) -> None:
    db = await open_db(tmp_path)
    try:
        repo = CDRRepository(db)
        a = finished(caller="1001", callee="1002", start=T0)
        b = finished("missed", "no-answer", "pbx", answer=None, caller="1002", callee="1003", start=T0 + 60)
        c = finished("busy", "busy", "callee", answer=None, caller="1003", callee="1001", start=T0 + 120)
        g = finished(caller="1003", callee="2000", start=T0 + 180)
        g.answered_by = "1001"  # a group call a member answered
        for r in (a, b, c, g):
            await repo.close_call(r)

        def ids(records: list[CallRecord]) -> list[str]:
            return [r.call_id for r in records]

        assert ids(await repo.list()) == ids([g, c, b, a])  # newest first
        assert ids(await repo.list(extension="1001")) == ids([g, c, a])  # caller, callee or answered_by
        assert ids(await repo.list(extension="1002")) == ids([b, a])
        assert ids(await repo.list(since=T0 + 60)) == ids([g, c, b])
        assert ids(await repo.list(until=T0 + 60)) == ids([a])
        assert ids(await repo.list(since=datetime.fromtimestamp(T0 + 60, timezone.utc),
                                   until=datetime.fromtimestamp(T0 + 180, timezone.utc))) == ids([c, b])
        assert ids(await repo.list(disposition="missed")) == ids([b])
        assert ids(await repo.list(extension="1003", disposition="answered")) == ids([g])
        assert ids(await repo.list(limit=2)) == ids([g, c])
        assert ids(await repo.list(limit=2, offset=2)) == ids([b, a])
        assert await repo.list(limit=0) == []
        assert await repo.count() == 4
        assert await repo.count(extension="1001") == 3
        assert await repo.count(extension="1001", since=T0 + 1) == 2
        assert await repo.count(disposition="busy") == 1
        assert await repo.count(extension="9999") == 0
        (stored,) = await repo.list(disposition="busy")
        assert stored == c
    finally:
        db.close()


@pytest_twisted.ensureDeferred
async def test_list_rejects_bad_arguments(tmp_path: Path) -> None:
    db = await open_db(tmp_path)
    try:
        repo = CDRRepository(db)
        with pytest.raises(ValueError, match="disposition"):
            await repo.list(disposition="lost")
        with pytest.raises(ValueError, match="disposition"):
            await repo.count(disposition="lost")
        with pytest.raises(ValueError, match="limit"):
            await repo.list(limit=-1)
        with pytest.raises(ValueError, match="offset"):
            await repo.list(offset=True)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="time zone"):
            await repo.list(since=datetime(2024, 1, 1))
        with pytest.raises(ValueError, match="until"):
            await repo.count(until="yesterday")  # type: ignore[arg-type]
    finally:
        db.close()


@pytest_twisted.ensureDeferred
async def test_migration_from_version_1_keeps_rows(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    connection = sqlite3.connect(path)
    for statement in MIGRATIONS[0]:
        connection.execute(statement)
    connection.execute(
        "INSERT INTO extensions (number, name, realm, ha1_md5, ha1_sha256, updated_at) "
        "VALUES ('1001', 'Alice', 'pbx', 'md5', 'sha', 1.0)")
    connection.execute(
        "INSERT INTO bindings (aor, contact, expires_at, call_id, cseq, source_host, source_port, transport) "
        "VALUES ('1001', '<sip:1001@192.0.2.1>', 9e9, 'cid', 1, '192.0.2.1', 5060, 'UDP')")
    connection.execute("PRAGMA user_version = 1")
    connection.commit()
    connection.close()

    db = Database(str(path))
    assert await db.open() == len(MIGRATIONS) >= 2
    try:
        assert await db.run_query("SELECT number, name FROM extensions") == [("1001", "Alice")]
        assert await db.run_query("SELECT aor, contact FROM bindings") == [("1001", "<sip:1001@192.0.2.1>")]
        assert (await db.run_query("PRAGMA user_version"))[0][0] == len(MIGRATIONS)
        tables = {name for (name,) in await db.run_query("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"cdr", "calls_open"} <= tables
        indexes = {name for (name,) in await db.run_query(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'cdr'")}
        assert {"cdr_start", "cdr_caller", "cdr_callee", "cdr_disposition"} <= indexes
        repo = CDRRepository(db)
        await repo.close_call(finished())
        assert await repo.count() == 1
    finally:
        db.close()


@pytest_twisted.ensureDeferred
async def test_writes_are_committed_in_groups(tmp_path: Path) -> None:
    from twisted.internet.task import Clock

    db = await open_db(tmp_path)
    try:
        clock = Clock()
        repo = CDRRepository(db, clock, batch_delay=0.05)
        first, second = record(), record(callee="1003")
        opened = [repo.open_call(first), repo.open_call(second)]
        assert not any(d.called for d in opened)
        assert await open_rows(db) == {}, "nothing is written before the batch is due"
        clock.advance(0.05)
        for d in opened:
            await d
        assert set(await open_rows(db)) == {first.call_id, second.call_id}
        # One failing write (a record that cannot be stored) loses nothing else.
        first.finish(T0 + 10, "answered", "normal", "caller")
        broken = record()
        broken.finish(T0 + 10, "answered", "normal", "caller")
        broken.caller = None  # violates NOT NULL
        closes = [repo.close_call(first), repo.close_call(broken)]
        await repo.flush()  # shut-down: no need to wait for the clock
        await closes[0]
        with pytest.raises(sqlite3.IntegrityError):
            await closes[1]
        assert await repo.count() == 1 and set(await open_rows(db)) == {second.call_id}
        assert not clock.getDelayedCalls(), "flush cancelled the pending batch"
    finally:
        db.close()


@pytest_twisted.ensureDeferred
async def test_one_batch_writes_an_open_call_once_with_its_newest_state(tmp_path: Path, monkeypatch) -> None:
    from twisted.internet.task import Clock

    import pbx.store.cdr as store

    written = []
    write_open = store._write_open

    def counted(cursor, *row):
        written.append(row[0])
        write_open(cursor, *row)

    monkeypatch.setattr(store, "_write_open", counted)
    db = await open_db(tmp_path)
    try:
        clock = Clock()
        repo = CDRRepository(db, clock, batch_delay=0.05)
        r = record()
        opened = repo.open_call(r)
        r.answer, r.answered_by = T0 + 1, "1002"  # the callee answered before the batch was due
        updated = repo.update_open(r)
        clock.advance(0.05)
        await opened
        await updated
        assert written == [r.call_id], "one row written, not two"
        assert (await open_rows(db))[r.call_id].answered_by == "1002"
        later = repo.update_open(r)  # a later batch writes again
        clock.advance(0.05)
        await later
        assert written == [r.call_id, r.call_id]
    finally:
        db.close()


@pytest_twisted.ensureDeferred
async def test_a_call_closed_in_the_batch_of_its_updates_stays_closed(tmp_path: Path) -> None:
    from twisted.internet.task import Clock

    db = await open_db(tmp_path)
    try:
        clock = Clock()
        repo = CDRRepository(db, clock, batch_delay=0.05)
        r = record()
        writes = [repo.open_call(r)]
        r.finish(T0 + 3, "cancelled", "caller-cancel", "caller")
        writes += [repo.close_call(r), repo.update_open(r)]  # a late update queues after the close
        await repo.flush()
        for d in writes:
            await d
        assert await open_rows(db) == {}
        assert await repo.get(r.call_id) == r
    finally:
        db.close()


@pytest_twisted.ensureDeferred
async def test_a_record_that_cannot_be_serialised_fails_alone(tmp_path: Path) -> None:
    from twisted.internet.task import Clock

    db = await open_db(tmp_path)
    try:
        clock = Clock()
        repo = CDRRepository(db, clock, batch_delay=0.05)
        good, bad = record(), record(callee="1003")
        writes = [repo.open_call(good), repo.open_call(bad), repo.update_open(bad)]
        bad.caller_name = object()  # not JSON
        await repo.flush()
        await writes[0]
        for d in writes[1:]:
            with pytest.raises(TypeError):
                await d
        assert set(await open_rows(db)) == {good.call_id}
    finally:
        db.close()
