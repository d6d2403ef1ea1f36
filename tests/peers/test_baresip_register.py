"""baresip, a real softphone, registers and refreshes its registration."""

from __future__ import annotations

import sqlite3
import time

import pytest

from baresip import Baresip
from pbxproc import PBXProcess, free_port, have

pytestmark = [pytest.mark.peers, pytest.mark.skipif(not have("baresip"), reason="baresip is not installed")]


def binding_rows(pbx: PBXProcess, aor: str) -> list[tuple]:
    with sqlite3.connect(pbx.directory / "pbx.db") as db:
        return db.execute("SELECT contact, cseq, expires_at, user_agent FROM bindings WHERE aor = ?", (aor,)).fetchall()


def wait_for(predicate, timeout: float, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def test_baresip_registers_and_stays_registered_across_a_refresh(tmp_path):
    with PBXProcess(tmp_path / "pbx", registrar={"min_expires": 4, "default_expires": 3600}) as pbx:
        phone = Baresip(tmp_path / "phone", "1001", "secret1001", pbx.sip_port, free_port(), regint=6)
        phone.start(20)
        try:
            first = wait_for(lambda: binding_rows(pbx, "1001"), 10)
            assert first, phone.log()
            contact, cseq, expires_at, user_agent = first[0]
            assert contact.startswith("sip:1001") and "@127.0.0.1:" in contact and "baresip" in (user_agent or "")
            # baresip refreshes well before regint runs out: same binding, higher CSeq, later expiry.
            refreshed = wait_for(lambda: [r for r in binding_rows(pbx, "1001") if r[1] > cseq], 12)
            assert refreshed, phone.log()
            assert refreshed[0][0] == contact and refreshed[0][2] > expires_at
            assert "401" not in "".join(line for line in phone.log().splitlines() if "failed" in line)
        finally:
            phone.stop()
