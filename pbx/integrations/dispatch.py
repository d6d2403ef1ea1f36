"""What PBX events make the integrations do.

The event bus is synchronous and runs inside SIP handling, so a subscriber
here only takes note, schedules (``callLater(0, ...)``, after the SIP side
has answered) or enqueues in the outbox; it never waits for an HTTP server.

=================  ==========================================================
event              effect
=================  ==========================================================
``call.incoming``  EspoCRM (``screen_pop`` or ``auto_create_contacts``): the
                   caller's number is looked up (cached for ``cache_ttl``
                   seconds); the match is put on the live call as
                   ``call.screen_pop``; an unknown caller who is not a local
                   extension becomes a contact when ``auto_create_contacts``.
``call.ended``     EspoCRM ``auto_log_calls``: the call is logged (outbox kind
                   ``espocrm.log_call``).  Matrix ``missed_call_notifications``:
                   a missed call -- disposition ``missed``, or ``cancelled``
                   by the caller after the callee's phone rang -- posts a
                   notice to ``notification_room`` (outbox kind
                   ``matrix.notice``).
``voicemail.new``  Matrix: a notice to ``voicemail_room`` (else
                   ``notification_room``) with caller, mailbox and duration.
=================  ==========================================================
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from pbx.integrations.http import IntegrationError
from pbx.integrations.outbox import DropItem

__all__ = ["CONTACT_CACHE_TTL", "Dispatch", "contact_list", "missed_call_text", "voicemail_text"]

#: Seconds a phone-number lookup in the CRM is reused.
CONTACT_CACHE_TTL = 30.0

LOG_CALL = "espocrm.log_call"
MATRIX_NOTICE = "matrix.notice"


def contact_list(result: Any) -> list[dict[str, Any]]:
    """The contacts of a search result, whatever its shape (list, {"list": ...}, {"items": ...})."""
    if isinstance(result, list):
        return [c for c in result if isinstance(c, dict)]
    if isinstance(result, dict):
        for key in ("items", "list", "contacts"):
            if isinstance(result.get(key), list):
                return [c for c in result[key] if isinstance(c, dict)]
        if result.get("id"):
            return [result]
    return []


def _when(iso: str | None) -> str:
    """``2024-06-01T10:00:00.250Z`` -> ``2024-06-01 10:00 UTC``."""
    if not iso:
        return "?"
    try:
        moment = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(timezone.utc)
    except ValueError:
        return iso
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _party(number: str | None, name: str | None) -> str:
    number = number or "unknown"
    return f"{name} ({number})" if name and name != number else number


def missed_call_text(fields: dict[str, Any], callee_name: str | None = None, caller_name: str | None = None) -> str:
    """The Matrix notice for a missed call (names: from the call, else from the extensions)."""
    return (f"Missed call from {_party(fields.get('caller'), fields.get('caller_name') or caller_name)} "
            f"to {_party(fields.get('callee'), callee_name)} at {_when(fields.get('start'))}")


def voicemail_text(fields: dict[str, Any]) -> str:
    """The Matrix notice for a new voicemail."""
    duration = fields.get("duration")
    length = f", {int(duration)} s" if isinstance(duration, (int, float)) else ""
    return (f"New voicemail for {fields.get('mailbox') or '?'} from "
            f"{_party(fields.get('caller'), fields.get('caller_name'))}{length}")


class Dispatch:
    """Subscribes to ``pbx.events`` for the integrations that are enabled.

    ``integrations`` has ``.espocrm`` and ``.matrix`` (clients or None) and
    ``.config`` (IntegrationsConfig); ``outbox`` is an `Outbox`.
    """

    log = Logger()

    def __init__(self, pbx: Any, integrations: Any, outbox: Any, clock: Any, *,
                 cache_ttl: float = CONTACT_CACHE_TTL) -> None:
        self.pbx = pbx
        self.integrations = integrations
        self.outbox = outbox
        self.clock = clock
        self.cache_ttl = cache_ttl
        self._cache: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._lookups: dict[str, list[Deferred[dict[str, Any] | None]]] = {}
        self._live: dict[str, Any] = {}
        self._unsubscribe: list[Any] = []
        self._pending: set[Any] = set()
        if integrations.espocrm is not None and self._espo_config.auto_log_calls:
            outbox.register(LOG_CALL, self.deliver_log_call)
        if integrations.matrix is not None:
            outbox.register(MATRIX_NOTICE, self.deliver_notice)

    @property
    def _espo_config(self) -> Any:
        return self.integrations.config.espocrm

    @property
    def _matrix_config(self) -> Any:
        return self.integrations.config.matrix

    # -- life -------------------------------------------------------------------

    def start(self) -> None:
        if self._unsubscribe:
            return
        events = self.pbx.events
        for name, handler in (("call.incoming", self.on_call_incoming), ("call.ended", self.on_call_ended),
                              ("voicemail.new", self.on_voicemail)):
            self._unsubscribe.append(events.subscribe(name, handler))

    def stop(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        for pending in list(self._pending):
            if hasattr(pending, "active"):
                if pending.active():
                    pending.cancel()
            else:
                pending.cancel()
        self._pending.clear()
        self._live.clear()

    # -- subscribers (synchronous: take note, schedule, enqueue) ------------------

    def on_call_incoming(self, _name: str, fields: dict[str, Any]) -> None:
        call_id = fields.get("call_id")
        if not call_id:
            return
        matrix = self.integrations.matrix
        if matrix is not None and self._matrix_config.missed_call_notifications:
            call = self.pbx.b2bua.calls.get(call_id)
            if call is not None:
                self._live[call_id] = call  # to see at the end whether the phone rang
        espo = self.integrations.espocrm
        caller = str(fields.get("caller") or "")
        if espo is None or not caller:
            return
        config = self._espo_config
        if not (config.screen_pop or config.auto_create_contacts):
            return
        timer = self.clock.callLater(0, self._start_screen_pop, call_id, caller, fields.get("caller_name") or "")
        self._pending.add(timer)

    def on_call_ended(self, _name: str, fields: dict[str, Any]) -> None:
        call_id = fields.get("call_id") or ""
        call = self._live.pop(call_id, None)
        if self.integrations.espocrm is not None and self._espo_config.auto_log_calls:
            self._enqueue(LOG_CALL, self.log_call_payload(fields, call))
        if (self.integrations.matrix is not None and self._matrix_config.missed_call_notifications
                and self.is_missed(fields, call)):
            room = self._matrix_config.notification_room
            if not room:
                self.log.warn("missed call {call_id}: no integrations.matrix.notification_room, no notice",
                              call_id=call_id)
                return
            text = missed_call_text(fields, self._name_of(fields.get("callee")), self._name_of(fields.get("caller")))
            self._enqueue(MATRIX_NOTICE, {"room": room, "text": text, "txn_id": _txn_id(), "event": "missed_call",
                                          "call_id": call_id})

    def on_voicemail(self, _name: str, fields: dict[str, Any]) -> None:
        if self.integrations.matrix is None:
            return
        config = self._matrix_config
        room = config.voicemail_room or config.notification_room
        if not room:
            self.log.warn("new voicemail: neither integrations.matrix.voicemail_room nor notification_room set")
            return
        self._enqueue(MATRIX_NOTICE, {"room": room, "text": voicemail_text(fields), "txn_id": _txn_id(),
                                      "event": "voicemail"})

    def _enqueue(self, kind: str, payload: dict[str, Any]) -> None:
        d = self.outbox.enqueue(kind, payload)
        d.addErrback(lambda f: self.log.failure("could not store a {kind} item in the outbox", f, kind=kind))

    # -- decisions ----------------------------------------------------------------

    @staticmethod
    def is_missed(fields: dict[str, Any], call: Any = None) -> bool:
        """It rang and nobody answered: ``missed``, or the caller gave up
        (``cancelled``/``caller-cancel``) after the callee's phone rang."""
        disposition = fields.get("disposition")
        if disposition == "missed":
            return True
        if disposition != "cancelled" or fields.get("hangup_cause") != "caller-cancel":
            return False
        if call is None:
            return False
        return bool(getattr(call, "ringing_sent", False)
                    or any(getattr(fork, "provisional", False) for fork in getattr(call, "forks", ())))

    def _name_of(self, number: Any) -> str | None:
        directory = getattr(self.pbx, "directory", None)
        if directory is None or not number:
            return None
        try:
            record = directory.get(str(number))
        except Exception:
            return None
        name = getattr(record, "name", None)
        return name or None

    def _is_local(self, number: str) -> bool:
        directory = getattr(self.pbx, "directory", None)
        try:
            return directory is not None and number in directory
        except Exception:
            return False

    def log_call_payload(self, fields: dict[str, Any], call: Any = None) -> dict[str, Any]:
        """The outbox payload of a CRM call log.  The other party is the caller
        (Inbound), unless the caller is a local extension and the callee is not
        (Outbound)."""
        caller = str(fields.get("caller") or "")
        callee = str(fields.get("callee") or "")
        outbound = self._is_local(caller) and not self._is_local(callee)
        phone = callee if outbound else caller
        answered = fields.get("disposition") == "answered"
        cached = self._cache.get(phone)
        contact = cached[1] if cached is not None and cached[0] > self.clock.seconds() else None
        cause = fields.get("hangup_cause") or ""
        description = f"{fields.get('disposition') or 'unknown'}" + (f" ({cause})" if cause else "")
        if fields.get("answered_by"):
            description += f", answered by {fields['answered_by']}"
        return {
            "call_id": fields.get("call_id"),
            "phone": phone,
            "caller": caller,
            "caller_name": fields.get("caller_name") or "",
            "callee": callee,
            "direction": "Outbound" if outbound else "Inbound",
            "status": "Held" if answered else "Not Held",
            "duration": int(fields.get("billable") or 0),
            "date_start": fields.get("start"),
            "date_end": fields.get("end"),
            "description": f"PBX call {caller} -> {callee}: {description}",
            "contact_id": (contact or {}).get("id"),
        }

    # -- screen pop ---------------------------------------------------------------

    def _start_screen_pop(self, call_id: str, caller: str, caller_name: str) -> None:
        self._pending = {p for p in self._pending if not (hasattr(p, "active") and not p.active())}
        d = ensureDeferred(self.screen_pop(call_id, caller, caller_name))
        self._pending.add(d)
        d.addBoth(lambda result: (self._pending.discard(d), result)[1])
        d.addErrback(self._lookup_failed, call_id)

    def _lookup_failed(self, failure: Failure, call_id: str) -> None:
        if failure.check(CancelledError):
            return
        if failure.check(IntegrationError, ValueError):
            self.log.warn("EspoCRM lookup for call {call_id} failed: {error}", call_id=call_id,
                          error=failure.value)
        else:
            self.log.failure("EspoCRM lookup for call {call_id} failed", failure, call_id=call_id)

    async def screen_pop(self, call_id: str, caller: str, caller_name: str = "") -> dict[str, Any] | None:
        """Look the caller up (creating the contact when configured); put the
        result on the live call as ``screen_pop``; return it."""
        config = self._espo_config
        contact = await self.find_contact(caller)
        created = False
        if contact is None and config.auto_create_contacts and not self._is_local(caller):
            contact = await self.create_contact(caller, caller_name)
            created = contact is not None
        if not config.screen_pop:
            return None
        pop = {"source": "espocrm", "phone": caller, "found": contact is not None, "created": created,
               "contact": contact}
        call = self.pbx.b2bua.calls.get(call_id)
        if call is not None:
            call.screen_pop = pop
        return pop

    async def find_contact(self, phone: str) -> dict[str, Any] | None:
        """The first contact with this number (cached for ``cache_ttl``); None when there is none."""
        now = self.clock.seconds()
        cached = self._cache.get(phone)
        if cached is not None and cached[0] > now:
            return cached[1]
        waiters = self._lookups.get(phone)
        if waiters is not None:
            waiter: Deferred[dict[str, Any] | None] = Deferred()
            waiters.append(waiter)
            return await waiter
        self._lookups[phone] = []
        try:
            result = await self.integrations.espocrm.search_contacts(phone)
        except BaseException:
            failure = Failure()
            for waiter in self._lookups.pop(phone, []):
                waiter.errback(failure)
            raise
        contacts = contact_list(result)
        contact = contacts[0] if contacts else None
        self._remember(phone, contact)
        for waiter in self._lookups.pop(phone, []):
            waiter.callback(contact)
        return contact

    async def create_contact(self, phone: str, name: str = "") -> dict[str, Any] | None:
        created = await self.integrations.espocrm.create_contact(name=name or phone, phone=phone)
        contact = created if isinstance(created, dict) else None
        self._remember(phone, contact)
        self.log.info("EspoCRM: created a contact for caller {phone}", phone=phone)
        return contact

    def _remember(self, phone: str, contact: dict[str, Any] | None) -> None:
        now = self.clock.seconds()
        if len(self._cache) > 1000:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
        self._cache[phone] = (now + self.cache_ttl, contact)

    # -- outbox deliverers ----------------------------------------------------------

    async def deliver_log_call(self, payload: dict[str, Any]) -> None:
        espo = self.integrations.espocrm
        if espo is None:
            raise IntegrationError("EspoCRM", "EspoCRM integration not enabled")
        contact_id = payload.get("contact_id")
        phone = payload.get("phone") or ""
        if not contact_id and phone:
            try:
                contact = await self.find_contact(phone)
            except ValueError:  # not a number the CRM can search for: log the call without a contact
                contact = None
            contact_id = (contact or {}).get("id")
        try:
            await espo.log_call(
                contact_id,
                payload.get("direction") or "Inbound",
                int(payload.get("duration") or 0),
                payload.get("status") or "Not Held",
                description=payload.get("description"),
                date_start=payload.get("date_start"),
                date_end=payload.get("date_end"),
                phone=phone or None,
            )
        except ValueError as error:
            raise DropItem(f"call {payload.get('call_id')} cannot be logged: {error}") from None

    async def deliver_notice(self, payload: dict[str, Any]) -> None:
        matrix = self.integrations.matrix
        if matrix is None:
            raise IntegrationError("Matrix", "Matrix integration not enabled")
        await matrix.notice(payload.get("room"), payload["text"], payload.get("txn_id"))


def _txn_id() -> str:
    """An idempotency key, stored in the payload so that every retry reuses it."""
    return "pbx-" + uuid.uuid4().hex
