"""EspoCRM client against a fake EspoCRM on loopback.

EspoCRM itself cannot run here (PHP, a web server and MySQL); the fake in
tests/fakes/espocrm.py follows the vendor's API documentation (API key
header ``X-Api-Key``, ``where[0][type]=...`` search parameters encoded as
http_build_query does, ``select``/``maxSize``, ``{"total", "list"}`` answers,
created records with their ``id``, 401 with an empty body for a wrong key,
``X-Status-Reason`` on errors).  It records every request, and these tests
assert on the exact requests the client sends.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock

from fakes.espocrm import FakeEspoCRM, parse_php_query
from pbx.config import EspoCRMConfig
from pbx.integrations.espocrm import EspoCRMClient, normalise_number, phone_variants, split_country_code
from pbx.integrations.http import JSONClient, NotConfigured, UpstreamError, UpstreamTimeout

KEY = "espo-test-key"
SELECT = "id,name,firstName,lastName,phoneNumber,emailAddress,accountId,accountName"
NOW = 1_700_000_000  # 2023-11-14 22:13:20 UTC


@pytest_twisted.async_yield_fixture
async def espo():
    fake = FakeEspoCRM(api_key=KEY)
    base = fake.start(reactor)
    fake.base = base
    yield fake
    await fake.stop()


def make(fake: FakeEspoCRM, *, key: str = KEY, timeout: float = 2.0, retries: int = 2) -> EspoCRMClient:
    config = EspoCRMConfig(enabled=True, api_url=fake.base + "/api/v1", api_key=key)
    client = JSONClient("EspoCRM", config.api_url, reactor=reactor, timeout=timeout,
                        retries=retries, backoff=0.01)
    clock = Clock()
    clock.advance(NOW)
    return EspoCRMClient(config, client, country_code="49", clock=clock)


# ---------------------------------------------------------------------------
# numbers (pure)


@pytest.mark.parametrize(("number", "country", "expected"), [
    ("+4930123456", None, ["+4930123456", "030123456", "004930123456"]),
    ("030123456", "49", ["+4930123456", "030123456", "004930123456"]),
    ("0049 30 123456", None, ["+4930123456", "030123456", "004930123456"]),
    ("+49 (30) 123-456", "49", ["+4930123456", "030123456", "004930123456"]),
    ("030123456", None, ["030123456"]),
    ("+1 415 555 0100", None, ["+14155550100", "14155550100", "0014155550100", "4155550100"]),
    ("+390612345678", None, ["+390612345678", "0612345678", "00390612345678"]),
    ("+35312345678", None, ["+35312345678", "012345678", "0035312345678"]),
    ("1001", "49", ["1001"]),
])
def test_phone_variants(number, country, expected):
    assert phone_variants(number, country) == expected


def test_number_helpers():
    assert normalise_number(" +49 30/123.456 ") == "+4930123456"
    assert normalise_number("0049301234") == "+49301234"
    assert split_country_code("+4930123456") == ("49", "30123456")
    assert split_country_code("+14155550100") == ("1", "4155550100")
    assert split_country_code("+35312345678") == ("353", "12345678")
    assert split_country_code("030123456") is None


def test_fake_parses_queries_like_php():
    pairs = [("where[0][type]", "in"), ("where[0][attribute]", "phoneNumber"),
             ("where[0][value][0]", "a"), ("where[0][value][1]", "b"), ("maxSize", "5")]
    assert parse_php_query(pairs) == {
        "where": [{"type": "in", "attribute": "phoneNumber", "value": ["a", "b"]}], "maxSize": "5"}


def test_missing_api_key_is_not_configured():
    config = EspoCRMConfig(enabled=True)
    with pytest.raises(NotConfigured) as caught:
        EspoCRMClient.build(config, reactor)
    assert caught.value.key == "integrations.espocrm.api_key"


# ---------------------------------------------------------------------------
# search


@pytest_twisted.ensureDeferred
async def test_search_finds_e164_and_national_forms_with_the_exact_query(espo):
    carol = espo.add_contact("Carol", "Customer", ["+4930123456"], email="carol@example.com")
    dave = espo.add_contact("Dave", "Dealer", ["0171 555", "030123456"])
    espo.add_contact("Eve", "Else", ["+4940999999"])

    found = await make(espo).search_contacts("030123456")

    assert found["phone"] == "030123456"
    assert found["total"] == 2
    assert [c["id"] for c in found["contacts"]] == [carol["id"], dave["id"]]
    assert found["contacts"][0] == {
        "id": carol["id"], "name": "Carol Customer", "firstName": "Carol", "lastName": "Customer",
        "phoneNumber": "+4930123456", "emailAddress": "carol@example.com", "accountId": None,
        "accountName": None}
    (request,) = espo.requests
    assert (request.method, request.path) == ("GET", "/api/v1/Contact")
    assert request.header("X-Api-Key") == KEY
    assert request.header("Accept") == "application/json"
    assert request.query == [
        ("select", SELECT),
        ("maxSize", "5"),
        ("where[0][type]", "in"),
        ("where[0][attribute]", "phoneNumber"),
        ("where[0][value][0]", "+4930123456"),
        ("where[0][value][1]", "030123456"),
        ("where[0][value][2]", "004930123456"),
    ]
    # Encoded exactly once: brackets as %5B/%5D, the plus as %2B.
    assert "where%5B0%5D%5Btype%5D=in" in request.raw_query
    assert "where%5B0%5D%5Bvalue%5D%5B0%5D=%2B4930123456" in request.raw_query
    assert "%25" not in request.raw_query


@pytest_twisted.ensureDeferred
async def test_search_e164_caller_finds_a_contact_stored_nationally(espo):
    dave = espo.add_contact("Dave", "Dealer", ["030123456"])
    found = await make(espo).search_contacts("+4930123456")
    assert [c["id"] for c in found["contacts"]] == [dave["id"]]
    assert await make(espo).find_contact("+49 30 123456") == found["contacts"][0]


@pytest_twisted.ensureDeferred
async def test_search_not_found(espo):
    espo.add_contact("Eve", "Else", ["+4940999999"])
    found = await make(espo).search_contacts("+4930123456")
    assert found == {"phone": "+4930123456", "total": 0, "contacts": []}
    assert await make(espo).find_contact("+4930123456") is None


@pytest_twisted.ensureDeferred
async def test_search_with_one_form_uses_equals(espo):
    await make(espo).search_contacts("1001")
    assert espo.requests[0].query[2:] == [
        ("where[0][type]", "equals"), ("where[0][attribute]", "phoneNumber"), ("where[0][value]", "1001")]


@pytest_twisted.ensureDeferred
async def test_search_rejects_what_is_not_a_number(espo):
    with pytest.raises(ValueError, match="phone"):
        await make(espo).search_contacts("anonymous")
    assert espo.requests == []


# ---------------------------------------------------------------------------
# create


@pytest_twisted.ensureDeferred
async def test_create_contact_links_the_company_account(espo):
    client = make(espo)
    created = await client.create_contact("Carol Ann Customer", phone="030123456",
                                          email="carol@example.com", company="Acme GmbH", title="CTO")
    assert created["id"]
    assert created["name"] == "Carol Ann Customer"
    assert created["accountName"] == "Acme GmbH"

    get_account, post_account, post_contact = espo.requests
    assert (get_account.method, get_account.path) == ("GET", "/api/v1/Account")
    assert get_account.query == [("select", "id,name"), ("maxSize", "1"), ("where[0][type]", "equals"),
                                 ("where[0][attribute]", "name"), ("where[0][value]", "Acme GmbH")]
    assert (post_account.method, post_account.path, post_account.body) == (
        "POST", "/api/v1/Account", {"name": "Acme GmbH"})
    (account_id,) = espo.records["Account"]
    assert (post_contact.method, post_contact.path) == ("POST", "/api/v1/Contact")
    assert post_contact.header("Content-Type") == "application/json"
    assert post_contact.header("X-Api-Key") == KEY
    assert post_contact.body == {"lastName": "Customer", "firstName": "Carol Ann", "phoneNumber": "+4930123456",
                                 "emailAddress": "carol@example.com", "accountId": account_id, "title": "CTO"}

    # The same company again: found, not created twice.
    espo.requests.clear()
    await client.create_contact("Dave", company="Acme GmbH")
    assert [(r.method, r.path) for r in espo.requests] == [("GET", "/api/v1/Account"), ("POST", "/api/v1/Contact")]
    assert espo.requests[1].body == {"lastName": "Dave", "accountId": account_id}


@pytest_twisted.ensureDeferred
async def test_create_contact_validation_error_carries_the_status_reason(espo):
    espo.fail_next(400, None, {"X-Status-Reason": "Duplicate check failed."})
    with pytest.raises(UpstreamError) as caught:
        await make(espo).create_contact("Carol")
    assert caught.value.status == 400
    assert "Duplicate check failed." in str(caught.value)
    with pytest.raises(ValueError, match="name"):
        await make(espo).create_contact("  ")


# ---------------------------------------------------------------------------
# call log


@pytest_twisted.ensureDeferred
async def test_log_call_body(espo):
    contact = espo.add_contact("Carol", "Customer", ["+4930123456"])
    start = datetime(2024, 3, 1, 10, 15, 0, tzinfo=timezone(timedelta(hours=1)))
    created = await make(espo).log_call(contact["id"], "Inbound", 95, "Held", description="Asked about invoice 42",
                                        date_start=start, date_end=start + timedelta(seconds=95),
                                        phone="+4930123456")
    assert created["id"]
    (request,) = espo.requests
    assert (request.method, request.path) == ("POST", "/api/v1/Call")
    assert request.header("X-Api-Key") == KEY
    assert request.body == {
        "name": "Inbound call from +4930123456",
        "status": "Held",
        "direction": "Inbound",
        "dateStart": "2024-03-01 09:15:00",
        "dateEnd": "2024-03-01 09:16:35",
        "duration": 95,
        "contactsIds": [contact["id"]],
        "description": "Asked about invoice 42",
    }


@pytest_twisted.ensureDeferred
async def test_log_missed_outbound_call_ends_now_by_default(espo):
    await make(espo).log_call("c1", "outbound", 0, "missed")
    assert espo.requests[0].body == {
        "name": "Outbound call", "status": "Not Held", "direction": "Outbound",
        "dateStart": "2023-11-14 22:13:20", "dateEnd": "2023-11-14 22:13:20", "duration": 0,
        "contactsIds": ["c1"]}
    espo.requests.clear()
    await make(espo).log_call(None, "Inbound", 60, "Not Held", date_start="2024-03-01T10:00:00Z")
    body = espo.requests[0].body
    assert (body["dateStart"], body["dateEnd"], body["contactsIds"]) == (
        "2024-03-01 10:00:00", "2024-03-01 10:01:00", [])


@pytest_twisted.ensureDeferred
async def test_log_call_bad_input_names_the_field(espo):
    client = make(espo)
    with pytest.raises(ValueError, match="direction"):
        await client.log_call("c1", "sideways", 10, "Held")
    with pytest.raises(ValueError, match="status"):
        await client.log_call("c1", "Inbound", 10, "Planned")
    with pytest.raises(ValueError, match="duration"):
        await client.log_call("c1", "Inbound", -1, "Held")
    with pytest.raises(ValueError, match="date_start"):
        await client.log_call("c1", "Inbound", 1, "Held", date_start="yesterday")
    assert espo.requests == []


# ---------------------------------------------------------------------------
# errors


@pytest_twisted.ensureDeferred
async def test_wrong_api_key_is_401_upstream_error_not_retried(espo):
    with pytest.raises(UpstreamError) as caught:
        await make(espo, key="wrong-key").search_contacts("+4930123456")
    assert caught.value.status == 401
    assert caught.value.integration == "EspoCRM"
    assert "wrong-key" not in str(caught.value)
    assert len(espo.requests) == 1
    assert espo.requests[0].header("X-Api-Key") == "wrong-key"


@pytest_twisted.ensureDeferred
async def test_500_on_search_is_retried(espo):
    carol = espo.add_contact("Carol", "Customer", ["+4930123456"])
    espo.fail_next(500, None, {"X-Status-Reason": "Error while rebuilding."})
    found = await make(espo).search_contacts("+4930123456")
    assert [c["id"] for c in found["contacts"]] == [carol["id"]]
    assert len(espo.requests) == 2
    assert espo.requests[0].query == espo.requests[1].query


@pytest_twisted.ensureDeferred
async def test_500_that_persists_is_upstream_error(espo):
    espo.fail_next(500, {"message": "Internal Server Error"}, count=5)
    with pytest.raises(UpstreamError) as caught:
        await make(espo, retries=2).search_contacts("+4930123456")
    assert caught.value.status == 500
    assert len(espo.requests) == 3


@pytest_twisted.ensureDeferred
async def test_500_on_post_is_not_retried(espo):
    espo.fail_next(500, count=5)
    with pytest.raises(UpstreamError) as caught:
        await make(espo).log_call("c1", "Inbound", 10, "Held")
    assert caught.value.status == 500
    assert len(espo.requests) == 1


@pytest_twisted.ensureDeferred
async def test_server_that_hangs_is_a_timeout(espo):
    espo.hang_next(count=5)
    started = reactor.seconds()
    with pytest.raises(UpstreamTimeout):
        await make(espo, timeout=0.3).search_contacts("+4930123456")
    assert reactor.seconds() - started < 2.0
    assert len(espo.requests) >= 1


@pytest_twisted.ensureDeferred
async def test_server_that_is_down_is_upstream_error(espo):
    client = make(espo, retries=1)
    await espo.stop()
    with pytest.raises(UpstreamError) as caught:
        await client.search_contacts("+4930123456")
    assert caught.value.status is None

