"""RTP header fields and receive statistics (RFC 3550), pure and per packet.

The relay forwards datagrams untouched; it only reads the fixed 12-byte header
to count loss and jitter, so nothing here copies a payload. `RTPStats.update`
runs once per received packet and is written for that: one `unpack_from`,
plain integer arithmetic, no allocation besides the unpacked tuple.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import NamedTuple

#: RFC 3551 §6 static payload types: PT -> (encoding name, clock rate).
STATIC_PAYLOAD_TYPES: dict[int, tuple[str, int]] = {
    0: ("PCMU", 8000),
    3: ("GSM", 8000),
    4: ("G723", 8000),
    5: ("DVI4", 8000),
    6: ("DVI4", 16000),
    7: ("LPC", 8000),
    8: ("PCMA", 8000),
    9: ("G722", 8000),  # the RTP clock is 8000 although G.722 samples at 16 kHz
    10: ("L16", 44100),
    11: ("L16", 44100),
    12: ("QCELP", 8000),
    13: ("CN", 8000),
    14: ("MPA", 90000),
    15: ("G728", 8000),
    16: ("DVI4", 11025),
    17: ("DVI4", 22050),
    18: ("G729", 8000),
    25: ("CelB", 90000),
    26: ("JPEG", 90000),
    28: ("nv", 90000),
    31: ("H261", 90000),
    32: ("MPV", 90000),
    33: ("MP2T", 90000),
    34: ("H263", 90000),
}

#: Clock rates of the static payload types, the default for `RTPStats`.
STATIC_CLOCK_RATES: dict[int, int] = {pt: rate for pt, (_, rate) in STATIC_PAYLOAD_TYPES.items()}

HEADER = struct.Struct("!BBHII")
HEADER_SIZE = HEADER.size  # 12

RTP_SEQ_MOD = 1 << 16
MAX_DROPOUT = 3000  # RFC 3550 A.1: a forward jump this large is not a gap
MAX_MISORDER = 100  # ... and a backward one this small is a late packet


class RTPHeader(NamedTuple):
    payload_type: int
    marker: bool
    sequence: int
    timestamp: int
    ssrc: int


def is_rtcp(second_octet: int) -> bool:
    """RFC 5761 §4: RTCP packet types 192-223 look like RTP PT 64-95 with the marker set."""
    return 64 <= (second_octet & 0x7F) < 96


def parse_header(data: bytes) -> RTPHeader | None:
    """The fixed header of an RTP packet, or None for anything that is not RTP version 2.

    RTCP (multiplexed on the RTP port, RFC 5761) is not RTP either.
    """
    if len(data) < HEADER_SIZE:
        return None
    b0, b1, sequence, timestamp, ssrc = HEADER.unpack_from(data)
    if b0 & 0xC0 != 0x80 or is_rtcp(b1):
        return None
    return RTPHeader(b1 & 0x7F, bool(b1 & 0x80), sequence, timestamp, ssrc)


class RTPStats:
    """Receive statistics of one direction of one stream.

    Loss follows RFC 3550 A.1/A.3 (extended highest sequence number, 16-bit
    wraparound, a source that restarts its sequence is re-synchronised after
    two packets); a new SSRC starts a new sequence space while the totals keep
    what the previous sources lost. Jitter is RFC 3550 A.8 in timestamp units:
    the arrival time (seconds) is converted with the clock rate of the
    packet's payload type. A payload type whose rate is 0 (telephone-event:
    its timestamp stays at the start of the tone) is counted but not used for
    jitter.
    """

    __slots__ = (
        "packets", "bytes", "invalid", "received", "last_arrival", "ssrc", "payload_type",
        "jitter", "base_seq", "max_seq", "cycles", "bad_seq",
        "_expected_before", "_received_before", "_rates", "_default_rate", "_rate",
        "_last_ts", "_last_arrival_ts", "_jitter_rate",
    )  # fmt: skip

    def __init__(self, rates: Mapping[int, int] | None = None, default_rate: int = 8000) -> None:
        self.packets = 0  # every datagram, RTP or not
        self.bytes = 0
        self.invalid = 0  # datagrams that are not RTP v2 (RTCP, STUN, keepalives)
        self.received = 0  # RTP packets of the current source
        self.last_arrival: float | None = None
        self.ssrc: int | None = None
        self.payload_type: int | None = None
        self.jitter = 0.0
        self.base_seq = 0
        self.max_seq = 0
        self.cycles = 0
        self.bad_seq = RTP_SEQ_MOD + 1
        self._expected_before = 0  # what earlier sources (SSRCs, restarts) expected and got
        self._received_before = 0
        self._rates: Mapping[int, int] = STATIC_CLOCK_RATES if rates is None else rates
        self._default_rate = default_rate
        self._rate = default_rate
        self._last_ts: int | None = None
        self._last_arrival_ts = 0.0
        self._jitter_rate = default_rate or 8000  # the rate `jitter` is measured in

    def set_rates(self, rates: Mapping[int, int]) -> None:
        """Clock rates per payload type, from the SDP (dynamic types)."""
        self._rates = rates
        if self.payload_type is not None:
            self._rate = rate = rates.get(self.payload_type, self._default_rate)
            if rate:
                self._jitter_rate = rate
            self._last_ts = None

    def update(self, data: bytes, arrival: float) -> bool:
        """Account one received datagram; True when it was RTP."""
        self.packets += 1
        self.bytes += len(data)
        self.last_arrival = arrival
        if len(data) < 12:
            self.invalid += 1
            return False
        b0, b1, seq, ts, ssrc = HEADER.unpack_from(data)
        if b0 & 0xC0 != 0x80 or 64 <= (b1 & 0x7F) < 96:
            self.invalid += 1
            return False
        if ssrc != self.ssrc:
            self._new_source(ssrc, seq)
        else:
            udelta = (seq - self.max_seq) & 0xFFFF
            if udelta < MAX_DROPOUT:
                if seq < self.max_seq:
                    self.cycles += RTP_SEQ_MOD
                self.max_seq = seq
            elif udelta <= RTP_SEQ_MOD - MAX_MISORDER:
                if seq != self.bad_seq:
                    # A big jump: wait for the next packet to tell a restart from a stray.
                    self.bad_seq = (seq + 1) & 0xFFFF
                    return True
                self._new_source(ssrc, seq)
            # else: a duplicate or a late packet, counted as received
        self.received += 1

        pt = b1 & 0x7F
        if pt != self.payload_type:
            self.payload_type = pt
            self._rate = rate = self._rates.get(pt, self._default_rate)
            if rate:
                self._jitter_rate = rate
            self._last_ts = None
        rate = self._rate
        if rate:
            last_ts = self._last_ts
            if last_ts is not None:
                # Signed timestamp delta survives the 32-bit wrap; float seconds keep precision.
                dts = (ts - last_ts) & 0xFFFFFFFF
                if dts & 0x80000000:
                    dts -= 0x100000000
                d = (arrival - self._last_arrival_ts) * rate - dts
                if d < 0:
                    d = -d
                self.jitter += (d - self.jitter) / 16
            self._last_ts = ts
            self._last_arrival_ts = arrival
        return True

    def _new_source(self, ssrc: int, seq: int) -> None:
        """RFC 3550 A.1 init_seq, keeping the previous source's totals."""
        if self.received:
            self._expected_before += self.cycles + self.max_seq - self.base_seq + 1
            self._received_before += self.received
        self.ssrc = ssrc
        self.base_seq = seq
        self.max_seq = seq
        self.cycles = 0
        self.bad_seq = RTP_SEQ_MOD + 1
        self.received = 0
        self._last_ts = None

    @property
    def expected(self) -> int:
        """Packets the sequence numbers say were sent (all sources so far)."""
        current = self.cycles + self.max_seq - self.base_seq + 1 if self.received else 0
        return self._expected_before + current

    @property
    def total_received(self) -> int:
        return self._received_before + self.received

    @property
    def lost(self) -> int:
        """Cumulative packets lost; duplicates can make the raw count negative, reported as 0."""
        lost = self.expected - self.total_received
        return lost if lost > 0 else 0

    @property
    def clock_rate(self) -> int:
        return self._rate

    @property
    def jitter_ms(self) -> float:
        """Interarrival jitter in milliseconds (at the clock rate it was measured with)."""
        return self.jitter * 1000.0 / self._jitter_rate
