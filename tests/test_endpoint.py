"""The media endpoint: the recorder on its own, the SDP answer, and a UDP "phone" on real loopback
that hears a paced prompt and sends a tone and RFC 4733 key presses back."""

from __future__ import annotations

import math
import random
import socket
import struct
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher

from audio import dominant_frequency
from pbx.media import g711
from pbx.media.dtmf import encode_event
from pbx.media.endpoint import MediaEndpoint
from pbx.media.player import frames
from pbx.media.portpool import NoPortsAvailable, PortPool
from pbx.media.recorder import Recorder, payload_of, rms
from pbx.media.wav import read_wav, write_wav
from pbx.sip.sdp import SDPError, SessionDescription

HOST = "127.0.0.1"
ADVERTISED = "192.0.2.10"


def tone(frequency: float, seconds: float, amplitude: int = 8000, start: int = 0) -> bytes:
    count = int(8000 * seconds)
    return struct.pack(
        f"<{count}h", *(round(amplitude * math.sin(2 * math.pi * frequency * (n + start) / 8000)) for n in range(count))
    )


def values(pcm: bytes) -> list[int]:
    return list(struct.unpack(f"<{len(pcm) // 2}h", pcm))


def rtp(seq: int, ts: int, payload: bytes, pt: int = 0, ssrc: int = 0xBEEF, marker: bool = False) -> bytes:
    return struct.pack("!BBHII", 0x80, pt | (0x80 if marker else 0), seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def offer(port: int, *, formats: str = "0 8 101", ptime: int | None = 20, direction: str = "sendrecv",
          extra_media: str = "", host: str = HOST) -> SessionDescription:
    lines = [
        "v=0", f"o=phone 1 1 IN IP4 {host}", "s=call", f"c=IN IP4 {host}", "t=0 0",
        f"m=audio {port} RTP/AVP {formats}",
        "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000", "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-15",
    ]
    if ptime is not None:
        lines.append(f"a=ptime:{ptime}")
    lines.append(f"a={direction}")
    if extra_media:
        lines.append(extra_media)
    return SessionDescription.parse(("\r\n".join(lines) + "\r\n").encode())


# -- the recorder, pure ------------------------------------------------------------


def test_rtp_payload_extraction() -> None:
    plain = rtp(1, 160, b"abc")
    assert payload_of(plain) == (0, False, 1, 160, 0xBEEF, b"abc")
    csrc_ext_pad = (
        struct.pack("!BBHII", 0x80 | 0x20 | 0x10 | 2, 8, 7, 320, 1) + bytes(8)  # two CSRCs
        + struct.pack("!HH", 0xBEDE, 1) + bytes(4)  # a one-word header extension
        + b"xyz" + b"\x00\x00\x03"  # three octets of padding
    )
    assert payload_of(csrc_ext_pad) == (8, False, 7, 320, 1, b"xyz")
    assert payload_of(b"\x80\x00") is None
    assert payload_of(struct.pack("!BBHII", 0x80, 200, 0, 0, 0)) is None  # RTCP SR multiplexed
    assert payload_of(struct.pack("!BBHII", 0x40, 0, 0, 0, 0)) is None  # version 1


def test_recorder_reorders_within_the_window_and_fills_gaps_with_silence() -> None:
    recorder = Recorder(jitter_window=3)
    chunks = [g711.encode_ulaw(f) for f in frames(tone(400, 0.2))]  # 10 frames
    order = [0, 2, 1, 3, 5, 4, 6, 9, 8]  # frame 7 is lost; two swaps within the window
    for n in order:
        recorder.receive(0, 1000 + n, 80_000 + 160 * n, 7, chunks[n])
    recorder.receive(0, 1000 + 1, 80_000 + 160, 7, chunks[1])  # a duplicate, long written
    recorder.stop()
    assert recorder.done.result == "stopped"
    expected = b"".join(g711.decode_ulaw(chunks[n]) if n != 7 else bytes(320) for n in range(10))
    assert recorder.pcm == expected
    assert recorder.duration == pytest.approx(0.2)
    assert recorder.late == 1 and recorder.gap_samples == 160


def test_recorder_sequence_wrap_and_late_packets() -> None:
    recorder = Recorder(jitter_window=2)
    chunk = g711.encode_ulaw(tone(300, 0.02))
    for i, seq in enumerate([65534, 65535, 0, 1, 2]):
        recorder.receive(0, seq, 160 * i, 1, chunk)
    recorder.receive(0, 65533, 0, 1, chunk)  # older than the first: too late
    recorder.stop()
    assert recorder.duration == pytest.approx(0.1)
    assert recorder.late == 1


def test_recorder_first_packets_may_arrive_out_of_order() -> None:
    recorder = Recorder(jitter_window=3)
    a, b = g711.encode_ulaw(tone(300, 0.02)), g711.encode_ulaw(bytes(320))
    recorder.receive(0, 11, 160, 1, b)
    recorder.receive(0, 10, 0, 1, a)
    recorder.stop()
    assert recorder.pcm == g711.decode_ulaw(a) + g711.decode_ulaw(b)


def test_recorder_stops_at_max_duration() -> None:
    recorder = Recorder(max_duration=0.05, jitter_window=0)
    chunk = g711.encode_alaw(tone(500, 0.02))
    for n in range(10):
        recorder.receive(8, n, 160 * n, 1, chunk)
    assert recorder.done.result == "max_duration"
    assert len(recorder.pcm) == 2 * 400
    assert recorder.packets == 3  # nothing is taken after the end


def test_recorder_stops_after_silence_and_trims_it() -> None:
    recorder = Recorder(silence_timeout=1.0, silence_threshold=200, jitter_window=0)
    speech = [g711.encode_ulaw(f) for f in frames(tone(300, 0.5))]
    quiet = g711.encode_ulaw(bytes(320))
    packets = speech + [quiet] * 100
    for n, payload in enumerate(packets):
        recorder.receive(0, n, 160 * n, 1, payload)
    assert recorder.done.result == "silence"
    assert recorder.duration == pytest.approx(0.5 + 0.2)  # the speech and 200 ms of the silence
    assert rms(recorder.pcm[: 8000]) > 1000


def test_recorder_counts_a_timestamp_gap_as_silence_and_ignores_other_payloads() -> None:
    recorder = Recorder(silence_timeout=0.5, jitter_window=0, trim_silence=False)
    loud = g711.encode_ulaw(tone(300, 0.02))
    recorder.receive(0, 1, 0, 1, loud)
    recorder.receive(13, 2, 160, 1, b"\x40")  # comfort noise
    recorder.receive(101, 3, 160, 1, encode_event("1"))  # telephone-event
    recorder.receive(0, 4, 160 + 8000, 1, loud)  # one second later: the phone was silent (DTX)
    assert recorder.done.result == "silence"
    assert recorder.ignored == 2
    # A jump of an hour is a discontinuity: at most max_gap of silence is kept.
    recorder = Recorder(max_gap=2.0, jitter_window=0)
    recorder.receive(0, 1, 0, 1, loud)
    recorder.receive(0, 2, 160 + 8000 * 3600, 1, loud)
    recorder.stop()
    assert recorder.duration == pytest.approx(0.04 + 2.0)


def test_recorder_new_ssrc_continues_the_recording() -> None:
    recorder = Recorder(jitter_window=5)
    chunk = g711.encode_ulaw(tone(300, 0.02))
    for n in range(3):
        recorder.receive(0, 500 + n, 1000 + 160 * n, 1, chunk)
    for n in range(2):
        recorder.receive(0, 9 + n, 77 + 160 * n, 2, chunk)
    recorder.stop()
    assert recorder.duration == pytest.approx(0.1)


# -- the endpoint on loopback -------------------------------------------------------------


class Phone(DatagramProtocol):
    noisy = False

    def __init__(self) -> None:
        self.received: list[tuple[float, bytes, tuple[str, int]]] = []

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append((reactor.seconds(), data, addr))

    @property
    def port(self) -> int:
        return self.transport.getHost().port

    def send(self, data: bytes, port: int) -> None:
        self.transport.write(data, (HOST, port))


def free_range(pairs: int) -> int:
    """The first port of 2 * pairs UDP ports that are free right now.

    Other test runs and benchmarks may hold whole blocks of ports on this
    machine; a range is probed rather than assumed. Below Linux's ephemeral
    range (32768-60999), where the port-0 sockets of parallel tests land.
    """
    for _ in range(50):
        base = random.randrange(20000, 32768 - 2 * pairs, 2)
        sockets = []
        try:
            for port in range(base, base + 2 * pairs):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sockets.append(sock)
                sock.bind((HOST, port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no free block of UDP ports for the test")


class Lab:
    def __init__(self, pairs: int = 4) -> None:
        base = free_range(pairs)
        self.pool = PortPool(base, base + 2 * pairs - 1)
        self.endpoints: list[MediaEndpoint] = []
        self.listeners: list = []

    def endpoint(self, **options) -> MediaEndpoint:
        endpoint = MediaEndpoint(reactor, self.pool, HOST, ADVERTISED, **options)
        self.endpoints.append(endpoint)
        return endpoint

    def phone(self) -> Phone:
        phone = Phone()
        self.listeners.append(reactor.listenUDP(0, phone, interface=HOST))
        return phone

    async def close(self) -> None:
        for endpoint in self.endpoints:
            await endpoint.close()
        for listener in self.listeners:
            await listener.stopListening()


async def until(condition, timeout: float = 2.0) -> None:
    for _ in range(int(timeout / 0.005)):
        if condition():
            return
        await deferLater(reactor, 0.005, lambda: None)
    assert condition()


@pytest_twisted.ensureDeferred
async def test_answer_picks_the_offered_codec_ptime_and_events() -> None:
    lab = Lab()
    try:
        endpoint = lab.endpoint()
        body = endpoint.answer(offer(4000, formats="8 0 101", ptime=30, direction="sendonly",
                                     extra_media="m=video 4002 RTP/AVP 96\r\na=rtpmap:96 H264/90000"))
        answer = SessionDescription.parse(body)
        audio, video = answer.media
        assert answer.connection.address == ADVERTISED
        assert answer.origin.address == ADVERTISED and answer.origin.username == "pbx"
        assert (audio.port, audio.proto, audio.formats) == (endpoint.rtp_port, "RTP/AVP", ["8", "101"])
        assert audio.rtpmap == {8: ("PCMA", 8000, None), 101: ("telephone-event", 8000, None)}
        assert audio.fmtp == {"101": "0-16"}
        assert audio.ptime == 30 and audio.direction == "recvonly"
        assert video.port == 0
        assert (endpoint.codec, endpoint.payload_type, endpoint.event_payload_type) == ("PCMA", 8, 101)
        assert endpoint.player.ptime == 30 and endpoint.player.samples_per_frame == 240
        assert endpoint.remote_rtp == (HOST, 4000)
        version = answer.origin.version

        # The same offer again (a retransmission): the same answer, same version.
        again = SessionDescription.parse(endpoint.answer(offer(4000, formats="8 0 101", ptime=30, direction="sendonly",
                                        extra_media="m=video 4002 RTP/AVP 96\r\na=rtpmap:96 H264/90000")))
        assert again.origin.version == version
        # A re-INVITE without telephone-event and an odd ptime: PCMU, default ptime, version up.
        changed = SessionDescription.parse(endpoint.answer(offer(4000, formats="0", ptime=25)))
        assert int(changed.origin.version) == int(version) + 1
        assert changed.media[0].formats == ["0"] and changed.media[0].ptime == 20
        assert endpoint.event_payload_type is None and endpoint.codec == "PCMU"

        with pytest.raises(SDPError):
            endpoint.answer(offer(4000, formats="18 101"))  # G.729 only
    finally:
        await lab.close()


@pytest_twisted.ensureDeferred
async def test_ports_come_from_the_pool_and_go_back() -> None:
    lab = Lab(pairs=1)
    try:
        endpoint = lab.endpoint()
        assert endpoint.rtp_port == lab.pool.start + (lab.pool.start & 1)
        with pytest.raises(NoPortsAvailable):
            lab.endpoint()
        await endpoint.close()
        await endpoint.close()  # idempotent
        assert lab.pool.in_use == 0 and endpoint.closed
    finally:
        await lab.close()


@pytest_twisted.ensureDeferred
async def test_the_phone_hears_a_paced_prompt(tmp_path: Path) -> None:
    lab = Lab()
    try:
        phone = lab.phone()
        endpoint = lab.endpoint()
        endpoint.answer(offer(phone.port))
        path = tmp_path / "prompt.wav"
        write_wav(path, tone(1000, 0.2, amplitude=10000))
        prompt = read_wav(path)
        started = reactor.seconds()
        assert await endpoint.play(prompt) is True
        await until(lambda: len(phone.received) == 10)
        await deferLater(reactor, 0.05, lambda: None)
        assert len(phone.received) == 10
        arrivals = [t for t, _, _ in phone.received]
        headers = [struct.unpack_from("!BBHII", data) for _, data, _ in phone.received]
        assert {addr for _, _, addr in phone.received} == {(HOST, endpoint.rtp_port)}
        assert [h[1] for h in headers] == [0x80] + [0] * 9  # PCMU, marker on the first
        assert [(h[2] - headers[0][2]) & 0xFFFF for h in headers] == list(range(10))
        assert [(h[3] - headers[0][3]) & 0xFFFFFFFF for h in headers] == [160 * n for n in range(10)]
        assert len({h[4] for h in headers}) == 1
        # Paced, not sent at once: nine intervals of 20 ms.
        assert arrivals[-1] - arrivals[0] >= 0.1  # (0.18 s on an idle machine)
        assert arrivals[-1] - started < 1.0
        received = b"".join(g711.decode_ulaw(data[12:]) for _, data, _ in phone.received)
        for got, sent in zip(values(received), values(prompt)):
            assert abs(got - sent) <= max(8, abs(sent) // 16 + 8)
        assert dominant_frequency([v / 32768 for v in values(received)], 8000) == pytest.approx(1000, abs=20)
    finally:
        await lab.close()


@pytest_twisted.ensureDeferred
async def test_the_endpoint_records_a_tone_and_hears_each_key_once() -> None:
    lab = Lab()
    try:
        phone, stranger = lab.phone(), lab.phone()
        digits: list[str] = []
        endpoint = lab.endpoint(on_dtmf=digits.append)
        endpoint.answer(offer(phone.port))
        recorder = endpoint.record(max_duration=10, jitter_window=4)
        audio = tone(440, 0.5)
        packets = [rtp(100 + n, 1600 + 160 * n, g711.encode_ulaw(f)) for n, f in enumerate(frames(audio))]
        packets[5], packets[6] = packets[6], packets[5]  # reordered on the way
        for packet in packets:
            phone.send(packet, endpoint.rtp_port)

        def key(digit: str, seq: int, ts: int) -> list[bytes]:
            start = [rtp(seq + n, ts, encode_event(digit, duration=160 * (n + 1)), pt=101, marker=n == 0)
                     for n in range(3)]
            end = [rtp(seq + 3 + n, ts, encode_event(digit, end=True, duration=640), pt=101) for n in range(3)]
            return start + end

        for packet in key("4", 200, 9600) + key("#", 206, 12800) + key("4", 200, 9600)[-2:]:  # retransmitted ends
            phone.send(packet, endpoint.rtp_port)
        stranger.send(rtp(1, 0, encode_event("9", end=True), pt=101, ssrc=666), endpoint.rtp_port)  # injection
        await until(lambda: len(digits) == 2 and endpoint.dropped == 1)
        await until(lambda: recorder.packets == 25)
        recorder.stop()
        assert await recorder.done == "stopped"
        assert digits == ["4", "#"]
        assert endpoint.latched == (HOST, phone.port)
        assert recorder.pcm == g711.decode_ulaw(g711.encode_ulaw(audio))
        assert recorder.duration == pytest.approx(0.5)
        assert dominant_frequency([v / 32768 for v in values(recorder.pcm)], 8000) == pytest.approx(440, abs=20)

        # INFO digits are a fallback only: this phone sends RFC 4733, so they would be duplicates.
        assert endpoint.info_received("application/dtmf-relay", b"Signal=5\r\nDuration=160") is True
        assert endpoint.info_received("text/plain", b"hello") is False
        assert digits == ["4", "#"]
        assert endpoint.stats()["dtmf_events"] == 2
    finally:
        await lab.close()


@pytest_twisted.ensureDeferred
async def test_info_dtmf_for_phones_without_telephone_events() -> None:
    lab = Lab()
    try:
        phone = lab.phone()
        digits: list[str] = []
        endpoint = lab.endpoint(on_dtmf=digits.append)
        endpoint.answer(offer(phone.port, formats="8"))
        assert endpoint.info_received("application/dtmf-relay", b"Signal=5\r\nDuration=160") is True
        assert endpoint.info_received("application/dtmf", b"#") is True
        assert digits == ["5", "#"]
        # A failing application callback is logged; the INFO is still answered.
        failures: list[dict] = []
        observer = failures.append
        globalLogPublisher.addObserver(observer)
        try:
            endpoint.on_dtmf = lambda digit: 1 / 0
            assert endpoint.info_received("application/dtmf", b"1") is True
        finally:
            globalLogPublisher.removeObserver(observer)
        assert any(e.get("log_failure") is not None for e in failures)
    finally:
        await lab.close()


@pytest_twisted.ensureDeferred
async def test_nothing_is_sent_while_the_phone_holds_with_inactive() -> None:
    lab = Lab()
    try:
        phone = lab.phone()
        endpoint = lab.endpoint()
        endpoint.answer(offer(phone.port, direction="inactive"))
        assert await endpoint.play(tone(300, 0.06)) is True
        await deferLater(reactor, 0.05, lambda: None)
        assert phone.received == []
    finally:
        await lab.close()


def test_play_before_answer_is_an_error() -> None:
    pool = PortPool(40000, 40001)

    class NoSockets:
        def listen(self, reactor, port, interface, receive):
            class Port:
                def stopListening(self):
                    return None
            return Port()

        def seconds(self) -> float:
            return 0.0

    fake = NoSockets()
    endpoint = MediaEndpoint(fake, pool, HOST, ADVERTISED, listen=fake.listen)
    with pytest.raises(RuntimeError):
        endpoint.play(b"\x00\x00")
    endpoint.close()
    assert pool.in_use == 0
