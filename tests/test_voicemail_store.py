"""pbx.apps.mailbox.VoicemailStore and pbx.store.voicemail on a real SQLite file (schema step 4)."""

from __future__ import annotations

import math
import os
import sqlite3
from array import array
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from pbx.apps.mailbox import VoicemailStore, check_mailbox
from pbx.core.events import EventBus
from pbx.media.wav import RATE, read_wav
from pbx.store.db import MIGRATIONS, Database
from pbx.store.voicemail import MailboxChange, VoicemailMessage, VoicemailRepository

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def tone(seconds: float, frequency: float = 440.0) -> bytes:
    count = int(seconds * RATE)
    samples = array("h", (int(8000 * math.sin(2 * math.pi * frequency * i / RATE)) for i in range(count)))
    if array("h", [1]).tobytes() != b"\x01\x00":
        samples.byteswap()
    return samples.tobytes()


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


class Events:
    def __init__(self, bus: EventBus) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        for name in ("voicemail.new", "voicemail.changed"):
            bus.subscribe(name, lambda event, fields: self.seen.append((event, dict(fields))))

    def named(self, name: str) -> list[dict[str, Any]]:
        return [fields for event, fields in self.seen if event == name]


class Env:
    def __init__(self, tmp_path: Path, db: Database, repository: Any = None, **kw: Any) -> None:
        self.root = tmp_path / "spool"
        self.db = db
        self.clock = Clock()
        self.clock.advance(T0)
        self.bus = EventBus()
        self.events = Events(self.bus)
        self.repository = repository or VoicemailRepository(db)
        self.store = VoicemailStore(self.repository, str(self.root), self.clock, self.bus, **kw)

    async def rows(self) -> list[tuple]:
        return await self.db.run_query("SELECT id, mailbox, file, heard, saved FROM voicemail_messages ORDER BY id")


@pytest_twisted.async_yield_fixture
async def db(tmp_path: Path):
    database = Database(str(tmp_path / "pbx.db"))
    assert await database.open() == len(MIGRATIONS) >= 4
    yield database
    database.close()


@pytest.fixture
def env(tmp_path: Path, db: Database) -> Env:
    return Env(tmp_path, db)


# ---------------------------------------------------------------------------
# schema


@pytest_twisted.ensureDeferred
async def test_schema_has_the_voicemail_tables(db: Database) -> None:
    columns = [row[1:4] for row in await db.run_query("PRAGMA table_info(voicemail_messages)")]
    assert columns == [
        ("id", "INTEGER", 0), ("mailbox", "TEXT", 1), ("caller", "TEXT", 1), ("caller_name", "TEXT", 1),
        ("received", "REAL", 1), ("duration", "REAL", 1), ("file", "TEXT", 1), ("heard", "INTEGER", 1),
        ("saved", "INTEGER", 1), ("call_id", "TEXT", 0),
    ]
    indexes = await db.run_query("PRAGMA index_list(voicemail_messages)")
    names = {row[1] for row in indexes}
    assert "voicemail_messages_mailbox" in names
    assert [row[2] for row in await db.run_query("PRAGMA index_info(voicemail_messages_mailbox)")] == [
        "mailbox", "received"]
    greetings = [row[1:4] + (row[5],) for row in await db.run_query("PRAGMA table_info(voicemail_greetings)")]
    assert greetings == [("mailbox", "TEXT", 0, 1), ("file", "TEXT", 1, 0), ("updated", "REAL", 1, 0)]


@pytest_twisted.ensureDeferred
async def test_migration_from_version_3_keeps_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    connection = sqlite3.connect(path)
    for steps in MIGRATIONS[:3]:
        for statement in steps:
            connection.execute(statement)
    connection.execute("INSERT INTO outbox (kind, payload, created_at, next_attempt) VALUES ('k', '{}', 1, 1)")
    connection.execute("PRAGMA user_version = 3")
    connection.commit()
    connection.close()

    db = Database(str(path))
    assert await db.open() == len(MIGRATIONS) >= 4
    try:
        assert await db.run_query("SELECT kind FROM outbox") == [("k",)]
        assert (await db.run_query("PRAGMA user_version"))[0][0] == len(MIGRATIONS)
        assert await db.run_query("SELECT COUNT(*) FROM voicemail_messages") == [(0,)]
        assert await db.run_query("SELECT COUNT(*) FROM voicemail_greetings") == [(0,)]
    finally:
        db.close()


# ---------------------------------------------------------------------------
# deposit


@pytest_twisted.ensureDeferred
async def test_deposit_writes_a_wav_and_a_row(env: Env) -> None:
    pcm = tone(1.5)
    message = await env.store.deposit("1001", "1002", "Bob", pcm, call_id="c-1")
    assert isinstance(message, VoicemailMessage)
    assert (message.mailbox, message.caller, message.caller_name, message.call_id) == ("1001", "1002", "Bob", "c-1")
    assert message.received == T0 and message.duration == 1.5
    assert (message.heard, message.saved) == (False, False)
    path = Path(env.store.audio_path(message))
    assert path.parent == env.root / "1001" and path.suffix == ".wav"
    assert files_under(env.root) == [path]
    assert read_wav(path) == pcm
    assert await env.store.read_audio(message) == pcm
    assert await env.store.get("1001", message.id) == message
    assert await env.store.messages("1001") == [message]
    assert await env.rows() == [(message.id, "1001", message.file, 0, 0)]
    assert not os.path.isabs(message.file)


def test_as_json_has_iso_time_and_no_file() -> None:
    message = VoicemailMessage(7, "1001", "1002", "Bob", T0 + 0.25, 3.5, "1001/x.wav", True, False, None)
    assert message.as_json() == {
        "id": 7, "mailbox": "1001", "caller": "1002", "caller_name": "Bob",
        "received": "2023-11-14T22:13:20.250Z", "duration": 3.5, "heard": True, "saved": False, "call_id": None,
    }


@pytest_twisted.ensureDeferred
async def test_short_messages_are_dropped(tmp_path: Path, db: Database) -> None:
    env = Env(tmp_path, db, min_duration=2.0)
    assert await env.store.deposit("1001", "1002", "", tone(1.9)) is None
    assert await env.store.deposit("1001", "1002", "", b"") is None
    assert files_under(env.root) == []
    assert await env.rows() == []
    assert env.events.seen == []
    assert await env.store.deposit("1001", "1002", "", tone(2.0)) is not None


@pytest_twisted.ensureDeferred
async def test_odd_length_pcm_loses_only_the_half_sample(env: Env) -> None:
    pcm = tone(1.2)
    message = await env.store.deposit("1001", "1002", "", pcm + b"\x01")
    assert message is not None and await env.store.read_audio(message) == pcm


@pytest_twisted.ensureDeferred
async def test_pcm_must_be_bytes(env: Env) -> None:
    with pytest.raises(TypeError, match="pcm"):
        await env.store.deposit("1001", "1002", "", "not audio")  # type: ignore[arg-type]
    assert files_under(env.root) == []


class CheckingRepository(VoicemailRepository):
    """Looks at the file when the row is about to be inserted."""

    def __init__(self, db: Database, root: Path, pcm: bytes) -> None:
        super().__init__(db)
        self.root = root
        self.pcm = pcm
        self.seen: list[str] = []

    def add(self, mailbox: str, caller: str, caller_name: str, received: float, duration: float,
            file: str, call_id: str | None = None) -> Deferred[MailboxChange]:
        path = self.root / file
        assert path.is_file()
        assert read_wav(path) == self.pcm
        assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
        self.seen.append(file)
        return super().add(mailbox, caller, caller_name, received, duration, file, call_id)


@pytest_twisted.ensureDeferred
async def test_the_file_is_complete_before_the_row_is_inserted(tmp_path: Path, db: Database) -> None:
    pcm = tone(1.1)
    repository = CheckingRepository(db, tmp_path / "spool", pcm)
    env = Env(tmp_path, db, repository=repository)
    message = await env.store.deposit("1001", "1002", "Bob", pcm)
    assert message is not None and repository.seen == [message.file]


class FailingRepository(VoicemailRepository):
    def __init__(self, db: Database, root: Path) -> None:
        super().__init__(db)
        self.root = root
        self.files: list[str] = []

    def add(self, mailbox: str, caller: str, caller_name: str, received: float, duration: float,
            file: str, call_id: str | None = None) -> Deferred[MailboxChange]:
        assert (self.root / file).is_file()
        self.files.append(file)
        return self.db.run_query("INSERT INTO no_such_table VALUES (1)")


@pytest_twisted.ensureDeferred
async def test_a_failed_insert_leaves_no_file(tmp_path: Path, db: Database) -> None:
    repository = FailingRepository(db, tmp_path / "spool")
    env = Env(tmp_path, db, repository=repository)
    with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
        await env.store.deposit("1001", "1002", "Bob", tone(1.5))
    assert len(repository.files) == 1
    assert files_under(env.root) == []
    assert env.events.seen == []
    assert await env.rows() == []


@pytest_twisted.ensureDeferred
async def test_deposit_emits_new_and_changed(env: Env) -> None:
    first = await env.store.deposit("1001", "+4930123456", "Carol", tone(2.5), call_id="call-9")
    env.clock.advance(60)
    second = await env.store.deposit("1001", "1002", "", tone(1.0))
    assert first is not None and second is not None
    assert env.events.named("voicemail.new") == [
        {"caller": "+4930123456", "caller_name": "Carol", "mailbox": "1001", "duration": 2.5,
         "message_id": first.id, "received": "2023-11-14T22:13:20.000Z", "call_id": "call-9"},
        {"caller": "1002", "caller_name": "", "mailbox": "1001", "duration": 1.0,
         "message_id": second.id, "received": "2023-11-14T22:14:20.000Z", "call_id": None},
    ]
    assert env.events.named("voicemail.changed") == [
        {"mailbox": "1001", "new": 1, "old": 0}, {"mailbox": "1001", "new": 2, "old": 0}]
    assert [event for event, _ in env.events.seen] == ["voicemail.new", "voicemail.changed"] * 2


@pytest_twisted.ensureDeferred
async def test_a_cancelled_deposit_still_stores_the_message(tmp_path: Path, db: Database) -> None:
    gate: Deferred[None] = Deferred()
    finished: list[Any] = []

    def writer(work: Any, *args: Any) -> Deferred[Any]:
        return gate.addCallback(lambda _: work(*args))

    class Recording(VoicemailRepository):
        def add(self, *args: Any, **kw: Any) -> Deferred[MailboxChange]:
            d = super().add(*args, **kw)
            d.addCallback(lambda change: finished.append(change) or change)
            return d

    env = Env(tmp_path, db, repository=Recording(db), writer=writer)
    d = env.store.deposit("1001", "1002", "Bob", tone(1.5))
    d.cancel()
    with pytest.raises(CancelledError):
        await d
    assert not gate.called  # the write itself was not cancelled
    done: Deferred[None] = Deferred()
    done.addTimeout(10, reactor)  # a guard against hanging, not a wait
    env.bus.subscribe("voicemail.changed", lambda *_: done.callback(None))
    gate.callback(None)
    await done
    assert len(finished) == 1
    assert len(await env.rows()) == 1
    assert len(files_under(env.root)) == 1
    assert env.events.named("voicemail.new")[0]["message_id"] == finished[0].message.id


# ---------------------------------------------------------------------------
# folders, counts, update, delete


@pytest_twisted.ensureDeferred
async def test_counts_update_and_folders(env: Env) -> None:
    store = env.store
    assert await store.counts("1001") == (0, 0)
    a = await store.deposit("1001", "1002", "", tone(1.0))
    env.clock.advance(5)
    b = await store.deposit("1001", "1003", "", tone(1.0))
    await store.deposit("1002", "1001", "", tone(1.0))
    assert a is not None and b is not None
    assert [m.id for m in await store.messages("1001")] == [a.id, b.id]  # oldest first
    assert await store.counts("1001") == (2, 0) and await store.counts("1002") == (1, 0)
    env.events.seen.clear()

    heard = await store.update("1001", b.id, heard=True)
    assert heard is not None and heard.heard and not heard.saved and heard.id == b.id
    assert env.events.named("voicemail.changed") == [{"mailbox": "1001", "new": 1, "old": 1}]
    assert await store.counts("1001") == (1, 1)
    assert [m.id for m in await store.messages("1001", "new")] == [a.id]
    assert [m.id for m in await store.messages("1001", "old")] == [b.id]

    env.events.seen.clear()
    saved = await store.update("1001", b.id, heard=True, saved=True)
    assert saved is not None and saved.saved and saved.heard
    assert await store.update("1001", a.id) == a  # nothing asked: nothing changed
    assert env.events.seen == []  # counts did not change
    assert (await store.get("1001", b.id)) == saved

    assert await store.update("1001", 9999, heard=True) is None
    assert await store.update("1002", a.id, heard=True) is None  # another mailbox's message
    assert (await store.get("1001", a.id)).heard is False  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="heard"):
        await store.update("1001", a.id, heard=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="folder"):
        await store.messages("1001", "saved")


@pytest_twisted.ensureDeferred
async def test_delete_removes_row_then_file(env: Env) -> None:
    store = env.store
    a = await store.deposit("1001", "1002", "", tone(1.0))
    b = await store.deposit("1001", "1003", "", tone(1.0))
    assert a is not None and b is not None
    await store.update("1001", a.id, heard=True)
    env.events.seen.clear()
    assert await store.delete("1002", a.id) is False  # not this mailbox's
    assert os.path.exists(store.audio_path(a))
    assert await store.delete("1001", a.id) is True
    assert not os.path.exists(store.audio_path(a))
    assert os.path.exists(store.audio_path(b))
    assert await store.get("1001", a.id) is None
    assert env.events.named("voicemail.changed") == [{"mailbox": "1001", "new": 1, "old": 0}]
    assert await store.delete("1001", a.id) is False
    assert await store.counts("1001") == (1, 0)


@pytest_twisted.ensureDeferred
async def test_delete_of_a_message_whose_file_is_gone(env: Env) -> None:
    message = await env.store.deposit("1001", "1002", "", tone(1.0))
    assert message is not None
    os.remove(env.store.audio_path(message))
    assert await env.store.delete("1001", message.id) is True
    assert await env.rows() == []


# ---------------------------------------------------------------------------
# mailbox names


BAD_MAILBOXES = ["", "../1001", "1001/../1002", "..", "/etc", "10 01", "abc", "1001\x00", "1001\n", None, 1001]


@pytest.mark.parametrize("mailbox", BAD_MAILBOXES, ids=repr)
def test_check_mailbox_refuses(mailbox: Any) -> None:
    with pytest.raises(ValueError, match="mailbox"):
        check_mailbox(mailbox)


@pytest.mark.parametrize("mailbox", ["1001", "0100", "*97", "#1"])
def test_check_mailbox_accepts(mailbox: str) -> None:
    assert check_mailbox(mailbox) == mailbox


@pytest_twisted.ensureDeferred
async def test_every_method_refuses_bad_mailboxes(env: Env) -> None:
    calls = [
        lambda m: env.store.deposit(m, "1002", "", tone(1.5)),
        lambda m: env.store.messages(m),
        lambda m: env.store.get(m, 1),
        lambda m: env.store.update(m, 1, heard=True),
        lambda m: env.store.delete(m, 1),
        lambda m: env.store.counts(m),
        lambda m: env.store.greeting(m),
        lambda m: env.store.greeting_path(m),
        lambda m: env.store.save_greeting(m, tone(1.0)),
        lambda m: env.store.delete_greeting(m),
    ]
    for mailbox in BAD_MAILBOXES:
        for call in calls:
            with pytest.raises(ValueError, match="mailbox"):
                await call(mailbox)
    assert files_under(env.root) == []
    assert env.events.seen == []


@pytest_twisted.ensureDeferred
async def test_message_ids_must_be_integers(env: Env) -> None:
    for bad in ("1", True, 1.0, None):
        with pytest.raises(ValueError, match="message_id"):
            await env.store.get("1001", bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="message_id"):
            await env.store.delete("1001", bad)  # type: ignore[arg-type]


@pytest_twisted.ensureDeferred
async def test_a_stored_file_name_cannot_leave_the_storage_directory(env: Env) -> None:
    outside = env.root.parent / "secret.wav"
    outside.write_bytes(b"x")
    for file in ("../secret.wav", str(outside), "1001/../../secret.wav"):
        message = VoicemailMessage(1, "1001", "1002", "", T0, 1.0, file, False, False)
        with pytest.raises(ValueError, match="outside"):
            env.store.audio_path(message)
        with pytest.raises(ValueError, match="outside"):
            await env.store.read_audio(message)
    await env.db.run_query(
        "INSERT INTO voicemail_messages (id, mailbox, caller, received, duration, file) "
        "VALUES (5, '1001', '1002', 0, 1, '../secret.wav')")
    with capturedLogs() as events:
        assert await env.store.delete("1001", 5) is True
    assert outside.exists()
    assert any("outside the storage directory" in str(e.get("log_format")) for e in events)


# ---------------------------------------------------------------------------
# greetings


@pytest_twisted.ensureDeferred
async def test_greeting_round_trip(env: Env) -> None:
    store = env.store
    assert await store.greeting("1001") is None
    assert await store.greeting_path("1001") is None
    first = tone(2.0, 300.0)
    await store.save_greeting("1001", first)
    path = await store.greeting_path("1001")
    assert path is not None and Path(path).parent == env.root / "1001"
    assert read_wav(path) == first
    assert await store.greeting("1001") == first
    assert await store.greeting("1002") is None

    second = tone(1.0, 600.0)
    env.clock.advance(10)
    await store.save_greeting("1001", second)
    new_path = await store.greeting_path("1001")
    assert new_path != path and not os.path.exists(path)
    assert await store.greeting("1001") == second
    assert files_under(env.root) == [Path(new_path)]  # type: ignore[arg-type]
    assert await env.db.run_query("SELECT mailbox, updated FROM voicemail_greetings") == [("1001", T0 + 10)]

    assert await store.delete_greeting("1001") is True
    assert await store.greeting("1001") is None
    assert files_under(env.root) == []
    assert await store.delete_greeting("1001") is False
    assert env.events.seen == []  # greetings do not touch the message counts


@pytest_twisted.ensureDeferred
async def test_empty_greeting_is_refused(env: Env) -> None:
    with pytest.raises(ValueError, match="greeting"):
        await env.store.save_greeting("1001", b"")
    assert await env.store.greeting_path("1001") is None


@pytest_twisted.ensureDeferred
async def test_an_unreadable_greeting_falls_back_to_the_default(env: Env) -> None:
    await env.store.save_greeting("1001", tone(1.0))
    path = await env.store.greeting_path("1001")
    assert path is not None
    Path(path).write_bytes(b"not a wav file")
    with capturedLogs() as events:
        assert await env.store.greeting("1001") is None
    assert any(e.get("mailbox") == "1001" and "unreadable" in e.get("log_format", "") for e in events)


class FailingGreetings(VoicemailRepository):
    def set_greeting(self, mailbox: str, file: str, updated: float) -> Deferred[str | None]:
        return maybeDeferred(lambda: 1 / 0)


@pytest_twisted.ensureDeferred
async def test_a_failed_greeting_row_leaves_no_file(tmp_path: Path, db: Database) -> None:
    env = Env(tmp_path, db, repository=FailingGreetings(db))
    with pytest.raises(ZeroDivisionError):
        await env.store.save_greeting("1001", tone(1.0))
    assert files_under(env.root) == []
