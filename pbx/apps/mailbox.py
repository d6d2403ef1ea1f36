"""The voicemail store: the one way the rest of the PBX touches voicemail.

Audio is in WAV files under ``storage_path`` (``<mailbox>/<uuid>.wav``),
metadata in the database (`pbx.store.voicemail`).  The order of the steps
is what keeps a message from being lost:

- a message's file is written whole and fsynced (`pbx.media.wav.write_wav`)
  before its row is committed, so a row never points at a file a crash
  could lose; if the row cannot be written the file is removed again;
- a delete removes the row first and the file after, so a crash in between
  leaves an orphan file rather than a row without audio.

Writes are not cancelled with their caller: a caller who hangs up while
the message is stored has left a message, so cancelling the Deferred that
a write returned only stops the waiting, never the write.

File work blocks, so it runs through ``writer`` (``deferToThread`` by
default); the database runs on its own thread.  Events:

``voicemail.new``      caller, caller_name, mailbox, duration (s), message_id,
                       received (ISO 8601 UTC), call_id
``voicemail.changed``  mailbox, new, old: the counts after a change (message
                       waiting lamps)
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, fail
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from pbx.core.cdr import iso_utc
from pbx.core.events import EventBus
from pbx.deferreds import uncancellable
from pbx.media.wav import RATE, WavError, fsync_directory, read_wav, write_wav
from pbx.store.voicemail import Counts, MailboxChange, VoicemailMessage, VoicemailRepository

__all__ = ["FOLDERS", "VoicemailStore", "check_mailbox"]

#: The folders of a mailbox: not heard yet, heard.
FOLDERS = ("new", "old")

_MAILBOX = re.compile(r"[0-9*#]+")
_T = TypeVar("_T")

Writer = Callable[..., Deferred[Any]]


def check_mailbox(mailbox: Any) -> str:
    """A mailbox name, which is an extension number and a directory name:
    digits, * and # only, so it can never climb out of the storage directory."""
    if not isinstance(mailbox, str) or not _MAILBOX.fullmatch(mailbox):
        raise ValueError(f"mailbox: expected digits, * and #, got {mailbox!r}")
    return mailbox


def _check_id(message_id: Any) -> int:
    if isinstance(message_id, bool) or not isinstance(message_id, int):
        raise ValueError(f"message_id: expected an integer, got {message_id!r}")
    return message_id


def _seconds(pcm: bytes) -> float:
    return len(pcm) // 2 / RATE


def _make_directories(directory: str) -> None:
    """``os.makedirs`` that also syncs each parent, so a new mailbox directory survives a crash."""
    missing: list[str] = []
    while not os.path.isdir(directory):
        missing.append(directory)
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    for path in reversed(missing):
        try:
            os.mkdir(path)
        except FileExistsError:  # another write made it meanwhile
            continue
        fsync_directory(os.path.dirname(path))


def _store_file(path: str, pcm: bytes) -> None:
    """Write a WAV that is whole on disk (fsynced, renamed into place, directory fsynced)."""
    _make_directories(os.path.dirname(path))
    write_wav(path, pcm, sync=True)


def _pcm(value: Any) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"pcm: expected bytes of 16-bit PCM, got {type(value).__name__}")
    return bytes(value)


def _remove_file(path: str) -> bool:
    """Remove a file; False when it was already gone."""
    try:
        os.remove(path)
    except FileNotFoundError:
        return False
    return True


class VoicemailStore:
    """Messages and greetings of every mailbox; every method but `audio_path`
    returns a Deferred."""

    log = Logger()

    def __init__(self, repository: VoicemailRepository, storage_path: str, clock: Any, events: EventBus, *,
                 min_duration: float = 1.0, writer: Writer = deferToThread) -> None:
        self.repository = repository
        self.storage_path = os.path.abspath(storage_path)
        self.clock = clock
        self.events = events
        self.min_duration = min_duration
        self.writer = writer

    # -- paths ------------------------------------------------------------------

    def _path(self, file: str) -> str:
        """The absolute path of a stored file name, refusing any that leaves the storage directory."""
        path = os.path.normpath(os.path.join(self.storage_path, file))
        if os.path.isabs(file) or os.path.commonpath([self.storage_path, path]) != self.storage_path:
            raise ValueError(f"voicemail file {file!r} is outside the storage directory")
        return path

    def audio_path(self, message: VoicemailMessage) -> str:
        """Where a message's WAV file is."""
        return self._path(message.file)

    # -- messages -----------------------------------------------------------------

    def deposit(self, mailbox: str, caller: str, caller_name: str, pcm: bytes,
                call_id: str | None = None) -> Deferred[VoicemailMessage | None]:
        """Store a recording (8 kHz s16le PCM) as a new message.

        Yields None, and writes nothing, when it is shorter than
        ``min_duration``: a caller who hung up at the beep left no message.
        """
        try:
            check_mailbox(mailbox)
            audio = _pcm(pcm)
        except (ValueError, TypeError):
            return fail()
        return _shielded(self._deposit(mailbox, caller, caller_name or "", audio, call_id))

    async def _deposit(self, mailbox: str, caller: str, caller_name: str, pcm: bytes,
                       call_id: str | None) -> VoicemailMessage | None:
        pcm = pcm[: len(pcm) & ~1]  # half a sample is no audio
        duration = _seconds(pcm)
        if duration < self.min_duration or not pcm:
            self.log.info("voicemail for {mailbox} from {caller} dropped: {duration:.1f} s is too short",
                          mailbox=mailbox, caller=caller, duration=duration)
            return None
        received = self.clock.seconds()
        file = f"{mailbox}/{uuid.uuid4().hex}.wav"
        path = self._path(file)
        await self.writer(_store_file, path, pcm)
        try:
            change: MailboxChange = await self.repository.add(mailbox, caller, caller_name, received, duration,
                                                              file, call_id)
        except CancelledError:
            raise  # whether the row was written is unknown: keep the audio
        except Exception:
            await self._discard(path, "message")
            raise
        message = change.message
        assert message is not None
        self.log.info("voicemail {message_id} for {mailbox} from {caller}, {duration:.1f} s",
                      message_id=message.id, mailbox=mailbox, caller=caller, duration=duration)
        self.events.emit("voicemail.new", caller=caller, caller_name=caller_name, mailbox=mailbox,
                         duration=duration, message_id=message.id, received=iso_utc(received), call_id=call_id)
        self._changed(mailbox, change.after)
        return message

    def messages(self, mailbox: str, folder: str | None = None) -> Deferred[list[VoicemailMessage]]:
        """A mailbox's messages, oldest first: all, or the ``"new"`` (not heard) or ``"old"`` folder."""
        try:
            check_mailbox(mailbox)
            if folder is not None and folder not in FOLDERS:
                raise ValueError(f"folder: expected None, \"new\" or \"old\", got {folder!r}")
        except ValueError:
            return fail()
        return self.repository.messages(mailbox, None if folder is None else folder == "old")

    def get(self, mailbox: str, message_id: int) -> Deferred[VoicemailMessage | None]:
        try:
            check_mailbox(mailbox)
            _check_id(message_id)
        except ValueError:
            return fail()
        return self.repository.get(mailbox, message_id)

    def read_audio(self, message: VoicemailMessage) -> Deferred[bytes]:
        """A message's audio as 8 kHz s16le PCM."""
        try:
            path = self.audio_path(message)
        except ValueError:
            return fail()
        return self.writer(read_wav, path)

    def update(self, mailbox: str, message_id: int, *, heard: bool | None = None,
               saved: bool | None = None) -> Deferred[VoicemailMessage | None]:
        """Mark a message heard / saved (or not); None when there is no such message."""
        try:
            check_mailbox(mailbox)
            _check_id(message_id)
            for name, value in (("heard", heard), ("saved", saved)):
                if value is not None and not isinstance(value, bool):
                    raise ValueError(f"{name}: expected true, false or None, got {value!r}")
        except ValueError:
            return fail()
        return _shielded(self._update(mailbox, message_id, heard, saved))

    async def _update(self, mailbox: str, message_id: int, heard: bool | None,
                      saved: bool | None) -> VoicemailMessage | None:
        change = await self.repository.update(mailbox, message_id, heard=heard, saved=saved)
        if change.counts_changed:
            self._changed(mailbox, change.after)
        return change.message

    def delete(self, mailbox: str, message_id: int) -> Deferred[bool]:
        """Delete a message and its audio; False when there was no such message."""
        try:
            check_mailbox(mailbox)
            _check_id(message_id)
        except ValueError:
            return fail()
        return _shielded(self._delete(mailbox, message_id))

    async def _delete(self, mailbox: str, message_id: int) -> bool:
        change = await self.repository.delete(mailbox, message_id)
        message = change.message
        if message is None:
            return False
        self.log.info("voicemail {message_id} of {mailbox} deleted", message_id=message_id, mailbox=mailbox)
        if change.counts_changed:
            self._changed(mailbox, change.after)
        try:
            path = self.audio_path(message)
        except ValueError:
            self.log.warn("voicemail {message_id} of {mailbox} named a file outside the storage directory; "
                          "row deleted, file left alone", message_id=message_id, mailbox=mailbox)
            return True
        await self._discard(path, "message")
        return True

    def counts(self, mailbox: str) -> Deferred[Counts]:
        """(new, old): messages not heard yet and messages heard."""
        try:
            check_mailbox(mailbox)
        except ValueError:
            return fail()
        return self.repository.counts(mailbox)

    # -- greetings ------------------------------------------------------------------

    def greeting_path(self, mailbox: str) -> Deferred[str | None]:
        """Where the mailbox's own greeting is; None when it has none."""
        try:
            check_mailbox(mailbox)
        except ValueError:
            return fail()
        return self.repository.greeting(mailbox).addCallback(lambda file: None if file is None else self._path(file))

    def greeting(self, mailbox: str) -> Deferred[bytes | None]:
        """The mailbox's own greeting as PCM; None when it has none (or its file
        cannot be read: the default greeting is better than no voicemail)."""
        try:
            check_mailbox(mailbox)
        except ValueError:
            return fail()
        return ensureDeferred(self._greeting(mailbox))

    async def _greeting(self, mailbox: str) -> bytes | None:
        path = await self.greeting_path(mailbox)
        if path is None:
            return None
        try:
            pcm: bytes = await self.writer(read_wav, path)
        except (OSError, WavError) as error:
            self.log.warn("greeting of {mailbox} unreadable, using the default: {error}", mailbox=mailbox,
                          error=str(error))
            return None
        return pcm

    def save_greeting(self, mailbox: str, pcm: bytes) -> Deferred[None]:
        """Make a recording (8 kHz s16le PCM) the mailbox's greeting; the old one's file is removed."""
        try:
            check_mailbox(mailbox)
            audio = _pcm(pcm)
            if len(audio) < 2:
                raise ValueError("greeting: expected some audio, got none")
        except (ValueError, TypeError):
            return fail()
        return _shielded(self._save_greeting(mailbox, audio))

    async def _save_greeting(self, mailbox: str, pcm: bytes) -> None:
        # A new name each time: the row switches to a complete new file in
        # one step, and the old file stays until nothing points at it.
        file = f"{mailbox}/greeting-{uuid.uuid4().hex}.wav"
        path = self._path(file)
        await self.writer(_store_file, path, pcm[: len(pcm) & ~1])
        try:
            previous = await self.repository.set_greeting(mailbox, file, self.clock.seconds())
        except CancelledError:
            raise
        except Exception:
            await self._discard(path, "greeting")
            raise
        self.log.info("greeting of {mailbox} saved ({duration:.1f} s)", mailbox=mailbox, duration=_seconds(pcm))
        if previous is not None and previous != file:
            await self._discard_stored(previous, "old greeting")

    def delete_greeting(self, mailbox: str) -> Deferred[bool]:
        """Go back to the default greeting; False when the mailbox had none."""
        try:
            check_mailbox(mailbox)
        except ValueError:
            return fail()
        return _shielded(self._delete_greeting(mailbox))

    async def _delete_greeting(self, mailbox: str) -> bool:
        previous = await self.repository.delete_greeting(mailbox)
        if previous is None:
            return False
        self.log.info("greeting of {mailbox} deleted", mailbox=mailbox)
        await self._discard_stored(previous, "greeting")
        return True

    # -- helpers ----------------------------------------------------------------------

    def _changed(self, mailbox: str, counts: Counts) -> None:
        new, old = counts
        self.events.emit("voicemail.changed", mailbox=mailbox, new=new, old=old)

    async def _discard_stored(self, file: str, what: str) -> None:
        try:
            path = self._path(file)
        except ValueError:
            self.log.warn("{what} file {file!r} is outside the storage directory; left alone", what=what, file=file)
            return
        await self._discard(path, what)

    async def _discard(self, path: str, what: str) -> None:
        """Remove a file nothing points at; a failure leaves an orphan, which is logged, not raised."""
        try:
            await self.writer(_remove_file, path)
        except Exception as error:
            self.log.warn("could not remove {what} file {path}: {error}", what=what, path=path, error=str(error))


def _shielded(work: Coroutine[Any, Any, _T]) -> Deferred[_T]:
    """Run `work` to its end even when the returned Deferred is cancelled."""
    return uncancellable(ensureDeferred(work), "a voicemail write")
