"""Prompts: lookup order, caching, missing files, spoken numbers and tones."""

from __future__ import annotations

import struct

import pytest
from twisted.logger import globalLogPublisher

from audio import dominant_frequency
from pbx.apps import attendant, voicemail
from pbx.apps.prompts import SHIPPED_PROMPTS, Prompts, silence, tone
from pbx.media.recorder import rms
from pbx.media.wav import write_wav


def sine(frequency: float, seconds: float) -> bytes:
    return tone(frequency, seconds, level=0.5)


def pitch(pcm: bytes) -> float | None:
    samples = struct.unpack(f"<{len(pcm) // 2}h", pcm)
    return dominant_frequency([s / 32768 for s in samples], 8000)


@pytest.fixture
def logged():
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def test_every_prompt_the_applications_say_is_shipped() -> None:
    missing = [name for name in (*voicemail.PROMPTS, *attendant.PROMPTS, "aa-welcome", "moh")
               if not (SHIPPED_PROMPTS / f"{name}.wav").is_file()]
    assert missing == []


def test_shipped_prompt_is_read_as_pcm_and_cached() -> None:
    prompts = Prompts()
    beep = prompts.get("beep")
    assert len(beep) == 2 * 2400  # 0.3 s at 8 kHz, 16 bits
    assert pitch(beep) == pytest.approx(1000, abs=20)
    assert prompts.get("beep") is beep


def test_own_directory_overrides_single_prompts(tmp_path) -> None:
    own = sine(600, 0.5)
    write_wav(tmp_path / "goodbye.wav", own, sync=False)
    prompts = Prompts(tmp_path)
    assert prompts.get("goodbye") == own
    assert prompts.get("beep") == Prompts().get("beep")  # the rest still comes from the shipped ones


def test_a_path_loads_that_file(tmp_path) -> None:
    path = tmp_path / "welcome-acme.wav"
    write_wav(path, sine(500, 0.2), sync=False)
    prompts = Prompts(fallback=None)
    assert prompts.get(str(path)) == sine(500, 0.2)


def test_missing_prompt_is_silence_and_logged_once(tmp_path, logged) -> None:
    prompts = Prompts(tmp_path, fallback=None)
    first = prompts.get("no-such-prompt")
    second = prompts.get("no-such-prompt")
    assert first and rms(first) == 0
    assert second is first
    reports = [e for e in logged if e.get("name") == "no-such-prompt"]
    assert len(reports) == 1


def test_unreadable_prompt_is_silence(tmp_path, logged) -> None:
    (tmp_path / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    prompts = Prompts(tmp_path, fallback=None)
    pcm = prompts.get("broken")
    assert pcm and rms(pcm) == 0
    assert any(e.get("name") == "broken" for e in logged)


def test_names_cannot_reach_outside_the_directories(tmp_path) -> None:
    prompts = Prompts(tmp_path / "prompts", fallback=None)
    (tmp_path / "prompts").mkdir()
    write_wav(tmp_path / "secret.wav", sine(700, 0.1), sync=False)
    assert rms(prompts.get("..")) == 0
    assert rms(prompts.get(".secret")) == 0


def test_numbers_are_spoken_digit_by_digit() -> None:
    prompts = Prompts()
    spoken = prompts.number("1002")
    assert spoken == [prompts.get("digit-1"), prompts.get("digit-0"), prompts.get("digit-0"), prompts.get("digit-2")]
    assert prompts.number(7) == [prompts.get("digit-7")]
    assert prompts.number("+49 30") == [prompts.get(f"digit-{d}") for d in "4930"]


def test_tone_frequency_length_and_ramps() -> None:
    pcm = tone(425, 1.0)
    assert len(pcm) == 16000
    assert pitch(pcm) == pytest.approx(425, abs=10)
    samples = struct.unpack("<8000h", pcm)
    assert samples[0] == 0 and abs(samples[-1]) < 50  # ramped, no click
    assert max(abs(s) for s in samples) <= 32767 * 0.25 + 1
    dual = tone((440, 480), 0.5)
    assert len(dual) == 8000 and rms(dual) > 1000
    with pytest.raises(ValueError):
        tone(5000, 1.0)


def test_ringback_is_one_european_cadence() -> None:
    ringback = Prompts(fallback=None).ringback()
    assert len(ringback) == 2 * 8000 * 5
    on, off = ringback[:16000], ringback[16000:]
    assert pitch(on) == pytest.approx(425, abs=10)
    assert off == silence(4.0)
