"""check_request: the RFC 3261 §8.2 checks every request passes before a handler sees it."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pbx.sip.errors import (
    BadExtension,
    NotImplementedMethod,
    ParseError,
    SIPError,
    UnsupportedMediaType,
    UnsupportedURIScheme,
)
from pbx.sip.message import Request, parse_datagram
from pbx.sip.validate import KNOWN_METHODS, NotAcceptable, check_request, max_forwards, valid_tag

TORTURE = Path(__file__).parent / "conformance" / "rfc4475"

DEFAULT_HEADERS = {
    "Via": "SIP/2.0/UDP pc33.example.com;branch=z9hG4bKnashds8",
    "Max-Forwards": "70",
    "To": "Bob <sip:bob@example.com>",
    "From": '"Alice" <sip:alice@example.com>;tag=1928301774',
    "Call-ID": "a84b4c76e66710@pc33.example.com",
    "CSeq": "314159 {method}",
}


def build(
    method: str = "OPTIONS",
    *,
    uri: str = "sip:bob@example.com",
    drop: tuple[str, ...] = (),
    replace: dict[str, str] | None = None,
    extra: str = "",
    body: bytes = b"",
) -> Request:
    replace = replace or {}
    lines = [f"{method} {uri} SIP/2.0"]
    for name, value in DEFAULT_HEADERS.items():
        if name in drop:
            continue
        lines.append(f"{name}: {replace.get(name, value.format(method=method))}")
    text = "\r\n".join(lines) + "\r\n" + extra + f"Content-Length: {len(body)}\r\n\r\n"
    message = parse_datagram(text.encode("utf-8", "surrogateescape") + body)
    assert isinstance(message, Request)
    return message


def refused(request: Request) -> SIPError:
    with pytest.raises(SIPError) as info:
        check_request(request)
    return info.value


@pytest.mark.parametrize("method", sorted(KNOWN_METHODS))
def test_well_formed_requests_pass(method):
    check_request(build(method))


def test_a_full_invite_passes():
    check_request(
        build(
            "INVITE",
            extra=(
                "Contact: <sip:alice@192.0.2.1:5060;transport=udp>\r\n"
                "Require: path, outbound\r\nAccept: application/sdp, text/plain\r\n"
                "Content-Type: Application/SDP ; charset=utf-8\r\n"
            ),
            body=b"v=0\r\n",
        )
    )


# -- 400: missing, duplicated, malformed ---------------------------------------------


@pytest.mark.parametrize("name", ["To", "From", "Call-ID", "CSeq", "Via"])
def test_missing_required_header_is_400(name):
    error = refused(build(drop=(name,)))
    assert isinstance(error, ParseError)
    assert error.status == 400
    assert "Missing" in error.reason


def test_missing_max_forwards_is_fine():
    check_request(build(drop=("Max-Forwards",)))


@pytest.mark.parametrize(
    "line",
    [
        "To: <sip:carol@example.com>",
        "t: <sip:carol@example.com>",
        "From: <sip:carol@example.com>;tag=2",
        "f: <sip:carol@example.com>;tag=2",
        "Call-ID: other",
        "i: other",
        "CSeq: 314160 OPTIONS",
        "Max-Forwards: 69",
    ],
)
def test_duplicated_single_header_is_400(line):
    # RFC 4475 §3.3.8 multi01.
    error = refused(build(extra=line + "\r\n"))
    assert error.status == 400
    assert "Duplicate" in error.reason


def test_repeated_via_and_contact_are_fine():
    check_request(build(extra="Via: SIP/2.0/UDP second;branch=z9hG4bK2\r\nContact: <sip:a@h>\r\nContact: <sip:b@h>\r\n"))


def test_cseq_method_mismatch_is_400():
    # RFC 4475 §3.1.2.17 mismatch01.
    error = refused(build("OPTIONS", replace={"CSeq": "8 INVITE"}))
    assert error.status == 400
    assert error.reason == "CSeq Method Mismatch"


def test_cseq_method_is_case_sensitive():
    assert refused(build("OPTIONS", replace={"CSeq": "8 options"})).status == 400


@pytest.mark.parametrize("cseq", ["4294967296 OPTIONS", "36893488147419103232 OPTIONS", "-1 OPTIONS", "OPTIONS", "1"])
def test_bad_cseq_is_400(cseq):
    # RFC 4475 §3.1.2.4 scalar02.
    assert refused(build(replace={"CSeq": cseq})).status == 400


def test_largest_cseq_is_fine():
    check_request(build(replace={"CSeq": "4294967295 OPTIONS"}))


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "", "12345678901", "7 0", "\u00b2", "\uff17\uff10"])
def test_bad_max_forwards_is_400(value):
    # Regression for "\u00b2" / fullwidth: isdigit() let them through and
    # max_forwards() then raised ValueError.
    error = refused(build(replace={"Max-Forwards": value}))
    assert error.status == 400
    assert error.reason == "Bad Max-Forwards"


def test_max_forwards_value():
    assert max_forwards(build(replace={"Max-Forwards": "0068"})) == 68
    assert max_forwards(build(replace={"Max-Forwards": "0"})) == 0
    assert max_forwards(build(drop=("Max-Forwards",))) == 70


@pytest.mark.parametrize(
    "name,value",
    [
        ("Via", "SIP/2.0/UDP 192.0.2.15;;,;,,"),  # RFC 4475 badinv01
        ("Via", ""),  # regression: an empty Via raised IndexError
        ("Via", ","),
        ("Via", "SIP/2.0/UDP h;branch=z9hG4bK1, , SIP/2.0/UDP h2"),
        ("Via", "SIP/2.0/UDP h;branch=z9hG4bK"),  # RFC 4475 badbranch: only the magic cookie
        ("To", '"J User <sip:j.user@example.com>'),  # RFC 4475 quotbal
        ("To", "<sip:user@example.com >"),  # RFC 4475 badaspec
        ("From", "J. User, Esq. <sip:j@h>;tag=1"),  # RFC 4475 baddn
        ("From", ""),
        ("To", "<sip:bob@example.com>;tag="),
    ],
)
def test_malformed_structured_headers_are_400(name, value):
    assert refused(build(replace={name: value})).status == 400


@pytest.mark.parametrize(
    "contact",
    [
        '"Joe" <sip:joe@example.org>;;;;',  # RFC 4475 badinv01
        "sip:user@example.com?Route=%3Csip:sip.example.com%3E",  # RFC 4475 regbadct
        "<sip:a@h",
        "<sip:a@h>, junk here",
    ],
)
def test_malformed_contact_is_400(contact):
    # A REGISTER's Contacts are the registrar's, after authentication
    # (tests/test_registrar.py); every other request is checked here.
    assert refused(build("OPTIONS", extra=f"Contact: {contact}\r\n")).status == 400


def test_star_contact_is_fine():
    check_request(build("REGISTER", extra="Contact: *\r\nExpires: 0\r\n"))


@pytest.mark.parametrize(
    "uri",
    [
        "<sip:user@example.com>",  # RFC 4475 ltgtruri
        "sip:user@exa_mple.com",
        "sip:",
        "sip:user@",
        "nonsense",
        "sip:[2001:db8::1",
    ],
)
def test_bad_request_uri_is_400(uri):
    error = refused(build(uri=uri))
    assert error.status == 400
    assert error.reason == "Bad Request-URI"


# -- 501, 416, 420, 415, 406 -----------------------------------------------------------


@pytest.mark.parametrize("method", ["NEWMETHOD", "RE%47IST%45R", "invite", "!interesting-Method0123456789_*+`.%indeed'~"])
def test_unknown_method_is_501(method):
    error = refused(build(method))
    assert isinstance(error, NotImplementedMethod)
    assert error.status == 501


def test_unknown_method_wins_over_cseq_mismatch():
    # RFC 4475 §3.1.2.18 mismatch02: 501 preferred.
    assert refused(build("NEWMETHOD", replace={"CSeq": "8 INVITE"})).status == 501


@pytest.mark.parametrize("uri", ["tel:+1-201-555-0123", "soap.beep://192.0.2.103:3002", "isbn:2983792873", "http://example.com/"])
def test_non_sip_request_uri_is_416(uri):
    # RFC 4475 §3.3.2 unkscm, §3.3.3 novelsc.
    error = refused(build(uri=uri))
    assert isinstance(error, UnsupportedURIScheme)
    assert error.status == 416


def test_sips_request_uri_is_fine():
    check_request(build(uri="sips:bob@example.com"))


def test_require_with_unknown_tags_is_420_with_the_tags():
    # RFC 4475 §3.3.5 bext01.
    error = refused(build("OPTIONS", extra="Require: nothingSupportsThis, path, nothingSupportsThisEither\r\nRequire: 100rel\r\n"))
    assert isinstance(error, BadExtension)
    assert error.status == 420
    assert error.unsupported == ["nothingSupportsThis", "nothingSupportsThisEither", "100rel"]


def test_require_known_tags_any_case():
    check_request(build("REGISTER", extra="Require: Path, OUTBOUND\r\n"))


@pytest.mark.parametrize("method", ["ACK", "CANCEL"])
def test_ack_and_cancel_ignore_require_and_body_checks(method):
    check_request(build(method, extra="Require: foo\r\nContent-Type: application/unknownformat\r\nAccept: text/x\r\n", body=b"x"))


def test_proxy_require_is_not_checked_by_a_uas():
    check_request(build(extra="Proxy-Require: foo\r\n"))


@pytest.mark.parametrize("method", ["INVITE", "UPDATE", "PRACK", "INFO"])
def test_unknown_body_type_is_415(method):
    # RFC 4475 §3.3.6 invut.
    error = refused(build(method, extra="Content-Type: application/unknownformat\r\n", body=b"<body/>"))
    assert isinstance(error, UnsupportedMediaType)
    assert error.status == 415


def test_body_without_content_type_is_415():
    assert refused(build("INVITE", body=b"v=0\r\n")).status == 415


@pytest.mark.parametrize("ctype", ["application/sdp", "APPLICATION/SDP", "application/sdp;charset=x", " application/dtmf-relay ", "c:application/dtmf"])
def test_accepted_body_types(ctype):
    if ctype.startswith("c:"):
        check_request(build("INFO", extra=f"c: {ctype[2:]}\r\n", body=b"Signal=1\r\n"))
    else:
        check_request(build("INVITE", extra=f"Content-Type: {ctype}\r\n", body=b"v=0\r\n"))


def test_empty_body_needs_no_content_type():
    check_request(build("INVITE", extra="Content-Type: application/unknownformat\r\n"))


def test_other_methods_may_carry_any_body():
    check_request(build("MESSAGE", extra="Content-Type: text/plain\r\n", body=b"hello"))
    check_request(build("OPTIONS", extra="Content-Type: application/unknownformat\r\n", body=b"x"))


def test_invite_with_accept_lacking_sdp_is_406():
    # RFC 4475 §3.3.15 sdp01.
    error = refused(
        build("INVITE", extra="Accept: text/nobodyKnowsThis\r\nContent-Type: application/sdp\r\n", body=b"v=0\r\n")
    )
    assert isinstance(error, NotAcceptable)
    assert error.status == 406


@pytest.mark.parametrize("accept", ["application/sdp", "text/plain, Application/SDP;level=1", "application/*", "*/*", "text/x,\r\n */*"])
def test_invite_accept_with_sdp_is_fine(accept):
    check_request(build("INVITE", extra=f"Accept: {accept}\r\n"))


def test_accept_only_matters_for_invite():
    check_request(build("OPTIONS", extra="Accept: text/nobodyKnowsThis\r\n"))


def test_the_order_of_the_checks():
    # Malformed (400) before method (501) before scheme (416) before extensions (420).
    assert refused(build("NEWMETHOD", uri="tel:+1", drop=("Call-ID",))).status == 400
    assert refused(build("NEWMETHOD", uri="tel:+1")).status == 501
    assert refused(build("OPTIONS", uri="tel:+1", extra="Require: foo\r\n")).status == 416
    assert refused(build("INVITE", extra="Require: foo\r\nContent-Type: text/x\r\n", body=b"x")).status == 420
    assert refused(build("INVITE", extra="Content-Type: text/x\r\nAccept: text/x\r\n", body=b"x")).status == 415


def test_valid_tag():
    assert valid_tag(None)
    assert valid_tag("1928301774")
    assert not valid_tag("")
    assert not valid_tag("a b")


# -- properties ----------------------------------------------------------------------

INTERESTING = [
    b"", b" ", b"\r\n", b"\r\n ", b";", b",", b":", b"=", b'"', b"<", b">", b"[", b"]", b"%", b"@", b"\x00",
    b"\xff", b"\xc2\xb2", b"\xef\xbc\x91", b"4294967296", b"z9hG4bK", b";tag=", b"tel:", b"*", b"INVITE",
    b"\r\nRequire: x\r\n", b"\r\nAccept: text/x\r\n", b"\r\nContent-Type: text/x\r\n", b"\r\nVia: ,\r\n",
    b"\r\nMax-Forwards: \xc2\xb2\r\n", b"\r\nContact: \r\n", b"\r\nTo: x\r\n",
]  # fmt: skip
CORPUS = [
    build("INVITE", extra="Contact: <sip:a@h>\r\nAccept: application/sdp\r\nContent-Type: application/sdp\r\n", body=b"v=0\r\n"),
    build("REGISTER", uri="sip:example.com", extra='Contact: "A, B" <sip:a@h>;expires=60, sip:b@h\r\nRequire: path\r\n'),
    build("ACK"),
    build("CANCEL"),
    build("BYE", extra="Via: SIP/2.0/UDP [2001:db8::1]:5061;branch=z9hG4bKz;rport\r\n"),
]


@given(st.sampled_from(CORPUS), st.data())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_check_request_raises_only_sip_errors_on_mutated_requests(base, data):
    raw = bytearray(base.to_bytes())
    for _ in range(data.draw(st.integers(1, 5))):
        where = data.draw(st.integers(0, len(raw)))
        if data.draw(st.booleans()):
            raw[where:where] = data.draw(st.sampled_from(INTERESTING))
        else:
            raw[where : where + data.draw(st.integers(1, 6))] = data.draw(st.sampled_from(INTERESTING))
    try:
        message = parse_datagram(bytes(raw))
    except SIPError:
        return
    if isinstance(message, Request):
        try:
            check_request(message)
        except SIPError:
            return
        # What passed is usable by the handlers without further checks.
        assert 0 <= max_forwards(message)
        assert message.vias and message.cseq.method == message.method
        message.from_()
        message.to()


@given(
    method=st.sampled_from(sorted(KNOWN_METHODS) + ["NEW", "x"]),
    uri=st.sampled_from(["sip:a@b", "tel:1", "sip:", "<sip:a>", "sip:a@[::1]:5060;lr"]),
    headers=st.lists(
        st.tuples(
            st.sampled_from(["Via", "To", "From", "Call-ID", "CSeq", "Max-Forwards", "Contact", "Require", "Accept", "Content-Type", "v", "m", "l"]),
            st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\r\n"), max_size=40),
        ),
        max_size=10,
    ),
    body=st.binary(max_size=20),
)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_check_request_raises_only_sip_errors_on_random_header_values(method, uri, headers, body):
    head = f"{method} {uri} SIP/2.0\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers)
    try:
        message = parse_datagram(head.encode("utf-8") + b"\r\n" + body)
    except SIPError:
        return
    try:
        check_request(message)
    except SIPError:
        pass


def test_torture_requests_only_raise_sip_errors():
    for path in sorted(TORTURE.glob("*.sip")):
        try:
            message = parse_datagram(path.read_bytes())
        except SIPError:
            continue
        if isinstance(message, Request):
            try:
                check_request(message)
            except SIPError:
                pass
