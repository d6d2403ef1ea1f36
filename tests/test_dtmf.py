"""DTMF: RFC 4733 payloads, one report per key press whatever the network repeats, and SIP INFO bodies."""

from __future__ import annotations

import pytest

from pbx.media.dtmf import DTMFDetector, TelephoneEvent, encode_event, parse_event, parse_info


def press(digit: str, timestamp: int, packets: int = 4, step: int = 160) -> list[tuple[int, bytes]]:
    """What a phone sends for one key press: growing durations, then the end packet three times."""
    sent = [(timestamp, encode_event(digit, duration=step * (n + 1))) for n in range(packets)]
    end = encode_event(digit, end=True, duration=step * (packets + 1))
    return sent + [(timestamp, end)] * 3


def feed_all(detector: DTMFDetector, packets: list[tuple[int, bytes]], ssrc: int = 1) -> list[str]:
    return [d for ts, payload in packets if (d := detector.feed(ts, payload, ssrc)) is not None]


def test_payload_fields() -> None:
    assert parse_event(bytes([5, 0x8A, 0x03, 0x20])) == TelephoneEvent(5, True, 10, 800)
    assert parse_event(bytes([11, 0x3F, 0, 160])) == TelephoneEvent(11, False, 63, 160)
    assert parse_event(bytes([11, 0, 0, 160])).digit == "#"
    assert parse_event(bytes([16, 0, 0, 0])).digit is None  # flash
    assert parse_event(b"\x01\x02\x03") is None
    assert encode_event("*", end=True, volume=7, duration=400) == bytes([10, 0x87, 0x01, 0x90])
    assert parse_event(encode_event("D")).event == 15


def test_each_press_is_reported_once() -> None:
    detector = DTMFDetector()
    packets = press("1", 1000) + press("2", 5000) + press("2", 9000) + press("#", 13000)
    assert feed_all(detector, packets) == ["1", "2", "2", "#"]
    assert detector.events == 4


def test_retransmissions_and_reordering_do_not_repeat_a_digit() -> None:
    detector = DTMFDetector()
    first, second = press("5", 100), press("6", 2000)
    # The end packets of "5" arrive late, after "6" has started; one "6" packet is duplicated.
    packets = first[:2] + second[:3] + first[2:] + second[2:] + [second[0]]
    assert feed_all(detector, packets) == ["5", "6"]


def test_lost_start_packets_still_report_the_digit() -> None:
    detector = DTMFDetector()
    assert feed_all(detector, press("9", 4000)[-3:]) == ["9"]  # only the end packets got through


def test_timestamps_are_per_source() -> None:
    detector = DTMFDetector()
    assert feed_all(detector, press("3", 777), ssrc=1) == ["3"]
    assert feed_all(detector, press("3", 777), ssrc=2) == ["3"]  # a new stream (e.g. after a re-INVITE)


def test_timestamp_wraparound() -> None:
    detector = DTMFDetector()
    assert feed_all(detector, press("7", 0xFFFFFF00) + press("8", 0x00000100)) == ["7", "8"]


def test_a_long_press_split_into_segments_is_one_press() -> None:
    detector = DTMFDetector()
    start = 50_000
    first = [(start, encode_event("0", duration=0xFFFF))]
    second = [
        (start + 0xFFFF, encode_event("0", duration=800)),
        (start + 0xFFFF, encode_event("0", end=True, duration=960)),
    ]
    assert feed_all(detector, first + second) == ["0"]
    # ... but the same key pressed again right after a short press is a new press.
    assert feed_all(detector, press("0", start + 0xFFFF + 2000)) == ["0"]


def test_non_digit_events_and_garbage_are_ignored() -> None:
    detector = DTMFDetector()
    assert detector.feed(10, bytes([16, 0x80, 0, 160])) is None  # flash
    assert detector.feed(20, b"\x01") is None
    assert detector.ignored == 2 and detector.events == 0


def test_memory_is_bounded() -> None:
    detector = DTMFDetector(memory=4)
    for n in range(100):
        detector.feed(n * 1000, encode_event("1"))
    assert len(detector._seen) == 4 and len(detector._seen_set) == 4


@pytest.mark.parametrize(
    ("content_type", "body", "digit"),
    [
        ("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n", "5"),
        ("Application/DTMF-Relay; charset=utf-8", b"signal= #\nDuration=250", "#"),
        ("application/dtmf-relay", b"Signal=*\r\nDuration=160", "*"),
        ("application/dtmf-relay", b"Signal=10\r\nDuration=160", "*"),
        ("application/dtmf-relay", b"Signal=11\r\nDuration=160", "#"),
        ("application/dtmf-relay", b"Signal=a\r\n", "A"),
        ("application/dtmf", b"7", "7"),
        ("application/dtmf", "# \r\n", "#"),
        ("application/dtmf-relay", b"Duration=160", None),
        ("application/dtmf-relay", b"Signal=X", None),
        ("application/dtmf-relay", b"Signal=99", None),
        ("application/sdp", b"v=0", None),
        ("text/plain", b"Signal=5", None),
    ],
)
def test_info_bodies(content_type: str, body: bytes | str, digit: str | None) -> None:
    assert parse_info(content_type, body) == digit
