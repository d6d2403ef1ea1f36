"""The REST API as a Twisted service, in the PBX's own reactor.

`make_api_service` refuses, with one line, to serve an API without tokens
anywhere but on a loopback address; `make_site` builds the Site alone, for
tests that listen on a port of their own.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Service
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from pbx.api.app import ApiRoot
from pbx.api.errors import APIStartupError
from pbx.api.http import MAX_BODY, ApiSite, is_loopback

__all__ = ["APIService", "check_api_config", "endpoint_description", "make_api_service", "make_site"]

log = Logger(namespace="pbx.api")


def check_api_config(api: Any) -> None:
    """Raise APIStartupError unless the API may start: tokens, or a loopback address."""
    if not api.tokens and not is_loopback(api.host):
        raise APIStartupError(
            f"api.tokens: no token configured, so the REST API may only listen on a loopback address, "
            f"not {api.host} (add api.tokens or set api.host: 127.0.0.1)"
        )


def endpoint_description(host: str, port: int) -> str:
    """A server endpoint string; an IPv6 address has its colons escaped."""
    return f"tcp:port={port}:interface={host.replace(':', chr(92) + ':')}"


def make_site(pbx: Any, clock: Any, *, max_body: int = MAX_BODY) -> ApiSite:
    """The API's Site: Klein root, tracebacks off, bounded bodies, CORS from api.cors_origins."""
    root = ApiRoot(pbx, clock)
    site = ApiSite(
        root.resource(), max_body=max_body, cors_origins=pbx.config.api.cors_origins,
        on_request=root.metrics.count_request,
    )  # fmt: skip
    site.api = root  # type: ignore[attr-defined]
    return site


class APIService(StreamServerEndpointService):
    """Listens in privilegedStartService; a taken port is one line, not a traceback."""

    def __init__(self, endpoint: Any, site: ApiSite, host: str, port: int, open_access: bool) -> None:
        super().__init__(endpoint, site)
        self._raiseSynchronously = True
        self.host = host
        self.port = port
        self.open_access = open_access

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as error:
            raise APIStartupError(
                f"api.port: cannot listen on {self.host}:{self.port}: {error.socketError}"
            ) from None

    def startService(self) -> None:
        super().startService()
        if self.open_access:
            log.warn(
                "api.tokens is empty: the REST API on {host}:{port} accepts requests without a token "
                "(allowed because it listens on a loopback address only)",
                host=self.host, port=self.port,
            )  # fmt: skip
        log.info("REST API listening on {host}:{port}", host=self.host, port=self.port)


def make_api_service(pbx: Any, reactor: Any) -> Service:
    """The REST API of ``pbx`` on api.host:api.port; raises APIStartupError when
    there is no token and the address is not loopback."""
    api = pbx.config.api
    check_api_config(api)
    site = make_site(pbx, reactor)
    endpoint = serverFromString(reactor, endpoint_description(api.host, api.port))
    service = APIService(endpoint, site, api.host, api.port, open_access=not api.tokens)
    service.setName("api")
    return service
