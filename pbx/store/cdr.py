"""Call detail records: ``cdr`` (finished calls) and ``calls_open`` (calls up
or ringing), so that no record is lost when the PBX stops abruptly.

A call's life in the store:

- ``open_call`` on the INVITE and ``update_open`` on the answer write the
  record so far (JSON) into ``calls_open``;
- ``close_call`` moves it into ``cdr`` in one transaction;
- ``recover`` at start-up turns whatever is still open into ``cdr`` rows
  (``failed`` / ``restart`` / ``pbx``): a crash costs the call, not its record.

With a clock and a `batch_delay`, the writes of the life of a call are
queued and committed together, one transaction every `batch_delay` seconds
(group commit): three thread hops and commits per call would otherwise
compete with the reactor for the interpreter. Each write keeps its own
Deferred (fired once its batch is committed) and its own savepoint, so one
failing write loses nothing else. `flush()` writes the queue at once
(shut-down).

Records are serialised on the reactor thread: the B2BUA keeps changing its
`CallRecord` while the write waits for the database thread.  Without
batching that happens when the method is called.  With batching, the
``calls_open`` writes of one call queued for the same batch (``open_call``
on the INVITE, ``update_open`` on an answer that came quickly) are one
write, serialised when the batch goes to the database: one row and one JSON
text instead of two, with the newest state.  A write for a call that is
already in ``cdr`` is ignored, so a late ``update_open`` can never bring a
finished call back to life.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from pbx.core.cdr import DISPOSITIONS, CallRecord
from pbx.store.db import Database

__all__ = ["CDRRepository"]

_COLUMNS = (
    "call_id, sip_call_id, caller, callee, start_time, caller_name, answered_by, "
    "answer_time, end_time, disposition, hangup_cause, hangup_side"
)
_INSERT = (
    f"INTO cdr ({_COLUMNS}, duration, billable) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

Records = list[CallRecord]
Moment = float | datetime


def _cdr_row(record: CallRecord) -> tuple[Any, ...]:
    return (
        record.call_id, record.sip_call_id, record.caller, record.callee, record.start,
        record.caller_name or "", record.answered_by, record.answer, record.end,
        record.disposition, record.hangup_cause or "unknown", record.hangup_side,
        record.duration, record.billable,
    )  # fmt: skip


def _from_row(row: tuple[Any, ...]) -> CallRecord:
    return CallRecord(*row)


def _open_row(record: CallRecord) -> tuple[str, str, float, float]:
    updated = max(t for t in (record.start, record.answer, record.end) if t is not None)
    return record.call_id, json.dumps(record.as_dict()), record.start, updated


def _write_open(cursor: Any, call_id: str, text: str, start: float, updated: float) -> None:
    if cursor.execute("SELECT 1 FROM cdr WHERE call_id = ?", (call_id,)).fetchone() is not None:
        return
    cursor.execute(
        "INSERT OR REPLACE INTO calls_open (call_id, record, start_time, updated_at) VALUES (?, ?, ?, ?)",
        (call_id, text, start, updated),
    )


def _write_closed(cursor: Any, row: tuple[Any, ...]) -> None:
    cursor.execute("INSERT OR REPLACE " + _INSERT, row)
    cursor.execute("DELETE FROM calls_open WHERE call_id = ?", (row[0],))


def _epoch(value: Moment, name: str) -> float:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"{name}: a datetime needs a time zone")
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: expected epoch seconds or a datetime, got {value!r}")
    return float(value)


def _where(extension: str | None, since: Moment | None, until: Moment | None,
           disposition: str | None) -> tuple[str, tuple[Any, ...]]:
    conditions: list[str] = []
    args: list[Any] = []
    if extension is not None:
        conditions.append("(caller = ? OR callee = ? OR answered_by = ?)")
        args += [extension] * 3
    if since is not None:
        conditions.append("start_time >= ?")
        args.append(_epoch(since, "since"))
    if until is not None:
        conditions.append("start_time < ?")
        args.append(_epoch(until, "until"))
    if disposition is not None:
        if disposition not in DISPOSITIONS:
            raise ValueError(f"disposition: expected one of {', '.join(DISPOSITIONS)}, got {disposition!r}")
        conditions.append("disposition = ?")
        args.append(disposition)
    return (" WHERE " + " AND ".join(conditions) if conditions else ""), tuple(args)


class _Queued:
    """One write waiting for the next batch, and the Deferreds of those who asked for it.

    A ``calls_open`` write carries its record instead of arguments: they are
    taken from it when the batch is flushed (`prepare`).
    """

    __slots__ = ("work", "args", "record", "waiters", "failure")

    def __init__(self, work: Any, args: tuple[Any, ...], record: CallRecord | None = None) -> None:
        self.work = work
        self.args = args
        self.record = record
        self.waiters: list[Deferred[None]] = []
        self.failure: Failure | None = None  # the record could not be serialised

    def prepare(self) -> None:
        """Serialise the record, on the reactor thread, before the batch goes to the database."""
        if self.record is not None:
            try:
                self.args = _open_row(self.record)
            except Exception:
                self.failure = Failure()

    def run(self, cursor: Any) -> Failure | None:
        """On the database thread, in its own savepoint: one failing write loses nothing else."""
        if self.failure is not None:
            return self.failure
        cursor.execute("SAVEPOINT cdr_write")
        outcome = None
        try:
            self.work(cursor, *self.args)
        except Exception:
            outcome = Failure()
            cursor.execute("ROLLBACK TO cdr_write")
        cursor.execute("RELEASE cdr_write")
        return outcome

    def settle(self, outcome: Failure | None) -> None:
        """Tell everyone who asked for this write how it went (on the reactor thread)."""
        for done in self.waiters:
            if outcome is None:
                done.callback(None)
            else:
                done.errback(outcome)


def _run_batch(cursor: Any, batch: list[_Queued]) -> list[Failure | None]:
    return [queued.run(cursor) for queued in batch]


def _settle_batch(outcomes: list[Failure | None], batch: list[_Queued]) -> None:
    for queued, outcome in zip(batch, outcomes):
        queued.settle(outcome)


def _fail_batch(failure: Failure, batch: list[_Queued]) -> None:
    for queued in batch:
        queued.settle(failure)


class CDRRepository:
    """Call records in the database; every method returns a Deferred."""

    log = Logger()

    def __init__(self, db: Database, clock: Any = None, batch_delay: float = 0.0) -> None:
        self.db = db
        self.clock = clock
        self.batch_delay = batch_delay
        self._queue: list[_Queued] = []
        self._open_writes: dict[str, _Queued] = {}  # call_id -> its calls_open write in the queue
        self._flush_timer: Any = None

    # -- group commit -----------------------------------------------------------

    @property
    def _batching(self) -> bool:
        return self.clock is not None and self.batch_delay > 0

    def _write(self, work: Any, *args: Any) -> Deferred[None]:
        if not self._batching:
            return self.db.run_transaction(work, *args)
        return self._wait_for(self._enqueue(_Queued(work, args)))

    def _save_open(self, record: CallRecord) -> Deferred[None]:
        """The record so far into ``calls_open``; one write per call and batch."""
        if not self._batching:
            return self.db.run_transaction(_write_open, *_open_row(record))
        queued = self._open_writes.get(record.call_id)
        if queued is None:
            queued = self._open_writes[record.call_id] = self._enqueue(_Queued(_write_open, (), record))
        else:
            queued.record = record
        return self._wait_for(queued)

    def _enqueue(self, queued: _Queued) -> _Queued:
        self._queue.append(queued)
        if self._flush_timer is None:
            self._flush_timer = self.clock.callLater(self.batch_delay, self.flush)
        return queued

    @staticmethod
    def _wait_for(queued: _Queued) -> Deferred[None]:
        done: Deferred[None] = Deferred()
        queued.waiters.append(done)
        return done

    def flush(self) -> Deferred[None]:
        """Commit every queued write now; fires when they are committed (or failed, each on its own)."""
        timer, self._flush_timer = self._flush_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        batch, self._queue = self._queue, []
        self._open_writes = {}
        if not batch:
            return succeed(None)
        for queued in batch:
            queued.prepare()
        d = self.db.run_transaction(_run_batch, batch)
        d.addCallbacks(_settle_batch, _fail_batch, callbackArgs=(batch,), errbackArgs=(batch,))
        return d

    # -- the life of a call ------------------------------------------------

    def open_call(self, record: CallRecord) -> Deferred[None]:
        """Note a call that has started (ringing)."""
        return self._save_open(record)

    def update_open(self, record: CallRecord) -> Deferred[None]:
        """Write the record so far (on answer); ignored once the call is closed."""
        return self._save_open(record)

    def close_call(self, record: CallRecord) -> Deferred[None]:
        """Store a finished record and forget the open call, in one transaction."""
        if record.end is None or record.disposition is None:
            return fail(ValueError(f"call {record.call_id}: close_call needs a finished record"))
        # A later update_open of this call queues after the close (and is ignored), not before it.
        self._open_writes.pop(record.call_id, None)
        return self._write(_write_closed, _cdr_row(record))

    def recover(self, now: float) -> Deferred[Records]:
        """At start-up, before calls are accepted: close every call left open.

        An open record that was already finished (the PBX stopped between
        ``finish`` and ``close_call``) keeps its outcome; any other becomes
        ``failed`` / ``restart`` / ``pbx``, ending at ``now``: when the call
        really stopped is unknown, so its duration is an upper bound.
        Yields the records written.
        """

        def work(cursor: Any) -> tuple[Records, list[str]]:
            recovered: Records = []
            unreadable: list[str] = []
            rows = cursor.execute(
                "SELECT call_id, record, start_time, updated_at FROM calls_open ORDER BY start_time"
            ).fetchall()
            for call_id, text, start, updated in rows:
                try:
                    data = json.loads(text)
                    if not isinstance(data, dict):
                        raise ValueError("not an object")
                    record = CallRecord.from_dict(data)
                except (ValueError, TypeError):
                    unreadable.append(call_id)
                    record = CallRecord(call_id, "", "", "", float(start))
                record.call_id = call_id
                if record.end is None or record.disposition is None:
                    record.end = None
                    record.finish(max(now, float(updated)), "failed", "restart", "pbx")
                cursor.execute("INSERT OR IGNORE " + _INSERT, _cdr_row(record))
                cursor.execute("DELETE FROM calls_open WHERE call_id = ?", (call_id,))
                recovered.append(record)
            return recovered, unreadable

        def done(result: tuple[Records, list[str]]) -> Records:
            recovered, unreadable = result
            for call_id in unreadable:
                self.log.warn("open call {call_id} had an unreadable record; kept with what is known",
                              call_id=call_id)
            if recovered:
                self.log.info("{count} calls left open by the last run recorded as failed (restart)",
                              count=len(recovered))
            return recovered

        return self.db.run_transaction(work).addCallback(done)

    # -- queries (for the REST API) ------------------------------------------

    def get(self, call_id: str) -> Deferred[CallRecord | None]:
        """One finished call, or None."""
        d = self.db.run_query(f"SELECT {_COLUMNS} FROM cdr WHERE call_id = ?", (call_id,))
        d.addCallback(lambda rows: _from_row(rows[0]) if rows else None)
        return d

    def list(
        self,
        extension: str | None = None,
        since: Moment | None = None,
        until: Moment | None = None,
        disposition: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> Deferred[Records]:
        """Finished calls, newest first.  ``extension`` matches the caller,
        the callee or the member that answered; ``since <= start < until``."""
        for name, value in (("limit", limit), ("offset", offset)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                return fail(ValueError(f"{name}: expected an integer >= 0, got {value!r}"))
        try:
            where, args = _where(extension, since, until, disposition)
        except ValueError:
            return fail()
        d = self.db.run_query(
            f"SELECT {_COLUMNS} FROM cdr{where} ORDER BY start_time DESC, call_id DESC LIMIT ? OFFSET ?",
            (*args, limit, offset),
        )
        d.addCallback(lambda rows: [_from_row(row) for row in rows])
        return d

    def count(
        self,
        extension: str | None = None,
        since: Moment | None = None,
        until: Moment | None = None,
        disposition: str | None = None,
    ) -> Deferred[int]:
        """How many finished calls ``list`` would page through."""
        try:
            where, args = _where(extension, since, until, disposition)
        except ValueError:
            return fail()
        d = self.db.run_query(f"SELECT COUNT(*) FROM cdr{where}", args)
        d.addCallback(lambda rows: int(rows[0][0]))
        return d
