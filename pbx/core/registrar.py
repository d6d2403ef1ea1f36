"""The registrar (RFC 3261 §10.3): digest-authenticated REGISTER -> location service.

Answers never reveal whether an extension exists: an unknown user gets the
same challenge, and the same 403, as a known one with a wrong password.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from pbx.core.auth import DigestGate
from pbx.core.events import EventBus
from pbx.core.location import Binding, LocationService
from pbx.sip.digest import DigestAuthenticator
from pbx.sip.errors import Forbidden, IntervalTooBrief, ParseError
from pbx.sip.message import Request
from pbx.sip.transaction import ServerTransaction
from pbx.sip.transport import Peer
from pbx.sip.uri import SipURI, unescape
from pbx.store.extensions import ExtensionRecord

_MAX_EXPIRES_TEXT = 10
NameAddrParams = dict[str, str | None]


def address_of_record(request: Request) -> str:
    """The extension a REGISTER is for: the user part of To (RFC 3261 §10.3 step 3)."""
    to = request.to()
    if not isinstance(to.uri, SipURI) or to.uri.user is None:
        raise ParseError("To of a REGISTER must be a SIP URI with a user", reason="Bad Address-of-Record")
    return unescape(to.uri.user)


class ExtensionDirectory:
    """In-memory copy of the extensions table: the hot path never queries the database."""

    def __init__(self) -> None:
        self._by_number: dict[str, ExtensionRecord] = {}

    def replace_all(self, records: list[ExtensionRecord]) -> None:
        self._by_number = {r.number: r for r in records}

    def put(self, record: ExtensionRecord) -> None:
        self._by_number[record.number] = record

    def remove(self, number: str) -> None:
        self._by_number.pop(number, None)

    def get(self, number: str) -> ExtensionRecord | None:
        return self._by_number.get(number)

    def __contains__(self, number: object) -> bool:
        return number in self._by_number

    def __len__(self) -> int:
        return len(self._by_number)

    def numbers(self) -> list[str]:
        return sorted(self._by_number)


class Registrar:
    """Handles REGISTER for the SIP core."""

    log = Logger()

    def __init__(
        self,
        core: Any,
        authenticator: DigestAuthenticator,
        directory: ExtensionDirectory,
        location: LocationService,
        events: EventBus,
        clock: Any,
        min_expires: int = 60,
        max_expires: int = 3600,
        default_expires: int = 3600,
    ) -> None:
        self.core = core
        self.auth = authenticator
        self.gate = DigestGate(core, authenticator, self.lookup_ha1)
        self.directory = directory
        self.location = location
        self.events = events
        self.clock = clock
        self.min_expires = min_expires
        self.max_expires = max_expires
        self.default_expires = default_expires
    def lookup_ha1(self, username: str, algorithm: str) -> str | None:
        """The stored HA1 of an extension, for digest checks of REGISTER and INVITE."""
        record = self.directory.get(username)
        if record is None or record.realm != self.auth.realm:
            return None
        return record.ha1(algorithm)

    def __call__(self, request: Request, transaction: ServerTransaction, peer: Peer) -> None:
        aor = address_of_record(request)
        username = self.gate.check(request, transaction, proxy=False)
        if username is None:
            return
        if username != aor:
            raise Forbidden("credentials do not match the address of record")
        self._update(request, transaction, peer, aor)

    def _expires_header(self, request: Request) -> int | None:
        value = request.headers.get("expires")
        if value is None:
            return None
        value = value.strip()
        if not value.isdigit():
            raise ParseError("bad Expires", reason="Bad Expires")
        return int(value) if len(value) <= _MAX_EXPIRES_TEXT else 2**32 - 1

    def _update(self, request: Request, transaction: ServerTransaction, peer: Peer, aor: str) -> None:
        """Apply the Contact list of an authenticated REGISTER (RFC 3261 §10.3 steps 6-8)."""
        now = self.clock.seconds()
        header_expires = self._expires_header(request)
        contacts = request.contacts()
        call_id = request.call_id
        cseq = request.cseq.number
        changed = False
        if "*" in contacts:
            if len(contacts) != 1 or header_expires != 0:
                raise ParseError("Contact * needs Expires: 0 and no other contact", reason="Bad Contact")
            changed = self.location.count(aor) > 0
            self.location.remove_all(aor)
        else:
            user_agent = request.headers.get("user-agent")
            updates: list[tuple[str, int, NameAddrParams]] = []
            for contact in contacts:
                expires = self._contact_expires(contact.params.get("expires"), header_expires)
                if 0 < expires < self.min_expires:
                    raise IntervalTooBrief(self.min_expires)
                updates.append((str(contact.uri), min(expires, self.max_expires), contact.params))
            for uri, expires, params in updates:
                existing = self.location.get(aor, uri)
                if existing is not None and existing.call_id == call_id and existing.cseq >= cseq:
                    continue  # an older REGISTER arriving late must not undo a newer one
                if expires == 0:
                    if existing is not None:
                        self.location.remove(aor, uri)
                        changed = True
                    continue
                if existing is None and self.location.count(aor) >= self.location.max_contacts:
                    raise Forbidden("too many contacts", reason="Too Many Contacts")
                q_text = params.get("q")
                try:
                    q = None if q_text is None else float(q_text)
                except ValueError:
                    raise ParseError("bad q value", reason="Bad Contact") from None
                extra = "".join(
                    f";{k}" if v is None else f";{k}={v}" for k, v in params.items() if k not in ("expires", "q")
                )
                self.location.put(
                    Binding(aor, uri, now + expires, q, call_id, cseq, user_agent,
                            peer.host, peer.port, peer.transport, extra)
                )  # fmt: skip
                changed = changed or existing is None
        current = self.location.lookup(aor)
        headers = [("Contact", f"<{b.contact}>;expires={b.expires_in(now)}") for b in current]
        self.core.respond(transaction, request, 200, "OK", headers)
        contact_uris = [b.contact for b in current]
        if changed:
            self.events.emit("registration.changed", aor=aor, contacts=contact_uris)
        else:
            # A refresh (or a query): nothing moved, but the phone just showed
            # it is alive, which is when e.g. its message-waiting lamp is re-sent.
            self.events.emit("registration.refreshed", aor=aor, contacts=contact_uris)

    def _contact_expires(self, param: str | None, header: int | None) -> int:
        if param is not None:
            text = param.strip()
            if not text.isdigit():
                raise ParseError("bad expires parameter", reason="Bad Contact")
            return int(text) if len(text) <= _MAX_EXPIRES_TEXT else 2**32 - 1
        return header if header is not None else self.default_expires

