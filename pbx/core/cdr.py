"""Call detail records: one `CallRecord` per call, from INVITE to the end.

Pure: no reactor, no database (``pbx.store.cdr`` persists records).  The
B2BUA creates a record when a call starts, sets ``answer`` and
``answered_by`` when a leg answers, and calls `CallRecord.finish` once;
``finish`` never raises, because a call must always end in a record.

Dispositions and hangup causes
==============================

``disposition_for`` / ``cause_for`` map the final SIP result of the callee
side to what the record says.  One table, first matching row wins:

=============================================  ============  ================
situation                                      disposition   hangup_cause
=============================================  ============  ================
answered (a 2xx), whatever ended it later      answered      normal [#]_
caller gave up before an answer (CANCEL), or
  the callee side ended with 487               cancelled     caller-cancel
486 Busy Here, 600 Busy Everywhere             busy          busy
603 Decline (and other 6xx but 600 / 604)      missed        declined
408, 480, or no final response at all          missed        no-answer
404, 410, 484, 604 (no such user)              failed        not-found
other 5xx                                      failed        callee-error
other 4xx                                      failed        rejected
=============================================  ============  ================

.. [#] the B2BUA passes the real cause of the end of an answered call:
   ``normal`` (a BYE; ``hangup_side`` says who sent it), ``max-duration``,
   ``rtp-timeout``, ``no-ack``, ``admin``, ``shutdown``.

A caller giving up while it rings is ``cancelled`` (RFC 3261: the INVITE
was cancelled, nobody missed anything on the PBX's side); a "missed call"
notice for the callee should treat ``cancelled`` as missed when the phone
rang.  603 is ``missed`` rather than ``busy``: a person saw the call and
declined it.

Causes the B2BUA sets without a SIP result: ``not-registered`` (no phone
registered for the callee), ``no-ports`` (no free RTP ports), ``timeout``
(a transaction timed out), ``not-reachable``, ``bad-sdp``, ``restart``
(found open at start-up, see ``pbx.store.cdr``), ``shutdown``, ``admin``.
The cause is short free text: an unknown one is recorded as given.

Invariants kept by ``finish``: ``start <= answer <= end``; a record is
``answered`` only if it has an ``answer`` time (else it becomes ``failed``);
``duration`` and ``billable`` are whole seconds, rounded half up, and
``billable <= duration``.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

from twisted.logger import Logger

from pbx.sip.ids import random_bytes

__all__ = [
    "CAUSES",
    "DISPOSITIONS",
    "SIDES",
    "CallRecord",
    "cause_for",
    "disposition_for",
    "iso_utc",
    "new_call_id",
]

DISPOSITIONS = ("answered", "missed", "busy", "failed", "cancelled")
SIDES = ("caller", "callee", "pbx")
CAUSES = (
    "normal", "caller-cancel", "no-answer", "busy", "declined", "not-found", "rejected",
    "callee-error", "not-registered", "not-reachable", "no-ports", "bad-sdp", "no-ack",
    "restart", "shutdown", "admin", "timeout", "rtp-timeout", "max-duration",
)  # fmt: skip

_log = Logger(namespace="pbx.core.cdr")


def new_call_id() -> str:
    """The PBX's own id for a call: independent of any phone's Call-ID.

    A version 4 UUID from the buffered random source (`uuid.uuid4` is a system call each time).
    """
    return uuid.UUID(bytes=random_bytes(16), version=4).hex


def _outcome(final_status: int | None, answered: bool, cancelled: bool) -> tuple[str, str]:
    """The one table of the module docstring, as code."""
    if answered or (final_status is not None and 200 <= final_status < 300):
        return "answered", "normal"
    if cancelled or final_status == 487:
        return "cancelled", "caller-cancel"
    if final_status in (486, 600):
        return "busy", "busy"
    if final_status in (404, 410, 484, 604):
        return "failed", "not-found"
    if final_status is not None and 600 <= final_status < 700:
        return "missed", "declined"
    if final_status is None or final_status in (408, 480):
        return "missed", "no-answer"
    if 500 <= final_status < 600:
        return "failed", "callee-error"
    return "failed", "rejected"


def disposition_for(final_status: int | None, answered: bool, cancelled: bool) -> str:
    """The disposition for the callee side's final SIP status (None: none
    came) -- see the table in the module docstring."""
    return _outcome(final_status, answered, cancelled)[0]


def cause_for(final_status: int | None, answered: bool, cancelled: bool) -> str:
    """The hangup cause that goes with `disposition_for`."""
    return _outcome(final_status, answered, cancelled)[1]


@lru_cache(maxsize=1024)
def iso_utc(timestamp: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC with milliseconds (``...T12:00:00.250Z``).

    Cached: each of a call's three events carries its start time, and two its answer time.
    """
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _seconds(span: float) -> int:
    """Whole seconds, half up (``round`` would give 2 for 2.5), never negative."""
    return max(0, math.floor(span + 0.5))


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass(eq=True)
class CallRecord:
    """One call as the PBX saw it.  Times are epoch seconds (floats)."""

    call_id: str
    sip_call_id: str
    caller: str
    callee: str
    start: float
    caller_name: str = ""
    answered_by: str | None = None
    answer: float | None = None
    end: float | None = None
    disposition: str | None = None
    hangup_cause: str | None = None
    hangup_side: str | None = None

    @classmethod
    def begin(cls, sip_call_id: str, caller: str, callee: str, start: float,
              caller_name: str = "") -> CallRecord:
        """A new record with a fresh ``call_id``."""
        return cls(new_call_id(), sip_call_id, caller, callee, start, caller_name)

    @property
    def ended(self) -> bool:
        return self.end is not None

    @property
    def duration(self) -> int | None:
        """Whole seconds from start to end; None while the call is up."""
        if self.end is None:
            return None
        return _seconds(self.end - self.start)

    @property
    def billable(self) -> int | None:
        """Whole seconds from answer to end (0 if never answered); None while up."""
        if self.end is None:
            return None
        if self.answer is None:
            return 0
        return _seconds(self.end - self.answer)

    def finish(self, end: float, disposition: str, cause: str, side: str | None) -> bool:
        """Close the record; False (and no change) if it was closed already.

        Never raises: a disposition or side outside the known sets is logged
        and recorded as ``failed`` / None rather than losing the record.
        """
        if self.end is not None:
            return False
        if disposition not in DISPOSITIONS:
            _log.warn("call {call_id}: unknown disposition {disposition!r}, recorded as failed",
                      call_id=self.call_id, disposition=disposition)
            disposition = "failed"
        if side is not None and side not in SIDES:
            _log.warn("call {call_id}: unknown hangup side {side!r} ignored", call_id=self.call_id, side=side)
            side = None
        if disposition == "answered" and self.answer is None:
            disposition = "failed"
        end_time = _finite(end)
        self.end = max(self.start, end_time if end_time is not None else self.start)
        if self.answer is not None:
            self.answer = min(max(self.answer, self.start), self.end)
        self.disposition = disposition
        self.hangup_cause = str(cause or "unknown")
        self.hangup_side = side
        return True

    def as_event(self) -> dict[str, Any]:
        """Fields for ``call.incoming``, ``call.answered`` and ``call.ended``:
        JSON-friendly, times as ISO 8601 UTC strings."""
        return {
            "call_id": self.call_id,
            "sip_call_id": self.sip_call_id,
            "caller": self.caller,
            "caller_name": self.caller_name,
            "callee": self.callee,
            "answered_by": self.answered_by,
            "start": iso_utc(self.start),
            "answer": iso_utc(self.answer),
            "end": iso_utc(self.end),
            "duration": self.duration,
            "billable": self.billable,
            "disposition": self.disposition,
            "hangup_cause": self.hangup_cause,
            "hangup_side": self.hangup_side,
        }

    def as_dict(self) -> dict[str, Any]:
        """Every field as stored (epoch floats), for ``from_dict``.

        The fields are all scalars: a plain copy, not ``dataclasses.asdict``'s
        recursive one (this runs twice per call).
        """
        return {name: getattr(self, name) for name in _RECORD_FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CallRecord:
        """The inverse of ``as_dict``; unknown keys are ignored, so records
        written by a newer PBX still load."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for name in ("call_id", "sip_call_id", "caller", "callee", "caller_name"):
            values[name] = str(values.get(name) or "")
        values["start"] = _finite(values.get("start")) or 0.0
        for name in ("answer", "end"):
            values[name] = _finite(values.get(name))
        return cls(**values)


_RECORD_FIELDS = tuple(f.name for f in fields(CallRecord))
