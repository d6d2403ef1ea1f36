"""Tests for pbx.core.dialplan: routing order, normalisation, groups."""

from __future__ import annotations

import pytest

from pbx.config import parse_config
from pbx.core.dialplan import (
    DEFAULT_INTERNAL,
    AttendantTarget,
    DialPlan,
    ExtensionTarget,
    Group,
    GroupTarget,
    NotFound,
    VoicemailTarget,
    normalise,
)

CONFIG = """
extensions:
- {number: 1001, password: a}
- {number: 1002, password: b}
- {number: 1003, password: c}
groups:
- {number: 2000, name: Sales, members: [1001, 1002]}
- {number: 2001, members: [1003, 1001], strategy: hunt, ring_timeout: 10}
- {number: 2002, members: [1003]}
dialplan:
  internal: '^[1-9][0-9]{3}$'
  voicemail: '^\\*97$|^\\*98(?P<mailbox>[0-9]*)$'
  attendant: '^0$'
  trunk: '^9[0-9]+$'
auto_attendant:
  extension: 8000
features:
  allow_unauthenticated: ['^1003$', '^\\*97$']
"""


@pytest.fixture
def plan() -> DialPlan:
    return DialPlan.from_config(parse_config(CONFIG, {}))


@pytest.mark.parametrize("dialled, expected", [
    ("1001", "1001"),
    (" 10 01 ", "1001"),
    ("1-0.0(1)", "1001"),
    ("+49 (30) 123-45.67", "+49301234567"),
    ("*98 1001#", "*981001#"),
    ("10\u201301\u00a0", "1001"),
    ("\t1001\n", "1001"),
    ("", ""),
])
def test_normalise(dialled: str, expected: str) -> None:
    assert normalise(dialled) == expected


def test_extension(plan: DialPlan) -> None:
    assert plan.route("1002", "1001") == ExtensionTarget("1002")
    assert plan.route("(100) 2", "1001") == ExtensionTarget("1002")


def test_group_ringall_with_its_settings(plan: DialPlan) -> None:
    route = plan.route("2000", "1003")
    assert isinstance(route, GroupTarget)
    assert route.group == Group("2000", ("1001", "1002"), "ringall", 20, "Sales")
    assert (route.members, route.strategy, route.ring_timeout) == (("1001", "1002"), "ringall", 20)


def test_group_hunt_keeps_member_order(plan: DialPlan) -> None:
    route = plan.route("2001", "1002")
    assert isinstance(route, GroupTarget)
    assert (route.members, route.strategy, route.ring_timeout) == (("1003", "1001"), "hunt", 10)


def test_member_calling_its_group_does_not_ring_itself(plan: DialPlan) -> None:
    route = plan.route("2000", "1001")
    assert isinstance(route, GroupTarget)
    assert route.members == ("1002",)
    assert route.group.number == "2000"
    assert plan.route("2002", "1003") == NotFound("no other group member")
    # an unauthenticated caller (None) is nobody's member
    assert plan.route("2002", None) == GroupTarget(Group("2002", ("1003",)))


def test_group_number_wins_over_an_extension_of_the_same_number() -> None:
    # The config forbids the clash; an extension created through the API
    # later must not take over a group's number.
    plan = DialPlan(lambda n: True, groups=[Group("2000", ("1001",))])
    assert isinstance(plan.route("2000"), GroupTarget)


def test_api_created_extension_routes_without_reload() -> None:
    known = {"1001"}
    plan = DialPlan.from_config(parse_config(CONFIG, {}), known.__contains__)
    assert plan.route("1004") == NotFound("no such extension")
    known.add("1004")
    assert plan.route("1004") == ExtensionTarget("1004")
    assert plan.route("1002") == NotFound("no such extension")  # only the directory counts


def test_extension_wins_over_voicemail_and_attendant_patterns() -> None:
    plan = DialPlan({"0", "*97"}.__contains__, voicemail=r"^\*97$", attendant="^0$")
    assert plan.route("0") == ExtensionTarget("0")
    assert plan.route("*97") == ExtensionTarget("*97")


def test_voicemail(plan: DialPlan) -> None:
    assert plan.route("*97", "1001") == VoicemailTarget(None)
    assert plan.route("*98", "1001") == VoicemailTarget("")  # left empty: the application asks for a mailbox
    assert plan.route("*98 1002", "1001") == VoicemailTarget("1002")
    assert plan.route("*981009", "1001") == NotFound("no such mailbox")


def test_voicemail_pattern_without_mailbox_group() -> None:
    plan = DialPlan({"1001"}.__contains__, voicemail=r"^\*97$|^\*98[0-9]*$")
    assert plan.route("*981001") == VoicemailTarget(None)


def test_attendant_number_and_pattern(plan: DialPlan) -> None:
    assert plan.route("8000", "1001") == AttendantTarget()
    assert plan.route("0", "1001") == AttendantTarget()
    assert plan.route("00", "1001") == NotFound("no route")


def test_attendant_number_from_auto_attendant_only() -> None:
    plan = DialPlan.from_config(parse_config("auto_attendant:\n  extension: '*0'\n", {}))
    assert plan.route("*0") == AttendantTarget()
    assert plan.route("0") == NotFound("no route")


def test_internal_number_that_is_no_extension(plan: DialPlan) -> None:
    assert plan.route("1999", "1001") == NotFound("no such extension")


@pytest.mark.parametrize("dialled", ["999", "12345", "alice", "+4930123", "#", "91003", "1001x"])
def test_no_route(plan: DialPlan, dialled: str) -> None:
    assert plan.route(dialled, "1001") == NotFound("no route")


def test_empty_number(plan: DialPlan) -> None:
    assert plan.route("", "1001") == NotFound("empty number")
    assert plan.route(" - ", "1001") == NotFound("empty number")


def test_patterns_must_match_the_whole_number() -> None:
    plan = DialPlan(lambda n: False, internal="1[0-9]{3}", voicemail=r"\*97", attendant="0")
    assert plan.route("1234") == NotFound("no such extension")
    assert plan.route("91234") == NotFound("no route")
    assert plan.route("*970") == NotFound("no route")
    assert plan.route("10") == NotFound("no route")


def test_defaults_without_dialplan_entries() -> None:
    plan = DialPlan.from_config(parse_config("dialplan:\n  trunk: '^9[0-9]+$'\n", {}))
    assert plan.internal is not None and plan.internal.pattern == DEFAULT_INTERNAL
    assert plan.route("*97") == NotFound("no route")  # voicemail is off unless configured
    assert plan.route("5555") == NotFound("no such extension")


def test_user_patterns_are_kept(plan: DialPlan) -> None:
    assert plan.matches("trunk", "9 0123")
    assert not plan.matches("trunk", "1001")
    assert not plan.matches("absent", "1001")


def test_unauthenticated_callers_reach_nothing_by_default() -> None:
    plan = DialPlan.from_config(parse_config("extensions:\n- {number: 1001, password: a}\n", {}))
    for number in ("1001", "*97", "0", "", "anything"):
        assert not plan.allows_unauthenticated(number)


def test_unauthenticated_allow_list_matches_whole_normalised_number(plan: DialPlan) -> None:
    assert plan.allows_unauthenticated("1003")
    assert plan.allows_unauthenticated("10-03")
    assert plan.allows_unauthenticated("*97")
    assert not plan.allows_unauthenticated("1001")
    assert not plan.allows_unauthenticated("91003")
    assert not plan.allows_unauthenticated("10030")
    assert not plan.allows_unauthenticated("")


def test_route_is_pure_and_repeatable(plan: DialPlan) -> None:
    first = [plan.route(n, "1001") for n in ("2000", "1002", "*97", "0", "1999", "x")]
    second = [plan.route(n, "1001") for n in ("2000", "1002", "*97", "0", "1999", "x")]
    assert first == second
    assert plan.route("2000", "1002").members == ("1001",)  # type: ignore[union-attr]
    assert plan.groups["2000"].members == ("1001", "1002")  # the plan itself is unchanged
