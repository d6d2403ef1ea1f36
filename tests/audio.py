"""Tones and recordings for the call tests: write a WAV, read one back, tell its pitch.

Standard library only (no numpy).  A call test plays a known tone into each
side of a call (baresip's aufile source) and checks that what the other side
recorded (baresip's sndfile module) has that tone as its dominant frequency.

    write_tone(path, 440, 3.0)                 # 8 kHz mono 16-bit sine
    rate, samples = read_wav(path)             # any rate, mono or stereo 16-bit
    dominant_frequency(samples, rate)          # Goertzel scan, 100-3500 Hz
    rms(samples)                               # 0.0 (silence) .. 1.0 (full scale)
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

__all__ = [
    "write_tone", "write_wav", "read_wav", "rms", "goertzel_power",
    "dominant_frequency", "first_sound", "analyse",
]

_PCM = 1
_EXTENSIBLE = 0xFFFE


def write_wav(path: str | Path, samples, rate: int = 8000) -> Path:
    """Write mono 16-bit PCM; samples are floats in -1.0..1.0 (clipped)."""
    path = Path(path)
    frames = struct.pack(
        f"<{len(samples)}h", *(max(-32768, min(32767, round(s * 32767))) for s in samples)
    )
    header = b"RIFF" + struct.pack("<I", 36 + len(frames)) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, _PCM, 1, rate, rate * 2, 2, 16)
    header += b"data" + struct.pack("<I", len(frames))
    path.write_bytes(header + frames)
    return path


def write_tone(path: str | Path, frequency: float, seconds: float, amplitude: float = 0.5,
               rate: int = 8000) -> Path:
    """A sine tone as an 8 kHz (by default) mono 16-bit WAV file."""
    count = int(round(seconds * rate))
    step = 2.0 * math.pi * frequency / rate
    return write_wav(path, [amplitude * math.sin(step * n) for n in range(count)], rate)


def read_wav(path: str | Path) -> tuple[int, list[float]]:
    """(sample rate, mono samples in -1.0..1.0) of a 16-bit PCM WAV file.

    Reads the RIFF chunks itself rather than with the wave module, so that it
    also takes WAVE_FORMAT_EXTENSIBLE headers and files whose writer was
    stopped before it could fix the sizes in the header (a data chunk of
    size 0 or past the end: everything up to the end is taken).  Stereo is
    mixed down to mono.
    """
    data = Path(path).read_bytes()
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError(f"{path}: not a RIFF/WAVE file")
    fmt = None
    pcm = None
    offset = 12
    while offset + 8 <= len(data):
        chunk_id = data[offset:offset + 4]
        size = struct.unpack_from("<I", data, offset + 4)[0]
        body = offset + 8
        if chunk_id == b"fmt ":
            fmt = struct.unpack_from("<HHIIHH", data, body)
            if fmt[0] == _EXTENSIBLE and size >= 40:
                # the sub-format GUID starts with the real format tag
                fmt = (struct.unpack_from("<H", data, body + 24)[0],) + fmt[1:]
        elif chunk_id == b"data":
            end = len(data) if size == 0 or body + size > len(data) else body + size
            pcm = data[body:end]
            break
        offset = body + size + (size & 1)
    if fmt is None or pcm is None:
        raise ValueError(f"{path}: no fmt or data chunk")
    tag, channels, rate, _, _, bits = fmt
    if tag != _PCM or bits != 16 or channels not in (1, 2):
        raise ValueError(f"{path}: only 16-bit PCM mono/stereo is read (format {tag}, {channels} ch, {bits} bit)")
    count = len(pcm) // 2
    values = struct.unpack(f"<{count}h", pcm[:count * 2])
    if channels == 2:
        values = [(values[i] + values[i + 1]) / 2 for i in range(0, count - 1, 2)]
    return rate, [v / 32768.0 for v in values]


def rms(samples) -> float:
    """Root mean square level, 0.0 for silence (or no samples)."""
    if not samples:
        return 0.0
    return math.sqrt(sum(s * s for s in samples) / len(samples))


def goertzel_power(samples, rate: int, frequency: float) -> float:
    """Power of one frequency in the samples (Goertzel), normalised by length."""
    coefficient = 2.0 * math.cos(2.0 * math.pi * frequency / rate)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + coefficient * s1 - s2, s1
    return (s1 * s1 + s2 * s2 - coefficient * s1 * s2) / (len(samples) or 1)


def first_sound(samples, rate: int, threshold: float = 0.01, block: float = 0.02) -> int | None:
    """Index of the first block of `block` seconds whose RMS exceeds threshold."""
    size = max(1, int(rate * block))
    for start in range(0, len(samples), size):
        if rms(samples[start:start + size]) > threshold:
            return start
    return None


def dominant_frequency(samples, rate: int, low: float = 100.0, high: float = 3500.0,
                       step: float = 10.0, window: float = 0.5, skip: float = 0.1) -> float | None:
    """The strongest frequency between low and high, in Hz; None for silence.

    Leading silence (and then `skip` seconds, the start of a call being often
    clipped or ramped) is skipped, and `window` seconds from there are
    scanned with Goertzel in `step` Hz steps, then refined to 1 Hz around
    the best candidate.  high is capped below the Nyquist frequency.
    """
    start = first_sound(samples, rate)
    if start is None:
        return None
    start = min(start + int(skip * rate), max(0, len(samples) - int(window * rate)))
    chunk = samples[start:start + int(window * rate)]
    if not chunk:
        return None
    high = min(high, rate / 2 - step)
    candidates = [low + i * step for i in range(int((high - low) / step) + 1)]
    best = max(candidates, key=lambda f: goertzel_power(chunk, rate, f))
    fine = [best + d for d in range(-int(step), int(step) + 1) if low <= best + d <= high]
    return float(max(fine, key=lambda f: goertzel_power(chunk, rate, f)))


def analyse(path: str | Path) -> dict:
    """rate, seconds, rms, the dominant frequency, and when sound starts (s)."""
    rate, samples = read_wav(path)
    start = first_sound(samples, rate)
    return {
        "rate": rate,
        "seconds": len(samples) / rate if rate else 0.0,
        "rms": rms(samples),
        "dominant": dominant_frequency(samples, rate),
        "sound_starts": None if start is None else start / rate,
    }
