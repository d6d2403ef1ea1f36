"""/api/extensions: phone accounts in the database.

A password given here is turned into digest HA1 hashes at once and never
returned.  A change takes effect for SIP without a restart: the in-memory
directory the registrar reads is updated as soon as the row is written, and
a deleted extension loses its bindings at once (calls in progress go on).
Extensions from the configuration file are read-only here (403): the next
start would overwrite any change.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from klein import Klein
from twisted.logger import Logger

from pbx.api.context import ApiContext
from pbx.api.errors import BadRequest, Conflict, Forbidden, NotFound, install_error_handlers
from pbx.api.extensions_store import ApiExtensionStore, Outcome, StoredExtension
from pbx.api.http import endpoint, json_response, read_json
from pbx.api.schemas import EXTENSION_CREATE, EXTENSION_PATCH, EXTENSION_REPLACE, NUMBER
from pbx.core.cdr import iso_utc
from pbx.deferreds import uncancellable
from pbx.sip.digest import compute_ha1
from pbx.store.extensions import ExtensionRecord, hash_pin, make_record

__all__ = ["ExtensionRoutes"]

_NUMBER = re.compile(NUMBER["pattern"])


class ExtensionRoutes:
    """GET|POST /api/extensions, GET|PUT|PATCH|DELETE /api/extensions/{number}."""

    app = Klein()
    install_error_handlers(app)
    log = Logger()

    def __init__(self, context: ApiContext) -> None:
        self.context = context
        self.pbx = context.pbx
        self.guard = context.guard
        self.store = ApiExtensionStore(context.pbx.db, context.clock)

    # -- helpers -------------------------------------------------------------

    def _view(self, stored: StoredExtension) -> dict[str, Any]:
        """The public face of an extension: never a hash, never a PIN."""
        record = stored.record
        contacts = len(self.pbx.location.lookup(record.number))
        return {
            "number": record.number,
            "name": record.name,
            "email": record.email,
            "source": record.source,
            "voicemail_pin_set": record.voicemail_pin_hash is not None,
            "updated_at": iso_utc(stored.updated_at),
            "registered": contacts > 0,
            "contacts": contacts,
        }

    def _check_number(self, number: str) -> None:
        if _NUMBER.fullmatch(number) is None:
            raise NotFound(f"no extension {number}")

    def _taken_by_other_target(self, number: str) -> str | None:
        dialplan = getattr(self.pbx, "dialplan", None)
        if dialplan is None:
            return None
        if number in getattr(dialplan, "groups", {}):
            return f"{number} is a ring group"
        if number == getattr(dialplan, "attendant_number", None):
            return f"{number} is the auto attendant"
        return None

    def _outcome(self, number: str, outcome: Outcome) -> StoredExtension:
        if outcome.status == "missing":
            raise NotFound(f"no extension {number}")
        if outcome.status == "config":
            raise Forbidden(f"extension {number} comes from the configuration file; change it there", "number")
        assert outcome.stored is not None
        return outcome.stored

    def _change(self, body: dict[str, Any], *, replace_all: bool) -> Any:
        """The function that turns the current row into the new one (runs in the DB thread)."""
        realm = self.pbx.config.auth.realm

        def change(current: ExtensionRecord) -> ExtensionRecord:
            record = current
            if replace_all or "name" in body:
                record = replace(record, name=body.get("name") or "")
            if replace_all or "email" in body:
                record = replace(record, email=body.get("email"))
            if replace_all or "voicemail_pin" in body:
                pin = body.get("voicemail_pin")
                record = replace(record, voicemail_pin_hash=None if pin is None else hash_pin(pin))
            if "password" in body:
                password = body["password"]
                record = replace(
                    record, realm=realm,
                    ha1_md5=compute_ha1(record.number, realm, password, "MD5"),
                    ha1_sha256=compute_ha1(record.number, realm, password, "SHA-256"),
                )  # fmt: skip
            return record

        return change

    def _body_number(self, body: dict[str, Any], number: str) -> None:
        if "number" in body and body["number"] != number:
            raise BadRequest("number: does not match the number in the path", "number")

    # -- routes --------------------------------------------------------------

    @app.route("/", methods=["GET"])
    @endpoint("/api/extensions")
    async def list_extensions(self, request: Any) -> bytes:
        items = [self._view(stored) for stored in await self.store.all()]
        return json_response(request, {"items": items, "total": len(items)})

    @app.route("/", methods=["POST"])
    @endpoint("/api/extensions")
    async def create_extension(self, request: Any) -> bytes:
        body = read_json(request, EXTENSION_CREATE)
        number = body["number"]
        clash = self._taken_by_other_target(number)
        if clash is not None:
            raise Conflict(clash, "number")
        record = make_record(
            number, body.get("name") or "", self.pbx.config.auth.realm, body["password"],
            body.get("email"), body.get("voicemail_pin"), source="api",
        )  # fmt: skip

        def applied(outcome: Outcome) -> Outcome:
            if outcome.status == "ok":
                self.pbx.directory.put(record)  # it can register from now on
                self.log.info("extension {number} created through the API", number=number)
            return outcome

        outcome = await uncancellable(self.store.create(record).addCallback(applied), "an extension change")
        if outcome.status == "exists":
            raise Conflict(f"extension {number} already exists", "number")
        assert outcome.stored is not None
        request.setHeader(b"location", f"/api/extensions/{number}".encode("ascii"))
        return json_response(request, self._view(outcome.stored), 201)

    @app.route("/<number>", methods=["GET"])
    @endpoint("/api/extensions/{number}")
    async def get_extension(self, request: Any, number: str) -> bytes:
        self._check_number(number)
        stored = await self.store.get(number)
        if stored is None:
            raise NotFound(f"no extension {number}")
        return json_response(request, self._view(stored))

    @app.route("/<number>", methods=["PUT"])
    @endpoint("/api/extensions/{number}")
    async def replace_extension(self, request: Any, number: str) -> bytes:
        self._check_number(number)
        body = read_json(request, EXTENSION_REPLACE)
        self._body_number(body, number)
        return await self._apply(request, number, body, replace_all=True)

    @app.route("/<number>", methods=["PATCH"])
    @endpoint("/api/extensions/{number}")
    async def update_extension(self, request: Any, number: str) -> bytes:
        self._check_number(number)
        body = read_json(request, EXTENSION_PATCH)
        self._body_number(body, number)
        return await self._apply(request, number, body, replace_all=False)

    async def _apply(self, request: Any, number: str, body: dict[str, Any], *, replace_all: bool) -> bytes:
        def applied(outcome: Outcome) -> Outcome:
            if outcome.status == "ok" and outcome.stored is not None:
                self.pbx.directory.put(outcome.stored.record)
                self.log.info(
                    "extension {number} changed through the API ({fields})",
                    number=number, fields=", ".join(sorted(body)),
                )  # fmt: skip
            return outcome

        d = self.store.modify(number, self._change(body, replace_all=replace_all))
        stored = self._outcome(number, await uncancellable(d.addCallback(applied), "an extension change"))
        return json_response(request, self._view(stored))

    @app.route("/<number>", methods=["DELETE"])
    @endpoint("/api/extensions/{number}")
    async def delete_extension(self, request: Any, number: str) -> bytes:
        self._check_number(number)

        def applied(outcome: Outcome) -> Outcome:
            if outcome.status == "ok":
                # No more REGISTERs, no more bindings; calls in progress go on.
                self.pbx.directory.remove(number)
                had_bindings = self.pbx.location.count(number) > 0
                self.pbx.location.remove_all(number)
                if had_bindings:
                    self.pbx.events.emit("registration.changed", aor=number, contacts=[])
                self.log.info("extension {number} deleted through the API", number=number)
            return outcome

        self._outcome(number, await uncancellable(self.store.delete(number).addCallback(applied), "an extension change"))
        request.setResponseCode(204)
        return b""
