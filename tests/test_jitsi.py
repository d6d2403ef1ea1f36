"""Jitsi links and tokens (pure: no server needed).

The JWT is checked here independently of the code that made it: split,
base64url-decode, recompute HMAC-SHA256 with the secret, compare, then read
every claim.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from urllib.parse import parse_qs, urlsplit

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from pbx.config import JitsiConfig
from pbx.integrations.jitsi import JitsiClient, jwt_encode, sanitise_room_name

SECRET = "s3cret-shared-with-prosody"
NOW = 1_700_000_000


def b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def verify(token: str, secret: str = SECRET) -> tuple[dict, dict]:
    """Decode an HS256 JWT and check its signature; (header, claims)."""
    header_b64, claims_b64, signature_b64 = token.split(".")
    expected = hmac.new(secret.encode(), f"{header_b64}.{claims_b64}".encode(), hashlib.sha256).digest()
    assert hmac.compare_digest(b64url_decode(signature_b64), expected), "bad signature"
    assert "=" not in token, "base64url without padding"
    return json.loads(b64url_decode(header_b64)), json.loads(b64url_decode(claims_b64))


def token_of(url: str) -> str:
    (token,) = parse_qs(urlsplit(url).query)["jwt"]
    return token


def make(**overrides) -> JitsiClient:
    values = {"enabled": True, "server_url": "https://meet.example.com/", "app_id": "pbx",
              "app_secret": SECRET, "token_ttl": 3600}
    values.update(overrides)
    clock = Clock()
    clock.advance(NOW)
    suffixes = iter(f"r{n:04d}" for n in range(1000))
    return JitsiClient(JitsiConfig(**values), clock, random_suffix=lambda: next(suffixes))


def test_jwt_encode_matches_a_known_token():
    # RFC 7515 style check with a fixed input: the signature verifies and
    # the header is exactly HS256/JWT.
    token = jwt_encode({"sub": "x", "n": 1}, "key")
    header, claims = verify(token, "key")
    assert header == {"alg": "HS256", "typ": "JWT"}
    assert claims == {"sub": "x", "n": 1}
    with pytest.raises(AssertionError):
        verify(token, "other key")


@pytest.mark.parametrize(("text", "expected"), [
    ("Sales Weekly", "sales-weekly"),
    ("../../admin", "admin"),
    ("a/b?c#d%2Fe", "a-b-c-d-2fe"),
    ("Müller & Söhne", "muller-sohne"),
    ("UPPER_case-ok", "upper_case-ok"),
    ("  --weird--  ", "weird"),
    ("x" * 200, "x" * 64),
])
def test_sanitise_room_name(text, expected):
    assert sanitise_room_name(text) == expected


@given(st.text())
def test_sanitised_names_are_always_safe(text):
    name = sanitise_room_name(text)
    assert len(name) <= 64
    assert all(c in "abcdefghijklmnopqrstuvwxyz0123456789-_" for c in name)
    assert not name.startswith(("-", "_")) and not name.endswith(("-", "_"))


def test_room_name_falls_back_to_a_generated_name():
    client = make()
    assert client.room_name("../") == "meeting-r0000"
    assert client.room_name("Team Sync") == "team-sync"


@pytest_twisted.ensureDeferred
async def test_meeting_with_tokens_carries_every_claim():
    client = make()
    result = await client.meeting(room_name="Board / Q3 Review", subject="Q3", moderator_name="Alice",
                                  participants=["bob@example.com"],
                                  scheduled_time="2023-11-20T10:00:00Z", duration=30)
    assert result["room_name"] == "board-q3-review"
    assert result["subject"] == "Q3"
    assert result["scheduled_time"] == "2023-11-20T10:00:00Z"
    assert result["duration"] == 30
    assert result["participants"] == ["bob@example.com"]
    for key in ("url", "moderator_url"):
        parts = urlsplit(result[key])
        assert (parts.scheme, parts.netloc, parts.path) == ("https", "meet.example.com", "/board-q3-review")

    start = 1_700_474_400  # 2023-11-20T10:00:00Z, after NOW
    header, claims = verify(token_of(result["moderator_url"]))
    assert header == {"alg": "HS256", "typ": "JWT"}
    assert claims == {
        "iss": "pbx",
        "aud": "jitsi",
        "sub": "meet.example.com",
        "room": "board-q3-review",
        "nbf": NOW - 10,
        "exp": start + 30 * 60 + 3600,
        "context": {"user": {"moderator": "true", "id": "Alice", "name": "Alice"}},
    }
    _, participant = verify(token_of(result["url"]))
    assert participant["context"] == {"user": {"moderator": "false"}}
    assert participant["room"] == "board-q3-review"
    for value in (*claims["context"]["user"].values(), *participant["context"]["user"].values()):
        assert isinstance(value, str)


@pytest_twisted.ensureDeferred
async def test_meeting_now_expires_after_token_ttl():
    client = make(token_ttl=600)
    result = await client.meeting(subject="Quick chat")
    assert result["room_name"] == "quick-chat-r0000"
    _, claims = verify(token_of(result["url"]))
    assert (claims["nbf"], claims["exp"]) == (NOW - 10, NOW + 600)
    assert NOW - 10 <= NOW < claims["exp"]


@pytest_twisted.ensureDeferred
async def test_meeting_without_secret_has_plain_links():
    client = make(app_id=None, app_secret=None)
    result = await client.meeting()
    assert result["room_name"] == "meeting-r0000"
    assert result["url"] == result["moderator_url"] == "https://meet.example.com/meeting-r0000"
    assert result["scheduled_time"] is None and result["duration"] is None


@pytest_twisted.ensureDeferred
async def test_meeting_bad_input_names_the_field():
    client = make()
    with pytest.raises(ValueError, match="scheduled_time"):
        await client.meeting(scheduled_time="next tuesday")
    with pytest.raises(ValueError, match="duration"):
        await client.meeting(duration=0)
    with pytest.raises(ValueError, match="participants"):
        await client.meeting(participants="bob")


@pytest_twisted.ensureDeferred
async def test_instant_meeting_for_an_extension():
    client = make()
    result = await client.instant("1001", contact_name="Carol Customer")
    assert result["room_name"] == "call-1001-r0000"
    assert result["subject"] == "Call with Carol Customer"
    _, moderator = verify(token_of(result["moderator_url"]))
    assert moderator["room"] == "call-1001-r0000"
    assert moderator["context"]["user"] == {"moderator": "true", "id": "1001", "name": "1001"}
    assert moderator["exp"] == NOW + 3600
    _, guest = verify(token_of(result["url"]))
    assert guest["context"]["user"] == {"moderator": "false", "id": "Carol Customer", "name": "Carol Customer"}
    # Each instant meeting gets its own room.
    again = await client.instant("1001")
    assert again["room_name"] == "call-1001-r0001"
    assert again["subject"] == "Call with extension 1001"


@pytest_twisted.ensureDeferred
async def test_instant_with_default_random_rooms_is_unguessable():
    client = JitsiClient(JitsiConfig(enabled=True), Clock())
    first, second = await client.instant("1001"), await client.instant("1001")
    assert first["room_name"] != second["room_name"]
    assert first["url"] == f"https://meet.jit.si/{first['room_name']}"
    assert len(first["room_name"]) >= len("call-1001-") + 10
