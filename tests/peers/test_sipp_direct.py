"""The call scenarios checked against each other, SIPp to SIPp, without a PBX.

Each UAC scenario of tests/peers/scenarios/ plays against the UAS scenario
made for it; the UAS challenges the first INVITE ("-set challenge 1") the
way the PBX will, so that the 407 / ACK / authenticated INVITE path runs
too.  The scenarios must also fail when the other side does something else,
or they would prove nothing behind the PBX.  Then the baresip helper of
tests/calls.py: two phones call each other directly and each must hear the
other's tone.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from calls import (
    RtpSniffer, baresip_call, digest_response_ok, heard, message_blocks, run_sipp, sipp_data_file, sipp_file,
    sipp_report, stop_sipp, wait_sipp,
)
from pbxproc import have

pytestmark = [pytest.mark.peers, pytest.mark.skipif(not have("sipp"), reason="sipp is not installed")]

USER = "1001;secret1001;1002"


def play(workdir, uac, uas, uac_extra=(), uas_extra=(), users=(USER,), calls=None, challenge=True,
         expect_failure=False, recv_timeout_ms=3000):
    """The UAS in the background, the UAC against it; (uac result, uas result)."""
    uas_args = (["-set", "challenge", "1"] if challenge else []) + list(uas_extra)
    count = calls or len(users)
    server = run_sipp(uas, None, None, workdir, *uas_args, background=True, calls=count, recv_timeout_ms=5000)
    try:
        client = run_sipp(uac, server.sipp_port, list(users), workdir, *uac_extra, calls=count, timeout=30,
                          recv_timeout_ms=recv_timeout_ms)
    finally:
        if expect_failure:
            stop_sipp(server)
    return client, wait_sipp(server, 15)


GOOD_PAIRS = [
    ("uac_call", "uas_answer", ["-d", "100"], []),
    ("uac_call", "uas_ring_answer", [], ["-d", "100"]),
    ("uac_hold", "uas_answer", ["-d", "50"], []),
    ("uac_hold", "uas_ring_answer", ["-d", "50"], []),
    ("uac_wait_bye", "uas_answer_bye", [], ["-d", "100"]),
    ("uac_cancel", "uas_ring_no_answer", ["-d", "100"], []),
    ("uac_busy", "uas_busy", [], []),
    ("uac_unavailable", "uas_unavailable", [], []),
    ("uac_notfound", "uas_notfound", [], []),
]


def play_all(workdir, pairs, expect_failure=False):
    """play() for each (uac, uas, uac_extra, uas_extra) at once, each in its own directory."""
    with ThreadPoolExecutor(len(pairs)) as pool:
        futures = {
            f"{uac}-{uas}": pool.submit(play, workdir / f"{uac}-{uas}", uac, uas, uac_extra, uas_extra,
                                        expect_failure=expect_failure,
                                        recv_timeout_ms=1000 if expect_failure else 3000)
            for uac, uas, uac_extra, uas_extra in pairs
        }
        return {name: future.result() for name, future in futures.items()}


def test_each_uac_scenario_passes_against_its_uas(tmp_path):
    results = play_all(tmp_path, GOOD_PAIRS)
    failed = {name: (client, server) for name, (client, server) in results.items()
              if client.returncode != 0 or server.returncode != 0}
    assert not failed, "\n\n".join(f"=== {name}\n{sipp_report(c)}\n{sipp_report(s)}" for name, (c, s) in failed.items())


BAD_PAIRS = [
    ("uac_busy", "uas_answer", [], []),            # 200 instead of 486
    ("uac_call", "uas_busy", [], []),              # 486 instead of 200
    ("uac_cancel", "uas_answer", [], []),          # answered before the 180 it waits for
    ("uac_unavailable", "uas_notfound", [], []),   # 404 instead of 480
    ("uac_notfound", "uas_busy", [], []),          # 486 instead of 404
    ("uac_hold", "uas_busy", [], []),              # never established
    ("uac_wait_bye", "uas_ring_no_answer", [], []),  # rings for ever: -recv_timeout
]


def test_a_uac_scenario_fails_on_another_answer(tmp_path):
    results = play_all(tmp_path, BAD_PAIRS, expect_failure=True)
    passed = [name for name, (client, _) in results.items() if client.returncode == 0]
    assert not passed, f"these UAC scenarios passed against the wrong UAS: {passed}"


def test_a_uac_scenario_fails_without_a_challenge(tmp_path):
    # behind the PBX an INVITE is always challenged: a 200 at once is a failure
    client, _ = play(tmp_path, "uac_call", "uas_answer", challenge=False, expect_failure=True)
    assert client.returncode != 0, sipp_report(client)


def _sent_by_uac(run):
    return message_blocks(sipp_file(run, "messages.log"))


def _header(message, name):
    match = re.search(rf"^{name}:\s*(.*)$", message, flags=re.M | re.I)
    return match.group(1).strip() if match else None


def _branch(message):
    return re.search(r"branch=([^;\s]+)", _header(message, "Via")).group(1)


def test_the_407_is_acked_in_its_transaction_and_the_digest_is_right(tmp_path):
    client, server = play(tmp_path, "uac_call", "uas_answer")
    assert client.returncode == 0, sipp_report(client)
    messages = _sent_by_uac(client)
    requests = [m for m in messages if not m.startswith("SIP/2.0")]
    first_invite, ack_407, second_invite = requests[:3]
    assert first_invite.startswith("INVITE ") and ack_407.startswith("ACK ") and second_invite.startswith("INVITE ")
    # RFC 3261 17.1.1.3: same branch and CSeq number as the INVITE, To tag of the 407
    assert _branch(ack_407) == _branch(first_invite)
    assert _header(first_invite, "CSeq") == "1 INVITE" and _header(ack_407, "CSeq") == "1 ACK"
    challenge = next(m for m in messages if m.startswith("SIP/2.0 407"))
    assert _header(ack_407, "To") == _header(challenge, "To")
    assert _header(second_invite, "CSeq") == "2 INVITE" and _branch(second_invite) != _branch(first_invite)
    assert _header(second_invite, "Proxy-Authorization").startswith("Digest ")
    assert digest_response_ok(second_invite, "secret1001")
    assert not digest_response_ok(second_invite, "secret1002")


def test_cancel_and_its_ack_share_the_invites_branch(tmp_path):
    client, _ = play(tmp_path, "uac_cancel", "uas_ring_no_answer")
    assert client.returncode == 0, sipp_report(client)
    requests = [m for m in _sent_by_uac(client) if not m.startswith("SIP/2.0")]
    invite = [m for m in requests if m.startswith("INVITE ")][-1]
    cancel = next(m for m in requests if m.startswith("CANCEL "))
    ack = [m for m in requests if m.startswith("ACK ")][-1]
    assert _branch(invite) == _branch(cancel) == _branch(ack)
    assert invite.split()[1] == cancel.split()[1] == ack.split()[1]
    assert _header(cancel, "CSeq") == "2 CANCEL" and _header(ack, "CSeq") == "2 ACK"
    assert ";tag=" not in _header(cancel, "To") and ";tag=" in _header(ack, "To")


def test_hold_and_resume_are_answered_with_the_mirrored_direction(tmp_path):
    client, server = play(tmp_path, "uac_hold", "uas_answer")
    assert client.returncode == 0, sipp_report(client)
    answers = [m for m in message_blocks(sipp_file(server, "messages.log"))
               if m.startswith("SIP/2.0 200") and "CSeq: " in m and "INVITE" in _header(m, "CSeq")]
    directions = [re.search(r"^a=(sendrecv|sendonly|recvonly|inactive)", m, flags=re.M).group(1) for m in answers]
    versions = [re.search(r"^o=\S+ \S+ (\S+)", m, flags=re.M).group(1) for m in answers]
    assert directions == ["sendrecv", "recvonly", "sendrecv"]
    assert versions == ["1", "2", "3"]


def test_load_scenarios_run_many_calls(tmp_path):
    users = ["1001;secret1001;1002", "1002;secret1002;1003", "1003;secret1003;1001"]
    client, server = play(tmp_path, "uac_load", "uas_load", ["-r", "100", "-l", "100", "-d", "200"],
                          users=users, calls=30)
    assert client.returncode == 0, sipp_report(client)
    assert server.returncode == 0, sipp_report(server)
    answers = [m for m in message_blocks(sipp_file(server, "messages.log")) if m.startswith("SIP/2.0 ")]
    assert not [m for m in answers if m.startswith("SIP/2.0 180")]


@pytest.mark.skipif(sipp_data_file("g711a.pcap") is None, reason="SIPp's g711a.pcap is not installed")
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="SIPp plays pcaps through a raw socket (root)")
def test_the_rtp_scenario_sends_the_pcap_to_the_answer(tmp_path):
    pcap = str(sipp_data_file("g711a.pcap"))
    with RtpSniffer() as rtp:
        client, server = play(tmp_path, "uac_call_rtp", "uas_answer", ["-d", "1000", "-key", "pcap", pcap])
    assert client.returncode == 0, sipp_report(client)
    answer = next(m for m in message_blocks(sipp_file(client, "messages.log")) if m.startswith("SIP/2.0 200"))
    media_port = int(re.search(r"^m=audio (\d+) RTP/AVP 8\b", answer, flags=re.M).group(1))
    # 50 packets a second of PCMA (payload type 8) for about a second
    assert 30 <= rtp.count(payload_type=8, dst_port=media_port) <= 80, rtp.packets[:10]


@pytest.mark.skipif(not have("baresip"), reason="baresip is not installed")
def test_two_baresips_hear_each_others_tone(tmp_path):
    caller, callee = baresip_call(tmp_path, seconds=3)
    assert caller.established() and callee.established(), caller.log()[-2000:] + callee.log()[-2000:]
    at_caller, at_callee = heard(caller), heard(callee)
    assert at_caller and at_callee, caller.log()[-2000:]
    assert at_caller["dominant"] == pytest.approx(1000, abs=10), at_caller
    assert at_callee["dominant"] == pytest.approx(440, abs=10), at_callee
    assert at_caller["rms"] > 0.1 and at_callee["rms"] > 0.1
    assert at_caller["seconds"] > 1.5 and at_callee["seconds"] > 1.5
