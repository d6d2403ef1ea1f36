"""G.711 µ-law and A-law against the ITU-T reference values, and the fast table paths against the scalar ones."""

from __future__ import annotations

import struct
import warnings

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pbx.media import g711


def pcm(*samples: int) -> bytes:
    return struct.pack(f"<{len(samples)}h", *samples)


def samples(data: bytes) -> list[int]:
    return list(struct.unpack(f"<{len(data) // 2}h", data))


# (code, linear) pairs from the G.711 tables (the Sun/CCITT g711.c reference).
ULAW_KNOWN = [(0x00, -32124), (0x80, 32124), (0x7F, 0), (0xFF, 0), (0x7E, -8), (0xFE, 8),
              (0x70, -120), (0xF0, 120), (0x0F, -16764), (0x8F, 16764), (0x5F, -396)]
ALAW_KNOWN = [(0xD5, 8), (0x55, -8), (0xAA, 32256), (0x2A, -32256), (0xD4, 24),
              (0x80, 5504), (0x00, -5504), (0xA5, 16896), (0xFA, 1008), (0x7A, -1008)]


def test_decode_known_values() -> None:
    for code, linear in ULAW_KNOWN:
        assert g711.ulaw_to_linear(code) == linear, hex(code)
        assert samples(g711.decode_ulaw(bytes([code]))) == [linear]
    for code, linear in ALAW_KNOWN:
        assert g711.alaw_to_linear(code) == linear, hex(code)
        assert samples(g711.decode_alaw(bytes([code]))) == [linear]


def test_encode_known() -> None:
    assert g711.encode_ulaw(pcm(0, 32767, -32768, 8, -8, 32124, -32124)) == bytes(
        [0xFF, 0x80, 0x00, 0xFE, 0x7E, 0x80, 0x00]
    )
    assert g711.encode_alaw(pcm(0, -1, 32767, -32768, 8, -8)) == bytes([0xD5, 0x55, 0xAA, 0x2A, 0xD5, 0x55])
    assert g711.ULAW_SILENCE == g711.linear_to_ulaw(0)
    assert g711.ALAW_SILENCE == g711.linear_to_alaw(0)


def test_every_code_survives_a_round_trip() -> None:
    every = bytes(range(256))
    assert g711.encode_alaw(g711.decode_alaw(every)) == every
    # µ-law has two zeros (0x7F is "-0"); every other code comes back as itself.
    back = g711.encode_ulaw(g711.decode_ulaw(every))
    assert back == every.replace(b"\x7f", b"\xff")


def test_tables_match_the_scalar_reference_for_every_sample() -> None:
    everything = struct.pack("<65536h", *range(-32768, 32768))
    ulaw = g711.encode_ulaw(everything)
    alaw = g711.encode_alaw(everything)
    for index, value in enumerate(range(-32768, 32768, 97)):
        position = value + 32768
        assert ulaw[position] == g711.linear_to_ulaw(value), value
        assert alaw[position] == g711.linear_to_alaw(value), value
    assert g711.decode_ulaw(bytes(range(256))) == pcm(*(g711.ulaw_to_linear(c) for c in range(256)))
    assert g711.decode_alaw(bytes(range(256))) == pcm(*(g711.alaw_to_linear(c) for c in range(256)))


def test_matches_audioop_where_it_still_exists() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")
    everything = struct.pack("<65536h", *range(-32768, 32768))
    assert g711.encode_ulaw(everything) == audioop.lin2ulaw(everything, 2)
    assert g711.encode_alaw(everything) == audioop.lin2alaw(everything, 2)
    every = bytes(range(256))
    assert g711.decode_ulaw(every) == audioop.ulaw2lin(every, 2)
    assert g711.decode_alaw(every) == audioop.alaw2lin(every, 2)


@given(st.lists(st.integers(-32768, 32767), min_size=1, max_size=200))
def test_quantisation_error_is_bounded(values: list[int]) -> None:
    data = pcm(*values)
    for encode, decode, floor in ((g711.encode_ulaw, g711.decode_ulaw, 8), (g711.encode_alaw, g711.decode_alaw, 16)):
        back = samples(decode(encode(data)))
        for original, decoded in zip(values, back):
            # Half a step (1/32 of the value) plus the reference's truncation, or clipping above 32124.
            allowed = max(floor, abs(original) // 16 + 8) + max(0, abs(original) - 32124)
            assert abs(original - decoded) <= allowed, (original, decoded)


def test_transcoding_equals_going_through_pcm() -> None:
    every = bytes(range(256))
    assert g711.ulaw_to_alaw(every) == g711.encode_alaw(g711.decode_ulaw(every))
    assert g711.alaw_to_ulaw(every) == g711.encode_ulaw(g711.decode_alaw(every))


def test_codec_lookup_and_odd_input() -> None:
    assert g711.encoder("pcmu") is g711.encode_ulaw
    assert g711.decoder("PCMA") is g711.decode_alaw
    with pytest.raises(KeyError):
        g711.encoder("G729")
    with pytest.raises(ValueError):
        g711.encode_ulaw(b"\x00\x01\x02")
    assert g711.encode_ulaw(b"") == b""
    assert g711.decode_alaw(b"") == b""
