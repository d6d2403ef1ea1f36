"""The RFC 3842 message-summary body: build, parse, and both round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pbx.sip.message_summary import MessageSummary, MessageSummaryError, build_summary, parse_summary

counts = st.integers(min_value=0, max_value=9_999_999_999)
account_uris = st.from_regex(r"sips?:[0-9a-z.*#+_-]{1,12}@[a-z0-9][a-z0-9.-]{0,20}(:[0-9]{1,5})?", fullmatch=True)
accounts = st.none() | account_uris
summaries = st.builds(
    MessageSummary,
    waiting=st.booleans(),
    account=accounts,
    new=counts,
    old=counts,
    urgent=st.none() | st.tuples(counts, counts),
)


@given(summaries)
def test_parse_of_build_is_identity(summary):
    assert parse_summary(build_summary(summary)) == summary


@given(summaries)
def test_build_is_ascii_lines_ending_in_crlf(summary):
    body = build_summary(summary)
    assert body.endswith(b"\r\n") and b"\n" not in body.replace(b"\r\n", b"")
    assert body.startswith(b"Messages-Waiting: " + (b"yes" if summary.waiting else b"no"))


@given(summaries, st.sampled_from([str.upper, str.lower]), st.sampled_from(["\r\n", "\n"]))
def test_parse_tolerates_case_and_bare_newlines(summary, case, newline):
    text = build_summary(summary).decode()
    lines = [case(name) + ":  " + value for name, _, value in (l.partition(": ") for l in text.split("\r\n") if l)]
    assert parse_summary(newline.join(lines).encode() + newline.encode()) == summary


def test_rfc_3842_example():
    body = (
        b"Messages-Waiting: yes\r\n"
        b"Message-Account: sip:alice@vmail.example.com\r\n"
        b"Voice-Message: 4/8 (1/2)\r\n"
        b"Fax-Message: 1/0\r\n"
        b"\r\n"
        b"To: <alice@atlanta.example.com>\r\n"
        b"From: <bob@biloxi.example.com>\r\n"
    )
    summary = parse_summary(body)
    assert summary == MessageSummary(True, "sip:alice@vmail.example.com", 4, 8, (1, 2))


def test_of_lights_the_lamp_only_for_new_messages():
    assert MessageSummary.of("sip:1001@pbx", 1, 0).waiting is True
    assert MessageSummary.of("sip:1001@pbx", 0, 7).waiting is False
    assert build_summary(MessageSummary.of("sip:1001@pbx", 1, 0)) == (
        b"Messages-Waiting: yes\r\nMessage-Account: sip:1001@pbx\r\nVoice-Message: 1/0\r\n"
    )


def test_missing_voice_line_means_no_voice_messages():
    assert parse_summary(b"Messages-Waiting: no\r\n") == MessageSummary(False)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"Voice-Message: 1/0\r\n",  # no status line first
        b"Messages-Waiting: maybe\r\n",
        b"Messages-Waiting: yes\r\nMessages-Waiting: no\r\n",
        b"Messages-Waiting: yes\r\nVoice-Message: one/0\r\n",
        b"Messages-Waiting: yes\r\nVoice-Message: -1/0\r\n",
        b"Messages-Waiting: yes\r\nVoice-Message: 1/0 (1)\r\n",
        b"Messages-Waiting: yes\r\nVoice-Message: 12345678901/0\r\n",
        "Messages-Waiting: yes\r\nVoice-Message: \u0661/0\r\n".encode(),  # Arabic-Indic digit
        b"Messages-Waiting: yes\r\nVoice-Message: 1/0\r\nVoice-Message: 2/0\r\n",
        b"Messages-Waiting: yes\r\nMessage-Account: not a uri\r\n",
        b"Messages-Waiting: yes\r\ngarbage\r\n",
        b"Messages-Waiting: \xff\r\n",
    ],
)
def test_malformed_bodies_are_refused(body):
    with pytest.raises(MessageSummaryError):
        parse_summary(body)


@pytest.mark.parametrize(
    "summary",
    [
        MessageSummary(True, new=-1),
        MessageSummary(True, old=10**10),
        MessageSummary(True, new=True),  # a bool is not a count
        MessageSummary(True, urgent=(0, -2)),
        MessageSummary(True, account="sip:1001@pbx\r\nVoice-Message: 9/9"),
        MessageSummary(True, account="<sip:1001@pbx>"),
        MessageSummary(True, account="1001"),
        MessageSummary(True, account="sip:ü@pbx"),
    ],
)
def test_unbuildable_summaries_are_refused(summary):
    with pytest.raises(ValueError):
        build_summary(summary)
