"""The buffered random identifiers and the SIP UDP writer's fast path."""

from __future__ import annotations

import errno
import os

import pytest
from twisted.internet.task import Clock

from pbx.sip import ids
from pbx.sip.transport import DatagramWriter


def test_random_identifiers_never_repeat_across_buffer_refills() -> None:
    seen = {ids.random_hex(8) for _ in range(5000)}  # 40 KB: ten refills
    assert len(seen) == 5000
    assert all(len(value) == 16 and int(value, 16) >= 0 for value in seen)
    assert len(ids.random_bytes(10_000)) == 10_000  # larger than the buffer: read directly


def test_a_forked_child_does_not_reuse_the_parents_bytes() -> None:
    ids.random_hex(4)  # the parent has a buffer now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.write(write, ids.random_hex(16).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    assert len(child) == 32 and child != ids.random_hex(16)


class Port:
    """udp.Port's interface: a socket, and write() with Twisted's checks."""

    def __init__(self, fail: int | None = None) -> None:
        self.sent: list = []
        self.checked: list = []
        self.fail = fail
        self.socket = self

    def sendto(self, data: bytes, addr) -> None:
        if self.fail is not None:
            raise OSError(self.fail, os.strerror(self.fail))
        self.sent.append((data, addr))

    def write(self, data: bytes, addr) -> None:
        self.checked.append((data, addr))
        if not addr[0][0].isdigit():
            raise ValueError("not an IP address")


def test_ip_addresses_are_sent_directly_names_go_through_the_ports_checks() -> None:
    port = Port()
    writer = DatagramWriter(port)
    writer.write(b"a", ("127.0.0.1", 5060))
    writer.write(b"b", ("127.0.0.1", 5062))
    assert port.sent == [(b"a", ("127.0.0.1", 5060)), (b"b", ("127.0.0.1", 5062))] and port.checked == []
    with pytest.raises(ValueError):
        writer.write(b"c", ("phone.example.com", 5060))  # never resolved on the reactor
    assert port.sent[-1][0] == b"b"


def test_send_errors_get_the_ports_own_handling() -> None:
    port = Port(fail=errno.EMSGSIZE)
    DatagramWriter(port).write(b"x", ("127.0.0.1", 5060))
    assert port.checked == [(b"x", ("127.0.0.1", 5060))]


def test_with_a_clock_a_burst_leaves_together_after_the_reactor_turn_in_order() -> None:
    clock = Clock()
    port = Port()
    writer = DatagramWriter(port, clock)
    writer.write(b"a", ("127.0.0.1", 5060))
    writer.write(b"b", ("127.0.0.2", 5062))
    writer.write(b"c", ("127.0.0.1", 5060))
    assert port.sent == []  # still handling the burst
    assert len(clock.getDelayedCalls()) == 1  # one flush for the whole burst
    clock.advance(0)
    assert [data for data, _ in port.sent] == [b"a", b"b", b"c"]
    assert clock.getDelayedCalls() == []
    writer.write(b"d", ("127.0.0.1", 5060))
    clock.advance(0)
    assert port.sent[-1] == (b"d", ("127.0.0.1", 5060))


def test_a_gathered_name_is_still_refused_at_once_and_errors_at_flush_are_logged() -> None:
    clock = Clock()
    port = Port(fail=errno.EMSGSIZE)
    writer = DatagramWriter(port, clock)
    with pytest.raises(ValueError):
        writer.write(b"c", ("phone.example.com", 5060))  # checked when written, not later
    writer.write(b"x", ("127.0.0.1", 5060))
    writer.write(b"y", ("127.0.0.1", 5061))
    clock.advance(0)  # the socket refuses: the port's own write gets each one
    assert port.checked[-2:] == [(b"x", ("127.0.0.1", 5060)), (b"y", ("127.0.0.1", 5061))]


def test_flush_sends_what_waits_and_cancels_the_turn() -> None:
    clock = Clock()
    port = Port()
    writer = DatagramWriter(port, clock)
    writer.write(b"last", ("127.0.0.1", 5060))
    writer.flush()  # the protocol stops: the socket is about to close
    assert port.sent == [(b"last", ("127.0.0.1", 5060))]
    assert clock.getDelayedCalls() == []
