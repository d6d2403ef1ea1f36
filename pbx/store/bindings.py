"""Bindings table: registrations survive a restart of the PBX."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from pbx.core.location import Binding
from pbx.store.db import Database

_COLUMNS = "aor, contact, expires_at, q, call_id, cseq, user_agent, source_host, source_port, transport, params"


class BindingRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def load(self, now: float) -> Deferred[list[Binding]]:
        """Yields the bindings that have not expired by `now`."""
        d = self.db.run_query(f"SELECT {_COLUMNS} FROM bindings WHERE expires_at > ?", (now,))
        d.addCallback(lambda rows: [Binding(*row) for row in rows])
        return d

    def replace(self, changes: dict[str, list[Binding]]) -> Deferred[None]:
        """Write the current bindings of each changed AOR in one transaction."""

        def work(cursor: Any) -> None:
            cursor.executemany("DELETE FROM bindings WHERE aor = ?", [(aor,) for aor in changes])
            cursor.executemany(
                f"INSERT INTO bindings ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [b.as_row() for bindings in changes.values() for b in bindings],
            )

        return self.db.run_transaction(work)
