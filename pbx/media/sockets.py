"""RTP/RTCP socket pairs from the port pool, shared by relay legs and media endpoints."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from pbx.media.portpool import NoPortsAvailable, PortPool

log = Logger()

Receiver = Callable[[bytes, Any], None]


class DatagramSink(DatagramProtocol):
    """A thin protocol: every datagram goes to one function."""

    noisy = False

    def __init__(self, receive: Receiver) -> None:
        self._receive = receive

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self._receive(data, addr)


def retarget(port: Any, receive: Receiver) -> None:
    """Send a bound socket's datagrams to another function (a media endpoint's
    sockets becoming a relay leg's, so the phone keeps the address it was given)."""
    port.protocol._receive = receive


def bind_pair(reactor: Any, pool: PortPool, interface: str, attempts: int,
              on_rtp: Receiver, on_rtcp: Receiver) -> tuple[int, IListeningPort, IListeningPort]:
    """Bind an even RTP port and RTCP on the next one, trying other pairs when one is taken.

    A taken port goes to the back of the pool (another program may hold it
    for a while); NoPortsAvailable when `attempts` pairs failed or the pool is empty.
    """
    for _ in range(attempts):
        port = pool.allocate()
        try:
            rtp = reactor.listenUDP(port, DatagramSink(on_rtp), interface=interface)
        except CannotListenError:
            pool.mark_unusable(port)
            log.warn("RTP port {port} on {interface} is taken; trying another", port=port, interface=interface)
            continue
        try:
            rtcp = reactor.listenUDP(port + 1, DatagramSink(on_rtcp), interface=interface)
        except CannotListenError:
            rtp.stopListening()
            pool.mark_unusable(port)
            log.warn("RTCP port {port} on {interface} is taken; trying another", port=port + 1, interface=interface)
            continue
        return port, rtp, rtcp
    raise NoPortsAvailable(f"no bindable RTP port pair on {interface} after {attempts} attempts")
