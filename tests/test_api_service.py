"""make_api_service: when the API may start, and serving from its own endpoint."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.logger import globalLogPublisher
from twisted.web.client import Agent, HTTPConnectionPool

from pbx.api import APIStartupError, make_api_service
from pbx.api.service import check_api_config, endpoint_description
from pbx.config import parse_config
from pbx.service import PBXService


def pbx_with(api: str, tmp_path: Path) -> PBXService:
    text = f'api: {api}\ndatabase: {{path: "{tmp_path / "pbx.db"}"}}\n'
    return PBXService(parse_config(text, environ={}), reactor)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::"])
def test_no_token_refuses_a_non_loopback_address(tmp_path: Path, host: str) -> None:
    # PBXService builds its API service, so building the PBX already refuses.
    with pytest.raises(APIStartupError) as raised:
        pbx_with(f'{{host: "{host}", tokens: []}}', tmp_path)
    message = str(raised.value)
    assert "\n" not in message and message.startswith("api.tokens:") and host in message


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1"])
def test_no_token_is_allowed_on_loopback(tmp_path: Path, host: str) -> None:
    pbx = pbx_with(f'{{host: "{host}", tokens: []}}', tmp_path)
    service = make_api_service(pbx, reactor)
    assert service.name == "api" and service.open_access


def test_with_a_token_any_address_is_allowed(tmp_path: Path) -> None:
    pbx = pbx_with('{host: "0.0.0.0", tokens: ["a-long-enough-token"]}', tmp_path)
    check_api_config(pbx.config.api)
    assert not make_api_service(pbx, reactor).open_access


def test_endpoint_description_escapes_ipv6() -> None:
    assert endpoint_description("127.0.0.1", 8080) == "tcp:port=8080:interface=127.0.0.1"
    assert endpoint_description("::1", 8080) == "tcp:port=8080:interface=\\:\\:1"


@pytest_twisted.ensureDeferred
async def test_service_serves_on_its_endpoint_and_warns_without_tokens(tmp_path: Path) -> None:
    port = free_port()
    pbx = pbx_with(f'{{host: "127.0.0.1", port: {port}, tokens: []}}', tmp_path)
    await ensureDeferred(pbx._load())
    service = make_api_service(pbx, reactor)
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        service.privilegedStartService()
        service.startService()
        http = treq.client.HTTPClient(Agent(reactor, pool=pool))
        response = await http.get(f"http://127.0.0.1:{port}/api/status")
        assert response.code == 200
        assert json.loads(await response.content())["ready"] is True
        response = await http.get(f"http://127.0.0.1:{port}/api/health")
        assert header_value(response, b"server") != "", "a Server header is still sent"
    finally:
        globalLogPublisher.removeObserver(events.append)
        await service.stopService()
        pbx.transactions.stop()
        pbx.db.close()
    assert any(e.get("log_level").name == "warn" and "without a token" in e.get("log_format", "") for e in events)


def header_value(response, name: bytes) -> str:
    values = response.headers.getRawHeaders(name)
    return values[0].decode() if values else ""


def test_a_taken_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        pbx = pbx_with(f'{{host: "127.0.0.1", port: {port}, tokens: ["a-long-enough-token"]}}', tmp_path)
        service = make_api_service(pbx, reactor)
        with pytest.raises(APIStartupError) as raised:
            service.privilegedStartService()
    message = str(raised.value)
    assert message.startswith(f"api.port: cannot listen on 127.0.0.1:{port}") and "\n" not in message
