"""What every fake server shares: listening, recording, scripted failures.

A subclass implements ``handle(recorded) -> Reply``.  Before that, a
scripted reply queued with ``fail_next`` / ``hang_next`` is used instead, so
tests can make the next N requests fail or never be answered.  ``stop()``
closes the listening port and drops hung connections; call it at the end of
every test (the fixtures in the test modules do).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from twisted.internet import defer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site


@dataclass
class Recorded:
    """One request as the server saw it."""

    method: str
    path: str                       # the raw path, still percent-encoded
    query: list[tuple[str, str]]    # decoded (key, value) pairs, in order
    headers: dict[str, str]         # lower-case names; the last value of each
    body: Any                       # decoded JSON, else the raw bytes (b"" when none)
    raw_query: str = ""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class Reply:
    status: int
    body: Any = None                # dict/list -> JSON; bytes/str as is; None -> empty
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False              # never answer


class _Root(Resource):
    isLeaf = True

    def __init__(self, fake: FakeServer) -> None:
        super().__init__()
        self.fake = fake

    def render(self, request: Any) -> Any:
        return self.fake._render(request)


class FakeServer:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._script: list[Reply] = []
        self._hung: list[Any] = []
        self.port: Any = None

    # -- lifecycle -----------------------------------------------------------

    def start(self, reactor: Any) -> str:
        """Listen on 127.0.0.1, any free port; the base URL (no slash at the end)."""
        site = Site(_Root(self))
        site.displayTracebacks = False
        self.port = reactor.listenTCP(0, site, interface="127.0.0.1")
        return f"http://127.0.0.1:{self.port.getHost().port}"

    async def stop(self) -> None:
        for request in self._hung:
            transport = getattr(request, "channel", None) and request.channel.transport
            if transport is not None:
                transport.abortConnection()
        self._hung.clear()
        if self.port is not None:
            await defer.maybeDeferred(self.port.stopListening)
            self.port = None

    # -- scripting -----------------------------------------------------------

    def fail_next(self, status: int, body: Any = None, headers: dict[str, str] | None = None,
                  count: int = 1) -> None:
        """Answer the next ``count`` requests with ``status`` instead."""
        self._script.extend(Reply(status, body, dict(headers or {})) for _ in range(count))

    def hang_next(self, count: int = 1) -> None:
        """Accept the next ``count`` requests and never answer them."""
        self._script.extend(Reply(0, hang=True) for _ in range(count))

    # -- serving -------------------------------------------------------------

    def handle(self, recorded: Recorded) -> Reply:  # pragma: no cover - abstract
        raise NotImplementedError

    def _render(self, request: Any) -> Any:
        raw = request.content.read() if request.content is not None else b""
        content_type = (request.getHeader(b"content-type") or b"").decode("latin-1")
        body: Any = raw
        if raw and "json" in content_type:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw
        uri = request.uri.decode("latin-1")
        parts = urlsplit(uri)
        recorded = Recorded(
            method=request.method.decode("ascii"),
            path=parts.path,
            query=parse_qsl(parts.query, keep_blank_values=True),
            headers={name.decode("latin-1").lower(): values[-1].decode("latin-1")
                     for name, values in request.requestHeaders.getAllRawHeaders()},
            body=body,
            raw_query=parts.query,
        )
        self.requests.append(recorded)
        reply = self._script.pop(0) if self._script else self.handle(recorded)
        if reply.hang:
            self._hung.append(request)
            return NOT_DONE_YET
        request.setResponseCode(reply.status)
        for name, value in reply.headers.items():
            request.setHeader(name, value)
        if reply.body is None:
            return b""
        if isinstance(reply.body, (dict, list)):
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(reply.body).encode("utf-8")
        return reply.body.encode("utf-8") if isinstance(reply.body, str) else reply.body
