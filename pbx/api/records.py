"""/api/cdr (finished calls, with filters, paging and CSV) and
/api/registrations (current bindings from the location service)."""

from __future__ import annotations

import csv
import io
import re
from datetime import date, datetime, timedelta, timezone
from typing import Any

from klein import Klein

from pbx.api.context import ApiContext
from pbx.api.errors import BadRequest, install_error_handlers
from pbx.api.http import endpoint, json_response, query_params
from pbx.core.cdr import DISPOSITIONS, iso_utc

__all__ = ["CDR_COLUMNS", "CDRRoutes", "RegistrationRoutes", "parse_moment"]

CDR_COLUMNS = (
    "call_id", "sip_call_id", "caller", "caller_name", "callee", "answered_by", "start", "answer", "end",
    "duration", "billable", "disposition", "hangup_cause", "hangup_side",
)  # fmt: skip
JSON_LIMIT = (100, 1000)  # default, maximum
CSV_LIMIT = (10_000, 100_000)
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_COUNT = re.compile(r"^[0-9]{1,9}$")


def parse_moment(text: str, name: str, *, end_of_day: bool = False) -> datetime:
    """An ISO 8601 date or date-time; no zone means UTC.

    A bare date as the end of a range (``end_of_day``) means the whole day,
    i.e. up to the next midnight.
    """
    try:
        if _DATE.fullmatch(text):
            day = date.fromisoformat(text)
            moment = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
            return moment + timedelta(days=1) if end_of_day else moment
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        moment.timestamp()  # the store compares epoch seconds
    except (ValueError, OverflowError):
        raise BadRequest(f"{name}: expected an ISO 8601 date or date-time, e.g. 2024-05-01T08:00:00Z", name) from None
    return moment


def _count(params: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    text = params.get(name)
    if text is None:
        return default
    if not _COUNT.fullmatch(text) or not low <= int(text) <= high:
        raise BadRequest(f"{name}: expected an integer {low}-{high}", name)
    return int(text)


def _wants_csv(request: Any, params: dict[str, str]) -> bool:
    fmt = params.get("format")
    if fmt is not None:
        if fmt not in ("json", "csv"):
            raise BadRequest("format: expected json or csv", "format")
        return fmt == "csv"
    accept = (request.getHeader("accept") or "").lower()
    return any(part.split(";", 1)[0].strip() == "text/csv" for part in accept.split(","))


def _cell(value: Any) -> Any:
    """Keep spreadsheet programs from running a caller-supplied text as a formula."""
    if isinstance(value, str) and value:
        risky = value[0] in "=@\t\r" or (value[0] in "+-" and not value[1:].isdigit())
        if risky:
            return "'" + value
    return value


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class CDRRoutes:
    """GET /api/cdr."""

    app = Klein()
    install_error_handlers(app)

    def __init__(self, context: ApiContext) -> None:
        self.context = context
        self.pbx = context.pbx
        self.guard = context.guard

    @app.route("/", methods=["GET"])
    @endpoint("/api/cdr")
    async def list_records(self, request: Any) -> bytes:
        params = query_params(request, ("extension", "from", "to", "disposition", "limit", "offset", "format"))
        as_csv = _wants_csv(request, params)
        extension = params.get("extension")
        if extension is not None and not 1 <= len(extension) <= 64:
            raise BadRequest("extension: expected 1 to 64 characters", "extension")
        since = parse_moment(params["from"], "from") if "from" in params else None
        until = parse_moment(params["to"], "to", end_of_day=True) if "to" in params else None
        if since is not None and until is not None and until < since:
            raise BadRequest("to: before from", "to")
        disposition = params.get("disposition")
        if disposition is not None and disposition not in DISPOSITIONS:
            raise BadRequest(f"disposition: expected one of {', '.join(DISPOSITIONS)}", "disposition")
        default, maximum = CSV_LIMIT if as_csv else JSON_LIMIT
        limit = _count(params, "limit", default, 1, maximum)
        offset = _count(params, "offset", 0, 0, 10**9)
        filters = {"extension": extension, "since": since, "until": until, "disposition": disposition}
        records = await self.pbx.cdr.list(**filters, limit=limit, offset=offset)
        total = await self.pbx.cdr.count(**filters)
        request.setHeader(b"x-total-count", str(total).encode("ascii"))
        rows = [record.as_event() for record in records]
        if not as_csv:
            return json_response(request, {"items": rows, "total": total, "limit": limit, "offset": offset})
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(CDR_COLUMNS)
        for row in rows:
            writer.writerow([_cell(row.get(column)) for column in CDR_COLUMNS])
        request.setHeader(b"content-type", b"text/csv; charset=utf-8")
        request.setHeader(b"content-disposition", b'attachment; filename="cdr.csv"')
        return out.getvalue().encode("utf-8")


class RegistrationRoutes:
    """GET /api/registrations."""

    app = Klein()
    install_error_handlers(app)

    def __init__(self, context: ApiContext) -> None:
        self.context = context
        self.pbx = context.pbx
        self.guard = context.guard

    @app.route("/", methods=["GET"])
    @endpoint("/api/registrations")
    def list_registrations(self, request: Any) -> bytes:
        params = query_params(request, ("extension",))
        now = self.context.clock.seconds()
        location = self.pbx.location
        aors = [params["extension"]] if "extension" in params else sorted(location.aors())
        items = [
            {
                "extension": binding.aor,
                "contact": binding.contact,
                "expires": binding.expires_in(now),
                "expires_at": iso_utc(binding.expires_at),
                "user_agent": binding.user_agent,
                "source": _address(binding.source_host, binding.source_port),
                "transport": binding.transport,
                "q": binding.q,
            }
            for aor in aors
            for binding in location.lookup(aor)
        ]
        return json_response(request, {"items": items, "total": len(items)})
