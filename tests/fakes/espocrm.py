"""A fake EspoCRM REST API (``{site}/api/v1``), after the vendor's documentation.

EspoCRM cannot run here (PHP, a web server and MySQL), so this follows what
its API documentation and client implementations describe:

- Authentication by API key: header ``X-Api-Key``; without it, or with a
  wrong key, ``401`` with an empty body.
- ``GET {Entity}`` lists records: ``{"total": n, "list": [...]}``, with the
  search parameters ``where``, ``select`` (comma-separated attributes; ``id``
  is always included), ``maxSize`` (at most 200, else 403), ``offset``.
  ``where`` arrives PHP ``http_build_query`` style:
  ``where[0][type]=in&where[0][attribute]=phoneNumber&where[0][value][0]=...``;
  item types ``equals``, ``notEquals``, ``in``, ``notIn``, ``or``, ``and``
  are understood (others answer 400 like EspoCRM's "Unknown where item
  type").  The ``phoneNumber`` / ``emailAddress`` attributes match any of
  the record's numbers / addresses, as EspoCRM's joins do.
- ``POST {Entity}`` creates a record from a JSON body and answers ``200``
  with the whole record, including the new 17-character ``id``; a missing
  required field answers ``400`` with ``X-Status-Reason`` and EspoCRM's
  ``validationFailure`` body.
- ``GET {Entity}/{id}``; unknown ids answer 404, unknown entity types 404.
- Errors carry the ``X-Status-Reason`` header.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

from fakes.base import FakeServer, Recorded, Reply

API_PATH = "/api/v1"

#: Required fields per entity type (what EspoCRM's validation would refuse).
REQUIRED = {"Contact": ("lastName",), "Account": ("name",), "Call": ("name", "dateStart")}


def parse_php_query(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """``[("where[0][type]", "in"), ...]`` -> nested dicts/lists, as PHP does."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        match = re.fullmatch(r"([^\[\]]+)((?:\[[^\[\]]*\])*)", key)
        if not match:
            root[key] = value
            continue
        path = [match.group(1), *re.findall(r"\[([^\[\]]*)\]", match.group(2))]
        node = root
        for index, part in enumerate(path):
            last = index == len(path) - 1
            if part == "":
                part = str(len(node))
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
    return _listify(root)


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    items = {key: _listify(value) for key, value in node.items()}
    if items and all(key.isdigit() for key in items):
        return [items[key] for key in sorted(items, key=int)]
    return items


class FakeEspoCRM(FakeServer):
    def __init__(self, api_key: str = "espo-test-key") -> None:
        super().__init__()
        self.api_key = api_key
        self.records: dict[str, dict[str, dict[str, Any]]] = {"Contact": {}, "Account": {}, "Call": {}}
        self._ids = (f"{n:017x}" for n in itertools.count(0x65f0a1b2c3d4e5f00))

    # -- test data -------------------------------------------------------------

    def add_contact(self, first_name: str | None, last_name: str, phones: list[str] = (),
                    email: str | None = None, account: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._create("Contact", {
            "firstName": first_name,
            "lastName": last_name,
            "phoneNumberData": [{"phoneNumber": phone, "primary": index == 0, "type": "Office",
                                 "optOut": False, "invalid": False}
                                for index, phone in enumerate(phones)],
            "emailAddress": email,
            "accountId": account["id"] if account else None,
        })

    def add_account(self, name: str) -> dict[str, Any]:
        return self._create("Account", {"name": name})

    # -- the API -------------------------------------------------------------

    def handle(self, recorded: Recorded) -> Reply:
        if not recorded.path.startswith(API_PATH + "/"):
            return _error(404, "Not Found")
        if recorded.header("x-api-key") != self.api_key:
            return Reply(401)
        parts = recorded.path[len(API_PATH) + 1:].split("/")
        scope = parts[0]
        if scope not in self.records or len(parts) > 2:
            return _error(404, f"Unknown route {recorded.path}")
        if len(parts) == 2:
            if recorded.method != "GET":
                return _error(405, "Method not allowed")
            record = self.records[scope].get(parts[1])
            return Reply(200, record) if record else _error(404, "Record not found")
        if recorded.method == "GET":
            return self._list(scope, parse_php_query(recorded.query))
        if recorded.method == "POST":
            if not isinstance(recorded.body, dict):
                return _error(400, "Bad payload")
            for name in REQUIRED[scope]:
                if not recorded.body.get(name):
                    return Reply(400, {"messageTranslation": {
                        "label": "validationFailure", "scope": None,
                        "data": {"field": name, "type": "required"}}},
                        {"X-Status-Reason": "Validation failure."})
            return Reply(200, self._create(scope, recorded.body))
        return _error(405, "Method not allowed")

    def _list(self, scope: str, params: dict[str, Any]) -> Reply:
        try:
            max_size = int(params.get("maxSize", 20))
            offset = int(params.get("offset", 0))
        except ValueError:
            return _error(400, "Bad maxSize or offset")
        if max_size > 200:
            return _error(403, "Max size should not exceed 200. Use offset and limit.")
        where = params.get("where", [])
        if not isinstance(where, list):
            return _error(400, "Bad where.")
        try:
            found = [record for record in self.records[scope].values()
                     if all(_matches(record, item) for item in where)]
        except ValueError as e:
            return _error(400, str(e))
        page = found[offset:offset + max_size]
        select = params.get("select")
        if isinstance(select, str) and select:
            names = ["id", *(name for name in select.split(",") if name != "id")]
            page = [{name: record.get(name) for name in names} for record in page]
        return Reply(200, {"total": len(found), "list": page})

    def _create(self, scope: str, data: dict[str, Any]) -> dict[str, Any]:
        record = dict(data)
        record["id"] = next(self._ids)
        record.setdefault("createdAt", "2024-01-01 00:00:00")
        if scope == "Contact":
            if "phoneNumberData" not in record:
                phone = record.get("phoneNumber")
                record["phoneNumberData"] = ([{"phoneNumber": phone, "primary": True, "type": "Mobile",
                                               "optOut": False, "invalid": False}] if phone else [])
            primary = [entry["phoneNumber"] for entry in record["phoneNumberData"] if entry["primary"]]
            record["phoneNumber"] = primary[0] if primary else None
            record["name"] = " ".join(part for part in (record.get("firstName"), record.get("lastName")) if part)
            account = self.records["Account"].get(record.get("accountId") or "")
            record["accountName"] = account["name"] if account else None
        self.records[scope][record["id"]] = record
        return record


def _values(record: dict[str, Any], attribute: str) -> list[Any]:
    if attribute == "phoneNumber":
        return [entry["phoneNumber"] for entry in record.get("phoneNumberData") or []]
    return [record.get(attribute)]


def _matches(record: dict[str, Any], item: Any) -> bool:
    if not isinstance(item, dict) or "type" not in item:
        raise ValueError("Bad where item. No 'type'.")
    kind, value = item["type"], item.get("value")
    if kind in ("or", "and"):
        if not isinstance(value, list):
            raise ValueError("Bad where item.")
        results = [_matches(record, sub) for sub in value]
        return any(results) if kind == "or" else all(results)
    attribute = item.get("attribute")
    if not attribute:
        raise ValueError("Bad where item. No 'attribute'.")
    values = _values(record, attribute)
    if kind == "equals":
        return value in values
    if kind == "notEquals":
        return value not in values
    if kind in ("in", "notIn"):
        if not isinstance(value, list):
            raise ValueError(f"Bad where item '{kind}': value must be an array.")
        hit = any(candidate in values for candidate in value)
        return hit if kind == "in" else not hit
    raise ValueError(f"Unknown where item type '{kind}'.")


def _error(status: int, reason: str) -> Reply:
    return Reply(status, None, {"X-Status-Reason": reason})
