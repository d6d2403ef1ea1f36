"""The message-summary body of RFC 3842 §5.2 (application/simple-message-summary).

Pure: the lamp of a phone is one small text body, built here for the NOTIFYs
of `pbx.apps.mwi` and parsed back for tests and for anything that reads what
another server sends.

    Messages-Waiting: yes
    Message-Account: sip:1001@pbx.example.org
    Voice-Message: 2/8 (0/2)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "CONTENT_TYPE",
    "EVENT",
    "MAX_COUNT",
    "MessageSummary",
    "MessageSummaryError",
    "build_summary",
    "parse_summary",
]

EVENT = "message-summary"
CONTENT_TYPE = "application/simple-message-summary"

# Counts wider than this are refused on input: no mailbox holds ten billion
# messages, and it keeps int() away from arbitrarily long digit strings.
_MAX_DIGITS = 10
MAX_COUNT = 10**_MAX_DIGITS - 1
_COUNT = rf"([0-9]{{1,{_MAX_DIGITS}}})"
_COUNTS = re.compile(rf"{_COUNT}[ \t]*/[ \t]*{_COUNT}(?:[ \t]*\([ \t]*{_COUNT}[ \t]*/[ \t]*{_COUNT}[ \t]*\))?\Z")
_BAD_URI_CHARS = re.compile(r"[\s<>\"]")


class MessageSummaryError(ValueError):
    """A body that is not a simple-message-summary."""


@dataclass(frozen=True, slots=True)
class MessageSummary:
    """What one voice mailbox reports: the status line, the account and the voice counts.

    `waiting` is its own field because RFC 3842 lets the status say "yes" for
    message classes other than voice; `of` derives it from the voice counts.
    """

    waiting: bool
    account: str | None = None
    new: int = 0
    old: int = 0
    urgent: tuple[int, int] | None = None  # (new urgent, old urgent), sent only when known

    @classmethod
    def of(cls, account: str | None, new: int, old: int) -> MessageSummary:
        """The summary of a voice mailbox: the lamp is lit while a new message waits."""
        return cls(waiting=new > 0, account=account, new=new, old=old)


def _check_count(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_COUNT:
        raise ValueError(f"{name} must be a whole number from 0 to {MAX_COUNT}, not {value!r}")
    return value


def build_summary(summary: MessageSummary) -> bytes:
    """The body of a message-summary NOTIFY (ValueError for counts or an account it cannot carry)."""
    counts = [_check_count("new", summary.new), _check_count("old", summary.old)]
    voice = f"{counts[0]}/{counts[1]}"
    if summary.urgent is not None:
        new_urgent, old_urgent = summary.urgent
        voice += f" ({_check_count('new urgent', new_urgent)}/{_check_count('old urgent', old_urgent)})"
    lines = [f"Messages-Waiting: {'yes' if summary.waiting else 'no'}"]
    if summary.account is not None:
        account = summary.account
        if not account.isascii() or _BAD_URI_CHARS.search(account) or ":" not in account:
            raise ValueError(f"not a usable account URI: {account!r}")
        lines.append(f"Message-Account: {account}")
    lines.append(f"Voice-Message: {voice}")
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def parse_summary(body: bytes) -> MessageSummary:
    """Read a simple-message-summary body (RFC 3842 §5.2).

    Header names are case-insensitive, CRLF or bare LF end lines, message
    classes other than voice and the optional headers after an empty line
    are ignored. MessageSummaryError names what is wrong.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise MessageSummaryError("body is not UTF-8 text") from None
    waiting: bool | None = None
    account: str | None = None
    voice: tuple[int, int, tuple[int, int] | None] | None = None
    for number, line in enumerate(text.replace("\r\n", "\n").split("\n"), 1):
        if not line.strip():
            if waiting is not None:
                break  # optional message headers follow (RFC 3842 opt-msg-headers)
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise MessageSummaryError(f"line {number} is not 'Name: value'")
        name = name.strip().lower()
        value = value.strip()
        if name == "messages-waiting":
            if waiting is not None:
                raise MessageSummaryError("more than one Messages-Waiting line")
            if value.lower() not in ("yes", "no"):
                raise MessageSummaryError(f"Messages-Waiting must be yes or no, not {value!r}")
            waiting = value.lower() == "yes"
        elif waiting is None:
            raise MessageSummaryError("the body must start with Messages-Waiting")
        elif name == "message-account":
            if account is not None:
                raise MessageSummaryError("more than one Message-Account line")
            if not value or _BAD_URI_CHARS.search(value) or ":" not in value:
                raise MessageSummaryError(f"Message-Account is not a URI: {value!r}")
            account = value
        elif name == "voice-message":
            if voice is not None:
                raise MessageSummaryError("more than one Voice-Message line")
            match = _COUNTS.match(value)
            if match is None:
                raise MessageSummaryError(f"Voice-Message must be new/old [(new/old)], not {value!r}")
            new, old, new_urgent, old_urgent = match.groups()
            urgent = None if new_urgent is None else (int(new_urgent), int(old_urgent))
            voice = (int(new), int(old), urgent)
        # Fax-Message, Pager-Message, ...: other classes, not ours to count.
    if waiting is None:
        raise MessageSummaryError("no Messages-Waiting line")
    new, old, urgent = voice if voice is not None else (0, 0, None)
    return MessageSummary(waiting=waiting, account=account, new=new, old=old, urgent=urgent)
