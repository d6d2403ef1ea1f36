"""The RTP relay: each call's audio flows phone A <-> PBX <-> phone B.

A `MediaSession` is two `MediaLeg`s. Leg A faces the caller, leg B the
callee; each binds an RTP port and the RTCP port above it on the PBX's
address, and the SDP each phone receives names its own leg's ports. A packet
that arrives on leg A's RTP socket leaves from leg B's RTP socket towards
phone B, and the other way round; RTCP likewise.

Latching (symmetric RTP, for phones behind NAT, whose SDP names a private
address): a leg sends to the address its phone's packets come from, not to
the one the SDP names.

1. Until a leg has latched, the first packet from any source latches it, and
   until then the leg sends to the SDP address.
2. Once latched, packets from the latched source pass; a packet from exactly
   the SDP address relatches (the phone is where it said it is: this settles
   a race between a stale source and the real phone); any other source is
   dropped and counted, so nobody can inject audio into a call.
3. `set_remote` / `update_remote` with a different address (a re-INVITE, or a
   second fork answering) unlatches, and rule 1 applies again.

RTCP latches separately, by the same rules, except that once RTP has
latched only the same host may latch RTCP (a NAT maps both from one public
address). Until RTCP has latched it goes to the SDP RTCP address, or, when
RTP latched elsewhere than the SDP said, to the latched RTP port + 1.

The packet path is written to be cheap: no logging, no allocation beyond the
header unpack for statistics, counters as plain attribute increments.

A session is made and closed for every call, so that is cheap too: closing
needs no Deferreds when the sockets close at once, and a closed session holds
no reference cycle (a leg knows its session by id; the legs let go of each
other), so reference counting frees it without waiting for the garbage collector.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet.abstract import isIPAddress
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from pbx.media.portpool import NoPortsAvailable, PortPool
from pbx.media.player import Player
from pbx.media.sockets import Listen, bind_pair, listen_media, retarget, stop_listening
from pbx.media.rtp import STATIC_CLOCK_RATES, STATIC_PAYLOAD_TYPES, RTPStats

Address = tuple[str, int]

#: Encodings whose timestamps do not follow arrival time (RFC 4733 events).
_NO_JITTER = frozenset({"telephone-event"})


def _format(address: Address | None) -> str | None:
    return None if address is None else f"{address[0]}:{address[1]}"


class MediaLeg:
    """One side of a session: two local sockets and the phone they talk to."""

    log = Logger()

    def __init__(self, session_id: int, name: str, clock: Any) -> None:
        self.session_id = session_id
        self.name = name
        self._clock = clock
        self.peer: MediaLeg = self  # set by the session to the other leg
        #: Clock time of the last RTP packet accepted from this leg's phone (None before the first).
        self.last_activity: float | None = None
        self.rtp_port: int | None = None
        self.rtcp_port: int | None = None
        self.remote_rtp: Address | None = None  # from the SDP
        self.remote_rtcp: Address | None = None
        self.latched: Address | None = None  # where the phone's RTP really comes from
        self.latched_rtcp: Address | None = None
        self.rtp_stats = RTPStats()
        self.packets_out = 0
        self.bytes_out = 0
        self.rtcp_in = 0
        self.rtcp_out = 0
        self.dropped = 0  # from a source other than the latched one
        self.unroutable = 0  # received while the other phone's address was unknown
        self.send_errors = 0
        self._codecs: dict[int, str] = {}
        #: Music on hold towards this leg's phone; while it plays, the other phone's audio is not forwarded.
        self.music: Player | None = None
        #: (payload type, ssrc, timestamp) of a key press whose tail is dropped (see `adopt`).
        self._key_tail: tuple[int, int, int] | None = None
        self._rtp: IListeningPort | None = None
        self._rtcp: IListeningPort | None = None
        self._pool: PortPool | None = None

    # -- control (from call control, per SDP) ---------------------------------

    def set_remote(self, host: str, port: int, rtcp_port: int | None = None) -> None:
        """Where the phone said (in SDP) it receives this stream; RTCP defaults to port + 1.

        A new address unlatches (see the module docstring); the same address
        again (a hold re-INVITE) keeps the latch. Host "0.0.0.0", port 0 or a
        host name (the relay cannot resolve on the packet path) leave no
        SDP address: the leg then sends only where it latched.
        """
        remote: Address | None = (host, port)
        if not port or host == "0.0.0.0" or not isIPAddress(host):
            if port and host != "0.0.0.0":
                self.log.warn(
                    "media {session} leg {leg}: SDP address {host} is not an IPv4 address; waiting for latching",
                    session=self.session_id, leg=self.name, host=host,
                )
            remote = None
        if remote == self.remote_rtp:
            if remote is not None and rtcp_port:
                self.remote_rtcp = (remote[0], rtcp_port)
            return
        had_remote = self.remote_rtp is not None
        self.remote_rtp = remote
        self.remote_rtcp = None if remote is None else (remote[0], rtcp_port or port + 1)
        if had_remote:
            self.unlatch()

    def update_remote(self, host: str, port: int, rtcp_port: int | None = None) -> None:
        """The phone's SDP changed (re-INVITE, UPDATE, another fork answered): same rules as set_remote."""
        self.set_remote(host, port, rtcp_port)

    def unlatch(self) -> None:
        """Forget the learned sources; the next packet latches again."""
        self.latched = None
        self.latched_rtcp = None

    def set_codecs(self, codecs: Iterable[tuple[int, str, int]]) -> None:
        """Payload types from the SDP (`pbx.sip.sdp.codecs`): names for stats, clock rates for jitter."""
        names: dict[int, str] = {}
        rates = dict(STATIC_CLOCK_RATES)
        for pt, name, rate in codecs:
            names[pt] = name
            rates[pt] = 0 if name.lower() in _NO_JITTER else rate
        self._codecs = names
        self.rtp_stats.set_rates(rates)

    @property
    def codec(self) -> str | None:
        """The encoding of the last RTP packet received from the phone, when known."""
        pt = self.rtp_stats.payload_type
        if pt is None:
            return None
        name = self._codecs.get(pt)
        if name is None and pt in STATIC_PAYLOAD_TYPES:
            name = STATIC_PAYLOAD_TYPES[pt][0]
        return name

    def stats(self) -> dict[str, Any]:
        """Counters of this leg; "in" is from its phone, "out" is to it."""
        rtp = self.rtp_stats
        return {
            "local_port": self.rtp_port,
            "remote": _format(self.remote_rtp),
            "latched": _format(self.latched),
            "packets_in": rtp.packets,
            "bytes_in": rtp.bytes,
            "packets_out": self.packets_out,
            "bytes_out": self.bytes_out,
            "rtcp_in": self.rtcp_in,
            "rtcp_out": self.rtcp_out,
            "dropped": self.dropped,
            "unroutable": self.unroutable,
            "send_errors": self.send_errors,
            "expected": rtp.expected,
            "lost": rtp.lost,
            "jitter_ms": round(rtp.jitter_ms, 3),
            "codec": self.codec,
            "payload_type": rtp.payload_type,
        }

    # -- the packet path ---------------------------------------------------------

    def _rtp_received(self, data: bytes, addr: Address) -> None:
        latched = self.latched
        if addr != latched:
            if latched is not None and addr != self.remote_rtp:
                self.dropped += 1
                return
            self._latch(addr)
        if self._key_tail is not None and self._is_key_tail(data):
            self.dropped += 1
            return
        now = self._clock.seconds()
        self.rtp_stats.update(data, now)
        self.last_activity = now
        peer = self.peer
        if peer.music is not None:
            return
        target = peer.latched or peer.remote_rtp
        if target is None:
            self.unroutable += 1
            return
        try:
            peer._rtp.write(data, target)  # type: ignore[union-attr]
        except OSError:
            peer.send_errors += 1
            return
        peer.packets_out += 1
        peer.bytes_out += len(data)

    def _rtcp_received(self, data: bytes, addr: Address) -> None:
        latched = self.latched_rtcp
        if addr != latched and addr != self.remote_rtcp:
            rtp = self.latched
            if latched is not None or (rtp is not None and addr[0] != rtp[0]):
                self.dropped += 1
                return
            self.latched_rtcp = addr
        elif addr != latched:
            self.latched_rtcp = addr
        self.rtcp_in += 1
        peer = self.peer
        target = peer._rtcp_target()
        if target is None:
            self.unroutable += 1
            return
        try:
            peer._rtcp.write(data, target)  # type: ignore[union-attr]
        except OSError:
            peer.send_errors += 1
            return
        peer.rtcp_out += 1

    def _is_key_tail(self, data: bytes) -> bool:
        """Whether `data` is the rest of the key press that connected the call; stops looking once past it."""
        pt, ssrc, timestamp = self._key_tail  # type: ignore[misc]
        if (len(data) >= 12 and data[1] & 0x7F == pt and int.from_bytes(data[8:12], "big") == ssrc
                and int.from_bytes(data[4:8], "big") == timestamp):
            return True
        self._key_tail = None
        return False

    def _rtcp_target(self) -> Address | None:
        if self.latched_rtcp is not None:
            return self.latched_rtcp
        latched = self.latched
        if latched is not None and latched != self.remote_rtp:
            return (latched[0], latched[1] + 1)
        return self.remote_rtcp

    def _latch(self, addr: Address) -> None:
        """Once per leg (and per SDP change): worth a log line."""
        self.log.info(
            "media {session} leg {leg} latched to {host}:{port} (SDP said {remote})",
            session=self.session_id, leg=self.name, host=addr[0], port=addr[1], remote=_format(self.remote_rtp),
        )
        self.latched = addr

    # -- music on hold --------------------------------------------------------------

    def play_music(self, reactor: Any, pcm: bytes, codec: str, payload_type: int, ptime: int = 20) -> None:
        """Play `pcm` looped to this leg's phone (it is on hold) instead of the other phone's audio."""
        self.stop_music()
        self.music = Player(reactor, self._send_music, codec, payload_type, ptime)
        self.music.play(pcm, loop=True)

    def stop_music(self) -> None:
        music, self.music = self.music, None
        if music is not None:
            music.close()

    def _send_music(self, packet: bytes) -> None:
        target = self.latched or self.remote_rtp
        if target is None or self._rtp is None:
            return
        try:
            self._rtp.write(packet, target)
        except OSError:
            self.send_errors += 1
            return
        self.packets_out += 1
        self.bytes_out += len(packet)

    # -- sockets ----------------------------------------------------------------

    def adopt(self, handed: tuple[int, Any, Any, PortPool | None, Address | None, Address | None,
                                  tuple[int, int, int] | None]) -> Deferred[None]:
        """Take over a media endpoint's sockets (`MediaEndpoint.detach`), closing this leg's own.

        The phone already sends to the endpoint's port; it stays latched. The
        rest of the key press that chose the destination is dropped, not
        passed on (the callee would hear or read a digit).
        """
        port, rtp, rtcp, pool, remote, latched, self._key_tail = handed
        own = self._close()
        self._rtp, self._rtcp, self._pool = rtp, rtcp, pool
        self.rtp_port, self.rtcp_port = port, port + 1
        retarget(rtp, self._rtp_received)
        retarget(rtcp, self._rtcp_received)
        if remote is not None:
            self.set_remote(*remote)
        self.latched = latched
        return succeed(None) if own is None else own

    def _bind(self, reactor: Any, interface: str, pool: PortPool, attempts: int, listen: Listen) -> None:
        port, self._rtp, self._rtcp = bind_pair(
            reactor, pool, interface, attempts, self._rtp_received, self._rtcp_received, listen
        )
        self._pool = pool
        self.rtp_port, self.rtcp_port = port, port + 1

    def _close(self) -> Deferred[None] | None:
        """Stop both sockets; the pair goes back to the pool once they are closed.

        None when that happened at once, else a Deferred that fires when it has.
        """
        self.stop_music()
        sockets = [s for s in (self._rtp, self._rtcp) if s is not None]
        self._rtp = self._rtcp = None
        if not sockets:
            return None
        d = stop_listening(sockets)
        pool, port = self._pool, self.rtp_port
        if d is None:
            if pool is not None and port is not None:
                pool.release(port)
            return None

        def release(result: object) -> object:
            if pool is not None and port is not None:
                pool.release(port)
            return result

        d.addBoth(release)
        return d


class MediaSession:
    """The media of one call: leg A (caller) and leg B (callee)."""

    log = Logger()

    def __init__(self, session_id: int, clock: Any) -> None:
        self.id = session_id
        self.leg_a = MediaLeg(session_id, "a", clock)
        self.leg_b = MediaLeg(session_id, "b", clock)
        self.leg_a.peer = self.leg_b
        self.leg_b.peer = self.leg_a
        self.created = clock.seconds()
        self.closed = False
        self._closing: Deferred[None] | None = None
        self._waiters: list[Deferred[None]] | None = []  # None once closed
        self._on_close: list[Any] = []

    @property
    def legs(self) -> tuple[MediaLeg, MediaLeg]:
        return self.leg_a, self.leg_b

    @property
    def last_activity(self) -> float | None:
        """Clock time of the last RTP packet accepted on either leg (None before the first)."""
        a, b = self.leg_a.last_activity, self.leg_b.last_activity
        if a is None or b is None:
            return b if a is None else a
        return max(a, b)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per-leg counters (JSON-friendly, for the call record and events)."""
        return {"a": self.leg_a.stats(), "b": self.leg_b.stats()}

    def close(self) -> Deferred[None]:
        """Stop all four sockets and return the ports; fires when they are closed. Idempotent."""
        if self._closing is None:
            self.closed = True
            for callback in self._on_close:
                callback(self)
            pending = [d for d in (self.leg_a._close(), self.leg_b._close()) if d is not None]
            # No packet can arrive any more: the legs let go of each other (no cycle to collect).
            self.leg_a.peer = self.leg_b.peer = None  # type: ignore[assignment]
            self._closing = gatherResults(pending, consumeErrors=True) if pending else succeed([])
            self._closing.addBoth(self._closed)
        if self._waiters is None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d

    def _closed(self, result: object) -> None:
        waiters, self._waiters = self._waiters or [], None
        for d in waiters:
            d.callback(None)
        if not isinstance(result, list):
            self.log.failure("closing media {session}", result, session=self.id)  # type: ignore[arg-type]


class MediaRelay:
    """Creates media sessions on the PBX's address and keeps totals for metrics.

    `reactor` provides IReactorUDP and IReactorTime; only the composition root
    passes the global one. `advertised_address` is what SDP names (the
    external IP behind NAT), `bind_host` where the sockets listen.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        bind_host: str,
        port_pool: PortPool,
        advertised_address: str,
        bind_attempts: int = 5,
        listen: Listen = listen_media,
    ) -> None:
        self.reactor = reactor
        self.listen = listen  # opens one UDP socket (pbx.media.sockets)
        self.bind_host = bind_host
        self.port_pool = port_pool
        self.advertised_address = advertised_address
        self.bind_attempts = bind_attempts
        self._sessions: dict[int, MediaSession] = {}
        self._next_id = 1
        self.sessions_created = 0
        self.sessions_failed = 0  # no port pair could be bound (the call got 503)
        self._closed_totals = {"packets_relayed": 0, "bytes_relayed": 0, "packets_lost": 0, "packets_dropped": 0}

    def create_session(self) -> MediaSession:
        """A session with both legs bound; raises NoPortsAvailable (answer 503)."""
        session = MediaSession(self._next_id, self.reactor)
        self._next_id += 1
        try:
            for leg in session.legs:
                leg._bind(self.reactor, self.bind_host, self.port_pool, self.bind_attempts, self.listen)
        except NoPortsAvailable as error:
            self.sessions_failed += 1
            self.log.warn("no RTP ports for a new media session: {error}", error=str(error))
            session.close()
            raise
        self._sessions[session.id] = session
        session._on_close.append(self._session_closed)
        self.sessions_created += 1
        return session

    @property
    def active_sessions(self) -> int:
        return len(self._sessions)

    def sessions(self) -> list[MediaSession]:
        return list(self._sessions.values())

    def totals(self) -> dict[str, int]:
        """Counters over all sessions, closed and live (for metrics)."""
        totals = dict(self._closed_totals)
        for session in self._sessions.values():
            _add(totals, session)
        totals["sessions_active"] = len(self._sessions)
        totals["sessions_created"] = self.sessions_created
        totals["sessions_failed"] = self.sessions_failed
        totals["ports_in_use"] = self.port_pool.in_use * 2
        totals["port_bind_failures"] = self.port_pool.bind_failures
        return totals

    def close(self) -> Deferred[None]:
        """Close every session (shut-down); fires when all sockets are closed."""
        d = gatherResults([s.close() for s in list(self._sessions.values())], consumeErrors=True)
        d.addCallback(lambda _: None)
        return d

    def _session_closed(self, session: MediaSession) -> None:
        if self._sessions.pop(session.id, None) is not None:
            _add(self._closed_totals, session)


def _add(totals: dict[str, int], session: MediaSession) -> None:
    for leg in session.legs:
        totals["packets_relayed"] += leg.packets_out
        totals["bytes_relayed"] += leg.bytes_out
        totals["packets_lost"] += leg.rtp_stats.lost
        totals["packets_dropped"] += leg.dropped
