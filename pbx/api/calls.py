"""/api/calls: the calls the B2BUA holds right now.

Read straight from ``b2bua.calls`` on the reactor thread, so a listing is a
consistent snapshot.  Hanging up goes through `B2BUA.hangup`, which ends
both legs and writes the call record like any other end of a call.
"""

from __future__ import annotations

from typing import Any

from klein import Klein
from twisted.logger import Logger

from pbx.api.context import ApiContext
from pbx.api.errors import NotFound, NotImplementedYet, install_error_handlers
from pbx.api.http import endpoint, json_response, read_json
from pbx.api.schemas import CLICK_TO_DIAL
from pbx.core.cdr import iso_utc

__all__ = ["CallRoutes", "call_view"]


def _media(call: Any) -> dict[str, dict[str, Any]]:
    try:
        stats = call.media.stats() if call.media is not None else {}
    except Exception:  # a closing session must not break the listing
        stats = {}
    if "a" not in stats and "b" not in stats and stats:
        return {"a": stats, "b": {}}  # the PBX itself answers leg A (voicemail, attendant)
    return {"a": stats.get("a") or {}, "b": stats.get("b") or {}}


def call_view(call: Any, now: float) -> dict[str, Any]:
    """One live call as JSON: parties, state, both legs and their media counters."""
    record = call.record
    media = _media(call)
    legs = media["a"], media["b"]
    winner = getattr(call, "winner", None)
    return {
        "id": call.id,
        "caller": call.caller,
        "caller_name": record.caller_name,
        "callee": record.callee,
        "answered_by": record.answered_by,
        "state": call.state,
        "screen_pop": getattr(call, "screen_pop", None),
        "start": iso_utc(record.start),
        "answer": iso_utc(record.answer),
        "duration": max(0, int(now - record.start)),
        "codec": legs[0].get("codec") or legs[1].get("codec"),
        "packets": {
            "relayed": sum(int(leg.get("packets_out") or 0) for leg in legs),
            "lost": sum(int(leg.get("lost") or 0) for leg in legs),
            "dropped": sum(int(leg.get("dropped") or 0) for leg in legs),
        },
        "legs": {
            "a": {"sip_call_id": call.a_request.call_id, "party": call.caller, "media": media["a"]},
            "b": {
                "sip_call_id": call.b_call_id,
                "party": winner.member if winner is not None else record.answered_by,
                "forks": len(call.forks),
                "media": media["b"],
            },
        },
    }


class CallRoutes:
    """GET|POST /api/calls, GET|DELETE /api/calls/{call_id}."""

    app = Klein()
    install_error_handlers(app)
    log = Logger()

    def __init__(self, context: ApiContext) -> None:
        self.context = context
        self.pbx = context.pbx
        self.guard = context.guard

    @app.route("/", methods=["GET"])
    @endpoint("/api/calls")
    def list_calls(self, request: Any) -> bytes:
        now = self.context.clock.seconds()
        calls = sorted(self.pbx.b2bua.calls.values(), key=lambda c: (c.record.start, c.id))
        items = [call_view(call, now) for call in calls]
        return json_response(request, {"items": items, "total": len(items)})

    @app.route("/", methods=["POST"])
    @endpoint("/api/calls")
    def click_to_dial(self, request: Any) -> bytes:
        read_json(request, CLICK_TO_DIAL)
        raise NotImplementedYet("click-to-dial not implemented yet")

    @app.route("/<call_id>", methods=["GET"])
    @endpoint("/api/calls/{call_id}")
    def get_call(self, request: Any, call_id: str) -> bytes:
        call = self.pbx.b2bua.calls.get(call_id)
        if call is None:
            raise NotFound(f"no call {call_id}")
        return json_response(request, call_view(call, self.context.clock.seconds()))

    @app.route("/<call_id>", methods=["DELETE"])
    @endpoint("/api/calls/{call_id}")
    def hang_up(self, request: Any, call_id: str) -> bytes:
        if not self.pbx.b2bua.hangup(call_id):
            raise NotFound(f"no call {call_id}")
        self.log.info("call {call_id} hung up through the API", call_id=call_id)
        request.setResponseCode(204)
        return b""
