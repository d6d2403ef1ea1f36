"""The OpenAPI 3.1 document of the REST API, served at /api/openapi.json.

Built from one table (`OPERATIONS`) and the schemas that also validate the
request bodies (pbx.api.schemas), so the document cannot drift from what
the handlers accept.  A test checks that every route of the Klein apps is in
the table and that the document is valid OpenAPI 3.1.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from pbx.api.integrations import INTEGRATION_OPERATIONS, INTEGRATION_ROUTES
from pbx.api.schemas import NUMBER, PHONE, SCHEMAS
from pbx.core.cdr import DISPOSITIONS

__all__ = ["OPERATIONS", "Operation", "build_document"]

_ERRORS = {
    400: "Bad input; `field` names it.",
    401: "Missing or wrong bearer token.",
    403: "Not allowed (e.g. an extension from the configuration file).",
    404: "No such resource.",
    405: "Method not allowed (see Allow).",
    409: "Conflict: the resource exists already.",
    413: "Request body larger than the limit (64 KiB).",
    415: "Request body of the wrong Content-Type: application/json (audio/wav for a greeting).",
    500: "Unexpected error; the body carries `request_id`, the traceback is in the log.",
    501: "Not implemented yet.",
    502: "The integration's server failed or answered something unusable.",
    503: "The integration (or voicemail) is not enabled, or enabled but not configured (the body names the "
         "missing key), or the PBX is still starting (then with Retry-After).",
    504: "The integration's server did not answer within integrations.timeout.",
}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    ok: int = 200
    ok_schema: str | None = None
    ok_description: str = "Success."
    body: str | None = None
    errors: tuple[int, ...] = ()
    parameters: tuple[dict[str, Any], ...] = ()
    public: bool = False
    extra_content: dict[str, Any] = field(default_factory=dict)
    ok_content: dict[str, Any] | None = None  # a success body that is not JSON (audio)
    body_content: dict[str, Any] | None = None  # a request body that is not JSON (audio)


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


_NUMBER_PARAM = {"name": "number", "in": "path", "required": True, "schema": dict(NUMBER),
                 "description": "The extension number."}
_CALL_PARAM = {"name": "call_id", "in": "path", "required": True, "schema": {"type": "string"},
               "description": "The PBX's id of the call (not a SIP Call-ID)."}
_MESSAGE_PARAM = {"name": "message_id", "in": "path", "required": True,
                  "schema": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
                  "description": "The message's id (another mailbox's id is not found)."}
_WAV = {"schema": {"type": "string", "contentMediaType": "audio/wav"}}
_WAV_BODY = {"audio/wav": _WAV, "audio/x-wav": _WAV}
_CDR_PARAMS = (
    _query("extension", {"type": "string", "minLength": 1, "maxLength": 64},
           "Calls where this number is the caller, the callee or the member that answered."),
    _query("from", {"type": "string"}, "ISO 8601 date or date-time (UTC if no zone): calls that started at or after."),
    _query("to", {"type": "string"},
           "ISO 8601 date or date-time: calls that started before it; a bare date includes that whole day."),
    _query("disposition", {"type": "string", "enum": list(DISPOSITIONS)}, "Only calls with this outcome."),
    _query("limit", {"type": "integer", "minimum": 1, "maximum": 100000},
           "Page size: default 100, at most 1000 (CSV: default 10000, at most 100000)."),
    _query("offset", {"type": "integer", "minimum": 0}, "Records to skip (newest first)."),
    _query("format", {"type": "string", "enum": ["json", "csv"]}, "csv: the same records as CSV (or send Accept: text/csv)."),
)  # fmt: skip
_BODY_ERRORS = (400, 413, 415)

OPERATIONS: tuple[Operation, ...] = (
    Operation("GET", "/api/health", "getHealth", "Liveness: status, version, uptime (no token needed)", "system",
              ok_schema="Health", public=True),
    Operation("GET", "/api/status", "getStatus", "Registered extensions, active calls and totals", "system",
              ok_schema="Status"),
    Operation("GET", "/api/ports", "getPorts", "The port plan: what the PBX binds and which local services it calls",
              "system", ok_schema="PortPlan"),
    Operation("GET", "/api/openapi.json", "getOpenAPI", "This document", "system",
              ok_description="The OpenAPI 3.1 document."),
    Operation("GET", "/metrics", "getMetrics", "Prometheus metrics (text format)", "system",
              ok_description="Prometheus text exposition format 0.0.4."),
    Operation("GET", "/api/extensions", "listExtensions", "List extensions", "extensions", ok_schema="ExtensionList"),
    Operation("POST", "/api/extensions", "createExtension", "Create an extension (it can register at once)",
              "extensions", ok=201, ok_schema="Extension", body="ExtensionCreate", errors=(*_BODY_ERRORS, 409)),
    Operation("GET", "/api/extensions/{number}", "getExtension", "One extension", "extensions",
              ok_schema="Extension", errors=(404,), parameters=(_NUMBER_PARAM,)),
    Operation("PUT", "/api/extensions/{number}", "replaceExtension",
              "Replace an extension's fields (password kept if not given)", "extensions",
              ok_schema="Extension", body="ExtensionReplace", errors=(*_BODY_ERRORS, 403, 404),
              parameters=(_NUMBER_PARAM,)),
    Operation("PATCH", "/api/extensions/{number}", "updateExtension", "Change some fields of an extension",
              "extensions", ok_schema="Extension", body="ExtensionPatch", errors=(*_BODY_ERRORS, 403, 404),
              parameters=(_NUMBER_PARAM,)),
    Operation("DELETE", "/api/extensions/{number}", "deleteExtension",
              "Delete an extension; its bindings go, its calls in progress go on", "extensions",
              ok=204, ok_description="Deleted.", errors=(403, 404), parameters=(_NUMBER_PARAM,)),
    Operation("GET", "/api/registrations", "listRegistrations", "Current registrations (bindings)", "registrations",
              ok_schema="RegistrationList", errors=(400,),
              parameters=(_query("extension", {"type": "string"}, "Only this extension's bindings."),)),
    Operation("GET", "/api/calls", "listCalls", "Calls in progress", "calls", ok_schema="CallList"),
    Operation("POST", "/api/calls", "clickToDial", "Click-to-dial (not implemented yet: answers 501)", "calls",
              ok=201, ok_description="Not returned yet.", body="ClickToDial", errors=(*_BODY_ERRORS, 501)),
    Operation("GET", "/api/calls/{call_id}", "getCall", "One call in progress", "calls", ok_schema="Call",
              errors=(404,), parameters=(_CALL_PARAM,)),
    Operation("DELETE", "/api/calls/{call_id}", "hangUpCall", "Hang up both legs of a call", "calls",
              ok=204, ok_description="Hung up; the call record is written.", errors=(404,),
              parameters=(_CALL_PARAM,)),
    Operation("GET", "/api/cdr", "listCallRecords", "Finished calls, newest first, filtered and paged; or CSV",
              "cdr", ok_schema="CallRecordPage", errors=(400,), parameters=_CDR_PARAMS,
              extra_content={"text/csv": {"schema": {"type": "string"}}}),
    Operation("GET", "/api/voicemail/{number}", "getMailbox", "A mailbox's counts and messages, oldest first",
              "voicemail", ok_schema="VoicemailMailbox", errors=(400, 404), parameters=(
                  _NUMBER_PARAM, _query("folder", {"type": "string", "enum": ["new", "old"]},
                                        "new: messages not heard yet; old: heard ones. Both when absent."))),
    Operation("GET", "/api/voicemail/{number}/{message_id}", "getVoicemail", "One message", "voicemail",
              ok_schema="VoicemailMessage", errors=(404,), parameters=(_NUMBER_PARAM, _MESSAGE_PARAM)),
    Operation("GET", "/api/voicemail/{number}/{message_id}/audio", "getVoicemailAudio",
              "The message's recording (WAV, 8 kHz 16-bit mono)", "voicemail",
              ok_description="The recording.", ok_content={"audio/wav": _WAV}, errors=(404,),
              parameters=(_NUMBER_PARAM, _MESSAGE_PARAM)),
    Operation("PATCH", "/api/voicemail/{number}/{message_id}", "updateVoicemail",
              "Mark a message heard or unheard, saved or not (the phones' lamps follow)", "voicemail",
              ok_schema="VoicemailMessage", body="VoicemailPatch", errors=(*_BODY_ERRORS, 404),
              parameters=(_NUMBER_PARAM, _MESSAGE_PARAM)),
    Operation("DELETE", "/api/voicemail/{number}/{message_id}", "deleteVoicemail",
              "Delete a message and its recording", "voicemail", ok=204, ok_description="Deleted.",
              errors=(404,), parameters=(_NUMBER_PARAM, _MESSAGE_PARAM)),
    Operation("GET", "/api/voicemail/{number}/greeting", "getGreeting",
              "The mailbox's own greeting (WAV, 8 kHz 16-bit mono)", "voicemail",
              ok_description="The greeting.", ok_content={"audio/wav": _WAV},
              errors=(404,), parameters=(_NUMBER_PARAM,)),
    Operation("PUT", "/api/voicemail/{number}/greeting", "replaceGreeting",
              "Upload the mailbox's greeting: a WAV file (PCM, float, µ-law or A-law; 1 to 384 kHz, any "
              "channels; converted to 8 kHz mono) no longer than voicemail.max_greeting_duration",
              "voicemail", ok=204, ok_description="Saved.", body_content=_WAV_BODY, errors=(*_BODY_ERRORS, 404),
              parameters=(_NUMBER_PARAM,)),
    Operation("DELETE", "/api/voicemail/{number}/greeting", "deleteGreeting",
              "Delete the mailbox's own greeting (callers hear the standard one again)", "voicemail",
              ok=204, ok_description="Deleted.", errors=(404,), parameters=(_NUMBER_PARAM,)),
    *(
        Operation(method, "/api/integrations" + path,
                  "integration" + "".join(part.title() for part in path.replace("/", " ").split()),
                  f"{summary} ({name}; 503 when not enabled or not configured)", "integrations",
                  ok=INTEGRATION_OPERATIONS[(method, path)].ok,
                  ok_schema=INTEGRATION_OPERATIONS[(method, path)].ok_schema,
                  ok_description="Created." if INTEGRATION_OPERATIONS[(method, path)].ok == 201
                  else "What the integration's server answered.",
                  body=INTEGRATION_OPERATIONS[(method, path)].body,
                  errors=(*(_BODY_ERRORS if method == "POST" else (400,)), 502, 503, 504),
                  parameters=tuple(
                      {**_query(query, PHONE, description), "required": True}
                      for query, description in INTEGRATION_OPERATIONS[(method, path)].query
                  ))
        for method, path, name, summary in INTEGRATION_ROUTES
    ),
)  # fmt: skip


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _operation(op: Operation) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    success: dict[str, Any] = {"description": op.ok_description}
    if op.ok_content is not None:
        success["content"] = copy.deepcopy(op.ok_content)
    elif op.ok_schema is not None:
        success["content"] = {"application/json": {"schema": _ref(op.ok_schema)}, **op.extra_content}
    elif op.path == "/metrics":
        success["content"] = {"text/plain": {"schema": {"type": "string"}}}
    elif op.path == "/api/openapi.json":
        success["content"] = {"application/json": {"schema": {"type": "object"}}}
    responses[str(op.ok)] = success
    statuses = set(op.errors) | {500}
    if op.tag != "system":
        statuses.add(503)  # the PBX is still loading its data
    if not op.public:
        statuses.add(401)
    for status in sorted(statuses):
        responses[str(status)] = {"$ref": f"#/components/responses/E{status}"}
    result: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": [op.tag],
        "responses": responses,
    }
    if op.parameters:
        result["parameters"] = [copy.deepcopy(p) for p in op.parameters]
    if op.body is not None:
        result["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(op.body)}}}
    elif op.body_content is not None:
        result["requestBody"] = {"required": True, "content": copy.deepcopy(op.body_content)}
    if op.public:
        result["security"] = []
    return result


def build_document(version: str) -> dict[str, Any]:
    """The whole OpenAPI 3.1 document."""
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Twisted PBX REST API",
            "version": version,
            "description": "Extensions, registrations, calls, call records, voicemail, metrics and integrations "
                           "of the PBX. "
                           'Every error has the body {"error": "...", "field": "..."}.',
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "tags": [{"name": name} for name in
                 ("system", "extensions", "registrations", "calls", "cdr", "voicemail", "integrations")],
        "paths": paths,
        "components": {
            "schemas": copy.deepcopy(SCHEMAS),
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "A token from api.tokens."}},
            "responses": {
                f"E{status}": {"description": text,
                               "content": {"application/json": {"schema": _ref("Error")}}}
                for status, text in sorted(_ERRORS.items())
            },
        },
    }
