"""Recording what a phone sends: received RTP in, 8 kHz s16le PCM out. Pure.

Packets are put back in sequence order within a small window (`jitter_window`
packets): a packet is decoded once that many newer ones have arrived, or when
the recording stops. One that arrives after its place has been written is
dropped (too late), as is a duplicate. Sequence numbers are extended past the
16-bit wrap; a new SSRC (the phone restarted its stream) flushes the window
and continues the same recording.

Time comes from RTP timestamps, not arrival: a jump in timestamps (lost
packets, or a phone that stops sending during silence, RFC 3389) becomes that
much silence in the recording, so the recording keeps the caller's timing
(up to `max_gap` seconds: a longer jump is a timestamp discontinuity, not
a pause worth keeping).
The limits are measured on that media time too: `max_duration` seconds of
audio, or `silence_timeout` seconds in a row whose 20 ms RMS stays under
`silence_threshold` (16-bit scale). A phone that stops sending RTP
altogether does not advance media time; the call's RTP timeout, or an
explicit `stop`, ends that recording.
"""

from __future__ import annotations

import operator
import struct
import sys
from array import array
from collections.abc import Callable, Mapping

from twisted.internet.defer import Deferred

from pbx.media import g711

__all__ = ["Recorder", "rms", "payload_of"]

_HEADER = struct.Struct("!BBHII")
_BIG_ENDIAN = sys.byteorder == "big"

#: Why a recording ended (the value its `done` Deferred fires with).
MAX_DURATION = "max_duration"
SILENCE = "silence"
STOPPED = "stopped"


def rms(pcm: bytes) -> float:
    """Root mean square of s16le PCM on the 16-bit scale (0 for silence, ~23170 for a full-scale sine)."""
    samples = array("h")
    samples.frombytes(pcm[: len(pcm) & ~1])
    if not samples:
        return 0.0
    if _BIG_ENDIAN:
        samples.byteswap()
    return (sum(map(operator.mul, samples, samples)) / len(samples)) ** 0.5


def payload_of(packet: bytes) -> tuple[int, bool, int, int, int, bytes] | None:
    """(payload type, marker, sequence, timestamp, ssrc, payload) of an RTP packet, or None.

    Skips CSRCs and a header extension and strips padding (RFC 3550 §5.1);
    RTCP multiplexed on the port (RFC 5761) is not RTP.
    """
    if len(packet) < 12:
        return None
    b0, b1, sequence, timestamp, ssrc = _HEADER.unpack_from(packet)
    if b0 & 0xC0 != 0x80 or 64 <= (b1 & 0x7F) < 96:
        return None
    offset = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        if len(packet) < offset + 4:
            return None
        (words,) = struct.unpack_from("!H", packet, offset + 2)
        offset += 4 + 4 * words
    end = len(packet)
    if b0 & 0x20 and end > offset:
        end -= packet[-1]
    if end < offset:
        return None
    return b1 & 0x7F, bool(b1 & 0x80), sequence, timestamp, ssrc, packet[offset:end]


class Recorder:
    """Collects decoded audio until a limit or `stop()`; `done` fires with the reason.

    `decoders` maps payload types to payload -> PCM functions (default: the
    static PCMU and PCMA types); other payload types (telephone-event,
    comfort noise) are ignored here.
    """

    def __init__(
        self,
        *,
        max_duration: float = 180.0,
        silence_timeout: float | None = None,
        silence_threshold: float = 300.0,
        jitter_window: int = 5,
        trim_silence: bool = True,
        max_gap: float = 10.0,
        decoders: Mapping[int, Callable[[bytes], bytes]] | None = None,
        rate: int = 8000,
    ) -> None:
        self.rate = rate
        self.max_samples = int(max_duration * rate)
        self.silence_samples = None if silence_timeout is None else int(silence_timeout * rate)
        self.silence_threshold = silence_threshold
        self.jitter_window = max(0, jitter_window)
        self.trim_silence = trim_silence
        self.max_gap_samples = int(max_gap * rate)
        self._decoders = dict(decoders) if decoders is not None else {0: g711.decode_ulaw, 8: g711.decode_alaw}
        self.done: Deferred[str] = Deferred()
        self.reason: str | None = None
        self._chunks: list[bytes] = []
        self._samples = 0
        self._silent_run = 0  # samples at the end of the recording below the threshold
        self._ssrc: int | None = None
        self._highest: int | None = None  # extended sequence number of the newest packet of this source
        self._written = 0  # extended sequence number of the last packet decoded (or skipped)
        self._buffer: dict[int, tuple[int, int, bytes]] = {}
        self._next_timestamp: int | None = None
        self.packets = 0
        self.late = 0
        self.duplicates = 0
        self.ignored = 0
        self.gap_samples = 0

    @property
    def stopped(self) -> bool:
        return self.reason is not None

    @property
    def pcm(self) -> bytes:
        """The recording so far, 8 kHz s16le (what `pbx.media.wav.write_wav` takes)."""
        if len(self._chunks) > 1:
            self._chunks = [b"".join(self._chunks)]
        return self._chunks[0] if self._chunks else b""

    @property
    def duration(self) -> float:
        """Seconds of audio recorded."""
        return self._samples / self.rate

    def feed(self, packet: bytes) -> None:
        """One received datagram (not necessarily RTP)."""
        parsed = payload_of(packet)
        if parsed is None:
            self.ignored += 1
            return
        pt, _, sequence, timestamp, ssrc, payload = parsed
        self.receive(pt, sequence, timestamp, ssrc, payload)

    def receive(self, payload_type: int, sequence: int, timestamp: int, ssrc: int, payload: bytes) -> None:
        """One parsed RTP packet."""
        if self.reason is not None:
            return
        decode = self._decoders.get(payload_type)
        if decode is None:
            self.ignored += 1
            return
        self.packets += 1
        if ssrc != self._ssrc:
            self._flush()
            if self.reason is not None:
                return
            self._ssrc = ssrc
            self._highest = None
        if self._highest is None:
            # Leave room below the first packet for ones that overtook it.
            extended = self._highest = sequence + 0x10000
            self._written = extended - 1 - self.jitter_window
        else:
            delta = (sequence - self._highest) & 0xFFFF
            if delta >= 0x8000:
                delta -= 0x10000
            extended = self._highest + delta
        if extended <= self._written:
            self.late += 1
            return
        if extended in self._buffer:
            self.duplicates += 1
            return
        if extended > self._highest:
            self._highest = extended
        self._buffer[extended] = (timestamp, payload_type, payload)
        while len(self._buffer) > self.jitter_window and self.reason is None:
            self._write(min(self._buffer))

    def stop(self, reason: str = STOPPED) -> None:
        """End the recording (writing what the window still holds); `done` fires once."""
        if self.reason is None:
            self._flush()
            self._finish(reason)

    def _flush(self) -> None:
        while self._buffer and self.reason is None:
            self._write(min(self._buffer))
        self._buffer.clear()

    def _write(self, extended: int) -> None:
        timestamp, payload_type, payload = self._buffer.pop(extended)
        self._written = extended
        pcm = self._decoders[payload_type](payload)
        count = len(pcm) // 2
        expected = self._next_timestamp
        if expected is not None:
            gap = (timestamp - expected) & 0xFFFFFFFF
            if gap & 0x80000000:
                gap = 0  # overlaps what was written: a timestamp step back, take it as is
            if gap:
                gap = min(gap, self.max_gap_samples, self.max_samples - self._samples)
                self.gap_samples += gap
                if self._append(bytes(2 * gap), silent=True):
                    return
        self._next_timestamp = (timestamp + count) & 0xFFFFFFFF
        self._append(pcm, silent=rms(pcm) < self.silence_threshold)

    def _append(self, pcm: bytes, silent: bool) -> bool:
        """Add audio; True when that ended the recording."""
        room = self.max_samples - self._samples
        if len(pcm) // 2 >= room:
            pcm = pcm[: 2 * room]
        count = len(pcm) // 2
        if pcm:
            self._chunks.append(pcm)
            self._samples += count
        self._silent_run = self._silent_run + count if silent else 0
        if self._samples >= self.max_samples:
            self._finish(MAX_DURATION)
            return True
        if self.silence_samples is not None and self._silent_run >= self.silence_samples:
            self._finish(SILENCE)
            return True
        return False

    def _finish(self, reason: str) -> None:
        if self.reason is not None:
            return
        self.reason = reason
        self._buffer.clear()
        if reason == SILENCE and self.trim_silence:
            keep = self.rate // 5  # 200 ms of the silence, so the end does not sound cut
            cut = max(0, self._silent_run - keep)
            if cut:
                pcm = self.pcm
                self._chunks = [pcm[: len(pcm) - 2 * cut]]
                self._samples -= cut
        self.done.callback(reason)
