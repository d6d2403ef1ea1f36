"""Message-waiting indication: RFC 3842 message-summary over RFC 6665 SUBSCRIBE/NOTIFY.

A phone learns that its mailbox holds new messages in one of two ways:

- it subscribes to its own mailbox (``Event: message-summary``) and gets a
  NOTIFY in that dialog at once, on every change and when the subscription
  ends;
- a phone that never subscribes gets unsolicited NOTIFYs, out of any dialog,
  at each of its registered contacts: that is how Asterisk and FreeSWITCH
  light the lamps of most desk phones, and what their users expect.

The counts come from ``counts(mailbox)`` (the voicemail store), or straight
from a ``voicemail.changed`` event, which already carries them. Subscriptions
live in memory only: after a restart phones subscribe again, and registering
phones get the current state from the unsolicited NOTIFY the registration
triggers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger, LogLevel

from pbx.core.auth import DigestGate
from pbx.core.events import EventBus
from pbx.core.location import Binding, LocationService
from pbx.sip.dialog import Dialog, new_call_id, new_tag, uas_dialog
from pbx.sip.errors import Forbidden, IntervalTooBrief, NotFound, ParseError, ServiceUnavailable, SIPError
from pbx.sip.headers import parse_name_addr, parse_params
from pbx.sip.message import Headers, Request, Response
from pbx.sip.message_summary import CONTENT_TYPE, EVENT, MAX_COUNT, MessageSummary, build_summary
from pbx.sip.transaction import ServerTransaction, new_branch
from pbx.sip.transport import Peer
from pbx.sip.uri import SipURI, parse_uri, unescape

__all__ = ["MessageWaiting", "Subscription"]

Counts = tuple[int, int]
DialogKey = tuple[str, str]

# Answers to a NOTIFY after which the subscription no longer exists (RFC 6665 §4.2.2).
ENDS_SUBSCRIPTION = frozenset({404, 405, 408, 410, 416, 480, 481, 482, 483, 484, 485, 489, 501, 604})
# On shut-down phones are told to come back later, not at once: the PBX is going away.
SHUTDOWN_RETRY_AFTER = 30
ACCEPTABLE = frozenset({CONTENT_TYPE, "application/*", "*/*"})
_MAX_EXPIRES_TEXT = 10


@dataclass(eq=False)
class Subscription:
    """One accepted SUBSCRIBE dialog for one mailbox."""

    mailbox: str
    account: str  # Message-Account: the URI the phone subscribed to
    event: str  # the Event value NOTIFYs carry (with the subscriber's id parameter)
    dialog: Dialog
    expires_at: float
    timer: Any = None
    # One NOTIFY in flight per dialog; a change meanwhile waits here (the newest wins).
    sending: bool = False
    queued: Counts | None = None


def _event_of(request: Request) -> tuple[str, str | None] | None:
    """(package, id) of the Event header, None when there is none or it is unreadable."""
    value = request.headers.get("event")
    if value is None:
        return None
    package, _, rest = value.partition(";")
    try:
        params = parse_params(";" + rest, "Event") if rest else {}
    except ParseError:
        return None
    return package.strip(), params.get("id")


def _counts(value: object) -> Counts:
    """(new, old) from whatever the counts source or an event handed over; ValueError if unusable."""
    new, old = value  # type: ignore[misc]
    for count in (new, old):
        if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= MAX_COUNT:
            raise ValueError(f"message counts must be whole numbers, not {value!r}")
    return new, old


class MessageWaiting:
    """The message-summary notifier: SUBSCRIBE handling, NOTIFYs, and the events that trigger them."""

    log = Logger()

    def __init__(
        self,
        core: Any,
        gate: DigestGate,
        location: LocationService,
        counts: Callable[[str], Deferred[tuple[int, int]]],
        events: EventBus,
        clock: Any,
        *,
        sip_port: int,
        advertised_host: Callable[[str], str],
        is_mailbox: Callable[[str], bool],
        default_expires: int = 3600,
        min_expires: int = 60,
        max_expires: int = 86400,
    ) -> None:
        self.core = core
        self.gate = gate
        self.location = location
        self.counts = counts
        self.events = events
        self.clock = clock
        self.sip_port = sip_port
        self.advertised_host = advertised_host
        self.is_mailbox = is_mailbox
        self.default_expires = default_expires
        self.min_expires = min_expires
        self.max_expires = max_expires
        self._subscriptions: dict[DialogKey, Subscription] = {}
        self._by_mailbox: dict[str, dict[DialogKey, Subscription]] = {}
        # Counts told by voicemail.changed, and how many times per mailbox:
        # a counts query that started before the newest event must not
        # overwrite what the event said.
        self._generation: dict[str, int] = {}
        self._latest: dict[str, Counts] = {}
        self._stopped = False
        self._unsubscribe = [
            events.subscribe("voicemail.changed", self._voicemail_changed),
            events.subscribe("registration.changed", self._registration_event),
            events.subscribe("registration.refreshed", self._registration_event),
        ]

    def __len__(self) -> int:
        """Active subscriptions (for metrics)."""
        return len(self._subscriptions)

    # -- SUBSCRIBE -----------------------------------------------------------

    def subscribe_received(self, request: Request, transaction: ServerTransaction, peer: Peer) -> None:
        """A SUBSCRIBE outside any dialog: a phone asking for its mailbox's state."""
        if self._stopped:
            raise ServiceUnavailable("shutting down", reason="Shutting Down")
        event = self._check_event(request, transaction)
        if event is None or not self._check_accept(request, transaction):
            return
        mailbox, account = self._mailbox(request)
        user = self.gate.check(request, transaction, proxy=False)
        if user is None:
            return  # challenged
        if user != mailbox:
            raise Forbidden("a phone may only subscribe to its own mailbox")
        if not self.is_mailbox(mailbox):
            raise NotFound("no such mailbox", reason="No Such Mailbox")
        expires = self._expires(request)
        response = self.core.response(request, 200, "OK")
        dialog = uas_dialog(request, response.to().tag or new_tag(), peer.host, peer.port, peer.transport)
        self._accept(transaction, response, dialog, expires)
        package, event_id = event
        subscription = Subscription(
            mailbox=mailbox,
            account=account,
            event=package if event_id is None else f"{package};id={event_id}",
            dialog=dialog,
            expires_at=self.clock.seconds() + expires,
        )
        if expires == 0:
            self.log.info("message-summary fetch for {mailbox} from {host}:{port}",
                          mailbox=mailbox, host=peer.host, port=peer.port)  # fmt: skip
            self._final_notify(subscription, "terminated;reason=timeout")
            return
        self._add(subscription)
        self.log.info(
            "{mailbox} subscribed to message-summary from {host}:{port} for {expires} s",
            mailbox=mailbox, host=peer.host, port=peer.port, expires=expires,
        )  # fmt: skip
        self._refresh_notify(subscription)

    def owns(self, request: Request) -> bool:
        """True for an in-dialog request of one of our subscriptions (route it to `in_dialog_request`)."""
        try:
            tag = request.to().tag
            call_id = request.call_id
        except SIPError:
            return False
        return tag is not None and (call_id, tag) in self._subscriptions

    def in_dialog_request(self, request: Request, transaction: ServerTransaction, peer: Peer) -> None:
        """A refresh (or, with Expires: 0, the end) of a subscription.

        Refreshes are not challenged again: the dialog identifiers only reach
        the subscriber, and NOTIFYs only ever go to the dialog's peer.
        """
        subscription = self._find(request)
        if subscription is None:
            self.core.respond(transaction, request, 481, "Call/Transaction Does Not Exist")
            return
        if request.method != "SUBSCRIBE":
            self.core.respond(transaction, request, 405, "Method Not Allowed", [("Allow", "SUBSCRIBE")])
            return
        dialog = subscription.dialog
        if not dialog.check_remote_cseq(request):
            self.core.respond(transaction, request, 500, "CSeq Out of Order")
            return
        event = self._check_event(request, transaction)
        if event is None:
            return
        package, event_id = event
        if (package if event_id is None else f"{package};id={event_id}") != subscription.event:
            self._bad_event(request, transaction)
            return
        if not self._check_accept(request, transaction):
            return
        expires = self._expires(request)
        # A phone whose NAT binding moved refreshes from its new address: follow it.
        dialog.host, dialog.port, dialog.transport = peer.host, peer.port, peer.transport
        contacts = request.headers.get_list("contact")
        if contacts:
            dialog.remote_target = str(parse_name_addr(contacts[0], "Contact").uri)
        self._accept(transaction, self.core.response(request, 200, "OK"), dialog, expires)
        if expires == 0:
            self._remove(subscription)
            self.log.info("{mailbox} unsubscribed from message-summary", mailbox=subscription.mailbox)
            self._final_notify(subscription, "terminated;reason=timeout")
            return
        subscription.expires_at = self.clock.seconds() + expires
        self._arm(subscription, expires)
        self._refresh_notify(subscription)

    def _check_event(self, request: Request, transaction: ServerTransaction) -> tuple[str, str | None] | None:
        event = _event_of(request)
        if event is None or event[0].lower() != EVENT:
            self._bad_event(request, transaction)
            return None
        return EVENT, event[1]

    def _bad_event(self, request: Request, transaction: ServerTransaction) -> None:
        self.core.respond(transaction, request, 489, "Bad Event", [("Allow-Events", EVENT)])

    def _check_accept(self, request: Request, transaction: ServerTransaction) -> bool:
        accept = request.headers.get_list("accept")
        if accept and not any(item.split(";")[0].strip().lower() in ACCEPTABLE for item in accept):
            self.core.respond(transaction, request, 406, "Not Acceptable", [("Accept", CONTENT_TYPE)])
            return False
        return True

    def _mailbox(self, request: Request) -> tuple[str, str]:
        """The mailbox a SUBSCRIBE is for, and its account URI as the phone wrote it."""
        uri = parse_uri(request.uri)
        if not isinstance(uri, SipURI) or not uri.user:
            raise NotFound("no mailbox in the Request-URI", reason="No Such Mailbox")
        return unescape(uri.user), str(SipURI(uri.scheme, uri.user, None, uri.host, uri.port))

    def _expires(self, request: Request) -> int:
        """The granted duration (RFC 6665 §4.2.1.1): clamped, 423 below the minimum."""
        text = request.headers.get("expires")
        if text is None:
            return min(self.default_expires, self.max_expires)
        text = text.strip()
        if not text.isascii() or not text.isdigit():
            raise ParseError("bad Expires", reason="Bad Expires")
        expires = int(text) if len(text) <= _MAX_EXPIRES_TEXT else 2**32 - 1
        if 0 < expires < self.min_expires:
            raise IntervalTooBrief(self.min_expires)
        return min(expires, self.max_expires)

    def _accept(self, transaction: ServerTransaction, response: Response, dialog: Dialog, expires: int) -> None:
        """200 OK (RFC 6665 retired 202 for SUBSCRIBE), with our Contact and the granted Expires."""
        host = self.advertised_host(dialog.host)
        response.headers.add("Contact", self._contact(host, dialog.transport))
        response.headers.add("Expires", str(expires))
        transaction.respond(response)

    def _contact(self, host: str, transport: str) -> str:
        suffix = ";transport=tcp" if transport == "TCP" else ""
        return f"<sip:pbx@{host}:{self.sip_port}{suffix}>"

    # -- subscription state ----------------------------------------------------

    def _find(self, request: Request) -> Subscription | None:
        try:
            tag = request.to().tag
        except SIPError:
            return None
        return None if tag is None else self._subscriptions.get((request.call_id, tag))

    def _add(self, subscription: Subscription) -> None:
        key = subscription.dialog.key
        self._subscriptions[key] = subscription
        self._by_mailbox.setdefault(subscription.mailbox, {})[key] = subscription
        self._arm(subscription, subscription.expires_at - self.clock.seconds())

    def _arm(self, subscription: Subscription, delay: float) -> None:
        self._disarm(subscription)
        subscription.timer = self.clock.callLater(delay, self._expired, subscription)

    def _disarm(self, subscription: Subscription) -> None:
        timer, subscription.timer = subscription.timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _remove(self, subscription: Subscription) -> bool:
        """Forget a subscription; False when it was already gone."""
        key = subscription.dialog.key
        if self._subscriptions.get(key) is not subscription:
            return False
        del self._subscriptions[key]
        of_mailbox = self._by_mailbox.get(subscription.mailbox)
        if of_mailbox is not None:
            of_mailbox.pop(key, None)
            if not of_mailbox:
                del self._by_mailbox[subscription.mailbox]
        self._disarm(subscription)
        return True

    def _active(self, subscription: Subscription) -> bool:
        return self._subscriptions.get(subscription.dialog.key) is subscription

    def _expired(self, subscription: Subscription) -> None:
        subscription.timer = None
        if self._remove(subscription):
            self.log.info("message-summary subscription of {mailbox} expired", mailbox=subscription.mailbox)
            self._send(subscription, "terminated;reason=timeout", None)

    def _drop(self, subscription: Subscription, why: str) -> None:
        """The subscriber is gone (RFC 6665 §4.2.2): forget it without another NOTIFY."""
        if self._remove(subscription):
            self.log.info("message-summary subscription of {mailbox} dropped: {why}",
                          mailbox=subscription.mailbox, why=why)  # fmt: skip

    # -- NOTIFY ------------------------------------------------------------------

    def _current_counts(self, mailbox: str) -> Deferred[Counts | None]:
        """The mailbox's (new, old), or None (logged) when they cannot be read.

        Known counts are remembered: every change comes with voicemail.changed,
        so a phone refreshing its registration costs no database query.
        """
        known = self._latest.get(mailbox)
        if known is not None:
            return succeed(known)
        generation = self._generation.get(mailbox, 0)
        d = maybeDeferred(self.counts, mailbox)

        def got(result: object) -> Counts:
            if self._generation.get(mailbox, 0) != generation:
                return self._latest[mailbox]  # an event told newer counts while the query ran
            counts = _counts(result)
            self._latest[mailbox] = counts
            return counts

        def failed(failure: Any) -> None:
            self.log.failure("could not read the message counts of mailbox {mailbox}", failure,
                             level=LogLevel.error, mailbox=mailbox)  # fmt: skip
            return None

        d.addCallback(got)
        d.addErrback(failed)
        return d

    def _refresh_notify(self, subscription: Subscription) -> None:
        """The NOTIFY a new or refreshed subscription is owed at once (RFC 6665 §4.2.1).

        Without counts it still goes out, with no body, so the subscriber
        knows its subscription stands.
        """
        d = self._current_counts(subscription.mailbox)
        d.addCallback(lambda counts: self._notify(subscription, counts, always=True))
        d.addErrback(self._failed, subscription.mailbox)

    def _final_notify(self, subscription: Subscription, state: str) -> None:
        """The terminating NOTIFY of a fetch or an unsubscribe, with the current counts if known."""
        d = self._current_counts(subscription.mailbox)
        d.addCallback(lambda counts: self._send(subscription, state, counts))
        d.addErrback(self._failed, subscription.mailbox)

    def _notify(self, subscription: Subscription, counts: Counts | None, always: bool = False) -> None:
        """An active-state NOTIFY in the subscription's dialog, one transaction at a time."""
        if not self._active(subscription) or (counts is None and not always):
            return
        if subscription.sending:
            if counts is not None:
                subscription.queued = counts
            return
        remaining = max(0, int(subscription.expires_at - self.clock.seconds() + 0.5))
        self._send(subscription, f"active;expires={remaining}", counts, track=True)

    def _send(self, subscription: Subscription, state: str, counts: Counts | None, track: bool = False) -> None:
        dialog = subscription.dialog
        host = self.advertised_host(dialog.host)
        body = b"" if counts is None else build_summary(MessageSummary.of(subscription.account, *counts))
        request = dialog.request(
            "NOTIFY", host, self.sip_port, self._contact(host, dialog.transport),
            body=body, content_type=CONTENT_TYPE if body else None,
        )  # fmt: skip
        request.headers.add("Event", subscription.event)
        request.headers.add("Subscription-State", state)

        def on_response(response: Response) -> None:
            if response.status < 200:
                return
            if track:
                subscription.sending = False
            if response.status in ENDS_SUBSCRIPTION:
                self._drop(subscription, f"NOTIFY answered {response.status}")
            elif track and subscription.queued is not None:
                queued, subscription.queued = subscription.queued, None
                self._notify(subscription, queued)

        def on_timeout() -> None:
            if track:
                subscription.sending = False
            self._drop(subscription, "NOTIFY timed out")

        if track:
            subscription.sending = True
        self._start(request, dialog.transport, dialog.host, dialog.port, on_response, on_timeout)

    def _start(self, request: Request, transport: str, host: str, port: int,
               on_response: Callable[[Response], None], on_timeout: Callable[[], None]) -> None:
        try:
            self.core.transactions.create_client(
                request, self.core.sender(transport, host, port), transport != "UDP", on_response, on_timeout,
            )  # fmt: skip
        except ValueError:
            self.log.warn("could not start a NOTIFY transaction to {host}:{port}", host=host, port=port)
            on_timeout()

    def _unsolicited(self, mailbox: str, binding: Binding, counts: Counts) -> None:
        """A NOTIFY outside any dialog to a registered contact (the Asterisk/FreeSWITCH way)."""
        host = self.advertised_host(binding.source_host)
        account = f"sip:{mailbox}@{host}"
        transport = binding.transport
        headers = Headers()
        headers.add("Via", f"SIP/2.0/{transport} {host}:{self.sip_port};branch={new_branch()};rport")
        headers.add("Max-Forwards", "70")
        headers.add("From", f"<{account}>;tag={new_tag()}")
        headers.add("To", f"<{account}>")
        headers.add("Call-ID", new_call_id(host))
        headers.add("CSeq", "1 NOTIFY")
        headers.add("Contact", self._contact(host, transport))
        headers.add("Event", EVENT)
        headers.add("Subscription-State", "active")
        headers.add("Content-Type", CONTENT_TYPE)
        body = build_summary(MessageSummary.of(account, *counts))
        request = Request("NOTIFY", binding.contact, headers, body)
        self._start(request, transport, binding.source_host, binding.source_port, lambda response: None, lambda: None)

    def _subscribed(self, binding: Binding, subscriptions: list[Subscription]) -> bool:
        """Whether a registered contact already has a subscription (same contact URI or same socket)."""
        source = (binding.transport, binding.source_host, binding.source_port)
        for subscription in subscriptions:
            dialog = subscription.dialog
            if dialog.remote_target == binding.contact or (dialog.transport, dialog.host, dialog.port) == source:
                return True
        return False

    def _publish(self, mailbox: str, counts: Counts) -> None:
        """Tell every subscriber of the mailbox, and every registered phone that did not subscribe."""
        if self._stopped:
            return
        subscriptions = list(self._by_mailbox.get(mailbox, {}).values())
        for subscription in subscriptions:
            self._notify(subscription, counts)
        for binding in self.location.lookup(mailbox):
            if not self._subscribed(binding, subscriptions):
                self._unsolicited(mailbox, binding, counts)

    def notify_mailbox(self, mailbox: str) -> Deferred[None]:
        """Read the mailbox's counts and NOTIFY its subscribers and registered phones.

        Never fails: a counts source that does (the database is down) is
        logged and nobody is told anything.
        """
        if self._stopped or not (self._by_mailbox.get(mailbox) or self.location.lookup(mailbox)):
            return succeed(None)
        d = self._current_counts(mailbox)
        d.addCallback(lambda counts: None if counts is None else self._publish(mailbox, counts))
        d.addErrback(self._failed, mailbox)
        return d

    def _failed(self, failure: Any, mailbox: str) -> None:
        """The last stop of every NOTIFY chain: a bug is logged, never left in a Deferred."""
        self.log.failure("message-waiting notification for {mailbox} failed", failure, mailbox=mailbox)

    # -- events --------------------------------------------------------------------

    def _voicemail_changed(self, name: str, fields: dict[str, Any]) -> None:
        mailbox = fields.get("mailbox")
        if not isinstance(mailbox, str) or not self.is_mailbox(mailbox):
            return
        try:
            counts = _counts((fields.get("new"), fields.get("old")))
        except (TypeError, ValueError):
            self.log.warn("{event} for {mailbox} without usable counts; reading them", event=name, mailbox=mailbox)
            self._latest.pop(mailbox, None)
            self.notify_mailbox(mailbox)
            return
        self._generation[mailbox] = self._generation.get(mailbox, 0) + 1
        self._latest[mailbox] = counts
        self._publish(mailbox, counts)

    def _registration_event(self, name: str, fields: dict[str, Any]) -> None:
        aor = fields.get("aor")
        if isinstance(aor, str) and self.is_mailbox(aor):
            self.notify_mailbox(aor)

    # -- the end -------------------------------------------------------------------

    def stop(self) -> None:
        """On shut-down: end every subscription with a NOTIFY and stop listening to events.

        The reason asks phones to subscribe again later rather than at once.
        """
        if self._stopped:
            return
        self._stopped = True
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        for subscription in list(self._subscriptions.values()):
            self._remove(subscription)
            self._send(subscription, f"terminated;reason=probation;retry-after={SHUTDOWN_RETRY_AFTER}", None)
