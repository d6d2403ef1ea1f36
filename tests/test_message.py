"""SIP messages on bytes: start lines, header fields, framing, serialization, responses."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pbx.sip.errors import ParseError, SIPError, VersionNotSupported
from pbx.sip.headers import NameAddr, Via, parse_name_addr, quote_string
from pbx.sip.message import (
    COMPACT,
    Headers,
    Request,
    Response,
    StreamFramer,
    header_key,
    make_response,
    parse_datagram,
    parse_head,
)
from pbx.sip.uri import SipURI
from pbx.sip.validate import KNOWN_METHODS, check_request

TORTURE = Path(__file__).parent / "conformance" / "rfc4475"
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

HEAD = (
    "Via: SIP/2.0/UDP pc33.example.com;branch=z9hG4bKnashds8\r\n"
    "Max-Forwards: 70\r\n"
    "To: Bob <sip:bob@example.com>\r\n"
    'From: "Alice" <sip:alice@example.com>;tag=1928301774\r\n'
    "Call-ID: a84b4c76e66710@pc33.example.com\r\n"
    "CSeq: 314159 {method}\r\n"
)


def req(method: str = "OPTIONS", *, uri: str = "sip:bob@example.com", extra: str = "", body: bytes = b"", length: str | None = "auto") -> bytes:
    text = f"{method} {uri} SIP/2.0\r\n" + HEAD.format(method=method) + extra
    if length == "auto":
        text += f"Content-Length: {len(body)}\r\n"
    elif length is not None:
        text += f"Content-Length: {length}\r\n"
    return (text + "\r\n").encode() + body


def resp(status_line: str = "SIP/2.0 200 OK", extra: str = "", body: bytes = b"") -> bytes:
    return (f"{status_line}\r\n" + HEAD.format(method="INVITE") + extra + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


# -- request lines -----------------------------------------------------------------


def test_request_line():
    message = parse_datagram(req("INVITE", uri="sip:bob@example.com;transport=udp"))
    assert isinstance(message, Request)
    assert (message.method, message.uri, message.version) == ("INVITE", "sip:bob@example.com;transport=udp", "SIP/2.0")
    assert message.start_line() == "INVITE sip:bob@example.com;transport=udp SIP/2.0"
    assert repr(message) == "<Request INVITE sip:bob@example.com;transport=udp>"


def test_request_line_unusual_token_method():
    # RFC 4475 intmeth: every token character is legal in a method.
    message = parse_head(b"!interesting-Method0123456789_*+`.%indeed'~ sip:a@b SIP/2.0")
    assert message.method == "!interesting-Method0123456789_*+`.%indeed'~"


def test_lowercase_version_is_accepted_and_normalised():
    assert parse_head(b"OPTIONS sip:a@b sip/2.0").version == "SIP/2.0"


@pytest.mark.parametrize(
    "line",
    [
        b"OPTIONS  sip:a@b SIP/2.0",  # RFC 4475 lwsstart: several SPs
        b"OPTIONS sip:a@b  SIP/2.0",
        b"OPTIONS sip:a@b SIP/2.0 ",  # RFC 4475 trws: trailing SP
        b" OPTIONS sip:a@b SIP/2.0",
        b"OPTIONS\tsip:a@b SIP/2.0",
        b"OPTIONS sip:a@b",
        b"OPTIONS",
        b"",
        b"OPTIONS sip:user@example.com; lr SIP/2.0",  # RFC 4475 lwsruri
        b"OPT;IONS sip:a@b SIP/2.0",
        b"OPTIONS sip:a@b HTTP/1.1",
        b"OPTIONS sip:a@b SIP/2",
        b"OPTIONS sip:a@b SIP/2.0.1",
        b"OPTIONS sip:a@b SIP/two.0",
        b"OPTIONS sip:a@b SIP/\xd9\xa2.\xd9\xa0",  # Arabic-Indic digits are not DIGIT
        b"OPTIONS sip:a@b\rSIP/2.0",  # a bare CR is no separator
    ],
)
def test_bad_request_lines(line):
    with pytest.raises(ParseError) as info:
        parse_head(line)
    assert info.value.status == 400


@pytest.mark.parametrize("version", [b"SIP/7.0", b"SIP/2.1", b"SIP/1.0", b"SIP/02.0", b"sip/3.0"])
def test_other_versions_are_505(version):
    # RFC 4475 §3.1.2.16 badvers.
    with pytest.raises(VersionNotSupported) as info:
        parse_datagram(b"OPTIONS sip:a@b " + version + b"\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n")
    assert info.value.status == 505
    assert isinstance(info.value, ParseError)


# -- status lines -------------------------------------------------------------------


def test_status_line():
    message = parse_datagram(resp("SIP/2.0 180 Ringing"))
    assert isinstance(message, Response)
    assert (message.status, message.reason, message.version) == (180, "Ringing", "SIP/2.0")
    assert repr(message) == "<Response 180 Ringing>"


def test_reason_phrase_with_spaces_and_utf8():
    # RFC 4475 unreason: a UTF-8 reason phrase.
    message = parse_datagram(resp("SIP/2.0 200 = 2**3 * 5**2 но сто девяносто девять - простое"))
    assert message.reason == "= 2**3 * 5**2 но сто девяносто девять - простое"
    assert message.start_line() == "SIP/2.0 200 = 2**3 * 5**2 но сто девяносто девять - простое"


def test_empty_reason_phrase():
    # RFC 4475 noreason: "SIP/2.0 100 " with nothing after the mandatory SP.
    message = parse_datagram(resp("SIP/2.0 100 "))
    assert (message.status, message.reason) == (100, "")


@pytest.mark.parametrize("code", [b"100", b"199", b"404", b"699"])
def test_status_code_range_accepted(code):
    assert parse_head(b"SIP/2.0 " + code + b" X").status == int(code)


@pytest.mark.parametrize(
    "line",
    [
        b"SIP/2.0 099 Too Low",
        b"SIP/2.0 700 Too High",
        b"SIP/2.0 4294967301 Big",  # RFC 4475 bigcode
        b"SIP/2.0 20 Short",
        b"SIP/2.0 2000 Long",
        b"SIP/2.0 20x Bad",
        b"SIP/2.0 +20 Bad",
        b"SIP/2.0 200",  # no SP after the code
        b"SIP/2.0  200 OK",
        b"SIP/2.0",
        b"SIP/2.0 1\xc2\xb23 Superscript",  # regression: "1²3".isdigit(), int() raised ValueError
        b"SIP/2.0 \xef\xbc\x92\xef\xbc\x90\xef\xbc\x90 Fullwidth",
        b"SIP/ 200 OK",
        b"SIP/2 200 OK",
        b"SIP/2.0/UDP 200 OK",
    ],
)
def test_bad_status_lines(line):
    with pytest.raises(ParseError):
        parse_head(line)


@pytest.mark.parametrize("version", [b"SIP/3.0", b"SIP/1.0", b"SIP/2.1"])
def test_responses_of_other_versions_are_refused(version):
    with pytest.raises(VersionNotSupported):
        parse_head(version + b" 200 OK")


# -- header fields ------------------------------------------------------------------


def test_header_values_are_trimmed_and_names_case_insensitive():
    message = parse_datagram(req(extra="X-Thing  :   some value\t \r\ncAlL-iD: dup-ignored-by-get\r\n"))
    assert message.headers.get("x-thing") == "some value"
    assert message.headers.get("X-THING") == "some value"
    assert "x-ThInG" in message.headers
    assert message.headers.values("call-id") == ["a84b4c76e66710@pc33.example.com", "dup-ignored-by-get"]
    assert message.call_id == "a84b4c76e66710@pc33.example.com"


def test_non_breaking_space_at_the_end_of_a_value_is_kept():
    # Regression: str.strip() also ate U+00A0, U+0085, \x0b, \x1c..\x1f at the
    # ends of values; only SP and HTAB are LWS.
    message = parse_datagram(req(extra="Subject: \xa0hi\x85\r\nX-A: \x1c\r\n"))
    assert message.headers.get("subject") == "\xa0hi\x85"
    assert message.headers.get("x-a") == "\x1c"


def test_folding_joins_continuation_lines_with_one_space():
    data = req(
        extra=(
            "NewFangledHeader:   newfangled value\r\n continued newfangled value\r\n"
            "Accept: application/sdp, application/pkcs7-mime,\r\n        multipart/mixed,\r\n\tmessage/sip\r\n"
        )
    )
    message = parse_datagram(data)
    assert message.headers.get("newfangledheader") == "newfangled value continued newfangled value"
    assert message.headers.get_list("accept") == ["application/sdp", "application/pkcs7-mime", "multipart/mixed", "message/sip"]


def test_folding_of_an_empty_first_line():
    # RFC 4475 wsinv: "TO :\r\n sip:..." -- no leading space in the joined value.
    message = parse_head(b"OPTIONS sip:a@b SIP/2.0\r\nTO :\r\n sip:vivekg@example.com ;   tag    = 1918181833n\r\nSubject:\r\n  \r\n")
    assert message.headers.get("to") == "sip:vivekg@example.com ;   tag    = 1918181833n"
    assert message.to().tag == "1918181833n"
    assert message.headers.get("subject") == ""


def test_folded_via_and_cseq_wsinv():
    message = parse_head(
        b"INVITE sip:a@b SIP/2.0\r\n"
        b"cseq: 0009\r\n  INVITE\r\n"
        b"Via  : SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw\r\n"
        b"v:  SIP  / 2.0  / TCP     spindle.example.com   ;\r\n  branch  =   z9hG4bK9ikj8  ,\r\n"
        b" SIP  /    2.0   / UDP  192.168.255.111   ; branch=\r\n z9hG4bK30239\r\n"
    )
    assert (message.cseq.number, message.cseq.method) == (9, "INVITE")
    assert [(v.transport, v.host, v.branch) for v in message.vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]


def test_continuation_before_any_header():
    with pytest.raises(ParseError):
        parse_head(b"OPTIONS sip:a@b SIP/2.0\r\n continued\r\nVia: x")


@pytest.mark.parametrize(
    "line",
    [b"NoColonHere", b": empty name", b"Bad Name: v", b"Bad;Name: v", b"\xc3\xa9t\xc3\xa9: v", b"Na\x00me: v"],
)
def test_bad_header_lines(line):
    with pytest.raises(ParseError):
        parse_head(b"OPTIONS sip:a@b SIP/2.0\r\n" + line)


@pytest.mark.parametrize(
    "head",
    [
        b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\nInjected: y\r\nTo: <sip:a@b>",
        b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\rInjected: y\r\nTo: <sip:a@b>",
        b"OPTIONS sip:a@b SIP/2.0\nVia: x\rInjected: y\nTo: <sip:a@b>",
        b"OPTIONS sip:a@b SIP/2.0\r\nSubject: a\r\r\nTo: <sip:a@b>",
    ],
)
def test_stray_cr_or_lf_inside_a_line_is_refused(head):
    # Regression: a bare LF in a CRLF message stayed inside the value, and
    # serializing the message again turned it into a separate header field.
    with pytest.raises(ParseError):
        parse_head(head)


def test_bare_lf_message_is_tolerated():
    message = parse_datagram(req().replace(b"\r\n", b"\n"))
    assert message.method == "OPTIONS"
    assert message.headers.get("call-id") == "a84b4c76e66710@pc33.example.com"


def test_crlf_head_ended_by_a_bare_lf_is_tolerated():
    data = req(body=b"").replace(b"\r\n\r\n", b"\r\n\n") + b"body"
    message = parse_datagram(data)
    assert message.headers.get("content-length") == "0"
    assert message.body == b""


@pytest.mark.parametrize("short,long", sorted(COMPACT.items()))
def test_compact_forms_expand(short, long):
    message = parse_head(f"OPTIONS sip:a@b SIP/2.0\r\n{short}: value-{short}\r\n".encode())
    assert message.headers.get(long) == f"value-{short}"
    assert message.headers.get(short.upper()) == f"value-{short}"
    assert header_key(short) == long
    [(name, value)] = list(message.headers.items())
    assert name.lower() == long  # serialized with the long name
    assert name[0].isupper()


def test_compact_and_long_forms_are_the_same_header():
    message = parse_head(
        b"OPTIONS sip:a@b SIP/2.0\r\nv: SIP/2.0/UDP a;branch=z9hG4bK1\r\nVia: SIP/2.0/TCP b;branch=z9hG4bK2\r\n"
        b"m: <sip:c1@h>\r\nContact: <sip:c2@h>\r\ni: cid\r\nl: 0\r\nf: <sip:f@h>;tag=1\r\nt: <sip:t@h>\r\n"
        b"c: application/sdp\r\ne: gzip\r\ns: hello\r\nk: path\r\n"
    )
    assert [v.host for v in message.vias] == ["a", "b"]
    assert message.headers.get_list("contact") == ["<sip:c1@h>", "<sip:c2@h>"]
    assert message.call_id == "cid"
    assert message.from_().tag == "1"
    assert str(message.to().uri) == "sip:t@h"
    assert message.headers.get("Content-Type") == "application/sdp"
    assert message.headers.get("Content-Encoding") == "gzip"
    assert message.headers.get("Subject") == "hello"
    assert message.headers.get("Supported") == "path"
    names = [name for name, _ in message.headers.items()]
    for expected in ("Via", "Contact", "Call-ID", "Content-Length", "From", "To", "Content-Type", "Subject"):
        assert expected in names


def test_repeated_and_comma_separated_list_headers():
    message = parse_head(
        b"INVITE sip:a@b SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP first;branch=z9hG4bK1, SIP/2.0/TCP second:5061;branch=z9hG4bK2\r\n"
        b"Route: <sip:p1@example.com;lr>, <sip:p2@example.com;lr>\r\n"
        b"Record-Route: <sip:rr1@example.com;lr>\r\n"
        b"Via: SIP/2.0/TLS third;branch=z9hG4bK3\r\n"
        b"Route: <sip:p3@example.com;lr>\r\n"
        b'Contact: "Doe, John" <sip:j@h>;q=0.5, <sip:k,l@h;x=a>, sip:l@h;expires=60\r\n'
        b"Record-Route: <sip:rr2@example.com;lr>,<sip:rr3@example.com;lr>\r\n"
        b'Contact: "Quote \\", here" <sip:m@h>\r\n'
    )
    h = message.headers
    assert h.get_list("via") == [
        "SIP/2.0/UDP first;branch=z9hG4bK1",
        "SIP/2.0/TCP second:5061;branch=z9hG4bK2",
        "SIP/2.0/TLS third;branch=z9hG4bK3",
    ]
    assert [v.host for v in message.vias] == ["first", "second", "third"]
    assert message.top_via.host == "first"
    assert h.get_list("route") == ["<sip:p1@example.com;lr>", "<sip:p2@example.com;lr>", "<sip:p3@example.com;lr>"]
    assert h.get_list("Record-Route") == ["<sip:rr1@example.com;lr>", "<sip:rr2@example.com;lr>", "<sip:rr3@example.com;lr>"]
    contacts = h.get_list("m")
    assert contacts == [
        '"Doe, John" <sip:j@h>;q=0.5',
        "<sip:k,l@h;x=a>",
        "sip:l@h;expires=60",
        '"Quote \\", here" <sip:m@h>',
    ]
    assert [parse_name_addr(c).display for c in contacts] == ["Doe, John", None, None, 'Quote ", here']
    assert parse_name_addr(contacts[2]).params == {"expires": "60"}
    assert h.values("via")[0].startswith("SIP/2.0/UDP first")
    assert len(h.values("via")) == 2
    assert h.get_list("absent") == []


def test_empty_via_element_is_refused():
    # Regression: "Via: a, , b" dropped the empty element, and an empty Via
    # value made check_request() fail with IndexError.
    for via in ("", ",", "SIP/2.0/UDP a;branch=z9hG4bK1, , SIP/2.0/UDP b", "SIP/2.0/UDP a;branch=z9hG4bK1,"):
        message = parse_datagram(req().replace(b"Via: SIP/2.0/UDP pc33.example.com;branch=z9hG4bKnashds8", b"Via: " + via.encode()))
        with pytest.raises(ParseError):
            message.vias
        with pytest.raises(ParseError):
            check_request(message)


def test_missing_structured_headers_raise_parse_error():
    message = parse_head(b"OPTIONS sip:a@b SIP/2.0\r\nX: y")
    with pytest.raises(ParseError):
        message.top_via
    with pytest.raises(ParseError):
        message.cseq
    with pytest.raises(ParseError):
        message.call_id
    with pytest.raises(ParseError):
        message.from_()
    with pytest.raises(ParseError):
        message.to()
    assert message.vias == []


def test_structured_views_are_cached_until_invalidated():
    message = parse_datagram(req())
    assert message.vias[0].host == "pc33.example.com"
    assert message.cseq.method == "OPTIONS"
    message.headers.set("Via", "SIP/2.0/TCP other;branch=z9hG4bK9")
    message.headers.set("CSeq", "1 BYE")
    assert message.cseq.method == "OPTIONS"
    message.invalidate()
    assert message.vias[0].host == "other"
    assert message.top_via.host == "other"
    assert message.cseq.method == "BYE"


# -- Headers -------------------------------------------------------------------------


def test_headers_multimap():
    h = Headers([("Route", "<sip:a>"), ("X-A", "1")])
    h.add("route", "<sip:b>")
    h.add("ROUTE", "<sip:first>", first=True)
    assert h.values("Route") == ["<sip:first>", "<sip:a>", "<sip:b>"]
    assert h.get("route") == "<sip:first>"
    assert h.get("missing") is None
    assert h.get("missing", "d") == "d"
    h.set("route", "<sip:only>")
    assert h.values("Route") == ["<sip:only>"]
    h.set("i", "cid")
    assert list(h) == [("Route", "<sip:only>"), ("X-A", "1"), ("Call-ID", "cid")]
    h.remove("X-a")
    h.remove("never-there")
    assert "x-a" not in h
    assert 5 not in h
    copy = h.copy()
    copy.add("Route", "<sip:more>")
    assert h.values("route") == ["<sip:only>"]
    assert "Headers([" in repr(h)


@pytest.mark.parametrize(
    "name,spelled",
    [("i", "Call-ID"), ("l", "Content-Length"), ("v", "Via"), ("k", "Supported"), ("y", "Identity"),
     ("x", "Session-Expires"), ("u", "Allow-Events")],
)  # fmt: skip
def test_compact_names_are_spelled_long(name, spelled):
    h = Headers([(name, "v")])
    assert [n for n, _ in h.items()] == [spelled]


def test_long_names_keep_their_spelling():
    h = Headers([("www-authenticate", "x"), ("X-CUSTOM", "y")])
    assert [n for n, _ in h.items()] == ["www-authenticate", "X-CUSTOM"]


# -- datagram framing ------------------------------------------------------------------


def test_body_framed_by_content_length():
    message = parse_datagram(req("INVITE", body=b"v=0\r\n\r\nx", extra="Content-Type: application/sdp\r\n"))
    assert message.body == b"v=0\r\n\r\nx"


def test_body_shorter_than_content_length_is_400():
    # RFC 4475 clerr.
    with pytest.raises(ParseError) as info:
        parse_datagram(req(body=b"abc", length="9999"))
    assert info.value.status == 400


def test_body_longer_than_content_length_is_truncated():
    # RFC 4475 dblreq: the rest of the datagram is ignored.
    message = parse_datagram(req(body=b"hello world", length="5"))
    assert message.body == b"hello"
    message = parse_datagram(req(length="0") + b"INVITE sip:x SIP/2.0\r\n\r\n")
    assert message.body == b""


def test_without_content_length_the_body_is_the_rest_of_the_datagram():
    # RFC 4475 inv2543.
    message = parse_datagram(req(body=b"v=0\r\no=x\r\n", length=None))
    assert message.body == b"v=0\r\no=x\r\n"
    assert "content-length" not in message.headers


def test_compact_content_length():
    data = req(body=b"abcdef", length=None).replace(b"\r\n\r\n", b"\r\nl: 3\r\n\r\n", 1)
    assert parse_datagram(data).body == b"abc"


@pytest.mark.parametrize(
    "length",
    ["-999", "-1", "", "abc", "5 5", "0x10", "+5", "5.0", "12345678901", "\u00b2", "\uff15", "\u0665"],
)
def test_bad_content_length_is_400(length):
    # RFC 4475 ncl; regression: "²".isdigit() passed and int() raised ValueError.
    with pytest.raises(ParseError) as info:
        parse_datagram(req(body=b"hello", length=length))
    assert info.value.status == 400


def test_duplicated_content_length_is_400():
    # RFC 4475 mcl01: two conflicting values (and two equal ones).
    for second in ("Content-Length: 5\r\n", "l: 13\r\n", "Content-Length: 5\r\n"):
        with pytest.raises(ParseError):
            parse_datagram(req(body=b"hello", extra=second))


def test_content_length_with_leading_zeros_and_lws():
    assert parse_datagram(req(body=b"abc", length="003 ")).body == b"abc"


def test_no_blank_line_is_400():
    with pytest.raises(ParseError):
        parse_datagram(req()[:-2])
    with pytest.raises(ParseError):
        parse_datagram(b"")


# -- stream framing ------------------------------------------------------------------


def two_messages() -> tuple[bytes, bytes]:
    return req("INVITE", body=b"v=0\r\n\r\nbody with blank line", extra="Content-Type: application/sdp\r\n"), resp(body=b"xyz")


def test_stream_two_messages_in_one_chunk():
    a, b = two_messages()
    messages = StreamFramer().feed(a + b)
    assert [type(m) for m in messages] == [Request, Response]
    assert messages[0].body == b"v=0\r\n\r\nbody with blank line"
    assert messages[1].body == b"xyz"


def test_stream_split_at_every_boundary():
    a, b = two_messages()
    data = a + b"\r\n\r\n" + b + b"\r\n"
    for cut in range(len(data) + 1):
        framer = StreamFramer()
        got = framer.feed(data[:cut]) + framer.feed(data[cut:])
        assert [m.start_line() for m in got] == ["INVITE sip:bob@example.com SIP/2.0", "SIP/2.0 200 OK"], cut
        assert [m.body for m in got] == [b"v=0\r\n\r\nbody with blank line", b"xyz"]


def test_stream_byte_by_byte():
    a, b = two_messages()
    framer = StreamFramer()
    got = []
    for i in range(len(a + b)):
        got += framer.feed((a + b)[i : i + 1])
    assert [m.body for m in got] == [b"v=0\r\n\r\nbody with blank line", b"xyz"]


def test_stream_keepalives_between_messages():
    a, b = two_messages()
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r\n") == []
    assert framer.feed(b"\r\n") == []
    got = framer.feed(a + b"\r\n\r\n\r\n" + b + b"\r\n\r\n")
    assert len(got) == 2
    assert framer.feed(b"\r\n") == []
    assert len(framer.feed(a)) == 1


def test_stream_incomplete_body_waits():
    a, _ = two_messages()
    framer = StreamFramer()
    assert framer.feed(a[:-3]) == []
    [message] = framer.feed(a[-3:])
    assert message.body.endswith(b"line")


def test_stream_requires_content_length():
    with pytest.raises(ParseError):
        StreamFramer().feed(req(length=None))


def test_stream_bad_content_length():
    with pytest.raises(ParseError):
        StreamFramer().feed(req(length="-999"))


def test_stream_size_limit_on_the_head():
    framer = StreamFramer(max_size=200)
    assert framer.feed(b"OPTIONS sip:a@b SIP/2.0\r\n") == []
    with pytest.raises(ParseError):
        framer.feed(b"X-Filler: " + b"a" * 300)


def test_stream_size_limit_on_the_body():
    framer = StreamFramer(max_size=400)
    with pytest.raises(ParseError):
        framer.feed(req(length="10000"))
    assert len(StreamFramer(max_size=400).feed(req(body=b"x" * 10))) == 1


def test_stream_bad_head_raises():
    with pytest.raises(ParseError):
        StreamFramer().feed(b"garbage\r\n\r\n")


# -- serialization ------------------------------------------------------------------


def test_to_bytes_recomputes_content_length():
    message = Request("MESSAGE", "sip:a@b", Headers([("Content-Length", "99"), ("l", "3"), ("Via", "x")]), b"hello")
    data = message.to_bytes()
    assert data.count(b"Content-Length") == 1
    assert b"Content-Length: 5\r\n\r\nhello" in data
    assert data.endswith(b"\r\n\r\nhello")
    assert parse_datagram(data).body == b"hello"


def test_to_bytes_layout():
    message = Response(200, "OK", Headers([("Via", "SIP/2.0/UDP h"), ("Call-ID", "c")]))
    assert message.to_bytes() == b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h\r\nCall-ID: c\r\nContent-Length: 0\r\n\r\n"


def test_to_bytes_keeps_raw_octets():
    data = req(extra="X-Raw: \xe9t\xe9\r\n").replace("\xe9".encode(), b"\xe9")  # Latin-1, not UTF-8
    message = parse_datagram(data)
    assert message.to_bytes() == data


def test_round_trip_of_a_torture_like_message():
    data = (
        b"INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0\r\n"
        b"TO :\r\n sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n\r\n"
        b'from   : "J Rosenberg \\\\\\""       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8\r\n'
        b"MaX-fOrWaRdS: 0068\r\nCall-ID: wsinv.ndaksdj@192.0.2.1\r\nContent-Length   : 4\r\n"
        b"cseq: 0009\r\n  INVITE\r\nVia  : SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw\r\n"
        b"s :\r\nm:\"Quoted string \\\"\\\"\" <sip:jdrosen@example.com> ; newparam =\r\n      newvalue ;\r\n"
        b"  secondparam ; q = 0.33\r\n\r\nv=0\r\n"
    )
    message = parse_datagram(data)
    again = parse_datagram(message.to_bytes())
    assert again.start_line() == message.start_line()
    assert by_key(again.headers) == by_key(message.headers)
    assert again.body == message.body == b"v=0\r"
    assert again.from_().display == 'J Rosenberg \\"'
    assert again.headers.get("subject") == ""


# -- make_response ---------------------------------------------------------------------


def invite(extra: str = "", to: str = "Bob <sip:bob@example.com>", via: str | None = None) -> Request:
    data = req("INVITE", extra=extra)
    data = data.replace(b"To: Bob <sip:bob@example.com>", b"To: " + to.encode())
    if via is not None:
        data = data.replace(b"Via: SIP/2.0/UDP pc33.example.com;branch=z9hG4bKnashds8", b"Via: " + via.encode())
    return parse_datagram(data)


def test_make_response_copies_the_dialog_headers():
    request = invite(
        extra="Via: SIP/2.0/UDP proxy2;branch=z9hG4bK3, SIP/2.0/UDP proxy3;branch=z9hG4bK4\r\nContact: <sip:a@h>\r\nRecord-Route: <sip:rr;lr>\r\n"
    )
    response = make_response(request, 180, "Ringing", to_tag="abc")
    h = response.headers
    assert (response.status, response.reason) == (180, "Ringing")
    assert h.values("via") == request.headers.values("via")
    assert h.get_list("via") == request.headers.get_list("via")
    assert len(h.get_list("via")) == 3
    assert h.get("from") == '"Alice" <sip:alice@example.com>;tag=1928301774'
    assert h.get("to") == "Bob <sip:bob@example.com>;tag=abc"
    assert h.get("call-id") == request.call_id
    assert h.get("cseq") == "314159 INVITE"
    assert "contact" not in h and "record-route" not in h and "max-forwards" not in h
    assert response.body == b""
    assert parse_datagram(response.to_bytes()).to().tag == "abc"


def test_make_response_100_trying_gets_no_tag():
    assert make_response(invite(), 100, "Trying", to_tag="abc").headers.get("to") == "Bob <sip:bob@example.com>"


def test_make_response_without_to_tag_argument():
    assert make_response(invite(), 486, "Busy Here").headers.get("to") == "Bob <sip:bob@example.com>"


@pytest.mark.parametrize(
    "to",
    [
        "<sip:bob@example.com>;tag=existing",
        "<sip:bob@example.com> ; tag = existing",
        "<sip:bob@example.com>;\ttag=existing",  # regression: only SP was ignored
        "<sip:bob@example.com>;TAG=existing",
        "sip:bob@example.com;tag=existing",
        "<sip:bob@example.com>;x=1;tag=existing;y",
    ],
)
def test_make_response_keeps_an_existing_tag(to):
    response = make_response(invite(to=to), 200, "OK", to_tag="new")
    assert response.headers.get("to") == to
    assert parse_name_addr(response.headers.get("to")).tag == "existing"


@pytest.mark.parametrize(
    "to",
    [
        '"Bob;tag=fake" <sip:bob@example.com>',  # regression: looked tagged
        "<sip:bob@example.com;tag=in-uri>",
        "<sip:tagger@example.com>;vtag=1",
    ],
)
def test_make_response_tags_a_to_whose_tag_lookalike_is_elsewhere(to):
    response = make_response(invite(to=to), 200, "OK", to_tag="new")
    assert response.headers.get("to") == to + ";tag=new"
    assert parse_name_addr(response.headers.get("to")).tag == "new"


def test_make_response_stamps_received_and_rport_on_the_top_via():
    request = invite(
        via="SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa;rport, SIP/2.0/UDP second;branch=z9hG4bKb",
        extra="Via: SIP/2.0/UDP third;branch=z9hG4bKc\r\n",
    )
    top = request.vias[0]
    top.params["received"] = "192.0.2.7"
    top.params["rport"] = "40001"
    response = make_response(request, 200, "OK", to_tag="t")
    vias = response.headers.get_list("via")
    assert vias[0] == "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa;rport=40001;received=192.0.2.7"
    assert vias[1:] == ["SIP/2.0/UDP second;branch=z9hG4bKb", "SIP/2.0/UDP third;branch=z9hG4bKc"]
    # The request itself keeps its bytes.
    assert request.headers.get_list("via")[0] == "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa;rport"
    assert parse_datagram(response.to_bytes()).vias[0].params["received"] == "192.0.2.7"


def test_make_response_received_only():
    request = invite(via="SIP/2.0/UDP host.invalid;branch=z9hG4bKa")
    request.vias[0].params["received"] = "[2001:db8::1]"
    response = make_response(request, 200, "OK")
    assert response.headers.get("via") == "SIP/2.0/UDP host.invalid;branch=z9hG4bKa;received=[2001:db8::1]"
    assert parse_datagram(response.to_bytes()).top_via.params["received"] == "[2001:db8::1]"


def test_make_response_unstamped_via_is_copied_verbatim():
    via = "SIP/2.0/UDP  pc33.example.com ; branch = z9hG4bKx ; rport"
    request = invite(via=via)
    request.vias  # parsed, but not stamped: rport has no value
    assert make_response(request, 200, "OK").headers.get("via") == via
    assert make_response(invite(via=via), 200, "OK").headers.get("via") == via


def test_make_response_to_a_headless_request():
    request = parse_head(b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1")
    response = make_response(request, 400, "Bad Request", to_tag="x")
    assert list(response.headers.items()) == [("Via", "SIP/2.0/UDP h;branch=z9hG4bK1")]


# -- properties: generated messages round-trip -----------------------------------------

ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
TOKEN_CHARS = ALNUM + "-.!%*_+`'~"
LOWER = "abcdefghijklmnopqrstuvwxyz0123456789"

tokens = st.text(TOKEN_CHARS, min_size=1, max_size=10)
hosts = st.one_of(
    st.lists(st.text(LOWER, min_size=1, max_size=6), min_size=1, max_size=3).map(".".join),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
)
ports = st.one_of(st.none(), st.integers(1, 65535))
uri_params = st.dictionaries(st.text(LOWER + "-", min_size=1, max_size=6), st.one_of(st.none(), st.text(ALNUM + "-.", min_size=1, max_size=6)), max_size=3)
sip_uris = st.builds(
    SipURI,
    scheme=st.sampled_from(["sip", "sips"]),
    user=st.one_of(st.none(), st.text(ALNUM + "-_.!~*'()&=+$,;?/%", min_size=1, max_size=10)),
    host=hosts,
    port=ports,
    params=uri_params,
)
# Any text but CR, LF and surrogates, without LWS at either end (parsing trims it).
safe_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\r\n"), max_size=30).map(lambda s: s.strip(" \t"))
display_names = st.one_of(st.none(), st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.sampled_from('",\\;<>é€'), max_size=15))
name_addrs = st.builds(
    NameAddr,
    uri=sip_uris,
    display=display_names,
    params=st.dictionaries(st.text(LOWER, min_size=1, max_size=5), st.one_of(st.none(), st.text(LOWER, min_size=1, max_size=8)), max_size=2),
)
vias = st.builds(
    Via,
    transport=st.sampled_from(["UDP", "TCP", "TLS", "SCTP", "WS"]),
    host=hosts,
    port=ports,
    params=st.fixed_dictionaries({"branch": st.text(LOWER, min_size=1, max_size=10).map(lambda b: "z9hG4bK" + b)}),
)
STRUCTURED = {"via", "to", "from", "call-id", "cseq", "max-forwards", "contact", "content-length", "content-type",
              "require", "accept", "content-encoding"}  # fmt: skip
extension_names = st.text(TOKEN_CHARS, min_size=1, max_size=12).filter(lambda n: header_key(n) not in STRUCTURED)


def grouped(values: list, sizes: list[int]) -> list[str]:
    """Spread values over header lines: some alone, some comma-joined."""
    lines, i = [], 0
    for size in sizes:
        if i >= len(values):
            break
        lines.append(", ".join(str(v) for v in values[i : i + size]))
        i += size
    if i < len(values):
        lines.append(", ".join(str(v) for v in values[i:]))
    return lines


@st.composite
def header_sets(draw, method: str) -> Headers:
    headers = Headers()
    via_list = draw(st.lists(vias, min_size=1, max_size=3))
    for line in grouped(via_list, draw(st.lists(st.integers(1, 3), max_size=4))):
        headers.add(draw(st.sampled_from(["Via", "v", "VIA"])), line)
    headers.add(draw(st.sampled_from(["To", "t"])), str(draw(name_addrs)))
    sender = draw(name_addrs)
    sender.params["tag"] = draw(st.text(LOWER, min_size=1, max_size=8))
    headers.add(draw(st.sampled_from(["From", "f"])), str(sender))
    headers.add(draw(st.sampled_from(["Call-ID", "i", "call-id"])), draw(st.text(TOKEN_CHARS + "@", min_size=1, max_size=20)))
    headers.add("CSeq", f"{draw(st.integers(0, 2**32 - 1))} {method}")
    headers.add("Max-Forwards", str(draw(st.integers(0, 255))))
    contacts = draw(st.lists(name_addrs, max_size=2))
    for line in grouped(contacts, draw(st.lists(st.integers(1, 3), max_size=3))):
        headers.add(draw(st.sampled_from(["Contact", "m"])), line)
    for name, value in draw(st.lists(st.tuples(extension_names, safe_text), max_size=4)):
        headers.add(name, value)
    return headers


@st.composite
def requests(draw, methods=tokens) -> Request:
    method = draw(methods)
    headers = draw(header_sets(method))
    body = draw(st.binary(max_size=200))
    if body:
        headers.add("Content-Type", "application/sdp")
    return Request(method, str(draw(sip_uris)), headers, body)


@st.composite
def responses(draw) -> Response:
    headers = draw(header_sets(draw(tokens)))
    reason = draw(st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\r\n"), max_size=30))
    return Response(draw(st.integers(100, 699)), reason, headers, draw(st.binary(max_size=200)))


messages = st.one_of(requests(), responses())


def by_key(headers: Headers) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in headers.items():
        out.setdefault(header_key(name), []).append(value)
    return out


def assert_same_message(got, expected) -> None:
    assert type(got) is type(expected)
    assert got.start_line() == expected.start_line()
    want = by_key(expected.headers)
    want.pop("content-length", None)
    have = by_key(got.headers)
    assert have.pop("content-length") == [str(len(expected.body))]
    assert have == want
    assert got.body == expected.body


@given(messages)
@FAST
def test_generated_messages_round_trip(message):
    parsed = parse_datagram(message.to_bytes())
    assert_same_message(parsed, message)
    assert parsed.to_bytes() == message.to_bytes()
    # The structured views see what was generated.
    assert [str(v) for v in parsed.vias] == message.headers.get_list("via")
    assert parsed.headers.get_list("contact") == message.headers.get_list("contact")
    for text in parsed.headers.get_list("contact"):
        parse_name_addr(text)
    assert parsed.to() == parse_name_addr(message.headers.get("to"))
    assert parsed.from_().tag == parse_name_addr(message.headers.get("from")).tag


@given(st.builds(NameAddr, uri=sip_uris, display=display_names))
@FAST
def test_quoted_display_names_survive_a_message(na):
    message = Request("OPTIONS", "sip:a@b", Headers([("To", str(na)), ("Contact", f"{na}, {na}")]))
    parsed = parse_datagram(message.to_bytes())
    assert parsed.to() == na
    assert [parse_name_addr(c) for c in parsed.headers.get_list("contact")] == [na, na]
    if na.display is not None:
        assert quote_string(na.display) in parsed.headers.get("to")


@given(requests(st.sampled_from(sorted(KNOWN_METHODS - {"INVITE"}))))
@FAST
def test_generated_requests_of_known_methods_pass_check_request(request):
    parsed = parse_datagram(request.to_bytes())
    check_request(parsed)


@given(st.lists(messages, min_size=1, max_size=3), st.data())
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_stream_framer_reassembles_any_split(batch, data):
    stream = b""
    for message in batch:
        stream += data.draw(st.sampled_from([b"", b"\r\n", b"\r\n\r\n"])) + message.to_bytes()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    framer = StreamFramer()
    got = []
    start = 0
    for cut in [*cuts, len(stream)]:
        got += framer.feed(stream[start:cut])
        start = cut
    assert len(got) == len(batch)
    for parsed, message in zip(got, batch):
        assert_same_message(parsed, message)


# -- properties: nothing but SIPError escapes --------------------------------------------

INTERESTING = [
    b"", b" ", b"  ", b"\t", b"\r", b"\n", b"\r\n", b"\r\n ", b"\r\n\r\n", b";", b";;", b",", b",,", b":", b"=",
    b'"', b"\\", b"<", b">", b"[", b"]", b"%", b"%00", b"%zz", b"@", b"/", b"?", b"-", b"0", b"9" * 12,
    b"\x00", b"\xff", b"\xc2\xa0", b"\xc2\xb2", b"\xef\xbc\x91", b"\xd9\xa5", b"\xe2\x80\xa8", b"SIP/", b"SIP/2.0",
    b"z9hG4bK", b";tag=", b";branch=", b";rport", b";received=", b"sip:", b"tel:", b"Via: ", b"\r\nVia: \r\n",
    b"\r\nl: -1", b"\r\nContent-Length: 99999\r\n", b"\r\nCSeq: 99999999999 INVITE\r\n", b"\r\nRequire: foo\r\n",
    b"\r\nMax-Forwards: \xc2\xb2\r\n", b"\r\nContact: *\r\n", b"\r\nContact: ,\r\n", b"\r\nAccept: text/x\r\n",
]  # fmt: skip


def exercise(message) -> None:
    """Every structured view and check a handler might touch; only SIPError may escape."""

    def attempt(view):
        try:
            view()
        except SIPError:
            pass

    attempt(lambda: message.vias)
    attempt(lambda: message.top_via)
    attempt(lambda: message.cseq)
    attempt(lambda: message.call_id)
    attempt(message.from_)
    attempt(message.to)
    for name in ("via", "contact", "route", "record-route", "require", "accept"):
        for item in message.headers.get_list(name):
            attempt(lambda item=item: parse_name_addr(item))
    if isinstance(message, Request):
        attempt(lambda: check_request(message))
        response = make_response(message, 400, "Bad Request", to_tag="t")
        attempt(lambda: parse_datagram(response.to_bytes()))
    # Whatever parsed serializes to something that parses the same way.
    assert_same_message(parse_datagram(message.to_bytes()), message)


def parse_anything(data: bytes) -> None:
    try:
        message = parse_datagram(data)
    except SIPError:
        pass
    else:
        exercise(message)
    framer = StreamFramer(max_size=2000)
    try:
        for message in framer.feed(data):
            exercise(message)
    except SIPError:
        pass


@given(st.binary(max_size=400))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_arbitrary_bytes_raise_only_sip_errors(data):
    parse_anything(data)


@given(st.binary(max_size=200))
@FAST
def test_arbitrary_bytes_after_a_start_line_raise_only_sip_errors(data):
    parse_anything(b"INVITE sip:a@b SIP/2.0\r\n" + data + b"\r\n\r\n")
    parse_anything(b"SIP/2.0 200 OK\r\nVia: " + data + b"\r\n\r\n")


def mutate(raw: bytearray, data) -> bytes:
    for _ in range(data.draw(st.integers(1, 6))):
        where = data.draw(st.integers(0, len(raw)))
        action = data.draw(st.sampled_from(["insert", "replace", "delete", "flip"]))
        if action == "insert":
            raw[where:where] = data.draw(st.sampled_from(INTERESTING))
        elif action == "replace":
            raw[where : where + data.draw(st.integers(1, 8))] = data.draw(st.sampled_from(INTERESTING))
        elif action == "delete":
            del raw[where : where + data.draw(st.integers(1, 8))]
        elif raw:
            raw[min(where, len(raw) - 1)] = data.draw(st.integers(0, 255))
    return bytes(raw)


# Valid messages to mutate: cheap to draw, unlike freshly generated ones.
CORPUS = [
    req(),
    req("INVITE", body=b"v=0\r\n", extra="Content-Type: application/sdp\r\nContact: <sip:a@192.0.2.1:5060;transport=udp>\r\n"),
    req("REGISTER", uri="sip:example.com", extra='Contact: "A, B" <sip:a@h>;expires=60, sip:b@h;q=0.5\r\nRequire: path\r\n'),
    req("BYE", extra="Via: SIP/2.0/TCP [2001:db8::1]:5061;branch=z9hG4bKz;received=2001:db8::2;rport\r\nRoute: <sip:p;lr>\r\n"),
    req("ACK", extra="Accept: application/sdp\r\nMax-Forwards: 0068\r\n"),
    resp("SIP/2.0 180 Ringing", extra="Record-Route: <sip:rr;lr>, <sip:rr2;lr>\r\n", body=b"xyz"),
    req().replace(b"\r\n", b"\n"),
    *(path.read_bytes() for path in sorted(TORTURE.glob("*.sip"))),
]


@given(st.sampled_from(CORPUS), st.data())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_messages_raise_only_sip_errors(message, data):
    parse_anything(mutate(bytearray(message), data))


@given(messages, st.data())
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_generated_messages_raise_only_sip_errors(message, data):
    parse_anything(mutate(bytearray(message.to_bytes()), data))


@given(st.lists(st.sampled_from(INTERESTING + [b"a", b"sip:a@b", b"SIP/2.0/UDP h", b"Via", b"To", b"CSeq", b"1 INVITE"]), max_size=40))
@FAST
def test_token_soup_raises_only_sip_errors(parts):
    body = b"".join(parts)
    parse_anything(b"OPTIONS sip:a@b SIP/2.0\r\n" + body + b"\r\n\r\n")
    parse_anything(body)
