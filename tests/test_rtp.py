"""RTP header parsing and receive statistics (RFC 3550 A.1, A.3, A.8)."""

from __future__ import annotations

import struct

import pytest

from pbx.media.rtp import RTPHeader, RTPStats, parse_header

T0 = 1_700_000_000.0  # a realistic clock value: precision must survive it


def packet(seq: int, ts: int = 0, ssrc: int = 0x1234, pt: int = 0, marker: bool = False) -> bytes:
    payload = b"\xff" * 160
    return struct.pack("!BBHII", 0x80, pt | (0x80 if marker else 0), seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def feed(stats: RTPStats, seqs, ssrc: int = 0x1234) -> None:
    for i, seq in enumerate(seqs):
        stats.update(packet(seq, ts=seq * 160, ssrc=ssrc), T0 + i * 0.02)


def test_parse_header():
    assert parse_header(packet(513, ts=0xDEADBEEF, ssrc=7, pt=8, marker=True)) == RTPHeader(8, True, 513, 0xDEADBEEF, 7)
    assert parse_header(packet(1)[:11]) is None  # too short
    assert parse_header(b"\x00" + packet(1)[1:]) is None  # version 0 (ZRTP, STUN...)
    assert parse_header(struct.pack("!BBH", 0x81, 200, 6) + b"\x00" * 20) is None  # RTCP SR, muxed


def test_counts_and_no_loss():
    stats = RTPStats()
    feed(stats, range(1, 11))
    assert (stats.packets, stats.bytes, stats.expected, stats.lost) == (10, 1720, 10, 0)
    assert stats.last_arrival == T0 + 9 * 0.02
    assert stats.payload_type == 0


def test_loss_with_gaps():
    stats = RTPStats()
    feed(stats, [1, 2, 4, 5, 8])
    assert (stats.expected, stats.total_received, stats.lost) == (8, 5, 3)


def test_reordering_and_duplicates_are_not_loss():
    stats = RTPStats()
    feed(stats, [1, 2, 4, 3, 5, 5, 6])
    assert (stats.expected, stats.lost, stats.max_seq) == (6, 0, 6)
    late_first = RTPStats()
    feed(late_first, [10, 9, 11])  # a packet older than the first one seen
    assert late_first.lost == 0


def test_sequence_wraparound():
    stats = RTPStats()
    feed(stats, [65533, 65534, 65535, 1, 2])  # 0 lost across the wrap
    assert stats.cycles == 65536
    assert (stats.expected, stats.lost) == (6, 1)
    feed(stats, [3, 65535])  # a late packet from before the wrap does not unwrap
    assert (stats.cycles, stats.expected, stats.lost) == (65536, 7, 0)  # duplicates offset the loss


def test_ssrc_change_starts_a_new_sequence_space_and_keeps_totals():
    stats = RTPStats()
    feed(stats, [1, 2, 4, 5], ssrc=1)  # 3 lost
    feed(stats, [40000, 40001, 40003], ssrc=2)  # 40002 lost
    assert stats.ssrc == 2
    assert (stats.expected, stats.total_received, stats.lost) == (9, 7, 2)


def test_sequence_restart_is_accepted_after_two_packets():
    stats = RTPStats()
    feed(stats, [1, 2, 3])
    feed(stats, [20000])  # a jump: maybe a stray, not counted yet
    assert (stats.expected, stats.total_received) == (3, 3)
    feed(stats, [20001, 20002])  # two in a row: the source restarted
    assert (stats.expected, stats.total_received, stats.lost) == (5, 5, 0)


def test_non_rtp_datagrams_are_counted_but_not_analysed():
    stats = RTPStats()
    stats.update(b"", T0)
    stats.update(b"\x00\x01\x00\x08" + b"\x21\x12\xa4\x42" + b"\x00" * 12, T0)  # STUN binding request
    stats.update(struct.pack("!BBH", 0x80, 201, 1) + b"\x00" * 4, T0)  # RTCP RR (rtcp-mux)
    assert (stats.packets, stats.invalid, stats.received, stats.expected) == (3, 3, 0, 0)


def test_jitter_against_hand_computed_rfc3550_values():
    # 20 ms PCMU packets (160 timestamp units) arriving at 0, 20, 45, 60, 80 ms.
    # Transit (arrival * 8000 - ts): 0, 0, 40, 0, 0 -> D: 0, 40, 40, 0
    # J: 0 -> 0 -> 40/16 = 2.5 -> 2.5 + 37.5/16 = 4.84375 -> 4.84375 - 4.84375/16 = 4.541015625
    stats = RTPStats()
    for i, arrival_ms in enumerate([0, 20, 45, 60, 80]):
        stats.update(packet(i, ts=i * 160), T0 + arrival_ms / 1000)
    assert stats.jitter == pytest.approx(4.541015625, abs=1e-2)
    assert stats.jitter_ms == pytest.approx(4.541015625 / 8, abs=1e-3)


def test_jitter_uses_the_payload_clock_rate():
    # opus at 48 kHz (dynamic PT 96): 10 ms late is 480 units
    stats = RTPStats(rates={96: 48000})
    stats.update(packet(0, ts=0, pt=96), T0)
    stats.update(packet(1, ts=960, pt=96), T0 + 0.030)  # 20 ms of audio, 30 ms later
    assert stats.jitter == pytest.approx(480 / 16, abs=0.1)
    assert stats.jitter_ms == pytest.approx(10 / 16, abs=1e-3)


def test_jitter_survives_timestamp_wraparound_and_skips_events():
    stats = RTPStats(rates={0: 8000, 101: 0})  # 101: telephone-event, no jitter
    start = 2**32 - 320
    for i in range(5):
        stats.update(packet(i, ts=start + i * 160), T0 + i * 0.02)
    assert stats.jitter == pytest.approx(0, abs=1e-2)
    for i in range(5, 10):  # an RFC 4733 event: same timestamp for the whole tone
        stats.update(packet(i, ts=start + 5 * 160, pt=101), T0 + i * 0.02)
    assert stats.jitter == pytest.approx(0, abs=1e-2)
    assert stats.lost == 0
