"""JSON Schemas of the API's bodies, and the small validator that enforces them.

One definition serves three purposes: request bodies are checked against it
(`validate`), the OpenAPI document publishes it (pbx.api.openapi), and the
property-based tests generate bodies from it.  The validator implements the
subset of JSON Schema (2020-12) these schemas use: ``type`` (one or a list),
``properties``, ``required``, ``additionalProperties: false``, ``enum``,
``minLength``/``maxLength``/``pattern``, ``minimum``/``maximum`` and, for
arrays, ``items``/``maxItems``.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from pbx.core.cdr import DISPOSITIONS

__all__ = ["SCHEMAS", "SchemaError", "validate"]


class SchemaError(ValueError):
    """A value that does not fit its schema; ``field`` is the dotted path at fault."""

    def __init__(self, message: str, field: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def _describe(types: list[str]) -> str:
    names = {"object": "an object", "array": "an array", "string": "a string", "integer": "an integer",
             "number": "a number", "boolean": "true or false", "null": "null"}
    return " or ".join(names[t] for t in types)


def validate(value: Any, schema: dict[str, Any], path: str | None = None) -> None:
    """Raise SchemaError naming the first field that does not fit."""
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else list(types)
        if not any(_TYPES[t](value) for t in types):
            what = "request body" if path is None else path
            raise SchemaError(f"{what}: expected {_describe(types)}", path)
    if "enum" in schema and value not in schema["enum"]:
        raise SchemaError(f"{path}: expected one of {', '.join(map(str, schema['enum']))}", path)
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            raise SchemaError(f"{path}: at least {schema['minLength']} characters", path)
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise SchemaError(f"{path}: at most {schema['maxLength']} characters", path)
        if "pattern" in schema and _pattern(schema["pattern"]).search(value) is None:
            raise SchemaError(f"{path}: {schema.get('description') or 'does not match ' + schema['pattern']}", path)
    if _TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            raise SchemaError(f"{path}: at least {schema['minimum']}", path)
        if "maximum" in schema and value > schema["maximum"]:
            raise SchemaError(f"{path}: at most {schema['maximum']}", path)
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise SchemaError(f"{path}: at most {schema['maxItems']} items", path)
        if "items" in schema:
            for index, item in enumerate(value):
                validate(item, schema["items"], _join(path, str(index)))
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for name in schema.get("required", ()):
            if name not in value:
                raise SchemaError(f"{_join(path, name)}: required", _join(path, name))
        if schema.get("additionalProperties") is False:
            for name in value:
                if name not in properties:
                    raise SchemaError(f"{_join(path, str(name))}: unknown field", _join(path, str(name)))
        for name, subschema in properties.items():
            if name in value:
                validate(value[name], subschema, _join(path, name))


@functools.lru_cache(maxsize=64)
def _pattern(pattern: str) -> re.Pattern[str]:
    """A schema pattern with ECMA-262 meaning: a final ``$`` is the very end
    (Python's ``$`` would also match before a final newline)."""
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


def _join(path: str | None, name: str) -> str:
    return name if path is None else f"{path}.{name}"


# ---------------------------------------------------------------------------
# Pieces.

NUMBER = {
    "type": "string", "pattern": r"^[0-9]{1,32}$", "minLength": 1, "maxLength": 32,
    "description": "an extension number: 1 to 32 digits",
}  # fmt: skip
NAME = {"type": "string", "maxLength": 100, "pattern": r"^[^\x00-\x1f\x7f]*$",
        "description": "a display name: up to 100 characters, no control characters"}
PASSWORD = {
    "type": "string", "minLength": 8, "maxLength": 128, "writeOnly": True,
    "description": "the SIP password: 8 to 128 characters; stored only as digest HA1 hashes",
}  # fmt: skip
EMAIL = {
    "type": ["string", "null"], "maxLength": 254, "pattern": r"^[^@\s]+@[^@\s]+$",
    "description": "an e-mail address (or null for none)",
}  # fmt: skip
PIN = {
    "type": ["string", "null"], "pattern": r"^[0-9]{4,12}$", "writeOnly": True,
    "description": "a voicemail PIN: 4 to 12 digits (or null for none); stored salted and hashed",
}  # fmt: skip
DIAL_NUMBER = {
    "type": "string", "pattern": r"^[0-9*#+]{1,32}$", "minLength": 1, "maxLength": 32,
    "description": "a number to dial: digits, *, # and +",
}  # fmt: skip
TIMESTAMP = {"type": ["string", "null"], "format": "date-time"}

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "what went wrong"},
        "field": {"type": "string", "description": "the input at fault, when one is"},
        "request_id": {"type": "string", "description": "on 500: quote it to find the traceback in the log"},
    },
}

EXTENSION_CREATE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["number", "password"],
    "properties": {"number": NUMBER, "name": NAME, "password": PASSWORD, "email": EMAIL, "voicemail_pin": PIN},
}
EXTENSION_REPLACE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {"number": NUMBER, "name": NAME, "password": PASSWORD, "email": EMAIL, "voicemail_pin": PIN},
}
EXTENSION_PATCH = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"number": NUMBER, "name": NAME, "password": PASSWORD, "email": EMAIL, "voicemail_pin": PIN},
}
EXTENSION = {
    "type": "object",
    "required": ["number", "name", "email", "source", "voicemail_pin_set", "updated_at", "registered", "contacts"],
    "properties": {
        "number": NUMBER,
        "name": {"type": "string"},
        "email": {"type": ["string", "null"]},
        "source": {"type": "string", "enum": ["config", "api"],
                   "description": "config: from the configuration file (read-only here); api: created here"},
        "voicemail_pin_set": {"type": "boolean"},
        "updated_at": TIMESTAMP,
        "registered": {"type": "boolean", "description": "has at least one current binding"},
        "contacts": {"type": "integer", "minimum": 0, "description": "current bindings"},
    },
}
EXTENSION_LIST = {"type": "object", "required": ["items", "total"],
                  "properties": {"items": {"type": "array", "items": EXTENSION}, "total": {"type": "integer"}}}

CLICK_TO_DIAL = {
    "type": "object",
    "additionalProperties": False,
    "required": ["from", "to"],
    "properties": {"from": NUMBER, "to": DIAL_NUMBER},
}

_MEDIA_LEG = {
    "type": "object",
    "description": "counters of the leg's RTP relay (pbx.media.relay.MediaLeg.stats)",
    "properties": {
        "local_port": {"type": ["integer", "null"]},
        "remote": {"type": ["string", "null"]},
        "latched": {"type": ["string", "null"]},
        "packets_in": {"type": "integer"}, "bytes_in": {"type": "integer"},
        "packets_out": {"type": "integer"}, "bytes_out": {"type": "integer"},
        "rtcp_in": {"type": "integer"}, "rtcp_out": {"type": "integer"},
        "dropped": {"type": "integer"}, "unroutable": {"type": "integer"}, "send_errors": {"type": "integer"},
        "expected": {"type": "integer"}, "lost": {"type": "integer"}, "jitter_ms": {"type": "number"},
        "codec": {"type": ["string", "null"]}, "payload_type": {"type": ["integer", "null"]},
    },
}  # fmt: skip
CALL = {
    "type": "object",
    "required": ["id", "caller", "callee", "state", "start", "legs", "codec", "packets"],
    "properties": {
        "id": {"type": "string"},
        "caller": {"type": "string"},
        "caller_name": {"type": "string"},
        "callee": {"type": "string"},
        "answered_by": {"type": ["string", "null"]},
        "state": {"type": "string", "enum": ["ringing", "answered", "ended"]},
        "screen_pop": {"type": ["object", "null"],
                       "description": "the CRM contact matched to the caller (EspoCRM screen pop), when enabled"},
        "start": TIMESTAMP,
        "answer": TIMESTAMP,
        "duration": {"type": "integer", "description": "seconds since the call started"},
        "codec": {"type": ["string", "null"]},
        "packets": {"type": "object", "properties": {
            "relayed": {"type": "integer"}, "lost": {"type": "integer"}, "dropped": {"type": "integer"}}},
        "legs": {"type": "object", "properties": {
            "a": {"type": "object", "description": "the caller's leg", "properties": {
                "sip_call_id": {"type": "string"}, "party": {"type": "string"}, "media": _MEDIA_LEG}},
            "b": {"type": "object", "description": "the callee's leg", "properties": {
                "sip_call_id": {"type": "string"}, "party": {"type": ["string", "null"]},
                "forks": {"type": "integer"}, "media": _MEDIA_LEG}},
        }},
    },
}  # fmt: skip
CALL_LIST = {"type": "object", "required": ["items", "total"],
             "properties": {"items": {"type": "array", "items": CALL}, "total": {"type": "integer"}}}

CDR = {
    "type": "object",
    "properties": {
        "call_id": {"type": "string"}, "sip_call_id": {"type": "string"},
        "caller": {"type": "string"}, "caller_name": {"type": "string"}, "callee": {"type": "string"},
        "answered_by": {"type": ["string", "null"]},
        "start": TIMESTAMP, "answer": TIMESTAMP, "end": TIMESTAMP,
        "duration": {"type": ["integer", "null"]}, "billable": {"type": ["integer", "null"]},
        "disposition": {"type": ["string", "null"], "enum": [*DISPOSITIONS, None]},
        "hangup_cause": {"type": ["string", "null"]},
        "hangup_side": {"type": ["string", "null"]},
    },
}  # fmt: skip
CDR_PAGE = {
    "type": "object",
    "required": ["items", "total", "limit", "offset"],
    "properties": {"items": {"type": "array", "items": CDR}, "total": {"type": "integer"},
                   "limit": {"type": "integer"}, "offset": {"type": "integer"}},
}

REGISTRATION = {
    "type": "object",
    "properties": {
        "extension": {"type": "string"}, "contact": {"type": "string"},
        "expires": {"type": "integer", "description": "seconds left"}, "expires_at": TIMESTAMP,
        "user_agent": {"type": ["string", "null"]}, "source": {"type": "string", "description": "host:port"},
        "transport": {"type": "string"}, "q": {"type": ["number", "null"]},
    },
}  # fmt: skip
REGISTRATION_LIST = {"type": "object", "required": ["items", "total"],
                     "properties": {"items": {"type": "array", "items": REGISTRATION}, "total": {"type": "integer"}}}

HEALTH = {
    "type": "object",
    "required": ["status", "version", "uptime"],
    "properties": {"status": {"type": "string", "enum": ["ok", "starting"]}, "version": {"type": "string"},
                   "uptime": {"type": "number", "description": "seconds since the API started"}},
}
STATUS = {
    "type": "object",
    "properties": {
        "version": {"type": "string"}, "uptime": {"type": "number"}, "ready": {"type": "boolean"},
        "extensions": {"type": "object", "properties": {"total": {"type": "integer"}, "registered": {"type": "integer"}}},
        "registrations": {"type": "integer"},
        "calls": {"type": "object", "properties": {
            "active": {"type": "integer"}, "ringing": {"type": "integer"}, "answered": {"type": "integer"}}},
        "totals": {"type": "object", "additionalProperties": {"type": "integer"},
                   "description": "calls ended since start, by disposition (refused calls by cause)"},
        "media": {"type": "object", "additionalProperties": {"type": "integer"}},
        "sip": {"type": "object", "additionalProperties": {"type": "integer"}},
    },
}  # fmt: skip

_LISTENER = {"type": "object", "properties": {
    "role": {"type": "string"}, "protocol": {"type": "string"}, "host": {"type": "string"},
    "port": {"type": "integer"}, "port_end": {"type": "integer"}, "keys": {"type": "string"},
    "address": {"type": "string"}}}  # fmt: skip
_LOCAL_SERVICE = {"type": "object", "properties": {
    "key": {"type": "string"}, "integration": {"type": "string"}, "url": {"type": "string"},
    "host": {"type": "string"}, "port": {"type": "integer"}, "enabled": {"type": "boolean"},
    "protocol": {"type": "string"}, "address": {"type": "string"}}}  # fmt: skip
PORTS = {
    "type": "object",
    "required": ["listeners", "services", "conflicts"],
    "properties": {"listeners": {"type": "array", "items": _LISTENER},
                   "services": {"type": "array", "items": _LOCAL_SERVICE},
                   "conflicts": {"type": "array", "items": {"type": "string"}}},
}

# ---------------------------------------------------------------------------
# Voicemail (pbx.api.voicemail).

VOICEMAIL_PATCH = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "heard": {"type": "boolean", "description": "true moves the message to the old folder, false back to new"},
        "saved": {"type": "boolean", "description": "kept by the mailbox owner"},
    },
    "description": "at least one of heard and saved (an empty object is a 400)",
}  # fmt: skip
VOICEMAIL_MESSAGE = {
    "type": "object",
    "required": ["id", "mailbox", "caller", "caller_name", "received", "duration", "heard", "saved", "call_id",
                 "audio"],
    "properties": {
        "id": {"type": "integer"},
        "mailbox": {"type": "string"},
        "caller": {"type": "string", "description": "the caller's number (or anonymous)"},
        "caller_name": {"type": "string"},
        "received": TIMESTAMP,
        "duration": {"type": "number", "description": "seconds"},
        "heard": {"type": "boolean", "description": "false: in the new folder; true: in the old one"},
        "saved": {"type": "boolean"},
        "call_id": {"type": ["string", "null"], "description": "the PBX's id of the call that left it"},
        "audio": {"type": "string", "description": "where to fetch the recording (audio/wav)"},
    },
}  # fmt: skip
VOICEMAIL_MAILBOX = {
    "type": "object",
    "required": ["mailbox", "new", "old", "messages"],
    "properties": {
        "mailbox": {"type": "string"},
        "new": {"type": "integer", "minimum": 0, "description": "messages not heard yet"},
        "old": {"type": "integer", "minimum": 0, "description": "messages heard"},
        "messages": {"type": "array", "items": VOICEMAIL_MESSAGE, "description": "oldest first"},
    },
}  # fmt: skip

# ---------------------------------------------------------------------------
# Integrations (pbx.api.integrations).  Optional fields may also be null.


def _text(max_length: int, description: str, *, nullable: bool = True, min_length: int = 0) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": ["string", "null"] if nullable else "string", "maxLength": max_length,
                              "pattern": r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$", "description": description}
    if min_length:
        schema["minLength"] = min_length
    return schema


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    return {**schema, "type": [*types, "null"]}


DATE_TIME = {
    "type": ["string", "null"], "maxLength": 40,
    "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?(Z|[+-][0-9]{2}:?[0-9]{2})?$",
    "description": "an ISO 8601 date-time, e.g. 2024-06-01T10:00:00Z (UTC when no zone is given)",
}  # fmt: skip
MINUTES = {"type": ["integer", "null"], "minimum": 1, "maximum": 1440, "description": "minutes (1 to 1440)"}
PHONE = {
    "type": "string", "minLength": 2, "maxLength": 32, "pattern": r"^\+?[0-9][0-9 ()./-]*$",
    "description": "a phone number: digits, an optional leading +, spaces ( ) . / - allowed",
}  # fmt: skip
MATRIX_ROOM = {
    "type": "string", "maxLength": 255, "pattern": r"^(![^\s]+|#[^:\s]+:[^\s]+)$",
    "description": "a Matrix room id (!id, with :server in room versions before 12) or alias (#alias:server)",
}  # fmt: skip
MATRIX_USER = {
    "type": "string", "maxLength": 255, "pattern": r"^@[^:\s]+:[^\s]+$",
    "description": "a Matrix user id (@user:server)",
}  # fmt: skip

JITSI_MEETING_REQUEST = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "room_name": _text(200, "the room; sanitised (a-z 0-9 - _); generated when absent"),
        "subject": _text(200, "what the meeting is about"),
        "moderator_name": _text(100, "who moderates (named in the moderator's token)"),
        "participants": {"type": ["array", "null"], "maxItems": 100, "items": _text(200, "a participant",
                                                                                     nullable=False)},
        "scheduled_time": DATE_TIME,
        "duration": MINUTES,
    },
}  # fmt: skip
JITSI_INSTANT_REQUEST = {
    "type": "object",
    "additionalProperties": False,
    "required": ["extension"],
    "properties": {"extension": NUMBER, "contact_name": _text(100, "the other party's name")},
}
JITSI_MEETING = {
    "type": "object",
    "required": ["room_name", "url", "moderator_url"],
    "properties": {
        "room_name": {"type": "string"},
        "url": {"type": "string", "description": "the link for participants (with ?jwt= when tokens are on)"},
        "moderator_url": {"type": "string", "description": "the link for the moderator"},
        "subject": {"type": ["string", "null"]},
        "scheduled_time": {"type": ["string", "null"]},
        "duration": {"type": ["integer", "null"]},
    },
}  # fmt: skip
ESPOCRM_CONTACT_REQUEST = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": _text(100, "the contact's full name (the last word becomes the last name)",
                      nullable=False, min_length=1),
        "phone": _nullable(PHONE),
        "email": EMAIL,
        "company": _text(200, "the account (company); found by name, else created"),
        "title": _text(100, "the contact's title"),
    },
}  # fmt: skip
ESPOCRM_CALL_REQUEST = {
    "type": "object",
    "additionalProperties": False,
    "required": ["contact_id", "direction", "duration", "status"],
    "properties": {
        "contact_id": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": r"^[A-Za-z0-9_-]+$",
                       "description": "the EspoCRM id of the contact"},
        "direction": {"type": "string", "enum": ["Inbound", "Outbound"]},
        "duration": {"type": "integer", "minimum": 0, "maximum": 604800, "description": "seconds"},
        "status": {"type": "string", "enum": ["Held", "Not Held"],
                   "description": "Held: the call took place; Not Held: it did not (missed, busy...)"},
        "description": _text(4000, "free text"),
    },
}  # fmt: skip
MATRIX_MESSAGE_REQUEST = {
    "type": "object",
    "additionalProperties": False,
    "required": ["room_id", "message"],
    "properties": {
        "room_id": MATRIX_ROOM,
        "message": {"type": "string", "minLength": 1, "maxLength": 32768},
        "msg_type": {"type": ["string", "null"], "enum": ["m.text", "m.notice", "m.emote", None],
                     "description": "the msgtype; m.text by default"},
    },
}  # fmt: skip
MATRIX_NOTIFICATION_REQUEST = {
    "type": "object",
    "additionalProperties": False,
    "required": ["message"],
    "properties": {
        "message": {"type": "string", "minLength": 1, "maxLength": 32768},
        "room_id": {**_nullable(MATRIX_ROOM),
                    "description": "where to post (an m.notice); integrations.matrix.notification_room by default"},
    },
}  # fmt: skip
MATRIX_ROOM_REQUEST = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": _text(255, "the room's name", nullable=False, min_length=1),
        "topic": _text(1000, "the room's topic"),
        "invite_users": {"type": ["array", "null"], "maxItems": 100, "items": MATRIX_USER},
    },
}  # fmt: skip
ZOOM_MEETING_REQUEST = {
    "type": "object",
    "additionalProperties": False,
    "required": ["topic"],
    "properties": {
        "topic": _text(200, "the meeting's topic", nullable=False, min_length=1),
        "start_time": DATE_TIME,
        "duration": MINUTES,
        "timezone": {"type": ["string", "null"], "maxLength": 64, "pattern": r"^[A-Za-z0-9_+/-]+$",
                     "description": "an IANA time zone, e.g. Europe/Berlin"},
        "agenda": _text(2000, "the meeting's agenda"),
    },
}  # fmt: skip
ZOOM_MEETING = {
    "type": "object",
    "required": ["id", "join_url"],
    "properties": {
        "id": {"type": ["integer", "string"]},
        "join_url": {"type": "string"},
        "start_url": {"type": ["string", "null"]},
        "password": {"type": ["string", "null"]},
    },
}  # fmt: skip
INTEGRATION_RESULT = {"type": "object", "description": "what the integration's server answered, as a JSON object"}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": ERROR,
    "Extension": EXTENSION,
    "ExtensionList": EXTENSION_LIST,
    "ExtensionCreate": EXTENSION_CREATE,
    "ExtensionReplace": EXTENSION_REPLACE,
    "ExtensionPatch": EXTENSION_PATCH,
    "Call": CALL,
    "CallList": CALL_LIST,
    "ClickToDial": CLICK_TO_DIAL,
    "CallRecord": CDR,
    "CallRecordPage": CDR_PAGE,
    "Registration": REGISTRATION,
    "RegistrationList": REGISTRATION_LIST,
    "Health": HEALTH,
    "Status": STATUS,
    "PortPlan": PORTS,
    "VoicemailMailbox": VOICEMAIL_MAILBOX,
    "VoicemailMessage": VOICEMAIL_MESSAGE,
    "VoicemailPatch": VOICEMAIL_PATCH,
    "JitsiMeetingRequest": JITSI_MEETING_REQUEST,
    "JitsiInstantRequest": JITSI_INSTANT_REQUEST,
    "JitsiMeeting": JITSI_MEETING,
    "EspoCRMContactRequest": ESPOCRM_CONTACT_REQUEST,
    "EspoCRMCallRequest": ESPOCRM_CALL_REQUEST,
    "MatrixMessageRequest": MATRIX_MESSAGE_REQUEST,
    "MatrixNotificationRequest": MATRIX_NOTIFICATION_REQUEST,
    "MatrixRoomRequest": MATRIX_ROOM_REQUEST,
    "ZoomMeetingRequest": ZOOM_MEETING_REQUEST,
    "ZoomMeeting": ZOOM_MEETING,
    "IntegrationResult": INTEGRATION_RESULT,
}
