"""Media sockets: plain non-blocking UDP sockets the reactor reads, closed without Deferreds."""

from __future__ import annotations

import select
import socket

from twisted.internet.defer import Deferred

from pbx.media.sockets import listen_media, stop_listening

HOST = "127.0.0.1"


class Reactor:
    """Just enough of a reactor to register readers."""

    def __init__(self) -> None:
        self.readers: set = set()

    def addReader(self, reader) -> None:
        self.readers.add(reader)

    def removeReader(self, reader) -> None:
        self.readers.discard(reader)


def test_a_media_socket_stops_at_once():
    reactor = Reactor()
    received = []
    media = listen_media(reactor, 0, HOST, lambda data, addr: received.append((data, addr)))
    port = media.socket.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as phone:
        phone.bind((HOST, 0))
        phone.sendto(b"rtp", (HOST, port))
        assert select.select([media], [], [], 1.0)[0] == [media]
        media.doRead()
        assert received == [(b"rtp", phone.getsockname())]
    assert stop_listening([media]) is None, "nothing to wait for"
    assert media.fileno() == -1 and reactor.readers == set()
    assert media.socket.fileno() == -1
    media.stopListening()  # a second stop does nothing


def test_stop_listening_waits_for_sockets_that_close_later():
    class SlowPort:  # a udp.Port: stopListening returns a Deferred
        def __init__(self) -> None:
            self.closing: Deferred[None] = Deferred()

        def stopListening(self) -> Deferred[None]:
            return self.closing

    reactor = Reactor()
    fast, slow = listen_media(reactor, 0, HOST, lambda data, addr: None), SlowPort()
    done = stop_listening([fast, slow])
    assert done is not None and not done.called
    assert fast.fileno() == -1, "the quick one is closed already"
    slow.closing.callback(None)
    assert done.called and done.result is None


def test_stop_listening_reports_a_socket_that_could_not_stop():
    class Broken:
        def stopListening(self) -> None:
            raise OSError("bad file descriptor")

    reactor = Reactor()
    other = listen_media(reactor, 0, HOST, lambda data, addr: None)
    done = stop_listening([Broken(), other])
    assert other.fileno() == -1, "the others are still stopped"
    failures = []
    done.addErrback(failures.append)
    assert failures and failures[0].check(Exception)
