"""Call control through the SIP core, on a task.Clock with scripted phones.

The media relay and the call-record store are in-memory stand-ins here
(tests/fakesip.py); the real ones are exercised by tests/peers/.
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from fakesip import FakeRelay, MemoryCDR, Network
from pbx.config import parse_config
from pbx.service import PBXService
from pbx.store.extensions import make_record
from sipclient import register, authorization

CONFIG = """
server: {sip_host: 127.0.0.1, sip_port: 5060}
features: {no_answer_timeout: 30, max_call_duration: 3600, rtp_timeout: 0}
voicemail: {enabled: false}  # tests/test_b2bua_apps.py covers calls that reach voicemail
groups:
  - {number: "2000", name: Sales, members: ["1002", "1003"], strategy: ringall, ring_timeout: 20}
  - {number: "2001", name: Support, members: ["1002", "1003"], strategy: hunt, ring_timeout: 10}
extensions:
  - {number: "1001", password: secret1001}
  - {number: "1002", password: secret1002}
  - {number: "1003", password: secret1003}
"""


class World:
    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.pbx = PBXService(parse_config(CONFIG), self.clock)
        self.pbx.core.ready = True
        for n in ("1001", "1002", "1003"):
            self.pbx.directory.put(make_record(n, "", "pbx", f"secret{n}"))
        self.relay = self.pbx.b2bua.relay = FakeRelay()
        self.cdr = self.pbx.b2bua.cdr = MemoryCDR()
        self.net = Network(self.pbx.core)
        self.events: list[tuple[str, dict]] = []
        for name in ("call.incoming", "call.answered", "call.ended"):
            self.pbx.events.subscribe(name, lambda n, f: self.events.append((n, f)))
        self.alice = self.phone("1001", 5061)
        self.bob = self.phone("1002", 5062)
        self.carol = self.phone("1003", 5063)

    def phone(self, user: str, port: int):
        phone = self.net.phone(user, "127.0.0.2", port, f"secret{user}")
        return phone

    def register(self, phone) -> None:
        from sipclient import parse

        out = []
        from pbx.sip.transport import Peer

        peer = Peer("UDP", phone.host, phone.port, False, lambda d, a: out.append(d))
        data = register(phone.user, host=phone.host, port=phone.port, call_id=f"reg-{phone.user}")
        self.pbx.core.datagram_received(data, peer)
        auth = authorization(parse(out[-1]), phone.user, phone.password)
        data = register(phone.user, host=phone.host, port=phone.port, call_id=f"reg-{phone.user}", cseq=2, authorization=auth)
        self.pbx.core.datagram_received(data, peer)
        assert parse(out[-1]).status == 200

    def names(self) -> list[str]:
        return [name for name, _ in self.events]


@pytest.fixture
def w():
    world = World()
    yield world
    world.pbx.b2bua.stop()
    world.pbx.transactions.stop()


def answered_call(w):
    w.register(w.bob)
    w.bob.answer = "200"
    invite = w.alice.call("1002")
    ok = w.alice.responses("INVITE")[-1]
    assert ok.status == 200
    w.alice.ack_failure(invite, ok)  # an ACK with the 2xx's To tag (a new branch is not needed here)
    return invite, ok


def test_unauthenticated_invite_is_challenged_with_407(w):
    w.register(w.bob)
    w.alice.invite("1002")
    [challenge] = w.alice.responses("INVITE")
    assert challenge.status == 407 and "Proxy-Authenticate" in challenge.headers
    assert w.bob.requests("INVITE") == []
    assert w.cdr.closed == []


def test_wrong_password_is_forbidden(w):
    w.register(w.bob)
    first = w.alice.invite("1002")
    challenge = w.alice.responses("INVITE")[-1]
    auth = authorization(challenge, "1001", "wrong", method="INVITE", uri=first.uri, header="Proxy-Authenticate")
    w.alice.invite("1002", call_id=first.call_id, auth=auth, cseq=2)
    assert w.alice.statuses("INVITE")[-1] == 403
    assert w.bob.requests("INVITE") == []


def test_basic_call_relays_ringing_answer_and_bye(w):
    invite, ok = answered_call(w)
    statuses = w.alice.statuses("INVITE")
    assert statuses[:2] == [407, 100] and 180 in statuses and statuses[-1] == 200
    [b_invite] = w.bob.requests("INVITE")
    # Leg B is the PBX's own dialog: new Call-ID, PBX addresses in SDP.
    assert b_invite.call_id != invite.call_id
    assert b"c=IN IP4 127.0.0.1" in b_invite.body and b"127.0.0.2" not in b_invite.body
    assert b"c=IN IP4 127.0.0.1" in ok.body
    session = w.relay.open[0]
    assert session.leg_a.remote == ("127.0.0.2", 30000) and session.leg_b.remote == ("127.0.0.2", 20000)
    assert w.bob.requests("ACK"), "the PBX ACKs the callee's 2xx"
    assert w.names() == ["call.incoming", "call.answered"]
    w.clock.advance(65)
    w.alice.in_dialog("BYE", invite, ok, cseq=3)
    assert w.alice.statuses("BYE") == [200]
    assert len(w.bob.requests("BYE")) == 1
    [record] = w.cdr.closed
    assert (record.disposition, record.hangup_cause, record.hangup_side) == ("answered", "normal", "caller")
    assert record.billable == 65 and record.answered_by == "1002"
    assert w.names()[-1] == "call.ended" and w.relay.open == []


def test_callee_hangs_up(w):
    invite, ok = answered_call(w)
    b_invite = w.bob.requests("INVITE")[0]
    w.bob.send(_bye_from_callee(w.bob, b_invite))
    assert w.alice.requests("BYE")
    [record] = w.cdr.closed
    assert record.hangup_side == "callee"


def _bye_from_callee(bob, b_invite):
    from pbx.sip.message import Headers, Request

    headers = Headers()
    headers.add("Via", f"SIP/2.0/UDP {bob.host}:{bob.port};branch=z9hG4bKbyebob;rport")
    headers.add("From", f"{b_invite.headers.get('to')};tag=calleetag")
    headers.add("To", b_invite.headers.get("from"))
    headers.add("Call-ID", b_invite.call_id)
    headers.add("CSeq", "1 BYE")
    headers.add("Max-Forwards", "70")
    return Request("BYE", str(b_invite.contacts()[0].uri), headers)


def test_2xx_is_retransmitted_until_ack(w):
    w.register(w.bob)
    w.bob.answer = "200"
    invite = w.alice.call("1002")
    oks = lambda: [r for r in w.alice.responses("INVITE") if r.status == 200]
    assert len(oks()) == 1
    w.clock.advance(0.5)
    w.clock.advance(1.0)
    assert len(oks()) == 3
    w.alice.ack_failure(invite, oks()[0])
    w.clock.advance(10)
    assert len(oks()) == 3
    assert "call.answered" in w.names()


def test_no_ack_ends_the_call(w):
    w.register(w.bob)
    w.bob.answer = "200"
    w.alice.call("1002")
    w.clock.pump([1] * 40)
    [record] = w.cdr.closed
    assert record.hangup_cause == "no-ack"
    assert w.bob.requests("BYE")


def test_busy_callee(w):
    w.register(w.bob)
    w.bob.answer = "486"
    w.alice.call("1002")
    assert w.alice.statuses("INVITE")[-1] == 486
    [record] = w.cdr.closed
    assert record.disposition == "busy"


def test_not_registered_is_480_with_a_record(w):
    w.alice.call("1002")
    assert w.alice.statuses("INVITE")[-1] == 480
    [record] = w.cdr.closed
    assert (record.disposition, record.hangup_cause) == ("failed", "not-registered")


def test_unknown_number_is_404(w):
    w.alice.call("1999")
    response = w.alice.responses("INVITE")[-1]
    assert response.status == 404


def test_cancel_while_ringing(w):
    w.register(w.bob)
    invite = w.alice.call("1002")
    assert 180 in w.alice.statuses("INVITE")
    from pbx.sip.message import Headers, Request

    headers = Headers()
    headers.add("Via", invite.headers.get("via"))
    for name in ("From", "To", "Call-ID"):
        headers.add(name, invite.headers.get(name))
    headers.add("CSeq", f"{invite.cseq.number} CANCEL")
    headers.add("Max-Forwards", "70")
    w.alice.send(Request("CANCEL", invite.uri, headers))
    assert w.alice.statuses("CANCEL") == [200]
    assert w.alice.statuses("INVITE")[-1] == 487
    assert w.bob.requests("CANCEL")
    [record] = w.cdr.closed
    assert (record.disposition, record.hangup_side) == ("cancelled", "caller")


def test_no_answer_timeout_gives_408(w):
    w.register(w.bob)
    w.alice.call("1002")
    w.clock.advance(30)
    assert w.alice.statuses("INVITE")[-1] == 408
    assert w.bob.requests("CANCEL")
    [record] = w.cdr.closed
    assert (record.disposition, record.hangup_cause) == ("missed", "no-answer")


def test_ringall_group_first_answer_wins_other_gets_cancel(w):
    w.register(w.bob)
    w.register(w.carol)
    w.alice.call("2000")
    assert w.bob.requests("INVITE") and w.carol.requests("INVITE")
    w.carol.reply(w.carol.last_invite, 200, "OK", b"v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\nm=audio 20002 RTP/AVP 0\r\n", tag="caroltag")
    assert w.alice.statuses("INVITE")[-1] == 200
    assert w.bob.requests("CANCEL") and not w.carol.requests("CANCEL")
    assert w.pbx.b2bua.calls[next(iter(w.pbx.b2bua.calls))].record.answered_by == "1003"


def test_hunt_group_rings_members_in_turn(w):
    w.register(w.bob)
    w.register(w.carol)
    w.alice.call("2001")
    assert w.bob.requests("INVITE") and not w.carol.requests("INVITE")
    w.clock.advance(10)
    assert w.bob.requests("CANCEL") and w.carol.requests("INVITE")


def test_hold_reinvite_passes_across_with_sdp_rewritten(w):
    invite, ok = answered_call(w)
    from fakesip import sdp

    w.alice.in_dialog("INVITE", invite, ok, cseq=3, body=sdp("127.0.0.2", 30000, "sendonly"))
    b_reinvites = [r for r in w.bob.requests("INVITE") if r.to().tag]
    assert b_reinvites and b"a=sendonly" in b_reinvites[0].body and b"127.0.0.1" in b_reinvites[0].body
    final = w.alice.responses("INVITE")[-1]
    assert final.status == 200 and b"a=recvonly" in final.body


def test_no_free_media_ports_is_503(w):
    w.register(w.bob)
    w.relay.capacity = 0
    w.alice.call("1002")
    assert w.alice.statuses("INVITE")[-1] == 503
    assert w.cdr.closed[0].hangup_cause == "no-ports"


def test_in_dialog_request_for_unknown_dialog_is_481(w):
    invite, ok = answered_call(w)
    w.alice.in_dialog("BYE", invite, ok, cseq=3)
    w.alice.in_dialog("BYE", invite, ok, cseq=4)
    assert w.alice.statuses("BYE") == [200, 481]


def test_max_call_duration_hangs_up_both_sides(w):
    answered_call(w)
    w.clock.advance(3600)
    assert w.alice.requests("BYE") and w.bob.requests("BYE")
    assert w.cdr.closed[0].hangup_cause == "max-duration"


def test_rtp_inactivity_ends_the_call(w):
    w.pbx.b2bua.rtp_timeout = 60
    answered_call(w)
    session = w.relay.open[0]
    w.clock.advance(30)
    session.last_activity = w.clock.seconds()  # audio flows until t=30
    w.clock.advance(59)
    assert not w.alice.requests("BYE")
    w.clock.advance(2)
    assert w.alice.requests("BYE") and w.bob.requests("BYE")
    assert w.cdr.closed[0].hangup_cause == "rtp-timeout"


def test_second_fork_answering_late_is_acked_and_hung_up(w):
    w.register(w.bob)
    w.register(w.carol)
    w.alice.call("2000")
    body = b"v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\nm=audio 20002 RTP/AVP 0\r\n"
    w.carol.reply(w.carol.last_invite, 200, "OK", body, tag="caroltag")
    w.bob.reply(w.bob.last_invite, 200, "OK", body, tag="bobtag")
    assert w.bob.requests("ACK") and w.bob.requests("BYE")
    assert not w.carol.requests("BYE")


def test_each_sdp_body_of_a_call_is_parsed_once(w, monkeypatch):
    from fakesip import sdp
    from pbx.sip.sdp import SessionDescription

    parsed: list[bytes] = []
    parse = SessionDescription.parse.__func__
    monkeypatch.setattr(SessionDescription, "parse",
                        classmethod(lambda cls, body: (parsed.append(bytes(body)), parse(cls, body))[1]))
    w.register(w.bob)
    w.bob.answer = "200"
    invite = w.alice.call("1002")
    [call] = w.pbx.b2bua.calls.values()
    assert call.a_offer == parse(SessionDescription, invite.body), "the offer is kept on the call, parsed"
    answer = sdp(w.bob.host, 20000)  # what the callee's phone answers with
    assert parsed == [invite.body, answer], "the offer once (not again for leg B), the answer once"


def test_an_ended_call_is_freed_without_the_garbage_collector(w):
    import gc
    import weakref

    gc.disable()  # a cycle would keep the call until the next collection: none must be needed
    try:
        invite, ok = answered_call(w)
        [call] = w.pbx.b2bua.calls.values()
        gone = weakref.ref(call)
        del call
        w.clock.advance(1)
        w.alice.in_dialog("BYE", invite, ok, cseq=3)
        assert w.alice.statuses("BYE") == [200] and not w.pbx.b2bua.calls
        w.clock.advance(65)  # the call's transactions finish and let go of it
        assert gone() is None
    finally:
        gc.enable()
