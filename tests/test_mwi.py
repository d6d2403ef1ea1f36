"""Message-waiting indication through the SIP core, on a task.Clock with scripted phones.

The core, registrar and notifier are put together here the way the service
does it, with the mailbox counts in a dict (or a Deferred the test fires).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from fakesip import Network, Phone
from pbx.apps.mwi import MessageWaiting
from pbx.core.events import EventBus
from pbx.core.location import LocationService
from pbx.core.registrar import ExtensionDirectory, Registrar
from pbx.sip.core import SIPCore
from pbx.sip.digest import DigestAuthenticator, NonceManager
from pbx.sip.message import Headers, Request, Response
from pbx.sip.message_summary import MessageSummary, parse_summary
from pbx.sip.transaction import TransactionLayer
from pbx.sip.transport import Peer
from pbx.store.extensions import make_record
from sipclient import authorization, register

SERVER = "127.0.0.1:5060"
MAILBOXES = ("1001", "1002")


@dataclass
class MwiPhone(Phone):
    """A phone that answers NOTIFY with `notify_status` (None: never answers)."""

    notify_status: int | None = 200

    def on_request(self, request: Request) -> None:
        if request.method == "NOTIFY":
            if self.notify_status is not None:
                self.reply(request, self.notify_status, "OK" if self.notify_status == 200 else "Failed")
            return
        super().on_request(request)

    def notifies(self) -> list[Request]:
        return self.requests("NOTIFY")


class World:
    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.transactions = TransactionLayer(self.clock)
        self.core = SIPCore(self.transactions)
        authenticator = DigestAuthenticator(NonceManager(self.clock, b"k" * 32), "pbx", ["MD5"])
        directory = ExtensionDirectory()
        for number in ("1001", "1002", "1003"):
            directory.put(make_record(number, "", "pbx", f"secret{number}"))
        self.events = EventBus()
        self.location = LocationService(self.clock)
        self.registrar = Registrar(self.core, authenticator, directory, self.location, self.events, self.clock)
        self.core.register_handler("REGISTER", self.registrar)
        self.counts: dict[str, tuple[int, int]] = {"1001": (0, 0), "1002": (0, 0)}
        self.counts_mode = "dict"  # "dict", "fail" or "manual" (Deferreds in self.pending)
        self.counts_calls: list[str] = []
        self.pending: list[Deferred] = []
        self.mwi = MessageWaiting(
            self.core, self.registrar.gate, self.location, self.read_counts, self.events, self.clock,
            sip_port=5060, advertised_host=lambda peer_host: "127.0.0.1", is_mailbox=MAILBOXES.__contains__,
            default_expires=600, min_expires=60, max_expires=3600,
        )  # fmt: skip
        # The service's wiring: SUBSCRIBE to the notifier, in-dialog requests
        # to it when it owns the dialog, else to call control (here: 481).
        self.core.register_handler("SUBSCRIBE", self.mwi.subscribe_received)
        self.core.dialog_handler = self.route
        self.net = Network(self.core)

    def route(self, request, transaction, peer) -> None:
        if self.mwi.owns(request):
            self.mwi.in_dialog_request(request, transaction, peer)
        else:
            self.core.respond(transaction, request, 481, "Call/Transaction Does Not Exist")

    def read_counts(self, mailbox: str):
        self.counts_calls.append(mailbox)
        if self.counts_mode == "fail":
            return fail(ConnectionError("database is down"))
        if self.counts_mode == "raise":
            raise ConnectionError("database is down")
        if self.counts_mode == "manual":
            d: Deferred = Deferred()
            self.pending.append(d)
            return d
        return succeed(self.counts[mailbox])

    def phone(self, user: str, port: int) -> MwiPhone:
        phone = MwiPhone(self.net, user, "127.0.0.2", port, f"secret{user}")
        self.net.phones[(phone.host, port)] = phone
        return phone

    def raw(self, phone: Phone, data: bytes) -> None:
        self.core.datagram_received(data, Peer("UDP", phone.host, phone.port, False, self.net.deliver))

    def register(self, phone: Phone, cseq: int = 1) -> None:
        call_id = f"reg-{phone.user}-{phone.port}"
        self.raw(phone, register(phone.user, host=phone.host, port=phone.port, call_id=call_id, cseq=cseq))
        challenge = phone.responses("REGISTER")[-1]
        assert challenge.status == 401
        auth = authorization(challenge, phone.user, phone.password)
        self.raw(phone, register(phone.user, host=phone.host, port=phone.port, call_id=call_id, cseq=cseq + 1,
                                 authorization=auth))  # fmt: skip
        assert phone.responses("REGISTER")[-1].status == 200


def subscribe_request(phone: Phone, mailbox: str | None = None, *, expires: int | None = 600,
                      event: str | None = "message-summary", accept: str | None = None, call_id: str | None = None,
                      cseq: int = 1, to_tag: str | None = None, auth: str | None = None) -> Request:
    mailbox = mailbox or phone.user
    headers = Headers()
    headers.add("Via", f"SIP/2.0/UDP {phone.host}:{phone.port};branch=z9hG4bK{secrets.token_hex(6)};rport")
    headers.add("Max-Forwards", "70")
    headers.add("From", f"<sip:{phone.user}@{SERVER}>;tag=sub{phone.user}")
    headers.add("To", f"<sip:{mailbox}@{SERVER}>" + (f";tag={to_tag}" if to_tag else ""))
    headers.add("Call-ID", call_id or f"sub-{secrets.token_hex(4)}")
    headers.add("CSeq", f"{cseq} SUBSCRIBE")
    headers.add("Contact", f"<sip:{phone.user}@{phone.host}:{phone.port}>")
    if event is not None:
        headers.add("Event", event)
    if expires is not None:
        headers.add("Expires", str(expires))
    if accept is not None:
        headers.add("Accept", accept)
    if auth is not None:
        headers.add("Authorization", auth)
    return Request("SUBSCRIBE", f"sip:{mailbox}@{SERVER}", headers)


def subscribe(phone: Phone, mailbox: str | None = None, user: str | None = None, **kwargs) -> Response:
    """SUBSCRIBE, answer the 401, SUBSCRIBE again with credentials; the final response."""
    first = subscribe_request(phone, mailbox, **kwargs)
    phone.send(first)
    challenge = phone.responses("SUBSCRIBE")[-1]
    if challenge.status != 401:
        return challenge
    user = user or phone.user
    auth = authorization(challenge, user, f"secret{user}", method="SUBSCRIBE", uri=first.uri)
    kwargs.pop("cseq", None)
    phone.send(subscribe_request(phone, mailbox, call_id=first.call_id, cseq=2, auth=auth, **kwargs))
    return phone.responses("SUBSCRIBE")[-1]


def refresh(phone: Phone, ok: Response, cseq: int = 3, **kwargs) -> Response:
    to_tag = ok.to().tag
    mailbox = ok.to().uri.user
    phone.send(subscribe_request(phone, mailbox, call_id=ok.call_id, cseq=cseq, to_tag=to_tag, **kwargs))
    return phone.responses("SUBSCRIBE")[-1]


def summary(notify: Request) -> MessageSummary:
    assert notify.headers.get("Content-Type") == "application/simple-message-summary"
    return parse_summary(notify.body)


@pytest.fixture
def w():
    world = World()
    yield world
    world.mwi.stop()
    world.transactions.stop()


def test_subscribe_is_challenged_then_accepted_with_an_immediate_notify(w):
    alice = w.phone("1001", 5061)
    w.counts["1001"] = (2, 5)
    ok = subscribe(alice)
    assert alice.statuses("SUBSCRIBE") == [401, 200]
    assert ok.to().tag and ok.headers.get("Expires") == "600"
    assert ok.headers.get("Contact") == "<sip:pbx@127.0.0.1:5060>"
    [notify] = alice.notifies()
    assert alice.received.index(notify) > alice.received.index(ok), "the 200 goes out before the NOTIFY"
    # In the subscription's dialog: our tag is the 200's To tag, theirs is the SUBSCRIBE's From tag.
    assert notify.call_id == ok.call_id
    assert notify.from_().tag == ok.to().tag and notify.to().tag == "sub1001"
    assert notify.uri == "sip:1001@127.0.0.2:5061"
    assert notify.headers.get("Event") == "message-summary"
    assert notify.headers.get("Subscription-State") == "active;expires=600"
    assert summary(notify) == MessageSummary(True, "sip:1001@127.0.0.1:5060", 2, 5)
    assert len(w.mwi) == 1 and w.mwi.owns(refresh_request_of(alice, ok))


def refresh_request_of(phone: Phone, ok: Response) -> Request:
    return subscribe_request(phone, call_id=ok.call_id, cseq=3, to_tag=ok.to().tag)


def test_owns_only_its_own_dialogs(w):
    alice = w.phone("1001", 5061)
    ok = subscribe(alice)
    assert not w.mwi.owns(subscribe_request(alice, call_id=ok.call_id, to_tag="someoneelse"))
    assert not w.mwi.owns(subscribe_request(alice, call_id="other", to_tag=ok.to().tag))
    assert not w.mwi.owns(subscribe_request(alice, call_id=ok.call_id))


@pytest.mark.parametrize("event", ["presence", "dialog", None])
def test_other_event_packages_get_489_with_allow_events(w, event):
    alice = w.phone("1001", 5061)
    alice.send(subscribe_request(alice, event=event))
    [response] = alice.responses("SUBSCRIBE")
    assert response.status == 489 and response.headers.get("Allow-Events") == "message-summary"
    assert len(w.mwi) == 0 and alice.notifies() == []


def test_someone_elses_mailbox_is_forbidden(w):
    alice = w.phone("1001", 5061)
    response = subscribe(alice, "1002")
    assert response.status == 403
    assert len(w.mwi) == 0 and alice.notifies() == [] and w.counts_calls == []


def test_extension_without_a_mailbox_is_404(w):
    carol = w.phone("1003", 5063)
    assert subscribe(carol).status == 404
    assert len(w.mwi) == 0


def test_wrong_password_is_forbidden(w):
    alice = w.phone("1001", 5061)
    first = subscribe_request(alice)
    alice.send(first)
    auth = authorization(alice.responses("SUBSCRIBE")[-1], "1001", "nope", method="SUBSCRIBE", uri=first.uri)
    alice.send(subscribe_request(alice, call_id=first.call_id, cseq=2, auth=auth))
    assert alice.statuses("SUBSCRIBE") == [401, 403]
    assert len(w.mwi) == 0


def test_unacceptable_body_type_is_406(w):
    alice = w.phone("1001", 5061)
    alice.send(subscribe_request(alice, accept="application/dialog-info+xml"))
    [response] = alice.responses("SUBSCRIBE")
    assert response.status == 406 and response.headers.get("Accept") == "application/simple-message-summary"
    assert subscribe(w.phone("1002", 5062), accept="application/simple-message-summary, text/plain").status == 200


def test_expires_below_minimum_is_423_and_above_maximum_is_capped(w):
    alice = w.phone("1001", 5061)
    response = subscribe(alice, expires=30)
    assert response.status == 423 and response.headers.get("Min-Expires") == "60"
    assert len(w.mwi) == 0
    ok = subscribe(alice, expires=999999)
    assert ok.status == 200 and ok.headers.get("Expires") == "3600"
    assert alice.notifies()[-1].headers.get("Subscription-State") == "active;expires=3600"


def test_missing_expires_gets_the_default_and_bad_expires_is_400(w):
    alice = w.phone("1001", 5061)
    assert subscribe(alice, expires=None).headers.get("Expires") == "600"
    bob = w.phone("1002", 5062)
    first = subscribe_request(bob)
    first.headers.set("Expires", "soon")
    bob.send(first)
    auth = authorization(bob.responses("SUBSCRIBE")[-1], "1002", "secret1002", method="SUBSCRIBE", uri=first.uri)
    second = subscribe_request(bob, call_id=first.call_id, cseq=2, auth=auth)
    second.headers.set("Expires", "soon")
    bob.send(second)
    assert bob.statuses("SUBSCRIBE") == [401, 400]


def test_subscription_expires_with_a_terminated_notify(w):
    alice = w.phone("1001", 5061)
    subscribe(alice)
    w.clock.advance(599)
    assert len(alice.notifies()) == 1 and len(w.mwi) == 1
    w.clock.advance(1)
    notify = alice.notifies()[-1]
    assert notify.headers.get("Subscription-State") == "terminated;reason=timeout"
    assert len(w.mwi) == 0
    w.events.emit("voicemail.changed", mailbox="1001", new=1, old=0)
    assert len(alice.notifies()) == 2, "nothing more after the end"


def test_refresh_keeps_the_subscription(w):
    alice = w.phone("1001", 5061)
    ok = subscribe(alice)
    w.clock.advance(500)
    w.events.emit("voicemail.changed", mailbox="1001", new=1, old=1)
    again = refresh(alice, ok, expires=600)
    assert again.status == 200 and again.headers.get("Expires") == "600" and again.to().tag == ok.to().tag
    notify = alice.notifies()[-1]
    assert notify.headers.get("Subscription-State") == "active;expires=600"
    assert summary(notify).new == 1
    w.clock.advance(200)  # past the first expiry
    assert len(w.mwi) == 1
    assert all("terminated" not in n.headers.get("Subscription-State") for n in alice.notifies())
    w.clock.advance(400)
    assert alice.notifies()[-1].headers.get("Subscription-State") == "terminated;reason=timeout"
    assert len(w.mwi) == 0


def test_notify_cseq_grows_within_the_dialog(w):
    alice = w.phone("1001", 5061)
    ok = subscribe(alice)
    refresh(alice, ok)
    w.events.emit("voicemail.changed", mailbox="1001", new=1, old=0)
    numbers = [n.cseq.number for n in alice.notifies()]
    assert len(numbers) == 3 and numbers == sorted(numbers) and len(set(numbers)) == 3


def test_expires_zero_fetches_once_and_keeps_nothing(w):
    alice = w.phone("1001", 5061)
    w.counts["1001"] = (3, 0)
    ok = subscribe(alice, expires=0)
    assert ok.status == 200 and ok.headers.get("Expires") == "0"
    [notify] = alice.notifies()
    assert notify.headers.get("Subscription-State") == "terminated;reason=timeout"
    assert summary(notify) == MessageSummary(True, "sip:1001@127.0.0.1:5060", 3, 0)
    assert len(w.mwi) == 0
    w.clock.advance(4000)
    assert len(alice.notifies()) == 1


def test_unsubscribe_in_dialog_ends_it(w):
    alice = w.phone("1001", 5061)
    ok = subscribe(alice)
    assert refresh(alice, ok, expires=0).status == 200
    assert alice.notifies()[-1].headers.get("Subscription-State") == "terminated;reason=timeout"
    assert len(w.mwi) == 0
    assert refresh(alice, ok, cseq=4).status == 481


def test_out_of_order_refresh_is_500_and_other_methods_405(w):
    alice = w.phone("1001", 5061)
    ok = subscribe(alice)
    assert refresh(alice, ok, cseq=2).status == 500
    bye = refresh_request_of(alice, ok)
    bye.method = "BYE"
    bye.headers.set("CSeq", "5 BYE")
    alice.send(bye)
    response = alice.responses("BYE")[-1]
    assert response.status == 405 and response.headers.get("Allow") == "SUBSCRIBE"
    assert len(w.mwi) == 1


def test_event_id_is_echoed_and_must_match_on_refresh(w):
    alice = w.phone("1001", 5061)
    ok = subscribe(alice, event="message-summary;id=7")
    assert alice.notifies()[-1].headers.get("Event") == "message-summary;id=7"
    assert refresh(alice, ok, event="message-summary;id=8").status == 489
    assert refresh(alice, ok, cseq=4, event="message-summary;id=7").status == 200


def test_refresh_from_a_new_address_moves_the_notifies(w):
    alice = w.phone("1001", 5061)
    ok = subscribe(alice)
    moved = w.phone("1001", 5071)  # same phone, new NAT mapping
    assert refresh(moved, ok).status == 200
    assert moved.notifies()[-1].uri == "sip:1001@127.0.0.2:5071"
    w.events.emit("voicemail.changed", mailbox="1001", new=1, old=0)
    assert len(alice.notifies()) == 1 and len(moved.notifies()) == 2


def test_voicemail_changed_notifies_subscriber_and_registered_phones(w):
    alice = w.phone("1001", 5061)  # subscribes and registers from the same contact
    desk = w.phone("1001", 5064)  # registers only
    bob = w.phone("1002", 5062)
    w.register(alice)
    w.register(desk)
    w.register(bob)
    ok = subscribe(alice)
    for phone in (alice, desk, bob):
        phone.received.clear()
    w.counts_calls.clear()
    w.events.emit("voicemail.changed", mailbox="1001", new=1, old=0)
    assert w.counts_calls == [], "the event's counts are used as they are"
    [in_dialog] = alice.notifies()
    assert in_dialog.call_id == ok.call_id and in_dialog.to().tag == "sub1001"
    assert summary(in_dialog) == MessageSummary(True, "sip:1001@127.0.0.1:5060", 1, 0)
    [unsolicited] = desk.notifies()
    assert unsolicited.uri == "sip:1001@127.0.0.2:5064"
    assert unsolicited.to().tag is None and unsolicited.from_().tag
    assert str(unsolicited.to().uri) == str(unsolicited.from_().uri) == "sip:1001@127.0.0.1"
    assert unsolicited.call_id not in (ok.call_id, in_dialog.call_id)
    assert unsolicited.headers.get("Event") == "message-summary"
    assert unsolicited.headers.get("Subscription-State") == "active"
    assert unsolicited.body.startswith(b"Messages-Waiting: yes\r\n")
    assert summary(unsolicited) == MessageSummary(True, "sip:1001@127.0.0.1", 1, 0)
    assert bob.notifies() == []
    w.events.emit("voicemail.changed", mailbox="1001", new=0, old=1)
    assert summary(desk.notifies()[-1]) == MessageSummary(False, "sip:1001@127.0.0.1", 0, 1)


def test_unsolicited_notify_goes_over_the_binding_transport(w):
    desk = w.phone("1001", 5064)
    w.register(desk)
    desk.received.clear()
    for binding in w.location.lookup("1001"):
        binding.transport = "TCP"
    sent: list[bytes] = []

    class Connection:
        class transport:
            write = staticmethod(sent.append)

    w.core.tcp_connections[("127.0.0.2", 5064)] = Connection()
    w.events.emit("voicemail.changed", mailbox="1001", new=1, old=0)
    assert desk.notifies() == [] and len(sent) == 1
    assert b"SIP/2.0/TCP 127.0.0.1:5060" in sent[0] and b";transport=tcp>" in sent[0]


def test_registration_and_its_refresh_send_the_current_state(w):
    desk = w.phone("1001", 5064)
    w.counts["1001"] = (4, 2)
    w.register(desk)
    [first] = desk.notifies()
    assert summary(first) == MessageSummary(True, "sip:1001@127.0.0.1", 4, 2)
    assert w.counts_calls == ["1001"]
    w.clock.advance(1800)
    w.register(desk, cseq=3)  # a refresh: registration.refreshed
    assert len(desk.notifies()) == 2 and w.counts_calls == ["1001"], "known counts: no second query"
    assert desk.notifies()[1].call_id != first.call_id


def test_registration_of_an_extension_without_mailbox_sends_nothing(w):
    carol = w.phone("1003", 5063)
    w.register(carol)
    assert carol.notifies() == [] and w.counts_calls == []


def test_registration_event_notifies_subscriber_in_dialog(w):
    alice = w.phone("1001", 5061)
    w.counts["1001"] = (1, 0)
    subscribe(alice)
    w.events.emit("registration.changed", aor="1001", contacts=[])
    assert len(alice.notifies()) == 2 and summary(alice.notifies()[-1]).waiting


def test_481_to_a_notify_drops_the_subscription(w):
    alice = w.phone("1001", 5061)
    ok = subscribe(alice)
    alice.notify_status = 481
    w.events.emit("voicemail.changed", mailbox="1001", new=1, old=0)
    assert len(w.mwi) == 0
    w.events.emit("voicemail.changed", mailbox="1001", new=2, old=0)
    assert len(alice.notifies()) == 2
    assert refresh(alice, ok).status == 481


def test_notify_timeout_drops_the_subscription(w):
    alice = w.phone("1001", 5061)
    subscribe(alice)
    alice.notify_status = None
    w.events.emit("voicemail.changed", mailbox="1001", new=1, old=0)
    w.clock.pump([0.5] * 70)
    assert len(w.mwi) == 0
    assert len({n.cseq.number for n in alice.notifies()}) == 2, "retransmissions only, no new NOTIFY"


def test_a_500_to_a_notify_keeps_the_subscription(w):
    alice = w.phone("1001", 5061)
    subscribe(alice)
    alice.notify_status = 500
    w.events.emit("voicemail.changed", mailbox="1001", new=1, old=0)
    assert len(w.mwi) == 1


def test_one_notify_in_flight_per_dialog_and_the_newest_state_follows(w):
    alice = w.phone("1001", 5061)
    subscribe(alice)
    alice.notify_status = None
    w.events.emit("voicemail.changed", mailbox="1001", new=1, old=0)
    w.events.emit("voicemail.changed", mailbox="1001", new=2, old=0)
    w.events.emit("voicemail.changed", mailbox="1001", new=3, old=0)
    [_, waiting] = alice.notifies()
    assert summary(waiting).new == 1
    alice.reply(waiting, 200, "OK")
    assert [summary(n).new for n in alice.notifies()[2:]] == [3]


def test_counts_that_arrive_after_a_newer_event_do_not_win(w):
    alice = w.phone("1001", 5061)
    w.counts_mode = "manual"
    ok = subscribe(alice)
    assert ok.status == 200 and alice.notifies() == []
    w.events.emit("voicemail.changed", mailbox="1001", new=3, old=0)
    w.pending.pop().callback((0, 0))  # the query started before the message arrived
    assert [summary(n).new for n in alice.notifies()] == [3, 3]


@pytest.mark.parametrize("mode", ["fail", "raise"])
def test_failing_counts_are_logged_and_never_reach_the_sip_core(w, mode):
    from twisted.logger import globalLogPublisher

    logged: list[dict] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        alice = w.phone("1001", 5061)
        desk = w.phone("1001", 5064)
        w.counts_mode = mode
        w.register(desk)
        assert desk.notifies() == []
        ok = subscribe(alice)
        assert ok.status == 200
        [notify] = alice.notifies()  # the subscription still stands, state unknown
        assert notify.body == b"" and notify.headers.get("Subscription-State") == "active;expires=600"
        results: list = []
        w.mwi.notify_mailbox("1001").addBoth(results.append)
        assert results == [None]
    finally:
        globalLogPublisher.removeObserver(logged.append)
    failures = [e for e in logged if e.get("log_namespace") == "pbx.apps.mwi.MessageWaiting" and e.get("log_failure")]
    assert failures and all(e["mailbox"] == "1001" for e in failures)


@pytest.mark.parametrize("bad", [(-1, 0), (0, "x"), (10**10, 0), (1,), None])
def test_bad_counts_from_the_source_are_refused(w, bad):
    desk = w.phone("1001", 5064)
    w.counts["1001"] = bad  # type: ignore[assignment]
    w.register(desk)
    assert desk.notifies() == []
    alice = w.phone("1001", 5061)
    assert subscribe(alice).status == 200
    assert alice.notifies()[-1].body == b""


def test_voicemail_changed_without_counts_reads_them(w):
    desk = w.phone("1001", 5064)
    w.register(desk)
    w.counts["1001"] = (5, 0)
    w.events.emit("voicemail.changed", mailbox="1001")
    assert summary(desk.notifies()[-1]).new == 5


def test_stop_terminates_subscriptions_and_stops_listening(w):
    alice = w.phone("1001", 5061)
    desk = w.phone("1001", 5064)
    w.register(desk)
    subscribe(alice)
    assert [c for c in w.clock.getDelayedCalls() if getattr(c.func, "__self__", None) is w.mwi]
    w.mwi.stop()
    notify = alice.notifies()[-1]
    assert notify.headers.get("Subscription-State").startswith("terminated;reason=probation;retry-after=")
    assert len(w.mwi) == 0
    assert not [c for c in w.clock.getDelayedCalls() if getattr(c.func, "__self__", None) is w.mwi]
    count = len(desk.notifies())
    w.events.emit("voicemail.changed", mailbox="1001", new=1, old=0)
    assert len(desk.notifies()) == count
    assert subscribe(w.phone("1002", 5062)).status == 503
