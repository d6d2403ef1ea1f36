"""The database: an adbapi pool (SQLite by default) and versioned schema migrations.

Every call returns a Deferred; SQLite runs on one pool thread so the reactor
never waits on disk. Repositories (one module per table group) take a
`Database` and keep SQL out of the rest of the code.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from typing import Any

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred
from twisted.logger import Logger

# Each entry upgrades the schema by one version; never edit a released step,
# append a new one.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE extensions (
            number TEXT PRIMARY KEY,
            name TEXT NOT NULL DEFAULT '',
            realm TEXT NOT NULL,
            ha1_md5 TEXT NOT NULL,
            ha1_sha256 TEXT NOT NULL,
            voicemail_pin_hash TEXT,
            email TEXT,
            source TEXT NOT NULL DEFAULT 'config',
            updated_at REAL NOT NULL
        )""",
        """CREATE TABLE bindings (
            aor TEXT NOT NULL,
            contact TEXT NOT NULL,
            expires_at REAL NOT NULL,
            q REAL,
            call_id TEXT NOT NULL,
            cseq INTEGER NOT NULL,
            user_agent TEXT,
            source_host TEXT NOT NULL,
            source_port INTEGER NOT NULL,
            transport TEXT NOT NULL,
            params TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (aor, contact)
        )""",
    ],
    # 2: call detail records (pbx.store.cdr).  No CHECK constraints on
    # purpose: a record must never be refused by the database.
    [
        """CREATE TABLE cdr (
            call_id TEXT PRIMARY KEY,
            sip_call_id TEXT NOT NULL,
            caller TEXT NOT NULL,
            caller_name TEXT NOT NULL DEFAULT '',
            callee TEXT NOT NULL,
            answered_by TEXT,
            start_time REAL NOT NULL,
            answer_time REAL,
            end_time REAL NOT NULL,
            duration INTEGER NOT NULL,
            billable INTEGER NOT NULL,
            disposition TEXT NOT NULL,
            hangup_cause TEXT NOT NULL,
            hangup_side TEXT
        )""",
        "CREATE INDEX cdr_start ON cdr (start_time)",
        "CREATE INDEX cdr_caller ON cdr (caller, start_time)",
        "CREATE INDEX cdr_callee ON cdr (callee, start_time)",
        "CREATE INDEX cdr_answered_by ON cdr (answered_by, start_time)",
        "CREATE INDEX cdr_disposition ON cdr (disposition, start_time)",
        """CREATE TABLE calls_open (
            call_id TEXT PRIMARY KEY,
            record TEXT NOT NULL,
            start_time REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
    ],
    # 3: the integrations' outbox (pbx.integrations.outbox): event-driven
    # requests waiting for delivery, kept across restarts.
    [
        """CREATE TABLE outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL,
            payload TEXT NOT NULL,
            created_at REAL NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt REAL NOT NULL,
            last_error TEXT
        )""",
        "CREATE INDEX outbox_due ON outbox (next_attempt, id)",
    ],
    # 4: voicemail (pbx.store.voicemail): one row per message, its audio a
    # WAV file under voicemail.storage_path (``file`` is relative to it);
    # a mailbox's own greeting likewise.
    [
        """CREATE TABLE voicemail_messages (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            mailbox TEXT NOT NULL,
            caller TEXT NOT NULL,
            caller_name TEXT NOT NULL DEFAULT '',
            received REAL NOT NULL,
            duration REAL NOT NULL,
            file TEXT NOT NULL,
            heard INTEGER NOT NULL DEFAULT 0,
            saved INTEGER NOT NULL DEFAULT 0,
            call_id TEXT
        )""",
        "CREATE INDEX voicemail_messages_mailbox ON voicemail_messages (mailbox, received)",
        """CREATE TABLE voicemail_greetings (
            mailbox TEXT PRIMARY KEY,
            file TEXT NOT NULL,
            updated REAL NOT NULL
        )""",
    ],
]


def _connect_hook(connection: sqlite3.Connection) -> None:
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA foreign_keys=ON")


class Database:
    """A Deferred-returning database with its schema kept current."""

    log = Logger()

    def __init__(self, path: str) -> None:
        self.path = path
        self.pool: adbapi.ConnectionPool | None = None

    def open(self) -> Deferred[int]:
        """Open the pool and migrate; yields the schema version now in force."""
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        self.pool = adbapi.ConnectionPool(
            "sqlite3",
            self.path,
            check_same_thread=False,
            cp_min=1,
            cp_max=1,
            cp_openfun=_connect_hook,
            isolation_level=None,
        )
        return self.pool.runInteraction(self._migrate)

    def _migrate(self, cursor: Any) -> int:
        version = cursor.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise RuntimeError(
                f"database {self.path} has schema version {version}, newer than this PBX ({len(MIGRATIONS)})"
            )
        for number, steps in enumerate(MIGRATIONS[version:], start=version + 1):
            cursor.execute("BEGIN")
            for statement in steps:
                cursor.execute(statement)
            cursor.execute(f"PRAGMA user_version = {number}")
            cursor.execute("COMMIT")
            self.log.info("database schema migrated to version {version}", version=number)
        return len(MIGRATIONS)

    def run_query(self, sql: str, args: tuple = ()) -> Deferred[list[tuple]]:
        assert self.pool is not None
        return self.pool.runQuery(sql, args)

    def run_transaction(self, work: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run `work(cursor, *args)` in one transaction on the pool thread."""
        assert self.pool is not None

        def transaction(cursor: Any) -> Any:
            cursor.execute("BEGIN")
            try:
                result = work(cursor, *args)
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
            cursor.execute("COMMIT")
            return result

        return self.pool.runInteraction(transaction)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None
