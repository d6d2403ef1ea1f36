"""The auto attendant script, and the application router that binds it (and voicemail) to a call."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from twisted.internet.defer import ensureDeferred, succeed

from pbx.apps import attendant as attendant_app
from pbx.apps.prompts import Prompts
from pbx.apps.router import Applications
from pbx.apps.session import CallEnded
from pbx.config import AutoAttendantConfig, Config, MusicOnHoldConfig, VoicemailConfig
from pbx.media.wav import write_wav
from test_apps_voicemail import (
    EXTENSIONS,
    HANGUP,
    SPEECH,
    TIMEOUT,
    FakePrompts,
    FakeStore,
    ScriptedSession,
    Speech,
    endpoint_session,
    run,
    said,
    wait,
)

SETTINGS = AutoAttendantConfig(extension="0", menu_options={"1": "2000", "2": "1002", "0": "1003"},
                               timeout=5, max_retries=2)


def attendant(session: ScriptedSession, settings: AutoAttendantConfig = SETTINGS,
              is_reachable: Any = None) -> None:
    run(attendant_app.attendant(session, settings=settings, prompts=FakePrompts(), is_reachable=is_reachable))


def caller(*moves: Any, answers: dict[str, bool] | None = None) -> ScriptedSession:
    return ScriptedSession(*moves, caller="+4930123456", dialled="0", answers=answers)


def test_menu_key_connects_its_number() -> None:
    session = caller("2", answers={"1002": True})
    attendant(session)
    assert session.connected == ["1002"]
    assert said(session) == ["[aa-welcome]"]
    assert not session.hung_up  # handed over, not ended


def test_a_key_during_the_greeting_is_taken() -> None:
    session = ScriptedSession(caller="1001", typed_ahead="1", answers={"2000": True})
    attendant(session)
    assert session.connected == ["2000"]
    assert said(session) == []  # the greeting was cut short at once


def test_invalid_key_says_so_and_offers_the_menu_again() -> None:
    session = caller("*", "2", answers={"1002": True})
    attendant(session)
    assert said(session) == ["[aa-welcome]", "[invalid-option]", "[aa-welcome]"]
    assert session.connected == ["1002"]


def test_unreachable_number_is_announced_and_the_menu_repeated() -> None:
    session = caller("2", "1", answers={"2000": True})  # 1002 does not answer
    attendant(session)
    assert said(session) == ["[aa-welcome]", "[aa-unavailable]", "[aa-welcome]"]
    assert session.connected == ["1002", "2000"]


def test_is_reachable_screens_before_ringing() -> None:
    session = caller("2", "1", answers={"1002": True, "2000": True})
    attendant(session, is_reachable=lambda number: number != "1002")
    assert session.connected == ["2000"]
    assert said(session)[:2] == ["[aa-welcome]", "[aa-unavailable]"]


def test_dial_by_extension() -> None:
    session = caller("1001#", answers={"1001": True})
    attendant(session, dataclasses.replace(SETTINGS, menu_options={"2": "1002"}))
    assert session.connected == ["1001"]


def test_dial_by_extension_ends_after_a_pause_or_six_digits() -> None:
    session = caller("4", "7", TIMEOUT, answers={"47": True})
    attendant(session)
    assert session.connected == ["47"]
    session = caller("12345678", answers={"123456": True})
    attendant(session, dataclasses.replace(SETTINGS, menu_options={}))
    assert session.connected == ["123456"]


def test_menu_option_wins_over_an_extension_starting_with_it() -> None:
    session = caller("1002#", answers={"2000": True, "1002": True})
    attendant(session)
    assert session.connected == ["2000"]


def test_without_dial_by_extension_other_digits_are_invalid() -> None:
    session = caller("5", "2", answers={"1002": True})
    attendant(session, dataclasses.replace(SETTINGS, dial_by_extension=False))
    assert said(session)[:2] == ["[aa-welcome]", "[invalid-option]"]
    assert session.connected == ["1002"]


def test_star_in_an_extension_number_is_invalid() -> None:
    session = caller("4*7#", TIMEOUT, TIMEOUT)
    attendant(session)
    assert session.connected == []
    assert said(session)[1] == "[invalid-option]"


def test_the_attendant_does_not_dial_itself() -> None:
    session = caller("0#", TIMEOUT, TIMEOUT)
    attendant(session, dataclasses.replace(SETTINGS, menu_options={}))
    assert session.connected == []


def test_timeouts_go_to_the_operator() -> None:
    session = caller(TIMEOUT, TIMEOUT, TIMEOUT, answers={"1003": True})
    attendant(session, dataclasses.replace(SETTINGS, operator_extension="1003"))
    assert said(session) == ["[aa-welcome]"] * 3  # max_retries = 2: three tries
    assert session.connected == ["1003"]
    assert not session.hung_up


def test_invalid_keys_count_towards_the_retries() -> None:
    session = caller("*", TIMEOUT, "#", answers={"1003": True})
    attendant(session, dataclasses.replace(SETTINGS, operator_extension="1003"))
    assert session.connected == ["1003"]


def test_no_operator_means_goodbye() -> None:
    session = caller(TIMEOUT, TIMEOUT, TIMEOUT)
    attendant(session)
    assert said(session)[-1] == "[goodbye]"
    assert session.hung_up and session.connected == []


def test_operator_not_answering_means_goodbye() -> None:
    session = caller(TIMEOUT, answers={"1003": False})
    attendant(session, dataclasses.replace(SETTINGS, max_retries=0, operator_extension="1003"))
    assert session.connected == ["1003"]
    assert said(session) == ["[aa-welcome]", "[goodbye]"]
    assert session.hung_up


def test_caller_hanging_up_ends_the_attendant() -> None:
    session = caller(HANGUP)
    with pytest.raises(CallEnded):
        attendant(session)
    assert session.connected == []


def test_greeting_is_a_prompt_name_or_a_path(tmp_path) -> None:
    path = tmp_path / "acme.wav"
    write_wav(path, SPEECH[:8000], sync=False)
    session = caller("2", answers={"1002": True})
    run(attendant_app.attendant(session, settings=dataclasses.replace(SETTINGS, greeting=str(path)),
                                prompts=Prompts(), is_reachable=None))
    assert session.played == [SPEECH[:8000]]


def test_real_session_timeouts_reach_the_operator() -> None:
    connected: list[str] = []

    def connect(number: str):
        connected.append(number)
        return succeed(True)

    session, endpoint, clock, hangups = endpoint_session(caller="+4930123456", connect=connect)
    prompts = Prompts()
    settings = dataclasses.replace(SETTINGS, operator_extension="1003", timeout=4, max_retries=1)
    d = ensureDeferred(attendant_app.attendant(session, settings=settings, prompts=prompts))
    greeting = len(prompts.get("aa-welcome")) / 16000
    wait(clock, greeting + 3.5)
    assert connected == [] and endpoint.played == [prompts.get("aa-welcome")]
    wait(clock, 1)  # the first timeout: the greeting again
    assert len(endpoint.played) == 2
    wait(clock, greeting + 4.5)
    assert connected == ["1003"]
    assert d.called and hangups == []


def test_real_session_dial_by_extension_with_inter_digit_timeout() -> None:
    connected: list[str] = []
    session, endpoint, clock, _ = endpoint_session(
        caller="+4930123456", connect=lambda number: (connected.append(number), succeed(True))[1])
    d = ensureDeferred(attendant_app.attendant(session, settings=SETTINGS, prompts=FakePrompts()))
    endpoint.press("4")  # during the greeting: cuts it short
    wait(clock, 1)
    endpoint.press("7")
    wait(clock, attendant_app.INTER_DIGIT_TIMEOUT - 0.5)
    assert connected == []
    wait(clock, 1)
    assert connected == ["47"] and d.called


def test_real_session_barge_in_raises_nothing_in_the_dtmf_callback() -> None:
    session, endpoint, clock, _ = endpoint_session(connect=lambda number: succeed(True))
    ensureDeferred(attendant_app.attendant(session, settings=SETTINGS, prompts=FakePrompts()))
    endpoint.press("2")
    assert endpoint.callback_errors == []


# -- the router -----------------------------------------------------------------------------------------


def applications(**sections: Any) -> Applications:
    config = dataclasses.replace(Config(extensions=()), **sections)
    return Applications(config, FakeStore(), EXTENSIONS.get, FakePromptsWithPreload())


class FakePromptsWithPreload(FakePrompts):
    def __init__(self) -> None:
        self.preloaded: list[str] = []

    def preload(self, *names: str) -> None:
        self.preloaded.extend(names)


def test_router_voicemail_only_for_extensions_and_when_enabled() -> None:
    apps = applications()
    assert apps.voicemail_enabled("1002")
    assert not apps.voicemail_enabled("4711")
    assert not applications(voicemail=VoicemailConfig(enabled=False)).voicemail_enabled("1002")


def test_router_deposit_runs_voicemail_and_a_hang_up_is_a_normal_end() -> None:
    apps = applications()
    session = ScriptedSession(Speech(SPEECH, hangup=True), caller="1001")
    run(apps.deposit("1002")(session))  # no CallEnded escapes
    [message] = apps.store.rows.values()
    assert message.mailbox == "1002"


def test_router_access_to_own_mailbox() -> None:
    apps = applications()
    session = ScriptedSession("1234#", "#", caller="1001")
    run(apps.access(None)(session))
    assert said(session)[:2] == ["[vm-enter-pin]", "[vm-you-have]"]
    assert session.hung_up


def test_router_attendant_only_when_configured() -> None:
    assert applications().attendant() is None
    apps = applications(auto_attendant=SETTINGS)
    session = caller("2", answers={"1002": True})
    run(apps.attendant()(session))
    assert session.connected == ["1002"]
    assert "aa-welcome" in apps.prompts.preloaded and "aa-unavailable" in apps.prompts.preloaded


def test_router_music_on_hold(tmp_path) -> None:
    assert applications(music_on_hold=MusicOnHoldConfig(enabled=False)).music_on_hold() is None
    apps = applications()
    assert apps.music_on_hold() == b"[moh]"
    write_wav(tmp_path / "b.wav", b"\x02\x00" * 800, sync=False)
    write_wav(tmp_path / "a.wav", b"\x01\x00" * 800, sync=False)
    (tmp_path / "c.wav").write_bytes(b"not a wav")
    apps = applications(music_on_hold=MusicOnHoldConfig(directory=str(tmp_path)))
    music = apps.music_on_hold()
    assert music == b"\x01\x00" * 800 + b"\x02\x00" * 800  # name order, the broken file skipped
    assert apps.music_on_hold() is music  # read once
    empty = tmp_path / "empty"
    empty.mkdir()
    assert applications(music_on_hold=MusicOnHoldConfig(directory=str(empty))).music_on_hold() == b"[moh]"
