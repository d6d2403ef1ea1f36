"""Call control handing calls to media applications: voicemail diversion, the
auto attendant's hand-over to an extension, in-dialog requests while the PBX
answers, and music on hold. Scripted phones on a task.Clock (tests/fakesip.py);
the applications are small scripts written for each test."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred

from fakesip import FakeEndpoint, sdp
from pbx.apps.session import CallEnded
from test_b2bua import World, answered_call


class Applications:
    """The router interface call control asks (see pbx.apps.router), scripted."""

    def __init__(self) -> None:
        self.mailboxes = {"1002"}
        self.started: list[tuple[str, object]] = []
        self.sessions: list = []
        self.script = None  # async (session) -> None, run by every application
        self.attendant_on = True
        self.music = b"\x01\x00" * 800

    def _app(self, kind: str, arg=None):
        async def app(session):
            self.started.append((kind, arg))
            self.sessions.append(session)
            if self.script is not None:
                await self.script(session)
        return app

    def voicemail_enabled(self, mailbox: str) -> bool:
        return mailbox in self.mailboxes

    def deposit(self, mailbox: str):
        return self._app("deposit", mailbox)

    def access(self, mailbox):
        return self._app("access", mailbox)

    def attendant(self):
        return self._app("attendant") if self.attendant_on else None

    def music_on_hold(self):
        return self.music

    def ringback(self) -> bytes:
        return b"ringback"


@pytest.fixture
def w():
    world = World()
    world.apps = Applications()
    world.endpoints = []

    def make_endpoint(host: str) -> FakeEndpoint:
        endpoint = FakeEndpoint(40000 + 2 * len(world.endpoints))
        world.endpoints.append(endpoint)
        return endpoint

    b2bua = world.pbx.b2bua
    b2bua.applications = world.apps
    b2bua.endpoints = make_endpoint
    b2bua.voicemail_timeout = 20
    b2bua.dialplan = type(b2bua.dialplan)(
        b2bua.dialplan.is_extension, groups=b2bua.dialplan.groups.values(),
        voicemail=r"^\*97$|^\*98(?P<mailbox>[0-9]*)$", attendant_number="0",
    )  # fmt: skip
    yield world
    b2bua.stop()
    world.pbx.transactions.stop()


def ack(w, invite):
    ok = w.alice.responses("INVITE")[-1]
    assert ok.status == 200, ok
    w.alice.ack_failure(invite, ok)
    return ok


def test_unregistered_callee_with_a_mailbox_goes_to_voicemail(w):
    invite = w.alice.call("1002")
    ok = ack(w, invite)
    assert b"m=audio 40000 RTP/AVP 0 101" in ok.body
    assert w.apps.started == [("deposit", "1002")]
    session = w.apps.sessions[0]
    assert (session.caller, session.dialled) == ("1001", "1002")
    # The application returned: the PBX hangs up, the record says missed, to voicemail.
    assert w.alice.requests("BYE")
    [record] = w.cdr.closed
    assert (record.disposition, record.hangup_cause) == ("missed", "voicemail-not-registered")
    assert w.endpoints[0].closed


def test_unregistered_callee_without_a_mailbox_is_480(w):
    w.apps.mailboxes = set()
    w.alice.call("1002")
    assert w.alice.statuses("INVITE")[-1] == 480
    assert w.endpoints == []


def test_no_answer_diverts_to_voicemail_after_the_voicemail_timeout(w):
    w.register(w.bob)
    invite = w.alice.call("1002")
    assert w.bob.requests("INVITE")
    w.clock.advance(19)
    assert w.alice.statuses("INVITE")[-1] == 180 and not w.apps.started
    w.clock.advance(1)
    assert w.bob.requests("CANCEL")
    ack(w, invite)
    assert w.apps.started == [("deposit", "1002")]
    assert w.relay.open == [], "the relay session of the ringing attempt is released"
    [record] = w.cdr.closed
    assert (record.disposition, record.hangup_cause) == ("missed", "voicemail-no-answer")


def test_busy_callee_diverts_to_voicemail(w):
    w.register(w.bob)
    w.bob.answer = "486"
    invite = w.alice.call("1002")
    ack(w, invite)
    assert w.apps.started == [("deposit", "1002")]
    assert w.cdr.closed[0].hangup_cause == "voicemail-busy"


def test_cancelled_call_does_not_reach_voicemail(w):
    w.register(w.bob)
    invite = w.alice.call("1002")
    w.pbx.b2bua.cancel_received(w.pbx.b2bua.calls[next(iter(w.pbx.b2bua.calls))].a_transaction, invite)
    assert w.alice.statuses("INVITE")[-1] == 487
    w.clock.advance(30)
    assert w.apps.started == [] and w.endpoints == []


def test_caller_hanging_up_ends_the_application_with_call_ended(w):
    outcome = []

    async def script(session):
        try:
            await session.collect(timeout=60)
        except CallEnded:
            outcome.append("ended")
            raise

    w.apps.script = script
    invite = w.alice.call("1002")
    ok = ack(w, invite)
    w.alice.in_dialog("BYE", invite, ok, cseq=3)
    assert w.alice.statuses("BYE") == [200]
    assert outcome == ["ended"]
    assert not w.alice.requests("BYE"), "the caller already hung up"
    assert w.cdr.closed[0].disposition == "missed"


def test_dtmf_by_sip_info_reaches_the_application(w):
    digits = []

    async def script(session):
        digits.append(await session.collect(max_digits=2, timeout=10))

    w.apps.script = script
    invite = w.alice.call("*97")
    ok = ack(w, invite)
    assert w.apps.started == [("access", None)]
    for cseq, key in ((3, "4"), (4, "2")):
        headers_body = f"Signal={key}\r\nDuration=160\r\n".encode()
        request = w.alice.in_dialog("INFO", invite, ok, cseq=cseq)
        # in_dialog sends without a body type; send the DTMF body the way phones do
        request.headers.set("Content-Type", "application/dtmf-relay")
        request.body = headers_body
        request.headers.set("CSeq", f"{cseq + 10} INFO")
        request.headers.set("Via", request.headers.get("via").replace("branch=z9hG4bK", "branch=z9hG4bKx"))
        w.alice.send(request)
    assert digits == ["42"]
    assert 200 in w.alice.statuses("INFO")


def test_reinvite_to_the_application_is_answered_by_the_endpoint(w):
    async def script(session):
        await session.collect(timeout=60)

    w.apps.script = script
    invite = w.alice.call("*97")
    ok = ack(w, invite)
    w.alice.in_dialog("INVITE", invite, ok, cseq=3, body=sdp("127.0.0.2", 30000, "sendonly"))
    final = w.alice.responses("INVITE")[-1]
    assert final.status == 200 and b"m=audio 40000" in final.body
    assert w.endpoints[0].offers == 2


def test_attendant_connects_the_caller_to_an_extension(w):
    w.register(w.bob)
    results = []

    async def script(session):
        results.append(await session.connect("1002"))

    w.apps.script = script
    invite = w.alice.call("0")
    ok = ack(w, invite)
    assert w.apps.started == [("attendant", None)]
    endpoint = w.endpoints[0]
    assert endpoint.played == [b"ringback"], "the caller hears ringback while 1002 rings"
    [b_invite] = w.bob.requests("INVITE")
    # B is offered exactly the codec the caller was answered with.
    assert b"m=audio" in b_invite.body and b"RTP/AVP 0 101" in b_invite.body
    w.bob.reply(b_invite, 200, "OK", sdp("127.0.0.2", 20000))
    assert results == [True]
    session = w.relay.open[0]
    assert endpoint.detached and session.leg_a.adopted[0] == endpoint.rtp_port
    assert session.leg_b.remote == ("127.0.0.2", 20000)
    assert not w.alice.requests("BYE"), "the caller stays connected"
    call = next(iter(w.pbx.b2bua.calls.values()))
    assert call.record.answered_by == "1002"
    # Now an ordinary call: BYE from the caller reaches 1002.
    w.alice.in_dialog("BYE", invite, ok, cseq=3)
    assert w.bob.requests("BYE")
    [record] = w.cdr.closed
    assert (record.disposition, record.answered_by) == ("answered", "1002")


def test_attendant_connect_to_unreachable_number_returns_false(w):
    results = []

    async def script(session):
        results.append(await session.connect("1003"))  # not registered
        results.append(await session.connect("4711"))  # no such number

    w.apps.script = script
    ack(w, w.alice.call("0"))
    assert results == [False, False]
    assert w.alice.requests("BYE")


def test_attendant_connect_busy_returns_false_and_keeps_the_caller(w):
    w.register(w.bob)
    w.bob.answer = "486"
    results = []
    waiting = Deferred()

    async def script(session):
        results.append(await session.connect("1002"))
        await waiting

    w.apps.script = script
    ack(w, w.alice.call("0"))
    assert results == [False]
    assert not w.alice.requests("BYE") and w.relay.open == []
    waiting.callback(None)
    assert w.alice.requests("BYE")


def test_attendant_connect_times_out_on_no_answer(w):
    w.register(w.bob)
    results = []

    async def script(session):
        results.append(await session.connect("1002"))

    w.apps.script = script
    ack(w, w.alice.call("0"))
    w.clock.advance(30)
    assert results == [False]
    assert w.bob.requests("CANCEL")


def test_caller_hanging_up_while_attendant_rings_cancels_the_callee(w):
    w.register(w.bob)

    async def script(session):
        await session.connect("1002")

    w.apps.script = script
    invite = w.alice.call("0")
    ok = ack(w, invite)
    w.alice.in_dialog("BYE", invite, ok, cseq=3)
    assert w.bob.requests("CANCEL")
    assert w.relay.open == []


def test_no_attendant_configured_is_404(w):
    w.apps.attendant_on = False
    w.alice.call("0")
    assert w.alice.statuses("INVITE")[-1] == 404


def test_hold_plays_music_to_the_held_phone_until_resumed(w):
    invite, ok = answered_call(w)
    session = w.relay.open[0]
    w.alice.in_dialog("INVITE", invite, ok, cseq=3, body=sdp("127.0.0.2", 30000, "inactive"))
    b_reinvite = [r for r in w.bob.requests("INVITE") if r.to().tag][-1]
    assert b"a=sendonly" in b_reinvite.body, "the held phone is told the PBX sends (music)"
    final = w.alice.responses("INVITE")[-1]
    assert final.status == 200 and b"a=inactive" in final.body, "the holder gets the direction it asked for"
    assert session.leg_b.music == ("PCMU", 0, 20)
    assert session.leg_a.music is None
    w.alice.in_dialog("INVITE", invite, ok, cseq=4, body=sdp("127.0.0.2", 30000))
    assert session.leg_b.music is None


def test_hold_without_music_configured_passes_inactive_through(w):
    w.apps.music = None
    invite, ok = answered_call(w)
    w.alice.in_dialog("INVITE", invite, ok, cseq=3, body=sdp("127.0.0.2", 30000, "inactive"))
    b_reinvite = [r for r in w.bob.requests("INVITE") if r.to().tag][-1]
    assert b"a=inactive" in b_reinvite.body
    assert w.relay.open[0].leg_b.music is None


def test_shut_down_waits_for_an_application_still_saving(w):
    saving = Deferred()
    saved = []

    async def script(session):
        try:
            await session.collect(timeout=60)
        except CallEnded:
            await saving  # e.g. the message being written after the caller hung up
            saved.append(True)
            raise

    w.apps.script = script
    ack(w, w.alice.call("1002"))
    w.pbx.b2bua.stop()
    assert w.alice.requests("BYE"), "shut-down hangs up"
    drained = w.pbx.b2bua.drain(timeout=10)
    assert not drained.called
    saving.callback(None)
    assert saved == [True] and drained.called


def test_shut_down_does_not_wait_forever(w):
    async def script(session):
        try:
            await session.collect(timeout=60)
        except CallEnded:
            await Deferred()  # never finishes

    w.apps.script = script
    ack(w, w.alice.call("1002"))
    w.pbx.b2bua.stop()
    drained = w.pbx.b2bua.drain(timeout=10)
    w.clock.advance(9)
    assert not drained.called
    w.clock.advance(1)
    assert drained.called


def test_hold_music_paces_at_20_ms_when_the_held_phone_asks_for_an_odd_ptime(w):
    invite, ok = answered_call(w)
    session = w.relay.open[0]
    w.bob.on_request = lambda request: (
        w.bob.reply(request, 200, "OK", sdp("127.0.0.2", 20000, "recvonly").replace(b"a=recvonly", b"a=ptime:25\r\na=recvonly"))
        if request.method == "INVITE" else w.bob.reply(request, 200, "OK")
    )
    w.alice.in_dialog("INVITE", invite, ok, cseq=3, body=sdp("127.0.0.2", 30000, "sendonly"))
    assert w.alice.responses("INVITE")[-1].status == 200
    assert session.leg_b.music == ("PCMU", 0, 20)
