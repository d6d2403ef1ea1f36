"""WAV files in and out: prompts and greetings in, voicemail recordings out.

Everything the media endpoint plays is 8 kHz, 16-bit, mono PCM (s16le
bytes). `read_wav` accepts what an administrator is likely to drop in as a
replacement prompt and converts it at load:

- PCM 8-bit (unsigned), 16-bit, 24-bit and 32-bit, IEEE float 32-bit, and
  G.711 µ-law/A-law WAVs, plain or WAVE_FORMAT_EXTENSIBLE;
- any number of channels, mixed down to mono by averaging;
- any sample rate, resampled to 8 kHz (windowed sinc, see `resample`).

It reads the RIFF chunks itself (not with the `wave` module) so that it also
takes files whose writer died before fixing the sizes in the header: a data
chunk of size 0 or one that runs past the end is taken up to the end.

`write_wav` makes a recording durable before anybody points at it: it writes
a temporary file in the target directory, fsyncs it, renames it over the
target and fsyncs the directory. It blocks; on the reactor thread call it
through `twisted.internet.threads.deferToThread`.
"""

from __future__ import annotations

import math
import operator
import os
import struct
import sys
import tempfile
from array import array
from pathlib import Path

from pbx.media import g711

__all__ = ["WavError", "read_wav", "load_wav", "decode_wav", "encode_wav", "write_wav", "resample", "RATE"]

RATE = 8000

_PCM = 0x0001
_FLOAT = 0x0003
_ALAW = 0x0006
_ULAW = 0x0007
_EXTENSIBLE = 0xFFFE
_BIG_ENDIAN = sys.byteorder == "big"


class WavError(ValueError):
    """A file that is not a WAV this module can read."""


def _samples16(data: bytes) -> array:
    samples = array("h")
    samples.frombytes(data[: len(data) & ~1])
    if _BIG_ENDIAN:
        samples.byteswap()
    return samples


def _to_bytes(samples: array) -> bytes:
    if _BIG_ENDIAN:
        samples = array("h", samples)
        samples.byteswap()
    return samples.tobytes()


def _to_int16(data: bytes, fmt: int, bits: int) -> list[int] | array:
    """Interleaved samples of any supported encoding as 16-bit integers."""
    if fmt == _ULAW and bits == 8:
        return _samples16(g711.decode_ulaw(data))
    if fmt == _ALAW and bits == 8:
        return _samples16(g711.decode_alaw(data))
    if fmt == _FLOAT and bits == 32:
        floats = array("f")
        floats.frombytes(data[: len(data) & ~3])
        if _BIG_ENDIAN:
            floats.byteswap()
        return [max(-32768, min(32767, int(f * 32767.0))) for f in floats]
    if fmt != _PCM:
        raise WavError(f"unsupported WAV encoding 0x{fmt:04x} ({bits} bits)")
    if bits == 8:
        return [(b - 128) << 8 for b in data]
    if bits == 16:
        return _samples16(data)
    if bits == 24:
        count = len(data) // 3
        return [int.from_bytes(data[3 * i + 1 : 3 * i + 3], "little", signed=True) for i in range(count)]
    if bits == 32:
        count = len(data) // 4
        return [v >> 16 for v in struct.unpack(f"<{count}i", data[: 4 * count])]
    raise WavError(f"unsupported PCM sample size: {bits} bits")


def _chunks(data: bytes):
    offset = 12
    while offset + 8 <= len(data):
        name = data[offset : offset + 4]
        (size,) = struct.unpack_from("<I", data, offset + 4)
        body = offset + 8
        yield name, body, size
        offset = body + size + (size & 1)  # chunks are word aligned


def decode_wav(data: bytes) -> tuple[int, int, list[int] | array]:
    """(sample rate, channels, interleaved 16-bit samples) of a WAV file's bytes."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise WavError("not a RIFF/WAVE file")
    fmt = None
    for name, body, size in _chunks(data):
        if name == b"fmt ":
            if size < 16:
                raise WavError("fmt chunk too short")
            fmt = struct.unpack_from("<HHIIHH", data, body)
            if fmt[0] == _EXTENSIBLE and size >= 40:
                # The real format is the first two bytes of the SubFormat GUID.
                (sub,) = struct.unpack_from("<H", data, body + 24)
                fmt = (sub,) + fmt[1:]
        elif name == b"data":
            if fmt is None:
                raise WavError("data chunk before fmt chunk")
            encoding, channels, rate, _, block, bits = fmt
            if channels < 1 or rate < 1 or block < 1:
                raise WavError(f"bad fmt chunk: {channels} channels, {rate} Hz")
            end = len(data) if size == 0 or body + size > len(data) else body + size
            usable = (end - body) // block * block
            return rate, channels, _to_int16(data[body : body + usable], encoding, bits)
    raise WavError("no data chunk" if fmt is not None else "no fmt chunk")


def _downmix(samples, channels: int) -> list[int] | array:
    if channels == 1:
        return samples
    columns = [samples[c::channels] for c in range(channels)]
    return [sum(frame) // channels for frame in zip(*columns)]


#: Zero crossings of the resampling kernel on each side, and phases of its table.
_ZEROS = 8
_PHASES = 64


def _kernel(ratio: float) -> tuple[int, list[list[float]]]:
    """Half width and per-phase taps of a Blackman-windowed sinc low-pass for `ratio` = in/out rate.

    The cut-off is 90 % of the lower Nyquist frequency (3.6 kHz when going
    to 8 kHz). Each phase's taps are normalised to a DC gain of 1.
    """
    cutoff = 0.45 * min(1.0, 1.0 / ratio)  # cycles per input sample
    half = math.ceil(_ZEROS / (2 * cutoff))
    phases = 1 if ratio == int(ratio) else _PHASES
    tables = []
    for phase in range(phases):
        fraction = phase / phases
        taps = []
        for k in range(-half + 1, half + 1):
            t = k - fraction
            x = 2 * cutoff * t
            sinc = 1.0 if x == 0 else math.sin(math.pi * x) / (math.pi * x)
            w = 0.42 + 0.5 * math.cos(math.pi * t / half) + 0.08 * math.cos(2 * math.pi * t / half)
            taps.append(sinc * max(w, 0.0))
        total = sum(taps)
        tables.append([tap / total for tap in taps])
    return half, tables


def resample(samples: list[int] | array, rate: int, target: int = RATE) -> list[int] | array:
    """Resample mono 16-bit samples from `rate` to `target` Hz.

    Windowed-sinc interpolation (Blackman window, 8 zero crossings each
    side, cut-off at 90 % of the lower Nyquist frequency, 64 kernel phases
    for rates that are not integer multiples): what is above the new Nyquist
    frequency does not fold back as aliases, which a plain linear
    interpolation would let through at nearly full level. Each output sample
    is one `sum(map(mul, taps, window))`, so a second of 44.1 kHz audio
    takes some tens of milliseconds: fine for converting a replacement
    prompt once at load time. Prompts made offline (`tools/make_prompts.sh`)
    are already at 8 kHz and skip this.
    """
    if rate == target or not samples:
        return samples
    ratio = rate / target
    half, tables = _kernel(ratio)
    phases = len(tables)
    padded = [0] * half + list(samples) + [0] * (half + 1)
    width = 2 * half
    count = len(samples) * target // rate
    out = []
    mul = operator.mul
    for j in range(count):
        position = j * ratio
        i = int(position)
        phase = int((position - i) * phases + 0.5)
        if phase == phases:
            i += 1
            phase = 0
        value = sum(map(mul, tables[phase], padded[i + 1 : i + 1 + width]))
        out.append(-32768 if value < -32768 else 32767 if value > 32767 else round(value))
    return out


def read_wav(path: str | os.PathLike[str]) -> bytes:
    """A WAV file as 8 kHz 16-bit mono PCM (s16le bytes), converted as needed."""
    try:
        rate, channels, samples = decode_wav(Path(path).read_bytes())
    except WavError as error:
        raise WavError(f"{os.fspath(path)}: {error}") from None
    mono = resample(_downmix(samples, channels), rate)
    return _to_bytes(mono if isinstance(mono, array) else array("h", mono))


#: The name prompt loaders use.
load_wav = read_wav


def encode_wav(pcm: bytes, rate: int = RATE) -> bytes:
    """A complete mono 16-bit WAV file holding `pcm` (s16le)."""
    if len(pcm) & 1:
        raise ValueError("16-bit PCM must have an even number of bytes")
    header = b"RIFF" + struct.pack("<I", 36 + len(pcm)) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, _PCM, 1, rate, rate * 2, 2, 16)
    header += b"data" + struct.pack("<I", len(pcm))
    return header + pcm


def write_wav(path: str | os.PathLike[str], pcm: bytes, sync: bool = True, rate: int = RATE) -> None:
    """Write `pcm` as a WAV file that is complete on disk when this returns.

    The file appears under its name only once it is whole (temp file, then
    rename), so a reader never sees half a recording. With `sync` the data
    and the rename are fsynced: a database record committed after this
    returns never points at a file a power cut could lose. Blocking I/O.
    """
    target = Path(path)
    directory = target.parent
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(encode_wav(pcm, rate))
            handle.flush()
            if sync:
                os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    if sync:
        fsync_directory(directory)


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make a new or renamed entry of `directory` durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
