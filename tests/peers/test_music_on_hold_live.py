"""Music on hold with real SIP peers: a baresip softphone is put on hold by a SIPp caller.

1001 (SIPp, moh_uac_hold.xml) calls 1002 (baresip, auto-answer) and sends a
440 Hz tone the whole call long; after 1.5 s it puts 1002 on hold
(a=sendonly, or a=inactive) for 3 s, resumes, talks 2 s more and hangs up.
While 1002 is held the PBX must send it the hold music instead of the
caller's audio, and stop at the resume.

What reached the phone is captured on loopback (RtpCapture: root), stream
by stream: the caller's packets keep their SSRC through the relay, the
music has its own.  Its audio is compared with the shipped prompts/moh.wav
by averaged spectrum.  baresip's own recording cannot show the music:
baresip 1.0 stops writing what it decodes at the first re-INVITE that is
not sendrecv (it drops its decode filters and never sets them up again), so
only the part before the hold is checked there, and its log shows it took
both stream switches.
"""

from __future__ import annotations

import math
import os
import re
import sqlite3
import struct

import pytest

from audio import goertzel_power, rms
from calls import (
    Phone, RtpCapture, decode_g711, heard, message_blocks, rtp_ports_for, run_sipp, sipp_file, sipp_report,
    ssrc_runs, wait_until, write_tone_pcap,
)
from pbx.media.wav import read_wav as read_prompt
from pbxproc import PROJECT, PBXProcess, free_port, have

pytestmark = [
    pytest.mark.peers,
    pytest.mark.skipif(not have("sipp"), reason="sipp is not installed"),
    pytest.mark.skipif(not have("baresip"), reason="baresip is not installed"),
    pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                       reason="SIPp plays pcaps through a raw socket (root)"),
]

RATE = 8000
CALLER_TONE = 440.0
CALLER_SSRC = 0x5EED1234  # write_rtp_pcap's default
HOLD_SECONDS = 3.0
BLOCK = RATE // 4  # a quarter second


def spectrum(samples: list[float], low: int = 100, high: int = 1200, step: int = 10, window: int = 800) -> list[float]:
    """Power from low to high Hz in `step` Hz bins, averaged over windows of `window` samples (0.1 s)."""
    frequencies = range(low, high + 1, step)
    total = [0.0] * len(frequencies)
    windows = [samples[i:i + window] for i in range(0, len(samples) - window + 1, window)]
    for chunk in windows:
        for index, frequency in enumerate(frequencies):
            total[index] += goertzel_power(chunk, RATE, frequency)
    return [value / max(1, len(windows)) for value in total]


def similarity(a: list[float], b: list[float]) -> float:
    """Cosine similarity of two spectra (1.0: the same shape)."""
    dot = sum(x * y for x, y in zip(a, b))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


def shipped_music() -> list[float]:
    pcm = read_prompt(PROJECT / "prompts" / "moh.wav")
    return [v / 32768.0 for v in struct.unpack(f"<{len(pcm) // 2}h", pcm)]


@pytest.mark.parametrize("hold_direction", ["sendonly", "inactive"])
def test_held_baresip_gets_the_hold_music_instead_of_the_caller(tmp_path, hold_direction):
    with PBXProcess(tmp_path / "pbx") as pbx:
        server = pbx.config["server"]
        relay_ports = range(server["rtp_port_range_start"], server["rtp_port_range_end"] + 1)
        phone_port = free_port(also_tcp=False)
        phone_rtp = rtp_ports_for(phone_port)
        held = Phone(tmp_path / "phone-1002", "1002", "secret1002", pbx.sip_port, phone_port, tone=1000.0,
                     tone_seconds=40, regint=600, rtp_ports=phone_rtp)
        held.start(30)
        try:
            assert wait_until(held.registered, 10), held.log()[-3000:]
            pcap = write_tone_pcap(tmp_path / "caller-tone.pcap", CALLER_TONE, 12.0)
            with RtpCapture(dst_ports=range(phone_rtp[0], phone_rtp[1] + 1)) as rtp:
                caller = run_sipp("moh_uac_hold", pbx.sip_port, ["1001;secret1001;1002"], tmp_path,
                                  "-d", str(int(HOLD_SECONDS * 1000)), "-set", "hold_direction", hold_direction,
                                  "-key", "pcap", str(pcap), timeout=30)
        finally:
            held.stop()
        # 1001 got its call, a 200 for the hold (the scenario checks recvonly or
        # inactive), a 200 for the resume, and the 200 to its BYE.
        assert caller.returncode == 0, sipp_report(caller)
        answers = [m for m in message_blocks(sipp_file(caller, "messages.log")) if m.startswith("SIP/2.0 200")]
        hold_answer = next(m for m in answers if re.search(r"^CSeq:\s*3 INVITE", m, flags=re.M | re.I))
        expected = "recvonly" if hold_direction == "sendonly" else "inactive"
        assert re.search(rf"^a={expected}\s*$", hold_answer, flags=re.M), hold_answer
        assert held.established(), held.log()[-3000:]
        with sqlite3.connect(pbx.directory / "pbx.db") as db:
            [(disposition, answered_by)] = db.execute("SELECT disposition, answered_by FROM cdr").fetchall()
        assert (disposition, answered_by) == ("answered", "1002")

    # What the relay sent the phone, stream by stream: the caller's tone, the
    # hold music for as long as the hold lasted, the caller's tone again.  The
    # caller kept sending while it held the call: none of that got through.
    sent = [p for p in rtp.captured if p.src_port in relay_ports]
    runs = ssrc_runs(sent)
    summary = [(f"{ssrc:#x}", len(packets)) for ssrc, packets in runs]
    assert [ssrc == CALLER_SSRC for ssrc, _ in runs] == [True, False, True], summary
    (_, before), (music_ssrc, music), (_, after) = runs
    assert len(before) >= 50 and len(after) >= 50, summary  # a second at least: 50 packets of 20 ms
    assert abs(len(music) * 0.02 - HOLD_SECONDS) <= 0.75, summary
    assert {p.payload_type for p in music} == {0}  # PCMU, the codec the phone answered with
    # Paced like speech, not a burst.
    assert abs((music[-1].time - music[0].time) - (len(music) - 1) * 0.02) < 0.3

    # It is the shipped music, from its start.
    played = decode_g711(music)
    assert rms(played) > 0.02, rms(played)
    shipped = shipped_music()
    window = slice(BLOCK, 2 * RATE)  # past the fade-in, within the first chord
    assert similarity(spectrum(played[window]), spectrum(shipped[window])) > 0.8
    tone = decode_g711(before)
    assert similarity(spectrum(tone[window]), spectrum(shipped[window])) < 0.5  # the measure tells them apart

    # The phone took each stream: it logged the switch to the music and back.
    log = held.log()
    assert f"SSRC changed {CALLER_SSRC:#x} -> {music_ssrc:#x}" in log, log[-3000:]
    assert f"SSRC changed {music_ssrc:#x} -> {CALLER_SSRC:#x}" in log, log[-3000:]
    # Before the hold it decoded the caller's tone.  (baresip 1.0 records no
    # more after a re-INVITE that is not sendrecv: it drops its decode filters
    # and does not set them up again, so the music cannot be checked there.)
    before_hold = heard(held)
    assert before_hold.get("dominant") == pytest.approx(CALLER_TONE, abs=10), before_hold
