"""/api/integrations/...: the routes of the outgoing integrations.

They are registered now so that clients, the OpenAPI document and the
metrics see the final surface; until each integration's work item lands
they answer 503 ``{"error": "<Name> integration not enabled"}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from klein import Klein

from pbx.api.context import ApiContext
from pbx.api.errors import ServiceUnavailable, install_error_handlers
from pbx.api.http import endpoint

__all__ = ["INTEGRATION_ROUTES", "IntegrationRoutes"]

#: (method, path under /api/integrations, integration name, summary)
INTEGRATION_ROUTES: tuple[tuple[str, str, str, str], ...] = (
    ("POST", "/jitsi/meetings", "Jitsi", "Create a scheduled Jitsi meeting"),
    ("POST", "/jitsi/instant", "Jitsi", "Create an instant Jitsi meeting"),
    ("GET", "/espocrm/contacts/search", "EspoCRM", "Search EspoCRM contacts (e.g. by phone number)"),
    ("POST", "/espocrm/contacts", "EspoCRM", "Create an EspoCRM contact"),
    ("POST", "/espocrm/calls", "EspoCRM", "Log a call in EspoCRM"),
    ("POST", "/matrix/messages", "Matrix", "Send a Matrix message"),
    ("POST", "/matrix/notifications", "Matrix", "Send a Matrix notification"),
    ("POST", "/matrix/rooms", "Matrix", "Create a Matrix room"),
    ("POST", "/zoom/meetings", "Zoom", "Create a Zoom meeting"),
)


def _not_enabled(name: str, route: str) -> Callable[..., Any]:
    @endpoint(route)
    def handler(self: Any, request: Any) -> bytes:
        raise ServiceUnavailable(f"{name} integration not enabled")

    handler.__name__ = "integration_" + route.strip("/").replace("/", "_")
    return handler


class IntegrationRoutes:
    """Every integration route, answering 503 until its integration exists."""

    app = Klein()
    install_error_handlers(app)

    def __init__(self, context: ApiContext) -> None:
        self.context = context
        self.pbx = context.pbx
        self.guard = context.guard

    for _method, _path, _name, _summary in INTEGRATION_ROUTES:
        _handler = _not_enabled(_name, "/api/integrations" + _path)
        app.route(_path, methods=[_method], endpoint=_handler.__name__)(_handler)
    del _method, _path, _name, _summary, _handler
