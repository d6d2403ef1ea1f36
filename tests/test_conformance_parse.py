"""The RFC 4475 / RFC 5118 torture messages through the pure parser and request checks."""

from __future__ import annotations

import pytest

from conformance_data import cases
from pbx.core.registrar import address_of_record
from pbx.sip.errors import ParseError, SIPError
from pbx.sip.message import Request, parse_datagram
from pbx.sip.validate import check_request


def outcome(data: bytes) -> str:
    """What the stack does with one datagram, before any application runs."""
    try:
        message = parse_datagram(data)
    except ParseError as error:
        return "drop" if data.startswith(b"SIP/") else f"respond-{error.status}"
    if not isinstance(message, Request):
        return "stray-response"  # parsed, then ignored: never answered
    try:
        check_request(message)
        if message.method == "REGISTER":
            address_of_record(message)
    except SIPError as error:
        return f"respond-{error.status}"
    return "parse-ok"


def acceptable(tokens: frozenset[str]) -> set[str]:
    ok = set()
    for token in tokens:
        if token == "reject-400":
            ok.add("respond-400")
        elif token == "drop-or-400":
            ok |= {"drop", "respond-400"}
        elif token == "respond-200" or token == "respond-401" or token == "respond-404":
            ok.add("parse-ok")  # the application (registrar, routing) answers these
        elif token == "parse-ok":
            ok |= {"parse-ok", "stray-response"}
        elif token == "drop":
            ok |= {"drop", "stray-response"}
        else:
            ok.add(token)
    return ok


@pytest.mark.parametrize("case", cases(), ids=lambda c: c.name)
def test_torture_message(case):
    assert case.path.exists(), case.path
    got = outcome(case.data)
    assert got in acceptable(case.tokens), f"{case.name}: got {got}, expected one of {sorted(case.tokens)}"


def test_every_file_is_covered():
    listed = {c.path.name for c in cases()}
    from conformance_data import ROOT

    on_disk = {p.name for p in ROOT.glob("*.sip")} | {p.name for p in (ROOT / "rfc5118").glob("*.sip")}
    assert on_disk <= listed
    assert len(listed) >= 49 + 12
