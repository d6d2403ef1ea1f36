"""SDP parsing and the relay rewrites, on descriptions shaped like real phones' offers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pbx.sip.sdp import (
    Attribute,
    Connection,
    Origin,
    SDPError,
    SessionDescription,
    codecs,
    connection_address,
    direction,
    is_hold,
    rewrite_for_relay,
    set_direction,
)


def sdp(text: str) -> bytes:
    return text.strip("\n").replace("\n", "\r\n").encode() + b"\r\n"


BARESIP = sdp("""
v=0
o=- 2005859418 2286154436 IN IP4 192.168.0.10
s=-
c=IN IP4 192.168.0.10
t=0 0
a=tool:baresip 3.10.1
m=audio 10776 RTP/AVP 9 0 8 101
b=AS:64
a=rtpmap:9 G722/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=ptime:20
a=sendrecv
a=label:1
a=rtcp-rsize
a=ssrc:1848292117 cname:7a1b3c4d-5e6f
""")

SIPP = sdp("""
v=0
o=user1 53655765 2353687637 IN IP4 10.1.2.3
s=-
c=IN IP4 10.1.2.3
t=0 0
m=audio 6000 RTP/AVP 0 8 18 101 96
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-11,16
a=rtcp:6001 IN IP4 10.1.2.3
""")

HOLD_SENDONLY = sdp("""
v=0
o=- 2005859418 2286154437 IN IP4 192.168.0.10
s=-
c=IN IP4 192.168.0.10
t=0 0
m=audio 10776 RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=sendonly
""")

HOLD_RFC2543 = sdp("""
v=0
o=Cisco-SIPUA 5922 1 IN IP4 192.168.0.20
s=SIP Call
c=IN IP4 0.0.0.0
t=0 0
m=audio 28342 RTP/AVP 0 8 101
a=rtpmap:101 telephone-event/8000
""")

ICE = sdp("""
v=0
o=linphone 1234 5678 IN IP4 10.0.0.5
s=Talk
c=IN IP4 203.0.113.7
t=0 0
a=ice-ufrag:a1b2c3d4
a=ice-pwd:0123456789abcdef01234567
a=ice-options:trickle
m=audio 7078 RTP/AVP 96 0 8 101
a=rtpmap:96 opus/48000/2
a=fmtp:96 useinbandfec=1
a=rtpmap:101 telephone-event/48000
a=rtcp:7079
a=candidate:1 1 UDP 2130706431 10.0.0.5 7078 typ host
a=candidate:1 2 UDP 2130706430 10.0.0.5 7079 typ host
a=candidate:2 1 UDP 1694498815 203.0.113.7 7078 typ srflx raddr 10.0.0.5 rport 7078
a=remote-candidates:1 203.0.113.9 9000
a=end-of-candidates
""")

MULTI_STREAM = sdp("""
v=0
o=jdoe 2890844526 2890842807 IN IP4 198.51.100.5
s=Call with video
t=0 0
m=audio 49170 RTP/AVP 0 8
c=IN IP4 198.51.100.5
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
m=video 0 RTP/AVP 96
c=IN IP4 198.51.100.5
a=rtpmap:96 H264/90000
""")

SESSION_C_ONLY = sdp("""
v=0
o=alice 1 1 IN IP4 198.51.100.1
s=-
c=IN IP4 198.51.100.1/127
t=0 0
a=recvonly
m=audio 5004 RTP/AVP 0
""")


# -- parsing -------------------------------------------------------------------


def test_parse_baresip_offer():
    d = SessionDescription.parse(BARESIP)
    assert d.origin.address == "192.168.0.10"
    assert d.origin.version == "2286154436"
    assert d.connection == Connection("IN", "IP4", "192.168.0.10")
    assert Attribute("tool", "baresip 3.10.1") in d.attributes
    [audio] = d.media
    assert (audio.media, audio.port, audio.proto, audio.formats) == ("audio", 10776, "RTP/AVP", ["9", "0", "8", "101"])
    assert audio.connection is None
    assert [a.name for a in audio.attributes] == [
        "rtpmap", "rtpmap", "rtpmap", "rtpmap", "fmtp", "ptime", "sendrecv", "label", "rtcp-rsize", "ssrc",
    ]  # fmt: skip
    assert audio.fmtp == {"101": "0-15"}
    assert audio.ptime == 20
    assert audio.direction == "sendrecv"
    assert codecs(audio) == [(9, "G722", 8000), (0, "PCMU", 8000), (8, "PCMA", 8000), (101, "telephone-event", 8000)]
    assert d.to_bytes() == BARESIP


def test_parse_sipp_offer_static_defaults_and_rtcp():
    d = SessionDescription.parse(SIPP)
    [audio] = d.media
    # 18 has no rtpmap: RFC 3551 default; 96 has none either and cannot be known.
    assert codecs(audio) == [(0, "PCMU", 8000), (8, "PCMA", 8000), (18, "G729", 8000), (101, "telephone-event", 8000)]
    assert audio.rtcp == (6001, Connection("IN", "IP4", "10.1.2.3"))
    assert d.to_bytes() == SIPP


def test_parse_accepts_bare_lf_and_writes_crlf():
    d = SessionDescription.parse(BARESIP.replace(b"\r\n", b"\n"))
    assert d.to_bytes() == BARESIP


def test_unknown_lines_survive():
    body = sdp("""
v=0
o=- 1 1 IN IP4 192.0.2.1
s=-
i=some info
u=http://example.com/
e=ops@example.com
c=IN IP4 192.0.2.1
b=CT:128
t=0 0
r=7d 1h 0 25h
z=2882844526 -1h
k=prompt
a=x-private:whatever
m=audio 4000/2 RTP/SAVP 0
i=audio
b=TIAS:64000
k=prompt
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR
a=x-other
""")
    d = SessionDescription.parse(body)
    assert d.media[0].port_count == 2
    assert d.media[0].attribute("x-other") == ""
    assert d.to_bytes() == body


def test_non_utf8_bytes_round_trip():
    body = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=Caf\xe9\r\nt=0 0\r\n"
    assert SessionDescription.parse(body).to_bytes() == body


def test_connection_address_media_level_else_session_level():
    multi = SessionDescription.parse(MULTI_STREAM)
    assert multi.connection is None
    assert connection_address(multi, multi.media[0]) == "198.51.100.5"
    only = SessionDescription.parse(SESSION_C_ONLY)
    assert connection_address(only, only.media[0]) == "198.51.100.1"  # TTL stripped
    assert connection_address(only) == "198.51.100.1"
    bare = SessionDescription.parse(b"v=0\r\ns=-\r\nm=audio 1 RTP/AVP 0\r\n")
    assert connection_address(bare, bare.media[0]) is None


def test_direction_media_then_session_then_default():
    only = SessionDescription.parse(SESSION_C_ONLY)
    assert direction(only, only.media[0]) == "recvonly"  # session level
    hold = SessionDescription.parse(HOLD_SENDONLY)
    assert direction(hold, hold.media[0]) == "sendonly"
    sipp = SessionDescription.parse(SIPP)
    assert direction(sipp, sipp.media[0]) == "sendrecv"
    overridden = set_direction(only, 0, "inactive")
    assert direction(overridden, overridden.media[0]) == "inactive"


GARBAGE = [
    b"",
    b"\r\n\r\n",
    b"hello world",
    b"INVITE sip:1001@pbx SIP/2.0\r\n",
    b"v=1\r\no=- 1 1 IN IP4 1.2.3.4\r\n",
    b"o=- 1 1 IN IP4 1.2.3.4\r\nv=0\r\n",
    b"v=0\r\no=- 1 IN IP4 1.2.3.4\r\n",
    b"v=0\r\nc=IN 1.2.3.4\r\n",
    b"v=0\r\nm=audio\r\n",
    b"v=0\r\nm=audio x RTP/AVP 0\r\n",
    b"v=0\r\nm=audio 70000 RTP/AVP 0\r\n",
    b"v=0\r\nm=audio +5 RTP/AVP 0\r\n",
    b"v=0\r\nm=audio \xd9\xa3 RTP/AVP 0\r\n",  # an Arabic-Indic digit is not a port
    b"v=0\r\nm=audio 4000/0 RTP/AVP 0\r\n",
    b"v=0\r\nm=audio 4000 RTP/AVP 0\r\nc=IN IP4\r\n",
    b"v=0\r\nthis is not sdp\r\n",
    b"v=0\r\na=x\rb\r\n",
    b"v=0\r\na=x\r\r\n",  # a stray CR before the line end
    b"v=0\r\na=x\x00\r\n",
    b"\x00\x01\x02\xff\xfe",
]


def test_garbage_is_sdp_error():
    # one test, not one per body: the autouse gc fixture makes each test item cost ~50 ms
    accepted = []
    for body in GARBAGE:
        try:
            SessionDescription.parse(body)
        except SDPError:
            continue
        accepted.append(body)
    assert accepted == []
    assert issubclass(SDPError, ValueError)


# -- rewriting for the relay ------------------------------------------------------


def lines_of(body: bytes) -> list[str]:
    assert body.endswith(b"\r\n")
    return body.decode().split("\r\n")[:-1]


def test_rewrite_baresip_offer():
    origin = Origin(address="203.0.113.1", session_id=42)
    out = rewrite_for_relay(SessionDescription.parse(BARESIP), "203.0.113.1", [20000], origin)
    lines = lines_of(out)
    assert lines[:5] == ["v=0", "o=pbx 42 1 IN IP4 203.0.113.1", "s=-", "c=IN IP4 203.0.113.1", "t=0 0"]
    assert "m=audio 20000 RTP/AVP 9 0 8 101" in lines
    # codec and other media lines pass untouched, in order
    original = lines_of(BARESIP)
    after_m = lines[lines.index("m=audio 20000 RTP/AVP 9 0 8 101") + 1 :]
    assert after_m == original[original.index("m=audio 10776 RTP/AVP 9 0 8 101") + 1 :]
    assert "192.168.0.10" not in out.decode()


def test_rewrite_rtcp_attribute_to_relay_port_plus_one():
    origin = Origin(address="203.0.113.1")
    lines = lines_of(rewrite_for_relay(SessionDescription.parse(SIPP), "203.0.113.1", [30000], origin))
    assert "a=rtcp:30001" in lines
    assert not any("10.1.2.3" in line for line in lines)
    assert "a=fmtp:101 0-11,16" in lines


def test_rewrite_removes_ice():
    origin = Origin(address="203.0.113.1")
    out = rewrite_for_relay(SessionDescription.parse(ICE), "203.0.113.1", [20002], origin)
    text = out.decode()
    for gone in ("candidate", "ice-", "10.0.0.5", "203.0.113.7", "7079"):
        assert gone not in text
    d = SessionDescription.parse(out)
    assert [a.name for a in d.media[0].attributes] == ["rtpmap", "fmtp", "rtpmap", "rtcp"]
    assert d.media[0].rtcp == (20003, None)
    assert codecs(d.media[0])[0] == (96, "opus", 48000)


def test_rewrite_multi_stream_keeps_rejected_video_disabled():
    origin = Origin(address="203.0.113.1")
    d = SessionDescription.parse(
        rewrite_for_relay(SessionDescription.parse(MULTI_STREAM), "203.0.113.1", [20004, 20006], origin)
    )
    audio, video = d.media
    assert audio.port == 20004
    assert video.port == 0  # the phone rejected it; a relay port does not revive it
    assert connection_address(d, audio) == connection_address(d, video) == "203.0.113.1"
    # no session-level c= in the offer: one is added in its RFC 4566 place (before t=)
    assert [t for t, _ in d.lines] == ["v", "o", "s", "c", "t"]


def test_rewrite_streams_without_relay_port_are_disabled():
    offer = SessionDescription.parse(MULTI_STREAM.replace(b"m=video 0 ", b"m=video 5000 "))
    d = SessionDescription.parse(rewrite_for_relay(offer, "203.0.113.1", [20004], Origin(address="203.0.113.1")))
    assert [m.port for m in d.media] == [20004, 0]
    d = SessionDescription.parse(rewrite_for_relay(offer, "203.0.113.1", [None, 20006], Origin(address="203.0.113.1")))
    assert [m.port for m in d.media] == [0, 20006]


def test_rewrite_session_level_c_only():
    d = SessionDescription.parse(
        rewrite_for_relay(SessionDescription.parse(SESSION_C_ONLY), "198.51.100.200", [20008], Origin(address="x"))
    )
    assert d.connection == Connection("IN", "IP4", "198.51.100.200")
    assert d.media[0].connection is None
    assert direction(d, d.media[0]) == "recvonly"


def test_rewrite_ipv6_address():
    d = SessionDescription.parse(
        rewrite_for_relay(SessionDescription.parse(SIPP), "2001:db8::1", [20000], Origin(address="2001:db8::1"))
    )
    assert d.connection == Connection("IN", "IP6", "2001:db8::1")
    assert d.origin.addrtype == "IP6"


def test_rewrite_does_not_modify_its_input():
    d = SessionDescription.parse(ICE)
    rewrite_for_relay(d, "203.0.113.1", [20000], Origin(address="203.0.113.1"))
    assert d.to_bytes() == ICE


def test_origin_version_increments_only_when_content_changes():
    origin = Origin(address="203.0.113.1", session_id=7, version=100)
    offer = SessionDescription.parse(BARESIP)
    first = rewrite_for_relay(offer, "203.0.113.1", [20000], origin)
    assert SessionDescription.parse(first).origin.version == "100"
    # 183 then 200 with the same answer, or a retransmission: same version, same bytes
    assert rewrite_for_relay(offer, "203.0.113.1", [20000], origin) == first
    # the phone's own o= version changed but nothing else did: still the same for the other side
    bumped = SessionDescription.parse(BARESIP.replace(b"2286154436", b"2286154499"))
    assert rewrite_for_relay(bumped, "203.0.113.1", [20000], origin) == first
    # hold: content changes, version +1
    held = rewrite_for_relay(SessionDescription.parse(HOLD_SENDONLY), "203.0.113.1", [20000], origin)
    assert SessionDescription.parse(held).origin.version == "101"
    assert SessionDescription.parse(held).origin.session_id == "7"
    # resume: changes again
    resumed = rewrite_for_relay(offer, "203.0.113.1", [20000], origin)
    assert SessionDescription.parse(resumed).origin.version == "102"
    assert origin.version == 102


def test_origins_of_the_two_legs_are_independent():
    a, b = Origin(address="203.0.113.1"), Origin(address="203.0.113.1")
    assert a.session_id != b.session_id or a is not b
    rewrite_for_relay(SessionDescription.parse(BARESIP), "203.0.113.1", [20000], a)
    rewrite_for_relay(SessionDescription.parse(SIPP), "203.0.113.1", [20002], a)
    rewrite_for_relay(SessionDescription.parse(SIPP), "203.0.113.1", [20002], b)
    assert (a.version, b.version) == (2, 1)


# -- hold ------------------------------------------------------------------------


def test_is_hold():
    for body, held in [
        (HOLD_SENDONLY, True),
        (HOLD_RFC2543, True),
        (BARESIP, False),
        (SIPP, False),
        (MULTI_STREAM, False),  # the rejected video does not count
        (SESSION_C_ONLY, False),  # recvonly answers a hold, it is not one
        (ICE, False),
    ]:
        assert is_hold(SessionDescription.parse(body)) is held, body


def test_hold_via_set_direction_and_session_level():
    d = SessionDescription.parse(BARESIP)
    held = set_direction(d, 0, "inactive")
    assert is_hold(held)
    assert [a.name for a in held.media[0].attributes].count("inactive") == 1
    assert "sendrecv" not in [a.name for a in held.media[0].attributes]
    assert not is_hold(d)  # set_direction copies
    assert not is_hold(set_direction(held, 0, "sendrecv"))
    session_level = SessionDescription.parse(SIPP.replace(b"t=0 0\r\n", b"t=0 0\r\na=sendonly\r\n"))
    assert is_hold(session_level)
    assert not is_hold(SessionDescription.parse(b"v=0\r\ns=-\r\nm=audio 0 RTP/AVP 0\r\na=inactive\r\n"))
    with pytest.raises(ValueError):
        set_direction(d, 0, "sideways")


def test_hold_offer_is_relayed_as_hold():
    out = rewrite_for_relay(SessionDescription.parse(HOLD_SENDONLY), "203.0.113.1", [20000], Origin(address="x"))
    assert is_hold(SessionDescription.parse(out))
    # An RFC 2543 hold loses its 0.0.0.0 in the rewrite: call control must turn it into a=sendonly.
    out = rewrite_for_relay(SessionDescription.parse(HOLD_RFC2543), "203.0.113.1", [20000], Origin(address="x"))
    assert not is_hold(SessionDescription.parse(out))
    held = set_direction(SessionDescription.parse(HOLD_RFC2543), 0, "sendonly")
    assert is_hold(SessionDescription.parse(rewrite_for_relay(held, "203.0.113.1", [20000], Origin(address="x"))))


# -- properties -------------------------------------------------------------------

_value = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00"), max_size=30)
_line = st.tuples(st.sampled_from("vosiuepcbtrzkam"), _value)
_sdpish = st.lists(_line, max_size=15).map(
    lambda lines: ("v=0\r\n" + "".join(f"{t}={v}\r\n" for t, v in lines)).encode()
)
_media_line = st.builds(
    lambda media, port, fmts, extra: f"m={media} {port} RTP/AVP {' '.join(map(str, fmts))}\r\n{extra}",
    st.sampled_from(["audio", "video", "application"]),
    st.integers(0, 65535),
    st.lists(st.integers(0, 127), max_size=5),
    st.sampled_from(["", "a=rtpmap:96 opus/48000/2\r\n", "c=IN IP4 192.0.2.9\r\na=sendonly\r\n", "a=rtpmap:x\r\n"]),
)
_HEAD = "v=0\r\no=- 1 2 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
_valid = st.builds(
    lambda media: (_HEAD + "".join(media)).encode(),
    st.lists(_media_line, max_size=4),
)


_text = st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass"))


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=200), _sdpish, _valid, _text))
def test_parse_raises_only_sdp_error_and_round_trips(body):
    try:
        d = SessionDescription.parse(body)
    except SDPError:
        return
    again = SessionDescription.parse(d.to_bytes())
    assert again == d
    assert again.to_bytes() == d.to_bytes()
    for media in d.media:
        codecs(media)
        direction(d, media)
        connection_address(d, media)
    is_hold(d)
    out = rewrite_for_relay(d, "203.0.113.1", [20000] * len(d.media), Origin(address="203.0.113.1"))
    assert SessionDescription.parse(out).origin.username == "pbx"
