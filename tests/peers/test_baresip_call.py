"""Two real softphones (baresip) call each other through the PBX and hear each other."""

from __future__ import annotations

import os
import sqlite3

import pytest

from calls import RtpSniffer, baresip_call, heard
from pbxproc import PBXProcess, have

pytestmark = [pytest.mark.peers, pytest.mark.skipif(not have("baresip"), reason="baresip is not installed")]


def test_two_baresips_hear_each_others_tone_through_the_relay(tmp_path):
    with PBXProcess(tmp_path / "pbx") as pbx:
        start, end = pbx.config["server"]["rtp_port_range_start"], pbx.config["server"]["rtp_port_range_end"]
        sniffing = os.geteuid() == 0
        sniffer = RtpSniffer() if sniffing else None
        if sniffer is not None:
            sniffer.__enter__()
        try:
            caller, callee = baresip_call(tmp_path, seconds=8, registrar_port=pbx.sip_port,
                                          caller=("1001", "secret1001", 440.0), callee=("1002", "secret1002", 1000.0))
        finally:
            if sniffer is not None:
                sniffer.__exit__(None, None, None)
        caller_heard, callee_heard = heard(caller), heard(callee)
        assert caller_heard.get("dominant") == pytest.approx(1000, abs=15), (caller_heard, caller.log()[-2000:])
        assert callee_heard.get("dominant") == pytest.approx(440, abs=15), (callee_heard, callee.log()[-2000:])
        if sniffer is not None:
            # The audio went through the PBX's relay ports.
            to_relay = sum(sniffer.count(dst_port=port) for port in range(start, end + 1))
            assert to_relay > 200, to_relay
        with sqlite3.connect(pbx.directory / "pbx.db") as db:
            [(disposition, billable)] = db.execute("SELECT disposition, billable FROM cdr").fetchall()
        assert disposition == "answered" and billable >= 2
