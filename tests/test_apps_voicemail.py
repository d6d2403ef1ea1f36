"""Voicemail scripts: leaving a message and the mailbox menus.

Most tests drive the scripts with `ScriptedSession`: the caller's moves
(keys, pauses, speech, hanging up) are a list consumed whenever the
application waits for the caller, and everything played is kept. Prompts
are fakes whose PCM spells their name, so the assertions read like the
call. The last tests run through the real `EndpointSession` on a
`task.Clock`, with a fake media endpoint, to show the timeouts.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

import pytest
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.task import Clock

from pbx.apps import voicemail
from pbx.apps.session import CallEnded, EndpointSession
from pbx.config import VoicemailConfig
from pbx.media import g711
from pbx.media.recorder import Recorder
from pbx.store.extensions import hash_pin, make_record, verify_pin
from pbx.store.voicemail import VoicemailMessage

# -- the caller, scripted ----------------------------------------------------------------

TIMEOUT = object()  # the caller lets a prompt time out
HANGUP = object()  # the caller hangs up while the application waits


@dataclasses.dataclass
class Speech:
    """What the caller says when the application records."""

    pcm: bytes
    reason: str = "stopped"  # '#' (or a hang-up) stops a recording
    hangup: bool = False  # the caller hangs up to end it


class FakeRecorder:
    def __init__(self, pcm: bytes, reason: str) -> None:
        self.pcm = pcm
        self.reason = reason
        self.duration = len(pcm) / 16000


class ScriptedSession:
    """An `AppSession` whose caller follows a script.

    A move is taken from the script each time the application waits for the
    caller with an empty key buffer: a string is keys pressed, TIMEOUT lets
    the wait expire, HANGUP ends the call, Speech answers `record`.
    """

    def __init__(self, *script: Any, caller: str = "1001", caller_name: str = "Alice", dialled: str = "*97",
                 typed_ahead: str = "", answers: dict[str, bool] | None = None) -> None:
        self.script = list(script)
        self.caller = caller
        self.caller_name = caller_name
        self.dialled = dialled
        self.call_id = "call-1@pbx"
        self.clock = Clock()
        self.buffer = typed_ahead
        self.played: list[bytes] = []
        self.recordings: list[dict[str, Any]] = []
        self.connected: list[str] = []
        self.answers = answers or {}
        self.ended = False
        self.hung_up = False

    def _check(self) -> None:
        if self.ended:
            raise CallEnded()

    def _move(self) -> Any:
        assert self.script, f"the application waits for the caller, the script is over; played {said(self)}"
        return self.script.pop(0)

    async def play(self, pcm: bytes, interruptible: bool = True) -> bool:
        return await self.play_all([pcm], interruptible)

    async def play_all(self, prompts: list[bytes], interruptible: bool = True) -> bool:
        self._check()
        if interruptible and self.buffer:
            return False
        self.played.extend(prompts)
        return True

    async def collect(self, max_digits: int = 1, timeout: float = 5.0, terminators: str = "#",
                      inter_digit_timeout: float = 3.0) -> str:
        typed = ""
        while True:
            self._check()
            while self.buffer:
                digit, self.buffer = self.buffer[0], self.buffer[1:]
                if digit in terminators:
                    return typed
                typed += digit
                if len(typed) >= max_digits:
                    return typed
            move = self._move()
            if move is HANGUP:
                self.ended = True
                raise CallEnded()
            if move is TIMEOUT:
                return typed
            assert isinstance(move, str), f"collect got {move!r}"
            self.buffer += move

    def flush_digits(self) -> None:
        self.buffer = ""

    async def record(self, max_duration: float, silence_timeout: float | None, terminators: str = "#") -> Any:
        self._check()
        self.buffer = ""
        self.recordings.append(
            {"max_duration": max_duration, "silence_timeout": silence_timeout, "terminators": terminators}
        )
        move = self._move()
        if move is HANGUP:
            move = Speech(b"", hangup=True)
        assert isinstance(move, Speech), f"record got {move!r}"
        if move.hangup:
            self.ended = True
        return FakeRecorder(move.pcm, move.reason)

    async def connect(self, number: str) -> bool:
        self._check()
        self.connected.append(number)
        return self.answers.get(number, False)

    def hangup(self) -> None:
        self.hung_up = True
        self.ended = True


class FakePrompts:
    """Prompts whose PCM is their name in brackets."""

    def get(self, name: str) -> bytes:
        return f"[{name}]".encode()

    def number(self, n: str | int) -> list[bytes]:
        return [self.get(f"digit-{d}") for d in str(n)]


def said(session: Any) -> list[str]:
    return [pcm.decode(errors="replace") for pcm in session.played]


def digits(number: str) -> list[str]:
    return [f"[digit-{d}]" for d in number]


def run(coroutine: Any) -> None:
    """Run an application that never waits on anything but the fakes; re-raise what it raised."""
    d = ensureDeferred(coroutine)
    assert d.called, "the application is still waiting"
    failures: list[Any] = []
    d.addErrback(failures.append)
    if failures:
        failures[0].raiseException()


# -- the mailbox store, in memory ------------------------------------------------------------


class FakeStore:
    """`VoicemailStore` in memory (same methods, Deferreds that have fired)."""

    def __init__(self, min_duration: float = 1.0) -> None:
        self.min_duration = min_duration
        self.rows: dict[int, VoicemailMessage] = {}
        self.audio: dict[int, bytes] = {}
        self.greetings: dict[str, bytes] = {}
        self.calls: list[tuple] = []
        self._next = 1
        self.fail_deposit = False

    def add(self, mailbox: str, caller: str, audio: bytes, *, heard: bool = False, call_id: str | None = None,
            caller_name: str = "") -> VoicemailMessage:
        message = VoicemailMessage(
            id=self._next, mailbox=mailbox, caller=caller, caller_name=caller_name, received=1_700_000_000 + self._next,
            duration=len(audio) / 16000, file=f"{mailbox}/{self._next}.wav", heard=heard, saved=False,
            call_id=call_id,
        )
        self._next += 1
        self.rows[message.id] = message
        self.audio[message.id] = audio
        return message

    def deposit(self, mailbox: str, caller: str, caller_name: str, pcm: bytes,
                call_id: str | None = None) -> Deferred:
        self.calls.append(("deposit", mailbox))
        if self.fail_deposit:
            return fail(OSError("disk full"))
        if len(pcm) / 16000 < self.min_duration:
            return succeed(None)
        return succeed(self.add(mailbox, caller, pcm, call_id=call_id, caller_name=caller_name))

    def messages(self, mailbox: str, folder: str | None = None) -> Deferred:
        found = [m for m in self.rows.values() if m.mailbox == mailbox
                 and (folder is None or m.heard == (folder == "old"))]
        return succeed(sorted(found, key=lambda m: m.received))

    def read_audio(self, message: VoicemailMessage) -> Deferred:
        return succeed(self.audio[message.id])

    def update(self, mailbox: str, message_id: int, *, heard: bool | None = None,
               saved: bool | None = None) -> Deferred:
        self.calls.append(("update", message_id, heard, saved))
        message = self.rows.get(message_id)
        if message is None or message.mailbox != mailbox:
            return succeed(None)
        changes = {k: v for k, v in (("heard", heard), ("saved", saved)) if v is not None}
        self.rows[message_id] = dataclasses.replace(message, **changes)
        return succeed(self.rows[message_id])

    def delete(self, mailbox: str, message_id: int) -> Deferred:
        self.calls.append(("delete", message_id))
        message = self.rows.get(message_id)
        if message is None or message.mailbox != mailbox:
            return succeed(False)
        del self.rows[message_id], self.audio[message_id]
        return succeed(True)

    def counts(self, mailbox: str) -> Deferred:
        mine = [m for m in self.rows.values() if m.mailbox == mailbox]
        return succeed((sum(not m.heard for m in mine), sum(m.heard for m in mine)))

    def greeting(self, mailbox: str) -> Deferred:
        return succeed(self.greetings.get(mailbox))

    def save_greeting(self, mailbox: str, pcm: bytes) -> Deferred:
        self.greetings[mailbox] = pcm
        return succeed(None)


SETTINGS = VoicemailConfig()
SPEECH = bytes(2 * 8000 * 3)  # three seconds

EXTENSIONS = {
    "1001": make_record("1001", "Alice", "pbx", "a-secret", voicemail_pin="1234"),
    "1002": make_record("1002", "Bob", "pbx", "b-secret", voicemail_pin="2345"),
    "1003": make_record("1003", "Reception", "pbx", "c-secret"),  # no PIN
}


def deposit(session: ScriptedSession, store: FakeStore, mailbox: str = "1002", settings: Any = SETTINGS) -> None:
    run(voicemail.deposit(session, mailbox=mailbox, store=store, prompts=FakePrompts(), settings=settings,
                          mailbox_name="Bob"))


def access(session: ScriptedSession, store: FakeStore, mailbox: str | None, settings: Any = SETTINGS) -> None:
    run(voicemail.access(session, mailbox=mailbox, store=store, prompts=FakePrompts(), settings=settings,
                         lookup_extension=EXTENSIONS.get))


# -- PINs -----------------------------------------------------------------------------------


def test_verify_pin() -> None:
    stored = hash_pin("2345")
    assert verify_pin(stored, "2345")
    assert not verify_pin(stored, "2346")
    assert not verify_pin(stored, "")
    assert not verify_pin(None, "2345")
    assert not verify_pin("", "")
    assert not verify_pin("pbkdf2_sha256$10000$zz$00", "2345")
    assert not verify_pin("md5$1$00$00", "2345")


# -- leaving a message -------------------------------------------------------------------------


GREETING = ["[vm-person-at-extension]", *digits("1002"), "[vm-not-available]", "[beep]"]


def test_message_ended_with_pound_is_kept_and_confirmed() -> None:
    store = FakeStore()
    session = ScriptedSession(Speech(SPEECH), caller="1001", caller_name="Alice")
    deposit(session, store)
    assert said(session) == [*GREETING, "[vm-message-saved]", "[goodbye]"]
    assert session.recordings == [{"max_duration": 180, "silence_timeout": 5, "terminators": "#"}]
    [message] = store.rows.values()
    assert (message.mailbox, message.caller, message.caller_name, message.call_id) == (
        "1002", "1001", "Alice", "call-1@pbx")
    assert store.audio[message.id] == SPEECH
    assert not message.heard


def test_message_left_by_hanging_up_is_kept() -> None:
    store = FakeStore()
    session = ScriptedSession(Speech(SPEECH, hangup=True))
    with pytest.raises(CallEnded):
        deposit(session, store)
    assert said(session) == GREETING
    [message] = store.rows.values()
    assert store.audio[message.id] == SPEECH


def test_hanging_up_during_the_greeting_leaves_nothing() -> None:
    store = FakeStore()
    session = ScriptedSession()
    session.ended = True  # gone before the greeting finished
    with pytest.raises(CallEnded):
        deposit(session, store)
    assert store.rows == {}
    assert session.recordings == []


def test_mailbox_greeting_replaces_the_default_one() -> None:
    store = FakeStore()
    store.greetings["1002"] = b"[bob's own greeting]"
    session = ScriptedSession(Speech(SPEECH))
    deposit(session, store)
    assert said(session)[:2] == ["[bob's own greeting]", "[beep]"]
    assert "[vm-person-at-extension]" not in said(session)
    assert len(store.rows) == 1


def test_a_key_during_the_greeting_skips_to_the_beep() -> None:
    store = FakeStore()
    session = ScriptedSession(Speech(SPEECH), typed_ahead="#")
    deposit(session, store)
    assert said(session)[0] == "[beep]"
    assert len(store.rows) == 1


def test_too_short_a_message_is_not_confirmed() -> None:
    store = FakeStore()
    session = ScriptedSession(Speech(bytes(1600)))  # 0.1 s: hung up at the beep, then pressed '#'
    deposit(session, store)
    assert said(session) == [*GREETING, "[goodbye]"]
    assert store.rows == {}


def test_silence_timeout_zero_means_off_and_limits_come_from_settings() -> None:
    settings = dataclasses.replace(SETTINGS, silence_timeout=0, max_message_duration=60)
    session = ScriptedSession(Speech(SPEECH))
    deposit(session, FakeStore(), settings=settings)
    assert session.recordings == [{"max_duration": 60, "silence_timeout": None, "terminators": "#"}]


def test_a_store_failure_is_not_announced_as_saved() -> None:
    store = FakeStore()
    store.fail_deposit = True
    session = ScriptedSession(Speech(SPEECH))
    deposit(session, store)
    assert said(session) == [*GREETING, "[goodbye]"]


# -- logging in ----------------------------------------------------------------------------------


def test_pin_opens_another_mailbox() -> None:
    store = FakeStore()
    store.add("1002", "1003", b"<m1>")
    store.add("1002", "1003", b"<m2>", heard=True)
    session = ScriptedSession("2345#", "#", caller="1001", dialled="*981002")
    access(session, store, "1002")
    assert said(session) == [
        "[vm-enter-pin]",
        "[vm-you-have]", "[digit-1]", "[vm-new-message]", "[vm-and]", "[digit-1]", "[vm-saved-message]",
        "[vm-main-menu]", "[goodbye]",
    ]
    assert session.hung_up


def test_wrong_pin_three_times_hangs_up() -> None:
    store = FakeStore()
    store.add("1002", "1003", b"<m1>")
    session = ScriptedSession("1111#", "2222#", TIMEOUT, caller="1001")
    access(session, store, "1002")
    assert said(session) == ["[vm-enter-pin]", "[vm-invalid-pin]"] * 3 + ["[goodbye]"]
    assert session.hung_up
    assert store.calls == []  # nothing of the mailbox was touched


def test_pin_attempts_come_from_settings() -> None:
    session = ScriptedSession("1111#", "2345#", "#", caller="1001")
    access(session, FakeStore(), "1002", settings=dataclasses.replace(SETTINGS, pin_attempts=1))
    assert said(session) == ["[vm-enter-pin]", "[vm-invalid-pin]", "[goodbye]"]
    assert session.script == ["2345#", "#"]


def test_own_mailbox_without_pin_opens_at_once() -> None:
    session = ScriptedSession("#", caller="1003")
    access(session, FakeStore(), None)
    assert said(session)[:1] == ["[vm-you-have]"]
    assert "[vm-enter-pin]" not in said(session)


def test_own_mailbox_with_a_pin_asks_for_it() -> None:
    session = ScriptedSession("1234#", "#", caller="1001")
    access(session, FakeStore(), None)
    assert said(session)[:2] == ["[vm-enter-pin]", "[vm-you-have]"]


def test_someone_elses_mailbox_without_pin_is_refused() -> None:
    session = ScriptedSession("#", "1234#", "0000#", caller="1001")
    access(session, FakeStore(), "1003")
    assert said(session) == ["[vm-enter-pin]", "[vm-invalid-pin]"] * 3 + ["[goodbye]"]


def test_empty_star98_asks_for_the_mailbox() -> None:
    session = ScriptedSession("1002#", "2345#", "#", caller="1001", dialled="*98")
    access(session, FakeStore(), "")
    assert said(session)[:3] == ["[vm-enter-mailbox]", "[vm-enter-pin]", "[vm-you-have]"]


def test_unknown_mailbox_is_refused_like_a_wrong_pin() -> None:
    session = ScriptedSession("4711#", "2345#", "9#", "1#", TIMEOUT, TIMEOUT, caller="1001")
    access(session, FakeStore(), "")
    assert said(session) == ["[vm-enter-mailbox]", "[vm-enter-pin]", "[vm-invalid-pin]"] * 3 + ["[goodbye]"]


def test_caller_without_a_mailbox_is_asked_which_one() -> None:
    session = ScriptedSession("1002#", "2345#", "#", caller="anonymous")
    access(session, FakeStore(), None)
    assert said(session)[:3] == ["[vm-enter-mailbox]", "[vm-enter-pin]", "[vm-you-have]"]


def test_hanging_up_while_the_pin_is_asked() -> None:
    session = ScriptedSession("23", HANGUP)
    with pytest.raises(CallEnded):
        access(session, FakeStore(), "1002")


# -- the menus --------------------------------------------------------------------------------------


def opened(*moves: Any) -> ScriptedSession:
    """Alice in her own mailbox (1003 has no PIN), then `moves`."""
    return ScriptedSession(*moves, caller="1003")


def after_login(session: ScriptedSession) -> list[str]:
    names = said(session)
    return names[names.index("[vm-main-menu]"):]


def test_new_messages_play_in_order_and_become_heard() -> None:
    store = FakeStore()
    first = store.add("1003", "1001", b"<first>")
    second = store.add("1003", "1002", b"<second>")
    other = store.add("1001", "1002", b"<not hers>")
    session = opened("1", "6", "6", "#")
    access(session, store, None)
    assert after_login(session) == [
        "[vm-main-menu]",
        "<first>", "[vm-message-menu]",
        "<second>", "[vm-message-menu]",
        "[vm-no-more-messages]", "[vm-main-menu]", "[goodbye]",
    ]
    assert store.rows[first.id].heard and store.rows[second.id].heard
    assert not store.rows[other.id].heard


def test_count_of_no_messages() -> None:
    session = opened("1", "#")
    access(session, FakeStore(), None)
    assert said(session) == [
        "[vm-you-have]", "[vm-no]", "[vm-new-messages]", "[vm-and]", "[vm-no]", "[vm-saved-messages]",
        "[vm-main-menu]", "[vm-you-have]", "[vm-no]", "[vm-new-messages]", "[vm-main-menu]", "[goodbye]",
    ]


def test_many_messages_are_counted_in_digits() -> None:
    store = FakeStore()
    for n in range(12):
        store.add("1003", "1001", f"<{n}>".encode())
    session = opened("#")
    access(session, store, None)
    assert said(session)[:4] == ["[vm-you-have]", "[digit-1]", "[digit-2]", "[vm-new-messages]"]


def test_hanging_up_during_a_message_leaves_it_new() -> None:
    store = FakeStore()
    message = store.add("1003", "1001", b"<m>")
    session = opened("1")
    played = session.play

    async def hang_up_while_playing(pcm: bytes, interruptible: bool = True) -> bool:
        if pcm == b"<m>":
            session.ended = True
            raise CallEnded()
        return await played(pcm, interruptible)

    session.play = hang_up_while_playing  # type: ignore[method-assign]
    with pytest.raises(CallEnded):
        access(session, store, None)
    assert not store.rows[message.id].heard


def test_delete_removes_the_message_and_goes_on() -> None:
    store = FakeStore()
    first = store.add("1003", "1001", b"<first>")
    second = store.add("1003", "1002", b"<second>")
    session = opened("1", "7", "*", "#")
    access(session, store, None)
    assert after_login(session) == [
        "[vm-main-menu]", "<first>", "[vm-message-menu]", "[vm-message-deleted]",
        "<second>", "[vm-message-menu]", "[vm-main-menu]", "[goodbye]",
    ]
    assert first.id not in store.rows
    assert second.id in store.rows and store.rows[second.id].heard


def test_deleting_the_last_message() -> None:
    store = FakeStore()
    store.add("1003", "1001", b"<only>")
    session = opened("1", "7", "#")
    access(session, store, None)
    assert after_login(session) == [
        "[vm-main-menu]", "<only>", "[vm-message-menu]", "[vm-message-deleted]", "[vm-no-more-messages]",
        "[vm-main-menu]", "[goodbye]",
    ]
    assert store.rows == {}


def test_save_keeps_the_message() -> None:
    store = FakeStore()
    message = store.add("1003", "1001", b"<m>")
    session = opened("1", "9", "#")
    access(session, store, None)
    assert after_login(session) == [
        "[vm-main-menu]", "<m>", "[vm-message-menu]", "[vm-message-saved]", "[vm-no-more-messages]",
        "[vm-main-menu]", "[goodbye]",
    ]
    assert store.rows[message.id].saved and store.rows[message.id].heard


def test_replay_previous_and_back_to_the_menu() -> None:
    store = FakeStore()
    store.add("1003", "1001", b"<first>")
    store.add("1003", "1002", b"<second>")
    session = opened("1", "4", "6", "4", "5", "*", "#")
    access(session, store, None)
    assert after_login(session) == [
        "[vm-main-menu]",
        "<first>", "[vm-message-menu]",
        "[vm-no-more-messages]", "[vm-message-menu]",  # 4: there is no previous one
        "<second>", "[vm-message-menu]",  # 6
        "<first>", "[vm-message-menu]",  # 4
        "<first>", "[vm-message-menu]",  # 5: replay
        "[vm-main-menu]", "[goodbye]",  # *, then #
    ]
    heard_updates = [c for c in store.calls if c[0] == "update"]
    assert len(heard_updates) == 2  # each message marked heard once


def test_saved_messages_are_the_heard_ones() -> None:
    store = FakeStore()
    store.add("1003", "1001", b"<new>")
    store.add("1003", "1001", b"<old>", heard=True)
    session = opened("2", "6", "#")
    access(session, store, None)
    assert after_login(session) == [
        "[vm-main-menu]", "<old>", "[vm-message-menu]", "[vm-no-more-messages]", "[vm-main-menu]", "[goodbye]",
    ]


def test_invalid_key_says_so_and_repeats_the_menu() -> None:
    session = opened("8", "*", "#")
    access(session, FakeStore(), None)
    assert after_login(session) == [
        "[vm-main-menu]", "[invalid-option]", "[vm-main-menu]", "[vm-main-menu]", "[goodbye]",
    ]


def test_silence_repeats_the_menu_then_hangs_up() -> None:
    session = opened(TIMEOUT, TIMEOUT, TIMEOUT)
    access(session, FakeStore(), None)
    assert after_login(session) == ["[vm-main-menu]"] * voicemail.MENU_ATTEMPTS + ["[goodbye]"]
    assert session.hung_up


def test_silence_in_the_message_menu_also_ends_the_call() -> None:
    store = FakeStore()
    store.add("1003", "1001", b"<m>")
    session = opened("1", TIMEOUT, TIMEOUT, TIMEOUT)
    access(session, store, None)
    assert after_login(session)[-2:] == ["[vm-message-menu]", "[goodbye]"]
    assert session.hung_up


def test_typing_ahead_skips_the_menus() -> None:
    store = FakeStore()
    message = store.add("1003", "1001", b"<m>")
    session = opened("19#")
    access(session, store, None)
    assert "[vm-message-menu]" not in said(session)
    assert store.rows[message.id].saved


# -- the greeting ---------------------------------------------------------------------------------------


def test_record_greeting_and_keep_it() -> None:
    store = FakeStore()
    session = opened("3", Speech(SPEECH), "1", "#")
    access(session, store, None)
    assert after_login(session) == [
        "[vm-main-menu]", "[vm-record-greeting]", "[beep]", SPEECH.decode(), "[vm-greeting-review]",
        "[vm-greeting-saved]", "[vm-main-menu]", "[goodbye]",
    ]
    assert session.recordings == [{"max_duration": 60, "silence_timeout": 5, "terminators": "#"}]
    assert store.greetings["1003"] == SPEECH


def test_record_greeting_again_then_keep_the_second() -> None:
    store = FakeStore()
    second = b"\x01\x00" * 16000
    session = opened("3", Speech(SPEECH), "2", Speech(second), "1", "#")
    access(session, store, None)
    assert store.greetings["1003"] == second
    assert len(session.recordings) == 2


def test_cancelled_greeting_is_not_kept() -> None:
    store = FakeStore()
    store.greetings["1003"] = b"<old greeting>"
    session = opened("3", Speech(SPEECH), "*", "#")
    access(session, store, None)
    assert store.greetings["1003"] == b"<old greeting>"


def test_hanging_up_while_recording_a_greeting_keeps_the_old_one() -> None:
    store = FakeStore()
    store.greetings["1003"] = b"<old greeting>"
    session = opened("3", Speech(SPEECH, hangup=True))
    with pytest.raises(CallEnded):
        access(session, store, None)
    assert store.greetings["1003"] == b"<old greeting>"


def test_empty_greeting_is_refused() -> None:
    store = FakeStore()
    session = opened("3", Speech(b""), "#")
    access(session, store, None)
    assert "1003" not in store.greetings
    assert "[invalid-option]" in said(session)


# -- through the real EndpointSession, on a clock ------------------------------------------------------------


class FakeEndpoint:
    """A `MediaEndpoint` without sockets: plays take their real time on the clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.on_dtmf: Any = None
        self.callback_errors: list[Exception] = []
        self.played: list[bytes] = []
        self.recorder: Recorder | None = None
        self._queue: list[tuple[Deferred, Any]] = []
        self._busy_until = 0.0

    def play(self, pcm: bytes, loop: bool = False) -> Deferred:
        self.stop_playing()
        return self.play_then(pcm)

    def play_then(self, pcm: bytes, loop: bool = False) -> Deferred:
        now = self.clock.seconds()
        end = max(now, self._busy_until) + len(pcm) / 16000
        self._busy_until = end
        d: Deferred = Deferred()
        self._queue.append((d, self.clock.callLater(end - now, d.callback, True)))
        self.played.append(pcm)
        return d

    def stop_playing(self) -> None:
        queue, self._queue = self._queue, []
        for d, call in queue:
            if call.active():
                call.cancel()
                d.callback(False)
        self._busy_until = self.clock.seconds()

    def record(self, **options: Any) -> Recorder:
        self.recorder = Recorder(**options)
        return self.recorder

    def press(self, digit: str) -> None:
        """A key press, delivered like `MediaEndpoint._digit`: an error in the callback is kept, not raised."""
        try:
            self.on_dtmf(digit)
        except Exception as error:
            self.callback_errors.append(error)

    def speak(self, seconds: float) -> None:
        """The caller talks into an open recording: RTP PCMU, 20 ms a packet."""
        tone = struct.pack("<160h", *([4000, -4000] * 80))
        assert self.recorder is not None
        for n in range(int(seconds * 50)):
            self.recorder.receive(0, n, 160 * n, 0x1234, g711.encode_ulaw(tone))


def wait(clock: Clock, seconds: float) -> None:
    """Let `seconds` pass, in steps, so that what each step schedules also runs."""
    steps = int(seconds / 0.05)
    clock.pump([0.05] * steps)


def endpoint_session(caller: str = "1001",
                     connect: Any = None) -> tuple[EndpointSession, FakeEndpoint, Clock, list[str]]:
    clock = Clock()
    endpoint = FakeEndpoint(clock)
    hangups: list[str] = []
    session = EndpointSession(endpoint, clock, caller=caller, caller_name="", dialled="1002", connect=connect,
                              hangup=lambda: hangups.append("bye"))
    return session, endpoint, clock, hangups


def test_real_session_message_kept_when_the_caller_hangs_up() -> None:
    session, endpoint, clock, _ = endpoint_session()
    store = FakeStore()
    d = ensureDeferred(voicemail.deposit(session, mailbox="1002", store=store, prompts=FakePrompts(),
                                         settings=SETTINGS))
    wait(clock, 1)  # the (short) fake greeting and the beep
    assert endpoint.recorder is not None and not endpoint.recorder.stopped
    endpoint.speak(4.0)
    session.ended()  # BYE from the caller
    failures: list[Any] = []
    d.addErrback(failures.append)
    assert d.called and failures and failures[0].check(CallEnded)
    [message] = store.rows.values()
    assert message.duration == pytest.approx(4.0, abs=0.05)


def test_real_session_message_ended_by_pound() -> None:
    session, endpoint, clock, _ = endpoint_session()
    store = FakeStore()
    d = ensureDeferred(voicemail.deposit(session, mailbox="1002", store=store, prompts=FakePrompts(),
                                         settings=SETTINGS))
    wait(clock, 1)
    endpoint.speak(2.0)
    endpoint.press("#")
    assert len(store.rows) == 1
    assert not d.called  # saying "message saved, goodbye"
    wait(clock, 1)
    assert d.called and d.result is None
    assert endpoint.played[-2:] == [b"[vm-message-saved]", b"[goodbye]"]


def test_real_session_menu_timeouts_end_the_call() -> None:
    session, endpoint, clock, hangups = endpoint_session(caller="1003")
    d = ensureDeferred(voicemail.access(session, mailbox=None, store=FakeStore(), prompts=FakePrompts(),
                                        settings=SETTINGS, lookup_extension=EXTENSIONS.get))
    wait(clock, 1)
    assert endpoint.played.count(b"[vm-main-menu]") == 1
    wait(clock, voicemail.MENU_TIMEOUT - 1.5)
    assert endpoint.played.count(b"[vm-main-menu]") == 1  # still waiting for a key
    for _ in range(voicemail.MENU_ATTEMPTS):
        wait(clock, voicemail.MENU_TIMEOUT + 1)
    assert endpoint.played.count(b"[vm-main-menu]") == voicemail.MENU_ATTEMPTS
    assert endpoint.played[-1] == b"[goodbye]"
    assert d.called and hangups == ["bye"]


def test_real_session_pin_by_dtmf() -> None:
    session, endpoint, clock, hangups = endpoint_session(caller="1001")
    store = FakeStore()
    store.add("1002", "1001", b"<m>")
    d = ensureDeferred(voicemail.access(session, mailbox="1002", store=store, prompts=FakePrompts(),
                                        settings=SETTINGS, lookup_extension=EXTENSIONS.get))
    wait(clock, 1)
    assert endpoint.played == [b"[vm-enter-pin]"]
    for key in "2345#":
        endpoint.press(key)
    wait(clock, 1)
    assert endpoint.played[1] == b"[vm-you-have]"
    endpoint.press("#")
    wait(clock, 1)
    assert d.called and hangups == ["bye"]
