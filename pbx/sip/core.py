"""The SIP core: one controller for every transport.

Bytes arrive from `transport.py`; the core parses them, matches transactions,
checks requests (`validate.py`) and hands each new request to the handler
registered for its method. SIPError exceptions raised anywhere on that path
become responses here, in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.logger import Logger

from pbx.sip.errors import (
    BadExtension,
    IntervalTooBrief,
    MethodNotAllowed,
    NotImplementedMethod,
    ParseError,
    ServiceUnavailable,
    SIPError,
    VersionNotSupported,
)
from pbx.sip.ids import random_hex
from pbx.sip.message import Request, Response, make_response, parse_datagram, parse_head
from pbx.sip.transaction import ServerTransaction, TransactionLayer
from pbx.sip.transport import Peer
from pbx.sip.validate import ACCEPTED_BODY_TYPES, KNOWN_METHODS, check_request

ACCEPT = "application/sdp"
SUPPORTED = ""


class RequestHandler(Protocol):
    def __call__(self, request: Request, transaction: ServerTransaction, peer: Peer) -> None: ...


class SIPCore:
    """Parses, matches, validates and dispatches; answers every error it meets."""

    log = Logger()

    def __init__(self, transactions: TransactionLayer, server_name: str = "Twisted PBX", force_rport: bool = True) -> None:
        self.transactions = transactions
        self.server_name = server_name
        self.force_rport = force_rport
        self.handlers: dict[str, RequestHandler] = {"OPTIONS": self._options}
        self.stats: dict[str, int] = {"received": 0, "malformed": 0, "stray_responses": 0}
        # For metrics: requests received by method, responses by status.
        self.requests_received: dict[str, int] = {}
        self.responses_received: dict[int, int] = {}
        self.responses_sent: dict[int, int] = {}
        self.on_stray_response: Callable[[Response, Peer], None] | None = None
        # False while the PBX loads its data: requests then get 503 + Retry-After.
        self.ready = True
        # Set by the transports: where requests the PBX originates go out.
        self.udp_transport = None
        self.tcp_connections: dict[tuple[str, int], object] = {}
        # In-dialog requests (a To tag) and ACKs for 2xx belong to the dialog
        # layer (the B2BUA); CANCEL of a pending INVITE too.
        self.dialog_handler: RequestHandler | None = None
        self.ack_handler: Callable[[Request, Peer], None] | None = None
        self.cancel_handler: Callable[[ServerTransaction, Request], None] | None = None

    def register_handler(self, method: str, handler: RequestHandler) -> None:
        self.handlers[method] = handler

    @property
    def allow(self) -> str:
        methods = set(self.handlers)
        if "INVITE" in methods:
            methods |= {"ACK", "CANCEL"}
        return ", ".join(sorted(methods))

    # -- input -----------------------------------------------------------

    def datagram_received(self, data: bytes, peer: Peer) -> None:
        if len(data) <= 4 and not data.strip():
            return  # CRLF keep-alive (RFC 5626 §4.4.1)
        try:
            message = parse_datagram(data)
        except ParseError as error:
            self.stats["malformed"] += 1
            self._answer_unparsable(data, error, peer)
            return
        self.message_received(message, peer)

    def message_received(self, message: Request | Response, peer: Peer) -> None:
        self.stats["received"] += 1
        if isinstance(message, Response):
            self._response_received(message, peer)
        else:
            self._request_received(message, peer)

    def _response_received(self, response: Response, peer: Peer) -> None:
        counts = self.responses_received
        counts[response.status] = counts.get(response.status, 0) + 1
        try:
            consumed = self.transactions.receive_response(response)
        except SIPError:
            consumed = False
        if not consumed:
            self.stats["stray_responses"] += 1
            if self.on_stray_response is not None:
                self.on_stray_response(response, peer)

    def _request_received(self, request: Request, peer: Peer) -> None:
        counts = self.requests_received
        method = request.method if request.method in KNOWN_METHODS else "other"
        counts[method] = counts.get(method, 0) + 1
        try:
            via = request.vias[0]
        except (SIPError, IndexError) as error:
            self.stats["malformed"] += 1
            self._reply_stateless(request, error if isinstance(error, SIPError) else ParseError("no Via"), peer)
            return
        self._stamp_received(via, peer)
        try:
            existing = self.transactions.match_server(request)
        except SIPError:
            existing = None
        if existing is not None:
            existing.receive_request(request)
            return
        if request.method == "ACK":
            # An ACK for a 2xx (its own transaction-less request) or for
            # nothing we know: never answered.
            if self.ack_handler is not None and self.ready:
                self.ack_handler(request, peer)
            return
        transaction = self.transactions.create_server(
            request, peer._write, peer.reliable, address=self._reply_address(request, peer)
        )
        try:
            if not self.ready:
                raise ServiceUnavailable("starting up", reason="Starting Up")
            check_request(request)
            if request.method == "CANCEL":
                self._cancel(request, transaction)
                return
            handler = self.handlers.get(request.method)
            if self.dialog_handler is not None and ";tag=" in (request.headers.get("to") or "").replace(" ", "").lower():
                handler = self.dialog_handler
            if handler is None:
                raise MethodNotAllowed(f"{request.method} not handled here")
            handler(request, transaction, peer)
        except SIPError as error:
            self.respond_error(transaction, request, error)

    # -- output ----------------------------------------------------------

    def send(self, data: bytes, transport: str, host: str, port: int) -> None:
        """Send a request the PBX originates; ConnectionError when it cannot go out."""
        if transport == "TCP":
            connection = self.tcp_connections.get((host, port))
            if connection is None:
                raise ConnectionError(f"no TCP connection to {host}:{port}")
            connection.transport.write(data)
        else:
            if self.udp_transport is None:
                raise ConnectionError("SIP UDP transport is not listening")
            self.udp_transport.write(data, (host, port))

    def sender(self, transport: str, host: str, port: int) -> Callable[[bytes], None]:
        return lambda data: self.send(data, transport, host, port)

    def _stamp_received(self, via, peer: Peer) -> None:
        """RFC 3261 §18.2.1 and RFC 3581: note where the request really came from."""
        if via.host != peer.host:
            via.params["received"] = peer.host
        if "rport" in via.params:
            via.params["received"] = peer.host
            via.params["rport"] = str(peer.port)

    def _reply_address(self, request: Request, peer: Peer) -> tuple[str, int] | None:
        """Where UDP responses go (RFC 3261 §18.2.2, RFC 3581 §4); None on a connection."""
        if peer.reliable:
            return None
        if self.force_rport:
            return (peer.host, peer.port)
        via = request.vias[0]
        if via.params.get("rport"):
            return (peer.host, peer.port)
        return (via.params.get("maddr") or via.params.get("received") or via.host, via.port or 5060)

    def response(self, request: Request, status: int, reason: str) -> Response:
        counts = self.responses_sent
        counts[status] = counts.get(status, 0) + 1
        response = make_response(request, status, reason, to_tag=random_hex(6))
        response.headers.add("Server", self.server_name)
        return response

    def respond(self, transaction: ServerTransaction, request: Request, status: int, reason: str, headers=(),
                *, stateless: bool = False) -> None:
        """Answer through `transaction`; `stateless` ends it at once (see `ServerTransaction.respond`)."""
        response = self.response(request, status, reason)
        for name, value in headers:
            response.headers.add(name, value)
        transaction.respond(response, stateless=stateless)

    def respond_error(self, transaction: ServerTransaction, request: Request, error: SIPError) -> None:
        extra: list[tuple[str, str]] = []
        if isinstance(error, (MethodNotAllowed, NotImplementedMethod)):
            extra.append(("Allow", self.allow))
        elif isinstance(error, BadExtension):
            extra.append(("Unsupported", ", ".join(error.unsupported)))
        elif isinstance(error, IntervalTooBrief):
            extra.append(("Min-Expires", str(error.min_expires)))
        elif isinstance(error, ServiceUnavailable):
            extra.append(("Retry-After", "2"))
        elif error.status == 415:
            extra.append(("Accept", ", ".join(sorted(ACCEPTED_BODY_TYPES))))
        elif error.status == 406:
            extra.append(("Warning", f'399 {self.server_name.replace(" ", "-")} "only application/sdp"'))
        self.respond(transaction, request, error.status, error.reason, extra)

    def _answer_unparsable(self, data: bytes, error: ParseError, peer: Peer) -> None:
        """Answer a datagram that failed to parse, when it is readable enough to address."""
        head_end = data.find(b"\r\n\r\n")
        head = data if head_end < 0 else data[:head_end]
        if isinstance(error, VersionNotSupported):
            # Read the rest as SIP/2.0 only to address the 505.
            first, sep, rest = head.partition(b"\r\n")
            head = first.rsplit(b" ", 1)[0] + b" SIP/2.0" + sep + rest
        try:
            message = parse_head(head)
        except SIPError:
            return
        if isinstance(message, Request):
            self._reply_stateless(message, error, peer)

    def _reply_stateless(self, request: Request, error: SIPError, peer: Peer) -> None:
        """Answer outside any transaction: to the source when NAT rules allow it,
        else to the top Via, and not at all when neither can be known."""
        if request.method == "ACK":
            return
        if not (peer.reliable or self.force_rport):
            try:
                self._stamp_received(request.vias[0], peer)
            except (SIPError, IndexError):
                return
        response = self.response(request, error.status, error.reason)
        try:
            peer.send_to(response.to_bytes(), *(self._reply_address(request, peer) or (peer.host, peer.port)))
        except Exception:
            self.log.failure("could not answer a malformed request from {peer}", peer=peer)

    # -- built-in methods ------------------------------------------------

    def _options(self, request: Request, transaction: ServerTransaction, peer: Peer) -> None:
        self.respond(
            transaction,
            request,
            200,
            "OK",
            (("Allow", self.allow), ("Accept", ACCEPT), ("Supported", SUPPORTED)),
        )

    def _cancel(self, request: Request, transaction: ServerTransaction) -> None:
        invite = self.transactions.find_invite_for_cancel(request)
        if invite is None:
            self.respond(transaction, request, 481, "Call/Transaction Does Not Exist")
            return
        self.respond(transaction, request, 200, "OK")
        if self.cancel_handler is not None:
            self.cancel_handler(invite, request)
