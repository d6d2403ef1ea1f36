"""RFC 3261 §17 transactions driven by a fake clock: schedules, states, matching."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from pbx.sip.message import Headers, Request, Response, parse_datagram
from pbx.sip.transaction import (
    ClientTransaction,
    ServerTransaction,
    State,
    TimerSettings,
    TransactionLayer,
    new_branch,
)

BRANCH = "z9hG4bKtest1"


def make_request(
    method: str = "REGISTER",
    branch: str = BRANCH,
    host: str = "10.0.0.1",
    port: int = 5060,
    cseq: int = 1,
    cseq_method: str | None = None,
    to: str = "<sip:bob@example.com>",
) -> Request:
    headers = Headers()
    headers.add("Via", f"SIP/2.0/UDP {host}:{port};branch={branch};rport")
    headers.add("Max-Forwards", "70")
    headers.add("From", "Alice <sip:alice@example.com>;tag=a1")
    headers.add("To", to)
    headers.add("Call-ID", "call-1@10.0.0.1")
    headers.add("CSeq", f"{cseq} {cseq_method or method}")
    return Request(method, "sip:bob@example.com", headers)


def make_response(request: Request, status: int, reason: str = "", to_tag: str | None = None) -> Response:
    headers = Headers()
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        for value in request.headers.values(name):
            headers.add(name, value)
    if to_tag is not None:
        headers.set("To", f"{request.headers.get('to')};tag={to_tag}")
    return Response(status, reason or "Reason", headers)


def make_ack(request: Request, response: Response, branch: str | None = None) -> Request:
    ack = make_request("ACK", branch=branch or request.top_via.branch, cseq=request.cseq.number)
    ack.headers.set("To", response.headers.get("to"))
    return ack


class Wire:
    """A send callable that remembers when it sent what."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.sent: list[tuple[float, bytes]] = []

    def __call__(self, data: bytes) -> None:
        self.sent.append((self.clock.seconds(), data))

    @property
    def times(self) -> list[float]:
        return [t for t, _ in self.sent]

    @property
    def data(self) -> list[bytes]:
        return [d for _, d in self.sent]


class TU:
    """Records the callbacks a client transaction makes."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.responses: list[Response] = []
        self.timeouts: list[float] = []
        self.errors: list[float] = []

    def on_response(self, response: Response) -> None:
        self.responses.append(response)

    def on_timeout(self) -> None:
        self.timeouts.append(self.clock.seconds())

    def on_error(self) -> None:
        self.errors.append(self.clock.seconds())

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.responses]


def advance_to(clock: Clock, when: float) -> None:
    """Advance to `when`, stopping at each due timer so it fires at its own time."""
    while True:
        due = [call.getTime() for call in clock.getDelayedCalls() if call.getTime() <= when]
        if not due:
            break
        clock.advance(max(min(due) - clock.seconds(), 0))
    if when > clock.seconds():
        clock.advance(when - clock.seconds())


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def layer(clock: Clock) -> TransactionLayer:
    return TransactionLayer(clock)


def start_client(layer, clock, request, reliable=False):
    wire = Wire(clock)
    tu = TU(clock)
    txn = layer.create_client(request, wire, reliable, tu.on_response, tu.on_timeout)
    return txn, wire, tu


# Client, non-INVITE (§17.1.2)


def test_non_invite_client_retransmits_and_times_out(clock, layer):
    txn, wire, tu = start_client(layer, clock, make_request())
    assert wire.times == [0.0]
    advance_to(clock, 31.9)
    # Timer E: 0.5, 1, 2, 4, then capped at T2 = 4.
    assert wire.times == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert set(wire.data) == {make_request().to_bytes()}
    assert tu.timeouts == []
    advance_to(clock, 32.0)
    assert tu.timeouts == [32.0]
    assert txn.state is State.TERMINATED
    assert len(layer) == 0
    assert clock.getDelayedCalls() == []


def test_non_invite_client_reliable_never_retransmits(clock, layer):
    txn, wire, tu = start_client(layer, clock, make_request(), reliable=True)
    advance_to(clock, 31.9)
    assert wire.times == [0.0]
    advance_to(clock, 32.0)
    assert tu.timeouts == [32.0]


def test_non_invite_client_after_provisional_e_fires_every_t2(clock, layer):
    request = make_request()
    txn, wire, tu = start_client(layer, clock, request)
    advance_to(clock, 0.6)
    assert layer.receive_response(make_response(request, 100))
    assert txn.state is State.PROCEEDING
    # The pending E (due at 1.5) still fires; from then on every T2.
    advance_to(clock, 14.0)
    assert wire.times == [0.0, 0.5, 1.5, 5.5, 9.5, 13.5]
    layer.receive_response(make_response(request, 100))
    assert tu.statuses == [100]
    advance_to(clock, 32.0)
    assert tu.timeouts == [32.0]


def test_non_invite_client_final_absorbs_retransmissions_until_k(clock, layer):
    request = make_request()
    txn, wire, tu = start_client(layer, clock, request)
    ok = make_response(request, 200, to_tag="t1")
    advance_to(clock, 0.7)
    assert layer.receive_response(ok)
    assert txn.state is State.COMPLETED
    assert tu.statuses == [200]
    advance_to(clock, 5.6)
    assert layer.receive_response(ok)  # absorbed by Completed
    assert tu.statuses == [200]
    assert wire.times == [0.0, 0.5]  # no retransmission after the final
    advance_to(clock, 5.7)  # K = T4 = 5 s after 0.7
    assert len(layer) == 0
    assert not layer.receive_response(ok)
    assert clock.getDelayedCalls() == []


def test_non_invite_client_reliable_final_terminates_at_once(clock, layer):
    request = make_request()
    txn, wire, tu = start_client(layer, clock, request, reliable=True)
    layer.receive_response(make_response(request, 200))
    assert txn.state is State.TERMINATED
    assert len(layer) == 0
    assert clock.getDelayedCalls() == []


# Client, INVITE (§17.1.1)


def test_invite_client_retransmits_and_times_out(clock, layer):
    txn, wire, tu = start_client(layer, clock, make_request("INVITE"))
    assert txn.state is State.CALLING
    advance_to(clock, 31.9)
    # Timer A doubles without a cap.
    assert wire.times == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert tu.timeouts == []
    advance_to(clock, 32.0)
    assert tu.timeouts == [32.0]
    assert len(layer) == 0
    assert clock.getDelayedCalls() == []


def test_invite_client_acks_486_and_absorbs_retransmissions(clock, layer):
    request = make_request("INVITE", cseq=7)
    request.headers.add("Route", "<sip:proxy1.example.com;lr>")
    request.headers.add("Route", "<sip:proxy2.example.com;lr>")
    txn, wire, tu = start_client(layer, clock, request)
    busy = make_response(request, 486, "Busy Here", to_tag="bob9")
    busy.headers.add("Via", "SIP/2.0/UDP proxy1.example.com;branch=z9hG4bKproxy")
    advance_to(clock, 1.0)
    assert layer.receive_response(busy)
    assert txn.state is State.COMPLETED
    assert tu.statuses == [486]
    assert wire.times == [0.0, 0.5, 1.0]

    ack = parse_datagram(wire.data[-1])
    assert isinstance(ack, Request)
    assert ack.method == "ACK"
    assert ack.uri == request.uri
    assert ack.call_id == request.call_id
    assert ack.headers.get("from") == request.headers.get("from")
    assert ack.headers.get("to") == "<sip:bob@example.com>;tag=bob9"
    assert ack.to().tag == "bob9"
    assert (ack.cseq.number, ack.cseq.method) == (7, "ACK")
    assert ack.headers.values("via") == request.headers.values("via")
    assert len(ack.vias) == 1
    assert ack.headers.values("route") == ["<sip:proxy1.example.com;lr>", "<sip:proxy2.example.com;lr>"]
    assert txn.ack is not None

    # Each retransmitted 486 is answered by the same ACK, never passed up.
    advance_to(clock, 2.0)
    assert layer.receive_response(busy)
    advance_to(clock, 4.0)
    assert layer.receive_response(busy)
    assert wire.times == [0.0, 0.5, 1.0, 2.0, 4.0]
    assert wire.data[-1] == wire.data[-2] == wire.data[-3]
    assert tu.statuses == [486]

    advance_to(clock, 32.9)  # Timer D: 32 s after 1.0
    assert len(layer) == 1
    advance_to(clock, 33.0)
    assert len(layer) == 0
    assert not layer.receive_response(busy)
    assert clock.getDelayedCalls() == []


def test_invite_client_reliable_ack_then_terminated(clock, layer):
    request = make_request("INVITE")
    txn, wire, tu = start_client(layer, clock, request, reliable=True)
    layer.receive_response(make_response(request, 603, to_tag="x"))
    assert len(wire.sent) == 2
    assert parse_datagram(wire.data[1]).method == "ACK"
    assert txn.state is State.TERMINATED  # Timer D is 0 on reliable transports
    assert clock.getDelayedCalls() == []


def test_invite_client_passes_180_then_200_and_terminates(clock, layer):
    request = make_request("INVITE")
    txn, wire, tu = start_client(layer, clock, request)
    ringing = make_response(request, 180, to_tag="b1")
    clock.advance(0.2)
    assert layer.receive_response(ringing)
    assert txn.state is State.PROCEEDING
    advance_to(clock, 3.0)
    assert layer.receive_response(ringing)  # retransmitted 180: not passed up again
    assert wire.times == [0.0]  # Timer A stopped by the provisional
    ok = make_response(request, 200, to_tag="b1")
    assert layer.receive_response(ok)
    assert tu.statuses == [180, 200]
    assert txn.state is State.TERMINATED
    assert len(layer) == 0
    # The 2xx retransmission is the dialog layer's business (it re-ACKs).
    assert not layer.receive_response(ok)
    assert tu.statuses == [180, 200]
    assert clock.getDelayedCalls() == []


def test_invite_client_proceeding_waits_beyond_timer_b(clock, layer):
    request = make_request("INVITE")
    txn, wire, tu = start_client(layer, clock, request)
    layer.receive_response(make_response(request, 100))
    advance_to(clock, 100.0)
    assert tu.timeouts == []
    assert txn.state is State.PROCEEDING


def test_invite_client_forked_provisionals_each_passed_up(clock, layer):
    request = make_request("INVITE")
    txn, wire, tu = start_client(layer, clock, request)
    layer.receive_response(make_response(request, 183, to_tag="fork1"))
    layer.receive_response(make_response(request, 183, to_tag="fork2"))
    layer.receive_response(make_response(request, 183, to_tag="fork1"))
    assert tu.statuses == [183, 183]


# Server, non-INVITE (§17.2.2)


def test_server_non_invite_resends_final_and_expires_after_j(clock, layer):
    request = make_request()
    wire = Wire(clock)
    assert layer.match_server(request) is None
    txn = layer.create_server(request, wire, False)
    assert txn.state is State.TRYING
    assert layer.receive_request(make_request())  # Trying: absorbed silently
    assert wire.sent == []
    final = make_response(request, 200, "OK", to_tag="reg")
    txn.respond(final)
    assert txn.state is State.COMPLETED
    assert wire.data == [final.to_bytes()]

    advance_to(clock, 10.0)
    retransmission = make_request()
    assert layer.match_server(retransmission) is txn
    txn.receive_request(retransmission)
    assert wire.times == [0.0, 10.0]
    assert wire.data[0] == wire.data[1]
    txn.respond(make_response(request, 500))  # late finals are discarded
    assert len(wire.sent) == 2

    advance_to(clock, 31.9)
    assert len(layer) == 1
    advance_to(clock, 32.0)  # Timer J = 64*T1
    assert len(layer) == 0
    assert layer.match_server(make_request()) is None
    assert clock.getDelayedCalls() == []


def test_server_non_invite_provisional_resent_in_proceeding(clock, layer):
    request = make_request("OPTIONS")
    wire = Wire(clock)
    txn = layer.create_server(request, wire, False)
    trying = make_response(request, 100, "Trying")
    txn.respond(trying)
    assert txn.state is State.PROCEEDING
    clock.advance(0.5)
    assert layer.receive_request(make_request("OPTIONS"))
    assert wire.data == [trying.to_bytes()] * 2


def test_server_non_invite_reliable_expires_at_once(clock, layer):
    request = make_request()
    wire = Wire(clock)
    txn = layer.create_server(request, wire, True)
    txn.respond(make_response(request, 200))
    assert txn.state is State.TERMINATED
    assert len(layer) == 0
    assert clock.getDelayedCalls() == []


def test_server_non_invite_stateless_final_keeps_nothing(clock, layer):
    # RFC 3261 §8.2.7: a challenge is sent without keeping the transaction,
    # so the retransmitted request is a new request and nothing waits for J.
    request = make_request()
    wire = Wire(clock)
    txn = layer.create_server(request, wire, False)
    final = make_response(request, 401, "Unauthorized", to_tag="ch")
    txn.respond(final, stateless=True)
    assert txn.state is State.TERMINATED
    assert txn.request is None
    assert wire.data == [final.to_bytes()]
    assert len(layer) == 0
    assert layer.match_server(make_request()) is None
    assert clock.getDelayedCalls() == []


def test_server_invite_ignores_stateless_and_waits_for_the_ack(clock, layer):
    invite = make_request("INVITE")
    txn = layer.create_server(invite, Wire(clock), False)
    txn.respond(make_response(invite, 407, "Proxy Authentication Required", to_tag="ch"), stateless=True)
    assert txn.state is State.COMPLETED
    assert len(layer) == 1


def test_server_releases_request_after_final(clock, layer):
    request = make_request()
    txn = layer.create_server(request, Wire(clock), False)
    assert txn.request is request
    txn.respond(make_response(request, 200))
    assert txn.request is None


# Server, INVITE (§17.2.1)


def test_server_invite_486_retransmitted_until_ack_then_confirmed(clock, layer):
    invite = make_request("INVITE")
    wire = Wire(clock)
    txn = layer.create_server(invite, wire, False)
    busy = make_response(invite, 486, "Busy Here", to_tag="u1")
    clock.advance(0.1)
    txn.respond(busy)
    assert txn.state is State.COMPLETED
    advance_to(clock, 16.0)
    # Timer G: T1, doubling, capped at T2.
    assert wire.times == pytest.approx([0.1, 0.6, 1.6, 3.6, 7.6, 11.6, 15.6])
    assert set(wire.data) == {busy.to_bytes()}
    ack = make_ack(invite, busy)
    assert layer.match_server(ack) is txn
    assert layer.receive_request(ack)
    assert txn.state is State.CONFIRMED
    advance_to(clock, 20.0)
    assert len(wire.sent) == 7  # G stopped
    assert layer.receive_request(make_ack(invite, busy))  # absorbed
    assert layer.receive_request(make_request("INVITE"))  # absorbed too
    assert len(wire.sent) == 7
    advance_to(clock, 20.9)  # Timer I = T4 after the ACK at 16.0
    assert len(layer) == 1
    advance_to(clock, 21.0)
    assert len(layer) == 0
    assert clock.getDelayedCalls() == []


def test_server_invite_retransmitted_invite_resends_final(clock, layer):
    invite = make_request("INVITE")
    wire = Wire(clock)
    txn = layer.create_server(invite, wire, False)
    busy = make_response(invite, 486, to_tag="u1")
    txn.respond(busy)
    clock.advance(0.2)
    assert layer.receive_request(make_request("INVITE"))
    assert wire.times == [0.0, 0.2]


def test_server_invite_timer_h_without_ack(clock, layer):
    invite = make_request("INVITE")
    wire = Wire(clock)
    gave_up: list[float] = []
    txn = layer.create_server(invite, wire, False, on_ack_timeout=lambda: gave_up.append(clock.seconds()))
    txn.respond(make_response(invite, 404, to_tag="u1"))
    advance_to(clock, 31.9)
    assert wire.times == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert gave_up == []
    advance_to(clock, 32.0)
    assert gave_up == [32.0]
    assert txn.state is State.TERMINATED
    assert len(layer) == 0
    assert clock.getDelayedCalls() == []


def test_server_invite_reliable_no_g_and_ack_terminates(clock, layer):
    invite = make_request("INVITE")
    wire = Wire(clock)
    txn = layer.create_server(invite, wire, True)
    busy = make_response(invite, 486, to_tag="u1")
    txn.respond(busy)
    advance_to(clock, 5.0)
    assert wire.times == [0.0]
    layer.receive_request(make_ack(invite, busy))
    assert txn.state is State.TERMINATED  # Timer I is 0 on reliable transports
    assert clock.getDelayedCalls() == []


def test_server_invite_sends_100_trying_after_200ms(clock, layer):
    invite = make_request("INVITE")
    invite.headers.add("Timestamp", "54")
    wire = Wire(clock)
    txn = layer.create_server(invite, wire, False)
    clock.advance(0.19)
    assert wire.sent == []
    clock.advance(0.01)
    assert wire.times == [0.2]
    trying = parse_datagram(wire.data[0])
    assert isinstance(trying, Response)
    assert trying.status == 100
    for name in ("via", "from", "to", "call-id", "cseq", "timestamp"):
        assert trying.headers.values(name) == invite.headers.values(name)
    # A retransmitted INVITE gets the 100 again.
    clock.advance(0.3)
    layer.receive_request(make_request("INVITE"))
    assert wire.times == [0.2, 0.5]
    assert txn.state is State.PROCEEDING


def test_server_invite_no_trying_when_tu_answers_in_time(clock, layer):
    invite = make_request("INVITE")
    wire = Wire(clock)
    txn = layer.create_server(invite, wire, False)
    clock.advance(0.1)
    ringing = make_response(invite, 180, to_tag="u1")
    txn.respond(ringing)
    clock.advance(1.0)
    assert wire.data == [ringing.to_bytes()]


def test_server_invite_trying_can_be_disabled(clock):
    layer = TransactionLayer(clock, TimerSettings(trying=None))
    wire = Wire(clock)
    layer.create_server(make_request("INVITE"), wire, False)
    clock.advance(5)
    assert wire.sent == []
    assert clock.getDelayedCalls() == []


def test_server_invite_2xx_accepted_state(clock, layer):
    """RFC 6026: after a 2xx, absorb INVITE retransmissions for Timer L."""
    invite = make_request("INVITE")
    wire = Wire(clock)
    txn = layer.create_server(invite, wire, False)
    ok = make_response(invite, 200, "OK", to_tag="u1")
    txn.respond(ok)
    assert txn.state is State.ACCEPTED
    assert clock.getDelayedCalls() != [] and len(wire.sent) == 1
    clock.advance(0.5)
    assert layer.receive_request(make_request("INVITE"))
    assert len(wire.sent) == 1  # the TU retransmits 2xx, not the transaction
    txn.respond(ok)
    assert wire.times == [0.0, 0.5]
    # Even an ACK reusing the INVITE branch belongs to the dialog layer.
    assert layer.match_server(make_ack(invite, ok)) is None
    advance_to(clock, 31.9)
    assert len(layer) == 1
    advance_to(clock, 32.0)  # Timer L = 64*T1
    assert len(layer) == 0
    assert clock.getDelayedCalls() == []


def test_server_invite_2xx_terminates_without_accepted_state(clock):
    layer = TransactionLayer(clock, accepted_state=False)
    invite = make_request("INVITE")
    wire = Wire(clock)
    txn = layer.create_server(invite, wire, False)
    txn.respond(make_response(invite, 200, to_tag="u1"))
    assert txn.state is State.TERMINATED
    assert len(wire.sent) == 1
    assert len(layer) == 0
    assert clock.getDelayedCalls() == []


# Matching (§17.1.3, §17.2.3, §9.2)


def test_ack_matching(clock, layer):
    invite = make_request("INVITE")
    txn = layer.create_server(invite, Wire(clock), False)
    busy = make_response(invite, 486, to_tag="u1")
    early_ack = make_ack(invite, busy)
    assert layer.match_server(early_ack) is None  # no final sent yet
    txn.respond(busy)
    assert layer.match_server(make_ack(invite, busy)) is txn
    assert layer.match_server(make_ack(invite, busy, branch="z9hG4bKother")) is None
    other_host = make_request("ACK", host="10.0.0.2", cseq=1)
    assert layer.match_server(other_host) is None
    assert layer.match_server(make_request("INVITE", port=5070)) is None


def test_cancel_matching(clock, layer):
    invite = make_request("INVITE")
    invite_txn = layer.create_server(invite, Wire(clock), False)
    cancel = make_request("CANCEL")
    assert layer.match_server(cancel) is None  # CANCEL has its own transaction
    assert layer.find_invite_for_cancel(cancel) is invite_txn
    cancel_txn = layer.create_server(cancel, Wire(clock), False)
    assert cancel_txn is not invite_txn
    assert layer.match_server(make_request("CANCEL")) is cancel_txn
    assert layer.match_server(make_request("INVITE")) is invite_txn
    assert layer.find_invite_for_cancel(make_request("CANCEL", branch="z9hG4bKzz")) is None
    assert len(layer) == 2


def test_legacy_branch_ack_matching(clock, layer):
    """An RFC 2543 peer without the magic cookie still gets its ACK matched."""
    invite = make_request("INVITE", branch="1234")
    txn = layer.create_server(invite, Wire(clock), False)
    busy = make_response(invite, 486, to_tag="u1")
    txn.respond(busy)
    assert layer.match_server(make_ack(invite, busy)) is txn
    assert layer.match_server(make_request("ACK", branch="1234", cseq=2)) is None


def test_client_matching_uses_cseq_method(clock, layer):
    invite = make_request("INVITE")
    invite_txn, _, invite_tu = start_client(layer, clock, invite)
    cancel = make_request("CANCEL")
    cancel_txn, _, cancel_tu = start_client(layer, clock, cancel)
    assert layer.match_client(make_response(cancel, 200)) is cancel_txn
    assert layer.match_client(make_response(invite, 487)) is invite_txn
    layer.receive_response(make_response(cancel, 200))
    assert cancel_tu.statuses == [200] and invite_tu.statuses == []


def test_stray_response_is_refused(clock, layer):
    assert layer.receive_response(make_response(make_request(), 200)) is False
    start_client(layer, clock, make_request())
    assert layer.receive_response(make_response(make_request(branch="z9hG4bKnope"), 200)) is False


def test_duplicate_server_transaction_refused(clock, layer):
    layer.create_server(make_request(), Wire(clock), False)
    with pytest.raises(ValueError):
        layer.create_server(make_request(), Wire(clock), False)


def test_ack_starts_no_transaction(clock, layer):
    with pytest.raises(ValueError):
        layer.create_server(make_request("ACK"), Wire(clock), False)


# Timers, expiry, lifecycle


def test_configurable_t1_changes_schedule(clock):
    timers = TimerSettings(t1=0.1, t2=0.4, t4=1.0)
    layer = TransactionLayer(clock, timers)
    txn, wire, tu = start_client(layer, clock, make_request())
    advance_to(clock, 6.4)
    assert wire.times == pytest.approx([0.0, 0.1, 0.3, 0.7, 1.1, 1.5, 1.9, 2.3, 2.7, 3.1, 3.5, 3.9, 4.3, 4.7, 5.1, 5.5, 5.9, 6.3])
    assert tu.timeouts == pytest.approx([6.4])  # Timer F = 64*T1

    request = make_request(branch="z9hG4bKj")
    server = layer.create_server(request, Wire(clock), False)
    server.respond(make_response(request, 200))
    start = clock.seconds()
    advance_to(clock, start + 6.3)
    assert len(layer) == 1
    advance_to(clock, start + 6.4)  # Timer J = 64*T1
    assert len(layer) == 0


def test_expiry_within_one_sweep_interval(clock, layer):
    first = make_request(branch="z9hG4bKfirst")
    second = make_request(branch="z9hG4bKsecond")
    layer.create_server(first, Wire(clock), False).respond(make_response(first, 200))
    clock.advance(0.3)
    layer.create_server(second, Wire(clock), False).respond(make_response(second, 200))
    clock.advance(31.7)  # t = 32.0: the first one's J ran out
    assert len(layer) == 1
    clock.advance(0.3)  # t = 32.3: the second is due; the sweep may come later...
    assert layer.match_server(make_request(branch="z9hG4bKsecond")) is None  # ...but a lookup knows
    clock.advance(0.7)  # t = 33.0: one sweep interval after the first sweep
    assert len(layer) == 0
    assert clock.getDelayedCalls() == []


def test_shorter_wait_reschedules_the_sweep(clock, layer):
    request = make_request()
    layer.create_server(request, Wire(clock), False).respond(make_response(request, 200))  # J: 32 s
    client_request = make_request("OPTIONS", branch="z9hG4bKk")
    txn, _, _ = start_client(layer, clock, client_request)
    clock.advance(1.0)
    layer.receive_response(make_response(client_request, 200))  # K: 5 s
    clock.advance(5.0)
    assert txn.state is State.TERMINATED
    assert len(layer) == 1
    clock.advance(26.0)
    assert len(layer) == 0


def test_stop_cancels_every_timer(clock, layer):
    start_client(layer, clock, make_request("INVITE", branch="z9hG4bK1"))
    start_client(layer, clock, make_request("OPTIONS", branch="z9hG4bK2"))
    layer.create_server(make_request("INVITE", branch="z9hG4bK3"), Wire(clock), False)
    invite = make_request("INVITE", branch="z9hG4bK4")
    layer.create_server(invite, Wire(clock), False).respond(make_response(invite, 486))
    register = make_request(branch="z9hG4bK5")
    layer.create_server(register, Wire(clock), False).respond(make_response(register, 200))
    assert clock.getDelayedCalls() != []
    assert len(layer) == 5
    layer.stop()
    assert clock.getDelayedCalls() == []
    assert len(layer) == 0
    assert layer.count() == 0


def test_transport_error_ends_client_transaction(clock, layer):
    def broken(data: bytes) -> None:
        raise OSError("network unreachable")

    tu = TU(clock)
    txn = layer.create_client(make_request(), broken, False, tu.on_response, tu.on_timeout, on_transport_error=tu.on_error)
    assert tu.errors == [0.0]
    assert txn.state is State.TERMINATED
    assert len(layer) == 0
    assert clock.getDelayedCalls() == []


def test_transport_error_ends_server_transaction(clock, layer):
    def broken(data: bytes) -> None:
        raise OSError("connection lost")

    errors: list[float] = []
    request = make_request()
    txn = layer.create_server(request, broken, True, on_transport_error=lambda: errors.append(clock.seconds()))
    txn.respond(make_response(request, 200))
    assert errors == [0.0]
    assert txn.state is State.TERMINATED
    assert len(layer) == 0


def test_standalone_transactions_use_their_own_timers(clock):
    """Without a layer, wait timers fall back to callLater and still fire on time."""
    request = make_request()
    wire = Wire(clock)
    server = ServerTransaction(request, wire, False, clock, TimerSettings())
    server.respond(make_response(request, 200))
    tu = TU(clock)
    client = ClientTransaction(make_request("OPTIONS"), wire, False, clock, None, tu.on_response, tu.on_timeout)
    client.start()
    client.receive_response(make_response(make_request("OPTIONS"), 200))
    clock.advance(4.9)
    assert client.state is State.COMPLETED
    clock.advance(0.1)
    assert client.state is State.TERMINATED
    clock.advance(27.0)
    assert server.state is State.TERMINATED
    assert clock.getDelayedCalls() == []


def test_new_branch():
    branches = {new_branch() for _ in range(1000)}
    assert len(branches) == 1000
    assert all(b.startswith("z9hG4bK") and len(b) > 16 for b in branches)


def test_transport_error_defaults_to_on_timeout(clock, layer):
    def broken(data: bytes) -> None:
        raise OSError("network unreachable")

    tu = TU(clock)
    layer.create_client(make_request("INVITE"), broken, True, tu.on_response, tu.on_timeout)
    assert tu.timeouts == [0.0]
    assert len(layer) == 0
