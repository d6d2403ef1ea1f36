"""The outbox: event-driven requests, persisted, delivered at least once.

A subscriber of the (synchronous) event bus must never wait for an HTTP
server, so what an event triggers -- a call logged in the CRM, a Matrix
notice -- is written to the ``outbox`` table (schema step 3) and delivered
from there, after the SIP side has long answered:

- `Outbox.enqueue(kind, payload)` stores the JSON payload; its Deferred
  fires with the row id once the row is committed.
- A `TimerService` (`Outbox.timer_service`, every second on the injected
  clock) calls `Outbox.deliver_due`: it loads the due rows of the kinds
  that have a deliverer (`Outbox.register`) and calls ``deliver(payload)``.
  Success deletes the row.  Failure keeps it: ``attempts`` + 1, and the next
  try ``min(retry_max, retry_base * 2 ** attempts)`` seconds later (5 s,
  10 s, 20 s, ... 10 min with the defaults).  A failure that cannot get
  better -- the deliverer raises `DropItem`, or the server answers a 4xx
  other than 401, 403, 408, 425 and 429 -- deletes the row and logs it.
- Rows survive restarts: a new Outbox on the same database delivers them.
- Bounded: above ``max_items`` rows the oldest are deleted and the count
  logged.
- Idempotency: the payload is stored once and handed unchanged to every
  attempt, so a deliverer that needs an idempotency key (Matrix's txnId)
  puts it in the payload at enqueue time and every retry reuses it.

Delivery is at least once: a crash between a successful request and the
deletion of its row repeats the request at the next start.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from typing import Any

from twisted.application.internet import TimerService
from twisted.internet.defer import CancelledError, Deferred, DeferredList, ensureDeferred, fail, succeed
from twisted.logger import Logger

from pbx.integrations.http import UpstreamError

__all__ = ["DropItem", "Outbox", "is_permanent"]

Deliverer = Callable[[dict[str, Any]], "Awaitable[None] | Deferred[None] | None"]

#: 4xx answers that may go away by themselves (or by fixing the configuration): retried.
RETRYABLE_4XX = frozenset({401, 403, 408, 425, 429})


class DropItem(Exception):
    """Raised by a deliverer: this item can never be delivered; delete it."""


def is_permanent(error: BaseException) -> bool:
    """True when retrying ``error`` cannot help."""
    if isinstance(error, DropItem):
        return True
    status = getattr(error, "status", None)
    return isinstance(error, UpstreamError) and isinstance(status, int) and 400 <= status < 500 \
        and status not in RETRYABLE_4XX


class Outbox:
    """Persistent at-least-once delivery on a `pbx.store.db.Database`."""

    log = Logger()

    def __init__(self, db: Any, clock: Any, *, max_items: int = 10000, retry_base: float = 5.0,
                 retry_max: float = 600.0, batch: int = 100) -> None:
        if max_items < 1:
            raise ValueError("max_items: at least 1")
        self.db = db
        self.clock = clock
        self.max_items = max_items
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.batch = batch
        self._deliverers: dict[str, Deliverer] = {}
        self._running: Deferred[int] | None = None
        self._in_flight: set[Deferred[Any]] = set()
        self._stopped = False
        self.stats = {"enqueued": 0, "delivered": 0, "failed": 0, "dropped": 0}

    # -- producers ------------------------------------------------------------

    def register(self, kind: str, deliver: Deliverer) -> None:
        """Deliver the items of ``kind`` with ``deliver(payload)`` (an async function,
        or one returning a Deferred or None); it raises to say "not delivered"."""
        self._deliverers[kind] = deliver

    def enqueue(self, kind: str, payload: dict[str, Any]) -> Deferred[int]:
        """Store an item; fires with its id once committed.  The payload must be JSON."""
        try:
            text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as error:
            return fail(ValueError(f"outbox payload of {kind} is not JSON: {error}"))
        if self.db.pool is None:
            return fail(RuntimeError(f"outbox: the database is not open; {kind} item not stored"))
        d = self.db.run_transaction(self._insert, kind, text, self.clock.seconds(), self.max_items)
        d.addCallback(self._inserted, kind)
        return d

    @staticmethod
    def _insert(cursor: Any, kind: str, text: str, now: float, max_items: int) -> tuple[int, int]:
        cursor.execute(
            "INSERT INTO outbox (kind, payload, created_at, attempts, next_attempt) VALUES (?, ?, ?, 0, ?)",
            (kind, text, now, now),
        )
        item_id = cursor.lastrowid
        count = cursor.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        excess = max(0, count - max_items)
        if excess:
            cursor.execute("DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)", (excess,))
        return item_id, excess

    def _inserted(self, result: tuple[int, int], kind: str) -> int:
        item_id, dropped = result
        self.stats["enqueued"] += 1
        if dropped:
            self.stats["dropped"] += dropped
            self.log.warn("outbox full ({max} items): dropped the {count} oldest item(s) to store {kind}",
                          max=self.max_items, count=dropped, kind=kind)
        return item_id

    def count(self) -> Deferred[int]:
        """Items waiting (all kinds)."""
        return self.db.run_query("SELECT COUNT(*) FROM outbox").addCallback(lambda rows: int(rows[0][0]))

    # -- delivery -------------------------------------------------------------

    def timer_service(self, interval: float = 1.0) -> TimerService:
        """The service that drives delivery, on this outbox's clock."""
        service = TimerService(interval, self.deliver_due)
        service.clock = self.clock
        return service

    def deliver_due(self) -> Deferred[int]:
        """Try every due item once (at most ``batch``); fires with the number
        delivered.  Never fails (a TimerService stops on a failure); a run
        still in progress makes this a no-op."""
        if self._stopped or self._running is not None or self.db.pool is None or not self._deliverers:
            return succeed(0)
        running = ensureDeferred(self._deliver_due())

        def done(result: Any) -> int:
            self._running = None
            if isinstance(result, int):
                return result
            if not result.check(CancelledError):
                self.log.failure("outbox delivery run failed", result)
            return 0

        running.addBoth(done)
        if not running.called:
            self._running = running
        return running

    async def _deliver_due(self) -> int:
        kinds = sorted(self._deliverers)
        marks = ", ".join("?" for _ in kinds)
        rows = await self.db.run_query(
            f"SELECT id, kind, payload, attempts FROM outbox WHERE next_attempt <= ? AND kind IN ({marks}) "
            "ORDER BY next_attempt, id LIMIT ?",
            (self.clock.seconds(), *kinds, self.batch),
        )
        if not rows or self._stopped:
            return 0
        results = await DeferredList([ensureDeferred(self._deliver_one(*row)) for row in rows], consumeErrors=True)
        return sum(1 for ok, delivered in results if ok and delivered)

    async def _deliver_one(self, item_id: int, kind: str, text: str, attempts: int) -> bool:
        try:
            payload = json.loads(text)
        except ValueError:
            self.log.error("outbox item {id} ({kind}) is not JSON; deleted", id=item_id, kind=kind)
            await self._delete(item_id)
            return False
        deliver = self._deliverers[kind]
        try:
            result = deliver(payload)
            if isinstance(result, Deferred) or inspect.isawaitable(result):
                call = result if isinstance(result, Deferred) else ensureDeferred(result)
                self._in_flight.add(call)
                try:
                    await call
                finally:
                    self._in_flight.discard(call)
        except CancelledError:
            return False  # stopping: the item stays for the next start
        except Exception as error:
            if self._stopped:
                return False
            if is_permanent(error):
                self.stats["dropped"] += 1
                self.log.warn("outbox item {id} ({kind}) cannot be delivered, deleted: {error}",
                              id=item_id, kind=kind, error=_describe(error))
                await self._delete(item_id)
                return False
            self.stats["failed"] += 1
            delay = min(self.retry_max, self.retry_base * 2 ** attempts)
            self.log.warn("outbox item {id} ({kind}) not delivered (attempt {attempt}), next try in {delay}s: "
                          "{error}", id=item_id, kind=kind, attempt=attempts + 1, delay=delay,
                          error=_describe(error))
            await self._reschedule(item_id, self.clock.seconds() + delay, _describe(error))
            return False
        if self._stopped and self.db.pool is None:
            return True  # delivered, but the row stays: delivered again at the next start
        self.stats["delivered"] += 1
        await self._delete(item_id)
        return True

    async def _delete(self, item_id: int) -> None:
        if self.db.pool is not None:
            await self.db.run_query("DELETE FROM outbox WHERE id = ?", (item_id,))

    async def _reschedule(self, item_id: int, when: float, error: str) -> None:
        if self.db.pool is not None:
            await self.db.run_query(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt = ?, last_error = ? WHERE id = ?",
                (when, error[:500], item_id),
            )

    def stop(self) -> None:
        """Stop delivering: requests in flight are cancelled, their items kept."""
        self._stopped = True
        for call in list(self._in_flight):
            call.cancel()


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if not isinstance(error, (KeyError, TypeError, AttributeError)) else f"{type(error).__name__}: {text}"
