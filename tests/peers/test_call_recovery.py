"""No call record is lost or left open when the PBX dies in the middle of a call."""

from __future__ import annotations

import signal
import sqlite3
import time

import pytest

from calls import register_then_uas, run_sipp, stop_sipp
from pbxproc import PBXProcess, have

pytestmark = [pytest.mark.peers, pytest.mark.skipif(not have("sipp"), reason="sipp is not installed")]


def rows(pbx: PBXProcess, sql: str) -> list[tuple]:
    with sqlite3.connect(pbx.directory / "pbx.db") as db:
        return db.execute(sql).fetchall()


def test_call_up_at_a_crash_is_closed_as_failed_restart(tmp_path):
    pbx = PBXProcess(tmp_path / "pbx").start()
    callee = register_then_uas(pbx, "1002", "secret1002", "uas_answer", tmp_path)
    caller = run_sipp("uac_call", pbx.sip_port, ["1001;secret1001;1002"], tmp_path, "-d", "20000", background=True)
    try:
        deadline = time.monotonic() + 10
        while not rows(pbx, "SELECT call_id FROM calls_open") and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # the answer reaches the open record
        [(open_id,)] = rows(pbx, "SELECT call_id FROM calls_open")
        pbx.process.send_signal(signal.SIGKILL)  # no clean shut-down: a crash
        pbx.process.wait(5)
        assert rows(pbx, "SELECT COUNT(*) FROM cdr") == [(0,)]
        restarted = PBXProcess(tmp_path / "pbx", sip_port=pbx.sip_port).start()
        try:
            assert rows(restarted, "SELECT COUNT(*) FROM calls_open") == [(0,)]
            [(call_id, disposition, cause, side, answered_by)] = rows(
                restarted, "SELECT call_id, disposition, hangup_cause, hangup_side, answered_by FROM cdr")
            assert (call_id, disposition, cause, side) == (open_id, "failed", "restart", "pbx")
            assert answered_by == "1002"
        finally:
            restarted.stop()
    finally:
        stop_sipp(caller)
        stop_sipp(callee)
        pbx.stop()
