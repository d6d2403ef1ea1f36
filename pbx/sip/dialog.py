"""One side of a SIP dialog (RFC 3261 §12): identifiers, CSeq, targets, route set.

Pure state; the B2BUA keeps one Dialog per leg and builds in-dialog requests
and responses from it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from pbx.sip.headers import NameAddr, parse_name_addr
from pbx.sip.ids import random_hex
from pbx.sip.message import Headers, Request, Response
from pbx.sip.transaction import new_branch


def new_tag() -> str:
    return random_hex(8)


def new_call_id(host: str) -> str:
    return f"{random_hex(12)}@{host}"


@dataclass(slots=True)
class Dialog:
    call_id: str
    local_tag: str
    local_uri: str  # From (ours) as sent, without tag
    remote_uri: str  # To (theirs) as sent, without tag
    remote_tag: str | None = None
    remote_target: str = ""  # the peer's Contact URI
    route_set: list[str] = field(default_factory=list)
    local_cseq: int = 0
    remote_cseq: int | None = None
    # Where the peer's messages come from: in-dialog requests go there, so
    # phones behind NAT are reachable (symmetric signalling).
    transport: str = "UDP"
    host: str = ""
    port: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return self.call_id, self.local_tag

    def next_cseq(self) -> int:
        self.local_cseq += 1
        return self.local_cseq

    def request(self, method: str, via_host: str, via_port: int, contact: str, cseq: int | None = None,
                body: bytes = b"", content_type: str | None = None) -> Request:
        """A new in-dialog request (RFC 3261 §12.2.1.1), loose routing only."""
        number = cseq if cseq is not None else self.next_cseq()
        headers = Headers()
        headers.add("Via", f"SIP/2.0/{self.transport} {via_host}:{via_port};branch={new_branch()};rport")
        headers.add("Max-Forwards", "70")
        headers.add("From", f"{self.local_uri};tag={self.local_tag}")
        to = self.remote_uri if self.remote_tag is None else f"{self.remote_uri};tag={self.remote_tag}"
        headers.add("To", to)
        headers.add("Call-ID", self.call_id)
        headers.add("CSeq", f"{number} {method}")
        for route in self.route_set:
            headers.add("Route", route)
        headers.add("Contact", contact)
        if content_type is not None:
            headers.add("Content-Type", content_type)
        return Request(method, self.remote_target, headers, body)

    def check_remote_cseq(self, request: Request) -> bool:
        """False for a request older than the last one (RFC 3261 §12.2.2: 500)."""
        number = request.cseq.number
        if self.remote_cseq is not None and number <= self.remote_cseq and request.method != "ACK":
            return False
        if request.method != "ACK":
            self.remote_cseq = number
        return True


def strip_tag(name_addr: NameAddr) -> str:
    params = {k: v for k, v in name_addr.params.items() if k != "tag"}
    return str(NameAddr(name_addr.uri, name_addr.display, params))


def uas_dialog(request: Request, local_tag: str, host: str, port: int, transport: str) -> Dialog:
    """Dialog state of the side that received a dialog-creating request (§12.1.1)."""
    from_ = request.from_()
    contact = request.headers.get_list("contact")
    target = str(parse_name_addr(contact[0], "Contact").uri) if contact else str(from_.uri)
    return Dialog(
        call_id=request.call_id,
        local_tag=local_tag,
        local_uri=strip_tag(request.to()),
        remote_uri=strip_tag(from_),
        remote_tag=from_.tag,
        remote_target=target,
        route_set=request.headers.get_list("record-route"),
        local_cseq=secrets.randbelow(10_000) + 1,
        remote_cseq=request.cseq.number,
        transport=transport,
        host=host,
        port=port,
    )


def update_from_response(dialog: Dialog, response: Response) -> None:
    """A UAC learns the remote tag, target and route set from a 1xx/2xx (§12.1.2)."""
    to = response.to()
    if to.tag:
        dialog.remote_tag = to.tag
    contact = response.headers.get_list("contact")
    if contact:
        dialog.remote_target = str(parse_name_addr(contact[0], "Contact").uri)
    record_route = response.headers.get_list("record-route")
    if record_route:
        dialog.route_set = list(reversed(record_route))


__all__ = ["Dialog", "new_call_id", "new_tag", "strip_tag", "uas_dialog", "update_from_response"]
