"""tests/audio.py: tones written, read back and recognised."""

from __future__ import annotations

import math
import struct

import pytest

from audio import analyse, dominant_frequency, first_sound, read_wav, rms, write_tone, write_wav


@pytest.mark.parametrize("frequency", [440, 1000])
def test_a_generated_tone_is_recognised(tmp_path, frequency):
    path = write_tone(tmp_path / "tone.wav", frequency, 1.0)
    rate, samples = read_wav(path)
    assert rate == 8000 and len(samples) == 8000
    assert dominant_frequency(samples, rate) == pytest.approx(frequency, abs=10)
    assert rms(samples) == pytest.approx(0.5 / math.sqrt(2), rel=0.01)


def test_silence_has_no_level_and_no_frequency(tmp_path):
    rate, samples = read_wav(write_wav(tmp_path / "silence.wav", [0.0] * 8000))
    assert rms(samples) < 1e-6
    assert dominant_frequency(samples, rate) is None


def test_leading_silence_is_skipped(tmp_path):
    tone = [0.3 * math.sin(2 * math.pi * 700 * n / 8000) for n in range(8000)]
    path = write_wav(tmp_path / "late.wav", [0.0] * 12000 + tone)
    rate, samples = read_wav(path)
    assert first_sound(samples, rate) == pytest.approx(12000, abs=160)
    info = analyse(path)
    assert info["dominant"] == pytest.approx(700, abs=10)
    assert info["sound_starts"] == pytest.approx(1.5, abs=0.02)
    assert info["seconds"] == pytest.approx(2.5)


def _wav_bytes(samples, rate, channels, extensible=False, data_size=None):
    frames = struct.pack(f"<{len(samples)}h", *samples)
    if extensible:
        fmt = struct.pack("<HHIIHHHHI", 0xFFFE, channels, rate, rate * 2 * channels, 2 * channels, 16,
                          22, 16, 0) + struct.pack("<H", 1) + bytes(14)
    else:
        fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * 2 * channels, 2 * channels, 16)
    size = len(frames) if data_size is None else data_size
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"LIST" + struct.pack("<I", 4) + b"INFO"
    body += b"data" + struct.pack("<I", size) + frames
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + body


@pytest.mark.parametrize("extensible", [False, True])
def test_16khz_stereo_as_sndfile_may_write_it(tmp_path, extensible):
    rate = 16000
    tone = [round(8000 * math.sin(2 * math.pi * 1000 * n / rate)) for n in range(rate)]
    interleaved = [v for s in tone for v in (s, s)]
    path = tmp_path / "stereo.wav"
    path.write_bytes(_wav_bytes(interleaved, rate, 2, extensible))
    got_rate, samples = read_wav(path)
    assert got_rate == rate and len(samples) == rate
    assert dominant_frequency(samples, got_rate) == pytest.approx(1000, abs=10)


def test_a_header_left_unfinished_is_read_to_the_end(tmp_path):
    tone = [round(8000 * math.sin(2 * math.pi * 440 * n / 8000)) for n in range(4000)]
    path = tmp_path / "killed.wav"
    path.write_bytes(_wav_bytes(tone, 8000, 1, data_size=0))
    rate, samples = read_wav(path)
    assert len(samples) == 4000
    assert dominant_frequency(samples, rate, window=0.3) == pytest.approx(440, abs=10)


def test_not_a_wav_is_refused(tmp_path):
    path = tmp_path / "x.wav"
    path.write_bytes(b"not a wave file at all")
    with pytest.raises(ValueError):
        read_wav(path)
