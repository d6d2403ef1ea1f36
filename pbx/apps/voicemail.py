"""Voicemail: leaving a message (`deposit`) and listening to a mailbox (`access`).

Both are applications (see `pbx.apps.session`): they talk to the caller
through an `AppSession` and keep messages in a `VoicemailStore`
(`pbx.apps.mailbox`); nothing here knows about SIP.

The mailbox menus, as the prompts say them (prompts/README.md):

- main menu: 1 new messages, 2 saved messages (the ones already heard),
  3 record the greeting, * this menu again, # end the call;
- after each message: 5 replay, 6 next, 4 previous, 7 delete, 9 save
  (keep it), * back to the main menu. Delete and save go on to the next
  message.

A menu that gets no valid key `MENU_ATTEMPTS` times in a row ends the call
with "goodbye": a caller who walked away does not hold a line forever.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from pbx.apps.session import AppSession
from pbx.store.extensions import ExtensionRecord, verify_pin

__all__ = ["deposit", "access", "PROMPTS", "MENU_ATTEMPTS", "MENU_TIMEOUT"]

log = Logger(namespace="pbx.apps.voicemail")

#: Seconds to wait for a menu key once the menu has been said.
MENU_TIMEOUT = 6.0
#: Times a menu is offered without a valid key before the call ends.
MENU_ATTEMPTS = 3
#: Seconds to wait for the first digit of a PIN or mailbox, and between digits.
ENTRY_TIMEOUT = 10.0
INTER_DIGIT_TIMEOUT = 5.0
MAX_ENTRY_DIGITS = 16

#: Every prompt these scripts say (read at start-up, so a missing one shows in the log early).
PROMPTS = (
    "beep", "goodbye", "invalid-option", *(f"digit-{d}" for d in range(10)),
    "vm-person-at-extension", "vm-not-available", "vm-enter-mailbox", "vm-enter-pin", "vm-invalid-pin",
    "vm-you-have", "vm-no", "vm-and", "vm-new-message", "vm-new-messages", "vm-saved-message",
    "vm-saved-messages", "vm-main-menu", "vm-message-menu", "vm-no-more-messages", "vm-message-deleted",
    "vm-message-saved", "vm-record-greeting", "vm-greeting-review", "vm-greeting-saved",
)


class _GiveUp(Exception):
    """The caller stopped answering the menus."""


async def _choose(session: AppSession, prompts: Any, menu: list[bytes], keys: str) -> str:
    """Say `menu` until the caller presses one of `keys`; _GiveUp after MENU_ATTEMPTS failures.

    The menu is interruptible, so a caller who knows it can press ahead.
    """
    for _ in range(MENU_ATTEMPTS):
        await session.play_all(menu)
        key = await session.collect(1, timeout=MENU_TIMEOUT, terminators="")
        if key and key in keys:
            return key
        if key:
            session.flush_digits()
            await session.play(prompts.get("invalid-option"))
    raise _GiveUp()


# -- leaving a message -------------------------------------------------------------------


async def deposit(session: AppSession, *, mailbox: str, store: Any, prompts: Any, settings: Any,
                  mailbox_name: str = "") -> None:
    """Greet the caller for `mailbox`, record after the beep, keep the message.

    The message is kept however the recording ends: '#', silence, the
    maximum duration or (the usual way) the caller hanging up. Only after it
    has been stored may a hang-up end the application.
    """
    greeting = await store.greeting(mailbox)
    if greeting:
        await session.play(greeting)
    else:
        await session.play_all(
            [prompts.get("vm-person-at-extension"), *prompts.number(mailbox), prompts.get("vm-not-available")]
        )
    session.flush_digits()  # a key during the greeting skips it, nothing more
    await session.play(prompts.get("beep"), interruptible=False)
    recorder = await session.record(
        max_duration=settings.max_message_duration,
        silence_timeout=settings.silence_timeout or None,
        terminators="#",
    )
    try:
        message = await store.deposit(
            mailbox, session.caller, session.caller_name, recorder.pcm, call_id=getattr(session, "call_id", None)
        )
    except Exception:
        log.failure("voicemail for mailbox {mailbox} ({name}) from {caller} could not be stored",
                    mailbox=mailbox, name=mailbox_name, caller=session.caller)
        message = None
    else:
        log.debug("voicemail recording for mailbox {mailbox} from {caller}: {duration:.1f} s, ended by {reason}, "
                  "kept: {kept}", mailbox=mailbox, caller=session.caller, duration=recorder.duration,
                  reason=recorder.reason, kept=message is not None)
    # From here on a hang-up (CallEnded) costs nothing: the store has had the recording.
    if message is not None:
        await session.play_all([prompts.get("vm-message-saved"), prompts.get("goodbye")], interruptible=False)
    else:
        await session.play(prompts.get("goodbye"), interruptible=False)


# -- listening to a mailbox ----------------------------------------------------------------


async def access(session: AppSession, *, mailbox: str | None, store: Any, prompts: Any, settings: Any,
                 lookup_extension: Callable[[str], ExtensionRecord | None]) -> None:
    """Log the caller in to a mailbox, then run the mailbox menu.

    `mailbox` None is the caller's own mailbox (asked for when the caller is
    no extension); "" asks for the mailbox number. The PIN is asked unless
    the caller reaches their own mailbox and it has no PIN: the caller is
    already authenticated by SIP digest. Someone else's mailbox without a
    PIN cannot be opened from a phone.
    """
    if mailbox is None:
        mailbox = session.caller if lookup_extension(session.caller) is not None else ""
    try:
        opened = await _login(session, mailbox, prompts, settings, lookup_extension)
        if opened is not None:
            await _Mailbox(session, opened, store, prompts, settings).run()
    except _GiveUp:
        pass
    await session.play(prompts.get("goodbye"), interruptible=False)
    session.hangup()


async def _login(session: AppSession, mailbox: str, prompts: Any, settings: Any,
                 lookup_extension: Callable[[str], ExtensionRecord | None]) -> str | None:
    """The mailbox the caller proved to own, or None after `settings.pin_attempts` failures.

    A mailbox that does not exist is asked for a PIN like any other and
    refused like a wrong PIN, so the menu does not reveal which numbers
    have mailboxes.
    """
    for _ in range(max(1, settings.pin_attempts)):
        box = mailbox
        if not box:
            await session.play(prompts.get("vm-enter-mailbox"))
            box = await session.collect(MAX_ENTRY_DIGITS, timeout=ENTRY_TIMEOUT, terminators="#",
                                        inter_digit_timeout=INTER_DIGIT_TIMEOUT)
        record = lookup_extension(box) if box else None
        if record is not None and box == session.caller and not record.voicemail_pin_hash:
            log.info("voicemail: {caller} opened own mailbox (no PIN set)", caller=session.caller)
            return box
        await session.play(prompts.get("vm-enter-pin"))
        pin = await session.collect(MAX_ENTRY_DIGITS, timeout=ENTRY_TIMEOUT, terminators="#",
                                    inter_digit_timeout=INTER_DIGIT_TIMEOUT)
        if record is not None and pin and verify_pin(record.voicemail_pin_hash, pin):
            log.info("voicemail: {caller} opened mailbox {mailbox}", caller=session.caller, mailbox=box)
            return box
        log.warn("voicemail: login to mailbox {mailbox} from {caller} refused", mailbox=box, caller=session.caller)
        session.flush_digits()
        await session.play(prompts.get("vm-invalid-pin"), interruptible=False)
    return None


class _Mailbox:
    """The menus of one opened mailbox."""

    def __init__(self, session: AppSession, mailbox: str, store: Any, prompts: Any, settings: Any) -> None:
        self.session = session
        self.mailbox = mailbox
        self.store = store
        self.prompts = prompts
        self.settings = settings
        self._heard: set[Any] = set()

    def _say(self, *names: str) -> list[bytes]:
        return [self.prompts.get(name) for name in names]

    def _count(self, count: int, kind: str) -> list[bytes]:
        """A count as said: "no new messages", "one new message", "four new messages"."""
        if count == 0:
            return self._say("vm-no", f"vm-{kind}-messages")
        if count == 1:
            return [*self.prompts.number(1), self.prompts.get(f"vm-{kind}-message")]
        return [*self.prompts.number(count), self.prompts.get(f"vm-{kind}-messages")]

    async def run(self) -> None:
        new, old = await self.store.counts(self.mailbox)
        await self.session.play_all([*self._say("vm-you-have"), *self._count(new, "new"),
                                     *self._say("vm-and"), *self._count(old, "saved")])
        while True:
            key = await _choose(self.session, self.prompts, self._say("vm-main-menu"), "123*#")
            if key == "1":
                await self._browse("new")
            elif key == "2":
                await self._browse("old")
            elif key == "3":
                await self._record_greeting()
            elif key == "#":
                return

    async def _browse(self, folder: str) -> None:
        """Play the messages of `folder` ("new" or "old") one by one, each followed by the message menu."""
        kind = "new" if folder == "new" else "saved"
        messages = list(await self.store.messages(self.mailbox, folder))
        if not messages:
            await self.session.play_all([*self._say("vm-you-have"), *self._count(0, kind)])
            return
        index: int | None = 0
        while index is not None and index < len(messages):
            index = await self._message(messages, index)
        if index is not None:
            await self.session.play(self.prompts.get("vm-no-more-messages"))

    async def _message(self, messages: list[Any], index: int) -> int | None:
        """Play `messages[index]` and act on the menu: the index to go on with, None for the main menu."""
        message = messages[index]
        await self._play(message)
        while True:
            key = await _choose(self.session, self.prompts, self._say("vm-message-menu"), "45679*")
            if key == "5":
                await self._play(message)
            elif key == "6":
                return index + 1
            elif key == "4":
                if index > 0:
                    return index - 1
                await self.session.play(self.prompts.get("vm-no-more-messages"))
            elif key == "7":
                await self.store.delete(self.mailbox, message.id)
                del messages[index]
                log.info("voicemail: message {id} of mailbox {mailbox} deleted", id=message.id, mailbox=self.mailbox)
                await self.session.play(self.prompts.get("vm-message-deleted"))
                return index
            elif key == "9":
                await self.store.update(self.mailbox, message.id, saved=True)
                await self.session.play(self.prompts.get("vm-message-saved"))
                return index + 1
            else:
                return None

    async def _play(self, message: Any) -> None:
        """The message's audio (a key cuts it short); then it counts as heard."""
        try:
            audio = await self.store.read_audio(message)
        except Exception:
            log.failure("voicemail: message {id} of mailbox {mailbox} cannot be read",
                        id=message.id, mailbox=self.mailbox)
            audio = b""
        await self.session.play(audio)
        if not message.heard and message.id not in self._heard:
            await self.store.update(self.mailbox, message.id, heard=True)
            self._heard.add(message.id)

    async def _record_greeting(self) -> None:
        """Record, play back, and keep the greeting when the caller presses 1 (2 records again)."""
        settings = self.settings
        while True:
            await self.session.play(self.prompts.get("vm-record-greeting"))
            self.session.flush_digits()
            await self.session.play(self.prompts.get("beep"), interruptible=False)
            recorder = await self.session.record(
                max_duration=settings.max_greeting_duration,
                silence_timeout=settings.silence_timeout or None,
                terminators="#",
            )
            pcm = recorder.pcm
            if not pcm or recorder.duration < settings.min_message_duration:
                await self.session.play(self.prompts.get("invalid-option"))
                return
            await self.session.play(pcm)
            key = await _choose(self.session, self.prompts, self._say("vm-greeting-review"), "12*")
            if key == "1":
                await self.store.save_greeting(self.mailbox, pcm)
                log.info("voicemail: new greeting for mailbox {mailbox} ({duration:.1f} s)",
                         mailbox=self.mailbox, duration=recorder.duration)
                await self.session.play(self.prompts.get("vm-greeting-saved"))
                return
            if key == "*":
                return
