"""The port plan: every socket the PBX opens and every local service it calls.

Pure: it reads a ``Config`` and binds nothing.  A PBX shares its host with
other self-hosted services (Synapse, EspoCRM, Jitsi) and a port clash shows
up as a confusing ``Address already in use`` or, worse, as the PBX calling
itself over HTTP.  Checking the plan first turns that into one line naming
both config keys.  ``python -m pbx ports`` prints it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from pbx.config import Config

__all__ = [
    "Listener",
    "LocalService",
    "PortPlan",
    "build_port_plan",
    "find_conflicts",
    "format_port_plan",
]

_WILDCARDS = ("0.0.0.0", "::")
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class Listener:
    """A socket this process binds: one port, or a range (``port``-``port_end``)."""

    role: str
    protocol: str
    host: str
    port: int
    port_end: int
    keys: str

    @property
    def address(self) -> str:
        ports = str(self.port) if self.port == self.port_end else f"{self.port}-{self.port_end}"
        return f"{_host(self.host)}:{ports}/{self.protocol}"


@dataclass(frozen=True)
class LocalService:
    """An HTTP service on this machine that an integration calls."""

    key: str
    integration: str
    url: str
    host: str
    port: int
    enabled: bool
    protocol: str = "tcp"

    @property
    def address(self) -> str:
        return f"{_host(self.host)}:{self.port}/{self.protocol}"


@dataclass(frozen=True)
class PortPlan:
    """What one configuration opens and calls, in a stable order."""

    listeners: tuple[Listener, ...]
    services: tuple[LocalService, ...]


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _is_wildcard(host: str) -> bool:
    return host in _WILDCARDS


def _same_ip(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a.lower() == b.lower()


def _binds_overlap(a: str, b: str) -> bool:
    """Would two binds on the same port clash?  A wildcard clashes with all."""
    return _is_wildcard(a) or _is_wildcard(b) or _same_ip(a, b)


def _reaches(listener_host: str, service_host: str) -> bool:
    """Does a connection to service_host land on a socket bound to listener_host?"""
    if _is_wildcard(listener_host):
        return True
    if service_host == "localhost":
        return listener_host in _LOOPBACK_NAMES
    return _same_ip(listener_host, service_host)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _same_server(a: str, b: str) -> bool:
    """localhost, 127.0.0.1 and ::1 are taken to be the same server."""
    if a in _LOOPBACK_NAMES and b in _LOOPBACK_NAMES:
        return True
    return _same_ip(a, b)


def _integration_urls(config: Config) -> list[tuple[str, str, str, bool]]:
    i = config.integrations
    return [
        ("integrations.jitsi.server_url", "jitsi", i.jitsi.server_url, i.jitsi.enabled),
        ("integrations.matrix.homeserver_url", "matrix", i.matrix.homeserver_url, i.matrix.enabled),
        ("integrations.espocrm.api_url", "espocrm", i.espocrm.api_url, i.espocrm.enabled),
        ("integrations.zoom.api_base_url", "zoom", i.zoom.api_base_url, i.zoom.enabled),
        ("integrations.zoom.oauth_url", "zoom", i.zoom.oauth_url, i.zoom.enabled),
    ]


def build_port_plan(config: Config) -> PortPlan:
    """List what the process binds and which configured URLs are local."""
    server, api = config.server, config.api
    listeners = [
        Listener("sip", "udp", server.sip_host, server.sip_port, server.sip_port,
                 "server.sip_host, server.sip_port"),
    ]
    if server.sip_tcp:
        listeners.append(Listener("sip", "tcp", server.sip_host, server.sip_port, server.sip_port,
                                  "server.sip_host, server.sip_port, server.sip_tcp"))
    listeners.append(Listener("rtp", "udp", server.sip_host, server.rtp_port_range_start,
                              server.rtp_port_range_end,
                              "server.rtp_port_range_start, server.rtp_port_range_end"))
    listeners.append(Listener("api", "tcp", api.host, api.port, api.port, "api.host, api.port"))

    own = {h for h in (server.external_ip, server.sip_host, api.host)
           if h is not None and not _is_wildcard(h)}
    services = []
    for key, name, url, enabled in _integration_urls(config):
        parts = urlsplit(url)
        host = (parts.hostname or "").rstrip(".")
        if not (_is_loopback(host) or any(_same_ip(host, h) for h in own)):
            continue
        port = parts.port or (443 if parts.scheme == "https" else 80)
        services.append(LocalService(key, name, url, host, port, enabled))
    return PortPlan(tuple(listeners), tuple(services))


def find_conflicts(plan: PortPlan) -> list[str]:
    """Every clash in the plan, one line each, naming both sides."""
    conflicts = []
    listeners = plan.listeners
    for i, first in enumerate(listeners):
        for second in listeners[i + 1:]:
            if (first.protocol == second.protocol
                    and first.port <= second.port_end and second.port <= first.port_end
                    and _binds_overlap(first.host, second.host)):
                conflicts.append(f"{second.role} ({second.address}) collides with "
                                 f"{first.role} ({first.address})")
    enabled = [s for s in plan.services if s.enabled]
    for service in enabled:
        for listener in listeners:
            if (listener.protocol == service.protocol
                    and listener.port <= service.port <= listener.port_end
                    and _reaches(listener.host, service.host)):
                conflicts.append(f"{service.key} ({service.address}) collides with "
                                 f"{listener.role} ({listener.address})")
    for i, first in enumerate(enabled):
        for second in enabled[i + 1:]:
            if (first.integration != second.integration and first.port == second.port
                    and _same_server(first.host, second.host)):
                conflicts.append(f"{second.key} ({second.address}) collides with "
                                 f"{first.key} ({first.address})")
    return conflicts


def format_port_plan(plan: PortPlan) -> str:
    """An aligned text table: role, proto, address, port(s), note."""
    rows = [("ROLE", "PROTO", "ADDRESS", "PORT(S)", "NOTE")]
    for listener in plan.listeners:
        ports = (str(listener.port) if listener.port == listener.port_end
                 else f"{listener.port}-{listener.port_end}")
        rows.append((listener.role, listener.protocol, listener.host, ports,
                     f"listen; set by {listener.keys}"))
    for service in plan.services:
        state = "enabled" if service.enabled else "disabled, not checked"
        rows.append((service.key, service.protocol, service.host, str(service.port),
                     f"calls local service ({state})"))
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths)]
        lines.append("  ".join([*cells, row[4]]).rstrip())
    return "\n".join(lines)
