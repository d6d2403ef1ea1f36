"""pbx.integrations.http: the JSON client against a real HTTP server on loopback
(and, for exact backoff times, treq's StubTreq on a task.Clock)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock, deferLater
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from pbx.integrations.http import (
    JSONClient,
    JSONResponse,
    NotConfigured,
    UpstreamError,
    UpstreamTimeout,
    redact,
)

Handler = Callable[[Any], Any]


class Recorder(Resource):
    """Answers every request with ``handler(request)``; remembers what came."""

    isLeaf = True

    def __init__(self, handler: Handler) -> None:
        super().__init__()
        self.handler = handler
        self.requests: list[dict[str, Any]] = []
        self.times: list[float] = []
        self.pending: list[Any] = []

    def render(self, request: Any) -> Any:
        self.times.append(time.monotonic())
        self.requests.append({
            "method": request.method.decode(),
            "uri": request.uri.decode(),
            "headers": {k.decode().lower(): [v.decode() for v in vs] for k, vs in request.requestHeaders.getAllRawHeaders()},
            "body": request.content.read(),
        })  # fmt: skip
        result = self.handler(request)
        if result is NOT_DONE_YET:
            self.pending.append(request)
            request.notifyFinish().addBoth(lambda _: self.pending.remove(request) if request in self.pending else None)
        return result


class Server:
    def __init__(self) -> None:
        self.resource = Recorder(lambda request: b"{}")
        self.port: Any = None
        self.url = ""

    def answer(self, handler: Handler) -> Recorder:
        self.resource.handler = handler
        return self.resource

    async def start(self) -> None:
        site = Site(self.resource)
        site.noisy = False
        site.log = lambda request: None  # the server's access log is not the client's
        self.port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        self.url = f"http://127.0.0.1:{self.port.getHost().port}"

    async def stop(self) -> None:
        for request in list(self.resource.pending):
            request.channel.transport.abortConnection()
        await self.port.stopListening()
        await sleep(0.01)


def json_answer(status: int, value: Any, content_type: str = "application/json") -> Handler:
    def handler(request: Any) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", content_type.encode())
        return value if isinstance(value, bytes) else json.dumps(value).encode()

    return handler


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


@pytest_twisted.async_yield_fixture
async def server():
    s = Server()
    await s.start()
    yield s
    await s.stop()


def client(server: Server, **kw: Any) -> JSONClient:
    kw.setdefault("timeout", 2.0)
    kw.setdefault("backoff", 0.02)
    return JSONClient("Demo", server.url + "/api/v1", reactor=reactor, **kw)


async def failure_of(d: Any) -> BaseException:
    try:
        await d
    except Exception as error:
        return error
    raise AssertionError("expected a failure")


# ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_json_is_decoded_and_params_encoded_once(server: Server) -> None:
    recorder = server.answer(json_answer(200, {"total": 1, "list": [{"id": "c1", "name": "Zoë"}]}))
    response = await client(server, headers={"X-Api-Key": "k"}).request(
        "GET", "/Contact",
        params=[("where[0][type]", "in"), ("where[0][value][0]", "+4930 123"), ("where[0][value][1]", "030&1")],
    )  # fmt: skip
    assert isinstance(response, JSONResponse)
    assert response.status == 200
    assert response.json == {"total": 1, "list": [{"id": "c1", "name": "Zoë"}]}
    assert response.headers["content-type"] == ["application/json"]
    sent = recorder.requests[0]
    assert sent["uri"] == ("/api/v1/Contact?where%5B0%5D%5Btype%5D=in&where%5B0%5D%5Bvalue%5D%5B0%5D=%2B4930+123"
                           "&where%5B0%5D%5Bvalue%5D%5B1%5D=030%261")
    assert sent["headers"]["x-api-key"] == ["k"]
    assert sent["headers"]["accept"] == ["application/json"]


@pytest_twisted.ensureDeferred
async def test_a_json_body_is_sent_and_an_empty_answer_is_none(server: Server) -> None:
    def handler(request: Any) -> bytes:
        request.setResponseCode(204)
        return b""

    recorder = server.answer(handler)
    response = await client(server).request("POST", f"{server.url}/other/path", json={"a": [1, "ü"]},
                                            params={"x": "1"})
    assert response.status == 204 and response.json is None and response.text == ""
    sent = recorder.requests[0]
    assert sent["method"] == "POST" and sent["uri"] == "/other/path?x=1"
    assert json.loads(sent["body"]) == {"a": [1, "ü"]}
    assert sent["headers"]["content-type"] == ["application/json"]


@pytest_twisted.ensureDeferred
async def test_a_body_that_is_not_json_is_a_clear_upstream_error(server: Server) -> None:
    server.answer(json_answer(200, b"<html>Login</html>", "text/html"))
    error = await failure_of(client(server).request("GET", "/Contact"))
    assert isinstance(error, UpstreamError)
    assert error.status == 200 and error.integration == "Demo"
    assert "not JSON" in str(error) and "text/html" in str(error) and "GET /api/v1/Contact" in str(error)


@pytest_twisted.ensureDeferred
async def test_4xx_is_never_retried(server: Server) -> None:
    recorder = server.answer(json_answer(404, {"message": "no such thing"}))
    error = await failure_of(client(server, retries=3).request("GET", "/x"))
    assert isinstance(error, UpstreamError)
    assert error.status == 404 and error.body == {"message": "no such thing"}
    assert "404" in str(error) and "no such thing" in str(error)
    assert len(recorder.requests) == 1


@pytest_twisted.ensureDeferred
async def test_a_status_listed_in_expect_is_returned(server: Server) -> None:
    server.answer(json_answer(409, {"errcode": "M_IN_USE"}))
    response = await client(server).request("PUT", "/x", json={}, expect=(200, 409))
    assert response.status == 409 and response.json == {"errcode": "M_IN_USE"}


@pytest_twisted.ensureDeferred
async def test_5xx_is_retried_with_growing_backoff_for_idempotent_requests(server: Server) -> None:
    answers = [json_answer(503, {"error": "busy"}), json_answer(502, b"bad gateway", "text/plain"),
               json_answer(200, {"ok": True})]
    recorder = server.answer(lambda request: answers.pop(0)(request))
    response = await client(server, retries=2, backoff=0.05).request("GET", "/x")
    assert response.json == {"ok": True}
    assert len(recorder.requests) == 3
    first, second = (b - a for a, b in zip(recorder.times, recorder.times[1:]))
    assert first >= 0.05 and second >= 0.1


@pytest_twisted.ensureDeferred
async def test_5xx_gives_up_after_the_retries(server: Server) -> None:
    recorder = server.answer(json_answer(500, {"message": "boom"}))
    error = await failure_of(client(server, retries=2).request("DELETE", "/x"))
    assert isinstance(error, UpstreamError) and error.status == 500 and "boom" in str(error)
    assert len(recorder.requests) == 3


@pytest_twisted.ensureDeferred
async def test_a_post_is_not_retried_unless_declared_idempotent(server: Server) -> None:
    recorder = server.answer(json_answer(500, {}))
    error = await failure_of(client(server).request("POST", "/x", json={}))
    assert isinstance(error, UpstreamError) and error.status == 500
    assert len(recorder.requests) == 1
    error = await failure_of(client(server, retries=1).request("POST", "/x", json={}, idempotent=True))
    assert len(recorder.requests) == 3


def test_backoff_on_an_injected_clock() -> None:
    """With StubTreq and a Clock: tries at t=0, 0.5 and 1.5 (backoff 0.5, 1.0)."""
    calls: list[float] = []
    clock = Clock()
    answers = [503, 500, 200]

    class Flaky(Resource):
        isLeaf = True

        def render(self, request: Any) -> bytes:
            calls.append(clock.seconds())
            request.setResponseCode(answers.pop(0))
            return b'{"n": 1}'

    stub = StubTreq(Flaky())
    http = JSONClient("Demo", "http://example.invalid", reactor=clock, timeout=5.0, retries=2, backoff=0.5,
                      http_client=stub)
    d = ensureDeferred(http.request("GET", "/x"))
    stub.flush()
    assert calls == [0.0] and not d.called
    clock.advance(0.49)
    stub.flush()
    assert calls == [0.0]
    clock.advance(0.01)
    stub.flush()
    assert calls == [0.0, 0.5]
    clock.advance(1.0)
    stub.flush()
    assert calls == [0.0, 0.5, 1.5]
    result: list[Any] = []
    d.addBoth(result.append)
    assert result[0].json == {"n": 1}
    assert not clock.getDelayedCalls(), "the timeout timer is cancelled"


def test_retries_stop_when_the_backoff_would_pass_the_deadline() -> None:
    clock = Clock()
    calls: list[float] = []

    class Down(Resource):
        isLeaf = True

        def render(self, request: Any) -> bytes:
            calls.append(clock.seconds())
            request.setResponseCode(503)
            return b"{}"

    stub = StubTreq(Down())
    http = JSONClient("Demo", "http://example.invalid", reactor=clock, timeout=1.0, retries=5, backoff=0.4,
                      http_client=stub)
    d = ensureDeferred(http.request("GET", "/x"))
    result: list[Any] = []
    d.addBoth(result.append)
    for _ in range(10):
        clock.advance(0.1)
        stub.flush()
    assert calls == [0.0, pytest.approx(0.4)]  # 0.4 + 0.8 > 1.0: no third try
    assert isinstance(result[0].value, UpstreamError) and result[0].value.status == 503


@pytest_twisted.ensureDeferred
async def test_connection_refused_is_retried_then_an_upstream_error() -> None:
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(Resource()))
    number = port.getHost().port
    await port.stopListening()
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        http = JSONClient("Demo", f"http://127.0.0.1:{number}", reactor=reactor, timeout=2.0, retries=2,
                          backoff=0.01)
        error = await failure_of(http.request("GET", "/x"))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert isinstance(error, UpstreamError)
    assert error.status is None and "unreachable" in str(error)
    retries = [e for e in events if "retry {n} of {of}" in str(e.get("log_format", ""))]
    assert [e["n"] for e in retries] == [1, 2]


@pytest_twisted.ensureDeferred
async def test_a_server_that_never_answers_is_a_timeout_within_the_timeout(server: Server) -> None:
    server.answer(lambda request: NOT_DONE_YET)
    started = time.monotonic()
    error = await failure_of(client(server, timeout=0.3).request("GET", "/x"))
    elapsed = time.monotonic() - started
    assert isinstance(error, UpstreamTimeout)
    assert "0.3" in str(error) and "GET /api/v1/x" in str(error)
    assert 0.25 <= elapsed < 1.0


@pytest_twisted.ensureDeferred
async def test_a_body_that_stalls_is_a_timeout_too(server: Server) -> None:
    def handler(request: Any) -> Any:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-length", b"100")
        request.write(b'{"partial": ')
        return NOT_DONE_YET

    server.answer(handler)
    started = time.monotonic()
    error = await failure_of(client(server, timeout=0.3).request("GET", "/x"))
    assert isinstance(error, UpstreamTimeout)
    assert time.monotonic() - started < 1.0


@pytest_twisted.ensureDeferred
async def test_at_most_concurrency_requests_are_in_flight(server: Server) -> None:
    recorder = server.answer(lambda request: NOT_DONE_YET)
    http = client(server, concurrency=2, timeout=5.0)
    calls = [ensureDeferred(http.request("GET", f"/x/{i}")) for i in range(5)]
    seen: list[int] = []
    done = 0
    while done < 5:
        await sleep(0.05)
        seen.append(len(recorder.pending))
        assert len(recorder.pending) <= 2
        if recorder.pending:
            request = recorder.pending[0]
            request.setHeader(b"content-type", b"application/json")
            request.write(b'{"ok": true}')
            request.finish()
            done += 1
    results = [await call for call in calls]
    assert all(r.json == {"ok": True} for r in results)
    assert max(seen) == 2 and len(recorder.requests) == 5
    assert http.in_flight == 0


@pytest_twisted.ensureDeferred
async def test_secrets_never_reach_the_log_or_the_error(server: Server) -> None:
    key, password = "sekrit-api-key-123", "pass-word-xyz-987"

    def handler(request: Any) -> bytes:
        request.setResponseCode(500 if request.method == b"GET" else 401)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"message": f"invalid key {key} / {password}"}).encode()

    server.answer(handler)
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        http = client(server, headers={"X-Api-Key": key}, secrets=[password], retries=1)
        errors = [await failure_of(http.request("GET", f"/login/{password}")),
                  await failure_of(http.request("POST", "/login", json={"password": password},
                                                headers={"Authorization": "Bearer tok-tok-tok-555"}))]
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert events, "failures are logged"
    text = repr(events) + " ".join(formatEvent(e) for e in events)
    text += " ".join(f"{e} {e.body!r}" for e in errors)
    for secret in (key, password, "tok-tok-tok-555"):
        i = text.find(secret)
        assert secret not in text, text[max(0, i - 400): i + 50]
    assert "***" in str(errors[0])
    assert all(isinstance(e, UpstreamError) for e in errors) and errors[1].status == 401


def test_redact_and_error_classes() -> None:
    assert redact("a secret and secret2", ["secret", "secret2", ""]) == "a *** and ***"
    error = NotConfigured("EspoCRM", key="integrations.espocrm.api_key")
    assert str(error) == "EspoCRM integration is enabled but not configured: integrations.espocrm.api_key missing"
    assert error.integration == "EspoCRM" and error.key == "integrations.espocrm.api_key"
    upstream = UpstreamError("Matrix", "boom", status=502, body={"x": 1})
    assert (upstream.status, upstream.body, str(upstream)) == (502, {"x": 1}, "boom")


def test_urls() -> None:
    http = JSONClient("Demo", "http://h:1/api/v1/", reactor=Clock(), http_client=object())
    assert http.url("/Contact") == "http://h:1/api/v1/Contact"
    assert http.url("Contact", {"a": ["1", "2"], "b": "x y"}) == "http://h:1/api/v1/Contact?a=1&a=2&b=x+y"
    assert http.url("https://other/x?k=1", [("a", "&")]) == "https://other/x?k=1&a=%26"
    assert http.url("") == "http://h:1/api/v1/"


@pytest_twisted.ensureDeferred
async def test_a_cancelled_request_is_cancelled_not_a_timeout(server: Server) -> None:
    server.answer(lambda request: NOT_DONE_YET)
    d: Deferred[Any] = ensureDeferred(client(server).request("GET", "/x"))
    await sleep(0.05)
    d.cancel()
    error = await failure_of(d)
    assert not isinstance(error, (UpstreamTimeout, UpstreamError))
