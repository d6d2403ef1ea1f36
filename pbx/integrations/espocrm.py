"""EspoCRM: find the caller, create contacts, log calls (REST API, api/v1).

Follows EspoCRM's API documentation:

- Authentication by API key (an API User with a role): header ``X-Api-Key``.
- ``GET Contact`` with search parameters encoded as PHP's http_build_query
  does (what EspoCRM's own client implementations send):
  ``where[0][type]=in&where[0][attribute]=phoneNumber&where[0][value][0]=...``,
  plus ``select`` (comma-separated attributes) and ``maxSize``.  The answer
  is ``{"total": n, "list": [...]}``.  The ``phoneNumber`` attribute matches
  any of a contact's numbers.
- ``POST Contact`` / ``POST Account`` / ``POST Call`` with a JSON body; the
  answer (200) is the created record with its ``id``.
- Errors: a status code, often an empty body, and the reason in the
  ``X-Status-Reason`` header (401: wrong or missing API key).

Phone numbers are stored in EspoCRM as people typed them or, with
international formatting on, in E.164.  A caller id may arrive either way,
so the search asks for every form of the number: E.164 (``+4930123456``),
national (``030123456``) and with the ``00`` international prefix
(``004930123456``), see `phone_variants`.  Turning a national number into
E.164 needs the country calling code (``country_code``, e.g. ``"49"``);
without it only the forms derivable from the number itself are searched.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from twisted.logger import Logger

from pbx.integrations.http import JSONClient, NotConfigured, UpstreamError

__all__ = ["EspoCRMClient", "normalise_number", "phone_variants", "split_country_code"]

INTEGRATION = "EspoCRM"

log = Logger(namespace="pbx.integrations.espocrm")

#: Attributes asked for in contact searches (``select``).
CONTACT_SELECT = ("id", "name", "firstName", "lastName", "phoneNumber", "emailAddress",
                  "accountId", "accountName")

#: ITU-T E.164 country calling codes of two digits; "1" and "7" are the only
#: one-digit codes, every other code has three digits.
_TWO_DIGIT_CODES = frozenset(
    "20 27 30 31 32 33 34 36 39 40 41 43 44 45 46 47 48 49 51 52 53 54 55 56 57 58 "
    "60 61 62 63 64 65 66 81 82 84 86 90 91 92 93 94 95 98".split()
)

#: National (trunk) prefixes that are not "0".  "" = none: the national
#: number is dialled as is (Italy keeps the leading 0 of its area codes).
_TRUNK_PREFIX = {
    "1": "1", "7": "8", "36": "06",
    "30": "", "34": "", "39": "", "45": "", "47": "", "48": "", "351": "", "352": "",
    "354": "", "356": "", "357": "", "371": "", "372": "", "376": "", "377": "", "378": "",
    "379": "", "420": "", "423": "",
}

_FORMATTING = re.compile(r"[\s\-./()\u00a0]")


def normalise_number(number: str) -> str:
    """Digits with an optional leading ``+``; the ``00`` international prefix
    becomes ``+``.  ``"+49 (30) 123-456"`` -> ``"+4930123456"``,
    ``"0049 30 123456"`` -> ``"+4930123456"``.  Anything else (letters,
    ``*``, ``#``) is left as it was, stripped of formatting only."""
    text = _FORMATTING.sub("", str(number).strip())
    if text.startswith("00") and text[2:].isdigit():
        return "+" + text[2:]
    return text


def split_country_code(e164: str) -> tuple[str, str] | None:
    """``"+4930123456"`` -> ``("49", "30123456")``; None when not E.164."""
    if not re.fullmatch(r"\+[1-9][0-9]{3,14}", e164):
        return None
    digits = e164[1:]
    if digits[0] in "17":
        length = 1
    elif digits[:2] in _TWO_DIGIT_CODES:
        length = 2
    else:
        length = 3
    return digits[:length], digits[length:]


def phone_variants(number: str, country_code: str | None = None) -> list[str]:
    """Every form under which ``number`` may be stored, E.164 first.

    ``phone_variants("+4930123456")`` and ``phone_variants("030123456", "49")``
    both give ``["+4930123456", "030123456", "004930123456"]``; the number as
    given (formatting removed) is added when it is none of those.
    """
    given = normalise_number(number)
    cc = (country_code or "").lstrip("+") or None
    e164: str | None = None
    if given.startswith("+"):
        e164 = given
    elif cc and given.isdigit():
        trunk = _TRUNK_PREFIX.get(cc, "0")
        if trunk and given.startswith(trunk) and not given.startswith("00"):
            e164 = "+" + cc + given[len(trunk):]
        elif not trunk and len(given) >= 4:
            e164 = "+" + cc + given
    variants: list[str] = []
    split = split_country_code(e164) if e164 else None
    if split:
        code, subscriber = split
        trunk = _TRUNK_PREFIX.get(code, "0")
        variants += [e164, trunk + subscriber, "00" + code + subscriber]
        if code == "1":
            variants.append(subscriber)          # NANP: the 10 digits alone are usual
    variants.append(given)
    return [v for i, v in enumerate(variants) if v and v not in variants[:i]]


def _utc_text(value: Any, field: str) -> str:
    """datetime (naive = UTC) / ISO 8601 string / epoch seconds ->
    EspoCRM's ``"YYYY-MM-DD HH:MM:SS"`` in UTC."""
    if isinstance(value, bool):
        raise ValueError(f"{field}: expected a date-time")
    if isinstance(value, (int, float)):
        value = datetime.fromtimestamp(value, UTC)
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{field}: expected an ISO 8601 date-time, got {value!r}") from None
    if not isinstance(value, datetime):
        raise ValueError(f"{field}: expected a date-time")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


_DIRECTIONS = {"inbound": "Inbound", "incoming": "Inbound", "in": "Inbound",
               "outbound": "Outbound", "outgoing": "Outbound", "out": "Outbound"}
_STATUSES = {"held": "Held", "answered": "Held", "completed": "Held",
             "not held": "Not Held", "notheld": "Not Held",
             "missed": "Not Held", "no answer": "Not Held", "busy": "Not Held",
             "failed": "Not Held", "cancelled": "Not Held", "canceled": "Not Held"}


def _split_name(name: str) -> tuple[str | None, str]:
    parts = name.split()
    if len(parts) == 1:
        return None, parts[0]
    return " ".join(parts[:-1]), parts[-1]


class EspoCRMClient:
    """``integrations.espocrm`` over a `JSONClient` whose base URL is ``api_url``.

    The client sends ``X-Api-Key`` itself (the JSONClient needs no headers).
    ``country_code`` (digits, e.g. ``"49"``) turns national caller ids into
    E.164 for the search; ``clock`` (``seconds()``) dates calls logged
    without times (default: the JSONClient's reactor).  Raises `NotConfigured`
    when ``api_key`` is missing.
    """

    integration = INTEGRATION

    def __init__(self, config: Any, client: JSONClient, *, country_code: str | None = None,
                 clock: Any = None, max_results: int = 5) -> None:
        if not config.api_key:
            raise NotConfigured(INTEGRATION, key="integrations.espocrm.api_key")
        self.config = config
        self.client = client
        self.country_code = country_code if country_code is not None else getattr(config, "country_code", None)
        self.clock = clock if clock is not None else client.reactor
        self.max_results = max_results
        client.add_secret(config.api_key)

    @classmethod
    def build(cls, config: Any, reactor: Any, *, timeout: float = 5.0, http_client: Any = None,
              country_code: str | None = None, **client_options: Any) -> EspoCRMClient:
        """A client with its own JSONClient (``client_options``: retries, backoff, concurrency)."""
        if not config.api_key:
            raise NotConfigured(INTEGRATION, key="integrations.espocrm.api_key")
        client = JSONClient(INTEGRATION, config.api_url, reactor=reactor, timeout=timeout,
                            http_client=http_client, secrets=[config.api_key], **client_options)
        return cls(config, client, country_code=country_code, clock=reactor)

    # -- plumbing ----------------------------------------------------------------

    async def _request(self, method: str, path: str, **kw: Any) -> Any:
        """One API call; 4xx answers become UpstreamError with EspoCRM's
        ``X-Status-Reason`` (5xx and connection errors are handled, and GETs
        retried, by the JSONClient)."""
        response = await self.client.request(
            method, path, headers={"X-Api-Key": self.config.api_key},
            expect=tuple(range(200, 500)), **kw)
        if 200 <= response.status < 300:
            return response.json
        reason = (response.headers.get("x-status-reason") or [""])[-1].strip()
        body = response.json if response.json is not None else (reason or None)
        hint = " (check integrations.espocrm.api_key)" if response.status == 401 else ""
        message = self.client.redact(f"EspoCRM answered {response.status} to {method} {path}"
                                     + (f": {reason}" if reason else "") + hint)
        log.warn("{message}", message=message)
        raise UpstreamError(INTEGRATION, message, status=response.status, body=body)

    @staticmethod
    def _where_params(where: list[dict[str, Any]]) -> list[tuple[str, str]]:
        """``where`` items as http_build_query pairs: ``where[0][type]`` ...,
        list values as ``where[0][value][0]`` ..."""
        pairs: list[tuple[str, str]] = []

        def add(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for key, item in value.items():
                    add(f"{prefix}[{key}]", item)
            elif isinstance(value, (list, tuple)):
                for index, item in enumerate(value):
                    add(f"{prefix}[{index}]", item)
            else:
                pairs.append((prefix, str(value)))

        add("where", list(where))
        return pairs

    # -- contacts ------------------------------------------------------------------

    async def search_contacts(self, phone: str) -> dict[str, Any]:
        """Contacts having ``phone`` in any of its forms:
        ``{"phone": phone, "total": n, "contacts": [{id, name, ...}]}``."""
        if not isinstance(phone, str) or not re.fullmatch(r"\+?[0-9]{2,}", normalise_number(phone)):
            raise ValueError("phone: expected a phone number")
        variants = phone_variants(phone, self.country_code)
        if len(variants) == 1:
            item: dict[str, Any] = {"type": "equals", "attribute": "phoneNumber", "value": variants[0]}
        else:
            item = {"type": "in", "attribute": "phoneNumber", "value": variants}
        params = [("select", ",".join(CONTACT_SELECT)), ("maxSize", str(self.max_results)),
                  *self._where_params([item])]
        answer = await self._request("GET", "/Contact", params=params)
        if not isinstance(answer, dict) or not isinstance(answer.get("list"), list):
            raise UpstreamError(INTEGRATION, "EspoCRM answered GET /Contact without a list", body=answer)
        contacts = [c for c in answer["list"] if isinstance(c, dict)]
        return {"phone": phone, "total": int(answer.get("total", len(contacts))), "contacts": contacts}

    async def find_contact(self, phone: str) -> dict[str, Any] | None:
        """The first contact with ``phone``, or None (for the screen pop)."""
        found = await self.search_contacts(phone)
        return found["contacts"][0] if found["contacts"] else None

    async def _account_id(self, company: str) -> str:
        """The id of the Account named ``company``, created when there is none."""
        params = [("select", "id,name"), ("maxSize", "1"),
                  *self._where_params([{"type": "equals", "attribute": "name", "value": company}])]
        answer = await self._request("GET", "/Account", params=params)
        found = answer.get("list") if isinstance(answer, dict) else None
        if found:
            return str(found[0]["id"])
        created = await self._request("POST", "/Account", json={"name": company})
        return str(created["id"])

    async def create_contact(self, name: str, phone: str | None = None, email: str | None = None,
                             company: str | None = None, title: str | None = None) -> dict[str, Any]:
        """A new Contact; ``name`` is split into firstName / lastName (the
        last word), ``phone`` stored in E.164 when it can be, ``company``
        linked as its Account (found by name, else created).  The created
        record (with ``id``)."""
        if not isinstance(name, str) or not name.strip():
            raise ValueError("name: expected a non-empty string")
        first, last = _split_name(name.strip())
        body: dict[str, Any] = {"lastName": last}
        if first:
            body["firstName"] = first
        if phone:
            variants = phone_variants(phone, self.country_code)
            body["phoneNumber"] = variants[0]
        if email:
            body["emailAddress"] = email
        if company:
            body["accountId"] = await self._account_id(company)
        if title:
            body["title"] = title
        created = await self._request("POST", "/Contact", json=body)
        if not isinstance(created, dict) or "id" not in created:
            raise UpstreamError(INTEGRATION, "EspoCRM answered POST /Contact without an id", body=created)
        return created

    # -- calls ---------------------------------------------------------------------

    async def log_call(self, contact_id: str | None, direction: str, duration: int, status: str,
                       description: str | None = None, date_start: Any = None, date_end: Any = None,
                       *, name: str | None = None, phone: str | None = None) -> dict[str, Any]:
        """A Call record: ``direction`` Inbound/Outbound, ``status`` Held /
        Not Held (also "answered", "missed", ...), ``duration`` in seconds,
        linked to ``contact_id``.  Dates (datetime, ISO 8601 or epoch) are
        sent in UTC as ``YYYY-MM-DD HH:MM:SS``; missing ones are derived
        from the other and ``duration`` (the end defaults to now).  The
        created record (with ``id``)."""
        kind = _DIRECTIONS.get(str(direction).strip().lower())
        if kind is None:
            raise ValueError("direction: expected Inbound or Outbound")
        state = _STATUSES.get(" ".join(str(status).lower().replace("_", " ").replace("-", " ").split()))
        if state is None:
            raise ValueError('status: expected "Held" or "Not Held"')
        if isinstance(duration, bool) or not isinstance(duration, (int, float)) or duration < 0:
            raise ValueError("duration: expected a number of seconds >= 0")
        seconds = int(round(duration))
        if date_start is None and date_end is None:
            date_end = self.clock.seconds()
        start_text = _utc_text(date_start, "date_start") if date_start is not None else None
        end_text = _utc_text(date_end, "date_end") if date_end is not None else None
        if start_text is None:
            end = datetime.strptime(end_text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
            start_text = _utc_text(end.timestamp() - seconds, "date_start")
        if end_text is None:
            start = datetime.strptime(start_text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
            end_text = _utc_text(start.timestamp() + seconds, "date_end")
        if name is None:
            name = f"{kind} call"
            if phone:
                name += f" {'from' if kind == 'Inbound' else 'to'} {phone}"
        body: dict[str, Any] = {
            "name": name,
            "status": state,
            "direction": kind,
            "dateStart": start_text,
            "dateEnd": end_text,
            "duration": seconds,
            "contactsIds": [str(contact_id)] if contact_id else [],
        }
        if description:
            body["description"] = description
        created = await self._request("POST", "/Call", json=body)
        if not isinstance(created, dict) or "id" not in created:
            raise UpstreamError(INTEGRATION, "EspoCRM answered POST /Call without an id", body=created)
        return created
