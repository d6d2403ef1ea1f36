"""DTMF in: RFC 4733 telephone-events from RTP, and SIP INFO bodies as a fallback. Pure.

RFC 4733 §2.3: a telephone-event payload is 4 octets,

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    |     event     |E|R| volume    |          duration             |

and every packet of one key press carries the RTP timestamp of the press's
start; the duration grows, and the last packet (E set) is sent three times.
So the timestamp names the event: `DTMFDetector` reports a digit on the first
packet it sees with a new (SSRC, timestamp), and ignores every later packet
of that event, the redundant end packets and network retransmissions
included, even when they arrive after a newer event. Reporting at the start
rather than at the end means a lost end packet loses nothing. A press longer
than the 16-bit duration is sent as segments with new timestamps (§2.5.1.3);
a segment that continues an unfinished event of the same key is not a new
press.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import NamedTuple

__all__ = [
    "EVENT_CODES", "TelephoneEvent", "parse_event", "encode_event",
    "DTMFDetector", "parse_info", "DTMF_CONTENT_TYPES",
]  # fmt: skip

#: RFC 4733 §3.2 event codes of the DTMF keys; 16 is hook flash.
EVENT_CODES = "0123456789*#ABCD"
FLASH = 16
_DIGIT_EVENT = {c: i for i, c in enumerate(EVENT_CODES)}

_PAYLOAD = struct.Struct("!BBH")


class TelephoneEvent(NamedTuple):
    event: int
    end: bool
    volume: int  # 0..63, in -dBm0
    duration: int  # in RTP timestamp units

    @property
    def digit(self) -> str | None:
        """'0'-'9', '*', '#', 'A'-'D'; None for other events (flash, tones)."""
        return EVENT_CODES[self.event] if self.event < 16 else None


def parse_event(payload: bytes) -> TelephoneEvent | None:
    """The event of an RFC 4733 payload, or None for a payload too short to be one."""
    if len(payload) < 4:
        return None
    event, flags, duration = _PAYLOAD.unpack_from(payload)
    return TelephoneEvent(event, bool(flags & 0x80), flags & 0x3F, duration)


def encode_event(digit: str | int, end: bool = False, volume: int = 10, duration: int = 0) -> bytes:
    """An RFC 4733 payload (for tests and for sending DTMF later)."""
    event = _DIGIT_EVENT[digit.upper()] if isinstance(digit, str) else digit
    return _PAYLOAD.pack(event, (0x80 if end else 0) | (volume & 0x3F), duration & 0xFFFF)


class DTMFDetector:
    """Turns a stream of telephone-event packets into key presses, each reported once.

    `feed` returns the digit for the first packet of a new event, else None.
    It remembers the last `memory` events (per SSRC and timestamp), enough
    for any retransmission a jitter of a few seconds can produce.
    """

    def __init__(self, memory: int = 32) -> None:
        self._seen: deque[tuple[int, int]] = deque(maxlen=memory)
        self._seen_set: set[tuple[int, int]] = set()
        # The last event: (ssrc, timestamp, event code, end seen, duration).
        self._last: tuple[int, int, int, bool, int] | None = None
        self.events = 0  # presses reported
        self.packets = 0
        self.ignored = 0  # repeats, retransmissions, non-digit events, garbage

    def feed(self, timestamp: int, payload: bytes, ssrc: int = 0) -> str | None:
        """Account one telephone-event packet; the digit when it starts a new press."""
        self.packets += 1
        event = parse_event(payload)
        if event is None:
            self.ignored += 1
            return None
        key = (ssrc, timestamp)
        last = self._last
        if key in self._seen_set:
            if last is not None and last[:2] == key:
                ended = last[3] or event.end
                self._last = (ssrc, timestamp, last[2], ended, max(last[4], event.duration))
            self.ignored += 1
            return None
        self._remember(key)
        continuation = (
            last is not None
            and last[0] == ssrc
            and not last[3]
            and last[2] == event.event
            and (timestamp - last[1]) & 0xFFFFFFFF == last[4]
            and last[4] >= 0xFFFF - 1000  # only after a segment that ran out of duration bits
        )
        self._last = (ssrc, timestamp, event.event, event.end, event.duration)
        if continuation or event.digit is None:
            self.ignored += 1
            return None
        self.events += 1
        return event.digit

    def _remember(self, key: tuple[int, int]) -> None:
        if len(self._seen) == self._seen.maxlen:
            self._seen_set.discard(self._seen[0])
        self._seen.append(key)
        self._seen_set.add(key)


#: The INFO content types `parse_info` understands.
DTMF_CONTENT_TYPES = frozenset({"application/dtmf-relay", "application/dtmf"})

# Some phones send the RFC 4733 event number instead of the key.
_SIGNAL_NUMBERS = {str(i): c for i, c in enumerate(EVENT_CODES)}


def _normalise(signal: str) -> str | None:
    signal = signal.strip().upper()
    if len(signal) == 1 and signal in EVENT_CODES:
        return signal
    return _SIGNAL_NUMBERS.get(signal.lstrip("0") or "0") if signal.isdigit() else None


def parse_info(content_type: str, body: bytes | str) -> str | None:
    """The key of a SIP INFO DTMF body, or None when it carries none.

    application/dtmf-relay (Cisco style, the common one):
    "Signal=5\\r\\nDuration=160" (duration in ms, ignored here); application/dtmf:
    the key alone ("5"). Signals 10 and 11 mean * and # (event numbers).
    """
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind not in DTMF_CONTENT_TYPES:
        return None
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    if kind == "application/dtmf":
        return _normalise(text)
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip().lower() == "signal":
            return _normalise(value)
    return None
