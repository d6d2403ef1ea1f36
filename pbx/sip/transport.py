"""Thin adapters from the reactor's UDP and TCP to the one SIP core.

They only move bytes: parsing, matching and answering happen in
`pbx.sip.core.SIPCore`, which serves every transport alike.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.logger import Logger

from pbx.sip.errors import ParseError
from pbx.sip.message import StreamFramer

if TYPE_CHECKING:
    from pbx.sip.core import SIPCore

UDP_BUFFER_SIZE = 4 * 1024 * 1024


class Peer:
    """Where a message came from and how to answer on the same transport."""

    __slots__ = ("transport", "host", "port", "reliable", "_write", "_conn")

    def __init__(self, transport: str, host: str, port: int, reliable: bool, write, conn=None) -> None:
        self.transport = transport
        self.host = host
        self.port = port
        self.reliable = reliable
        self._write = write
        self._conn = conn

    def send_to(self, data: bytes, host: str, port: int) -> None:
        """Send to an address (UDP) or down the same connection (TCP)."""
        if self.reliable:
            self._write(data)
        else:
            self._write(data, (host, port))

    def __repr__(self) -> str:
        return f"<Peer {self.transport} {self.host}:{self.port}>"


class DatagramWriter:
    """`udp.Port.write` for the SIP socket, lean and gathered.

    Twisted checks that the host is an IP literal (a name would make the
    kernel resolve it, blocking the reactor) three times per datagram; SIP
    answers go to the few addresses packets came from, so a known address is
    sent to directly. Anything unusual (a name, an error) goes through the
    port's own `write` and its errors.

    With a clock, datagrams written while the reactor handles a burst of
    input leave together once it is done (``callLater(0)``): waking a
    sleeping receiver costs the sender more than the send itself, and a
    phone or load generator is then woken once per burst, not per datagram.
    Order is kept; when idle, the delay is one reactor turn.
    """

    MAX_KNOWN = 65536
    log = Logger()

    def __init__(self, port: Any, clock: IReactorTime | None = None) -> None:
        self.port = port
        self._sendto = port.socket.sendto
        self._known: set[str] = set()
        self._clock = clock
        self._pending: list[tuple[bytes, tuple[str, int]]] = []
        self._flush_call: IDelayedCall | None = None

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        host = addr[0]
        if host not in self._known:
            if not (isIPAddress(host) or isIPv6Address(host)):
                self.port.write(data, addr)
                return
            if len(self._known) < self.MAX_KNOWN:
                self._known.add(host)
        if self._clock is None:
            self._send(data, addr)
            return
        if not self._pending:
            self._flush_call = self._clock.callLater(0, self.flush)
        self._pending.append((data, addr))

    def flush(self) -> None:
        """Send what is waiting now (also when the socket is about to close)."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        pending, self._pending = self._pending, []
        for data, addr in pending:
            try:
                self._send(data, addr)
            except Exception:
                self.log.failure("could not send a SIP datagram to {host}:{port}", host=addr[0], port=addr[1])

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self._sendto(data, addr)
        except OSError:
            self.port.write(data, addr)


class SIPDatagramProtocol(DatagramProtocol):
    log = Logger()

    def __init__(self, core: SIPCore, clock: IReactorTime | None = None) -> None:
        self.core = core
        self.clock = clock

    def startProtocol(self) -> None:
        self.writer = DatagramWriter(self.transport, self.clock)
        self._write = self.writer.write  # one bound method shared by every Peer
        self.core.udp_transport = self.writer
        # A deep receive buffer rides out short pauses (a GC pass, a burst of
        # registrations) without the kernel dropping datagrams. The kernel caps
        # it at net.core.rmem_max.
        try:
            self.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_BUFFER_SIZE)
            self.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UDP_BUFFER_SIZE)
        except (AttributeError, OSError):
            self.log.warn("could not enlarge the SIP UDP socket buffers")

    def stopProtocol(self) -> None:
        writer = getattr(self, "writer", None)
        if writer is not None:
            writer.flush()  # the socket is still open here
        if self.core.udp_transport is writer:
            self.core.udp_transport = None

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self.core.datagram_received(data, Peer("UDP", addr[0], addr[1], False, self._write))
        except Exception:
            # The listener must survive anything a datagram can provoke.
            self.log.failure("unhandled error for a datagram from {host}:{port}", host=addr[0], port=addr[1])

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        self.writer.write(data, addr)


class SIPStreamProtocol(Protocol):
    log = Logger()

    def __init__(self, core: SIPCore, max_size: int) -> None:
        self.core = core
        self.framer = StreamFramer(max_size)
        self.peer: Peer | None = None

    def connectionMade(self) -> None:
        address = self.transport.getPeer()
        self.peer = Peer("TCP", address.host, address.port, True, self.transport.write, self)
        self.core.tcp_connections[(address.host, address.port)] = self

    def connectionLost(self, reason=None) -> None:
        if self.peer is not None and self.core.tcp_connections.get((self.peer.host, self.peer.port)) is self:
            del self.core.tcp_connections[(self.peer.host, self.peer.port)]

    def dataReceived(self, data: bytes) -> None:
        try:
            messages = self.framer.feed(data)
        except ParseError as error:
            # Stream framing cannot be recovered once it is wrong (RFC 3261 §18.3).
            self.log.info("closing TCP connection from {peer}: {error}", peer=self.peer, error=str(error))
            self.transport.loseConnection()
            return
        for message in messages:
            try:
                self.core.message_received(message, self.peer)
            except Exception:
                self.log.failure("unhandled error for a message from {peer}", peer=self.peer)


class SIPStreamFactory(Factory):
    def __init__(self, core: SIPCore, max_size: int) -> None:
        self.core = core
        self.max_size = max_size

    def buildProtocol(self, addr) -> SIPStreamProtocol:
        return SIPStreamProtocol(self.core, self.max_size)
