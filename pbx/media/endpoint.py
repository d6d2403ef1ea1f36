"""The PBX as the far end of a call leg: it answers, plays prompts, records and hears DTMF.

A `MediaEndpoint` is what voicemail, the auto attendant and music on hold
put where a relay leg would otherwise be. It binds one RTP/RTCP port pair
from the pool (like a relay leg), answers the phone's offer with its own
SDP (G.711 µ-law or A-law plus telephone-event, the phone's ptime), and then:

- plays PCM through a paced `Player` (see `pbx.media.player`);
- records through a `Recorder` when asked (see `pbx.media.recorder`);
- reports key presses once each to `on_dtmf(digit)`, from RFC 4733 events
  in RTP or, for phones that send none, from SIP INFO bodies handed to
  `info_received` by call control. Once a call has produced RFC 4733
  events, INFO digits are ignored: phones that send both would otherwise
  type every key twice.

Latching is the relay's symmetric RTP (`pbx.media.relay`): the endpoint
sends to the SDP address until the first packet arrives, then to where that
packet came from; later packets from any other source than the latched one
or the SDP address are dropped. Digits are never logged (they carry PINs).
RTCP is received and counted, not sent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.abstract import isIPAddress
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from pbx.media import g711
from pbx.media.dtmf import DTMFDetector, parse_info
from pbx.media.player import Player
from pbx.media.portpool import PortPool
from pbx.media.sockets import Listen, bind_pair, listen_media
from pbx.media.recorder import Recorder, payload_of
from pbx.media.rtp import RTPStats
from pbx.sip.sdp import (
    Origin,
    SDPError,
    SessionDescription,
    codecs,
    connection_address,
    direction,
)

__all__ = ["MediaEndpoint", "DEFAULT_PTIME", "usable_ptime"]

Address = tuple[str, int]

DEFAULT_PTIME = 20
_ANSWER_DIRECTION = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}


def usable_ptime(ptime: int | None) -> int:
    """The packet time the PBX sends with: the phone's a=ptime when it is a
    multiple of 10 ms up to 60 ms (what the player can pace), else 20 ms."""
    if ptime is None or ptime % 10 or not 10 <= ptime <= 60:
        return DEFAULT_PTIME
    return ptime


class MediaEndpoint:
    """One call leg terminated by the PBX.

    Binding happens in the constructor: NoPortsAvailable (answer 503) when
    no pair of the pool can be bound in `bind_attempts` tries. `reactor`
    provides IReactorUDP and IReactorTime (the player's clock).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        port_pool: PortPool,
        bind_host: str,
        advertised_address: str,
        *,
        bind_attempts: int = 5,
        codec_preference: tuple[str, ...] = ("PCMU", "PCMA"),
        idle_silence: bool = False,
        max_burst: int = 3,
        on_dtmf: Callable[[str], object] | None = None,
        listen: Listen = listen_media,
    ) -> None:
        self.reactor = reactor
        self.advertised_address = advertised_address
        self.origin = Origin(advertised_address)
        self.codec_preference = tuple(c.upper() for c in codec_preference)
        self.idle_silence = idle_silence
        self.max_burst = max_burst
        self.on_dtmf = on_dtmf
        self.codec: str | None = None
        self.payload_type: int | None = None
        self.event_payload_type: int | None = None
        self.ptime = DEFAULT_PTIME
        self.direction = "sendrecv"  # ours, as answered
        self.remote_rtp: Address | None = None
        self.latched: Address | None = None
        self.player: Player | None = None
        self.recorder: Recorder | None = None
        self.dtmf = DTMFDetector()
        self.rtp_stats = RTPStats()
        self.last_activity: float | None = None
        self.dropped = 0
        self.rtcp_in = 0
        self.send_errors = 0
        self.info_digits = 0
        self._rfc4733_seen = False
        self._last_event: tuple[int, int] | None = None  # (ssrc, timestamp) of the newest key press
        self._closing: Deferred[None] | None = None
        self._pool: PortPool | None = None
        self._rtp: IListeningPort | None = None
        self._rtcp: IListeningPort | None = None
        self.rtp_port: int
        self.rtcp_port: int
        self._bind(bind_host, port_pool, bind_attempts, listen)

    # -- SDP ----------------------------------------------------------------------

    def answer(self, offer: SessionDescription) -> bytes:
        """The SDP answer to a phone's offer (initial or re-INVITE); SDPError (488) when none fits.

        The first audio stream over RTP/AVP(F) with a common codec is
        accepted; every other stream is refused with port 0 (RFC 3264 §6).
        The codec is the first of the offer's that `codec_preference` allows
        (the offerer's order wins), telephone-event is accepted when offered
        at 8000 Hz, and the offer's a=ptime is used when it is a multiple of
        10 ms up to 60 ms.
        """
        chosen = None
        for index, media in enumerate(offer.media):
            if media.media != "audio" or media.port == 0 or media.proto.upper() not in ("RTP/AVP", "RTP/AVPF"):
                continue
            offered = codecs(media)
            audio = [
                (pt, name.upper()) for pt, name, rate in offered if rate == 8000 and name.upper() in self.codec_preference
            ]
            if audio:
                events = [pt for pt, name, rate in offered if name.lower() == "telephone-event" and rate == 8000]
                chosen = (index, media, audio[0], events[0] if events else None)
                break
        if chosen is None:
            raise SDPError("no audio stream with PCMU or PCMA in the offer")
        index, media, (pt, name), event_pt = chosen
        ptime = usable_ptime(media.ptime)
        answer_direction = _ANSWER_DIRECTION[direction(offer, media)]

        self._set_remote(connection_address(offer, media), media.port)
        self.direction = answer_direction
        self.event_payload_type = event_pt
        self._set_codec(name, pt, ptime)

        formats = [str(pt)] + ([str(event_pt)] if event_pt is not None else [])
        lines = [f"a=rtpmap:{pt} {name}/8000"]
        if event_pt is not None:
            lines += [f"a=rtpmap:{event_pt} telephone-event/8000", f"a=fmtp:{event_pt} 0-16"]
        lines += [f"a=ptime:{ptime}", f"a={answer_direction}"]
        sections = []
        for i, m in enumerate(offer.media):
            if i == index:
                sections.append(f"m=audio {self.rtp_port} {m.proto} {' '.join(formats)}")
                sections.extend(lines)
            else:
                sections.append(f"m={m.media} 0 {m.proto} {' '.join(m.formats[:1]) or '0'}")
        family = "IP6" if ":" in self.advertised_address else "IP4"
        body = ["s=-", f"c=IN {family} {self.advertised_address}", "t=0 0", *sections]
        content = "".join(f"{line}\r\n" for line in body).encode()
        self.origin.stamp(content)
        return f"v=0\r\no={self.origin.line()}\r\n".encode() + content

    def _set_remote(self, host: str | None, port: int) -> None:
        remote: Address | None = (host, port) if host and port and host != "0.0.0.0" and isIPAddress(host) else None
        if remote != self.remote_rtp:
            if self.remote_rtp is not None:
                self.latched = None  # a new address: latch again
            self.remote_rtp = remote

    def _set_codec(self, name: str, pt: int, ptime: int) -> None:
        player = self.player
        if player is not None and (player.codec, player.payload_type, player.ptime) == (name, pt, ptime):
            return
        if player is not None:
            player.close()
        self.codec, self.payload_type, self.ptime = name, pt, ptime
        self.player = Player(
            self.reactor, self._send, name, pt, ptime, idle_silence=self.idle_silence, max_burst=self.max_burst
        )

    # -- playing, recording, DTMF ---------------------------------------------------

    def _require_player(self) -> Player:
        if self.player is None:
            raise RuntimeError("the endpoint has not answered an offer yet")
        return self.player

    def play(self, pcm: bytes, loop: bool = False) -> Deferred[bool]:
        """Play 8 kHz s16le PCM now, cutting off what was playing; fires True when played to its end."""
        return self._require_player().play(pcm, loop)

    def play_then(self, pcm: bytes, loop: bool = False) -> Deferred[bool]:
        """Queue PCM after what is playing."""
        return self._require_player().play_then(pcm, loop)

    def stop_playing(self) -> None:
        if self.player is not None:
            self.player.stop()

    def record(self, **options: Any) -> Recorder:
        """Start a new recording of what the phone sends (options: see `Recorder`).

        A recording in progress is stopped first. Wait on `recorder.done`,
        then write `recorder.pcm` with `pbx.media.wav.write_wav`.
        """
        if self.recorder is not None:
            self.recorder.stop()
        decoders = {0: g711.decode_ulaw, 8: g711.decode_alaw}
        if self.payload_type is not None and self.codec is not None:
            decoders[self.payload_type] = g711.decoder(self.codec)
        self.recorder = Recorder(decoders=decoders, **options)
        return self.recorder

    def info_received(self, content_type: str, body: bytes) -> bool:
        """A SIP INFO on this leg: True when it was a DTMF body (answer 200), else False (415).

        Ignored as a duplicate once the phone has sent RFC 4733 events.
        """
        digit = parse_info(content_type, body)
        if digit is None:
            return False
        if not self._rfc4733_seen:
            self.info_digits += 1
            self._digit(digit)
        return True

    def _digit(self, digit: str) -> None:
        callback = self.on_dtmf
        if callback is None:
            return
        try:
            callback(digit)
        except Exception:
            self.log.failure("DTMF callback of media endpoint on port {port} failed", port=self.rtp_port)

    # -- the packet path ---------------------------------------------------------------

    def _send(self, packet: bytes) -> None:
        if self.direction in ("recvonly", "inactive") or self._rtp is None:
            return
        target = self.latched or self.remote_rtp
        if target is None:
            return
        try:
            self._rtp.write(packet, target)
        except OSError:
            self.send_errors += 1

    def _rtp_received(self, data: bytes, addr: Address) -> None:
        latched = self.latched
        if addr != latched:
            if latched is not None and addr != self.remote_rtp:
                self.dropped += 1
                return
            self.log.info(
                "media endpoint on port {port} latched to {host}:{remote_port}",
                port=self.rtp_port, host=addr[0], remote_port=addr[1],
            )
            self.latched = addr
        now = self.reactor.seconds()
        self.rtp_stats.update(data, now)
        self.last_activity = now
        parsed = payload_of(data)
        if parsed is None:
            return
        pt, _, sequence, timestamp, ssrc, payload = parsed
        if pt == self.event_payload_type:
            digit = self.dtmf.feed(timestamp, payload, ssrc)
            self._rfc4733_seen = True
            self._last_event = (ssrc, timestamp)
            if digit is not None:
                self._digit(digit)
            return
        recorder = self.recorder
        if recorder is not None and not recorder.stopped:
            recorder.receive(pt, sequence, timestamp, ssrc, payload)

    def _rtcp_received(self, data: bytes, addr: Address) -> None:
        self.rtcp_in += 1

    # -- sockets -------------------------------------------------------------------------

    def _bind(self, interface: str, pool: PortPool, attempts: int, listen: Listen) -> None:
        port, self._rtp, self._rtcp = bind_pair(
            self.reactor, pool, interface, attempts, self._rtp_received, self._rtcp_received, listen
        )
        self._pool = pool
        self.rtp_port, self.rtcp_port = port, port + 1

    def stats(self) -> dict[str, Any]:
        """Counters (JSON-friendly) for the call record and the API."""
        rtp = self.rtp_stats
        player = self.player
        return {
            "local_port": self.rtp_port,
            "remote": None if self.remote_rtp is None else f"{self.remote_rtp[0]}:{self.remote_rtp[1]}",
            "latched": None if self.latched is None else f"{self.latched[0]}:{self.latched[1]}",
            "codec": self.codec,
            "ptime": self.ptime,
            "packets_in": rtp.packets,
            "packets_out": player.packets_sent if player else 0,
            "lost": rtp.lost,
            "jitter_ms": round(rtp.jitter_ms, 3),
            "dropped": self.dropped,
            "dtmf_events": self.dtmf.events + self.info_digits,
            "slots_skipped": player.slots_skipped if player else 0,
        }

    @property
    def closed(self) -> bool:
        return self._closing is not None

    def close(self) -> Deferred[None]:
        """Stop playing and recording, close both sockets; the pair returns to the pool. Idempotent."""
        if self._closing is None:
            if self.player is not None:
                self.player.close()
            if self.recorder is not None:
                self.recorder.stop()
            self._closing = self._close_sockets()
        d: Deferred[None] = Deferred()
        self._closing.addBoth(lambda result: (d.callback(None), result)[1])
        return d

    def detach(self) -> tuple[int, Any, Any, PortPool | None, Address | None, Address | None,
                              tuple[int, int, int] | None]:
        """Hand the sockets over to a relay leg (the call is connected elsewhere):
        (rtp port, rtp socket, rtcp socket, pool, SDP address, latched address,
        the key press still sounding as (payload type, ssrc, timestamp) or None).

        The key that chose the destination is acted on at its first event
        packet; the rest of that press must not reach the callee.

        The phone keeps sending to the same port, so no re-INVITE is needed.
        Playing and recording stop; the endpoint counts as closed.
        """
        if self._closing is not None or self._rtp is None:
            raise RuntimeError("the media endpoint is already closed")
        if self.player is not None:
            self.player.close()
        if self.recorder is not None:
            self.recorder.stop()
        pressed = None
        if self._last_event is not None and self.event_payload_type is not None:
            pressed = (self.event_payload_type, *self._last_event)
        handed = (self.rtp_port, self._rtp, self._rtcp, self._pool, self.remote_rtp, self.latched, pressed)
        self._rtp = self._rtcp = None
        self._pool = None
        self._closing = succeed(None)
        return handed

    def _close_sockets(self) -> Deferred[None]:
        sockets = [s for s in (self._rtp, self._rtcp) if s is not None]
        self._rtp = self._rtcp = None
        if not sockets:
            return succeed(None)
        pool, port = self._pool, self.rtp_port
        d = gatherResults([maybeDeferred(s.stopListening) for s in sockets], consumeErrors=True)

        def release(result: object) -> None:
            if pool is not None:
                pool.release(port)
            if not isinstance(result, list):
                self.log.failure("closing media endpoint on port {port}", result, port=port)  # type: ignore[arg-type]

        d.addBoth(release)
        return d
