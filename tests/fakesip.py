"""An in-memory SIP network for call-control tests: the PBX core on a
task.Clock and scripted phones, with no sockets."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from twisted.internet.defer import succeed

from pbx.sip.message import Request, Response, make_response, parse_datagram
from pbx.sip.transport import Peer
from sipclient import authorization

SDP_TEMPLATE = (
    "v=0\r\no=- 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
    "m=audio {port} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na={direction}\r\n"
)


def sdp(host: str, port: int, direction: str = "sendrecv") -> bytes:
    return SDP_TEMPLATE.format(host=host, port=port, direction=direction).encode()


class FakeUDP:
    """Stands in for the PBX's UDP port: delivers what the PBX sends to phones."""

    def __init__(self, network: Network) -> None:
        self.network = network

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        self.network.deliver(data, addr)


class Network:
    def __init__(self, core) -> None:
        self.core = core
        self.phones: dict[tuple[str, int], Phone] = {}
        core.udp_transport = FakeUDP(self)
        self.lost: list[tuple[bytes, tuple[str, int]]] = []

    def deliver(self, data: bytes, addr: tuple[str, int]) -> None:
        phone = self.phones.get(addr)
        if phone is None:
            self.lost.append((data, addr))
        else:
            phone.receive(parse_datagram(data))

    def phone(self, user: str, host: str, port: int, password: str | None = None) -> Phone:
        phone = Phone(self, user, host, port, password)
        self.phones[(host, port)] = phone
        return phone


@dataclass
class Phone:
    network: Network
    user: str
    host: str
    port: int
    password: str | None
    received: list = field(default_factory=list)
    answer: str | None = None  # None: only ring; "200", "486", ... : answer that way at once
    ring: bool = True

    def send(self, message) -> None:
        self.network.core.datagram_received(
            message.to_bytes(),
            Peer("UDP", self.host, self.port, False, lambda data, addr: self.network.deliver(data, addr)),
        )

    def responses(self, method: str | None = None) -> list[Response]:
        return [m for m in self.received if isinstance(m, Response) and (method is None or m.cseq.method == method)]

    def requests(self, method: str | None = None) -> list[Request]:
        return [m for m in self.received if isinstance(m, Request) and (method is None or m.method == method)]

    def statuses(self, method: str | None = None) -> list[int]:
        return [r.status for r in self.responses(method)]

    def receive(self, message) -> None:
        self.received.append(message)
        if isinstance(message, Request):
            self.on_request(message)

    def reply(self, request: Request, status: int, reason: str, body: bytes = b"", tag: str = "calleetag") -> Response:
        response = make_response(request, status, reason, to_tag=tag)
        response.headers.add("Contact", f"<sip:{self.user}@{self.host}:{self.port}>")
        if body:
            response.headers.add("Content-Type", "application/sdp")
            response.body = body
        self.send(response)
        return response

    def on_request(self, request: Request) -> None:
        if request.method == "INVITE":
            self.last_invite = request
            if request.to().tag is not None:  # re-INVITE: mirror hold
                body = request.body.decode()
                direction = "recvonly" if "a=sendonly" in body else "sendrecv"
                self.reply(request, 200, "OK", sdp(self.host, 20000, direction))
                return
            if self.ring:
                self.reply(request, 180, "Ringing")
            if self.answer == "200":
                self.reply(request, 200, "OK", sdp(self.host, 20000))
            elif self.answer:
                self.reply(request, int(self.answer), "Failed")
        elif request.method == "CANCEL":
            self.reply(request, 200, "OK")
            self.reply(self.last_invite, 487, "Request Terminated")
        elif request.method in ("BYE", "OPTIONS", "INFO"):
            self.reply(request, 200, "OK")

    # -- as a caller ---------------------------------------------------------

    def invite(self, number: str, server: str = "127.0.0.1:5060", call_id: str | None = None,
               auth: str | None = None, cseq: int = 1, branch: str | None = None) -> Request:
        from pbx.sip.message import Headers

        headers = Headers()
        headers.add("Via", f"SIP/2.0/UDP {self.host}:{self.port};branch={branch or 'z9hG4bK' + secrets.token_hex(6)};rport")
        headers.add("Max-Forwards", "70")
        headers.add("From", f'"{self.user.title()}" <sip:{self.user}@{server}>;tag=callertag')
        headers.add("To", f"<sip:{number}@{server}>")
        headers.add("Call-ID", call_id or f"call-{secrets.token_hex(4)}")
        headers.add("CSeq", f"{cseq} INVITE")
        headers.add("Contact", f"<sip:{self.user}@{self.host}:{self.port}>")
        if auth:
            headers.add("Proxy-Authorization", auth)
        headers.add("Content-Type", "application/sdp")
        request = Request("INVITE", f"sip:{number}@{server}", headers, sdp(self.host, 30000))
        self.send(request)
        return request

    def call(self, number: str) -> Request:
        """INVITE, answer the 407 challenge (ACK it), INVITE again with credentials."""
        first = self.invite(number)
        challenge = self.responses("INVITE")[-1]
        assert challenge.status == 407, challenge
        self.ack_failure(first, challenge)
        auth = authorization(challenge, self.user, self.password, method="INVITE", uri=first.uri, header="Proxy-Authenticate")
        return self.invite(number, call_id=first.call_id, auth=auth, cseq=2)

    def ack_failure(self, invite: Request, response: Response) -> None:
        from pbx.sip.message import Headers

        headers = Headers()
        headers.add("Via", invite.headers.get("via"))
        headers.add("From", invite.headers.get("from"))
        headers.add("To", response.headers.get("to"))
        headers.add("Call-ID", invite.call_id)
        headers.add("CSeq", f"{invite.cseq.number} ACK")
        headers.add("Max-Forwards", "70")
        self.send(Request("ACK", invite.uri, headers))

    def in_dialog(self, method: str, invite: Request, ok: Response, cseq: int, body: bytes = b"") -> Request:
        """A request inside the dialog set up by `invite` and its 2xx `ok` (as the caller)."""
        from pbx.sip.message import Headers

        headers = Headers()
        headers.add("Via", f"SIP/2.0/UDP {self.host}:{self.port};branch=z9hG4bK{secrets.token_hex(6)};rport")
        headers.add("Max-Forwards", "70")
        headers.add("From", invite.headers.get("from"))
        headers.add("To", ok.headers.get("to"))
        headers.add("Call-ID", invite.call_id)
        headers.add("CSeq", f"{cseq} {method}")
        headers.add("Contact", f"<sip:{self.user}@{self.host}:{self.port}>")
        if body:
            headers.add("Content-Type", "application/sdp")
        target = str(ok.contacts()[0].uri)
        request = Request(method, target, headers, body)
        self.send(request)
        return request


class FakeLeg:
    def __init__(self, port: int) -> None:
        self.rtp_port = port
        self.remote = None
        self.history: list = []

        self.music: tuple | None = None
        self.adopted = None

    def set_remote(self, host: str, port: int) -> None:
        self.remote = (host, port)
        self.history.append(self.remote)

    update_remote = set_remote

    def play_music(self, clock, pcm: bytes, codec: str, payload_type: int, ptime: int = 20) -> None:
        self.music = (codec, payload_type, ptime)

    def stop_music(self) -> None:
        self.music = None

    def adopt(self, handed):
        self.adopted = handed
        self.rtp_port = handed[0]
        return succeed(None)


class FakeEndpoint:
    """A media endpoint's interface without sockets: answers with PCMU, logs what it is asked."""

    def __init__(self, port: int) -> None:
        self.rtp_port = port
        self.on_dtmf = None
        self.played: list[bytes] = []
        self.infos: list[tuple[str, bytes]] = []
        self.closed = False
        self.detached = False
        self.last_activity = None
        self.offers = 0

    def answer(self, offer) -> bytes:
        self.offers += 1
        return (
            f"v=0\r\no=- 1 {self.offers} IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {self.rtp_port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
            "a=rtpmap:101 telephone-event/8000\r\na=ptime:20\r\na=sendrecv\r\n"
        ).encode()

    def info_received(self, content_type: str, body: bytes) -> bool:
        self.infos.append((content_type, body))
        if content_type == "application/dtmf-relay" and self.on_dtmf is not None:
            self.on_dtmf(body.decode().split("Signal=")[1].split()[0])
            return True
        return False

    def play(self, pcm: bytes, loop: bool = False):
        from twisted.internet.defer import Deferred

        self.played.append(pcm)
        return Deferred()

    play_then = play

    def stop_playing(self) -> None:
        pass

    def stats(self) -> dict:
        return {"local_port": self.rtp_port}

    def detach(self):
        self.detached = True
        return (self.rtp_port, "rtp-socket", "rtcp-socket", None, None, None, None)

    def close(self):
        self.closed = True
        return succeed(None)


class FakeSession:
    def __init__(self, relay, base: int) -> None:
        self.relay = relay
        self.leg_a = FakeLeg(base)
        self.leg_b = FakeLeg(base + 2)
        self.last_activity = None
        self.closed = False

    def stats(self) -> dict:
        return {}

    def close(self):
        self.closed = True
        self.relay.open.remove(self)
        return succeed(None)


class FakeRelay:
    def __init__(self, capacity: int = 10) -> None:
        self.capacity = capacity
        self.open: list[FakeSession] = []
        self.created = 0

    def create_session(self) -> FakeSession:
        from pbx.media.portpool import NoPortsAvailable

        if len(self.open) >= self.capacity:
            raise NoPortsAvailable("test relay is full")
        self.created += 1
        session = FakeSession(self, 10000 + 4 * self.created)
        self.open.append(session)
        return session


class MemoryCDR:
    """The CDR repository's interface, in memory."""

    def __init__(self) -> None:
        self.open: dict[str, object] = {}
        self.closed: list = []

    def open_call(self, record):
        self.open[record.call_id] = record
        return succeed(None)

    def update_open(self, record):
        self.open[record.call_id] = record
        return succeed(None)

    def close_call(self, record):
        self.open.pop(record.call_id, None)
        self.closed.append(record)
        return succeed(None)
