"""A paced RTP sender: PCM prompts out as G.711 packets, one every ptime, on an injected clock.

Pacing is one schedule anchored at the time the player first started:
packet slot n is due at `start + n * ptime` and carries RTP timestamp
`base + n * samples_per_frame`. Each wake-up computes, from the clock, which
slots are due and sends them, then sleeps until the next slot's time; so a
late wake-up never shifts later ones (no drift however many packets), and
the RTP timestamp always follows the wall clock, as RFC 3550 wants.

When the reactor was late by more than `max_burst` slots (a blocked thread,
a busy machine), the player sends at most `max_burst` packets at once and
skips the older slots: their timestamps pass without packets, the audio
itself is not dropped but resumes after the gap, and the first packet after
it carries the marker bit so the phone's jitter buffer re-synchronises. A
phone thus sees a short gap rather than a flood it would have to discard.

Idle (nothing queued), the player either stops sending (the next prompt
starts a new talkspurt, marker set, timestamps still on the grid) or, with
`idle_silence`, keeps the stream alive with silence frames (for phones and
NATs that want continuous RTP).

The player knows nothing of sockets: packets go to a `send(packet)`
callable, which keeps it testable on `twisted.internet.task.Clock`.
"""

from __future__ import annotations

import math
import random
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

from pbx.media import g711

__all__ = ["Player", "frames"]

_HEADER = struct.Struct("!BBHII")
#: Slack for float rounding when deciding whether a slot's time has come.
_EPSILON = 1e-6


def frames(pcm: bytes, samples_per_frame: int = 160) -> list[bytes]:
    """PCM cut into whole frames, the last one padded with silence."""
    size = 2 * samples_per_frame
    out = [pcm[i : i + size] for i in range(0, len(pcm), size)]
    if out and len(out[-1]) < size:
        out[-1] = out[-1] + bytes(size - len(out[-1]))
    return out


class _Item:
    __slots__ = ("pcm", "offset", "loop", "done")

    def __init__(self, pcm: bytes, loop: bool) -> None:
        self.pcm = pcm
        self.offset = 0
        self.loop = loop
        self.done: Deferred[bool] = Deferred()


class Player:
    """Plays queued PCM (8 kHz s16le) as RTP through `send`.

    `clock` provides IReactorTime. `codec` is "PCMU" or "PCMA";
    `payload_type` defaults to its static type. SSRC, first sequence number
    and first timestamp are random unless given (tests give them).
    """

    def __init__(
        self,
        clock: Any,
        send: Callable[[bytes], object],
        codec: str = "PCMU",
        payload_type: int | None = None,
        ptime: int = 20,
        *,
        clock_rate: int = 8000,
        ssrc: int | None = None,
        sequence: int | None = None,
        timestamp: int | None = None,
        idle_silence: bool = False,
        max_burst: int = 3,
        rng: random.Random | None = None,
    ) -> None:
        if ptime <= 0 or ptime % 10:
            raise ValueError(f"ptime must be a positive multiple of 10 ms, not {ptime}")
        rng = rng or random.SystemRandom()
        name = codec.upper()
        static_pt, self._encode, _, silence_code = g711.CODECS[name]
        self.codec = name
        self.payload_type = static_pt if payload_type is None else payload_type
        self.ptime = ptime
        self.samples_per_frame = clock_rate * ptime // 1000
        self.ssrc = rng.getrandbits(32) if ssrc is None else ssrc
        self._sequence = rng.getrandbits(16) if sequence is None else sequence
        self._base_timestamp = rng.getrandbits(32) if timestamp is None else timestamp
        self.idle_silence = idle_silence
        self.max_burst = max(1, max_burst)
        self._clock = clock
        self._send = send
        self._interval = ptime / 1000.0
        self._frame_bytes = 2 * self.samples_per_frame
        self._silence = bytes([silence_code]) * self.samples_per_frame
        self._queue: deque[_Item] = deque()
        self._idle_waiters: list[Deferred[None]] = []
        self._start: float | None = None
        self._slot = 0  # the next slot to send
        self._last_sent: int | None = None  # slot of the last packet sent
        self._call: Any = None  # the pending IDelayedCall
        self._ticking = False
        self._closed = False
        self.packets_sent = 0
        self.bytes_sent = 0
        self.slots_skipped = 0  # slots passed without a packet because the reactor was late
        self.late_wakeups = 0
        self.send_errors = 0

    # -- the queue ----------------------------------------------------------------

    def play(self, pcm: bytes, loop: bool = False) -> Deferred[bool]:
        """Play `pcm` now, cutting off whatever was playing or queued (barge-in).

        The Deferred fires True when the prompt has been sent to its end,
        False when it was stopped or replaced first. `loop` repeats it until
        stopped (music on hold).
        """
        self._clear()
        return self.play_then(pcm, loop)

    def play_then(self, pcm: bytes, loop: bool = False) -> Deferred[bool]:
        """Queue `pcm` after whatever is playing; same Deferred as `play`."""
        item = _Item(pcm, loop)
        if self._closed or not pcm:
            item.done.callback(not self._closed)
            return item.done
        self._queue.append(item)
        self._run()
        return item.done

    def stop(self) -> None:
        """Stop playing and drop the queue; their Deferreds fire False."""
        self._clear()
        self._fire_idle()
        if not self.idle_silence:
            self._halt()

    def on_done(self) -> Deferred[None]:
        """Fires when nothing is left to play (at once when idle)."""
        d: Deferred[None] = Deferred()
        if self._queue:
            self._idle_waiters.append(d)
        else:
            d.callback(None)
        return d

    def start(self) -> None:
        """Start the clock without a prompt (only useful with `idle_silence`)."""
        self._run()

    def close(self) -> None:
        """Stop for good: no more packets, even silence."""
        self._closed = True
        self.stop()
        self._halt()

    @property
    def playing(self) -> bool:
        return bool(self._queue)

    @property
    def running(self) -> bool:
        """Whether packets are being sent (audio or idle silence)."""
        return self._call is not None or self._ticking

    def timestamp_of(self, slot: int) -> int:
        """The RTP timestamp of a slot (slot 0 is the first packet ever sent)."""
        return (self._base_timestamp + slot * self.samples_per_frame) & 0xFFFFFFFF

    def _clear(self) -> None:
        queue, self._queue = self._queue, deque()
        for item in queue:
            item.done.callback(False)

    def _fire_idle(self) -> None:
        waiters, self._idle_waiters = self._idle_waiters, []
        for d in waiters:
            d.callback(None)

    # -- pacing -------------------------------------------------------------------

    def _run(self) -> None:
        if self._closed or self._ticking or self._call is not None:
            return
        if not self._queue and not self.idle_silence:
            return
        now = self._clock.seconds()
        if self._start is None:
            self._start = now
            self._slot = 0
        else:
            # Back on the grid: the first slot whose time has not passed.
            slot = math.ceil((now - self._start) / self._interval - _EPSILON)
            self._slot = max(self._slot, slot)
        self._schedule(now)

    def _halt(self) -> None:
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None

    def _schedule(self, now: float) -> None:
        assert self._start is not None
        delay = self._start + self._slot * self._interval - now
        self._call = self._clock.callLater(max(0.0, delay), self._tick)

    def _tick(self) -> None:
        self._call = None
        start = self._start
        assert start is not None
        now = self._clock.seconds()
        due = math.floor((now - start) / self._interval + _EPSILON)  # the latest slot whose time has come
        slot = self._slot
        if due < slot:  # woken early (a clock that rounds): sleep again
            self._schedule(now)
            return
        behind = due - slot + 1
        if behind > 1:
            self.late_wakeups += 1
            if behind > self.max_burst:
                skipped = behind - self.max_burst
                self.slots_skipped += skipped
                slot += skipped
        self._ticking = True
        try:
            while slot <= due:
                payload = self._next_payload()
                if payload is None:
                    self._slot = slot
                    return
                self._emit(slot, payload)
                slot += 1
            self._slot = slot
        finally:
            self._ticking = False
        if not self._closed and (self._queue or self.idle_silence):
            self._schedule(now)

    def _next_payload(self) -> bytes | None:
        """The encoded next frame: from the queue, else silence when configured, else None."""
        queue = self._queue
        while queue:
            item = queue[0]
            size = self._frame_bytes
            frame = item.pcm[item.offset : item.offset + size]
            item.offset += size
            if len(frame) < size:
                frame += bytes(size - len(frame))
            if item.offset >= len(item.pcm):
                if item.loop:
                    item.offset = 0
                else:
                    queue.popleft()
                    # Fire after the packet is out: a callback may queue the next prompt.
                    self._clock.callLater(0, item.done.callback, True)
                    if not queue:
                        self._clock.callLater(0, self._fire_idle_if_empty)
            return self._encode(frame)
        if self.idle_silence:
            return self._silence
        return None

    def _fire_idle_if_empty(self) -> None:
        if not self._queue:
            self._fire_idle()

    def _emit(self, slot: int, payload: bytes) -> None:
        marker = self._last_sent is None or slot != self._last_sent + 1
        packet = _HEADER.pack(
            0x80,
            (0x80 if marker else 0) | self.payload_type,
            self._sequence,
            (self._base_timestamp + slot * self.samples_per_frame) & 0xFFFFFFFF,
            self.ssrc,
        ) + payload
        self._sequence = (self._sequence + 1) & 0xFFFF
        self._last_sent = slot
        try:
            self._send(packet)
        except OSError:
            self.send_errors += 1
            return
        self.packets_sent += 1
        self.bytes_sent += len(packet)
