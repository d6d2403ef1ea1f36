"""pbx.integrations.outbox on a real temporary SQLite database (schema step 3)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock, deferLater
from twisted.logger import globalLogPublisher

from pbx.integrations.http import UpstreamError, UpstreamTimeout
from pbx.integrations.outbox import DropItem, Outbox, is_permanent
from pbx.store.db import MIGRATIONS, Database

T0 = 1_700_000_000.0


async def open_db(path: Path) -> Database:
    db = Database(str(path))
    assert await db.open() == len(MIGRATIONS) >= 3
    return db


async def rows(db: Database) -> list[tuple]:
    return await db.run_query("SELECT id, kind, payload, attempts, next_attempt, last_error FROM outbox ORDER BY id")


def clock_at(t: float = T0) -> Clock:
    clock = Clock()
    clock.advance(t)
    return clock


class Deliverer:
    def __init__(self, fail_times: int = 0, error: Exception | None = None) -> None:
        self.payloads: list[dict] = []
        self.fail_times = fail_times
        self.error = error or UpstreamTimeout("Demo", "no answer")

    async def __call__(self, payload: dict) -> None:
        self.payloads.append(payload)
        if self.fail_times:
            self.fail_times -= 1
            raise self.error


@pytest_twisted.async_yield_fixture
async def db(tmp_path: Path):
    database = await open_db(tmp_path / "pbx.db")
    yield database
    database.close()


@pytest_twisted.ensureDeferred
async def test_enqueue_persists_before_it_fires(db: Database) -> None:
    outbox = Outbox(db, clock_at())
    item = await outbox.enqueue("matrix.notice", {"room": "!r:x", "text": "hi", "txn_id": "t1"})
    stored = await rows(db)
    assert [(r[0], r[1], json.loads(r[2]), r[3], r[4]) for r in stored] == [
        (item, "matrix.notice", {"room": "!r:x", "text": "hi", "txn_id": "t1"}, 0, T0)]
    assert await outbox.count() == 1


@pytest_twisted.ensureDeferred
async def test_a_payload_that_is_not_json_is_refused(db: Database) -> None:
    outbox = Outbox(db, clock_at())
    with pytest.raises(ValueError, match="not JSON"):
        await outbox.enqueue("x", {"when": object()})
    assert await rows(db) == []


@pytest_twisted.ensureDeferred
async def test_delivery_deletes_the_item(db: Database) -> None:
    outbox = Outbox(db, clock_at())
    deliver = Deliverer()
    outbox.register("k", deliver)
    await outbox.enqueue("k", {"n": 1})
    await outbox.enqueue("k", {"n": 2})
    assert await outbox.deliver_due() == 2
    assert deliver.payloads == [{"n": 1}, {"n": 2}]
    assert await rows(db) == []
    assert outbox.stats["delivered"] == 2


@pytest_twisted.ensureDeferred
async def test_failure_reschedules_with_exponential_backoff_and_reuses_the_payload(db: Database) -> None:
    clock = clock_at()
    outbox = Outbox(db, clock, retry_base=5.0, retry_max=30.0)
    deliver = Deliverer(fail_times=5)
    outbox.register("k", deliver)
    await outbox.enqueue("k", {"txn_id": "same"})
    expected_delays = [5.0, 10.0, 20.0, 30.0, 30.0]
    for attempt, delay in enumerate(expected_delays, start=1):
        assert await outbox.deliver_due() == 0
        (_, _, _, attempts, next_attempt, last_error), = await rows(db)
        assert attempts == attempt
        assert next_attempt == pytest.approx(clock.seconds() + delay)
        assert last_error == "no answer"
        clock.advance(delay - 0.5)
        assert await outbox.deliver_due() == 0  # not due yet: not even tried
        assert len(deliver.payloads) == attempt
        clock.advance(0.5)
    assert await outbox.deliver_due() == 1
    assert await rows(db) == []
    assert deliver.payloads == [{"txn_id": "same"}] * 6


@pytest_twisted.ensureDeferred
async def test_permanent_failures_are_deleted_and_logged(db: Database) -> None:
    outbox = Outbox(db, clock_at())
    outbox.register("bad-request", Deliverer(fail_times=1, error=UpstreamError("Demo", "no", status=400)))
    outbox.register("dropped", Deliverer(fail_times=1, error=DropItem("never")))
    outbox.register("unauthorized", Deliverer(fail_times=1, error=UpstreamError("Demo", "key", status=401)))
    for kind in ("bad-request", "dropped", "unauthorized"):
        await outbox.enqueue(kind, {})
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        await outbox.deliver_due()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert [r[1] for r in await rows(db)] == ["unauthorized"]  # may be fixed by the configuration: kept
    assert sum("cannot be delivered" in str(e.get("log_format")) for e in events) == 2
    assert is_permanent(UpstreamError("x", status=404)) and not is_permanent(UpstreamError("x", status=503))
    assert not is_permanent(UpstreamError("x", status=429)) and not is_permanent(UpstreamError("x"))


@pytest_twisted.ensureDeferred
async def test_items_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "pbx.db"
    first = await open_db(path)
    clock = clock_at()
    outbox = Outbox(first, clock)
    outbox.register("k", Deliverer(fail_times=2))
    await outbox.enqueue("k", {"n": 1})
    await outbox.enqueue("k", {"n": 2})
    assert await outbox.deliver_due() == 0  # both fail: rescheduled
    assert [r[3] for r in await rows(first)] == [1, 1]
    first.close()

    second = await open_db(path)
    try:
        clock = clock_at(T0 + 3600)
        again = Outbox(second, clock)
        deliver = Deliverer()
        again.register("k", deliver)
        assert await again.deliver_due() == 2
        assert deliver.payloads == [{"n": 1}, {"n": 2}]
        assert await rows(second) == []
    finally:
        second.close()


@pytest_twisted.ensureDeferred
async def test_bounded_the_oldest_are_dropped_and_counted(db: Database) -> None:
    outbox = Outbox(db, clock_at(), max_items=3)
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        for n in range(5):
            await outbox.enqueue("k", {"n": n})
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert [json.loads(r[2])["n"] for r in await rows(db)] == [2, 3, 4]
    drops = [e for e in events if "dropped the {count} oldest" in str(e.get("log_format"))]
    assert [e["count"] for e in drops] == [1, 1]
    assert outbox.stats["dropped"] == 2


@pytest_twisted.ensureDeferred
async def test_kinds_without_a_deliverer_wait(db: Database) -> None:
    outbox = Outbox(db, clock_at())
    deliver = Deliverer()
    outbox.register("known", deliver)
    await outbox.enqueue("unknown", {"n": 1})
    await outbox.enqueue("known", {"n": 2})
    assert await outbox.deliver_due() == 1
    assert [r[1] for r in await rows(db)] == ["unknown"]


@pytest_twisted.ensureDeferred
async def test_a_timer_service_drives_delivery_on_the_injected_clock(db: Database) -> None:
    clock = clock_at()
    outbox = Outbox(db, clock)
    delivered: list[dict] = []

    def deliver(payload: dict) -> Deferred[None]:  # a Deferred-returning deliverer works too
        delivered.append(payload)
        return succeed(None)

    outbox.register("k", deliver)
    service = outbox.timer_service(1.0)
    service.startService()
    try:
        await outbox.enqueue("k", {"n": 1})
        await settle()
        assert delivered == []  # the first tick ran at start, before the item existed
        clock.advance(1.0)
        await settle()
        assert delivered == [{"n": 1}]
        assert await rows(db) == []
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_stop_cancels_deliveries_in_flight_and_keeps_their_items(db: Database) -> None:
    outbox = Outbox(db, clock_at())
    waiting: list[Deferred[None]] = []

    def deliver(payload: dict) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        waiting.append(d)
        return d

    outbox.register("k", deliver)
    await outbox.enqueue("k", {"n": 1})
    run = outbox.deliver_due()
    await settle()
    assert len(waiting) == 1
    assert outbox.deliver_due().result == 0  # a run in progress: no second one
    outbox.stop()
    assert await run == 0
    assert len(await rows(db)) == 1
    (_, _, _, attempts, _, _), = await rows(db)
    assert attempts == 0


async def settle() -> None:
    for _ in range(5):
        await deferLater(reactor, 0.01, lambda: None)
