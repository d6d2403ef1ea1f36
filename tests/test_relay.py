"""The RTP relay on real loopback sockets: two UDP "phones" talk through a session."""

from __future__ import annotations

import gc
import random
import struct
import weakref

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import deferLater

from pbx.media.portpool import NoPortsAvailable, PortPool
from pbx.media.relay import MediaRelay, MediaSession
from pbx.sip.sdp import SessionDescription, codecs

HOST = "127.0.0.1"


def rtp(seq: int, pt: int = 0, ssrc: int = 0xCAFE) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq, seq * 160, ssrc) + bytes([seq & 0xFF]) * 160


class Phone(DatagramProtocol):
    """A UDP endpoint that records what it receives and from where."""

    noisy = False

    def __init__(self) -> None:
        self.received: list[tuple[bytes, tuple[str, int]]] = []

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append((data, addr))

    @property
    def address(self) -> tuple[str, int]:
        host = self.transport.getHost()
        return (host.host, host.port)

    def send(self, data: bytes, port: int) -> None:
        self.transport.write(data, (HOST, port))


class Lab:
    """Phones and a relay on loopback; `close()` stops every listener it opened."""

    def __init__(self, pairs: int = 8) -> None:
        base = random.randrange(20000, 60000 - 2 * pairs, 2)
        self.pool = PortPool(base, base + 2 * pairs - 1)
        self.relay = MediaRelay(reactor, HOST, self.pool, HOST)
        self._listeners: list = []

    def phone(self, port: int = 0, host: str = HOST) -> Phone:
        phone = Phone()
        self._listeners.append(reactor.listenUDP(port, phone, interface=host))
        return phone

    async def close(self) -> None:
        await self.relay.close()
        for listener in self._listeners:
            await listener.stopListening()


async def until(condition, timeout: float = 2.0) -> None:
    """Let the reactor run until condition() holds (loopback is fast: usually one turn)."""
    for _ in range(int(timeout / 0.005)):
        if condition():
            return
        await deferLater(reactor, 0.005, lambda: None)
    assert condition()


async def settle() -> None:
    """Give packets that should not arrive a chance to arrive."""
    await deferLater(reactor, 0.05, lambda: None)


def connect(session: MediaSession, a: Phone, b: Phone) -> None:
    session.leg_a.set_remote(*a.address)
    session.leg_b.set_remote(*b.address)


@pytest_twisted.ensureDeferred
async def test_audio_flows_both_ways_through_the_relay():
    lab = Lab()
    try:
        alice, bob = lab.phone(), lab.phone()
        alice_rtcp, bob_rtcp = lab.phone(), lab.phone()
        session = lab.relay.create_session()
        a, b = session.leg_a, session.leg_b
        assert a.rtp_port % 2 == 0 and a.rtcp_port == a.rtp_port + 1 and b.rtp_port != a.rtp_port
        a.set_remote(*alice.address, rtcp_port=alice_rtcp.address[1])
        b.set_remote(*bob.address, rtcp_port=bob_rtcp.address[1])
        assert session.last_activity is None

        for seq in range(1, 6):
            alice.send(rtp(seq), a.rtp_port)
            bob.send(rtp(seq + 100, pt=8), b.rtp_port)
        alice.send(b"\x81\xc9\x00\x01rtcp", a.rtcp_port)
        await until(lambda: len(bob.received) == 5 and len(alice.received) == 5 and bob_rtcp.received)

        # each phone sees only the PBX: packets come from its own leg's ports, unchanged
        assert [d for d, _ in bob.received] == [rtp(seq) for seq in range(1, 6)]
        assert {src for _, src in bob.received} == {(HOST, b.rtp_port)}
        assert {src for _, src in alice.received} == {(HOST, a.rtp_port)}
        assert bob_rtcp.received == [(b"\x81\xc9\x00\x01rtcp", (HOST, b.rtcp_port))]

        stats = session.stats()
        assert stats["a"]["packets_in"] == 5 and stats["a"]["bytes_in"] == 5 * 172
        assert stats["b"]["packets_out"] == 5 and stats["b"]["bytes_out"] == 5 * 172
        assert stats["a"]["codec"] == "PCMU" and stats["b"]["codec"] == "PCMA"
        assert stats["a"]["lost"] == 0 and stats["a"]["rtcp_in"] == 1 and stats["b"]["rtcp_out"] == 1
        assert stats["a"]["latched"] == "%s:%d" % alice.address
        assert session.last_activity is not None
        totals = lab.relay.totals()
        assert totals["packets_relayed"] == 10 and totals["sessions_active"] == 1
    finally:
        await lab.close()


@pytest_twisted.ensureDeferred
async def test_latching_sends_audio_back_to_the_real_source():
    lab = Lab()
    try:
        bob = lab.phone()
        sdp_address = lab.phone()  # what alice's SDP says (a NAT hides her real port)
        alice = lab.phone()  # where her packets really come from
        session = lab.relay.create_session()
        a, b = session.leg_a, session.leg_b
        connect(session, sdp_address, bob)

        bob.send(rtp(1), b.rtp_port)  # before alice has sent anything: the SDP address
        await until(lambda: sdp_address.received)

        alice.send(rtp(1), a.rtp_port)
        await until(lambda: bob.received)
        assert a.latched == alice.address
        bob.send(rtp(2), b.rtp_port)
        await until(lambda: alice.received)
        assert [d for d, _ in alice.received] == [rtp(2)]
        assert len(sdp_address.received) == 1

        # the SDP address itself may always take the leg back (rule 2)
        sdp_address.send(rtp(2), a.rtp_port)
        await until(lambda: a.latched == sdp_address.address)
        assert a.dropped == 0
    finally:
        await lab.close()


@pytest_twisted.ensureDeferred
async def test_injection_into_a_latched_leg_is_dropped_and_counted():
    lab = Lab()
    try:
        alice, bob = lab.phone(), lab.phone()
        mallory = lab.phone(host="127.0.0.2")  # another host (all of 127/8 is loopback)
        session = lab.relay.create_session()
        a = session.leg_a
        connect(session, alice, bob)
        alice.send(rtp(1), a.rtp_port)
        await until(lambda: len(bob.received) == 1)

        mallory.send(rtp(666, ssrc=666), a.rtp_port)
        # RTCP has not latched yet, but RTP has: only alice's host may latch it
        mallory.send(b"\x81\xc9\x00\x01evil", a.rtcp_port)
        alice.send(rtp(2), a.rtp_port)
        await until(lambda: len(bob.received) == 2 and a.dropped == 2)
        await settle()
        assert [d for d, _ in bob.received] == [rtp(1), rtp(2)]
        assert a.latched == alice.address and a.latched_rtcp is None
        assert session.stats()["a"]["dropped"] == 2
        assert a.rtp_stats.ssrc == 0xCAFE and a.rtp_stats.packets == 2  # no trace in the statistics
        assert lab.relay.totals()["packets_dropped"] == 2

        # a re-INVITE to the same address keeps the latch; a new address relatches
        a.update_remote(*alice.address)
        assert a.latched == alice.address
        a.update_remote(HOST, 9)
        assert a.latched is None
        mallory.send(rtp(3), a.rtp_port)
        await until(lambda: a.latched == mallory.address)
    finally:
        await lab.close()


@pytest_twisted.ensureDeferred
async def test_no_remote_yet_drops_and_stats_count_loss():
    lab = Lab()
    try:
        alice, bob = lab.phone(), lab.phone()
        session = lab.relay.create_session()
        a, b = session.leg_a, session.leg_b
        a.set_remote(*alice.address)
        offer = SessionDescription.parse(
            b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            b"m=audio 4000 RTP/AVP 96 101\r\na=rtpmap:96 opus/48000/2\r\na=rtpmap:101 telephone-event/48000\r\n"
        )
        a.set_codecs(codecs(offer.media[0]))

        alice.send(rtp(1, pt=96), a.rtp_port)  # bob has not answered: nowhere to send
        await until(lambda: a.unroutable == 1)
        b.set_remote(*bob.address)
        for seq in (2, 3, 5, 6, 9):
            alice.send(rtp(seq, pt=96), a.rtp_port)
        await until(lambda: len(bob.received) == 5)
        stats = session.stats()["a"]
        assert (stats["packets_in"], stats["expected"], stats["lost"], stats["unroutable"]) == (6, 9, 3, 1)
        assert stats["codec"] == "opus" and stats["jitter_ms"] >= 0
        assert lab.relay.totals()["packets_lost"] == 3
    finally:
        await lab.close()


@pytest_twisted.ensureDeferred
async def test_close_frees_the_ports():
    lab = Lab(pairs=2)
    try:
        session = lab.relay.create_session()
        ports = [session.leg_a.rtp_port, session.leg_a.rtcp_port, session.leg_b.rtp_port, session.leg_b.rtcp_port]
        assert lab.pool.in_use == 2
        with pytest.raises(NoPortsAvailable):
            lab.relay.create_session()  # the pool is exhausted: the caller answers 503
        assert lab.relay.sessions_failed == 1
        closing = session.close()
        again = session.close()  # idempotent
        assert lab.relay.active_sessions == 0
        await closing
        await again
        assert lab.pool.in_use == 0
        for port in ports:  # the sockets are really gone
            lab.phone(port)
        assert lab.relay.totals()["sessions_created"] == 1
    finally:
        await lab.close()


@pytest_twisted.ensureDeferred
async def test_a_taken_port_is_skipped():
    lab = Lab(pairs=4)
    try:
        lab.phone(lab.pool.start)  # another program holds the first RTP port
        lab.phone(lab.pool.start + 3)  # ... and the second pair's RTCP port
        session = lab.relay.create_session()
        assert session.leg_a.rtp_port == lab.pool.start + 4
        assert session.leg_b.rtp_port == lab.pool.start + 6
        assert lab.pool.bind_failures == 2 and lab.pool.in_use == 2
        with pytest.raises(NoPortsAvailable):
            lab.relay.create_session()  # only the two taken pairs are left
        assert lab.pool.in_use == 2
        await session.close()
        assert lab.pool.in_use == 0
    finally:
        await lab.close()


def test_session_close_waits_for_the_sockets():
    # A fake listening port whose close completes later, as the reactor's does.
    class Port:
        def __init__(self) -> None:
            self.d: Deferred[None] = Deferred()

        def stopListening(self) -> Deferred[None]:
            return self.d

    class FakeReactor:
        def __init__(self) -> None:
            self.ports: list[Port] = []

        def seconds(self) -> float:
            return 0.0

        def listen(self, reactor, port, interface, receive):
            self.ports.append(Port())
            return self.ports[-1]

    fake = FakeReactor()
    pool = PortPool(10000, 10009)
    relay = MediaRelay(fake, HOST, pool, HOST, listen=fake.listen)
    session = relay.create_session()
    done = session.close()
    assert not done.called and pool.in_use == 2
    for port in fake.ports:
        port.d.callback(None)
    assert done.called and pool.in_use == 0
    assert session.close().called


@pytest_twisted.ensureDeferred
async def test_a_media_endpoint_hands_its_sockets_to_a_relay_leg():
    """The auto attendant connects a caller: the caller keeps sending to the same port."""
    from pbx.media.endpoint import MediaEndpoint

    lab = Lab()
    try:
        alice, bob = lab.phone(), lab.phone()
        endpoint = MediaEndpoint(reactor, lab.pool, HOST, HOST)
        endpoint.answer(SessionDescription.parse(
            f"v=0\r\no=- 1 1 IN IP4 {HOST}\r\ns=-\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n"
            f"m=audio {alice.address[1]} RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n".encode()))
        port = endpoint.rtp_port
        digits = []
        endpoint.on_dtmf = digits.append
        alice.send(rtp(1), port)
        key = struct.pack("!BBHII", 0x80, 101, 2, 4000, 0xCAFE) + bytes([1, 10, 0, 160])
        alice.send(key, port)  # "1": the attendant connects at the first event packet
        await until(lambda: digits == ["1"])
        session = lab.relay.create_session()
        own_port = session.leg_a.rtp_port
        await session.leg_a.adopt(endpoint.detach())
        session.leg_b.set_remote(*bob.address)
        assert endpoint.closed and session.leg_a.rtp_port == port
        assert lab.pool.in_use == 2 and own_port != port, "the leg's own pair went back to the pool"
        tail = struct.pack("!BBHII", 0x80, 101, 3, 4000, 0xCAFE) + bytes([1, 0x80 | 10, 0, 255])
        alice.send(tail, port)  # the rest of that key press is not passed on
        await settle()
        alice.send(rtp(4), port)
        bob.send(rtp(100), session.leg_b.rtp_port)
        await until(lambda: bob.received and alice.received)
        assert [data for data, _ in bob.received] == [rtp(4)]
        assert session.leg_a.dropped == 1
        assert alice.received[-1] == (rtp(100), (HOST, port)), "still latched to the caller"
        await session.close()
        assert lab.pool.in_use == 0
    finally:
        await lab.close()


@pytest_twisted.ensureDeferred
async def test_music_on_hold_replaces_the_holders_audio_until_stopped():
    lab = Lab()
    try:
        alice, bob = lab.phone(), lab.phone()
        session = lab.relay.create_session()
        connect(session, alice, bob)
        tone = b"".join(struct.pack("<h", 8000 if (i // 10) % 2 else -8000) for i in range(1600))
        session.leg_b.play_music(reactor, tone, "PCMA", 8)
        alice.send(rtp(1), session.leg_a.rtp_port)  # the holder's audio must not reach bob
        await until(lambda: len(bob.received) >= 5)
        assert all(data[1] & 0x7F == 8 and len(data) == 172 for data, _ in bob.received)
        assert rtp(1) not in [data for data, _ in bob.received]
        session.leg_b.stop_music()
        await settle()
        count = len(bob.received)
        alice.send(rtp(2), session.leg_a.rtp_port)
        await until(lambda: len(bob.received) == count + 1)
        assert bob.received[-1][0] == rtp(2)
    finally:
        await lab.close()


@pytest_twisted.ensureDeferred
async def test_closing_is_immediate_and_leaves_no_cycle_behind():
    """A call's session is freed by reference counting alone: nothing waits for the garbage collector."""
    lab = Lab(pairs=2)
    try:
        alice, bob = lab.phone(), lab.phone()
        session = lab.relay.create_session()
        connect(session, alice, bob)  # (no packet: the latching log line would keep its leg alive)
        gc.disable()
        try:
            closing = session.close()
            assert closing.called and lab.pool.in_use == 0, "sockets closed and ports released at once"
            assert session.stats()["a"]["remote"] == "%s:%d" % alice.address, "the counters outlive the sockets"
            gone = [weakref.ref(o) for o in (session, session.leg_a, session.leg_b)]
            del session, closing
            assert [ref() for ref in gone] == [None, None, None]
        finally:
            gc.enable()
    finally:
        await lab.close()


def test_last_activity_is_the_newest_packet_on_either_leg():
    class Clock:
        def seconds(self) -> float:
            return 0.0

    session = MediaSession(1, Clock())
    assert session.last_activity is None
    session.leg_b.last_activity = 7.0
    assert session.last_activity == 7.0
    session.leg_a.last_activity = 9.5
    assert session.last_activity == 9.5
