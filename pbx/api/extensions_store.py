"""The extensions table as the REST API changes it.

`pbx.store.extensions.ExtensionRepository` loads and syncs extensions from
the configuration file; the API also creates, changes and deletes single
rows.  Each change runs as one transaction that checks what it needs first
(does the number exist, where does it come from), so two requests racing on
the same extension cannot both win.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred

from pbx.store.db import Database
from pbx.store.extensions import ExtensionRecord

__all__ = ["ApiExtensionStore", "Outcome", "StoredExtension"]

_COLUMNS = "number, name, realm, ha1_md5, ha1_sha256, email, voicemail_pin_hash, source, updated_at"


@dataclass(frozen=True, slots=True)
class StoredExtension:
    record: ExtensionRecord
    updated_at: float


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a change found: ``status`` is ok, missing, exists or config."""

    status: str
    stored: StoredExtension | None = None


def _stored(row: tuple[Any, ...]) -> StoredExtension:
    number, name, realm, md5, sha256, email, pin_hash, source, updated_at = row
    return StoredExtension(ExtensionRecord(number, name, realm, md5, sha256, email, pin_hash, source), updated_at)


def _select(cursor: Any, number: str) -> StoredExtension | None:
    row = cursor.execute(f"SELECT {_COLUMNS} FROM extensions WHERE number = ?", (number,)).fetchone()
    return None if row is None else _stored(row)


def _write(cursor: Any, verb: str, record: ExtensionRecord, now: float) -> None:
    cursor.execute(
        f"{verb} INTO extensions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (record.number, record.name, record.realm, record.ha1_md5, record.ha1_sha256,
         record.email, record.voicemail_pin_hash, record.source, now),
    )  # fmt: skip


class ApiExtensionStore:
    """Single-row reads and changes of ``extensions``; every method returns a Deferred."""

    def __init__(self, db: Database, clock: Any) -> None:
        self.db = db
        self.clock = clock

    def all(self) -> Deferred[list[StoredExtension]]:
        d = self.db.run_query(f"SELECT {_COLUMNS} FROM extensions ORDER BY number")
        d.addCallback(lambda rows: [_stored(row) for row in rows])
        return d

    def get(self, number: str) -> Deferred[StoredExtension | None]:
        d = self.db.run_query(f"SELECT {_COLUMNS} FROM extensions WHERE number = ?", (number,))
        d.addCallback(lambda rows: _stored(rows[0]) if rows else None)
        return d

    def create(self, record: ExtensionRecord) -> Deferred[Outcome]:
        """Insert a new extension; ``exists`` if the number is taken."""
        now = self.clock.seconds()

        def work(cursor: Any) -> Outcome:
            existing = _select(cursor, record.number)
            if existing is not None:
                return Outcome("exists", existing)
            _write(cursor, "INSERT", record, now)
            return Outcome("ok", StoredExtension(record, now))

        return self.db.run_transaction(work)

    def modify(self, number: str, change: Callable[[ExtensionRecord], ExtensionRecord]) -> Deferred[Outcome]:
        """Replace an API-made extension by ``change(current)``.

        ``change`` runs on the database thread, inside the transaction: it
        sees the current row, and slow hashing stays off the reactor.  An
        extension from the configuration file is left alone (``config``):
        the next start would overwrite the change.
        """
        now = self.clock.seconds()

        def work(cursor: Any) -> Outcome:
            existing = _select(cursor, number)
            if existing is None:
                return Outcome("missing")
            if existing.record.source == "config":
                return Outcome("config", existing)
            record = change(existing.record)
            _write(cursor, "INSERT OR REPLACE", record, now)
            return Outcome("ok", StoredExtension(record, now))

        return self.db.run_transaction(work)

    def delete(self, number: str) -> Deferred[Outcome]:
        """Remove an API-made extension and its stored bindings."""

        def work(cursor: Any) -> Outcome:
            existing = _select(cursor, number)
            if existing is None:
                return Outcome("missing")
            if existing.record.source == "config":
                return Outcome("config", existing)
            cursor.execute("DELETE FROM extensions WHERE number = ?", (number,))
            cursor.execute("DELETE FROM bindings WHERE aor = ?", (number,))
            return Outcome("ok", existing)

        return self.db.run_transaction(work)
