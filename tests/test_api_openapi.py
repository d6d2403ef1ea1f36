"""The OpenAPI document: valid, complete, true to the running API, and a
property-based run of generated bodies against every route that takes one."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote, urlencode

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor, threads
from twisted.internet.defer import ensureDeferred

from pbx.api.app import ApiRoot, klein_routes
from pbx.api.openapi import OPERATIONS, build_document
from pbx.api.schemas import SCHEMAS, validate
from test_api import Harness, api  # noqa: F401 - the fixture

METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def resolve(document: dict, node: Any) -> Any:
    if isinstance(node, dict) and "$ref" in node:
        target: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return resolve(document, target)
    return node


def test_document_is_valid_openapi_3_1() -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    document = build_document("1.2.3")
    validator.validate(document)


def test_document_structure() -> None:
    """What the validator checks, in small, for machines without it."""
    document = build_document("1.2.3")
    assert document["openapi"].startswith("3.1.")
    assert document["info"]["title"] and document["info"]["version"] == "1.2.3"
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "$ref" in node:
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    for ref in refs:
        assert resolve(document, {"$ref": ref}) is not None, ref
    operation_ids = []
    for path, item in document["paths"].items():
        assert path.startswith("/")
        for method, op in item.items():
            assert method in METHODS
            operation_ids.append(op["operationId"])
            assert op["responses"] and all(re.fullmatch(r"[1-5][0-9][0-9]", code) for code in op["responses"])
            names = set(re.findall(r"{([^}]+)}", path))
            declared = {p["name"] for p in op.get("parameters", ()) if p["in"] == "path"}
            assert names == declared, (path, method)
            if op.get("security") != []:
                assert "401" in op["responses"], (path, method)
    assert len(operation_ids) == len(set(operation_ids))


def test_every_klein_route_is_documented_and_nothing_else() -> None:
    from pbx.config import parse_config
    from pbx.service import PBXService

    pbx = PBXService(parse_config("api: {tokens: [t0k3n-abcdef]}", environ={}), reactor)
    routes = klein_routes(ApiRoot(pbx, reactor))
    document = build_document("x")
    documented = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    assert routes == documented
    assert len(routes) == 34


@pytest_twisted.ensureDeferred
async def test_served_document_and_responses_match_the_schemas(api: Harness) -> None:  # noqa: F811
    served = await api.json("GET", "/api/openapi.json", 200)
    assert served == json.loads(json.dumps(build_document(served["info"]["version"])))
    await api.json("POST", "/api/extensions", 201, body={"number": "3100", "password": "password-3100"})
    assert api.register("3100", "password-3100", 5101) == 200
    for op in OPERATIONS:
        if op.method != "GET" or op.ok_schema is None or "{" in op.path:
            continue
        body = await api.json("GET", op.path, 200, token=None if op.public else api_token())
        validate(body, SCHEMAS[op.ok_schema])
    validate(await api.json("GET", "/api/extensions/3100", 200), SCHEMAS["Extension"])


def api_token() -> str:
    from test_api import TOKEN

    return TOKEN


# ---------------------------------------------------------------------------
# property-based: bodies generated from the published schemas


def strategy(document: dict, schema: dict, depth: int = 0) -> st.SearchStrategy:
    """Values that mostly fit ``schema`` and sometimes do not."""
    schema = resolve(document, schema)
    junk = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20), st.lists(st.integers(), max_size=3))
    types = schema.get("type", ["object"])
    types = [types] if isinstance(types, str) else types
    options: list[st.SearchStrategy] = []
    for kind in types:
        if kind == "string":
            if "enum" in schema:
                options.append(st.sampled_from([v for v in schema["enum"] if isinstance(v, str)]))
            elif "pattern" in schema:
                options.append(st.from_regex(schema["pattern"], fullmatch=True))
            low, high = schema.get("minLength", 0), schema.get("maxLength", 40)
            options.append(st.text(min_size=low, max_size=min(high, 300)))
        elif kind == "null":
            options.append(st.none())
        elif kind == "integer":
            options.append(st.integers())
        elif kind == "boolean":
            options.append(st.booleans())
        elif kind == "object" and depth < 3:
            properties = schema.get("properties", {})
            required = set(schema.get("required", ()))
            fields = {name: strategy(document, sub, depth + 1) for name, sub in properties.items()}
            options.append(st.fixed_dictionaries(
                {k: v for k, v in fields.items() if k in required},
                optional={k: v for k, v in fields.items() if k not in required},
            ))  # fmt: skip
            options.append(st.dictionaries(st.text(max_size=8), junk, max_size=3))
    options.append(junk)
    return st.one_of(*options)


@pytest_twisted.ensureDeferred
async def test_generated_bodies_never_cause_an_undocumented_answer(api: Harness) -> None:  # noqa: F811
    """Every answer to a generated body is one its operation documents; never a 500.

    501 (click-to-dial) and 503 (integrations) are by design, documented, and
    only where documented.
    """
    document = await api.json("GET", "/api/openapi.json", 200)
    await api.json("POST", "/api/extensions", 201, body={"number": "3200", "password": "password-3200"})
    operations = [
        (path, method.upper(), op)
        for path, item in document["paths"].items()
        for method, op in item.items()
        if "requestBody" in op
    ]
    assert len(operations) >= 10
    numbers = st.one_of(st.sampled_from(["1001", "3200", "3201"]), st.from_regex(r"[0-9]{1,32}", fullmatch=True),
                        st.text(min_size=1, max_size=12))
    def case(operation: tuple) -> st.SearchStrategy:
        content = operation[2]["requestBody"]["content"]
        if "application/json" not in content:  # an upload (a greeting WAV): any bytes of each type
            return st.tuples(st.just(operation), numbers,
                             st.tuples(st.sampled_from(sorted(content)), st.binary(max_size=200)))
        schema = content["application/json"]["schema"]
        return st.tuples(st.just(operation), numbers,
                         st.one_of(strategy(document, schema), st.binary(max_size=40)))

    integrations = [o for o in operations if o[0].startswith("/api/integrations/")]
    others = [o for o in operations if o not in integrations]
    # The integrations (all alike for now) share one branch, so the extension
    # and call routes get most of the examples.
    cases = st.one_of(*(case(o) for o in others), st.sampled_from(integrations).flatmap(case))
    seen: list[tuple[str, str, int]] = []

    async def send(path: str, method: str, body: Any) -> tuple[int, bytes]:
        if isinstance(body, tuple):
            response, content = await api.request(method, path, data=body[1], content_type=body[0])
        elif isinstance(body, bytes):
            response, content = await api.request(method, path, data=body, content_type="application/json")
        else:
            response, content = await api.request(method, path, body=body)
        return response.code, content

    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(cases)
    def run(case: tuple) -> None:
        (template, method, op), number, body = case
        path = template.replace("{number}", quote(number, safe=""))
        code, content = threads.blockingCallFromThread(reactor, lambda: ensureDeferred(send(path, method, body)))
        seen.append((template, method, code))
        allowed = {int(status) for status in op["responses"]} - {500}
        if "{number}" in template:
            allowed.add(404)  # a generated number may not route at all
        assert code in allowed, (method, path, body, code, content)
        if code >= 400:
            json.loads(content)["error"]

    await threads.deferToThread(run)
    codes = {code for _, _, code in seen}
    assert 400 in codes and 503 in codes


@pytest_twisted.ensureDeferred
async def test_generated_query_strings_never_cause_a_500(api: Harness) -> None:  # noqa: F811
    """The documented query parameters of the GET routes, with fitting and unfitting values."""
    document = await api.json("GET", "/api/openapi.json", 200)
    operations = [
        (path, op) for path, item in document["paths"].items()
        for method, op in item.items() if method == "get" and "{" not in path
        and any(p["in"] == "query" for p in op.get("parameters", ()))
    ]  # fmt: skip
    assert {path for path, _ in operations} == {
        "/api/cdr", "/api/registrations", "/api/integrations/espocrm/contacts/search",
    }

    def params(op: dict) -> st.SearchStrategy:
        fields = {}
        for p in op["parameters"]:
            schema = p["schema"]
            fitting = (st.sampled_from(schema["enum"]) if "enum" in schema
                       else st.integers(-5, 200_000).map(str) if schema.get("type") == "integer"
                       else st.sampled_from(["1001", "2024-06-01", "2024-06-01T10:00:00Z", "2024-06-01T10:00:00+02:00"]))
            fields[p["name"]] = st.one_of(fitting, st.text(max_size=30))
        return st.fixed_dictionaries({}, optional=fields)

    cases = st.one_of(*(st.tuples(st.just((path, op)), params(op)) for path, op in operations))

    async def send(url: str, accept: str) -> tuple[int, bytes]:
        response, content = await api.request("GET", url, headers={"Accept": accept})
        return response.code, content

    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(cases, st.sampled_from(["application/json", "text/csv", "*/*"]))
    def run(case: tuple, accept: str) -> None:
        (path, op), query = case
        url = path + ("?" + urlencode(query) if query else "")
        code, content = threads.blockingCallFromThread(reactor, lambda: ensureDeferred(send(url, accept)))
        assert code in {int(status) for status in op["responses"]} - {500}, (url, code, content)

    await threads.deferToThread(run)
