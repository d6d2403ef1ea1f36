"""The PBX as Twisted services: one MultiService per process.

`makeService` (pbx/tap.py) only composes; sockets are bound in
`privilegedStartService` so a taken port fails start-up at once, and the
database is opened and loaded asynchronously in `startService`. Until that
load finishes the SIP core answers 503 with Retry-After.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from pbx.api import APIStartupError, make_api_service
from pbx.apps.mailbox import VoicemailStore
from pbx.apps.mwi import MessageWaiting
from pbx.apps.prompts import Prompts
from pbx.apps.router import Applications
from pbx.config import Config
from pbx.core.b2bua import B2BUA
from pbx.core.dialplan import DialPlan
from pbx.core.events import EventBus
from pbx.core.location import LocationService
from pbx.core.registrar import ExtensionDirectory, Registrar
from pbx.integrations.service import make_integrations
from pbx.sip.core import SIPCore
from pbx.sip.digest import DigestAuthenticator, NonceManager
from pbx.sip.transaction import TimerSettings, TransactionLayer
from pbx.sip.transport import SIPDatagramProtocol, SIPStreamFactory
from pbx.media.endpoint import MediaEndpoint
from pbx.media.portpool import PortPool
from pbx.media.relay import MediaRelay
from pbx.store.bindings import BindingRepository
from pbx.store.cdr import CDRRepository
from pbx.store.db import Database
from pbx.store.extensions import ExtensionRepository, make_record
from pbx.store.voicemail import VoicemailRepository

BINDING_FLUSH_INTERVAL = 1.0
BINDING_EXPIRY_INTERVAL = 5.0
#: Call records are committed in groups, at most this long after the event (seconds).
CDR_BATCH_DELAY = 0.05
#: Net allocations between two passes of the cyclic collector's youngest generation.
GC_YOUNG_THRESHOLD = 10_000


class StartupError(Exception):
    """A problem that stops the PBX from starting, told in one line."""


class SIPService(Service):
    """SIP over UDP and TCP on server.sip_host:server.sip_port."""

    log = Logger()

    def __init__(self, reactor: Any, core: SIPCore, host: str, port: int, tcp: bool, max_size: int) -> None:
        self.reactor = reactor
        self.core = core
        self.host = host
        self.port = port
        self.tcp = tcp
        self.max_size = max_size
        self.listeners: list[Any] = []

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        interface = "" if self.host == "0.0.0.0" else self.host
        try:
            self.listeners.append(self.reactor.listenUDP(self.port, SIPDatagramProtocol(self.core, self.reactor), interface=interface, maxPacketSize=65535))
            if self.tcp:
                self.listeners.append(
                    self.reactor.listenTCP(self.port, SIPStreamFactory(self.core, self.max_size), interface=interface)
                )
        except CannotListenError as error:
            for listener in self.listeners:
                listener.stopListening()
            self.listeners = []
            raise StartupError(f"server.sip_port: cannot listen on {self.host}:{self.port}: {error.socketError}") from None
        self.log.info("SIP listening on {host}:{port} (udp{tcp})", host=self.host, port=self.port, tcp="+tcp" if self.tcp else "")

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        listeners, self.listeners = self.listeners, []
        return DeferredList([maybeDeferred(listener.stopListening) for listener in listeners])


class PBXService(MultiService):
    """Owns the shared state and orders start-up and shut-down."""

    log = Logger()

    def __init__(self, config: Config, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.events = EventBus()
        self.db = Database(config.database.path)
        self.extension_repo = ExtensionRepository(self.db, reactor)
        self.binding_repo = BindingRepository(self.db)
        self.directory = ExtensionDirectory()
        self.location = LocationService(reactor)
        timers = TimerSettings(t1=config.sip.timer_t1, t2=config.sip.timer_t2, t4=config.sip.timer_t4)
        self.transactions = TransactionLayer(reactor, timers)
        self.core = SIPCore(self.transactions, config.server.server_name, config.sip.force_rport)
        self.core.ready = False
        self.nonces = NonceManager(reactor, os.urandom(32), ttl=config.auth.nonce_ttl)
        self.authenticator = DigestAuthenticator(self.nonces, config.auth.realm, config.auth.algorithms)
        self.registrar = Registrar(
            self.core, self.authenticator, self.directory, self.location, self.events, reactor,
            min_expires=config.registrar.min_expires,
            max_expires=config.registrar.max_expires,
            default_expires=config.registrar.default_expires,
        )  # fmt: skip
        self.core.register_handler("REGISTER", self.registrar)
        server = config.server
        self.port_pool = PortPool(server.rtp_port_range_start, server.rtp_port_range_end)
        media_host = "" if server.sip_host == "0.0.0.0" else server.sip_host
        advertised = server.external_ip or (server.sip_host if media_host else "127.0.0.1")
        self.relay = MediaRelay(reactor, media_host, self.port_pool, advertised)
        self.cdr = CDRRepository(self.db, reactor, batch_delay=CDR_BATCH_DELAY)
        self.dialplan = DialPlan.from_config(config, self.directory.__contains__)
        features = config.features
        voicemail = config.voicemail
        self.voicemail = VoicemailStore(
            VoicemailRepository(self.db), voicemail.storage_path, reactor, self.events,
            min_duration=voicemail.min_message_duration,
        )  # fmt: skip
        self.applications = Applications(
            config, self.voicemail, self.directory.get, Prompts(voicemail.prompts_directory),
            is_reachable=self._reachable,
        )  # fmt: skip
        self.b2bua = B2BUA(
            self.core, self.authenticator, self.location, self.dialplan, self.relay, self.cdr, self.events, reactor,
            sip_host=server.sip_host,
            sip_port=server.sip_port,
            external_ip=server.external_ip,
            no_answer_timeout=features.no_answer_timeout,
            max_call_duration=features.max_call_duration,
            rtp_timeout=features.rtp_timeout,
            max_calls_per_extension=features.max_calls_per_extension,
            allow_unauthenticated=self.dialplan.allows_unauthenticated,
            lookup_ha1=self.registrar.lookup_ha1,
            t1=config.sip.timer_t1,
            t2=config.sip.timer_t2,
            applications=self.applications,
            endpoints=lambda advertised: MediaEndpoint(reactor, self.port_pool, media_host, advertised),
            voicemail_timeout=voicemail.no_answer_timeout,
        )  # fmt: skip
        self.mwi = MessageWaiting(
            self.core, self.registrar.gate, self.location, self.voicemail.counts, self.events, reactor,
            sip_port=server.sip_port, advertised_host=self.b2bua.advertised_host,
            is_mailbox=self.applications.voicemail_enabled,
        )  # fmt: skip
        self.core.register_handler("SUBSCRIBE", self.mwi.subscribe_received)
        self.core.dialog_handler = self._in_dialog
        self.sip = SIPService(
            reactor, self.core, config.server.sip_host, config.server.sip_port,
            config.server.sip_tcp, config.sip.max_message_size,
        )  # fmt: skip
        self.sip.setServiceParent(self)
        for interval, call in (
            (BINDING_FLUSH_INTERVAL, self.flush_bindings),
            (BINDING_EXPIRY_INTERVAL, self.expire_bindings),
            (max(1.0, config.auth.nonce_ttl / 8), self.nonces.purge),
        ):
            timer = TimerService(interval, call)
            timer.clock = reactor
            timer.setServiceParent(self)
        self.integrations = make_integrations(self, reactor)
        self.integrations.setServiceParent(self)
        self.api = make_api_service(self, reactor)
        self.api.setServiceParent(self)
        self.ready: Deferred[None] | None = None
        self._loaded = False

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except (StartupError, APIStartupError) as error:
            # twistd has already turned sys.stderr into a log file; the user
            # must see this line on the terminal.
            self.log.critical("{error}", error=str(error))
            (sys.__stderr__ or sys.stderr).write(f"pbx: {error}\n")
            raise SystemExit(1) from None

    def startService(self) -> None:
        super().startService()
        self.ready = ensureDeferred(self._load())
        self.ready.addErrback(self._load_failed)

    async def _load(self) -> None:
        await self.db.open()
        recovered = await self.cdr.recover(self.reactor.seconds())
        if recovered:
            self.log.warn("closed {count} call records left open by the last run", count=len(recovered))
        realm = self.config.auth.realm
        records = [
            make_record(e.number, e.name or "", realm, e.password, e.email, e.voicemail_pin)
            for e in self.config.extensions
        ]
        await self.extension_repo.sync_from_config(records)
        self.directory.replace_all(await self.extension_repo.all())
        self.location.load(await self.binding_repo.load(self.reactor.seconds()))
        self._loaded = True
        # Everything loaded so far lives as long as the process: keep it out of
        # the cyclic collector's scans, which otherwise grow with the number of
        # extensions and bindings and stall the reactor under load.
        gc.collect()
        gc.freeze()
        # Python's default asks for a young-generation pass every 700 net
        # allocations, i.e. every few SIP messages here; most of what a call
        # allocates is freed by reference counting anyway. A pass per
        # GC_YOUNG_THRESHOLD allocations keeps each one short (a few ms).
        gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
        gc.callbacks.append(self._gc_watch)
        self.core.ready = True
        self.log.info(
            "PBX ready: {extensions} extensions, {bindings} bindings restored",
            extensions=len(self.directory), bindings=len(self.location),
        )  # fmt: skip

    _gc_started = 0.0
    GC_PAUSE_WARNING = 0.02

    def _gc_watch(self, phase: str, info: dict[str, int]) -> None:
        """Log collector pauses long enough to delay SIP and RTP (a real-time budget)."""
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif info.get("generation") == 2:
            pause = time.perf_counter() - self._gc_started
            if pause >= self.GC_PAUSE_WARNING:
                self.log.warn(
                    "garbage collection paused the reactor for {ms:.0f} ms ({collected} objects freed)",
                    ms=pause * 1000, collected=info.get("collected", 0),
                )  # fmt: skip

    def _load_failed(self, failure: Any) -> None:
        self.log.failure("PBX start-up failed; stopping", failure)
        if self.reactor.running:
            self.reactor.stop()

    def flush_bindings(self) -> Deferred[None] | None:
        """Write changed bindings behind the registrar, in one transaction per tick."""
        if not self._loaded:
            return None
        changes = self.location.take_changes()
        if not changes:
            return None
        d = self.binding_repo.replace(changes)
        d.addErrback(lambda f: self.log.failure("could not persist {count} bindings", f, count=len(changes)))
        return d

    def expire_bindings(self) -> None:
        for aor in self.location.expire():
            self.events.emit("registration.changed", aor=aor, contacts=[b.contact for b in self.location.lookup(aor)])

    def _reachable(self, number: str) -> bool:
        """Whether the attendant may ring `number`: a group, or an extension with a registered phone."""
        return number in self.dialplan.groups or bool(self.location.lookup(number))

    def _in_dialog(self, request: Any, transaction: Any, peer: Any) -> None:
        """Requests inside a dialog: message-waiting subscriptions first, calls otherwise."""
        if self.mwi.owns(request):
            self.mwi.in_dialog_request(request, transaction, peer)
        else:
            self.b2bua.in_dialog_request(request, transaction, peer)

    async def _stop(self) -> None:
        self.mwi.stop()
        self.b2bua.stop()
        await self.b2bua.drain()
        await self.cdr.flush()
        await self.relay.close()
        await MultiService.stopService(self)
        self.transactions.stop()
        pending = self.flush_bindings()
        if pending is not None:
            await pending
        self.db.close()
        self.log.info("PBX stopped")

    def stopService(self) -> Deferred[None]:
        return ensureDeferred(self._stop())
