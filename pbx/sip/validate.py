"""Checks every request passes before any application sees it (RFC 3261 §8.2).

Pure: a Request in, nothing out, or a SIPError naming the status that
answers it. The order follows §8.2: malformed (400) before method (405/501),
URI scheme (416), extensions (420) and content (415/406).
"""

from __future__ import annotations

from pbx.sip.errors import (
    BadExtension,
    NotImplementedMethod,
    ParseError,
    SIPError,
    UnsupportedMediaType,
    UnsupportedURIScheme,
)
from pbx.sip.headers import is_token
from pbx.sip.message import Request
from pbx.sip.uri import SipURI, parse_uri

# Every method the stack recognises; unknown ones get 501 (RFC 3261 §8.2.1).
KNOWN_METHODS = frozenset(
    "INVITE ACK BYE CANCEL OPTIONS REGISTER PRACK SUBSCRIBE NOTIFY PUBLISH INFO REFER MESSAGE UPDATE".split()
)
SINGLE_HEADERS = ("to", "from", "call-id", "cseq", "max-forwards")
REQUIRED_HEADERS = ("to", "from", "call-id", "cseq", "via")
SUPPORTED_EXTENSIONS = frozenset({"path", "outbound"})
ACCEPTED_BODY_TYPES = frozenset({"application/sdp", "application/dtmf-relay", "application/dtmf"})


class NotAcceptable(SIPError):
    status = 406
    reason = "Not Acceptable"


def check_request(request: Request) -> None:
    """Raise the SIPError that answers a request the stack must refuse."""
    headers = request.headers
    fields = headers._fields  # keyed by the lower-case full names used below
    for name in REQUIRED_HEADERS:
        if name not in fields:
            raise ParseError(f"missing {name} header", reason=f"Missing {name.title()} Header")
    for name in SINGLE_HEADERS:
        if len(fields.get(name, ())) > 1:
            raise ParseError(f"more than one {name} header", reason=f"Duplicate {name.title()} Header")
    vias = request.vias
    if vias[0].branch == "z9hG4bK":
        raise ParseError("branch holds only the magic cookie", reason="Bad Via Branch")
    cseq = request.cseq
    max_forwards = fields["max-forwards"][0] if "max-forwards" in fields else None
    if max_forwards is not None and (not (max_forwards.isascii() and max_forwards.isdigit()) or len(max_forwards) > 10):
        raise ParseError("bad Max-Forwards", reason="Bad Max-Forwards")
    request.from_()
    request.to()
    try:
        uri = parse_uri(request.uri)
    except ParseError:
        raise ParseError("bad Request-URI", reason="Bad Request-URI") from None
    if request.method not in KNOWN_METHODS:
        raise NotImplementedMethod(f"method {request.method} not implemented")
    if cseq.method != request.method:
        raise ParseError("CSeq method does not match the request", reason="CSeq Method Mismatch")
    if not isinstance(uri, SipURI):
        raise UnsupportedURIScheme(f"scheme {uri.scheme} not supported")
    if request.method != "REGISTER":
        # A registrar parses its Contacts after authentication: a challenge
        # should cost a scanner's or phone's first REGISTER as little as possible.
        request.contacts()
    if request.method in ("ACK", "CANCEL"):
        return
    if "require" in fields:
        unsupported = [tag for tag in headers.get_list("require") if tag.lower() not in SUPPORTED_EXTENSIONS]
        if unsupported:
            raise BadExtension(unsupported)
    if request.body:
        content_type = (headers.get("content-type") or "").split(";")[0].strip().lower()
        if content_type not in ACCEPTED_BODY_TYPES and request.method in ("INVITE", "UPDATE", "PRACK", "ACK", "INFO"):
            raise UnsupportedMediaType(f"body type {content_type or 'missing'} not supported")
    if request.method == "INVITE":
        accept = headers.get_list("accept")
        if accept and not any(a.split(";")[0].strip().lower() in ("application/sdp", "application/*", "*/*") for a in accept):
            raise NotAcceptable("no acceptable body type", reason="Not Acceptable")


def max_forwards(request: Request) -> int:
    """The Max-Forwards value (70 when absent, as for RFC 2543 senders)."""
    value = request.headers.get("max-forwards")
    return 70 if value is None else int(value)


def valid_tag(tag: str | None) -> bool:
    return tag is None or is_token(tag)
