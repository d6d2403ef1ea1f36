"""The paced RTP sender on a fake clock: exact headers, no drift, bounded bursts, the prompt queue."""

from __future__ import annotations

import random
import struct

import pytest
from twisted.internet.task import Clock

from pbx.media import g711
from pbx.media.player import Player, frames

FRAME = 320  # bytes of PCM in 20 ms


def header(packet: bytes) -> tuple[bool, int, int, int, int]:
    """(marker, payload type, sequence, timestamp, ssrc)."""
    b0, b1, seq, ts, ssrc = struct.unpack_from("!BBHII", packet)
    assert b0 == 0x80
    return bool(b1 & 0x80), b1 & 0x7F, seq, ts, ssrc


def numbered(count: int, size: int = FRAME) -> bytes:
    """PCM whose n-th frame is the constant 64 * n + 64: each frame is recognisable after G.711."""
    return b"".join(struct.pack("<h", 64 * n + 64) * (size // 2) for n in range(count))


def frame_number(packet: bytes) -> int:
    value = struct.unpack_from("<h", g711.decode_ulaw(packet[12:13]))[0]
    return round((value - 64) / 64)


class Sink:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.packets: list[tuple[float, bytes]] = []

    def __call__(self, packet: bytes) -> None:
        self.packets.append((self.clock.seconds(), packet))

    @property
    def headers(self) -> list[tuple[bool, int, int, int, int]]:
        return [header(p) for _, p in self.packets]


def make(clock: Clock, **options) -> tuple[Player, Sink]:
    sink = Sink(clock)
    options.setdefault("ssrc", 0x1234)
    options.setdefault("sequence", 100)
    options.setdefault("timestamp", 5000)
    return Player(clock, sink, **options), sink


def test_headers_are_exact_and_wrap() -> None:
    clock = Clock()
    player, sink = make(clock, sequence=65534, timestamp=0xFFFFFF00)
    pcm = numbered(3)
    done = player.play(pcm)
    clock.advance(0)
    assert len(sink.packets) == 1
    clock.advance(0.02)
    clock.advance(0.02)
    results: list[bool] = []
    done.addCallback(results.append)
    clock.advance(0)
    assert results == [True]
    assert sink.headers == [
        (True, 0, 65534, 0xFFFFFF00, 0x1234),
        (False, 0, 65535, 0xFFFFFFA0, 0x1234),
        (False, 0, 0, 0x00000040, 0x1234),
    ]
    assert [t for t, _ in sink.packets] == pytest.approx([0.0, 0.02, 0.04])
    assert [p[12:] for _, p in sink.packets] == [g711.encode_ulaw(f) for f in frames(pcm)]
    clock.advance(1)
    assert len(sink.packets) == 3  # idle: nothing more
    assert not player.running


def test_ptime_and_codec_are_honoured() -> None:
    clock = Clock()
    player, sink = make(clock, codec="PCMA", payload_type=8, ptime=30)
    player.play(bytes(2 * 240 * 2 + 2))  # two frames and one sample: three packets, the last padded
    for _ in range(5):
        clock.advance(0.03)
    assert [h[3] for h in sink.headers] == [5000, 5240, 5480]
    assert all(len(p) == 12 + 240 and h[1] == 8 for (_, p), h in zip(sink.packets, sink.headers))
    assert sink.packets[0][1][12:] == bytes([g711.ALAW_SILENCE]) * 240
    with pytest.raises(ValueError):
        Player(clock, sink, ptime=25)


def test_no_drift_over_ten_thousand_frames_with_a_jittery_clock() -> None:
    clock = Clock()
    player, sink = make(clock)
    count = 10_000
    player.play(bytes(count * FRAME))
    rng = random.Random(4733)
    bursts = []
    while player.playing:
        before = len(sink.packets)
        clock.advance(rng.uniform(0.001, 0.039))  # late by up to ~two packets at times
        bursts.append(len(sink.packets) - before)
    assert len(sink.packets) == count
    assert player.slots_skipped == 0
    assert max(bursts) <= 2
    for index, (sent_at, packet) in enumerate(sink.packets):
        marker, _, seq, ts, _ = header(packet)
        assert ts == 5000 + 160 * index
        assert seq == (100 + index) & 0xFFFF
        due = index * 0.02
        # Never early, and never later than one clock step: lateness does not add up.
        assert due - 1e-9 <= sent_at < due + 0.039 + 1e-9
    assert sink.packets[-1][0] == pytest.approx((count - 1) * 0.02, abs=0.04)


def test_a_stalled_reactor_gets_a_bounded_burst_and_skips_ahead() -> None:
    clock = Clock()
    player, sink = make(clock, max_burst=3)
    player.play(numbered(200))
    clock.advance(0)
    for _ in range(4):
        clock.advance(0.02)
    assert len(sink.packets) == 5
    clock.advance(1.0)  # the reactor was blocked for a second: 50 packets are due
    assert len(sink.packets) == 8
    assert player.slots_skipped == 47
    after = sink.headers[5:8]
    # Sequence numbers run on; timestamps jump over the skipped slots; the marker flags the jump.
    assert [h[2] for h in after] == [105, 106, 107]
    assert [h[3] for h in after] == [5000 + 160 * slot for slot in (52, 53, 54)]
    assert [h[0] for h in after] == [True, False, False]
    # The audio resumes where it was: no frame of the prompt is lost.
    assert [frame_number(p) for _, p in sink.packets] == list(range(8))
    clock.advance(0.02)
    assert len(sink.packets) == 9 and header(sink.packets[-1][1])[3] == 5000 + 160 * 55


def test_queue_replace_stop_and_on_done() -> None:
    clock = Clock()
    player, sink = make(clock)
    results: list[tuple[str, bool]] = []
    player.play_then(numbered(2)).addCallback(lambda r: results.append(("a", r)))
    player.play_then(numbered(2)).addCallback(lambda r: results.append(("b", r)))
    idle: list[None] = []
    player.on_done().addCallback(idle.append)
    for _ in range(6):
        clock.advance(0.02)
    assert results == [("a", True), ("b", True)]
    assert idle == [None]
    assert len(sink.packets) == 4

    player.play_then(numbered(50)).addCallback(lambda r: results.append(("c", r)))
    player.play_then(numbered(50)).addCallback(lambda r: results.append(("d", r)))
    clock.advance(0.02)
    player.play(numbered(1)).addCallback(lambda r: results.append(("e", r)))  # barge in
    assert results[2:] == [("c", False), ("d", False)]
    clock.advance(0.02)
    clock.advance(0.02)
    assert results[4:] == [("e", True)]

    player.play(numbered(50)).addCallback(lambda r: results.append(("f", r)))
    clock.advance(0.04)
    sent = len(sink.packets)
    player.stop()
    assert results[5:] == [("f", False)]
    clock.advance(1)
    assert len(sink.packets) == sent
    assert player.on_done().called


def test_talkspurts_stay_on_the_timestamp_grid() -> None:
    clock = Clock()
    player, sink = make(clock)
    player.play(numbered(2))
    clock.advance(0)
    clock.advance(0.02)
    clock.advance(1.013)  # idle for a while
    player.play(numbered(2))
    clock.advance(0.0071)  # (a hair past 1.04: float sums are not exact)
    clock.advance(0.02)
    marks = [h[0] for h in sink.headers]
    stamps = [h[3] for h in sink.headers]
    assert marks == [True, False, True, False]
    # The new talkspurt starts at the next 20 ms slot after t=1.033 (slot 52), not at an arbitrary time.
    assert stamps == [5000, 5160, 5000 + 160 * 52, 5000 + 160 * 53]
    assert sink.packets[2][0] == pytest.approx(1.04, abs=1e-3)
    assert sink.packets[3][0] == pytest.approx(1.06, abs=1e-3)


def test_idle_silence_and_looping() -> None:
    clock = Clock()
    player, sink = make(clock, idle_silence=True)
    player.start()
    clock.advance(0)
    clock.advance(0.02)
    assert [p[12:] for _, p in sink.packets] == [bytes([0xFF]) * 160] * 2
    music = numbered(3)
    done = player.play(music, loop=True)
    for _ in range(7):
        clock.advance(0.02)
    assert [frame_number(p) for _, p in sink.packets[2:]] == [0, 1, 2, 0, 1, 2, 0]
    assert not done.called
    player.stop()
    assert done.result is False
    clock.advance(0.02)
    assert sink.packets[-1][1][12:] == bytes([0xFF]) * 160  # back to silence, still on time
    assert [h[0] for h in sink.headers].count(True) == 1  # one continuous stream
    player.close()
    sent = len(sink.packets)
    clock.advance(1)
    assert len(sink.packets) == sent
    late = player.play(music)
    assert late.result is False


def test_send_errors_are_counted_not_raised() -> None:
    clock = Clock()

    def send(packet: bytes) -> None:
        raise OSError("network unreachable")

    player = Player(clock, send)
    done = player.play(numbered(2))
    clock.advance(0)
    clock.advance(0.02)
    clock.advance(0)
    assert player.send_errors == 2 and player.packets_sent == 0
    assert done.result is True


def test_random_identifiers_by_default() -> None:
    clock = Clock()
    a = Player(clock, lambda p: None)
    b = Player(clock, lambda p: None)
    assert (a.ssrc, a._sequence, a._base_timestamp) != (b.ssrc, b._sequence, b._base_timestamp)
