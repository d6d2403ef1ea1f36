"""Extensions table: numbers, names and HA1 hashes (never passwords)."""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred

from pbx.sip.digest import compute_ha1
from pbx.store.db import Database


@dataclass(frozen=True, slots=True)
class ExtensionRecord:
    number: str
    name: str
    realm: str
    ha1_md5: str
    ha1_sha256: str
    email: str | None = None
    voicemail_pin_hash: str | None = None
    source: str = "config"

    def ha1(self, algorithm: str) -> str | None:
        return self.ha1_sha256 if algorithm == "SHA-256" else self.ha1_md5 if algorithm == "MD5" else None


def hash_pin(pin: str, salt: bytes | None = None) -> str:
    """Salted PBKDF2 of a voicemail PIN, so PINs are not readable at rest either."""
    salt = salt if salt is not None else os.urandom(8)
    digest = hashlib.pbkdf2_hmac("sha256", pin.encode(), salt, 10_000)
    return f"pbkdf2_sha256$10000${salt.hex()}${digest.hex()}"


def verify_pin(pin_hash: str | None, pin: str) -> bool:
    """True when `pin` matches a `hash_pin` result; False for no hash or one this code cannot read.

    The comparison takes the same time wherever the digests differ, so the
    time an answer takes tells nothing about the stored PIN.
    """
    if not pin_hash:
        return False
    try:
        scheme, iterations, salt, expected = pin_hash.split("$")
        rounds = int(iterations)
        salt_bytes, expected_bytes = bytes.fromhex(salt), bytes.fromhex(expected)
    except ValueError:
        return False
    if scheme != "pbkdf2_sha256" or not 0 < rounds <= 10_000_000:
        return False
    digest = hashlib.pbkdf2_hmac("sha256", pin.encode(), salt_bytes, rounds)
    return hmac.compare_digest(digest, expected_bytes)


def make_record(number: str, name: str, realm: str, password: str, email: str | None = None,
                voicemail_pin: str | None = None, source: str = "config") -> ExtensionRecord:
    return ExtensionRecord(
        number=number,
        name=name,
        realm=realm,
        ha1_md5=compute_ha1(number, realm, password, "MD5"),
        ha1_sha256=compute_ha1(number, realm, password, "SHA-256"),
        email=email,
        voicemail_pin_hash=None if voicemail_pin is None else hash_pin(voicemail_pin),
        source=source,
    )


_COLUMNS = "number, name, realm, ha1_md5, ha1_sha256, email, voicemail_pin_hash, source"


class ExtensionRepository:
    def __init__(self, db: Database, clock: Any) -> None:
        self.db = db
        self.clock = clock

    def all(self) -> Deferred[list[ExtensionRecord]]:
        """Yields every extension."""
        d = self.db.run_query(f"SELECT {_COLUMNS} FROM extensions ORDER BY number")
        d.addCallback(lambda rows: [ExtensionRecord(*row) for row in rows])
        return d

    def sync_from_config(self, records: list[ExtensionRecord]) -> Deferred[None]:
        """Make the config's extensions current; extensions created elsewhere stay.

        Config-sourced extensions that left the config are removed, with their
        bindings, so a deleted user cannot keep registering.
        """
        now = self.clock.seconds()

        def work(cursor: Any) -> None:
            numbers = {r.number for r in records}
            for (number,) in cursor.execute("SELECT number FROM extensions WHERE source = 'config'").fetchall():
                if number not in numbers:
                    cursor.execute("DELETE FROM extensions WHERE number = ?", (number,))
                    cursor.execute("DELETE FROM bindings WHERE aor = ?", (number,))
            cursor.executemany(
                f"INSERT OR REPLACE INTO extensions ({_COLUMNS}, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(r.number, r.name, r.realm, r.ha1_md5, r.ha1_sha256, r.email, r.voicemail_pin_hash, r.source, now)
                 for r in records],
            )

        return self.db.run_transaction(work)
