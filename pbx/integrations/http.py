"""The HTTP client every integration uses: JSON over treq, bounded and safe.

`JSONClient.request` never blocks the reactor and never waits longer than
the integration's timeout (``integrations.timeout``) in total: connecting,
sending, waiting for the headers and reading the body all count, and so do
the pauses between retries.  What can go wrong ends in one of three
exceptions, which the REST API maps to its answers:

==========================  ======  =============================================
exception                   answer  when
==========================  ======  =============================================
`NotConfigured`             503     enabled, but a key it needs is missing
`UpstreamError`             502     refused, reset, a status not expected, a body
                                    that is not JSON, a body too large
`UpstreamTimeout`           504     no complete answer within the timeout
==========================  ======  =============================================

Retries: an idempotent request (GET, PUT, DELETE, HEAD, OPTIONS unless told
otherwise) is tried again after a connection error or a 5xx, with
exponential backoff (``backoff``, ``2 * backoff``, ...), at most ``retries``
times and only while the deadline allows; a 4xx is never retried.  A POST is
tried once (event-driven POSTs are retried by the outbox instead).

Secrets: header values of Authorization, X-Api-Key, Cookie and the strings
given as ``secrets`` are replaced by ``***`` in every log line and every
error message; request and response headers are never logged.
"""

from __future__ import annotations

import json as jsonlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore, ensureDeferred
from twisted.internet.error import ConnectError, ConnectingCancelledError, ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss

__all__ = [
    "IDEMPOTENT_METHODS",
    "MAX_RESPONSE_BODY",
    "IntegrationError",
    "JSONClient",
    "JSONResponse",
    "NotConfigured",
    "UpstreamError",
    "UpstreamTimeout",
    "redact",
]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
#: Larger answers are cut off and reported as an UpstreamError.
MAX_RESPONSE_BODY = 4 * 1024 * 1024
SENSITIVE_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "cookie"})
REDACTED = "***"

log = Logger(namespace="pbx.integrations.http")


# ---------------------------------------------------------------------------
# Errors


class IntegrationError(Exception):
    """Something an integration could not do; ``integration`` names it ("EspoCRM").

    ``IntegrationError(integration, message)``; ``str()`` is the message,
    which must never carry a secret.
    """

    def __init__(self, integration: str, message: str | None = None) -> None:
        self.integration = integration
        self.message = message if message is not None else f"{integration} integration failed"
        super().__init__(self.message)


class NotConfigured(IntegrationError):
    """Enabled, but a key it needs is missing (API: 503).  ``key`` is the dotted
    config key, e.g. ``integrations.espocrm.api_key``."""

    def __init__(self, integration: str, message: str | None = None, *, key: str | None = None) -> None:
        self.key = key
        if message is None:
            message = f"{integration} integration is enabled but not configured" + (f": {key} missing" if key else "")
        super().__init__(integration, message)


class UpstreamError(IntegrationError):
    """The server failed or answered something unusable (API: 502).

    ``status``: its HTTP status, None when no answer came; ``body``: the
    decoded answer (JSON or text, secrets removed), for logs.
    """

    def __init__(self, integration: str, message: str | None = None, *, status: int | None = None,
                 body: Any = None) -> None:
        self.status = status
        self.body = body
        super().__init__(integration, message)


class UpstreamTimeout(IntegrationError):
    """No complete answer within the timeout (API: 504)."""


@dataclass
class JSONResponse:
    """An answer: ``json`` is the decoded body (None when the body is empty)."""

    status: int
    headers: dict[str, list[str]]
    json: Any | None
    text: str


# ---------------------------------------------------------------------------
# Helpers


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret (longest first) replaced by ``***``."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def _redact_value(value: Any, secrets: Sequence[str]) -> Any:
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, dict):
        return {k: _redact_value(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_value(v, secrets) for v in value]
    return value


def _summary(body: Any, limit: int = 200) -> str:
    """A short human description of an error body (the vendor's message when it has one)."""
    if isinstance(body, dict):
        parts = [str(body[k]) for k in ("errcode", "error", "message", "reason", "detail") if body.get(k)]
        text = ": ".join(parts) if parts else jsonlib.dumps(body, ensure_ascii=False)
    elif body is None:
        text = ""
    else:
        text = str(body)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Body(Protocol):
    """Collects a response body up to a limit; cancelling it drops the connection."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        self.too_large = False
        self.done: Deferred[bytes] = Deferred(self._cancel)

    def _cancel(self, done: Deferred[bytes]) -> None:
        done.errback(Failure(CancelledError()))  # first: what stopProducing reports is then ignored
        if self.transport is not None:
            self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.too_large = True
            self.done.callback(b"")
            if self.transport is not None:
                self.transport.stopProducing()
            return
        self.parts.append(data)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)


def _read_body(response: Any, limit: int) -> Deferred[bytes]:
    if getattr(response, "length", None) == 0:
        collector = _Body(limit)
        collector.done.callback(b"")
        return collector.done
    collector = _Body(limit)
    response.deliverBody(collector)
    d = collector.done

    def check(body: bytes) -> bytes:
        if collector.too_large:
            raise _TooLarge()
        return body

    return d.addCallback(check)


class _TooLarge(Exception):
    pass


class _Retry(Exception):
    """An attempt failed in a way worth trying again (for an idempotent request)."""

    def __init__(self, error: IntegrationError) -> None:
        super().__init__(str(error))
        self.error = error


#: Errors of the connection (nothing usable came back): retried when idempotent.
_CONNECTION_ERRORS = (ConnectError, ConnectionLost, ResponseNeverReceived, RequestNotSent,
                      RequestTransmissionFailed, ResponseFailed)


def _charset(headers: Mapping[str, list[str]]) -> str:
    for value in headers.get("content-type", ())[-1:]:
        for param in value.split(";")[1:]:
            name, _, charset = param.strip().partition("=")
            if name.strip().lower() == "charset" and charset.strip():
                return charset.strip().strip("'\"")
    return "utf-8"


# ---------------------------------------------------------------------------
# The client


class _Deadline:
    expired = False


class JSONClient:
    """JSON over HTTP for one integration: base URL, headers, timeout, retries, concurrency.

    ``reactor`` is the clock for the timeout and the backoff; ``http_client``
    a treq ``HTTPClient`` (tests inject ``treq.testing.StubTreq`` or a client
    of their own); by default treq over an `Agent` with
    ``connectTimeout=timeout`` and no persistent connections.
    """

    def __init__(self, integration: str, base_url: str, *, reactor: Any, timeout: float = 5.0,
                 retries: int = 2, backoff: float = 0.5, concurrency: int = 4,
                 headers: dict[str, str] | None = None, http_client: Any = None,
                 secrets: Sequence[str] = ()) -> None:
        self.integration = integration
        self.base_url = base_url
        self.reactor = reactor
        self.timeout = float(timeout)
        self.retries = max(0, int(retries))
        self.backoff = float(backoff)
        self.concurrency = max(1, int(concurrency))
        self.headers = dict(headers or {})
        self._secrets = [s for s in secrets if s]
        self._secrets.extend(v for k, v in self.headers.items() if k.lower() in SENSITIVE_HEADERS and v)
        self._semaphore = DeferredSemaphore(self.concurrency)
        self.in_flight = 0
        if http_client is None:
            import treq.client

            pool = HTTPConnectionPool(reactor, persistent=False)
            http_client = treq.client.HTTPClient(Agent(reactor, connectTimeout=self.timeout, pool=pool))
        self.http = http_client

    # -- secrets ----------------------------------------------------------------

    def add_secret(self, secret: str | None) -> None:
        """Hide another string from logs and errors (a token fetched at run time)."""
        if secret and secret not in self._secrets:
            self._secrets.append(secret)

    def redact(self, text: str) -> str:
        return redact(text, self._secrets)

    # -- URLs -------------------------------------------------------------------

    def url(self, path: str, params: Any = None) -> str:
        """``path`` below the base URL (or absolute), with ``params`` encoded once."""
        if path.startswith(("http://", "https://")):
            url = path
        elif not path:
            url = self.base_url
        else:
            url = self.base_url.rstrip("/") + "/" + path.lstrip("/")
        if params:
            items = list(params.items()) if isinstance(params, Mapping) else list(params)
            query = urlencode(items, doseq=True)
            if query:
                url += ("&" if "?" in url else "?") + query
        return url

    def _where(self, method: str, url: str) -> str:
        """``METHOD /path`` for messages: no query string, no secrets."""
        return self.redact(f"{method} {urlsplit(url).path or '/'}")

    # -- requests ---------------------------------------------------------------

    async def request(self, method: str, path: str, *, params: Any = None, json: Any = None,
                      data: bytes | None = None, headers: dict[str, str] | None = None,
                      idempotent: bool | None = None,
                      expect: Collection[int] = (200, 201, 204)) -> JSONResponse:
        """One request, retried as the module docstring says; the answer with its JSON."""
        method = method.upper()
        url = self.url(path, params)
        sent = {"Accept": "application/json", **self.headers, **(headers or {})}
        secrets = list(self._secrets)
        secrets.extend(v for k, v in (headers or {}).items() if k.lower() in SENSITIVE_HEADERS and v)
        if json is not None:
            data = jsonlib.dumps(json, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            sent.setdefault("Content-Type", "application/json")
        if idempotent is None:
            idempotent = method in IDEMPOTENT_METHODS
        deadline = _Deadline()
        running = ensureDeferred(self._run(method, url, sent, data, idempotent, tuple(expect), secrets, deadline))

        def expire() -> None:
            deadline.expired = True
            running.cancel()

        timer = self.reactor.callLater(self.timeout, expire)
        try:
            return await running
        except Exception as error:
            if deadline.expired:
                log.warn("{integration}: {where} timed out after {timeout}s", integration=self.integration,
                         where=self._where(method, url), timeout=self.timeout)
                raise UpstreamTimeout(
                    self.integration,
                    f"{self.integration} did not answer {self._where(method, url)} within {self.timeout:g}s",
                ) from None
            if isinstance(error, (IntegrationError, CancelledError)):
                raise
            raise UpstreamError(self.integration, redact(
                f"{self.integration}: {self._where(method, url)} failed: {error}", secrets)) from None
        finally:
            if timer.active():
                timer.cancel()

    async def _run(self, method: str, url: str, headers: dict[str, str], data: bytes | None, idempotent: bool,
                   expect: tuple[int, ...], secrets: list[str], deadline: _Deadline) -> JSONResponse:
        where = redact(f"{method} {urlsplit(url).path or '/'}", secrets)
        attempts = 1 + (self.retries if idempotent else 0)
        started = self.reactor.seconds()
        for attempt in range(attempts):
            try:
                return await self._attempt(method, url, headers, data, expect, secrets, where)
            except _Retry as retry:
                error = retry.error
                delay = self.backoff * (2 ** attempt)
                last = attempt + 1 >= attempts
                fits = self.reactor.seconds() + delay < started + self.timeout
                if last or not fits or deadline.expired:
                    log.warn("{integration}: {where} failed: {error}", integration=self.integration,
                             where=where, error=error.message)
                    raise error from None
                log.info("{integration}: {where} failed ({error}); retry {n} of {of} in {delay}s",
                         integration=self.integration, where=where, error=error.message,
                         n=attempt + 1, of=attempts - 1, delay=delay)
                await deferLater(self.reactor, delay, lambda: None)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(self, method: str, url: str, headers: dict[str, str], data: bytes | None,
                       expect: tuple[int, ...], secrets: list[str], where: str) -> JSONResponse:
        await self._semaphore.acquire()
        self.in_flight += 1
        try:
            try:
                response = await self.http.request(method, url, headers=headers, data=data, unbuffered=True)
                raw = await _read_body(response, MAX_RESPONSE_BODY)
            except _TooLarge:
                raise UpstreamError(self.integration,
                                    f"{self.integration} answered {where} with more than {MAX_RESPONSE_BODY} bytes",
                                    status=None) from None
            except _CONNECTION_ERRORS as error:
                if _cancelled(error):
                    raise CancelledError() from None
                raise _Retry(UpstreamError(
                    self.integration,
                    redact(f"{self.integration} is unreachable ({where}): {_reason(error)}", secrets),
                    status=None)) from None
        finally:
            self.in_flight -= 1
            self._semaphore.release()
        status = int(response.code)
        names = {}
        for name, values in response.headers.getAllRawHeaders():
            key = (name.decode("latin-1") if isinstance(name, bytes) else name).lower()
            names.setdefault(key, []).extend(v.decode("latin-1") if isinstance(v, bytes) else v for v in values)
        text = raw.decode(_charset(names), errors="replace") if raw else ""
        try:
            parsed: Any = jsonlib.loads(text) if text.strip() else None
            is_json = True
        except ValueError as error:
            parsed, is_json = None, False
            json_error = str(error)
        if status not in expect:
            body = _redact_value(parsed if is_json else text, secrets)
            detail = _summary(body)
            error = UpstreamError(
                self.integration,
                redact(f"{self.integration} answered {status} to {where}" + (f": {detail}" if detail else ""),
                       secrets),
                status=status, body=body)
            if status >= 500:
                raise _Retry(error)
            log.warn("{integration}: {where} answered {status}: {detail}", integration=self.integration,
                     where=where, status=status, detail=detail)
            raise error
        if not is_json:
            ctype = (names.get("content-type") or ["none"])[-1]
            raise UpstreamError(
                self.integration,
                redact(f"{self.integration} answered {where} ({status}) with a body that is not JSON "
                       f"(Content-Type {ctype}): {json_error}", secrets),
                status=status, body=_redact_value(_summary(text), secrets))
        return JSONResponse(status=status, headers=names, json=parsed, text=text)

    async def get(self, path: str, **kw: Any) -> JSONResponse:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, **kw: Any) -> JSONResponse:
        return await self.request("POST", path, **kw)

    async def put(self, path: str, **kw: Any) -> JSONResponse:
        return await self.request("PUT", path, **kw)

    async def delete(self, path: str, **kw: Any) -> JSONResponse:
        return await self.request("DELETE", path, **kw)


def _cancelled(error: BaseException) -> bool:
    """True when a connection error only says that we cancelled the request."""
    if isinstance(error, (CancelledError, ConnectingCancelledError)):
        return True
    reasons = getattr(error, "reasons", None)
    return bool(reasons) and all(
        isinstance(r, Failure) and r.check(CancelledError, ConnectingCancelledError) for r in reasons)


def _reason(error: BaseException) -> str:
    """A short reason for a connection error (ResponseFailed wraps a list of failures)."""
    reasons = getattr(error, "reasons", None)
    if reasons:
        return "; ".join(_reason(r.value) if isinstance(r, Failure) else str(r) for r in reasons)
    text = str(error) or type(error).__name__
    return " ".join(text.split())
