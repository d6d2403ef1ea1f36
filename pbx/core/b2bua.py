"""Call control: a back-to-back user agent connecting two extensions.

A call is leg A (the caller's INVITE, answered by the PBX as a UAS) and leg B
(one client INVITE per registered contact of the callee: parallel forking;
hunt groups try members in turn). Each leg has its own dialog (Call-ID, tags,
CSeq) and its own side of a media session in the RTP relay, so the phones
only ever see the PBX. SIP results map to the caller's final response in one
table (`caller_status`); every call ends in exactly one call record.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from pbx.apps.session import CallEnded, EndpointSession

from pbx.core.auth import DigestGate
from pbx.core.cdr import CallRecord
from pbx.core.dialplan import AttendantTarget, ExtensionTarget, GroupTarget, NotFound, VoicemailTarget
from pbx.core.events import EventBus
from pbx.core.location import Binding, LocationService
from pbx.media.endpoint import usable_ptime
from pbx.media.portpool import NoPortsAvailable
from pbx.sip.digest import DigestAuthenticator
from pbx.sip.dialog import Dialog, new_call_id, new_tag, uas_dialog, update_from_response
from pbx.sip.errors import ServiceUnavailable, SIPError, TooManyHops
from pbx.sip.errors import NotFound as SIPNotFound
from pbx.sip.headers import quote_string
from pbx.sip.message import Headers, Request, Response
from pbx.sip.sdp import (
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
from pbx.sip.transaction import ServerTransaction, new_branch
from pbx.sip.transport import Peer
from pbx.sip.uri import SipURI, parse_uri, unescape
from pbx.sip.validate import max_forwards

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, REGISTER"
RELAYED_IN_DIALOG = frozenset({"INVITE", "OPTIONS", "INFO", "UPDATE", "MESSAGE", "NOTIFY", "REFER"})


class Unavailable(SIPError):
    status = 480
    reason = "Temporarily Unavailable"


class BusyHere(SIPError):
    status = 486
    reason = "Busy Here"


class NotAcceptableHere(SIPError):
    status = 488
    reason = "Not Acceptable Here"


class ProxyAuthRequired(SIPError):
    status = 407
    reason = "Proxy Authentication Required"


def caller_status(statuses: list[int]) -> tuple[int, str, str]:
    """The caller's final answer when every fork failed: (status, reason, cause).

    | forks answered                 | caller gets              | cause          |
    |--------------------------------|--------------------------|----------------|
    | any 603 / 6xx decline          | 603 Decline              | declined       |
    | any 486 / 600 busy             | 486 Busy Here            | busy           |
    | anything else (timeouts, 5xx)  | 480 Temporarily Unavail. | not-reachable  |
    """
    if any(s == 603 or (600 <= s < 700 and s != 600) for s in statuses):
        return 603, "Decline", "declined"
    if any(s in (486, 600) for s in statuses):
        return 486, "Busy Here", "busy"
    return 480, "Temporarily Unavailable", "not-reachable"


@dataclass(eq=False)
class Fork:
    """One outgoing INVITE of leg B, to one registered contact.

    It does not keep its client transaction: the transaction's callbacks hold
    the fork, and a cycle would leave every ended call to the garbage collector.
    """

    binding: Binding
    member: str
    request: Request
    dialog: Dialog | None = None
    provisional: bool = False
    final: int | None = None
    cancel_pending: bool = False
    cancelled: bool = False


@dataclass(eq=False)
class Call:
    id: str
    record: CallRecord
    a_request: Request
    a_offer: SessionDescription  # the caller's SDP offer (a_request's body), parsed once
    a_transaction: ServerTransaction
    a_dialog: Dialog
    media: Any
    b_call_id: str
    b_tag: str
    b_from: str
    b_to: str
    a_origin: Origin
    b_origin: Origin
    caller: str
    targets: list[tuple[str, list[str]]]  # (member, ...) hunt stages: [(label, members)]
    ring_timeout: float | None = None
    state: str = "ringing"  # ringing, answered, ended
    forks: list[Fork] = field(default_factory=list)
    b_dialog: Dialog | None = None
    winner: Fork | None = None
    ringing_sent: bool = False
    a_acked: bool = False
    pending: Any = None  # an in-dialog INVITE being relayed: (origin side, server transaction)
    timers: dict[str, Any] = field(default_factory=dict)
    retransmit: Any = None
    voicemail_box: str | None = None  # where the call goes when nobody answers
    app: Any = None  # the media application answering leg A (voicemail, attendant)
    session: EndpointSession | None = None  # while the application owns leg A
    outcome: tuple[str, str] | None = None  # (disposition, cause) of an application call
    a_answer: bytes | None = None  # the PBX's own SDP answer to A (application calls)
    connecting: Deferred[bool] | None = None  # the application hands the caller over: ringing B
    pending_media: Any = None  # the relay session B rings on until B answers


@dataclass
class Plan:
    """What a dialled number leads to: phones to ring, or an application answering."""

    stages: list[tuple[str, list[str]]] = field(default_factory=list)
    ring_timeout: float | None = None
    media: Any = None
    app: Any = None
    outcome: tuple[str, str] | None = None
    answered_by: str | None = None
    voicemail_box: str | None = None
    answer: bytes | None = None  # the application's SDP answer


class B2BUA:
    log = Logger()

    def __init__(
        self,
        core: Any,
        authenticator: DigestAuthenticator,
        location: LocationService,
        dialplan: Any,
        relay: Any,
        cdr: Any,
        events: EventBus,
        clock: Any,
        *,
        sip_host: str,
        sip_port: int,
        external_ip: str | None = None,
        no_answer_timeout: float = 30,
        max_call_duration: float = 14400,
        rtp_timeout: float = 60,
        max_calls_per_extension: int = 0,
        allow_unauthenticated: Callable[[str], bool] = lambda number: False,
        lookup_ha1: Callable[[str, str], str | None] | None = None,
        t1: float = 0.5,
        t2: float = 4.0,
        applications: Any = None,
        endpoints: Callable[[str], Any] | None = None,
        voicemail_timeout: float | None = None,
    ) -> None:
        self.core = core
        self.location = location
        self.dialplan = dialplan
        self.relay = relay
        self.cdr = cdr
        self.events = events
        self.clock = clock
        self.sip_host = sip_host
        self.sip_port = sip_port
        self.external_ip = external_ip
        self.no_answer_timeout = no_answer_timeout
        self.max_call_duration = max_call_duration
        self.rtp_timeout = rtp_timeout
        self.max_calls_per_extension = max_calls_per_extension
        self.allow_unauthenticated = allow_unauthenticated
        self.gate = DigestGate(core, authenticator, lookup_ha1 or (lambda user, algorithm: None))
        self.t1 = t1
        self.t2 = t2
        #: `pbx.apps.router.Applications`: voicemail, attendant, music on hold (None: calls only).
        self.applications = applications
        #: Makes a `MediaEndpoint` advertising the given address (NoPortsAvailable when none).
        self.endpoints = endpoints
        self.voicemail_timeout = voicemail_timeout
        self._running: set[Deferred[None]] = set()  # applications still at work (e.g. saving a message)
        self.calls: dict[str, Call] = {}
        self._dialogs: dict[tuple[str, str], tuple[Call, str]] = {}
        self._by_invite: dict[int, Call] = {}
        self._local_addresses: dict[str, str] = {}
        self.totals: dict[str, int] = {}
        core.register_handler("INVITE", self.invite_received)
        core.dialog_handler = self.in_dialog_request
        core.ack_handler = self.ack_received
        core.cancel_handler = self.cancel_received

    # -- addresses -------------------------------------------------------

    def advertised_host(self, peer_host: str) -> str:
        """The address phones should send to: external_ip, the bind address,
        or the local address the kernel would use towards this peer."""
        if self.external_ip:
            return self.external_ip
        if self.sip_host not in ("0.0.0.0", "::", ""):
            return self.sip_host
        address = self._local_addresses.get(peer_host)
        if address is None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                try:
                    probe.connect((peer_host, 9))  # no packet is sent
                    address = probe.getsockname()[0]
                except OSError:
                    address = "127.0.0.1"
            self._local_addresses[peer_host] = address
        return address

    def contact(self, host: str, transport: str = "UDP") -> str:
        suffix = ";transport=tcp" if transport == "TCP" else ""
        return f"<sip:pbx@{host}:{self.sip_port}{suffix}>"

    # -- new calls ---------------------------------------------------------

    def authenticate(self, request: Request, transaction: ServerTransaction, number: str) -> str | None:
        """The caller, or None once a 407 has been sent (Forbidden for wrong credentials)."""
        if request.headers.get("proxy-authorization") is None and self.allow_unauthenticated(number):
            from_uri = request.from_().uri
            return unescape(from_uri.user) if isinstance(from_uri, SipURI) and from_uri.user else "anonymous"
        return self.gate.check(request, transaction, proxy=True)

    def active_calls_of(self, extension: str) -> int:
        return sum(
            1 for c in self.calls.values()
            if extension in (c.caller, c.record.callee, c.record.answered_by)
        )  # fmt: skip

    def invite_received(self, request: Request, transaction: ServerTransaction, peer: Peer) -> None:
        uri = parse_uri(request.uri)
        if not isinstance(uri, SipURI) or not uri.user:
            raise SIPNotFound("no number in the Request-URI", reason="Not Found")
        number = unescape(uri.user)
        caller = self.authenticate(request, transaction, number)
        if caller is None:
            return
        if max_forwards(request) == 0:
            raise TooManyHops("Max-Forwards reached zero")
        content_type = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        if not request.body or content_type != "application/sdp":
            raise NotAcceptableHere("an SDP offer is required", reason="SDP Offer Required")
        try:
            offer = SessionDescription.parse(request.body)
        except SDPError as error:
            raise NotAcceptableHere(str(error), reason="Bad SDP") from None
        from_ = request.from_()
        record = CallRecord.begin(request.call_id, caller, number, self.clock.seconds(), from_.display or "")
        try:
            plan = self._plan(caller, number, offer, peer.host)
        except SIPError as error:
            # Refused attempts leave a record too (who tried to call whom, and why not).
            cause = {404: "not-found", 480: "not-registered", 486: "busy", 503: "no-ports"}.get(error.status, "rejected")
            record.finish(record.start, "failed" if error.status != 486 else "busy", cause, "pbx")
            self._account(cause)
            self.cdr.close_call(record).addErrback(
                lambda f: self.log.failure("could not write the record of call {call}", f, call=record.call_id)
            )
            raise
        self._start_call(request, transaction, peer, caller, number, offer, record, plan)

    def _plan(self, caller: str, number: str, offer: SessionDescription, peer_host: str) -> Plan:
        """Who to ring, in which stages, and the media session; SIPError when nobody."""
        route = self.dialplan.route(number, caller)
        if isinstance(route, NotFound):
            raise SIPNotFound(route.reason, reason=_reason_phrase(route.reason, "Not Found"))
        apps = self.applications
        if isinstance(route, VoicemailTarget):
            if apps is None or self.endpoints is None:
                raise Unavailable("voicemail is not configured", reason="Voicemail Not Available")
            return self._app_plan(caller, number, offer, peer_host, apps.access(route.mailbox),
                                  ("answered", "voicemail-access"), "voicemail")
        if isinstance(route, AttendantTarget):
            app = apps.attendant() if apps is not None and self.endpoints is not None else None
            if app is None:
                raise SIPNotFound("the auto attendant is not configured", reason="Auto Attendant Not Available")
            return self._app_plan(caller, number, offer, peer_host, app, ("answered", "attendant"), "attendant")
        voicemail_box = None
        assert isinstance(route, (GroupTarget, ExtensionTarget))
        stages, ring_timeout = _stages(route)
        if isinstance(route, ExtensionTarget):
            if apps is not None and self.endpoints is not None and apps.voicemail_enabled(route.number):
                voicemail_box = route.number
        if not any(self.location.lookup(m) for _, members in stages for m in members):
            if voicemail_box is not None:
                return self._app_plan(caller, number, offer, peer_host, apps.deposit(voicemail_box),
                                      ("missed", "voicemail-not-registered"), None)
            raise Unavailable("callee not registered", reason="Not Registered")
        self._check_limit(caller, number)
        try:
            media = self.relay.create_session()
        except NoPortsAvailable:
            self.log.warn("no free RTP ports for a call from {caller} to {number}", caller=caller, number=number)
            raise ServiceUnavailable("no free media ports", reason="No Media Ports") from None
        return Plan(stages, ring_timeout, media, voicemail_box=voicemail_box)

    def _app_plan(self, caller: str, number: str, offer: SessionDescription, peer_host: str, app: Any,
                  outcome: tuple[str, str], answered_by: str | None) -> Plan:
        """An application answers at once (voicemail, the attendant)."""
        self._check_limit(caller, number)
        endpoint, answer = self._endpoint(offer, peer_host)
        return Plan(app=app, outcome=outcome, answered_by=answered_by, media=endpoint, answer=answer)

    def _check_limit(self, caller: str, number: str) -> None:
        limit = self.max_calls_per_extension
        if limit and self.active_calls_of(caller) >= limit:
            raise BusyHere("caller has too many calls", reason="Too Many Calls")

    def _endpoint(self, offer: SessionDescription, peer_host: str) -> tuple[Any, bytes]:
        """A media endpoint and its answer to `offer`; 503 without ports, 488 without a common codec."""
        assert self.endpoints is not None
        try:
            endpoint = self.endpoints(self.advertised_host(peer_host))
        except NoPortsAvailable:
            raise ServiceUnavailable("no free media ports", reason="No Media Ports") from None
        try:
            answer = endpoint.answer(offer)
        except SDPError as error:
            endpoint.close()
            raise NotAcceptableHere(str(error), reason="Incompatible Media") from None
        return endpoint, answer

    def _start_call(self, request: Request, transaction: ServerTransaction, peer: Peer, caller: str, number: str,
                    offer: SessionDescription, record: CallRecord, plan: Plan) -> None:
        self.core.respond(transaction, request, 100, "Trying")
        host = self.advertised_host(peer.host)
        call_id = record.call_id
        display = record.caller_name
        a_dialog = uas_dialog(request, new_tag(), peer.host, peer.port, peer.transport)
        b_tag = new_tag()
        name = f"{quote_string(display)} " if display else ""
        call = Call(
            id=call_id,
            record=record,
            a_request=request,
            a_offer=offer,
            a_transaction=transaction,
            a_dialog=a_dialog,
            media=plan.media,
            b_call_id=new_call_id(host),
            b_tag=b_tag,
            b_from=f"{name}<sip:{caller}@{host}>",
            b_to=f"<sip:{number}@{host}>",
            a_origin=Origin(address=host),
            b_origin=Origin(address=host),
            caller=caller,
            targets=plan.stages,
            ring_timeout=plan.ring_timeout,
            voicemail_box=plan.voicemail_box,
        )
        self.calls[call_id] = call
        self._dialogs[a_dialog.key] = (call, "a")
        self._dialogs[(call.b_call_id, b_tag)] = (call, "b")
        self._by_invite[id(transaction)] = call
        self._start_cdr(call)
        self.events.emit("call.incoming", **record.as_event())
        if plan.app is not None:
            self._answer_with_app(call, plan.media, plan.answer, plan.app, plan.outcome, plan.answered_by)
            return
        call.media.leg_a.set_remote(*_media_address(offer, peer.host))
        timeout = self.no_answer_timeout
        if call.voicemail_box is not None and self.voicemail_timeout:
            timeout = self.voicemail_timeout
        if timeout:
            call.timers["no_answer"] = self.clock.callLater(timeout, self._no_answer, call)
        self._next_stage(call)

    def _next_stage(self, call: Call) -> bool:
        """Ring the next set of members; False when none is left."""
        while call.targets:
            label, members = call.targets.pop(0)
            bindings = [(m, b) for m in members for b in self.location.lookup(m)]
            if not bindings:
                continue
            if call.ring_timeout:
                stage_timer = call.timers.pop("stage", None)
                if stage_timer is not None and stage_timer.active():
                    stage_timer.cancel()
                call.timers["stage"] = self.clock.callLater(call.ring_timeout, self._stage_timeout, call)
            for member, binding in bindings:
                self._fork(call, member, binding)
            return True
        return False

    def _fork(self, call: Call, member: str, binding: Binding) -> None:
        host = self.advertised_host(binding.source_host)
        if call.connecting is not None:
            # A caller handed over by an application already has its codec: offer B exactly that.
            offer, media = SessionDescription.parse(call.a_answer), call.pending_media
        else:
            offer, media = call.a_offer, call.media
        body = rewrite_for_relay(offer, host, [media.leg_b.rtp_port], call.b_origin)
        headers = Headers()
        transport = binding.transport
        headers.add("Via", f"SIP/2.0/{transport} {host}:{self.sip_port};branch={new_branch()};rport")
        headers.add("Max-Forwards", str(max(1, min(70, max_forwards(call.a_request) - 1))))
        headers.add("From", f"{call.b_from};tag={call.b_tag}")
        headers.add("To", call.b_to)
        headers.add("Call-ID", call.b_call_id)
        headers.add("CSeq", "1 INVITE")
        headers.add("Contact", self.contact(host, transport))
        headers.add("Allow", ALLOW)
        headers.add("Content-Type", "application/sdp")
        request = Request("INVITE", binding.contact, headers, body)
        fork = Fork(binding, member, request)
        call.forks.append(fork)
        send = self.core.sender(transport, binding.source_host, binding.source_port)
        self.core.transactions.create_client(
            request, send, transport != "UDP",
            lambda response, f=fork: self._fork_response(call, f, response),
            lambda f=fork: self._fork_failed(call, f, 408),
            on_transport_error=lambda f=fork: self._fork_failed(call, f, 503),
        )  # fmt: skip

    # -- leg B responses ---------------------------------------------------

    def _fork_response(self, call: Call, fork: Fork, response: Response) -> None:
        status = response.status
        if status < 200:
            if status == 100:
                return
            fork.provisional = True
            if fork.cancel_pending:
                self._send_cancel(fork)
                return
            if call.state != "ringing":
                return
            self._early(call, fork, response)
            return
        if status < 300:
            self._fork_answered(call, fork, response)
            return
        self._fork_failed(call, fork, status)

    def _early(self, call: Call, fork: Fork, response: Response) -> None:
        """Relay 180, or 183 with early media, to the caller."""
        if response.body and response.status == 183:
            try:
                answer = SessionDescription.parse(response.body)
            except SDPError:
                return
            call.media.leg_b.set_remote(*_media_address(answer, fork.binding.source_host))
            reply = self._a_response(call, 183, "Session Progress")
            reply.body = rewrite_for_relay(answer, call.a_origin.address, [call.media.leg_a.rtp_port], call.a_origin)
            reply.headers.add("Content-Type", "application/sdp")
            call.a_transaction.respond(reply)
            call.ringing_sent = True
        elif not call.ringing_sent:
            call.ringing_sent = True
            call.a_transaction.respond(self._a_response(call, 180, "Ringing"))

    def _a_response(self, call: Call, status: int, reason: str) -> Response:
        response = self.core.response(call.a_request, status, reason)
        to = call.a_request.headers.get("to") or ""
        response.headers.set("To", f"{to};tag={call.a_dialog.local_tag}")
        if 100 < status < 300:
            response.headers.add("Contact", self.contact(call.a_origin.address, call.a_dialog.transport))
            response.headers.add("Allow", ALLOW)
        return response

    def _fork_answered(self, call: Call, fork: Fork, response: Response) -> None:
        dialog = Dialog(
            call_id=call.b_call_id,
            local_tag=call.b_tag,
            local_uri=call.b_from,
            remote_uri=call.b_to,
            local_cseq=1,
            transport=fork.binding.transport,
            host=fork.binding.source_host,
            port=fork.binding.source_port,
            remote_target=fork.binding.contact,
        )
        update_from_response(dialog, response)
        self._ack(dialog, 1)
        if (call.state != "ringing" and call.connecting is None) or call.winner is not None:
            # A second fork answered too late, or the caller gave up: hang it up.
            self._bye(dialog)
            return
        fork.final = response.status
        try:
            answer = SessionDescription.parse(response.body)
        except SDPError:
            self._bye(dialog)
            self._fork_failed(call, fork, 488)
            return
        call.winner = fork
        call.b_dialog = dialog
        for other in call.forks:
            if other is not fork:
                self._cancel_fork(other)
        if call.connecting is not None:
            self._connected(call, fork, answer)
            return
        call.state = "answered"
        call.media.leg_b.set_remote(*_media_address(answer, fork.binding.source_host))
        reply = self._a_response(call, 200, "OK")
        reply.body = rewrite_for_relay(answer, call.a_origin.address, [call.media.leg_a.rtp_port], call.a_origin)
        reply.headers.add("Content-Type", "application/sdp")
        call.record.answer = self.clock.seconds()
        call.record.answered_by = fork.member
        self._cancel_timer(call, "no_answer")
        self._cancel_timer(call, "stage")
        self._send_2xx(call, call.a_transaction, reply, lambda: self._no_ack(call))
        self._update_cdr(call)

    def _fork_failed(self, call: Call, fork: Fork, status: int) -> None:
        if fork.final is not None:
            return
        fork.final = status
        if call.state != "ringing" and call.connecting is None:
            return
        if any(f.final is None for f in call.forks):
            return
        if call.targets and self._next_stage(call):
            return
        if call.connecting is not None:
            self._connect_failed(call)
            return
        code, reason, cause = caller_status([f.final or 480 for f in call.forks])
        if call.voicemail_box is not None and status != 487:
            self._divert(call, code, reason, cause)
            return
        self._fail(call, code, reason, cause)

    def _stage_timeout(self, call: Call) -> None:
        call.timers.pop("stage", None)
        if call.state != "ringing" and call.connecting is None:
            return
        for fork in call.forks:
            self._cancel_fork(fork)
        if self._next_stage(call):
            return
        if call.connecting is not None:
            self._connect_failed(call)
        else:
            self._fail(call, 408, "Request Timeout", "no-answer", disposition="missed")

    def _no_answer(self, call: Call) -> None:
        call.timers.pop("no_answer", None)
        if call.state != "ringing":
            return
        for fork in call.forks:
            self._cancel_fork(fork)
        if call.voicemail_box is not None:
            self._divert(call, 408, "Request Timeout", "no-answer")
        else:
            self._fail(call, 408, "Request Timeout", "no-answer", disposition="missed")

    def _fail(self, call: Call, status: int, reason: str, cause: str, disposition: str | None = None) -> None:
        if call.state == "ended":
            return
        call.a_transaction.respond(self._a_response(call, status, reason))
        if disposition is None:
            disposition = {486: "busy", 603: "missed", 487: "cancelled"}.get(status, "failed")
            if status in (408, 480) and cause in ("no-answer",):
                disposition = "missed"
        self._end(call, disposition, cause, "pbx" if status != 486 else "callee")

    # -- media applications ------------------------------------------------

    def _divert(self, call: Call, status: int, reason: str, cause: str) -> None:
        """Nobody took the call: the callee's voicemail answers instead (else the caller gets `status`)."""
        box, call.voicemail_box = call.voicemail_box, None
        assert box is not None and self.applications is not None
        for fork in call.forks:
            self._cancel_fork(fork)
        try:
            endpoint, answer = self._endpoint(call.a_offer, call.a_dialog.host)
        except SIPError as error:
            self.log.warn("voicemail of {box} cannot answer: {error}", box=box, error=str(error))
            self._fail(call, status, reason, cause, disposition="missed" if cause == "no-answer" else None)
            return
        relay, call.media = call.media, None
        if relay is not None:
            relay.close()
        self._answer_with_app(call, endpoint, answer, self.applications.deposit(box), ("missed", f"voicemail-{cause}"),
                              None)

    def _answer_with_app(self, call: Call, endpoint: Any, answer: bytes, app: Any, outcome: tuple[str, str] | None,
                         answered_by: str | None) -> None:
        """The PBX answers leg A itself; the application starts once A has ACKed."""
        call.media = endpoint
        call.app = app
        call.outcome = outcome
        call.a_answer = answer
        call.state = "answered"
        call.record.answer = self.clock.seconds()
        call.record.answered_by = answered_by
        self._cancel_timer(call, "no_answer")
        self._cancel_timer(call, "stage")
        reply = self._a_response(call, 200, "OK")
        reply.body = answer
        reply.headers.add("Content-Type", "application/sdp")
        self._send_2xx(call, call.a_transaction, reply, lambda: self._no_ack(call))
        self._update_cdr(call)

    def _run_app(self, call: Call) -> None:
        session = EndpointSession(
            call.media, self.clock,
            caller=call.caller, caller_name=call.record.caller_name, dialled=call.record.callee, call_id=call.id,
            connect=lambda number: self._connect(call, number),
            hangup=lambda: self._hangup(call, "normal"),
            ringback=self.applications.ringback() if self.applications is not None else None,
        )  # fmt: skip
        call.session = session

        def finished(result: object) -> None:
            if isinstance(result, Failure) and not result.check(CallEnded):
                self.log.failure("the application of call {call} failed", result, call=call.id)
            if call.session is session:
                call.session = None
                if call.state == "answered":
                    self._hangup(call, "normal")

        running = ensureDeferred(call.app(session))
        running.addBoth(finished)
        self._running.add(running)
        running.addBoth(lambda _: self._running.discard(running))

    def _app_request(self, call: Call, request: Request, transaction: ServerTransaction) -> None:
        """An in-dialog request from a caller whose leg the PBX terminates itself."""
        endpoint = call.media
        method = request.method
        content_type = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        if method == "INFO":
            known = endpoint.info_received(content_type, request.body or b"")
            self.core.respond(transaction, request, 200 if known else 415, "OK" if known else "Unsupported Media Type")
        elif method in ("INVITE", "UPDATE") and request.body and content_type == "application/sdp":
            try:
                answer = endpoint.answer(SessionDescription.parse(request.body))
            except SDPError:
                self.core.respond(transaction, request, 488, "Not Acceptable Here")
                return
            call.a_answer = answer
            reply = self.core.response(request, 200, "OK")
            reply.headers.add("Contact", self.contact(call.a_origin.address, call.a_dialog.transport))
            reply.body = answer
            reply.headers.add("Content-Type", "application/sdp")
            if method == "INVITE":
                self._send_2xx(call, transaction, reply, lambda: None)
            else:
                transaction.respond(reply)
        elif method in ("OPTIONS", "INVITE", "UPDATE"):
            self.core.respond(transaction, request, 200, "OK", [("Allow", ALLOW)])
        else:
            self.core.respond(transaction, request, 405, "Method Not Allowed", [("Allow", ALLOW)])

    def _connect(self, call: Call, number: str) -> Deferred[bool]:
        """Ring `number` for a caller an application holds; True once B answered and the media is handed over."""
        if call.state != "answered" or call.b_dialog is not None or call.connecting is not None:
            return succeed(False)
        route = self.dialplan.route(number, call.caller)
        if not isinstance(route, (GroupTarget, ExtensionTarget)):
            return succeed(False)
        stages, ring_timeout = _stages(route)
        if not any(self.location.lookup(m) for _, members in stages for m in members):
            return succeed(False)
        try:
            call.pending_media = self.relay.create_session()
        except NoPortsAvailable:
            return succeed(False)
        # A fresh B dialog for every attempt: a phone that refused the last one must not see a merged request.
        host = call.b_origin.address
        self._dialogs.pop((call.b_call_id, call.b_tag), None)
        call.b_call_id, call.b_tag, call.b_to = new_call_id(host), new_tag(), f"<sip:{number}@{host}>"
        self._dialogs[(call.b_call_id, call.b_tag)] = (call, "b")
        call.forks, call.targets, call.ring_timeout = [], stages, ring_timeout
        connecting: Deferred[bool] = Deferred()
        call.connecting = connecting
        if self.no_answer_timeout:
            call.timers["connect"] = self.clock.callLater(self.no_answer_timeout, self._connect_timeout, call)
        if not self._next_stage(call):
            self._connect_failed(call)
        return connecting

    def _connect_timeout(self, call: Call) -> None:
        call.timers.pop("connect", None)
        if call.connecting is not None:
            self._connect_failed(call)

    def _connect_failed(self, call: Call) -> None:
        self._cancel_timer(call, "connect")
        self._cancel_timer(call, "stage")
        for fork in call.forks:
            self._cancel_fork(fork)
        media, call.pending_media = call.pending_media, None
        if media is not None:
            media.close()
        connecting, call.connecting = call.connecting, None
        if connecting is not None:
            connecting.callback(False)

    def _connected(self, call: Call, fork: Fork, answer: SessionDescription) -> None:
        """B answered a caller an application held: B's relay leg A takes over the endpoint's sockets."""
        self._cancel_timer(call, "connect")
        self._cancel_timer(call, "stage")
        media, call.pending_media = call.pending_media, None
        media.leg_b.set_remote(*_media_address(answer, fork.binding.source_host))
        endpoint, call.media = call.media, media
        media.leg_a.adopt(endpoint.detach())
        call.record.answered_by = fork.member
        call.outcome = None
        call.session = None  # the application is done with this caller
        connecting, call.connecting = call.connecting, None
        self._update_cdr(call)
        if connecting is not None:
            connecting.callback(True)

    # -- CANCEL ------------------------------------------------------------

    def cancel_received(self, invite: ServerTransaction, cancel: Request) -> None:
        call = self._by_invite.get(id(invite))
        if call is None or call.state != "ringing":
            return
        call.a_transaction.respond(self._a_response(call, 487, "Request Terminated"))
        self._end(call, "cancelled", "caller-cancel", "caller")
        for fork in call.forks:
            self._cancel_fork(fork)

    def _cancel_fork(self, fork: Fork) -> None:
        """Give up on a fork: it counts as finished now, and gets a CANCEL."""
        if fork.final is not None or fork.cancelled:
            return
        fork.final = 487
        if not fork.provisional:
            fork.cancel_pending = True  # RFC 3261 §9.1: only after a provisional
            return
        self._send_cancel(fork)

    def _send_cancel(self, fork: Fork) -> None:
        if fork.cancelled:
            return
        fork.cancelled = True
        invite = fork.request
        headers = Headers()
        headers.add("Via", invite.headers.get("via") or "")
        headers.add("Max-Forwards", "70")
        for name in ("From", "To", "Call-ID"):
            headers.add(name, invite.headers.get(name) or "")
        headers.add("CSeq", f"{invite.cseq.number} CANCEL")
        cancel = Request("CANCEL", invite.uri, headers)
        binding = fork.binding
        try:
            self.core.transactions.create_client(
                cancel, self.core.sender(binding.transport, binding.source_host, binding.source_port),
                binding.transport != "UDP", lambda response: None, lambda: None,
            )  # fmt: skip
        except ValueError:
            pass

    # -- ACK, BYE and other in-dialog requests -----------------------------

    def _find(self, request: Request) -> tuple[Call, str] | None:
        to = request.to()
        if not to.tag:
            return None
        return self._dialogs.get((request.call_id, to.tag))

    def ack_received(self, request: Request, peer: Peer) -> None:
        try:
            found = self._find(request)
        except SIPError:
            return
        if found is None:
            return
        call, side = found
        if side == "a" and call.retransmit is not None:
            self._stop_retransmit(call)
            if not call.a_acked:
                call.a_acked = True
                self._call_up(call)

    def _call_up(self, call: Call) -> None:
        if call.outcome is None or call.outcome[0] == "answered":
            self.events.emit("call.answered", **call.record.as_event())
        if call.app is not None:
            self._run_app(call)
        if self.max_call_duration:
            call.timers["max_duration"] = self.clock.callLater(self.max_call_duration, self._hangup, call, "max-duration")
        if self.rtp_timeout:
            call.timers["rtp"] = self.clock.callLater(self.rtp_timeout, self._check_rtp, call)

    def _check_rtp(self, call: Call) -> None:
        call.timers.pop("rtp", None)
        if call.state != "answered":
            return
        idle = self.clock.seconds() - max(call.media.last_activity or 0, call.record.answer or 0)
        if idle >= self.rtp_timeout:
            self._hangup(call, "rtp-timeout")
        else:
            call.timers["rtp"] = self.clock.callLater(self.rtp_timeout - idle, self._check_rtp, call)

    def in_dialog_request(self, request: Request, transaction: ServerTransaction, peer: Peer) -> None:
        found = self._find(request)
        if found is None:
            self.core.respond(transaction, request, 481, "Call/Transaction Does Not Exist")
            return
        call, side = found
        dialog = call.a_dialog if side == "a" else call.b_dialog
        if dialog is None:
            self.core.respond(transaction, request, 481, "Call/Transaction Does Not Exist")
            return
        if not dialog.check_remote_cseq(request):
            self.core.respond(transaction, request, 500, "CSeq Out of Order")
            return
        if side == "a" and call.app is not None and call.b_dialog is None and request.method != "BYE":
            self._app_request(call, request, transaction)
            return
        if request.method == "BYE":
            self.core.respond(transaction, request, 200, "OK")
            other = call.b_dialog if side == "a" else call.a_dialog
            if other is not None:
                self._bye(other)
            self._end(call, "answered", "normal", "caller" if side == "a" else "callee")
            return
        if request.method not in RELAYED_IN_DIALOG or call.state != "answered":
            raise_method = request.method != "INVITE"
            self.core.respond(transaction, request, 405 if raise_method else 491,
                              "Method Not Allowed" if raise_method else "Request Pending", [("Allow", ALLOW)])
            return
        if request.method == "INVITE" and call.pending is not None:
            self.core.respond(transaction, request, 491, "Request Pending")
            return
        self._relay(call, side, request, transaction)

    def _relay(self, call: Call, side: str, request: Request, transaction: ServerTransaction) -> None:
        """Pass an in-dialog request to the other leg; its answer comes back."""
        other_side = "b" if side == "a" else "a"
        target = call.b_dialog if other_side == "b" else call.a_dialog
        assert target is not None
        body = request.body
        content_type = request.headers.get("content-type")
        holding: bool | None = None  # an offer: whether it puts the other phone on hold
        inactive: list[int] = []  # streams the holder made inactive: its answer must stay inactive
        if body and (content_type or "").lower().startswith("application/sdp"):
            try:
                offer = SessionDescription.parse(body)
            except SDPError:
                self.core.respond(transaction, request, 488, "Not Acceptable Here")
                return
            this_leg = call.media.leg_a if side == "a" else call.media.leg_b
            source = call.a_dialog if side == "a" else call.b_dialog
            this_leg.update_remote(*_media_address(offer, source.host))
            other_leg = call.media.leg_b if side == "a" else call.media.leg_a
            origin = call.b_origin if side == "a" else call.a_origin
            holding = is_hold(offer)
            if holding:
                # RFC 2543 hold (c=0.0.0.0) must stay hold once the relay's
                # address replaces 0.0.0.0: say it with a direction instead.
                # With music on hold the PBX sends to the held phone, so it
                # is told "sendonly" even when the holder said "inactive".
                music = self._music() is not None
                for index, media in enumerate(offer.media):
                    if media.port == 0:
                        continue
                    said = direction(offer, media)
                    if said == "inactive" and music:
                        inactive.append(index)
                        offer = set_direction(offer, index, "sendonly")
                    elif connection_address(offer, media) == "0.0.0.0" and said == "sendrecv":
                        offer = set_direction(offer, index, "sendonly")
            body = rewrite_for_relay(offer, origin.address, [other_leg.rtp_port], origin)
        host = (call.b_origin if other_side == "b" else call.a_origin).address
        outgoing = target.request(request.method, host, self.sip_port, self.contact(host, target.transport),
                                  body=body, content_type=content_type if body else None)
        for name in ("Event", "Subscription-State", "Refer-To", "Info-Package", "Accept"):
            value = request.headers.get(name)
            if value is not None:
                outgoing.headers.add(name, value)
        if request.method == "INVITE":
            call.pending = (side, transaction)

        def on_response(response: Response) -> None:
            if response.status < 200 and response.status != 183:
                return
            if request.method == "INVITE" and response.status >= 200:
                call.pending = None
                if response.status < 300:
                    update_from_response(target, response)
                    self._ack(target, outgoing.cseq.number)
            reply = self.core.response(request, response.status, response.reason)
            if response.status > 100 and 200 <= response.status < 300 and request.method == "INVITE":
                own = call.a_dialog if side == "a" else call.b_dialog
                reply.headers.set("To", f"{request.headers.get('to')}")
                reply.headers.add("Contact", self.contact((call.a_origin if side == "a" else call.b_origin).address, own.transport))
            if response.body and (response.headers.get("content-type") or "").lower().startswith("application/sdp"):
                try:
                    answer = SessionDescription.parse(response.body)
                except SDPError:
                    answer = None
                if answer is not None:
                    other_leg = call.media.leg_b if side == "a" else call.media.leg_a
                    this_leg = call.media.leg_a if side == "a" else call.media.leg_b
                    other_leg.update_remote(*_media_address(answer, target.host))
                    if holding is not None and 200 <= response.status < 300:
                        self._hold_music(other_leg, answer if holding else None)
                    for index in inactive:
                        if index < len(answer.media):
                            answer = set_direction(answer, index, "inactive")
                    origin = call.a_origin if side == "a" else call.b_origin
                    reply.body = rewrite_for_relay(answer, origin.address, [this_leg.rtp_port], origin)
                    reply.headers.add("Content-Type", "application/sdp")
            elif response.body:
                reply.body = response.body
                reply.headers.add("Content-Type", response.headers.get("content-type") or "application/octet-stream")
            if request.method == "INVITE" and 200 <= response.status < 300:
                self._send_2xx(call, transaction, reply, lambda: None)
            else:
                transaction.respond(reply)

        def on_timeout() -> None:
            if request.method == "INVITE":
                call.pending = None
            transaction.respond(self.core.response(request, 408, "Request Timeout"))

        self.core.transactions.create_client(
            outgoing, self.core.sender(target.transport, target.host, target.port), target.transport != "UDP",
            on_response, on_timeout,
        )  # fmt: skip

    def _music(self) -> bytes | None:
        return self.applications.music_on_hold() if self.applications is not None else None

    def _hold_music(self, leg: Any, answer: SessionDescription | None) -> None:
        """Music to the held phone (`leg` faces it) in the codec it answered with; None resumes."""
        if answer is None:
            leg.stop_music()
            return
        pcm = self._music()
        if pcm is None:
            return
        for media in answer.media:
            if media.media != "audio" or media.port == 0:
                continue
            for pt, name, rate in codecs(media):
                if name.upper() in ("PCMU", "PCMA") and rate == 8000:
                    leg.play_music(self.clock, pcm, name.upper(), pt, usable_ptime(media.ptime))
                    return
            break
        self.log.info("the held phone answered without PCMU or PCMA: no music on hold")

    # -- requests the PBX originates --------------------------------------

    def _ack(self, dialog: Dialog, cseq: int) -> None:
        host = self.advertised_host(dialog.host)
        ack = dialog.request("ACK", host, self.sip_port, self.contact(host, dialog.transport), cseq=cseq)
        try:
            self.core.send(ack.to_bytes(), dialog.transport, dialog.host, dialog.port)
        except ConnectionError:
            self.log.warn("could not send ACK to {host}:{port}", host=dialog.host, port=dialog.port)

    def _bye(self, dialog: Dialog) -> None:
        host = self.advertised_host(dialog.host)
        bye = dialog.request("BYE", host, self.sip_port, self.contact(host, dialog.transport))
        try:
            self.core.transactions.create_client(
                bye, self.core.sender(dialog.transport, dialog.host, dialog.port), dialog.transport != "UDP",
                lambda response: None, lambda: None,
            )  # fmt: skip
        except ValueError:
            pass

    def _send_2xx(self, call: Call, transaction: ServerTransaction, response: Response,
                  on_give_up: Callable[[], None]) -> None:
        """Send a 2xx and retransmit it until the ACK (RFC 3261 §13.3.1.4)."""
        transaction.respond(response)
        if transaction.reliable:
            if transaction is call.a_transaction and not call.a_acked:
                call.retransmit = ("reliable", None)
            return
        self._stop_retransmit(call)
        call.retransmit = self.clock.callLater(
            self.t1, self._retransmit_2xx, call, transaction, response, on_give_up, self.t1, 0.0
        )

    def _retransmit_2xx(self, call: Call, transaction: ServerTransaction, response: Response,
                        on_give_up: Callable[[], None], interval: float, elapsed: float) -> None:
        """One retransmission, then the next at double the interval (at most T2), for 64*T1.

        A method with its state in the arguments, not a closure that schedules
        itself: that closure would be a reference cycle holding the whole call.
        """
        elapsed += interval
        if elapsed >= 64 * self.t1:
            call.retransmit = None
            on_give_up()
            return
        transaction.respond(response)
        interval = min(interval * 2, self.t2)
        call.retransmit = self.clock.callLater(
            interval, self._retransmit_2xx, call, transaction, response, on_give_up, interval, elapsed
        )

    def _stop_retransmit(self, call: Call) -> None:
        pending = call.retransmit
        call.retransmit = None
        if pending is not None and not isinstance(pending, tuple) and pending.active():
            pending.cancel()

    def _no_ack(self, call: Call) -> None:
        if call.state == "answered" and not call.a_acked:
            self._hangup(call, "no-ack")

    def _hangup(self, call: Call, cause: str) -> None:
        """The PBX ends an established call: BYE both ways."""
        if call.state == "ended":
            return
        call.timers.pop(cause, None)
        for dialog in (call.a_dialog, call.b_dialog):
            if dialog is not None:
                self._bye(dialog)
        self._end(call, "answered" if call.record.answer else "failed", cause, "pbx")

    def hangup(self, call_id: str) -> bool:
        """Hang up a call from outside (the REST API); False if there is none."""
        call = self.calls.get(call_id)
        if call is None:
            return False
        if call.state == "ringing":
            call.a_transaction.respond(self._a_response(call, 487, "Request Terminated"))
            self._end(call, "cancelled", "admin", "pbx")
            for fork in call.forks:
                self._cancel_fork(fork)
        else:
            self._hangup(call, "admin")
        return True

    # -- the end -----------------------------------------------------------

    def _cancel_timer(self, call: Call, name: str) -> None:
        timer = call.timers.pop(name, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _end(self, call: Call, disposition: str, cause: str, side: str | None) -> None:
        if call.state == "ended":
            return
        call.state = "ended"
        for name in list(call.timers):
            self._cancel_timer(call, name)
        self._stop_retransmit(call)
        if call.outcome is not None and disposition == "answered":
            disposition, cause = call.outcome[0], call.outcome[1] if cause == "normal" else cause
        session, call.session = call.session, None
        if session is not None:
            session.ended()
        if call.connecting is not None:
            self._connect_failed(call)
        record = call.record
        record.finish(self.clock.seconds(), disposition, cause, side)
        self.calls.pop(call.id, None)
        self._dialogs.pop(call.a_dialog.key, None)
        self._dialogs.pop((call.b_call_id, call.b_tag), None)
        self._by_invite.pop(id(call.a_transaction), None)
        stats = call.media.stats()
        d = call.media.close()
        if d is not None:
            d.addErrback(lambda f: self.log.failure("closing media of call {call}", f, call=call.id))
        self._account(disposition)
        d = self.cdr.close_call(record)
        d.addErrback(lambda f: self.log.failure("could not write the record of call {call}", f, call=call.id))
        self.events.emit("call.ended", **record.as_event(), media=stats)

    def _start_cdr(self, call: Call) -> None:
        d = self.cdr.open_call(call.record)
        d.addErrback(lambda f: self.log.failure("could not open the record of call {call}", f, call=call.id))

    def _update_cdr(self, call: Call) -> None:
        d = self.cdr.update_open(call.record)
        d.addErrback(lambda f: self.log.failure("could not update the record of call {call}", f, call=call.id))

    def _account(self, what: str) -> None:
        self.totals[what] = self.totals.get(what, 0) + 1

    def drain(self, timeout: float = 10.0) -> Deferred[None]:
        """Fires when every application has finished (a message being saved
        after the caller hung up is not cut off by shut-down), or after `timeout`."""
        done: Deferred[None] = Deferred()
        pending = list(self._running)
        if not pending:
            done.callback(None)
            return done
        timer = self.clock.callLater(timeout, lambda: done.called or done.callback(None))

        def finished(_: object) -> None:
            if not done.called and not self._running:
                if timer.active():
                    timer.cancel()
                done.callback(None)

        for running in pending:
            running.addBoth(lambda result: (finished(result), result)[1])
        return done

    def stop(self) -> None:
        """On shut-down: every call still up ends (records are written, media closed)."""
        for call in list(self.calls.values()):
            if call.state == "ringing":
                call.a_transaction.respond(self._a_response(call, 503, "Service Unavailable"))
                self._end(call, "failed", "shutdown", "pbx")
                for fork in call.forks:
                    self._cancel_fork(fork)
            else:
                self._hangup(call, "shutdown")


def _stages(route: GroupTarget | ExtensionTarget) -> tuple[list[tuple[str, list[str]]], float | None]:
    """Who rings when, and for how long each stage: a ringall group at once,
    a hunt group member by member, an extension alone (no stage timer)."""
    if isinstance(route, ExtensionTarget):
        return [(route.number, [route.number])], None
    group = route.group
    if group.strategy == "ringall":
        return [(group.number, list(group.members))], float(group.ring_timeout)
    return [(member, [member]) for member in group.members], float(group.ring_timeout)


def _media_address(sdp: SessionDescription, fallback_host: str) -> tuple[str, int]:
    """Where a phone said it receives audio (the first audio stream)."""
    for media in sdp.media:
        if media.media == "audio" and media.port:
            address = connection_address(sdp, media) or fallback_host
            if address in ("0.0.0.0", ""):
                address = fallback_host
            return address, media.port
    return fallback_host, 0


def _reason_phrase(text: str, default: str) -> str:
    return text[:1].upper() + text[1:] if text else default

