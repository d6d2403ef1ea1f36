"""The root of the REST API: system routes, and the route groups mounted below it.

`ApiRoot` owns one instance of every route group, all sharing one
`ApiContext`; nothing is global, so several PBXs (tests) can each serve
their own API in one process.  A group is mounted with ``branch=True``: the
root checks the token, then hands the rest of the path to the group's own
Klein app.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from klein import Klein

from pbx.api.calls import CallRoutes
from pbx.api.context import ApiContext
from pbx.api.errors import ServiceUnavailable, install_error_handlers
from pbx.api.extensions import ExtensionRoutes
from pbx.api.http import TokenGuard, endpoint, json_response
from pbx.api.integrations import IntegrationRoutes
from pbx.api.metrics import CONTENT_TYPE, ApiMetrics
from pbx.api.openapi import build_document
from pbx.api.records import CDRRoutes, RegistrationRoutes
from pbx.api.voicemail import VoicemailRoutes, mount_endpoint
from pbx.ports import build_port_plan, find_conflicts

__all__ = ["ApiRoot", "klein_routes"]


def _mount(request: Any, resource: Any) -> Any:
    """Hand the rest of the path to a group; the group's own URL becomes its "/"."""
    if not request.postpath:
        request.postpath = [b""]
    return resource


class ApiRoot:
    """/api/health, /api/status, /api/ports, /api/openapi.json, /metrics, and the groups."""

    app = Klein()
    install_error_handlers(app)

    def __init__(self, pbx: Any, clock: Any, tokens: Any = None) -> None:
        tokens = pbx.config.api.tokens if tokens is None else tokens
        self.guard = TokenGuard(tokens)
        self.context = ApiContext(pbx=pbx, clock=clock, guard=self.guard, started=clock.seconds())
        self.pbx = pbx
        self.metrics = ApiMetrics(pbx)
        self.groups: dict[str, Any] = {
            "/api/extensions": ExtensionRoutes(self.context),
            "/api/registrations": RegistrationRoutes(self.context),
            "/api/calls": CallRoutes(self.context),
            "/api/cdr": CDRRoutes(self.context),
            "/api/voicemail": VoicemailRoutes(self.context),
            "/api/integrations": IntegrationRoutes(self.context),
        }
        self._resources = {prefix: group.app.resource() for prefix, group in self.groups.items()}
        self._document = json.dumps(build_document(self.context.version)).encode("utf-8")

    def resource(self) -> Any:
        """The IResource to serve."""
        return self.app.resource()

    # -- system ---------------------------------------------------------------

    @app.route("/api/health", methods=["GET"])
    @endpoint("/api/health", public=True)
    def health(self, request: Any) -> bytes:
        ready = bool(getattr(self.pbx.core, "ready", True))
        return json_response(request, {
            "status": "ok" if ready else "starting",
            "version": self.context.version,
            "uptime": self.context.uptime(),
        })  # fmt: skip

    @app.route("/api/status", methods=["GET"])
    @endpoint("/api/status")
    def status(self, request: Any) -> bytes:
        pbx = self.pbx
        location = pbx.location
        calls = list(pbx.b2bua.calls.values())
        registered = sum(1 for aor in location.aors() if location.lookup(aor))
        return json_response(request, {
            "version": self.context.version,
            "uptime": self.context.uptime(),
            "ready": bool(getattr(pbx.core, "ready", True)),
            "extensions": {"total": len(pbx.directory), "registered": registered},
            "registrations": len(location),
            "calls": {
                "active": len(calls),
                "ringing": sum(1 for c in calls if c.state == "ringing"),
                "answered": sum(1 for c in calls if c.state == "answered"),
            },
            "totals": dict(sorted(pbx.b2bua.totals.items())),
            "media": pbx.relay.totals(),
            "sip": dict(pbx.core.stats),
        })  # fmt: skip

    @app.route("/api/ports", methods=["GET"])
    @endpoint("/api/ports")
    def ports(self, request: Any) -> bytes:
        plan = build_port_plan(self.pbx.config)

        def view(item: Any) -> dict[str, Any]:
            return {**dataclasses.asdict(item), "address": item.address}

        return json_response(request, {
            "listeners": [view(listener) for listener in plan.listeners],
            "services": [view(service) for service in plan.services],
            "conflicts": find_conflicts(plan),
        })  # fmt: skip

    @app.route("/api/openapi.json", methods=["GET"])
    @endpoint("/api/openapi.json")
    def openapi(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return self._document

    @app.route("/metrics", methods=["GET"])
    @endpoint("/metrics")
    def prometheus(self, request: Any) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE.encode("ascii"))
        return self.metrics.render()

    # -- groups ---------------------------------------------------------------

    def _group(self, request: Any, prefix: str) -> Any:
        """Mount a group, once the PBX has loaded its data (until then its
        tables and directory are not complete: 503 with Retry-After)."""
        if not getattr(self.pbx.core, "ready", True):
            raise ServiceUnavailable("the PBX is starting", headers={"Retry-After": "1"})
        return _mount(request, self._resources[prefix])

    @app.route("/api/extensions", branch=True)
    @endpoint(None)
    def extensions(self, request: Any) -> Any:
        return self._group(request, "/api/extensions")

    @app.route("/api/registrations", branch=True)
    @endpoint(None)
    def registrations(self, request: Any) -> Any:
        return self._group(request, "/api/registrations")

    @app.route("/api/calls", branch=True)
    @endpoint(None)
    def calls(self, request: Any) -> Any:
        return self._group(request, "/api/calls")

    @app.route("/api/cdr", branch=True)
    @endpoint(None)
    def cdr(self, request: Any) -> Any:
        return self._group(request, "/api/cdr")

    @app.route("/api/voicemail", branch=True)
    @mount_endpoint  # endpoint(None), but a greeting's body is a WAV file
    def voicemail(self, request: Any) -> Any:
        return self._group(request, "/api/voicemail")

    @app.route("/api/integrations", branch=True)
    @endpoint(None)
    def integrations(self, request: Any) -> Any:
        return self._group(request, "/api/integrations")


def klein_routes(root: ApiRoot) -> set[tuple[str, str]]:
    """Every (method, path) the Klein apps route, paths in OpenAPI form.

    Read from the werkzeug maps themselves (not from the OpenAPI table), so a
    test can hold the two against each other.  HEAD (added by werkzeug for
    every GET) and the branch rules that mount the groups are left out.
    """
    def rules(app: Klein, prefix: str) -> set[tuple[str, str]]:
        found = set()
        for rule in app.url_map.iter_rules():
            if "__rest__" in rule.rule:
                continue
            path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", prefix + rule.rule)
            if path != "/":
                path = path.rstrip("/")
            for method in rule.methods or ():
                if method != "HEAD":
                    found.add((method, path))
        return found

    routes: set[tuple[str, str]] = set()
    mounted = set(root.groups)
    for method, path in rules(ApiRoot.app, ""):
        if path not in mounted:
            routes.add((method, path))
    for prefix, group in root.groups.items():
        routes |= rules(type(group).app, prefix)
    return routes
