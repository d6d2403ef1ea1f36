"""Voicemail metadata: ``voicemail_messages`` and ``voicemail_greetings``.

SQL only.  The audio lives in WAV files that `pbx.apps.mailbox.VoicemailStore`
writes; a row names its file relative to ``voicemail.storage_path``, so the
spool can move without touching the database.

Every write answers with the mailbox's (new, old) counts before and after it,
taken in the same transaction, so the caller can say whether the message
waiting state changed without a second round trip that could see someone
else's change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred

from pbx.core.cdr import iso_utc
from pbx.store.db import Database

__all__ = ["Counts", "MailboxChange", "VoicemailMessage", "VoicemailRepository"]

#: (new, old): messages not heard yet, messages heard.
Counts = tuple[int, int]

_COLUMNS = "id, mailbox, caller, caller_name, received, duration, file, heard, saved, call_id"


@dataclass(frozen=True, slots=True)
class VoicemailMessage:
    """One message; ``file`` is relative to the voicemail storage directory."""

    id: int
    mailbox: str
    caller: str
    caller_name: str
    received: float
    duration: float
    file: str
    heard: bool
    saved: bool
    call_id: str | None = None

    def as_json(self) -> dict[str, Any]:
        """JSON-friendly fields for the API and events; ``received`` as ISO
        8601 UTC.  The file name stays inside the PBX: clients fetch audio
        by message id."""
        return {
            "id": self.id,
            "mailbox": self.mailbox,
            "caller": self.caller,
            "caller_name": self.caller_name,
            "received": iso_utc(self.received),
            "duration": self.duration,
            "heard": self.heard,
            "saved": self.saved,
            "call_id": self.call_id,
        }


@dataclass(frozen=True, slots=True)
class MailboxChange:
    """What a write did: the message concerned (None when there was none)
    and the mailbox's counts before and after."""

    message: VoicemailMessage | None
    before: Counts
    after: Counts

    @property
    def counts_changed(self) -> bool:
        return self.before != self.after


def _message(row: tuple[Any, ...]) -> VoicemailMessage:
    id_, mailbox, caller, caller_name, received, duration, file, heard, saved, call_id = row
    return VoicemailMessage(int(id_), mailbox, caller, caller_name, float(received), float(duration), file,
                            bool(heard), bool(saved), call_id)


def _counts(cursor: Any, mailbox: str) -> Counts:
    rows = cursor.execute(
        "SELECT heard != 0, COUNT(*) FROM voicemail_messages WHERE mailbox = ? GROUP BY heard != 0", (mailbox,)
    ).fetchall()
    found = {bool(heard): int(count) for heard, count in rows}
    return found.get(False, 0), found.get(True, 0)


def _select(cursor: Any, mailbox: str, message_id: int) -> VoicemailMessage | None:
    row = cursor.execute(
        f"SELECT {_COLUMNS} FROM voicemail_messages WHERE mailbox = ? AND id = ?", (mailbox, message_id)
    ).fetchone()
    return None if row is None else _message(row)


class VoicemailRepository:
    """Messages and greetings in the database; every method returns a Deferred."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- messages -------------------------------------------------------------

    def add(self, mailbox: str, caller: str, caller_name: str, received: float, duration: float,
            file: str, call_id: str | None = None) -> Deferred[MailboxChange]:
        """Store a new (unheard) message whose file is already on disk."""

        def work(cursor: Any) -> MailboxChange:
            before = _counts(cursor, mailbox)
            cursor.execute(
                "INSERT INTO voicemail_messages (mailbox, caller, caller_name, received, duration, file, call_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (mailbox, caller, caller_name, received, duration, file, call_id),
            )
            message = VoicemailMessage(int(cursor.lastrowid), mailbox, caller, caller_name, received, duration,
                                       file, False, False, call_id)
            return MailboxChange(message, before, _counts(cursor, mailbox))

        return self.db.run_transaction(work)

    def messages(self, mailbox: str, heard: bool | None = None) -> Deferred[list[VoicemailMessage]]:
        """A mailbox's messages, oldest first; ``heard`` picks one folder."""
        where, args = "mailbox = ?", (mailbox,)
        if heard is not None:
            where, args = "mailbox = ? AND heard = ?", (mailbox, int(heard))
        d = self.db.run_query(
            f"SELECT {_COLUMNS} FROM voicemail_messages WHERE {where} ORDER BY received, id", args
        )
        d.addCallback(lambda rows: [_message(row) for row in rows])
        return d

    def get(self, mailbox: str, message_id: int) -> Deferred[VoicemailMessage | None]:
        d = self.db.run_query(
            f"SELECT {_COLUMNS} FROM voicemail_messages WHERE mailbox = ? AND id = ?", (mailbox, message_id)
        )
        d.addCallback(lambda rows: _message(rows[0]) if rows else None)
        return d

    def update(self, mailbox: str, message_id: int, *, heard: bool | None = None,
               saved: bool | None = None) -> Deferred[MailboxChange]:
        """Set the flags given; the change's message is None when there is no such message."""

        def work(cursor: Any) -> MailboxChange:
            before = _counts(cursor, mailbox)
            assignments = [(name, int(value)) for name, value in (("heard", heard), ("saved", saved))
                           if value is not None]
            if assignments:
                cursor.execute(
                    f"UPDATE voicemail_messages SET {', '.join(f'{name} = ?' for name, _ in assignments)} "
                    "WHERE mailbox = ? AND id = ?",
                    (*(value for _, value in assignments), mailbox, message_id),
                )
            return MailboxChange(_select(cursor, mailbox, message_id), before, _counts(cursor, mailbox))

        return self.db.run_transaction(work)

    def delete(self, mailbox: str, message_id: int) -> Deferred[MailboxChange]:
        """Remove a message's row; the change carries the row that was removed."""

        def work(cursor: Any) -> MailboxChange:
            before = _counts(cursor, mailbox)
            message = _select(cursor, mailbox, message_id)
            if message is not None:
                cursor.execute("DELETE FROM voicemail_messages WHERE id = ?", (message.id,))
            return MailboxChange(message, before, _counts(cursor, mailbox))

        return self.db.run_transaction(work)

    def counts(self, mailbox: str) -> Deferred[Counts]:
        return self.db.run_transaction(_counts, mailbox)

    # -- greetings --------------------------------------------------------------

    def greeting(self, mailbox: str) -> Deferred[str | None]:
        """The file of the mailbox's own greeting, or None."""
        d = self.db.run_query("SELECT file FROM voicemail_greetings WHERE mailbox = ?", (mailbox,))
        d.addCallback(lambda rows: rows[0][0] if rows else None)
        return d

    def set_greeting(self, mailbox: str, file: str, updated: float) -> Deferred[str | None]:
        """Point the mailbox at a new greeting file; yields the file it replaced."""

        def work(cursor: Any) -> str | None:
            row = cursor.execute("SELECT file FROM voicemail_greetings WHERE mailbox = ?", (mailbox,)).fetchone()
            cursor.execute(
                "INSERT OR REPLACE INTO voicemail_greetings (mailbox, file, updated) VALUES (?, ?, ?)",
                (mailbox, file, updated),
            )
            return None if row is None else row[0]

        return self.db.run_transaction(work)

    def delete_greeting(self, mailbox: str) -> Deferred[str | None]:
        """Forget the mailbox's greeting; yields its file, None when it had none."""

        def work(cursor: Any) -> str | None:
            row = cursor.execute("SELECT file FROM voicemail_greetings WHERE mailbox = ?", (mailbox,)).fetchone()
            if row is None:
                return None
            cursor.execute("DELETE FROM voicemail_greetings WHERE mailbox = ?", (mailbox,))
            return row[0]

        return self.db.run_transaction(work)
