"""Calls through the B2BUA with SIPp as caller and callee; every call leaves a record."""

from __future__ import annotations

import time

import pytest

from calls import register_then_uas, run_sipp, sipp_report, stop_sipp, wait_sipp
from pbxproc import PBXProcess, have

pytestmark = [pytest.mark.peers, pytest.mark.skipif(not have("sipp"), reason="sipp is not installed")]

GROUPS = [{"number": "2000", "name": "Sales", "members": ["1002", "1003"], "strategy": "ringall", "ring_timeout": 20}]


@pytest.fixture
def pbx(tmp_path):
    # One PBX per test: a SIPp UAS that has gone keeps its binding, and the
    # next call would fork to it too.
    with PBXProcess(tmp_path / "pbx", groups=GROUPS, features={"no_answer_timeout": 20}) as process:
        yield process




def test_basic_authenticated_call(pbx, tmp_path):
    began = time.time()
    callee = register_then_uas(pbx, "1002", "secret1002", "uas_answer", tmp_path)
    try:
        caller = run_sipp("uac_call", pbx.sip_port, ["1001;secret1001;1002"], tmp_path, "-d", "1000")
        assert caller.returncode == 0, sipp_report(caller)
        assert wait_sipp(callee).returncode == 0, sipp_report(callee)
    finally:
        stop_sipp(callee)
    record = pbx.finished_record(began)
    assert (record["caller"], record["callee"], record["disposition"]) == ("1001", "1002", "answered")
    assert record["hangup_side"] == "caller" and record["answered_by"] == "1002"


def test_cancel_while_ringing_gives_487(pbx, tmp_path):
    began = time.time()
    callee = register_then_uas(pbx, "1002", "secret1002", "uas_ring_no_answer", tmp_path)
    try:
        caller = run_sipp("uac_cancel", pbx.sip_port, ["1001;secret1001;1002"], tmp_path)
        assert caller.returncode == 0, sipp_report(caller)
        assert wait_sipp(callee).returncode == 0, sipp_report(callee)
    finally:
        stop_sipp(callee)
    record = pbx.finished_record(began)
    assert (record["disposition"], record["hangup_side"]) == ("cancelled", "caller")


def test_busy_callee_gives_486(pbx, tmp_path):
    began = time.time()
    callee = register_then_uas(pbx, "1002", "secret1002", "uas_busy", tmp_path)
    try:
        caller = run_sipp("uac_busy", pbx.sip_port, ["1001;secret1001;1002"], tmp_path)
        assert caller.returncode == 0, sipp_report(caller)
        assert wait_sipp(callee).returncode == 0, sipp_report(callee)
    finally:
        stop_sipp(callee)
    assert pbx.finished_record(began)["disposition"] == "busy"


def test_unregistered_callee_gives_480(pbx, tmp_path):
    began = time.time()
    caller = run_sipp("uac_unavailable", pbx.sip_port, ["1001;secret1001;1003"], tmp_path)
    assert caller.returncode == 0, sipp_report(caller)
    record = pbx.finished_record(began)
    assert (record["disposition"], record["hangup_cause"]) == ("failed", "not-registered")


def test_ringall_group_one_answers_the_other_is_cancelled(pbx, tmp_path):
    began = time.time()
    answers = register_then_uas(pbx, "1002", "secret1002", "uas_answer", tmp_path)
    rings = register_then_uas(pbx, "1003", "secret1003", "uas_ring_no_answer", tmp_path)
    try:
        time.sleep(0.2)
        caller = run_sipp("uac_call", pbx.sip_port, ["1001;secret1001;2000"], tmp_path, "-d", "500")
        assert caller.returncode == 0, sipp_report(caller)
        assert wait_sipp(answers).returncode == 0, sipp_report(answers)
        assert wait_sipp(rings).returncode == 0, sipp_report(rings)  # it received CANCEL and answered 487
    finally:
        stop_sipp(answers)
        stop_sipp(rings)
    record = pbx.finished_record(began)
    assert (record["callee"], record["answered_by"], record["disposition"]) == ("2000", "1002", "answered")


def test_hold_and_resume_reinvite(pbx, tmp_path):
    began = time.time()
    callee = register_then_uas(pbx, "1002", "secret1002", "uas_answer", tmp_path)
    try:
        caller = run_sipp("uac_hold", pbx.sip_port, ["1001;secret1001;1002"], tmp_path)
        assert caller.returncode == 0, sipp_report(caller)
        assert wait_sipp(callee).returncode == 0, sipp_report(callee)
    finally:
        stop_sipp(callee)
    assert pbx.finished_record(began)["disposition"] == "answered"
