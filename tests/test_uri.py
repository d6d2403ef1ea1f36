"""SIP/SIPS URIs (RFC 3261 §19.1): parse, refuse garbage, print back."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pbx.sip.errors import ParseError
from pbx.sip.uri import AbsoluteURI, SipURI, _parse_any_uri, parse_uri, unescape

FAST = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- well-formed SIP URIs ------------------------------------------------------


def test_plain_sip_uri():
    uri = parse_uri("sip:alice@example.com")
    assert uri == SipURI("sip", "alice", None, "example.com", None, {}, None)
    assert uri.host_port() == "example.com"


def test_sips_and_scheme_case_is_lowered():
    assert parse_uri("SIPS:bob@example.com").scheme == "sips"
    assert parse_uri("Sip:example.com").scheme == "sip"


def test_host_only_with_port():
    uri = parse_uri("sip:192.0.2.4:5070")
    assert uri.user is None
    assert (uri.host, uri.port) == ("192.0.2.4", 5070)
    assert uri.host_port() == "192.0.2.4:5070"


def test_password():
    uri = parse_uri("sip:alice:secret@example.com")
    assert (uri.user, uri.password, uri.host) == ("alice", "secret", "example.com")
    assert str(uri) == "sip:alice:secret@example.com"


def test_empty_password_is_kept():
    uri = parse_uri("sip:alice:@example.com")
    assert (uri.user, uri.password) == ("alice", "")
    assert str(uri) == "sip:alice:@example.com"


def test_user_with_escapes_is_kept_escaped_and_decoded_once():
    uri = parse_uri("sip:sips%3Auser%40example.com@example.net")
    assert uri.user == "sips%3Auser%40example.com"
    assert uri.user_unescaped == "sips:user@example.com"
    assert parse_uri("sip:value%2541@h").user_unescaped == "value%41"  # once, not twice


def test_escaped_nul_in_user():
    uri = parse_uri("sip:null-%00-null@example.com")
    assert uri.user_unescaped == "null-\x00-null"


def test_semiuri_user_holds_semicolon_params():
    # RFC 4475 §3.1.1.9: the user part is "user;par=u%40example.net".
    uri = parse_uri("sip:user;par=u%40example.net@example.com")
    assert uri.user == "user;par=u%40example.net"
    assert uri.user_unescaped == "user;par=u@example.net"
    assert uri.host == "example.com"
    assert uri.params == {}


def test_telephone_subscriber_user_with_params_and_uri_params():
    uri = parse_uri("sip:+1-212-555-1212;isub=1234@gateway.com;user=phone")
    assert uri.user == "+1-212-555-1212;isub=1234"
    assert uri.params == {"user": "phone"}


@pytest.mark.parametrize(
    "text,host,port",
    [
        ("sip:[2001:db8::10]", "[2001:db8::10]", None),
        ("sip:user@[2001:db8::10]:5070", "[2001:db8::10]", 5070),
        ("sip:[::ffff:192.0.2.1]:1", "[::ffff:192.0.2.1]", 1),
        ("sip:[::1];transport=tcp", "[::1]", None),
    ],
)
def test_ipv6_hosts(text, host, port):
    uri = parse_uri(text)
    assert (uri.host, uri.port) == (host, port)
    assert str(uri) == text


@pytest.mark.parametrize(
    "text",
    [
        "sip:[2001:db8::10",  # unterminated
        "sip:[]",
        "sip:[example.com]",
        "sip:[2001:db8::10]5060",  # no colon before the port
        "sip:[2001:db8::g]",
        "sip:2001:db8::10",  # IPv6 must be bracketed
    ],
)
def test_bad_ipv6_hosts(text):
    with pytest.raises(ParseError):
        parse_uri(text)


@pytest.mark.parametrize(
    "text",
    [
        "sip:host:",
        "sip:host:abc",
        "sip:host:65536",
        "sip:host:123456",
        "sip:host:-1",
        "sip:host:+5",
        "sip:host:5060:5060",
        "sip:host: 5060",
        "sip:[::1]:",
        "sip:[::1]:70000",
    ],
)
def test_bad_ports(text):
    with pytest.raises(ParseError):
        parse_uri(text)


@pytest.mark.parametrize("port", ["\u00b2", "1\u00b3", "\uff15\uff10\uff16\uff10", "\u0665\u0660"])
def test_non_ascii_digits_in_port_are_refused(port):
    # Regression: "²".isdigit() is true but int("²") raises ValueError, and
    # fullwidth digits parsed as a port that printed differently.
    with pytest.raises(ParseError):
        parse_uri(f"sip:host:{port}")
    with pytest.raises(ParseError):
        parse_uri(f"sip:[::1]:{port}")


def test_port_bounds():
    assert parse_uri("sip:h:65535").port == 65535
    assert parse_uri("sip:h:0").port == 0
    assert parse_uri("sip:h:05060").port == 5060


def test_params_names_lowered_values_kept():
    uri = parse_uri("sip:alice@example.com;Transport=TCP;LR;maddr=239.255.255.1;Unknown-Param=Value")
    assert uri.params == {"transport": "TCP", "lr": None, "maddr": "239.255.255.1", "unknown-param": "Value"}
    assert str(uri) == "sip:alice@example.com;transport=TCP;lr;maddr=239.255.255.1;unknown-param=Value"


def test_escaped_param_value():
    uri = parse_uri("sip:h;name=val%3Bue")
    assert uri.params == {"name": "val%3Bue"}


def test_headers_after_question_mark():
    uri = parse_uri("sip:alice@example.com;transport=tcp?subject=project%20x&priority=urgent")
    assert uri.params == {"transport": "tcp"}
    assert uri.headers == "subject=project%20x&priority=urgent"
    assert str(uri) == "sip:alice@example.com;transport=tcp?subject=project%20x&priority=urgent"


def test_escaped_route_header_in_uri():
    # RFC 4475 §3.3.14 regescrt.
    uri = parse_uri("sip:user@example.com?Route=%3Csip:sip.example.com%3E")
    assert uri.headers == "Route=%3Csip:sip.example.com%3E"
    assert uri.host == "example.com"


def test_empty_headers_part():
    uri = parse_uri("sip:h?")
    assert uri.headers == ""
    assert str(uri) == "sip:h?"


# -- other schemes ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text,scheme,opaque",
    [
        ("tel:+1-201-555-0123", "tel", "+1-201-555-0123"),
        ("soap.beep://192.0.2.103:3002", "soap.beep", "//192.0.2.103:3002"),
        ("isbn:2983792873", "isbn", "2983792873"),
        ("http://www.example.com/a?b=c", "http", "//www.example.com/a?b=c"),
        ("name:John_Smith", "name", "John_Smith"),
        ("urn:service:sos", "urn", "service:sos"),
    ],
)
def test_unknown_schemes_are_absolute_uris(text, scheme, opaque):
    uri = parse_uri(text)
    assert isinstance(uri, AbsoluteURI)
    assert (uri.scheme, uri.opaque) == (scheme, opaque)
    assert str(uri) == text


# -- garbage ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sip",
        "sip:",
        ":alice@example.com",
        "1sip:alice@example.com",
        "si p:alice@example.com",
        "sip:alice@example.com ",
        "sip:alice @example.com",
        "<sip:alice@example.com>",
        "sip:<alice@example.com>",
        'sip:"alice"@example.com',
        "sip:alice@",
        "sip:@example.com",
        "sip::secret@example.com",  # empty user with a password
        "sip:alice@exa mple.com",
        "sip:alice@-example.com",
        "sip:alice@exam_ple.com",
        "sip:alice@example.com;",
        "sip:alice@example.com;;lr",
        "sip:alice@example.com;=x",
        "sip:alice@example.com;a=",
        "sip:alice@example.com;a=b=c",
        "sip:alice@example.com;a=<b>",
        "sip:alice@example.com?a=b c",
        "sip:alice@example.com?a=<b>",
        "sip:ali\tce@example.com",
        "sip:alice\r\n@example.com",
        "sip:al#ice@example.com",
        "tel:",
    ],
)
def test_garbage_is_a_parse_error(text):
    with pytest.raises(ParseError) as info:
        parse_uri(text)
    assert info.value.status == 400


@pytest.mark.parametrize(
    "text",
    [
        "sip:alice@example.com",
        "sips:alice:pw@[2001:db8::1]:5061;transport=tls;lr?h=v",
        "sip:user;par=u%40example.net@example.com",
        "sip:%61lice@example.com;maddr=192.0.2.1;ttl=1",
        "sip:+1-212-555-1212:1234@gateway.com;user=phone",
        "sip:example.com:5060;x;y=z",
    ],
)
def test_str_round_trip(text):
    uri = parse_uri(text)
    assert str(uri) == text
    assert parse_uri(str(uri)) == uri


def test_unescape_leaves_bad_escapes_alone():
    assert unescape("%ZZ%41") == "%ZZA"
    assert unescape("plain") == "plain"
    assert unescape("%ff") == "\udcff"  # surrogateescape keeps the raw octet


# -- properties --------------------------------------------------------------------

ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
USER_CHARS = ALNUM + "-_.!~*'()&=+$,;?/"
PARAM_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-_.!~*'()"
PARAM_VALUE_CHARS = ALNUM + "-_.!~*'()[]/:&+$"
HEADER_CHARS = ALNUM + "-_.!~*'()[]/?:+$=&"

escaped = st.integers(0, 255).map(lambda b: f"%{b:02X}")
users = st.lists(st.one_of(st.sampled_from(USER_CHARS), escaped), min_size=1, max_size=12).map("".join)
labels = st.text(ALNUM, min_size=1, max_size=8)
hostnames = st.lists(labels, min_size=1, max_size=4).map(".".join)
ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
ipv6 = st.ip_addresses(v=6).map(lambda a: f"[{a}]")
hosts = st.one_of(hostnames, ipv4, ipv6)
params = st.dictionaries(
    st.text(PARAM_NAME_CHARS, min_size=1, max_size=8),
    st.one_of(st.none(), st.text(PARAM_VALUE_CHARS, min_size=1, max_size=10)),
    max_size=4,
)
sip_uris = st.builds(
    SipURI,
    scheme=st.sampled_from(["sip", "sips"]),
    user=st.one_of(st.none(), users),
    password=st.none(),
    host=hosts,
    port=st.one_of(st.none(), st.integers(0, 65535)),
    params=params,
    headers=st.one_of(st.none(), st.text(HEADER_CHARS, max_size=20)),
)


@given(sip_uris)
@FAST
def test_generated_uris_round_trip(uri):
    if uri.user is not None and ":" in uri.user:
        return  # a ":" in the user part starts the password
    parsed = parse_uri(str(uri))
    assert parsed == uri
    assert str(parsed) == str(uri)


@given(st.text(max_size=80))
@FAST
def test_parse_uri_on_any_text_raises_only_parse_error(text):
    try:
        uri = parse_uri(text)
    except ParseError:
        return
    assert parse_uri(str(uri)) == uri


@given(st.text("sip:@;=?&[]%0123456789abcdef.-+ \t<>\"", max_size=40))
@FAST
def test_parse_uri_on_uri_like_text_raises_only_parse_error(text):
    try:
        uri = parse_uri("sip:" + text)
    except ParseError:
        return
    assert parse_uri(str(uri)) == uri


def _general_parse(text):
    try:
        return _parse_any_uri(text)
    except ParseError:
        return "refused"


def _parse(text):
    try:
        return parse_uri(text)
    except ParseError:
        return "refused"


@given(
    st.text("sipSIP:", min_size=3, max_size=5),
    st.text("ab1-._!~*'()%&=+$,;?/:@[]9", max_size=12),
    st.text("ab1-._!~*'()%&=+$,;?/:@[]9", max_size=30),
)
@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_common_shape_shortcut_agrees_with_the_general_parser(scheme, user, rest):
    # parse_uri takes a shortcut for the usual sip:user@host:port;params shape;
    # it must accept, refuse and split exactly as the full grammar does.
    for text in (f"{scheme}{user}@{rest}", f"{scheme}{rest}", f"sip:{user}@{rest}", f"sip:{rest}"):
        assert _parse(text) == _general_parse(text), text


@pytest.mark.parametrize("text", [
    "sip:100001@127.0.0.1:46391",
    "sips:alice@example.com;transport=tcp;lr",
    "sip:127.0.0.1:5060",
    "sip:host:65536",
    "sip:a@b;",
    "sip:host;x=a@b",
    "sip:user:pw@host",
    "sip:[::1]:5060",
])
def test_common_shape_examples_agree_with_the_general_parser(text):
    assert _parse(text) == _general_parse(text)
