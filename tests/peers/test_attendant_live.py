"""The auto attendant with real SIP peers: SIPp callers press keys as RFC 4733 events.

The caller (SIPp, aa_uac_menu.xml) dials the attendant, presses a key from
one of SIPp's dtmf_2833_<key>.pcap files and, once handed over, sends PCMA
audio from g711a.pcap.  The callees are SIPp UASes registered as
extensions.  What each test checks: the SIP dialogs end as the scenarios
expect (each one fails on anything else), the call record, the live call as
GET /api/calls shows it, and (sniffed on loopback) the caller's audio at the
callee's media port.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request

import pytest

from audio import write_tone
from calls import (
    RtpCapture, message_blocks, read_rtp_pcap, register_then_uas, run_sipp, sipp_data_file, sipp_file, sipp_report,
    stop_sipp, wait_sipp,
)
from pbxproc import PBXProcess, have, prompt_seconds

pytestmark = [
    pytest.mark.peers,
    pytest.mark.skipif(not have("sipp"), reason="sipp is not installed"),
    pytest.mark.skipif(sipp_data_file("dtmf_2833_1.pcap") is None or sipp_data_file("g711a.pcap") is None,
                       reason="SIPp's dtmf_2833_*.pcap and g711a.pcap are not installed"),
    pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                       reason="SIPp plays pcaps through a raw socket and the RTP sniffer needs one (root)"),
]

GREETING_SECONDS = 0.5
MENU_TIMEOUT = 1  # seconds (auto_attendant.timeout)




@pytest.fixture
def attendant_pbx(tmp_path):
    """Starts a PBX whose attendant is on 0: key 1 connects 1002, any other key is invalid.

    The greeting is a short tone so that a menu round costs little; keyword
    arguments add to or replace the attendant's settings.
    """
    started: list[PBXProcess] = []

    def start(**settings) -> PBXProcess:
        greeting = write_tone(tmp_path / "greeting.wav", 600, GREETING_SECONDS)
        attendant = {
            "extension": "0", "greeting": str(greeting), "menu_options": {"1": "1002"},
            "timeout": MENU_TIMEOUT, "max_retries": 1, "dial_by_extension": False,
        }
        attendant.update(settings)
        pbx = PBXProcess(tmp_path / "pbx", auto_attendant=attendant, features={"no_answer_timeout": 10})
        started.append(pbx)
        return pbx.start()

    yield start
    for pbx in started:
        pbx.stop()


def caller(pbx: PBXProcess, workdir, key: str, *extra: str, seconds_after_handover: int = 2000):
    """1001 dials the attendant in the background and presses `key` (aa_uac_menu.xml)."""
    return run_sipp(
        "aa_uac_menu", pbx.sip_port, ["1001;secret1001;0"], workdir, "-d", str(seconds_after_handover),
        "-key", "dtmf", str(sipp_data_file(f"dtmf_2833_{key}.pcap")), "-key", "pcap", str(sipp_data_file("g711a.pcap")),
        *extra, background=True, recv_timeout_ms=15000,
    )


def live_calls(pbx: PBXProcess) -> list[dict]:
    with urllib.request.urlopen(f"http://127.0.0.1:{pbx.api_port}/api/calls", timeout=2) as answer:
        return json.load(answer)["items"]


def watch_call(pbx: PBXProcess, process, answered_by: str, timeout: float = 20) -> tuple[dict | None, float | None]:
    """Poll GET /api/calls while `process` (the caller) runs.

    Returns the last view of the call once `answered_by` took it over (None
    if that never happened) and the wall-clock time it was first seen so.
    """
    seen, first = None, None
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        for item in live_calls(pbx):
            if item["answered_by"] == answered_by:
                seen = item
                first = first or time.time()
        time.sleep(0.1)
    return seen, first




def received(run, start: str) -> list[str]:
    """Messages of a SIPp run's trace that start with `start` ("INVITE ", "BYE ", "SIP/2.0 200")."""
    return [m for m in message_blocks(sipp_file(run, "messages.log")) if m.startswith(start)]


def sdp_media_port(message: str, payload_type: int) -> int:
    match = re.search(rf"^m=audio (\d+) RTP/AVP {payload_type}\b", message, flags=re.M)
    assert match, message
    return int(match.group(1))


def test_key_1_connects_1002_and_the_caller_is_heard_there(attendant_pbx, tmp_path):
    pbx = attendant_pbx()
    relay_ports = range(pbx.config["server"]["rtp_port_range_start"], pbx.config["server"]["rtp_port_range_end"] + 1)
    callee = register_then_uas(pbx, "1002", "secret1002", "uas_answer", tmp_path)
    try:
        with RtpCapture() as rtp:
            uac = caller(pbx, tmp_path, "1")
            view, _ = watch_call(pbx, uac, "1002")
            uac_result = wait_sipp(uac)
            callee_result = wait_sipp(callee)
    finally:
        stop_sipp(callee)
    # The caller got the attendant's 200 and, later, the 200 to its BYE; the
    # callee got an INVITE, answered it and then got the caller's BYE.
    assert uac_result.returncode == 0, sipp_report(uac_result)
    assert callee_result.returncode == 0, sipp_report(callee_result)
    [invite] = received(callee_result, "INVITE ")
    assert re.search(r"^From:.*<sip:1001@", invite, flags=re.M | re.I), invite
    # 1002 is offered the codec the attendant agreed with the caller: PCMA, then telephone-event
    assert re.search(r"^m=audio \d+ RTP/AVP 8 101\s*$", invite, flags=re.M), invite
    assert len(received(callee_result, "BYE ")) >= 1

    # While the call was up the API showed it handed over, with audio relayed to 1002.
    assert view is not None, "GET /api/calls never showed the call answered by 1002"
    assert view["caller"] == "1001" and view["callee"] == "0" and view["state"] == "answered"
    assert view["legs"]["b"]["party"] == "1002"
    assert view["legs"]["a"]["media"]["packets_in"] > 0 and view["legs"]["b"]["media"]["packets_out"] > 0, view

    # The caller's PCMA (g711a.pcap, 50 packets a second) reached the callee's
    # media port from the relay, unchanged: about 2 s of it were sent after the hand-over.
    callee_port = sdp_media_port(received(callee_result, "SIP/2.0 200")[0], 8)
    to_callee = [p for p in rtp.captured if p.dst_port == callee_port]
    audio = [p for p in to_callee if p.payload_type == 8]
    assert len(audio) >= 60, [(p.src_port, p.payload_type) for p in to_callee[:20]]
    sent = {p.payload for p in read_rtp_pcap(sipp_data_file("g711a.pcap"))}
    assert all(p.payload in sent for p in audio)
    # Only the relay sent there, and only audio: the rest of the key press that
    # chose 1002 (telephone-event 101; the hand-over is quicker than a press) is not passed on.
    others = [(p.src_port, p.payload_type) for p in to_callee
              if p.src_port not in relay_ports or p.payload_type != 8]
    assert not others, others

    record = pbx.finished_record()
    assert (record["caller"], record["callee"], record["answered_by"]) == ("1001", "0", "1002")
    assert (record["disposition"], record["hangup_cause"], record["hangup_side"]) == ("answered", "normal", "caller")


def test_invalid_key_then_silence_ends_at_the_operator(attendant_pbx, tmp_path):
    pbx = attendant_pbx(operator_extension="1003")
    # 1002 (key 1) must not be rung: its UAS would answer, so a call to it shows.
    not_chosen = register_then_uas(pbx, "1002", "secret1002", "uas_answer", tmp_path)
    operator = register_then_uas(pbx, "1003", "secret1003", "uas_answer", tmp_path)
    menu_round = prompt_seconds("invalid-option") + GREETING_SECONDS + MENU_TIMEOUT
    try:
        uac = caller(pbx, tmp_path, "9", seconds_after_handover=int(menu_round * 1000) + 1500)
        view, handed_over = watch_call(pbx, uac, "1003")
        uac_result = wait_sipp(uac)
        operator_result = wait_sipp(operator)
    finally:
        stop_sipp(operator)
        stop_sipp(not_chosen)
    assert uac_result.returncode == 0, sipp_report(uac_result)
    assert operator_result.returncode == 0, sipp_report(operator_result)
    assert len(received(operator_result, "INVITE ")) == 1 and received(operator_result, "BYE ")
    assert not received(not_chosen, "INVITE "), "1002 was rung"
    assert view is not None and view["legs"]["b"]["media"]["packets_out"] > 0, view

    record = pbx.finished_record()
    assert (record["callee"], record["answered_by"], record["disposition"]) == ("0", "1003", "answered")
    assert record["hangup_side"] == "caller"
    # The operator came after "invalid option", the greeting again and the menu timeout,
    # counted from when the attendant answered.
    assert handed_over - record["answer_time"] >= menu_round - 0.3, (handed_over, record)


def test_invalid_key_then_silence_without_operator_says_goodbye_and_hangs_up(attendant_pbx, tmp_path):
    pbx = attendant_pbx()
    uac = caller(pbx, tmp_path, "9", "-set", "pbx_hangs_up", "1")
    uac_result = wait_sipp(uac)
    # The scenario ends only on the PBX's BYE (else -recv_timeout fails it).
    assert uac_result.returncode == 0, sipp_report(uac_result)
    record = pbx.finished_record()
    assert (record["caller"], record["callee"], record["answered_by"]) == ("1001", "0", "attendant")
    assert (record["disposition"], record["hangup_cause"], record["hangup_side"]) == ("answered", "attendant", "pbx")
    spoken = prompt_seconds("invalid-option") + GREETING_SECONDS + MENU_TIMEOUT + prompt_seconds("goodbye")
    assert record["end_time"] - record["answer_time"] >= spoken - 0.3, record
