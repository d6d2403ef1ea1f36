"""The buffered random identifiers and the SIP UDP writer's fast path."""

from __future__ import annotations

import errno
import os

import pytest

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
