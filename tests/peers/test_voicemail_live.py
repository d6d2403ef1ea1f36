"""Voicemail and message waiting against the running PBX, with SIPp and a small UDP phone as peers.

What each test drives through real sockets:

- leaving a message: SIPp calls an extension that rings without answering
  (or is not registered); voicemail answers, the caller's RTP (a pcap made
  here: one tone before the beep, another after it) becomes a WAV file that
  the REST API lists and serves, and the call record says where the call
  went;
- message waiting: a registered phone gets an unsolicited NOTIFY
  (message-summary) when a message arrives; a phone that SUBSCRIBEs with
  digest credentials gets 200, an immediate NOTIFY with the counts, and
  another in the same dialog when a message arrives;
- listening: SIPp dials *97 and types the PIN, '#' and '1' as RFC 4733
  events (SIPp's own dtmf_2833_*.pcap files); the audio the PBX sends back,
  captured on the loopback interface, holds the tone that was left, the
  message is heard afterwards and the subscribed phone's lamp goes out.

SIPp plays pcaps through a raw socket and the capture is an AF_PACKET
socket: both need root (or CAP_NET_RAW), so these tests are skipped without.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from audio import analyse, dominant_frequency, goertzel_power, read_wav, rms, write_wav
from calls import (
    RtpSniffer, register_then_uas, run_sipp, sipp_data_file, sipp_report, stop_sipp, wait_sipp, wait_until,
)
from pbxproc import PBXProcess, free_port, have, prompt_seconds
from sipclient import authorization, register
from pbx.sip.message import Request, Response, parse_datagram

pytestmark = [
    pytest.mark.peers,
    pytest.mark.skipif(not have("sipp"), reason="sipp is not installed"),
    pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                       reason="SIPp plays pcaps through a raw socket, the RTP capture is a packet socket (root)"),
]

DIALPLAN = {"internal": "^[1-9][0-9]{3}$", "voicemail": "^\\*97$|^\\*98(?P<mailbox>[0-9]*)$"}
NO_ANSWER = 2  # seconds before voicemail answers an unanswered call
TONE = 1000.0  # Hz: what the caller says after the beep
BEFORE_BEEP = 440.0  # Hz: what the caller says during the greeting (must not be recorded)
MESSAGE_SECONDS = 3.0
PASSWORDS = {"1001": "secret1001", "1002": "secret1002", "1003": "secret1003"}
PIN_1001 = "1234"


@pytest.fixture
def pbx(tmp_path):
    with PBXProcess(
        tmp_path / "pbx",
        dialplan=DIALPLAN,
        features={"no_answer_timeout": 20},
        voicemail={"enabled": True, "no_answer_timeout": NO_ANSWER, "silence_timeout": 2,
                   "min_message_duration": 1.0, "storage_path": str(tmp_path / "pbx" / "voicemail")},
    ) as process:
        yield process


# ---------------------------------------------------------------- G.711 and pcap files (independent of the PBX's codec)

_SEGMENT_ENDS_ULAW = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)
_SEGMENT_ENDS_ALAW = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)


def _segment(value: int, ends: tuple[int, ...]) -> int:
    for index, end in enumerate(ends):
        if value <= end:
            return index
    return len(ends)


def ulaw_encode(sample: int) -> int:
    """ITU-T G.711 µ-law of one 16-bit sample (the classic reference algorithm)."""
    value = sample >> 2
    mask = 0xFF
    if value < 0:
        value, mask = -value, 0x7F
    value = min(value, 8159) + 0x21
    segment = _segment(value, _SEGMENT_ENDS_ULAW)
    if segment >= 8:
        return 0x7F ^ mask
    return ((segment << 4) | ((value >> (segment + 1)) & 0x0F)) ^ mask


def alaw_encode(sample: int) -> int:
    value = sample >> 3
    mask = 0xD5
    if value < 0:
        value, mask = -value - 1, 0x55
    segment = _segment(value, _SEGMENT_ENDS_ALAW)
    if segment >= 8:
        return 0x7F ^ mask
    code = (segment << 4) | (((value >> 1) if segment < 2 else (value >> segment)) & 0x0F)
    return code ^ mask


def ulaw_decode(code: int) -> int:
    code = ~code & 0xFF
    value = (((code & 0x0F) << 3) + 0x84) << ((code & 0x70) >> 4)
    return 0x84 - value if code & 0x80 else value - 0x84


def alaw_decode(code: int) -> int:
    code ^= 0x55
    value = (code & 0x0F) << 4
    segment = (code & 0x70) >> 4
    if segment == 0:
        value += 8
    elif segment == 1:
        value += 0x108
    else:
        value = (value + 0x108) << (segment - 1)
    return value if code & 0x80 else -value


ENCODERS = {8: alaw_encode, 0: ulaw_encode}
DECODERS = {8: alaw_decode, 0: ulaw_decode}


def _ip_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


TELEPHONE_EVENT = 101  # the payload type the scenarios' offers give telephone-event
EVENT_CODES = "0123456789*#"


def _frame(payload_type: int, sequence: int, timestamp: int, ssrc: int, payload: bytes, marker: bool = False) -> bytes:
    """Ethernet + IPv4 + UDP + RTP, loopback addresses (SIPp puts its own addresses and ports in)."""
    rtp = struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | payload_type, sequence & 0xFFFF,
                      timestamp & 0xFFFFFFFF, ssrc) + payload
    udp = struct.pack("!HHHH", 49000, 10000, 8 + len(rtp), 0) + rtp
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), sequence & 0xFFFF, 0, 64, 17, 0,
                     socket.inet_aton("127.0.0.1"), socket.inet_aton("127.0.0.1"))
    ip = ip[:10] + struct.pack("!H", _ip_checksum(ip)) + ip[12:]
    return bytes(12) + b"\x08\x00" + ip + udp


def write_rtp_pcap(path: Path, parts: list[tuple[float | str | None, float]], payload_type: int = 8,
                   ptime: int = 20, amplitude: float = 0.4) -> Path:
    """A pcap (Ethernet, IPv4/UDP) of one RTP stream, a packet every `ptime` ms, as SIPp's
    play_pcap_audio replays it (with its own addresses and ports, at the pcap's pace).

    parts, in order, each (what, seconds): a frequency in Hz is that tone in
    G.711 (payload_type 8 A-law or 0 µ-law); None sends nothing for that
    long (the timestamps and the clock go on); a key ("*", "5"...) is one
    press as RFC 4733 events (payload type TELEPHONE_EVENT, one timestamp,
    the end packet sent three times).
    """
    encode = ENCODERS[payload_type]
    samples_per_packet = 8 * ptime
    ssrc = 0x5EC0DE01
    sequence, timestamp, clock = 1000, 160_000, 1_700_000_000.0
    records = []

    def record(frame: bytes) -> None:
        whole = int(clock)
        records.append(struct.pack("<IIII", whole, int(round((clock - whole) * 1e6)), len(frame), len(frame)) + frame)

    for what, seconds in parts:
        packets = max(1, int(round(seconds * 1000 / ptime)))
        if isinstance(what, str):
            event = EVENT_CODES.index(what)
            for n in range(packets):
                end = n == packets - 1
                payload = struct.pack("!BBH", event, (0x80 if end else 0) | 10, (n + 1) * samples_per_packet)
                for _ in range(3 if end else 1):
                    record(_frame(TELEPHONE_EVENT, sequence, timestamp, ssrc, payload, marker=n == 0))
                    sequence += 1
                clock += ptime / 1000
            timestamp += packets * samples_per_packet
            continue
        for _ in range(packets):
            if what is not None:
                step = 2 * math.pi * what / 8000
                payload = bytes(
                    encode(int(round(amplitude * 32767 * math.sin(step * (timestamp + n)))))
                    for n in range(samples_per_packet)
                )
                record(_frame(payload_type, sequence, timestamp, ssrc, payload))
                sequence += 1
            timestamp += samples_per_packet
            clock += ptime / 1000
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    path = Path(path)
    path.write_bytes(header + b"".join(records))
    return path


# ---------------------------------------------------------------- capturing the RTP the PBX sends

class RtpCapture(RtpSniffer):
    """An RtpSniffer that keeps the RTP packets sent to one UDP port: (sequence, timestamp, pt, payload)."""

    def __init__(self, dst_port: int, interface: str = "lo") -> None:
        super().__init__(interface)
        self.dst_port = dst_port
        self.stream: list[tuple[int, int, int, bytes]] = []

    def _parse(self, frame: bytes) -> None:
        if len(frame) < 14 + 20 + 8 + 12 or frame[12:14] != b"\x08\x00":
            return
        ip = frame[14:]
        if ip[9] != 17:
            return
        udp = ip[(ip[0] & 0x0F) * 4:]
        if struct.unpack("!H", udp[2:4])[0] != self.dst_port:
            return
        rtp = udp[8:]
        if len(rtp) < 12 or rtp[0] >> 6 != 2:
            return
        _, marker_pt, sequence, timestamp = struct.unpack("!BBHI", rtp[:8])
        offset = 12 + 4 * (rtp[0] & 0x0F)
        self.stream.append((sequence, timestamp, marker_pt & 0x7F, rtp[offset:]))

    def audio(self) -> list[float]:
        """The G.711 audio received, as samples in -1..1, placed by RTP timestamp (gaps are silence)."""
        packets = [p for p in self.stream if p[2] in DECODERS]
        if not packets:
            return []
        # Unwrap the sequence numbers, then order by them.
        unwrapped, last = [], None
        base = 0
        for sequence, timestamp, pt, payload in packets:
            if last is not None and sequence < last and last - sequence > 0x8000:
                base += 0x10000
            last = sequence
            unwrapped.append((base + sequence, timestamp, pt, payload))
        unwrapped.sort()
        first_timestamp = unwrapped[0][1]
        samples: list[float] = []
        for _, timestamp, pt, payload in unwrapped:
            position = (timestamp - first_timestamp) & 0xFFFFFFFF
            if position > 8000 * 120:
                continue  # not of this stream
            if position > len(samples):
                samples.extend([0.0] * (position - len(samples)))
            decode = DECODERS[pt]
            decoded = [decode(code) / 32768.0 for code in payload]
            samples[position:position + len(decoded)] = decoded
        return samples


def tone_runs(samples: list[float], frequency: float, rate: int = 8000,
              window: float = 0.1) -> list[tuple[float, float]]:
    """(start, length) in seconds of each stretch of `window`s in which `frequency` carries
    at least 30% of the energy (speech and other tones stay far below)."""
    size = int(rate * window)
    runs: list[tuple[float, float]] = []
    start = None
    for index in range(0, len(samples) - size + 1, size):
        chunk = samples[index:index + size]
        level = rms(chunk)
        # A pure sine of amplitude A has rms A/sqrt(2); its Goertzel power (normalised by
        # length) is about (A * size / 2)^2 / size = A^2 size / 4, i.e. rms^2 * size / 2.
        on = level > 0.02 and goertzel_power(chunk, rate, frequency) > 0.3 * level * level * size / 2
        if on and start is None:
            start = index
        elif not on and start is not None:
            runs.append((start / rate, (index - start) / rate))
            start = None
    if start is not None:
        runs.append((start / rate, (len(samples) - start) / rate))
    return runs


# ---------------------------------------------------------------- a small UDP phone for NOTIFY and SUBSCRIBE

class Phone:
    """A UDP SIP user agent in a thread: registers, subscribes, and answers what the PBX sends it.

    NOTIFYs get 200 and are kept in `notifies`; an INVITE gets 486 Busy
    Here (the phone is busy: the call goes to voicemail at once).
    """

    def __init__(self, pbx: PBXProcess, user: str) -> None:
        self.pbx = pbx
        self.user = user
        self.password = PASSWORDS[user]
        self.server = f"127.0.0.1:{pbx.sip_port}"
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.notifies: list[Request] = []
        self.invites: list[Request] = []
        self.responses: list[Response] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def __enter__(self) -> Phone:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the receiving thread

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, address = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                message = parse_datagram(data)
            except Exception as error:  # noqa: BLE001 - kept for the assertion message
                self.errors.append(f"unparsable datagram from {address}: {error!r}: {data[:200]!r}")
                continue
            if isinstance(message, Response):
                with self._lock:
                    self.responses.append(message)
                continue
            if message.method == "NOTIFY":
                self._answer(message, 200, "OK", address)
                with self._lock:
                    self.notifies.append(message)
            elif message.method == "INVITE":
                self._answer(message, 486, "Busy Here", address, to_tag=True)
                with self._lock:
                    self.invites.append(message)
            elif message.method in ("ACK",):
                continue
            else:
                self._answer(message, 200, "OK", address)

    def _answer(self, request: Request, status: int, reason: str, address, to_tag: bool = False) -> None:
        headers = "".join(f"Via: {via}\r\n" for via in request.headers.values("via"))
        to = request.headers.get("to")
        if to_tag and ";tag=" not in to:
            to += ";tag=busy" + secrets.token_hex(4)
        text = (
            f"SIP/2.0 {status} {reason}\r\n{headers}"
            f"From: {request.headers.get('from')}\r\nTo: {to}\r\n"
            f"Call-ID: {request.headers.get('call-id')}\r\nCSeq: {request.headers.get('cseq')}\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        self.sock.sendto(text.encode(), address)

    # -- requests

    def _request(self, data: bytes, cseq_method: str, call_id: str, timeout: float = 3.0) -> Response:
        """Send a request and wait for its final response (matched by Call-ID and method)."""
        self.sock.sendto(data, ("127.0.0.1", self.pbx.sip_port))
        found: list[Response] = []

        def final() -> bool:
            with self._lock:
                for response in self.responses:
                    if (response.status >= 200 and response.headers.get("call-id") == call_id
                            and response.headers.get("cseq").split()[-1] == cseq_method):
                        self.responses.remove(response)
                        found.append(response)
                        return True
            return False

        if not wait_until(final, timeout, 0.02):
            raise AssertionError(f"no final response to {cseq_method} from the PBX")
        return found[0]

    def register(self) -> Response:
        call_id = f"reg-{secrets.token_hex(6)}"
        common = dict(port=self.port, server=self.server, call_id=call_id)
        challenge = self._request(register(self.user, **common), "REGISTER", call_id)
        assert challenge.status == 401, challenge
        auth = authorization(challenge, self.user, self.password, uri=f"sip:{self.server}")
        return self._request(register(self.user, cseq=2, authorization=auth, **common), "REGISTER", call_id)

    def subscribe(self, expires: int = 600, box: str | None = None) -> tuple[Response, Response, str, str]:
        """SUBSCRIBE to a mailbox (the own one by default), answering the digest challenge:
        (the first answer, the final answer, Call-ID, From tag)."""
        call_id, tag = f"sub-{secrets.token_hex(6)}", secrets.token_hex(4)
        uri = f"sip:{box or self.user}@{self.server}"

        def build(cseq: int, auth: str | None) -> bytes:
            return (
                f"SUBSCRIBE {uri} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{secrets.token_hex(8)};rport\r\n"
                "Max-Forwards: 70\r\n"
                f"From: <sip:{self.user}@{self.server}>;tag={tag}\r\n"
                f"To: <{uri}>\r\n"
                f"Call-ID: {call_id}\r\nCSeq: {cseq} SUBSCRIBE\r\n"
                f"Contact: <sip:{self.user}@127.0.0.1:{self.port}>\r\n"
                "Event: message-summary\r\nAccept: application/simple-message-summary\r\n"
                f"Expires: {expires}\r\n"
                + (f"Authorization: {auth}\r\n" if auth else "")
                + "Content-Length: 0\r\n\r\n"
            ).encode()

        challenge = self._request(build(1, None), "SUBSCRIBE", call_id)
        answer = challenge
        if challenge.status == 401:
            auth = authorization(challenge, self.user, self.password, method="SUBSCRIBE", uri=uri)
            answer = self._request(build(2, auth), "SUBSCRIBE", call_id)
        return challenge, answer, call_id, tag

    def wait_notify(self, predicate, timeout: float) -> Request | None:
        """The first NOTIFY received that satisfies predicate, waiting up to timeout."""
        found: list[Request] = []

        def seen() -> bool:
            with self._lock:
                for notify in self.notifies:
                    if predicate(notify):
                        found.append(notify)
                        return True
            return False

        return found[0] if wait_until(seen, timeout, 0.05) else None


def summary(notify: Request) -> dict[str, str]:
    """The message-summary body of a NOTIFY as {lower-case header: value}."""
    fields = {}
    for line in (notify.body or b"").decode().splitlines():
        name, colon, value = line.partition(":")
        if colon:
            fields[name.strip().lower()] = value.strip()
    return fields


def waiting(notify: Request) -> bool:
    return summary(notify).get("messages-waiting") == "yes"


# ---------------------------------------------------------------- the PBX's side: REST API, records, prompts

def api_get(pbx: PBXProcess, path: str) -> tuple[int, str, bytes]:
    """(status, content type, body) of a GET on the PBX's REST API."""
    request = urllib.request.Request(f"http://127.0.0.1:{pbx.api_port}{path}")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, answer.headers.get("content-type", ""), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("content-type", ""), error.read()


def mailbox(pbx: PBXProcess, number: str) -> dict:
    status, _, body = api_get(pbx, f"/api/voicemail/{number}")
    assert status == 200, body
    return json.loads(body)






def greeting_seconds(box: str) -> float:
    """The default greeting of a mailbox, up to the end of the beep."""
    digits = [f"digit-{d}" for d in box]
    return prompt_seconds("vm-person-at-extension", *digits, "vm-not-available", "beep")


def voicemail_files(pbx: PBXProcess, box: str) -> list[Path]:
    directory = Path(pbx.config["voicemail"]["storage_path"]) / box
    return sorted(p for p in directory.glob("*.wav") if not p.name.startswith("greeting")) if directory.is_dir() else []


# ---------------------------------------------------------------- leaving a message

def message_pcap(workdir: Path, box: str, skip_greeting: bool = False, lead: float = 1.0) -> tuple[Path, float]:
    """What the caller sends, and how long that takes (s).

    BEFORE_BEEP during the greeting (ending `lead` s before the beep ends),
    nothing for 2 * lead s, then TONE for MESSAGE_SECONDS: the recording
    must hold only the last part.  With skip_greeting, a key press ('*')
    right away instead, which cuts the greeting short: the beep follows.
    """
    if skip_greeting:
        parts = [(None, 0.3), ("*", 0.1), (None, 1.2), (TONE, MESSAGE_SECONDS)]
    else:
        parts = [(BEFORE_BEEP, greeting_seconds(box) - lead), (None, 2 * lead), (TONE, MESSAGE_SECONDS)]
    seconds = sum(length for _, length in parts)
    return write_rtp_pcap(Path(workdir) / f"message-{box}.pcap", parts), seconds


def leave_message(pbx: PBXProcess, workdir: Path, caller: str, box: str, skip_greeting: bool = False,
                  after: float = 0.7):
    """SIPp `caller` calls `box`, which must end up in voicemail, says message_pcap() and
    hangs up `after` s later; the SIPp run."""
    pcap, seconds = message_pcap(workdir, box, skip_greeting)
    return run_sipp("uac_call_rtp", pbx.sip_port, [f"{caller};{PASSWORDS[caller]};{box}"], workdir,
                    "-d", str(int((seconds + after) * 1000)), "-key", "pcap", str(pcap), "-mp", str(media_port()),
                    timeout=60)


def media_port() -> int:
    """An even UDP port with the one two above free too (SIPp's -mp binds it for audio and video)."""
    for _ in range(50):
        port = free_port(also_tcp=False)
        if port % 2:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", port + 2))
            return port
        except OSError:
            continue
    raise RuntimeError("no free media port pair")


def check_recording(path: Path) -> dict:
    """The stored WAV holds TONE for about MESSAGE_SECONDS and nothing of BEFORE_BEEP."""
    heard = analyse(path)
    assert heard["rate"] == 8000, heard
    assert heard["seconds"] == pytest.approx(MESSAGE_SECONDS, abs=0.5), heard
    assert heard["dominant"] == pytest.approx(TONE, abs=10), heard
    rate, samples = read_wav(path)
    assert sum(length for _, length in tone_runs(samples, TONE)) == pytest.approx(MESSAGE_SECONDS, abs=0.5)
    assert tone_runs(samples, BEFORE_BEEP) == [], "the greeting-time audio was recorded"
    return heard


def test_unanswered_call_leaves_a_message(pbx, tmp_path):
    began = time.time()
    callee = register_then_uas(pbx, "1002", "secret1002", "uas_ring_no_answer", tmp_path)
    try:
        caller = leave_message(pbx, tmp_path, "1001", "1002")
        assert caller.returncode == 0, sipp_report(caller) + pbx.log()[-3000:]
        assert wait_sipp(callee, 10).returncode == 0, sipp_report(callee)  # it was CANCELled
    finally:
        stop_sipp(callee)

    record = pbx.finished_record(began)
    assert (record["caller"], record["callee"]) == ("1001", "1002")
    assert (record["disposition"], record["hangup_cause"]) == ("missed", "voicemail-no-answer"), record
    assert record["answer_time"] - record["start_time"] == pytest.approx(NO_ANSWER, abs=1.0), record

    assert wait_until(lambda: voicemail_files(pbx, "1002"), 5), pbx.log()[-3000:]
    [stored] = voicemail_files(pbx, "1002")
    check_recording(stored)

    box = mailbox(pbx, "1002")
    assert (box["new"], box["old"]) == (1, 0), box
    [message] = box["messages"]
    assert (message["caller"], message["heard"], message["saved"]) == ("1001", False, False), message
    assert message["duration"] == pytest.approx(MESSAGE_SECONDS, abs=0.5), message
    assert message["call_id"] == record["call_id"], (message, record)
    status, content_type, body = api_get(pbx, message["audio"])
    assert (status, content_type) == (200, "audio/wav")
    assert body == stored.read_bytes()


def test_call_to_an_unregistered_extension_goes_straight_to_voicemail(pbx, tmp_path):
    began = time.time()
    caller = leave_message(pbx, tmp_path, "1001", "1003")
    assert caller.returncode == 0, sipp_report(caller) + pbx.log()[-3000:]
    record = pbx.finished_record(began)
    assert (record["disposition"], record["hangup_cause"]) == ("missed", "voicemail-not-registered"), record
    assert record["answer_time"] - record["start_time"] < 1.0, record
    assert wait_until(lambda: voicemail_files(pbx, "1003"), 5), pbx.log()[-3000:]
    [stored] = voicemail_files(pbx, "1003")
    check_recording(stored)
    box = mailbox(pbx, "1003")
    assert (box["new"], box["old"], box["messages"][0]["caller"]) == (1, 0, "1001"), box
    assert mailbox(pbx, "1002")["messages"] == []


def test_check_recording_catches_the_wrong_audio(tmp_path):
    """The recording checks used above fail on audio that is not the message."""
    from audio import write_tone
    with pytest.raises(AssertionError):
        check_recording(write_tone(tmp_path / "other.wav", BEFORE_BEEP, MESSAGE_SECONDS))
    with pytest.raises(AssertionError):
        check_recording(write_tone(tmp_path / "short.wav", TONE, MESSAGE_SECONDS / 2))
    step = 2 * math.pi / 8000
    both = [0.4 * math.sin(step * BEFORE_BEEP * n) for n in range(8000)]
    both += [0.4 * math.sin(step * TONE * n) for n in range(int(8000 * (MESSAGE_SECONDS - 1)))]
    with pytest.raises(AssertionError):
        check_recording(write_wav(tmp_path / "both.wav", both))


# ---------------------------------------------------------------- message waiting


def test_registered_phone_gets_an_unsolicited_notify_for_a_new_message(pbx, tmp_path):
    began = time.time()
    with Phone(pbx, "1002") as phone:
        registered = phone.register()
        assert registered.status == 200, registered
        # Registering tells the phone the state of its mailbox at once: empty.
        first = phone.wait_notify(lambda n: True, 5)
        assert first is not None, pbx.log()[-3000:]
        assert first.uri == f"sip:1002@127.0.0.1:{phone.port}"
        assert first.headers.get("event") == "message-summary"
        assert first.headers.get("content-type") == "application/simple-message-summary"
        assert (summary(first)["messages-waiting"], summary(first)["voice-message"]) == ("no", "0/0"), first.body

        # The phone is busy (486): the call goes to 1002's voicemail at once.
        caller = leave_message(pbx, tmp_path, "1001", "1002", skip_greeting=True)
        assert caller.returncode == 0, sipp_report(caller) + pbx.log()[-3000:]
        assert len({invite.call_id for invite in phone.invites}) == 1, phone.invites

        notify = phone.wait_notify(waiting, 5)
        assert notify is not None, [n.body for n in phone.notifies]
        assert notify.uri == f"sip:1002@127.0.0.1:{phone.port}"
        assert notify.headers.get("event") == "message-summary"
        assert notify.headers.get("subscription-state", "").startswith("active")
        assert notify.call_id != first.call_id  # out of any dialog: a new request each time
        fields = summary(notify)
        assert fields["voice-message"] == "1/0", notify.body
        assert fields["message-account"] == "sip:1002@127.0.0.1", notify.body
        assert not phone.errors, phone.errors

    record = pbx.finished_record(began)
    assert (record["disposition"], record["hangup_cause"]) == ("missed", "voicemail-busy"), record
    assert (mailbox(pbx, "1002")["new"], mailbox(pbx, "1002")["old"]) == (1, 0)


def test_subscription_gets_the_counts_at_once_and_on_each_new_message(pbx, tmp_path):
    with Phone(pbx, "1002") as phone:
        # Someone else's mailbox: refused once the digest says who is asking.
        challenge, refused, _, _ = phone.subscribe(box="1001")
        assert (challenge.status, refused.status) == (401, 403), refused

        challenge, answer, call_id, tag = phone.subscribe(expires=600)
        assert challenge.status == 401 and challenge.headers.get("www-authenticate"), challenge
        assert answer.status == 200, answer
        assert 0 < int(answer.headers.get("expires")) <= 600
        assert answer.headers.get("contact")
        their_tag = answer.to().tag
        assert their_tag

        def in_dialog(notify: Request) -> bool:
            return notify.call_id == call_id

        first = phone.wait_notify(in_dialog, 5)
        assert first is not None, pbx.log()[-3000:]
        assert (first.from_().tag, first.to().tag) == (their_tag, tag)
        assert first.headers.get("event") == "message-summary"
        assert re.fullmatch(r"active;\s*expires=\d+", first.headers.get("subscription-state")), first
        assert (summary(first)["messages-waiting"], summary(first)["voice-message"]) == ("no", "0/0"), first.body

        # 1002 has no registered phone: the call goes to its voicemail at once.
        caller = leave_message(pbx, tmp_path, "1001", "1002", skip_greeting=True)
        assert caller.returncode == 0, sipp_report(caller) + pbx.log()[-3000:]

        second = phone.wait_notify(lambda n: in_dialog(n) and waiting(n), 5)
        assert second is not None, [n.body for n in phone.notifies]
        assert (second.from_().tag, second.to().tag) == (their_tag, tag)
        assert second.cseq.number > first.cseq.number
        assert summary(second)["voice-message"] == "1/0", second.body
        # Nothing went out of the dialog: the phone never registered.
        assert all(in_dialog(n) for n in phone.notifies), [n.call_id for n in phone.notifies]
        assert not phone.errors, phone.errors


# ---------------------------------------------------------------- listening to the mailbox

DTMF_NAMES = {"#": "pound", "*": "star", **{str(d): str(d) for d in range(10)}}


def dtmf_pcap(key: str) -> Path | None:
    """SIPp's pcap of one RFC 4733 key press (telephone-event, payload type 101)."""
    return sipp_data_file(f"dtmf_2833_{DTMF_NAMES[key]}.pcap")


def restamped_pcap(source: Path, target: Path, offset: int) -> Path:
    """A copy of an RTP pcap whose RTP timestamps and sequence numbers are `offset` later.

    SIPp's dtmf_2833_<key>.pcap carry a fixed timestamp, and RFC 4733 names
    a key press by its timestamp: the same file played twice in one call is
    one press sent twice (a receiver rightly ignores the second).  A second
    press of the same key needs a copy with new timestamps.
    """
    data = bytearray(Path(source).read_bytes())
    (magic,) = struct.unpack_from("<I", data, 0)
    endian = "<" if magic == 0xA1B2C3D4 else ">"
    link_header = {1: 14, 113: 16}[struct.unpack_from(f"{endian}I", data, 20)[0]]
    offset_at = 24
    while offset_at + 16 <= len(data):
        included = struct.unpack_from(f"{endian}I", data, offset_at + 8)[0]
        ip = offset_at + 16 + link_header
        rtp = ip + (data[ip] & 0x0F) * 4 + 8
        sequence, timestamp = struct.unpack_from("!HI", data, rtp + 2)
        struct.pack_into("!HI", data, rtp + 2, (sequence + offset) & 0xFFFF, (timestamp + offset * 160) & 0xFFFFFFFF)
        offset_at += 16 + included
    Path(target).write_bytes(bytes(data))
    return Path(target)


def key_presses(keys: str, workdir: Path) -> list[Path]:
    """One pcap per key press, a key pressed again getting a re-stamped copy (see restamped_pcap)."""
    pcaps, seen = [], {}
    for key in keys:
        source = dtmf_pcap(key)
        count = seen[key] = seen.get(key, 0) + 1
        pcaps.append(source if count == 1 else
                     restamped_pcap(source, Path(workdir) / f"dtmf-{DTMF_NAMES[key]}-{count}.pcap", 1000 * count))
    return pcaps


@pytest.mark.skipif(any(dtmf_pcap(k) is None for k in "1234#"), reason="SIPp's dtmf_2833_*.pcap are not installed")
def test_owner_dials_star97_enters_the_pin_and_hears_the_new_message(pbx, tmp_path):
    # A message for 1001 (not registered: straight to voicemail), left by 1002 who skips the greeting.
    deposit = leave_message(pbx, tmp_path, "1002", "1001", skip_greeting=True)
    assert deposit.returncode == 0, sipp_report(deposit) + pbx.log()[-3000:]
    assert wait_until(lambda: voicemail_files(pbx, "1001"), 5), pbx.log()[-3000:]
    [stored] = voicemail_files(pbx, "1001")
    left = check_recording(stored)
    assert (mailbox(pbx, "1001")["new"], mailbox(pbx, "1001")["old"]) == (1, 0)

    # 1001's desk phone watches the mailbox (its lamp is on), while 1001 dials *97 from
    # another phone, types 1234 # (the PIN) and 1 (new messages), and listens.
    with Phone(pbx, "1001") as lamp:
        _, subscribed, call_id, _ = lamp.subscribe()
        assert subscribed.status == 200, subscribed
        assert lamp.wait_notify(lambda n: n.call_id == call_id and waiting(n), 5) is not None, lamp.notifies
        keys = key_presses(PIN_1001 + "#1", tmp_path)
        port = media_port()
        began = time.time()
        with RtpCapture(port) as capture:
            listener = run_sipp(
                "vm_access", pbx.sip_port, ["1001;secret1001;*97"], tmp_path,
                "-d", str(int((MESSAGE_SECONDS + 2.5) * 1000)), "-mp", str(port),
                *[arg for i, pcap in enumerate(keys, 1) for arg in ("-key", f"key{i}", str(pcap))],
                timeout=40,
            )
        assert listener.returncode == 0, sipp_report(listener) + pbx.log()[-3000:]
        # Heard: the lamp goes out.
        off = lamp.wait_notify(lambda n: n.call_id == call_id and not waiting(n), 5)
        assert off is not None, [n.body for n in lamp.notifies]
        assert summary(off)["voice-message"] == "0/1", off.body

    samples = capture.audio()
    write_wav(tmp_path / "heard.wav", samples)  # for a look when something below fails
    assert len(samples) > 8000 * 3, f"{len(capture.stream)} RTP packets to port {port}"

    # Prompts first, then the message: the tone, for as long as it was left.
    runs = [run for run in tone_runs(samples, TONE) if run[1] >= 0.5]
    assert len(runs) == 1, runs
    start, length = runs[0]
    assert length == pytest.approx(left["seconds"], abs=0.3), runs
    assert rms(samples[: int(start * 8000)]) > 0.01, "no prompt before the message"
    message = samples[int(start * 8000): int((start + length) * 8000)]
    assert dominant_frequency(message, 8000) == pytest.approx(left["dominant"], abs=10)

    # Heard now: no longer new.
    box = mailbox(pbx, "1001")
    assert (box["new"], box["old"]) == (0, 1), box
    assert box["messages"][0]["heard"] is True and box["messages"][0]["saved"] is False, box
    record = pbx.finished_record(began)
    assert (record["caller"], record["callee"]) == ("1001", "*97"), record
    assert (record["disposition"], record["hangup_cause"], record["answered_by"]) == (
        "answered", "voicemail-access", "voicemail"), record
