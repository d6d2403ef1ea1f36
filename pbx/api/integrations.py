"""/api/integrations/...: the routes of the outgoing integrations.

Each route calls the client of its integration (``pbx.integrations.<name>``,
see pbx.integrations.service) and answers:

- 503 ``{"error": "<Name> integration not enabled"}`` when it is off, or
  ``"<Name> integration is enabled but not configured: integrations.x.key
  missing"`` when a key it needs is missing (checked before the body);
- 400 naming the field when the body (or ``?phone=``) does not fit its
  schema (pbx.api.schemas) or the client refuses a value;
- 502 when the integration's server failed or answered something unusable
  (`UpstreamError`), 504 when it did not answer in time (`UpstreamTimeout`);
- on success 201 with the created thing (200 for the contact search).
"""

from __future__ import annotations

import re
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from pbx.api.context import ApiContext
from pbx.api.errors import BadGateway, BadRequest, GatewayTimeout, ServiceUnavailable, install_error_handlers
from pbx.api.http import endpoint, json_response, query_params, read_json
from pbx.api.schemas import (
    ESPOCRM_CALL_REQUEST,
    ESPOCRM_CONTACT_REQUEST,
    JITSI_INSTANT_REQUEST,
    JITSI_MEETING_REQUEST,
    MATRIX_MESSAGE_REQUEST,
    MATRIX_NOTIFICATION_REQUEST,
    MATRIX_ROOM_REQUEST,
    PHONE,
    ZOOM_MEETING_REQUEST,
    SchemaError,
    validate,
)
from pbx.integrations.http import IntegrationError, NotConfigured, UpstreamError, UpstreamTimeout

__all__ = ["INTEGRATION_OPERATIONS", "INTEGRATION_ROUTES", "IntegrationOperation", "IntegrationRoutes"]

#: (method, path under /api/integrations, integration name, summary)
INTEGRATION_ROUTES: tuple[tuple[str, str, str, str], ...] = (
    ("POST", "/jitsi/meetings", "Jitsi", "Create a scheduled Jitsi meeting"),
    ("POST", "/jitsi/instant", "Jitsi", "Create an instant Jitsi meeting"),
    ("GET", "/espocrm/contacts/search", "EspoCRM",
     "Search EspoCRM contacts by phone number: ?phone=N (required; E.164 and national forms match)"),
    ("POST", "/espocrm/contacts", "EspoCRM", "Create an EspoCRM contact"),
    ("POST", "/espocrm/calls", "EspoCRM", "Log a call in EspoCRM"),
    ("POST", "/matrix/messages", "Matrix", "Send a Matrix message"),
    ("POST", "/matrix/notifications", "Matrix", "Send a Matrix notice (to notification_room by default)"),
    ("POST", "/matrix/rooms", "Matrix", "Create a Matrix room"),
    ("POST", "/zoom/meetings", "Zoom", "Create a Zoom meeting"),
)


@dataclass(frozen=True)
class IntegrationOperation:
    """What the OpenAPI document says of one route besides INTEGRATION_ROUTES."""

    body: str | None
    ok: int
    ok_schema: str | None
    query: tuple[tuple[str, str], ...] = ()  # (name, description) of required query parameters


#: (method, path) -> request body schema, success status and schema (names in pbx.api.schemas.SCHEMAS)
INTEGRATION_OPERATIONS: dict[tuple[str, str], IntegrationOperation] = {
    ("POST", "/jitsi/meetings"): IntegrationOperation("JitsiMeetingRequest", 201, "JitsiMeeting"),
    ("POST", "/jitsi/instant"): IntegrationOperation("JitsiInstantRequest", 201, "JitsiMeeting"),
    ("GET", "/espocrm/contacts/search"): IntegrationOperation(
        None, 200, None, (("phone", "The caller's number; E.164 and national forms both match."),)
    ),
    ("POST", "/espocrm/contacts"): IntegrationOperation("EspoCRMContactRequest", 201, "IntegrationResult"),
    ("POST", "/espocrm/calls"): IntegrationOperation("EspoCRMCallRequest", 201, "IntegrationResult"),
    ("POST", "/matrix/messages"): IntegrationOperation("MatrixMessageRequest", 201, "IntegrationResult"),
    ("POST", "/matrix/notifications"): IntegrationOperation("MatrixNotificationRequest", 201, "IntegrationResult"),
    ("POST", "/matrix/rooms"): IntegrationOperation("MatrixRoomRequest", 201, "IntegrationResult"),
    ("POST", "/zoom/meetings"): IntegrationOperation("ZoomMeetingRequest", 201, "ZoomMeeting"),
}

_NAMES = {"jitsi": "Jitsi", "espocrm": "EspoCRM", "matrix": "Matrix", "zoom": "Zoom"}
_FIELD = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*): ")


def _named(display: str, message: str) -> str:
    """An upstream error message that says which integration it is about."""
    return message if display.lower() in message.lower() else f"{display}: {message}"


def _optional(body: dict[str, Any], *names: str) -> dict[str, Any]:
    return {name: body.get(name) for name in names if body.get(name) is not None}


class IntegrationRoutes:
    """Every integration route; see the module docstring for the answers."""

    app = Klein()
    install_error_handlers(app)
    log = Logger()

    def __init__(self, context: ApiContext) -> None:
        self.context = context
        self.pbx = context.pbx
        self.guard = context.guard

    # -- plumbing ---------------------------------------------------------------

    def _client(self, key: str) -> Any:
        """The client of integration ``key``; 503 when disabled or not configured."""
        display = _NAMES[key]
        integrations = getattr(self.pbx, "integrations", None)
        if integrations is None:
            raise ServiceUnavailable(f"{display} integration not enabled")
        unavailable = getattr(integrations, "unavailable", {}).get(key)
        if unavailable is not None:
            raise ServiceUnavailable(_named(display, unavailable.message))
        client = getattr(integrations, key, None)
        if client is None:
            raise ServiceUnavailable(f"{display} integration not enabled")
        return client

    async def _call(self, key: str, fields: set[str], method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call the client (``fields``: the body's field names, for a 400); its
        errors become the API's answers."""
        display = _NAMES[key]
        try:
            result = method(*args, **kwargs)
            if isinstance(result, Deferred) or inspect.isawaitable(result):
                result = await result
            return result
        except NotConfigured as error:
            raise ServiceUnavailable(_named(display, error.message)) from None
        except UpstreamTimeout as error:
            raise GatewayTimeout(_named(display, error.message)) from None
        except UpstreamError as error:
            raise BadGateway(_named(display, error.message)) from None
        except IntegrationError as error:
            raise BadGateway(_named(display, error.message)) from None
        except ValueError as error:  # the client refused a value: "field: why"
            message = str(error)
            match = _FIELD.match(message)
            field = match.group(1) if match and match.group(1).split(".")[0] in fields else None
            raise BadRequest(message, field) from None

    @staticmethod
    def _result(request: Any, value: Any, status: int) -> bytes:
        if not isinstance(value, dict):
            value = {"result": value}
        return json_response(request, value, status)

    # -- Jitsi ------------------------------------------------------------------

    @app.route("/jitsi/meetings", methods=["POST"])
    @endpoint("/api/integrations/jitsi/meetings")
    async def jitsi_meetings(self, request: Any) -> bytes:
        client = self._client("jitsi")
        body = read_json(request, JITSI_MEETING_REQUEST)
        args = _optional(body, "room_name", "subject", "moderator_name", "participants", "scheduled_time",
                         "duration")
        result = await self._call("jitsi", set(JITSI_MEETING_REQUEST["properties"]), client.meeting, **args)
        return self._result(request, result, 201)

    @app.route("/jitsi/instant", methods=["POST"])
    @endpoint("/api/integrations/jitsi/instant")
    async def jitsi_instant(self, request: Any) -> bytes:
        client = self._client("jitsi")
        body = read_json(request, JITSI_INSTANT_REQUEST)
        result = await self._call("jitsi", set(JITSI_INSTANT_REQUEST["properties"]), client.instant,
                                  body["extension"], body.get("contact_name"))
        return self._result(request, result, 201)

    # -- EspoCRM ----------------------------------------------------------------

    @app.route("/espocrm/contacts/search", methods=["GET"])
    @endpoint("/api/integrations/espocrm/contacts/search")
    async def espocrm_search(self, request: Any) -> bytes:
        client = self._client("espocrm")
        params = query_params(request, ("phone",))
        phone = params.get("phone")
        if phone is None:
            raise BadRequest("phone: required (?phone=N)", "phone")
        try:
            validate(phone, PHONE, "phone")
        except SchemaError as error:
            raise BadRequest(error.message, error.field) from None
        result = await self._call("espocrm", {"phone"}, client.search_contacts, phone)
        return self._result(request, result, 200)

    @app.route("/espocrm/contacts", methods=["POST"])
    @endpoint("/api/integrations/espocrm/contacts")
    async def espocrm_contacts(self, request: Any) -> bytes:
        client = self._client("espocrm")
        body = read_json(request, ESPOCRM_CONTACT_REQUEST)
        args = _optional(body, "phone", "email", "company", "title")
        result = await self._call("espocrm", set(ESPOCRM_CONTACT_REQUEST["properties"]), client.create_contact,
                                  body["name"], **args)
        return self._result(request, result, 201)

    @app.route("/espocrm/calls", methods=["POST"])
    @endpoint("/api/integrations/espocrm/calls")
    async def espocrm_calls(self, request: Any) -> bytes:
        client = self._client("espocrm")
        body = read_json(request, ESPOCRM_CALL_REQUEST)
        result = await self._call("espocrm", set(ESPOCRM_CALL_REQUEST["properties"]), client.log_call,
                                  body["contact_id"], body["direction"], body["duration"], body["status"],
                                  description=body.get("description"))
        return self._result(request, result, 201)

    # -- Matrix -----------------------------------------------------------------

    @app.route("/matrix/messages", methods=["POST"])
    @endpoint("/api/integrations/matrix/messages")
    async def matrix_messages(self, request: Any) -> bytes:
        client = self._client("matrix")
        body = read_json(request, MATRIX_MESSAGE_REQUEST)
        result = await self._call("matrix", set(MATRIX_MESSAGE_REQUEST["properties"]), client.send_message,
                                  body["room_id"], body["message"], body.get("msg_type") or "m.text")
        return self._result(request, result, 201)

    @app.route("/matrix/notifications", methods=["POST"])
    @endpoint("/api/integrations/matrix/notifications")
    async def matrix_notifications(self, request: Any) -> bytes:
        client = self._client("matrix")
        body = read_json(request, MATRIX_NOTIFICATION_REQUEST)
        room = body.get("room_id") or getattr(getattr(client, "config", None), "notification_room", None)
        if not room:
            raise BadRequest("room_id: required, as integrations.matrix.notification_room is not set", "room_id")
        result = await self._call("matrix", set(MATRIX_NOTIFICATION_REQUEST["properties"]), client.notice,
                                  room, body["message"])
        return self._result(request, result, 201)

    @app.route("/matrix/rooms", methods=["POST"])
    @endpoint("/api/integrations/matrix/rooms")
    async def matrix_rooms(self, request: Any) -> bytes:
        client = self._client("matrix")
        body = read_json(request, MATRIX_ROOM_REQUEST)
        result = await self._call("matrix", set(MATRIX_ROOM_REQUEST["properties"]), client.create_room,
                                  body["name"], topic=body.get("topic"), invite_users=body.get("invite_users"))
        return self._result(request, result, 201)

    # -- Zoom -------------------------------------------------------------------

    @app.route("/zoom/meetings", methods=["POST"])
    @endpoint("/api/integrations/zoom/meetings")
    async def zoom_meetings(self, request: Any) -> bytes:
        client = self._client("zoom")
        body = read_json(request, ZOOM_MEETING_REQUEST)
        args = _optional(body, "start_time", "duration", "timezone", "agenda")
        result = await self._call("zoom", set(ZOOM_MEETING_REQUEST["properties"]), client.create_meeting,
                                  body["topic"], **args)
        return self._result(request, result, 201)
