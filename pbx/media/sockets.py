"""RTP/RTCP socket pairs from the port pool, shared by relay legs and media endpoints.

A call opens and closes four UDP sockets. `reactor.listenUDP` would log two
lines for each (Twisted's udp.Port announces every start and close) and
check the address of every datagram it sends; media sockets need neither,
so `MediaSocket` is a plain non-blocking socket the reactor reads. Addresses
it sends to come from SDP (checked by the relay) or from received packets.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, gatherResults
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from zope.interface import implementer

from pbx.media.portpool import NoPortsAvailable, PortPool

log = Logger()

Receiver = Callable[[bytes, Any], None]

#: Datagrams read per wake-up, so one flooded socket cannot starve the others.
READS_PER_WAKEUP = 64
_RETRY = frozenset({errno.EINTR, errno.ECONNREFUSED})  # an ICMP error of an earlier send: read on


@implementer(IReadDescriptor)
class MediaSocket:
    """A bound UDP socket whose datagrams go to one function."""

    def __init__(self, reactor: Any, sock: socket.socket, receive: Receiver) -> None:
        self.reactor = reactor
        self.socket = sock
        self.receive = receive
        self._fileno = sock.fileno()
        reactor.addReader(self)

    def fileno(self) -> int:
        return self._fileno

    def logPrefix(self) -> str:
        return "MediaSocket"

    def doRead(self) -> None:
        recvfrom, receive = self.socket.recvfrom, self.receive
        for _ in range(READS_PER_WAKEUP):
            try:
                data, addr = recvfrom(65535)
            except BlockingIOError:
                return
            except OSError as error:
                if error.errno in _RETRY:
                    continue
                log.warn("media socket {fd}: {error}", fd=self._fileno, error=str(error))
                return
            try:
                receive(data, addr)
            except Exception:
                log.failure("media socket {fd}: a datagram from {addr} was not handled", fd=self._fileno, addr=addr)

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        """Send one datagram; OSError (buffer full, unreachable) is the caller's to count."""
        self.socket.sendto(data, addr)

    def connectionLost(self, reason: Any) -> None:
        """The reactor stopped watching this socket (shut-down)."""

    def stopListening(self) -> None:
        """Close at once (IListeningPort allows None: nothing to wait for)."""
        if self._fileno != -1:
            self.reactor.removeReader(self)
            self.socket.close()
            self._fileno = -1


def listen_media(reactor: Any, port: int, interface: str, receive: Receiver) -> MediaSocket:
    """Bind `interface`:`port` for UDP; OSError when the port is taken."""
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.bind((interface, port))
    except OSError:
        sock.close()
        raise
    return MediaSocket(reactor, sock, receive)


Listen = Callable[[Any, int, str, Receiver], Any]


def stop_listening(sockets: list[Any]) -> Deferred[None] | None:
    """Stop every socket; None when all stopped at once (a MediaSocket does), else a
    Deferred that fires once all have (a udp.Port) and fails if one could not.

    Closing four sockets per call needs no Deferred machinery when nothing waits.
    """
    waiting: list[Deferred[Any]] = []
    for sock in sockets:
        try:
            result = sock.stopListening()
        except Exception:
            waiting.append(fail())
            continue
        if isinstance(result, Deferred):
            waiting.append(result)
    if not waiting:
        return None
    d = gatherResults(waiting, consumeErrors=True)
    d.addCallback(lambda _: None)
    return d


def retarget(media_socket: Any, receive: Receiver) -> None:
    """Send a bound socket's datagrams to another function (a media endpoint's
    sockets becoming a relay leg's, so the phone keeps the address it was given)."""
    media_socket.receive = receive


def bind_pair(reactor: Any, pool: PortPool, interface: str, attempts: int,
              on_rtp: Receiver, on_rtcp: Receiver, listen: Listen = listen_media) -> tuple[int, Any, Any]:
    """Bind an even RTP port and RTCP on the next one, trying other pairs when one is taken.

    A taken port goes to the back of the pool (another program may hold it
    for a while); NoPortsAvailable when `attempts` pairs failed or the pool is empty.
    """
    for _ in range(attempts):
        port = pool.allocate()
        try:
            rtp = listen(reactor, port, interface, on_rtp)
        except OSError:
            pool.mark_unusable(port)
            log.warn("RTP port {port} on {interface} is taken; trying another", port=port, interface=interface)
            continue
        try:
            rtcp = listen(reactor, port + 1, interface, on_rtcp)
        except OSError:
            rtp.stopListening()
            pool.mark_unusable(port)
            log.warn("RTCP port {port} on {interface} is taken; trying another", port=port + 1, interface=interface)
            continue
        return port, rtp, rtcp
    raise NoPortsAvailable(f"no bindable RTP port pair on {interface} after {attempts} attempts")
