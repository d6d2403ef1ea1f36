"""Structured header values: Via, name-addr, CSeq, parameters and lists."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pbx.sip.errors import ParseError
from pbx.sip.headers import (
    MAX_CSEQ,
    CSeq,
    NameAddr,
    Via,
    format_params,
    is_token,
    parse_cseq,
    parse_name_addr,
    parse_params,
    parse_via,
    parse_via_list,
    quote_string,
    split_list,
    unquote_string,
)
from pbx.sip.uri import AbsoluteURI, SipURI, parse_uri

FAST = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- Via -------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["UDP", "TCP", "TLS", "SCTP", "WS", "WSS", "TLS-SCTP", "NEWTRANS"])
def test_via_transports(transport):
    via = parse_via(f"SIP/2.0/{transport} host.example.com;branch=z9hG4bK1")
    assert via.transport == transport
    assert via.protocol == "SIP/2.0"
    assert via.host == "host.example.com"
    assert via.port is None
    assert via.branch == "z9hG4bK1"


def test_via_transport_and_protocol_are_uppercased():
    via = parse_via("sip/2.0/udp 192.0.2.1:5060")
    assert (via.protocol, via.transport, via.host, via.port) == ("SIP/2.0", "UDP", "192.0.2.1", 5060)
    assert via.params == {}
    assert via.branch is None


def test_via_ipv6_sent_by_with_port_and_params():
    via = parse_via("SIP/2.0/UDP [2001:db8::9:1]:5070;branch=z9hG4bKas3-111;received=2001:db8::9:255;rport")
    assert via.host == "[2001:db8::9:1]"
    assert via.port == 5070
    assert via.sent_by() == "[2001:db8::9:1]:5070"
    assert via.params == {"branch": "z9hG4bKas3-111", "received": "2001:db8::9:255", "rport": None}


def test_via_received_bracketed_ipv6():
    via = parse_via("SIP/2.0/UDP [2001:db8::1];received=[2001:db8::9:255];branch=z9hG4bKx")
    assert via.params["received"] == "[2001:db8::9:255]"
    assert via.port is None


def test_via_rport_with_value_and_ttl_maddr():
    via = parse_via("SIP/2.0/UDP h:1;rport=5061;ttl=16;maddr=224.2.0.1;branch=z9hG4bKa")
    assert via.params == {"rport": "5061", "ttl": "16", "maddr": "224.2.0.1", "branch": "z9hG4bKa"}


def test_via_param_names_lowered_values_kept():
    via = parse_via("SIP/2.0/UDP h;BRANCH=z9hG4bKAbC;Received=192.0.2.1")
    assert via.params == {"branch": "z9hG4bKAbC", "received": "192.0.2.1"}


def test_via_quoted_param_value():
    via = parse_via('SIP/2.0/UDP h;branch=z9hG4bK1;x="a, b; c"')
    assert via.params["x"] == '"a, b; c"'


def test_via_lws_everywhere_wsinv():
    # RFC 4475 §3.1.1.1 (already unfolded): LWS around "/", ":" and ";" and "=".
    via = parse_via("SIP  /   2.0 /UDP     192.0.2.2;branch=390skdjuw")
    assert (via.protocol, via.transport, via.host, via.branch) == ("SIP/2.0", "UDP", "192.0.2.2", "390skdjuw")
    via = parse_via("SIP  / 2.0  / TCP     spindle.example.com   ; branch  =   z9hG4bK9ikj8  ")
    assert (via.transport, via.host, via.branch) == ("TCP", "spindle.example.com", "z9hG4bK9ikj8")
    via = parse_via("SIP/2.0/UDP host : 5060 ; rport ; branch= z9hG4bK30239")
    assert (via.port, via.params) == (5060, {"rport": None, "branch": "z9hG4bK30239"})


def test_via_list_from_folded_wsinv_value():
    vias = parse_via_list(
        ["SIP  / 2.0  / TCP     spindle.example.com   ; branch  =   z9hG4bK9ikj8  , "
         "SIP  /    2.0   / UDP  192.168.255.111   ; branch= z9hG4bK30239"]
    )  # fmt: skip
    assert [(v.transport, v.host, v.branch) for v in vias] == [
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "SIP/2.0/UDP",
        "SIP/2.0/UDP ",
        "SIP/2.0 host",
        "SIP/2.0/UDPhost",
        "SIP/2.0/UDP host;",
        "SIP/2.0/UDP host;;branch=z9hG4bK1",
        "SIP/2.0/UDP 192.0.2.15;;,;,,",  # RFC 4475 badinv01, one element of it
        "SIP/2.0/UDP host;branch",
        "SIP/2.0/UDP host;branch=",
        "SIP/2.0/UDP host;received",
        "SIP/2.0/UDP host;maddr",
        "SIP/2.0/UDP host;ttl",
        "SIP/2.0/UDP host;=x",
        "SIP/2.0/UDP host:",
        "SIP/2.0/UDP host:65536",
        "SIP/2.0/UDP host:123456",
        "SIP/2.0/UDP host:port",
        "SIP/2.0/UDP host junk",
        "SIP/2.0/UDP host;branch=a b",
        'SIP/2.0/UDP host;branch="unterminated',
        "SIP/2.0/UDP [2001:db8::1",
        "SIP/2.0/UDP ho_st",
        "SIP/2.0/UDP host, SIP/2.0/UDP other",  # a list, not one value
    ],
)
def test_bad_via_values(value):
    with pytest.raises(ParseError):
        parse_via(value)


def test_via_str_round_trip():
    text = "SIP/2.0/TLS [2001:db8::1]:5061;branch=z9hG4bK776;received=192.0.2.1;rport=5062;x"
    via = parse_via(text)
    assert str(via) == text
    assert parse_via(str(via)) == via


def test_via_str_after_stamping():
    via = parse_via("SIP/2.0/UDP 10.0.0.1:5060;rport;branch=z9hG4bKq")
    via.params["received"] = "192.0.2.9"
    via.params["rport"] = "40000"
    assert str(via) == "SIP/2.0/UDP 10.0.0.1:5060;rport=40000;branch=z9hG4bKq;received=192.0.2.9"


# -- lists -------------------------------------------------------------------------


def test_split_list_plain():
    assert split_list("a") == ["a"]
    assert split_list("  a  ") == ["a"]
    assert split_list("a, b ,c") == ["a", "b", "c"]
    assert split_list("a,,b") == ["a", "", "b"]


def test_split_list_respects_quotes_brackets_and_escapes():
    value = '"Doe, John" <sip:j@h;x=a,b>;p="1,2", "Quote \\" , here" <sip:k@h>, sip:l@h'
    assert split_list(value) == [
        '"Doe, John" <sip:j@h;x=a,b>;p="1,2"',
        '"Quote \\" , here" <sip:k@h>',
        "sip:l@h",
    ]


def test_split_list_unterminated_quote_keeps_rest_together():
    assert split_list('"a, b') == ['"a, b']


# -- parameters ----------------------------------------------------------------------


def test_parse_params():
    assert parse_params("", "x") == {}
    assert parse_params(" ; Tag = abc ;LR; q=0.5 ", "x") == {"tag": "abc", "lr": None, "q": "0.5"}
    assert parse_params(';x="quoted ; value"', "x") == {"x": '"quoted ; value"'}


@pytest.mark.parametrize("text", [";", ";;", "; ;a", ";a=", ";a==b", "a=b", ";a b", ';a="x', ";a=<b>"])
def test_bad_params(text):
    with pytest.raises(ParseError):
        parse_params(text, "x")


def test_format_params():
    assert format_params({"a": None, "b": "c"}) == ";a;b=c"
    assert format_params({}) == ""


def test_quote_and_unquote():
    assert quote_string('a "b" \\c') == '"a \\"b\\" \\\\c"'
    assert unquote_string(quote_string('a "b" \\c, d')) == 'a "b" \\c, d'
    assert unquote_string('"\\x\\y"') == "xy"
    assert unquote_string('""') == ""


def test_is_token():
    assert is_token("abc-123.!%*_+`'~")
    assert not is_token("")
    assert not is_token("a b")
    assert not is_token("a;b")


# -- name-addr / addr-spec ---------------------------------------------------------


def test_name_addr_with_quoted_display_and_tag():
    na = parse_name_addr('"Alice Smith" <sip:alice@example.com>;tag=1928301774')
    assert na.display == "Alice Smith"
    assert na.uri == parse_uri("sip:alice@example.com")
    assert na.params == {"tag": "1928301774"}
    assert na.tag == "1928301774"


def test_quoted_display_with_escapes_and_commas():
    na = parse_name_addr(r'"J Rosenberg \\\"" <sip:jdrosen@example.com>;tag=98asjd8')
    assert na.display == 'J Rosenberg \\"'
    na = parse_name_addr('"Doe, John \\"JD\\"" <sip:jd@example.com>')
    assert na.display == 'Doe, John "JD"'


def test_quoted_display_with_control_characters():
    # RFC 4475 intmeth: quoted BEL/NUL/DEL are legal (escaped or not).
    na = parse_name_addr('"\\\x01\\\x02\x7f" <sip:a@b>')
    assert na.display == "\x01\x02\x7f"


def test_empty_quoted_display():
    na = parse_name_addr('"" <sip:a@b>')
    assert na.display == ""
    assert str(na) == '"" <sip:a@b>'


def test_token_display_name():
    na = parse_name_addr("Bob   Smith <sip:bob@example.com>")
    assert na.display == "Bob Smith"


def test_display_token_without_lws_before_angle_bracket():
    # RFC 4475 §3.1.1.6 lwsdisp.
    na = parse_name_addr("caller<sip:caller@example.com>;tag=323")
    assert na.display == "caller"
    assert na.tag == "323"


def test_quoted_display_without_lws_before_angle_bracket():
    na = parse_name_addr('"Quoted string \\"\\""<sip:jdrosen@example.com>')
    assert na.display == 'Quoted string ""'


def test_name_addr_without_display():
    na = parse_name_addr("<sip:a@b;lr>")
    assert na.display is None
    assert na.uri.params == {"lr": None}
    assert na.params == {}


def test_addr_spec_params_belong_to_the_header_cparam01():
    # RFC 4475 §3.3.12: without <>, ";unknownparam" is a contact parameter.
    na = parse_name_addr("sip:+19725552222@gw1.example.net;unknownparam")
    assert na.uri.params == {}
    assert na.params == {"unknownparam": None}
    assert na.uri.user == "+19725552222"


def test_name_addr_params_belong_to_the_uri_cparam02():
    # RFC 4475 §3.3.13: inside <>, ";unknownparam" is a URI parameter.
    na = parse_name_addr("<sip:+19725552222@gw1.example.net;unknownparam>")
    assert na.uri.params == {"unknownparam": None}
    assert na.params == {}


def test_addr_spec_with_tag_and_lws():
    na = parse_name_addr("sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n")
    assert na.uri.host == "chair-dnrc.example.com"
    assert na.tag == "1918181833n"


def test_contact_params_with_lws_and_q():
    na = parse_name_addr('"Quoted string \\"\\"" <sip:jdrosen@example.com> ; newparam = newvalue ; secondparam ; q = 0.33')
    assert na.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}


def test_name_addr_with_uri_headers():
    na = parse_name_addr("<sip:user@example.com?Route=%3Csip:sip.example.com%3E>")
    assert na.uri.headers == "Route=%3Csip:sip.example.com%3E"


def test_name_addr_with_other_scheme():
    na = parse_name_addr("<tel:+1-201-555-0123>;tag=a")
    assert isinstance(na.uri, AbsoluteURI)
    assert na.tag == "a"
    assert isinstance(parse_name_addr("isbn:2983792873").uri, AbsoluteURI)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        '"J User <sip:j.user@example.com>',  # RFC 4475 quotbal: unterminated quote
        '"Alice" sip:alice@example.com',  # quoted display without <>
        '"Alice" Bob <sip:alice@example.com>',
        "<sip:alice@example.com",  # no >
        "<sip:user@example.com >",  # RFC 4475 badaspec: space inside <>
        "< sip:user@example.com>",
        "<sip:a@b>;",
        "<sip:a@b>;;tag=1",
        "<sip:a@b>;tag=",
        "<sip:a@b> junk",
        "J. User, Esq. <sip:j@h>",  # RFC 4475 baddn: unquoted comma
        "Al@ice <sip:a@b>",
        "sip:user@example.com?Route=%3Csip:sip.example.com%3E",  # RFC 4475 regbadct
        "sip:a@b,sip:c@d",
        "alice",
        "<alice>",
        "<>",
    ],
)
def test_bad_name_addr(value):
    with pytest.raises(ParseError):
        parse_name_addr(value)


def test_display_name_tokens_do_not_backtrack_exponentially():
    # Regression: "(?:TOKEN\s*)+\Z" took seconds on ~25 token characters
    # followed by a non-token character (a 3,000 requests/s DoS in From/To).
    for words in ("a" * 5000 + '"', "a " * 3000 + "@", "ab" * 2000 + "\x00 "):
        start = time.perf_counter()
        with pytest.raises(ParseError):
            parse_name_addr(words + "<sip:a@b>")
        assert time.perf_counter() - start < 0.5


def test_name_addr_str_round_trip():
    for text in (
        '"A \\"B\\", C" <sip:a@b;lr>;tag=x;q=0.5',
        "<sip:a@b>",
        "<tel:+1234>;expires=60",
    ):
        na = parse_name_addr(text)
        assert str(na) == text
        assert parse_name_addr(str(na)) == na


def test_name_addr_str_quotes_token_display():
    assert str(parse_name_addr("Bob <sip:b@h>")) == '"Bob" <sip:b@h>'
    assert str(NameAddr(SipURI(host="h"))) == "<sip:h>"


# -- CSeq ------------------------------------------------------------------------


def test_cseq():
    assert parse_cseq("314159 INVITE") == CSeq(314159, "INVITE")
    assert parse_cseq("  0009\t INVITE  ") == CSeq(9, "INVITE")
    assert parse_cseq(f"{MAX_CSEQ} BYE").number == 2**32 - 1
    assert str(CSeq(1, "ACK")) == "1 ACK"


@pytest.mark.parametrize(
    "value",
    ["", "1", "INVITE", "1INVITE", "-1 INVITE", "1 INVITE x", "x INVITE", "4294967296 INVITE",
     "36893488147419103232 INVITE", "1.5 INVITE", "\u00b2 INVITE", "1 INV;ITE"],
)  # fmt: skip
def test_bad_cseq(value):
    with pytest.raises(ParseError):
        parse_cseq(value)


# -- properties ----------------------------------------------------------------------

DISPLAY_CHARS = st.characters(min_codepoint=0x20, max_codepoint=0x7E)


@given(
    display=st.one_of(st.none(), st.text(DISPLAY_CHARS, max_size=20)),
    user=st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=10),
    tag=st.one_of(st.none(), st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=10)),
)
@FAST
def test_generated_name_addr_round_trip(display, user, tag):
    na = NameAddr(SipURI(user=user, host="example.com"), display, {} if tag is None else {"tag": tag})
    parsed = parse_name_addr(str(na))
    assert parsed == na
    # As one element of a comma-separated list, next to another.
    items = split_list(f"{na}, <sip:other@example.com>")
    assert len(items) == 2
    assert parse_name_addr(items[0]) == na


@given(
    transport=st.sampled_from(["UDP", "TCP", "TLS", "SCTP", "WS"]),
    host=st.one_of(
        st.ip_addresses(v=4).map(str),
        st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
        st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,10}[a-z0-9])?", fullmatch=True),
    ),
    port=st.one_of(st.none(), st.integers(0, 65535)),
    branch=st.text("abcdefghijklmnopqrstuvwxyz0123456789-.", min_size=1, max_size=12),
    rport=st.booleans(),
)
@FAST
def test_generated_via_round_trip(transport, host, port, branch, rport):
    params = {"branch": "z9hG4bK" + branch}
    if rport:
        params["rport"] = None
    via = Via(transport, host, port, params)
    assert parse_via(str(via)) == via


@given(st.text(max_size=60))
@FAST
def test_structured_parsers_raise_only_parse_error(text):
    for parse in (parse_via, parse_name_addr, parse_cseq):
        try:
            parse(text)
        except ParseError:
            pass
    try:
        parse_params(text, "x")
    except ParseError:
        pass
    assert isinstance(split_list(text), list)


@given(st.text('"<>,;=\\ abc:@', max_size=40))
@FAST
def test_name_addr_on_punctuation_raises_only_parse_error(text):
    try:
        na = parse_name_addr(text)
    except ParseError:
        return
    assert isinstance(na.params, dict)
