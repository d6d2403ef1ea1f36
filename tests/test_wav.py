"""WAV in (any PCM or G.711 layout, converted to 8 kHz 16-bit mono) and WAV out (atomic, fsynced)."""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import pytest

from audio import dominant_frequency, goertzel_power
from pbx.media import g711, wav

PROMPTS = Path(__file__).resolve().parent.parent / "prompts"


def riff(fmt: int, channels: int, rate: int, bits: int, data: bytes, extensible: bool = False,
         data_size: int | None = None, extra: bytes = b"") -> bytes:
    block = channels * bits // 8
    if extensible:
        body = struct.pack("<HHIIHH", 0xFFFE, channels, rate, rate * block, block, bits)
        body += struct.pack("<HHI", 22, bits, 0) + struct.pack("<H", fmt) + bytes(14)
    else:
        body = struct.pack("<HHIIHH", fmt, channels, rate, rate * block, block, bits)
    chunks = b"fmt " + struct.pack("<I", len(body)) + body + extra
    chunks += b"data" + struct.pack("<I", len(data) if data_size is None else data_size) + data
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def s16(*samples: int) -> bytes:
    return struct.pack(f"<{len(samples)}h", *samples)


def values(pcm: bytes) -> list[int]:
    return list(struct.unpack(f"<{len(pcm) // 2}h", pcm))


def tone(frequency: float, rate: int, seconds: float, amplitude: int = 12000) -> list[int]:
    return [round(amplitude * math.sin(2 * math.pi * frequency * n / rate)) for n in range(int(rate * seconds))]


def test_16_bit_mono_8k_is_taken_as_is(tmp_path: Path) -> None:
    data = s16(0, 1, -1, 32767, -32768)
    path = tmp_path / "a.wav"
    path.write_bytes(riff(1, 1, 8000, 16, data))
    assert wav.read_wav(path) == data


def test_8_bit_unsigned_and_stereo_downmix(tmp_path: Path) -> None:
    path = tmp_path / "u8.wav"
    path.write_bytes(riff(1, 1, 8000, 8, bytes([128, 255, 0])))
    assert values(wav.read_wav(path)) == [0, 127 << 8, -128 << 8]
    path.write_bytes(riff(1, 2, 8000, 16, s16(1000, 3000, -200, 200, 32767, 32767)))
    assert values(wav.read_wav(path)) == [2000, 0, 32767]


def test_g711_extensible_odd_chunks_and_a_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "x.wav"
    codes = bytes([0xFF, 0x80, 0x00])
    odd_chunk = b"LIST" + struct.pack("<I", 3) + b"abc" + b"\x00"  # padded to an even size
    path.write_bytes(riff(7, 1, 8000, 8, codes, extra=odd_chunk))
    assert wav.read_wav(path) == g711.decode_ulaw(codes)
    path.write_bytes(riff(6, 1, 8000, 8, codes, extensible=True))
    assert wav.read_wav(path) == g711.decode_alaw(codes)
    # A writer killed before it fixed the sizes: data size 0, or past the end.
    data = s16(5, 6, 7)
    path.write_bytes(riff(1, 1, 8000, 16, data, data_size=0))
    assert wav.read_wav(path) == data
    path.write_bytes(riff(1, 1, 8000, 16, data + b"\x01", data_size=1000))
    assert wav.read_wav(path) == data  # the half sample at the end is dropped


def test_wider_samples_and_float(tmp_path: Path) -> None:
    path = tmp_path / "w.wav"
    path.write_bytes(riff(1, 1, 8000, 24, b"".join(v.to_bytes(3, "little", signed=True) for v in (256, -512))))
    assert values(wav.read_wav(path)) == [1, -2]
    path.write_bytes(riff(1, 1, 8000, 32, struct.pack("<2i", 65536 * 3, -65536 * 4)))
    assert values(wav.read_wav(path)) == [3, -4]
    path.write_bytes(riff(3, 1, 8000, 32, struct.pack("<3f", 0.5, -1.0, 2.0)))
    assert values(wav.read_wav(path)) == [16383, -32767, 32767]


@pytest.mark.parametrize("body", [b"", b"RIFF\x00\x00\x00\x00WAVX", b"RIFF\x04\x00\x00\x00WAVE"])
def test_not_a_wav(tmp_path: Path, body: bytes) -> None:
    path = tmp_path / "bad.wav"
    path.write_bytes(body)
    with pytest.raises(wav.WavError, match="bad.wav"):
        wav.read_wav(path)


def test_unsupported_encoding(tmp_path: Path) -> None:
    path = tmp_path / "adpcm.wav"
    path.write_bytes(riff(2, 1, 8000, 4, bytes(8)))
    with pytest.raises(wav.WavError, match="unsupported"):
        wav.read_wav(path)


def test_resampling_keeps_pitch_and_length_and_removes_aliases(tmp_path: Path) -> None:
    path = tmp_path / "cd.wav"
    path.write_bytes(riff(1, 2, 44100, 16, s16(*(v for s in tone(1000, 44100, 0.25) for v in (s, s)))))
    pcm = wav.read_wav(path)
    samples = [v / 32768 for v in values(pcm)]
    assert len(samples) == 2000
    assert dominant_frequency(samples, 8000) == pytest.approx(1000, abs=20)
    # 6 kHz cannot exist at 8 kHz; without the low-pass it would fold to 2 kHz at nearly full level.
    path.write_bytes(riff(1, 1, 44100, 16, s16(*tone(6000, 44100, 0.25))))
    folded = [v / 32768 for v in values(wav.read_wav(path))]
    reference = goertzel_power(samples, 8000, 1000)
    assert goertzel_power(folded, 8000, 2000) < reference / 10000


def test_upsampling(tmp_path: Path) -> None:
    path = tmp_path / "low.wav"
    path.write_bytes(riff(1, 1, 4000, 16, s16(*tone(500, 4000, 0.25))))
    samples = [v / 32768 for v in values(wav.read_wav(path))]
    assert len(samples) == 2000
    assert dominant_frequency(samples, 8000) == pytest.approx(500, abs=20)


def test_write_wav_is_atomic_and_synced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    target = tmp_path / "msg.wav"
    target.write_bytes(b"old")
    pcm = s16(*tone(440, 8000, 0.1))
    wav.write_wav(target, pcm)
    assert len(synced) == 2  # the file, then the directory (the rename)
    assert wav.read_wav(target) == pcm
    assert sorted(p.name for p in tmp_path.iterdir()) == ["msg.wav"]  # no temp file left
    assert target.read_bytes()[:4] == b"RIFF" and len(target.read_bytes()) == 44 + len(pcm)

    synced.clear()
    wav.write_wav(tmp_path / "quick.wav", pcm, sync=False)
    assert synced == []


def test_write_wav_leaves_nothing_behind_on_failure(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        wav.write_wav(tmp_path / "odd.wav", b"\x00\x01\x02")
    assert list(tmp_path.iterdir()) == []


def test_shipped_prompts_load_and_stay_small() -> None:
    files = sorted(PROMPTS.glob("*.wav"))
    assert {"beep.wav", "moh.wav", "aa-welcome.wav", "goodbye.wav", "vm-enter-pin.wav"} <= {f.name for f in files}
    assert {f"digit-{d}.wav" for d in range(10)} <= {f.name for f in files}
    assert sum(f.stat().st_size for f in PROMPTS.iterdir()) < 1_200_000  # µ-law: about 1 MB for every prompt
    for path in files:
        pcm = wav.read_wav(path)
        assert len(pcm) > 2 * 8000 * 0.2, path.name
    beep = [v / 32768 for v in values(wav.read_wav(PROMPTS / "beep.wav"))]
    assert dominant_frequency(beep, 8000) == pytest.approx(1000, abs=20)
    assert len(wav.read_wav(PROMPTS / "moh.wav")) == 2 * 8000 * 30
