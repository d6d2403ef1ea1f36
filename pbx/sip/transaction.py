"""SIP transactions (RFC 3261 §17) as state machines on an injected clock.

No sockets here: a transaction is given the bytes-sending callable of the
transport the message came from (or goes to) and an ``IReactorTime`` to run
its timers, so tests drive it with ``twisted.internet.task.Clock``.

Two kinds of timer are treated differently, because a registrar keeps
hundreds of thousands of transactions alive at once:

- Retransmission and timeout timers (A, B, E, F, G, H and the 100 Trying
  delay) need to be cancellable and reasonably exact; they are ordinary
  ``callLater`` calls and only exist while a transaction waits for the peer.
- "Wait, then forget" timers (D, I, J, K and RFC 6026's L) always have one
  of a few constant durations, so in a `TransactionLayer` they share one
  FIFO per duration, swept by a single ``callLater`` chain.  A transaction
  entering Completed costs a deque append, not a ``DelayedCall``.  They
  fire at most one sweep interval (1 s by default) late, and a lookup that
  finds a transaction past its deadline ends it on the spot.

INVITE server transactions implement the RFC 6026 Accepted state by
default: after a 2xx the transaction stays for Timer L (64*T1) to absorb
INVITE retransmissions, which would otherwise reach the core as new
requests.  Pass ``accepted_state=False`` for plain RFC 3261 behaviour.
INVITE client transactions follow RFC 3261: a 2xx terminates them, and
retransmissions of the 2xx are stray responses the core must route to the
dialog layer (which re-sends the ACK, §13.2.2.4).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger, LogLevel

from pbx.sip.headers import Via
from pbx.sip.ids import random_hex
from pbx.sip.message import Headers, Request, Response

__all__ = [
    "MAGIC_COOKIE",
    "ClientTransaction",
    "ServerTransaction",
    "State",
    "TimerSettings",
    "TransactionLayer",
    "new_branch",
]

log = Logger()

MAGIC_COOKIE = "z9hG4bK"

Send = Callable[[bytes], None]
ServerKey = tuple
ClientKey = tuple[str, str]


def new_branch() -> str:
    """A fresh RFC 3261 branch: the magic cookie and 80 random bits."""
    return MAGIC_COOKIE + random_hex(10)


@dataclass(frozen=True, slots=True)
class TimerSettings:
    """RFC 3261 §17 timer values, in seconds (Table 4 defaults).

    ``d`` is Timer D on unreliable transports (at least 32 s).  ``trying`` is
    how long an INVITE server transaction waits for the TU before sending
    100 Trying itself (§17.2.1); ``None`` turns that off.
    """

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    d: float = 32.0
    trying: float | None = 0.2

    @property
    def timeout(self) -> float:
        """Timers B, F, H, J and L: 64*T1."""
        return 64 * self.t1


class State(enum.Enum):
    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


_CALLING = State.CALLING
_TRYING = State.TRYING
_PROCEEDING = State.PROCEEDING
_COMPLETED = State.COMPLETED
_CONFIRMED = State.CONFIRMED
_ACCEPTED = State.ACCEPTED
_TERMINATED = State.TERMINATED
_INF = float("inf")


def _cancel(call: IDelayedCall | None) -> None:
    if call is not None and call.active():
        call.cancel()


class _Expiry:
    """Constant-duration "wait then forget" timers, one FIFO per duration.

    Entries are appended in deadline order (durations are constant and the
    clock only moves forward), so a sweep pops from the left until it meets
    a future deadline.  One ``callLater`` at a time drives the sweeps; it is
    never less than ``interval`` apart from the previous sweep, so an entry
    expires at most ``interval`` late.  Transactions that end early are not
    removed: the sweep skips them (`_Transaction._expire` is idempotent).
    """

    __slots__ = ("_clock", "_interval", "_queues", "_call", "_at", "_sweeping")

    def __init__(self, clock: IReactorTime, interval: float) -> None:
        self._clock = clock
        self._interval = interval
        self._queues: dict[float, deque[_Transaction]] = {}
        self._call: IDelayedCall | None = None
        self._at = _INF
        self._sweeping = False

    def add(self, duration: float, txn: _Transaction) -> float:
        deadline = self._clock.seconds() + duration
        txn._deadline = deadline
        queue = self._queues.get(duration)
        if queue is None:
            queue = self._queues[duration] = deque()
        queue.append(txn)
        if not self._sweeping and deadline + self._interval < self._at:
            # Nothing scheduled, or a shorter duration than the pending sweep.
            _cancel(self._call)
            self._schedule(deadline, duration)
        return deadline

    def _schedule(self, at: float, delay: float) -> None:
        self._at = at
        self._call = self._clock.callLater(delay, self._sweep)

    def _sweep(self) -> None:
        self._call = None
        self._at = _INF
        now = self._clock.seconds()
        self._sweeping = True
        try:
            for queue in list(self._queues.values()):
                while queue and queue[0]._deadline <= now:
                    queue.popleft()._expire()
        finally:
            self._sweeping = False
        following = min((q[0]._deadline for q in self._queues.values() if q), default=_INF)
        if following != _INF:
            delay = max(following - now, self._interval)
            self._schedule(now + delay, delay)

    def stop(self) -> None:
        _cancel(self._call)
        self._call = None
        self._at = _INF
        self._queues.clear()


class _Transaction:
    """What client and server transactions share: identity, send, the end."""

    __slots__ = (
        "request",
        "method",
        "is_invite",
        "reliable",
        "state",
        "on_transport_error",
        "_send",
        "_address",
        "_clock",
        "_timers",
        "_registry",
        "_key",
        "_expiry",
        "_deadline",
        "_wait_call",
    )

    def __init__(
        self,
        request: Request,
        send: Send,
        reliable: bool,
        clock: IReactorTime,
        timers: TimerSettings | None,
        on_transport_error: Callable[[], None] | None,
    ) -> None:
        self.request: Request | None = request
        self.method = request.method
        self.is_invite = request.method == "INVITE"
        self.reliable = reliable
        self.on_transport_error = on_transport_error
        self._send = send
        self._address: tuple[str, int] | None = None
        self._clock = clock
        self._timers = timers if timers is not None else TimerSettings()
        self._registry: dict | None = None
        self._key: tuple | None = None
        self._expiry: _Expiry | None = None
        self._deadline = _INF
        self._wait_call: IDelayedCall | None = None

    def _transmit(self, data: bytes) -> bool:
        """Send; on a transport failure end the transaction (§17.1.4, §17.2.4)."""
        try:
            if self._address is None:
                self._send(data)
            else:
                self._send(data, self._address)
        except Exception:
            log.failure(
                "Transport error on {method} transaction {key!r}",
                level=LogLevel.warn,
                method=self.method,
                key=self._key,
            )
            self._terminate()
            self._transport_failed()
            return False
        return True

    def _transport_failed(self) -> None:
        if self.on_transport_error is not None:
            self.on_transport_error()

    def _wait(self, duration: float) -> None:
        """Stay in the current state for `duration`, then terminate."""
        if duration <= 0:
            self._terminate()
        elif self._expiry is not None:
            self._expiry.add(duration, self)
        else:
            self._deadline = self._clock.seconds() + duration
            self._wait_call = self._clock.callLater(duration, self._expire)

    def _expire(self) -> None:
        if self.state is not _TERMINATED:
            self._terminate()

    def _cancel_timers(self) -> None:
        _cancel(self._wait_call)
        self._wait_call = None

    def _terminate(self) -> None:
        self.state = _TERMINATED
        self._cancel_timers()
        registry = self._registry
        if registry is not None and registry.get(self._key) is self:
            del registry[self._key]

    def terminate(self) -> None:
        """Drop the transaction now, silently: cancels its timers, unregisters it."""
        if self.state is not _TERMINATED:
            self._terminate()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.method} {self.state.value} {self._key!r}>"


class ClientTransaction(_Transaction):
    """RFC 3261 §17.1: send a request, retransmit it, deliver its responses.

    ``on_response`` sees each provisional response once (per status, To
    header and RSeq, so forked early dialogs and reliable provisionals all
    get through) and the final response once; retransmissions are absorbed.
    ``on_timeout`` is called when Timer B or F fires: the TU answers itself
    with a 408.  ``on_transport_error`` (default: ``on_timeout``) is called
    when ``send`` raises: the TU treats it as a 503 (§8.1.3.1).
    """

    __slots__ = (
        "on_response",
        "on_timeout",
        "ack",
        "_data",
        "_ack_data",
        "_interval",
        "_retransmit_call",
        "_timeout_call",
        "_seen",
    )

    def __init__(
        self,
        request: Request,
        send: Send,
        reliable: bool,
        clock: IReactorTime,
        timers: TimerSettings | None,
        on_response: Callable[[Response], None],
        on_timeout: Callable[[], None],
        on_transport_error: Callable[[], None] | None = None,
    ) -> None:
        if request.method == "ACK":
            raise ValueError("ACK does not start a transaction")
        super().__init__(request, send, reliable, clock, timers, on_transport_error)
        self.state = _CALLING if self.is_invite else _TRYING
        self.on_response = on_response
        self.on_timeout = on_timeout
        self.ack: Request | None = None
        self._data: bytes | None = None
        self._ack_data = b""
        self._interval = self._timers.t1
        self._retransmit_call: IDelayedCall | None = None
        self._timeout_call: IDelayedCall | None = None
        self._seen: set[tuple] | None = None

    def start(self) -> None:
        """Send the request and arm Timers A and B (INVITE) or E and F."""
        if self._data is not None:
            raise RuntimeError("transaction already started")
        self._data = self.request.to_bytes()
        timers = self._timers
        self._timeout_call = self._clock.callLater(timers.timeout, self._timed_out)
        if not self.reliable:
            self._retransmit_call = self._clock.callLater(timers.t1, self._retransmit)
        self._transmit(self._data)

    def _transport_failed(self) -> None:
        if self.on_transport_error is not None:
            self.on_transport_error()
        else:
            self.on_timeout()

    def _retransmit(self) -> None:
        """Timer A (doubling) or E (doubling up to T2; T2 once Proceeding)."""
        state = self.state
        if self.is_invite:
            self._interval *= 2
        elif state is _PROCEEDING:
            self._interval = self._timers.t2
        else:
            self._interval = min(self._interval * 2, self._timers.t2)
        self._retransmit_call = self._clock.callLater(self._interval, self._retransmit)
        self._transmit(self._data)

    def _timed_out(self) -> None:
        """Timer B or F: no final response in 64*T1."""
        self._timeout_call = None
        log.debug(
            "{method} client transaction {key!r} timed out",
            method=self.method,
            key=self._key,
        )
        self._terminate()
        self.on_timeout()

    def receive_response(self, response: Response) -> None:
        """Feed a response matched to this transaction (§17.1.1.2, §17.1.2.2)."""
        status = response.status
        state = self.state
        if state is _COMPLETED:
            if self.is_invite:
                if status >= 300:
                    self._transmit(self._ack_data)
                elif status >= 200:
                    # A 2xx after a non-2xx (a misbehaving fork): the TU must
                    # still ACK and then BYE it, so let it see the response.
                    self.on_response(response)
            return
        if state is _TERMINATED or self._data is None:
            return
        if status < 200:
            if state is not _PROCEEDING:
                self.state = _PROCEEDING
                if self.is_invite:
                    self._cancel_timers()
            headers = response.headers
            key = (status, headers.get("to"), headers.get("rseq"))
            seen = self._seen
            if seen is None:
                seen = self._seen = set()
            elif key in seen:
                return
            seen.add(key)
            self.on_response(response)
            return
        if self.is_invite:
            if status < 300:
                self._terminate()
            else:
                self._cancel_timers()
                self.state = _COMPLETED
                self.ack = _make_ack(self.request, response)
                self._ack_data = self.ack.to_bytes()
                if not self._transmit(self._ack_data):
                    return
                self._wait(0 if self.reliable else self._timers.d)
        else:
            self._cancel_timers()
            self.state = _COMPLETED
            self._wait(0 if self.reliable else self._timers.t4)
        self.on_response(response)

    def _cancel_timers(self) -> None:
        _cancel(self._retransmit_call)
        _cancel(self._timeout_call)
        self._retransmit_call = self._timeout_call = None
        _Transaction._cancel_timers(self)


class ServerTransaction(_Transaction):
    """RFC 3261 §17.2: absorb request retransmissions, deliver the TU's responses.

    The TU answers with `respond`; the bytes of each response are built once
    and re-sent for retransmitted requests (and by Timer G).  Once a final
    response is sent, ``request`` is set to None: a registrar keeps ~200,000
    transactions in Completed and the parsed request is most of their size.
    ``on_ack_timeout`` is called when Timer H fires (no ACK for a 300-699
    final to an INVITE), ``on_transport_error`` when ``send`` raises.
    """

    __slots__ = (
        "on_ack_timeout",
        "status",
        "_accepted_state",
        "_data",
        "_interval",
        "_retransmit_call",
        "_timeout_call",
        "_trying_call",
    )

    def __init__(
        self,
        request: Request,
        send: Send,
        reliable: bool,
        clock: IReactorTime,
        timers: TimerSettings | None = None,
        *,
        on_ack_timeout: Callable[[], None] | None = None,
        on_transport_error: Callable[[], None] | None = None,
        accepted_state: bool = True,
        address: tuple[str, int] | None = None,
    ) -> None:
        if request.method == "ACK":
            raise ValueError("ACK does not start a transaction")
        super().__init__(request, send, reliable, clock, timers, on_transport_error)
        self._address = address
        self.on_ack_timeout = on_ack_timeout
        self.status: int | None = None
        self._accepted_state = accepted_state
        self._data: bytes | None = None
        self._retransmit_call: IDelayedCall | None = None
        self._timeout_call: IDelayedCall | None = None
        self._trying_call: IDelayedCall | None = None
        if self.is_invite:
            self.state = _PROCEEDING
            delay = self._timers.trying
            if delay is not None:
                self._trying_call = clock.callLater(delay, self._send_trying)
        else:
            self.state = _TRYING

    def _send_trying(self) -> None:
        """The TU was silent for 200 ms: stop the client's Timer A (§17.2.1)."""
        self._trying_call = None
        if self.state is _PROCEEDING and self._data is None:
            self.respond(_make_trying(self.request))

    def respond(self, response: Response, *, stateless: bool = False) -> None:
        """Send a response from the TU and move the state machine on.

        With `stateless`, a final response to a non-INVITE ends the transaction
        at once instead of keeping it for Timer J, as a stateless UAS does for
        challenges (RFC 3261 §8.2.7): a retransmitted request is answered
        afresh, and a flood of unauthenticated requests leaves nothing behind.
        """
        status = response.status
        if not 100 <= status <= 699:
            raise ValueError(f"bad status code {status}")
        state = self.state
        if stateless and status >= 200 and not self.is_invite and (state is _TRYING or state is _PROCEEDING):
            self.request = None
            self.status = status
            self._terminate()
            self._transmit(response.to_bytes())
            return
        if state is _TRYING or state is _PROCEEDING:
            pass
        elif state is _ACCEPTED and 200 <= status < 300:
            # The TU retransmits its 2xx through the transaction (RFC 6026 §8.7).
            self._transmit(response.to_bytes())
            return
        else:
            log.debug(
                "Dropped {status} from the TU in state {state} of {key!r}",
                status=status,
                state=state.value,
                key=self._key,
            )
            return
        data = response.to_bytes()
        self._data = data
        self.status = status
        if status < 200:
            self.state = _PROCEEDING
            if self._trying_call is not None:
                _cancel(self._trying_call)
                self._trying_call = None
            self._transmit(data)
            return
        self.request = None
        if not self.is_invite:
            self.state = _COMPLETED
            if self._transmit(data):
                self._wait(0 if self.reliable else self._timers.timeout)
            return
        self._cancel_timers()
        if status < 300:
            if self._accepted_state:
                self.state = _ACCEPTED
                if self._transmit(data):
                    self._wait(self._timers.timeout)
            else:
                self._terminate()
                self._transmit(data)
            return
        self.state = _COMPLETED
        timers = self._timers
        self._timeout_call = self._clock.callLater(timers.timeout, self._ack_timed_out)
        if not self.reliable:
            self._interval = timers.t1
            self._retransmit_call = self._clock.callLater(timers.t1, self._retransmit)
        self._transmit(data)

    def receive_request(self, request: Request) -> None:
        """A retransmission of the request, or the ACK of a 300-699 final."""
        state = self.state
        if request.method == "ACK":
            if state is _COMPLETED and self.is_invite:
                self._cancel_timers()
                self.state = _CONFIRMED
                self._wait(0 if self.reliable else self._timers.t4)
            return
        if state is _PROCEEDING or state is _COMPLETED:
            # Trying (no provisional yet), Confirmed and Accepted absorb it.
            if self._data is not None:
                self._transmit(self._data)

    def _retransmit(self) -> None:
        """Timer G: re-send the 300-699 final, doubling up to T2."""
        self._interval = min(self._interval * 2, self._timers.t2)
        self._retransmit_call = self._clock.callLater(self._interval, self._retransmit)
        self._transmit(self._data)

    def _ack_timed_out(self) -> None:
        """Timer H: the ACK never came."""
        self._timeout_call = None
        log.debug("No ACK for the final response of {key!r}", key=self._key)
        self._terminate()
        if self.on_ack_timeout is not None:
            self.on_ack_timeout()

    def _cancel_timers(self) -> None:
        _cancel(self._retransmit_call)
        _cancel(self._timeout_call)
        _cancel(self._trying_call)
        self._retransmit_call = self._timeout_call = self._trying_call = None
        _Transaction._cancel_timers(self)


def _make_trying(request: Request) -> Response:
    """100 Trying with the fields §8.2.6 requires, Timestamp included."""
    source = request.headers
    headers = Headers()
    for name in ("Via", "From", "To", "Call-ID", "CSeq", "Timestamp"):
        for value in source.values(name):
            headers.add(name, value)
    return Response(100, "Trying", headers)


def _make_ack(request: Request, response: Response) -> Request:
    """The ACK of a 300-699 final response to `request` (§17.1.1.3)."""
    source = request.headers
    headers = Headers()
    headers.add("Via", source.get_list("via")[0])
    for route in source.values("route"):
        headers.add("Route", route)
    headers.add("Max-Forwards", source.get("max-forwards") or "70")
    headers.add("From", source.get("from") or "")
    headers.add("To", response.headers.get("to") or "")
    headers.add("Call-ID", source.get("call-id") or "")
    headers.add("CSeq", f"{request.cseq.number} ACK")
    return Request("ACK", request.uri, headers)


def _server_key(request: Request, via: Via) -> ServerKey:
    """§17.2.3: branch, sent-by and method (ACK as INVITE); index 3 is the method."""
    method = request.method
    if method == "ACK":
        method = "INVITE"
    branch = via.params.get("branch")
    if branch is not None and branch.startswith(MAGIC_COOKIE):
        return (branch, via.host.lower(), via.port, method)
    # RFC 2543 peer: no usable branch.  Approximate the §17.2.3 fallback
    # with the fields an ACK or CANCEL shares with its INVITE.
    return (
        branch or "",
        via.host.lower(),
        via.port,
        method,
        request.call_id,
        request.cseq.number,
        request.from_().tag,
        request.uri,
    )


Transaction = ClientTransaction | ServerTransaction


class TransactionLayer:
    """The transactions of one SIP core, found by the keys of §17.1.3 and §17.2.3.

    Terminated transactions remove themselves.  Call `stop` when the service
    stops so no ``DelayedCall`` outlives it.
    """

    def __init__(
        self,
        clock: IReactorTime,
        timers: TimerSettings | None = None,
        *,
        sweep_interval: float = 1.0,
        accepted_state: bool = True,
    ) -> None:
        self.clock = clock
        self.timers = timers if timers is not None else TimerSettings()
        self.accepted_state = accepted_state
        self._servers: dict[ServerKey, ServerTransaction] = {}
        self._clients: dict[ClientKey, ClientTransaction] = {}
        self._expiry = _Expiry(clock, sweep_interval)
        # The core usually matches, then creates: parse the top Via once.
        self._last_request: Request | None = None
        self._last_key: ServerKey = ()

    def __len__(self) -> int:
        return len(self._servers) + len(self._clients)

    def count(self) -> int:
        """Live transactions, client and server."""
        return len(self._servers) + len(self._clients)

    def server_key(self, request: Request) -> ServerKey:
        """The §17.2.3 key of `request` (ParseError without a usable Via)."""
        if request is self._last_request:
            return self._last_key
        key = _server_key(request, request.top_via)
        self._last_request = request
        self._last_key = key
        return key

    def _live(self, txn: Transaction | None) -> Transaction | None:
        """`txn`, unless its wait timer ran out and no sweep has noticed yet."""
        if txn is not None and txn._deadline <= self.clock.seconds():
            txn._expire()
            return None
        return txn

    def match_server(self, request: Request) -> ServerTransaction | None:
        """The transaction a retransmission or a non-2xx ACK belongs to.

        An ACK matches only an INVITE transaction waiting for it (Completed or
        Confirmed); any other ACK, such as the ACK of a 2xx, is the core's.
        """
        txn = self._live(self._servers.get(self.server_key(request)))
        if txn is not None and request.method == "ACK":
            if txn.state is not _COMPLETED and txn.state is not _CONFIRMED:
                return None
        return txn

    def receive_request(self, request: Request) -> bool:
        """Give `request` to its transaction; False if the core must handle it."""
        txn = self.match_server(request)
        if txn is None:
            return False
        txn.receive_request(request)
        return True

    def find_invite_for_cancel(self, cancel: Request) -> ServerTransaction | None:
        """The INVITE server transaction a CANCEL refers to (§9.2)."""
        key = self.server_key(cancel)
        key = key[:3] + ("INVITE",) + key[4:]
        return self._live(self._servers.get(key))

    def create_server(
        self,
        request: Request,
        send: Send,
        reliable: bool,
        *,
        on_ack_timeout: Callable[[], None] | None = None,
        on_transport_error: Callable[[], None] | None = None,
        address: tuple[str, int] | None = None,
    ) -> ServerTransaction:
        """A new server transaction for a request that matched none.

        With `address`, responses go out as ``send(data, address)``: a UDP
        socket's one write method and a tuple, rather than a closure per
        transaction, since a registrar keeps a great many of them for Timer J
        and each extra object lengthens the cyclic collector's full passes.
        """
        key = self.server_key(request)
        self._check_free(self._servers, key)
        txn = ServerTransaction(
            request,
            send,
            reliable,
            self.clock,
            self.timers,
            on_ack_timeout=on_ack_timeout,
            on_transport_error=on_transport_error,
            accepted_state=self.accepted_state,
            address=address,
        )
        self._enrol(self._servers, key, txn)
        return txn

    def create_client(
        self,
        request: Request,
        send: Send,
        reliable: bool,
        on_response: Callable[[Response], None],
        on_timeout: Callable[[], None],
        *,
        on_transport_error: Callable[[], None] | None = None,
    ) -> ClientTransaction:
        """Register and start a client transaction; the top Via needs a branch."""
        branch = request.top_via.branch
        if not branch:
            raise ValueError("the request's top Via has no branch")
        key = (branch, request.cseq.method)
        self._check_free(self._clients, key)
        txn = ClientTransaction(
            request,
            send,
            reliable,
            self.clock,
            self.timers,
            on_response,
            on_timeout,
            on_transport_error,
        )
        self._enrol(self._clients, key, txn)
        txn.start()
        return txn

    def _check_free(self, registry: dict, key: tuple) -> None:
        """ValueError when a live transaction already has `key`."""
        old = registry.get(key)
        if old is not None and self._live(old) is not None:
            raise ValueError(f"a transaction already exists for {key!r}")

    def _enrol(self, registry: dict, key: tuple, txn: _Transaction) -> None:
        """Put a new transaction in its registry; it removes itself when it terminates."""
        txn._registry = registry
        txn._key = key
        txn._expiry = self._expiry
        registry[key] = txn

    def match_client(self, response: Response) -> ClientTransaction | None:
        """The client transaction of a response (§17.1.3: branch and CSeq method)."""
        branch = response.top_via.branch
        if branch is None:
            return None
        return self._live(self._clients.get((branch, response.cseq.method)))

    def receive_response(self, response: Response) -> bool:
        """Give `response` to its transaction; False for a stray response."""
        txn = self.match_client(response)
        if txn is None:
            log.debug(
                "Stray response {status} to {method}",
                status=response.status,
                method=response.cseq.method,
            )
            return False
        txn.receive_response(response)
        return True

    def stop(self) -> None:
        """Forget every transaction and cancel every pending timer."""
        self._expiry.stop()
        for registry in (self._servers, self._clients):
            for txn in list(registry.values()):
                txn.terminate()
            registry.clear()
        self._last_request = None
        self._last_key = ()
