"""HTTP plumbing shared by every route group: the request and site classes,
bearer-token checks, the route decorator and JSON in and out.

What is common to all routes lives here so a route handler only says what
it does: `endpoint` labels the request for metrics, checks the token and
refuses oversized or non-JSON bodies before the handler runs; `read_json`
parses and validates a body against its schema (pbx.api.schemas).
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import json
import re
import time
import uuid
from collections.abc import Callable, Iterable
from io import BytesIO
from typing import Any, TypeVar
from urllib.parse import unquote_to_bytes

from twisted.logger import Logger
from twisted.web.server import Request, Site

from pbx.api.errors import (
    BadRequest,
    error_body,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
)
from pbx.api.schemas import SchemaError, validate

__all__ = [
    "MAX_BODY",
    "ApiRequest",
    "ApiSite",
    "TokenGuard",
    "endpoint",
    "is_loopback",
    "json_response",
    "query_params",
    "read_json",
]

MAX_BODY = 64 * 1024
#: Audio uploads (a greeting: up to a minute of WAV in any rate) get a larger limit than JSON.
MAX_UPLOAD = 16 * 1024 * 1024
_UPLOAD_PATH = re.compile(rb"/api/voicemail/[^/?]+/greeting(?:\?.*)?")
UNMATCHED = "unmatched"
_BODY_METHODS = (b"POST", b"PUT", b"PATCH")

F = TypeVar("F", bound=Callable[..., Any])


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and "localhost": only this machine can connect."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _utf8_path(path: bytes) -> bool:
    try:
        unquote_to_bytes(path.split(b"?", 1)[0]).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class ApiRequest(Request):
    """A request that keeps at most `ApiSite.max_body` octets of body.

    A larger body is read and thrown away (so the connection stays usable)
    and the route answers 413 instead of buffering it.  Each request gets an
    id, sent back in X-Request-Id and quoted in a 500's body and the log.
    """

    body_too_large = False
    api_route = UNMATCHED
    request_id = "-"
    _body_size = 0

    def _limit(self) -> int:
        site = getattr(self.channel, "site", None)
        limit = getattr(site, "max_body", MAX_BODY)
        # The body arrives before Request.path is set; the channel has the request line already.
        path = getattr(self.channel, "_path", None) or getattr(self, "path", None) or b""
        if _UPLOAD_PATH.fullmatch(path):
            return max(limit, MAX_UPLOAD)
        return limit

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self._limit():
            self.body_too_large = True
            self.content = BytesIO()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_too_large:
            return
        self._body_size += len(data)
        if self._body_size > self._limit():
            self.body_too_large = True
            self.content = BytesIO()
            return
        super().handleContentChunk(data)

    def process(self) -> None:
        site = self.channel.site
        self.request_id = uuid.uuid4().hex[:16]
        self.started = time.monotonic()
        self.setHeader(b"x-request-id", self.request_id.encode("ascii"))
        self.setHeader(b"cache-control", b"no-store")
        self.setHeader(b"x-content-type-options", b"nosniff")
        origin = self.getHeader(b"origin")
        if origin is not None and site.cors_allows(origin.decode("latin-1")):
            self.setHeader(b"access-control-allow-origin", origin)
            self.setHeader(b"access-control-expose-headers", b"X-Request-Id, X-Total-Count")
            self.setHeader(b"vary", b"Origin")
        self.notifyFinish().addBoth(self._done)
        if not _utf8_path(self.path):
            # Klein would answer this in plain text; keep the one error shape.
            self.site = site
            self.setResponseCode(400)
            self.setHeader(b"content-type", b"application/json")
            self.write(error_body("request path is not UTF-8"))
            self.finish()
            return
        super().process()

    def answer_preflight(self, methods: list[str]) -> bool:
        """A CORS preflight (OPTIONS) for an allowed origin: say what may follow."""
        if not _is_preflight(self):
            return False
        self.setHeader(b"access-control-allow-methods", ", ".join(methods).encode("ascii"))
        self.setHeader(b"access-control-allow-headers", b"Authorization, Content-Type")
        self.setHeader(b"access-control-max-age", b"600")
        return True

    def _done(self, result: object) -> None:
        site = getattr(self, "site", None)
        if site is not None:
            site.request_done(self, aborted=result is not None)


class ApiSite(Site):
    """Site for the API: tracebacks off, bounded bodies, CORS, metrics, access log."""

    log_ = Logger(namespace="pbx.api.access")
    displayTracebacks = False
    noisy = False

    def __init__(self, resource: Any, *, max_body: int = MAX_BODY, cors_origins: Iterable[str] = (),
                 on_request: Callable[[str, str, int], None] | None = None) -> None:
        super().__init__(resource, requestFactory=ApiRequest)
        self.displayTracebacks = False
        self.max_body = max_body
        self.cors_origins = frozenset(cors_origins)
        self.on_request = on_request

    def cors_allows(self, origin: str) -> bool:
        """CORS is off unless api.cors_origins lists the origin (or "*")."""
        return bool(self.cors_origins) and ("*" in self.cors_origins or origin in self.cors_origins)

    def request_done(self, request: ApiRequest, aborted: bool) -> None:
        route = request.api_route
        method = request.method.decode("ascii", "replace")
        status = request.code
        if self.on_request is not None:
            self.on_request(route, method, status)
        elapsed = time.monotonic() - getattr(request, "started", time.monotonic())
        self.log_.info(
            "{client} {method} {route} {status} {ms}ms id={request_id}{aborted}",
            client=getattr(request.getClientAddress(), "host", "-"),
            method=method, route=route, status=status, ms=round(elapsed * 1000, 1),
            request_id=request.request_id, aborted=" (aborted)" if aborted else "",
        )  # fmt: skip

    def log(self, request: Any) -> None:
        """Access lines go to twisted.logger from `request_done`, with the route
        template rather than the raw path."""


class TokenGuard:
    """Bearer tokens from api.tokens, compared in constant time.

    With no token configured every request passes: `make_api_service`
    allows that only on a loopback address.
    """

    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = [t.encode("utf-8") for t in tokens]

    @property
    def open(self) -> bool:
        return not self._tokens

    def check(self, request: Any) -> None:
        if not self._tokens:
            return
        header = request.getHeader(b"authorization")
        if header is None:
            raise Unauthorized("missing bearer token")
        scheme, _, credentials = header.strip().partition(b" ")
        offered = credentials.strip()
        if scheme.lower() != b"bearer" or not offered:
            raise Unauthorized("expected an Authorization: Bearer token")
        matched = False
        for token in self._tokens:  # no early exit: the time taken says nothing
            matched |= hmac.compare_digest(offered, token)
        if not matched:
            raise Unauthorized("invalid token")


def _media_type(request: Any) -> str:
    value = request.getHeader("content-type") or ""
    return value.split(";", 1)[0].strip().lower()


def _is_json_type(media_type: str) -> bool:
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


def _has_body(request: Any) -> bool:
    content = getattr(request, "content", None)
    if content is None:
        return False
    position = content.tell()
    content.seek(0, 2)
    size = content.tell()
    content.seek(position)
    return size > 0


def _is_preflight(request: Any) -> bool:
    """A CORS preflight from an allowed origin: browsers send it without credentials.
    No route accepts OPTIONS, so it can only end as the 204 of `answer_preflight`."""
    if request.method != b"OPTIONS" or request.getHeader(b"access-control-request-method") is None:
        return False
    origin = request.getHeader(b"origin")
    site = getattr(request, "site", None)
    return origin is not None and site is not None and site.cors_allows(origin.decode("latin-1"))


def endpoint(route: str | None, *, public: bool = False) -> Callable[[F], F]:
    """Decorate a route handler (below ``@app.route``).

    Labels the request with its route template (for metrics and the access
    log), then refuses, in this order: a missing or wrong token (401) unless
    ``public``, a body over the limit (413), and a body on POST/PUT/PATCH
    that is not JSON (415).  The handler's owner must have ``.guard``.
    """

    def decorate(handler: F) -> F:
        @functools.wraps(handler)
        def wrapper(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
            if route is not None:
                request.api_route = route
            if not public and not _is_preflight(request):
                self.guard.check(request)
            if getattr(request, "body_too_large", False):
                limit = request._limit() if hasattr(request, "_limit") else MAX_BODY
                raise PayloadTooLarge(f"request body larger than {limit} bytes")
            if request.method in _BODY_METHODS and _has_body(request):
                media_type = _media_type(request)
                if not _is_json_type(media_type):
                    raise UnsupportedMediaType(
                        f"expected Content-Type application/json, got {media_type or 'none'}"
                    )
            return handler(self, request, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def read_json(request: Any, schema: dict[str, Any]) -> Any:
    """The request body, parsed and checked against ``schema``; 400 naming the field otherwise."""
    if not _has_body(request):
        raise BadRequest("a JSON request body is required")
    media_type = _media_type(request)
    if not _is_json_type(media_type):
        raise UnsupportedMediaType(f"expected Content-Type application/json, got {media_type or 'none'}")
    request.content.seek(0)
    raw = request.content.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("request body is not UTF-8") from None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except ValueError as error:
        raise BadRequest(f"invalid JSON: {error}") from None
    try:
        validate(value, schema)
    except SchemaError as error:
        raise BadRequest(error.message, error.field) from None
    return value


def query_params(request: Any, allowed: Iterable[str]) -> dict[str, str]:
    """Query parameters as text; unknown or repeated ones are a 400 naming them."""
    allowed = set(allowed)
    params: dict[str, str] = {}
    for raw_name, values in (request.args or {}).items():
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("query parameter names must be UTF-8") from None
        if name not in allowed:
            raise BadRequest(f"unknown query parameter (expected one of {', '.join(sorted(allowed))})", name)
        if len(values) != 1:
            raise BadRequest("given more than once", name)
        try:
            params[name] = values[0].decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("not UTF-8", name) from None
    return params


def json_response(request: Any, value: Any, status: int = 200) -> bytes:
    """Encode ``value`` as the response body."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


