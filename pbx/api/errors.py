"""Errors of the REST API and the one place that turns them into JSON.

Every answer that is not a success has the same body::

    {"error": "what went wrong", "field": "the input at fault"}

``field`` is there only when one input is at fault.  Handlers raise an
`ApiError`; routing errors come from werkzeug (404, 405); anything else is
a bug and becomes 500 with the request id, the traceback going only to the
log.  `install_error_handlers` registers the mapping on a Klein app, so every
route group answers errors alike.
"""

from __future__ import annotations

import json
from typing import Any

from klein import Klein
from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from werkzeug.exceptions import HTTPException, MethodNotAllowed

__all__ = [
    "APIStartupError",
    "ApiError",
    "BadGateway",
    "BadRequest",
    "Conflict",
    "Forbidden",
    "GatewayTimeout",
    "NotFound",
    "NotImplementedYet",
    "PayloadTooLarge",
    "ServiceUnavailable",
    "Unauthorized",
    "UnsupportedMediaType",
    "error_body",
    "install_error_handlers",
]

log = Logger(namespace="pbx.api")


class APIStartupError(Exception):
    """The API cannot start as configured; ``str()`` is one line for humans."""


class ApiError(Exception):
    """An answer other than success, raised by a handler."""

    status = 500

    def __init__(self, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.headers = headers or {}


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="pbx"'})


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class PayloadTooLarge(ApiError):
    status = 413


class UnsupportedMediaType(ApiError):
    status = 415


class NotImplementedYet(ApiError):
    status = 501


class BadGateway(ApiError):
    status = 502


class ServiceUnavailable(ApiError):
    status = 503


class GatewayTimeout(ApiError):
    status = 504


def error_body(message: str, field: str | None = None, **extra: Any) -> bytes:
    """The one error shape, encoded."""
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    body.update(extra)
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


def _answer(request: Any, status: int, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    for name, value in (headers or {}).items():
        request.setHeader(name.encode("ascii"), value.encode("latin-1"))
    return body


_ROUTING_MESSAGES = {404: "not found", 405: "method not allowed"}


def _api_error(*args: Any) -> bytes:
    request, failure = args[-2], args[-1]
    error = failure.value
    return _answer(request, error.status, error_body(error.message, error.field), error.headers)


def _routing_error(*args: Any) -> bytes:
    request, failure = args[-2], args[-1]
    error: HTTPException = failure.value
    status = error.code or 500
    headers: dict[str, str] = {}
    if isinstance(error, MethodNotAllowed):
        methods = sorted(set(error.valid_methods or ()) - {"HEAD"})
        headers["Allow"] = ", ".join(methods)
        preflight = getattr(request, "answer_preflight", None)
        if request.method == b"OPTIONS" and preflight is not None and preflight(methods):
            request.setResponseCode(204)
            return b""
    elif 300 <= status < 400:
        # A redirect (werkzeug's strict slashes): keep its Location.
        for name, value in error.get_response({}).headers:
            if name.lower() == "location":
                headers["Location"] = value
    message = _ROUTING_MESSAGES.get(status, (error.name or "error").lower())
    return _answer(request, status, error_body(message), headers)


def _unexpected(*args: Any) -> bytes | None:
    request, failure = args[-2], args[-1]
    if failure.check(CancelledError):
        return None  # the client went away; nothing to answer
    request_id = getattr(request, "request_id", None) or "-"
    log.failure(
        "API request {request_id} ({method} {path}) failed",
        failure=failure,
        request_id=request_id,
        method=request.method.decode("ascii", "replace"),
        path=request.path.decode("ascii", "replace"),
    )
    return _answer(request, 500, error_body("internal error", request_id=request_id))


def install_error_handlers(app: Klein) -> None:
    """Make every error of this Klein app's routes a JSON answer of the one shape.

    Call it right after ``app = Klein()``, before any route: it also turns off
    werkzeug's slash merging, whose 308 redirects (``//x`` -> ``/x``) would be
    an answer no route documents; such paths are simply not found.
    """
    app.url_map.merge_slashes = False
    app.handle_errors(ApiError)(_api_error)
    app.handle_errors(HTTPException)(_routing_error)
    app.handle_errors(Exception)(_unexpected)
