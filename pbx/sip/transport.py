"""Thin adapters from the reactor's UDP and TCP to the one SIP core.

They only move bytes: parsing, matching and answering happen in
`pbx.sip.core.SIPCore`, which serves every transport alike.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from twisted.internet.abstract import isIPAddress, isIPv6Address
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
    """`udp.Port.write` without re-checking, for every datagram, an address already seen.

    Twisted checks that the host is an IP literal (a name would make the
    kernel resolve it, blocking the reactor) three times per datagram; SIP
    answers go to the few addresses packets came from. Anything unusual
    (a name, an error) goes through the port's own `write` and its errors.
    """

    MAX_KNOWN = 65536

    def __init__(self, port: Any) -> None:
        self.port = port
        self._sendto = port.socket.sendto
        self._known: set[str] = set()

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        host = addr[0]
        if host not in self._known:
            if not (isIPAddress(host) or isIPv6Address(host)):
                self.port.write(data, addr)
                return
            if len(self._known) < self.MAX_KNOWN:
                self._known.add(host)
        try:
            self._sendto(data, addr)
        except OSError:
            self.port.write(data, addr)


class SIPDatagramProtocol(DatagramProtocol):
    log = Logger()

    def __init__(self, core: SIPCore) -> None:
        self.core = core

    def startProtocol(self) -> None:
        self.writer = DatagramWriter(self.transport)
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
        if self.core.udp_transport is getattr(self, "writer", None):
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
