"""The integrations as one Twisted service: clients, outbox and event dispatch.

`make_integrations(pbx, reactor)` builds, for every enabled integration of
``integrations.*``, its client over a `JSONClient` (base URL from its
section, ``integrations.timeout``, secrets kept out of the logs).  An
enabled integration that lacks a key it needs is not built: start-up logs
one line naming the key, and its API routes answer 503 with the same text
(``Integrations.unavailable``).  ``Integrations.jitsi`` / ``.matrix`` /
``.espocrm`` / ``.zoom`` are the clients, None when disabled or unusable.

The service owns the `Outbox` (its TimerService delivers every second) and
the `Dispatch` (subscriptions to ``pbx.events``), started and stopped with
the PBX.  The client modules are imported lazily: a missing one disables
its integration with a log line rather than stopping the PBX.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from pbx.integrations.dispatch import Dispatch
from pbx.integrations.http import IntegrationError, JSONClient, NotConfigured
from pbx.integrations.outbox import Outbox

__all__ = ["DISPLAY_NAMES", "Integrations", "make_integrations", "missing_keys"]

DISPLAY_NAMES = {"jitsi": "Jitsi", "matrix": "Matrix", "espocrm": "EspoCRM", "zoom": "Zoom"}


def missing_keys(name: str, section: Any) -> list[str]:
    """Dotted keys an enabled integration needs and lacks (empty: usable)."""
    prefix = f"integrations.{name}."
    if name == "jitsi":
        # Tokens need both; neither is fine (public meet.jit.si).
        if bool(section.app_id) != bool(section.app_secret):
            return [prefix + ("app_secret" if section.app_id else "app_id")]
        return []
    if name == "matrix":
        if section.access_token:
            return []
        return [prefix + key for key in ("bot_username", "bot_password") if not getattr(section, key)]
    if name == "espocrm":
        return [] if section.api_key else [prefix + "api_key"]
    if name == "zoom":
        return [prefix + key for key in ("account_id", "client_id", "client_secret") if not getattr(section, key)]
    return []


def not_configured_message(name: str, keys: list[str]) -> str:
    display = DISPLAY_NAMES[name]
    text = f"{display} integration is enabled but not configured: {', '.join(keys)} missing"
    if name == "matrix":
        text += " (or set integrations.matrix.access_token)"
    return text


class Integrations(MultiService):
    """The clients of the enabled integrations, the outbox and the dispatch."""

    log = Logger()

    def __init__(self, pbx: Any, reactor: Any, *, http_client: Any = None) -> None:
        super().__init__()
        self.setName("integrations")
        self.pbx = pbx
        self.reactor = reactor
        self.config = pbx.config.integrations
        self.http_client = http_client
        self.jitsi: Any = None
        self.matrix: Any = None
        self.espocrm: Any = None
        self.zoom: Any = None
        #: name -> why an enabled integration cannot be used (its routes answer 503 with it)
        self.unavailable: dict[str, IntegrationError] = {}
        for name in DISPLAY_NAMES:
            section = getattr(self.config, name)
            if section.enabled:
                self._build(name, section)
        self.outbox = Outbox(pbx.db, reactor)
        self.outbox.timer_service(1.0).setServiceParent(self)
        self.dispatch = Dispatch(pbx, self, self.outbox, reactor)

    # -- construction -------------------------------------------------------------

    def json_client(self, integration: str, base_url: str, *, headers: dict[str, str] | None = None,
                    secrets: Any = (), **options: Any) -> JSONClient:
        """A JSONClient for ``integration`` with the configured timeout."""
        return JSONClient(integration, base_url, reactor=self.reactor, timeout=self.config.timeout,
                          headers=headers, http_client=self.http_client,
                          secrets=[s for s in secrets if s], **options)

    def _build(self, name: str, section: Any) -> None:
        display = DISPLAY_NAMES[name]
        keys = missing_keys(name, section)
        if keys:
            self.unavailable[name] = NotConfigured(display, not_configured_message(name, keys), key=keys[0])
            return
        try:
            module = importlib.import_module(f"pbx.integrations.{name}")
        except ImportError as error:
            self.unavailable[name] = NotConfigured(
                display, f"{display} integration is enabled but not available: "
                         f"pbx.integrations.{name} cannot be imported ({error})")
            return
        builder: Callable[[Any, Any], Any] = getattr(self, f"_build_{name}")
        try:
            client = builder(module, section)
        except NotConfigured as error:
            message = error.message
            if not message.startswith(f"{display} integration"):
                message = f"{display} integration is enabled but not configured: {message}"
            self.unavailable[name] = NotConfigured(display, message, key=error.key)
            return
        except Exception as error:  # a broken client must not stop the PBX
            self.log.failure("{name} integration could not be set up", name=display)
            self.unavailable[name] = NotConfigured(
                display, f"{display} integration is enabled but could not be set up: {type(error).__name__}")
            return
        setattr(self, name, client)

    def _build_jitsi(self, module: Any, section: Any) -> Any:
        return module.JitsiClient(section, self.reactor)

    def _build_matrix(self, module: Any, section: Any) -> Any:
        client = self.json_client("Matrix", section.homeserver_url,
                                  secrets=[section.bot_password, section.access_token])
        return module.MatrixClient(section, client, self.reactor)

    def _build_espocrm(self, module: Any, section: Any) -> Any:
        client = self.json_client("EspoCRM", section.api_url, secrets=[section.api_key])
        return module.EspoCRMClient(section, client, clock=self.reactor)

    def _build_zoom(self, module: Any, section: Any) -> Any:
        secrets = [section.client_secret]

        def factory(base_url: str | None = None, **options: Any) -> JSONClient:
            """A JSONClient for Zoom (``base_url``: api_base_url by default, or oauth_url)."""
            extra = list(options.pop("secrets", ()))
            return self.json_client(options.pop("integration", "Zoom"), base_url or section.api_base_url,
                                    secrets=secrets + extra, **options)

        return module.ZoomClient(section, factory, self.reactor)

    # -- use ------------------------------------------------------------------

    def client(self, name: str) -> Any:
        """The client of ``name``; raises NotConfigured when enabled but unusable;
        None when disabled."""
        problem = self.unavailable.get(name)
        if problem is not None:
            raise problem
        return getattr(self, name)

    def enabled(self) -> list[str]:
        return [name for name in DISPLAY_NAMES if getattr(self, name) is not None]

    # -- service --------------------------------------------------------------

    def startService(self) -> None:
        for name, problem in self.unavailable.items():
            self.log.error("{message}", message=problem.message)
        enabled = self.enabled()
        if enabled:
            self.log.info("integrations enabled: {names}", names=", ".join(DISPLAY_NAMES[n] for n in enabled))
        matrix = self.config.matrix
        if self.matrix is not None and matrix.missed_call_notifications and not matrix.notification_room:
            self.log.warn("integrations.matrix.notification_room is not set: no missed-call notices")
        super().startService()
        self.dispatch.start()

    def stopService(self) -> Deferred[None] | None:
        self.dispatch.stop()
        self.outbox.stop()
        return super().stopService()


def make_integrations(pbx: Any, reactor: Any, *, http_client: Any = None) -> Integrations:
    """The integrations service of ``pbx`` (a PBXService: config, db, events, b2bua, directory)."""
    return Integrations(pbx, reactor, http_client=http_client)
