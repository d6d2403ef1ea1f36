"""Which application answers a call, built once from the configuration.

Call control asks `Applications` for an `Application` (an ``async def``
taking an `AppSession`) when the dial plan names voicemail or the auto
attendant, and for the hold music. The applications come back with their
store, prompts and settings bound, so call control only runs them. A
caller hanging up ends an application normally: `CallEnded` stops here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.logger import Logger

from pbx.apps import attendant as attendant_app
from pbx.apps import voicemail
from pbx.apps.prompts import Prompts
from pbx.apps.session import AppSession, Application, CallEnded
from pbx.media.wav import WavError, read_wav
from pbx.store.extensions import ExtensionRecord

__all__ = ["Applications", "check_application_paths"]


def check_application_paths(config: Any) -> None:
    """Refuse to start when a directory the applications need is unusable (ConfigError naming the key).

    Checked before any port opens: a voicemail spool that cannot be created
    would otherwise only show when the first message is lost.
    """
    from pbx.config import ConfigError

    voicemail = config.voicemail
    if voicemail.enabled:
        path = voicemail.storage_path
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"voicemail.storage_path: cannot create {path!r}: {error.strerror}") from None
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"voicemail.storage_path: {path!r} is not writable")
    for key, path in (("voicemail.prompts_directory", voicemail.prompts_directory),
                      ("music_on_hold.directory", config.music_on_hold.directory)):
        if path is not None and not os.path.isdir(path):
            raise ConfigError(f"{key}: {path!r} is not a directory")


class Applications:
    """The media applications of one PBX: voicemail, the auto attendant, music on hold.

    `is_reachable` (optional) lets the attendant turn down a number that has
    no registered phone without ringing it.
    """

    log = Logger()

    def __init__(self, config: Any, store: Any, lookup_extension: Callable[[str], ExtensionRecord | None],
                 prompts: Prompts, *, is_reachable: Callable[[str], bool] | None = None) -> None:
        self.config = config
        self.store = store
        self.lookup_extension = lookup_extension
        self.prompts = prompts
        self.is_reachable = is_reachable
        prompts.preload(*voicemail.PROMPTS)
        if self.attendant() is not None:
            prompts.preload(*attendant_app.PROMPTS, config.auto_attendant.greeting)
        hold = config.music_on_hold
        # Read now: a long track converted on the first hold would stall the reactor mid-call.
        self._music = self._load_music(hold.directory) if hold.enabled else None

    # -- voicemail ------------------------------------------------------------------

    def voicemail_enabled(self, mailbox: str) -> bool:
        """Voicemail is on and `mailbox` is an extension (so a missed call may go there)."""
        return bool(self.config.voicemail.enabled) and self.lookup_extension(mailbox) is not None

    def deposit(self, mailbox: str) -> Application:
        """Leave a message in `mailbox`."""
        record = self.lookup_extension(mailbox)
        name = record.name if record is not None else ""

        async def run(session: AppSession) -> None:
            await voicemail.deposit(session, mailbox=mailbox, store=self.store, prompts=self.prompts,
                                    settings=self.config.voicemail, mailbox_name=name)

        return self._guarded("voicemail deposit", run)

    def access(self, mailbox: str | None) -> Application:
        """Listen to a mailbox: None for the caller's own, "" to ask for the number."""

        async def run(session: AppSession) -> None:
            await voicemail.access(session, mailbox=mailbox, store=self.store, prompts=self.prompts,
                                   settings=self.config.voicemail, lookup_extension=self.lookup_extension)

        return self._guarded("voicemail access", run)

    # -- auto attendant ----------------------------------------------------------------

    def attendant(self) -> Application | None:
        """The auto attendant; None when no number reaches it (no `auto_attendant.extension`
        and no `attendant` dial plan pattern)."""
        settings = self.config.auto_attendant
        if settings.extension is None and "attendant" not in self.config.dialplan:
            return None

        async def run(session: AppSession) -> None:
            await attendant_app.attendant(session, settings=settings, prompts=self.prompts,
                                          is_reachable=self.is_reachable)

        return self._guarded("auto attendant", run)

    # -- music on hold -------------------------------------------------------------------

    def ringback(self) -> bytes:
        """What a caller an application hands over hears while the other phone rings."""
        return self.prompts.ringback()

    def music_on_hold(self) -> bytes | None:
        """The hold music to loop (read at start-up): every WAV of `music_on_hold.directory`
        in name order, else the shipped ``moh`` prompt; None when music on hold is off."""
        return self._music

    def _load_music(self, directory: str | None) -> bytes:
        tracks: list[bytes] = []
        if directory is not None:
            paths = sorted(p for p in Path(directory).glob("*") if p.suffix.lower() == ".wav" and p.is_file())
            for path in paths:
                try:
                    tracks.append(read_wav(path))
                except (OSError, WavError) as error:
                    self.log.error("music on hold: {path} skipped ({error})", path=str(path), error=str(error))
            if not any(tracks):
                self.log.error("music on hold: no readable WAV file in {directory}; playing the shipped music",
                               directory=directory)
        music = b"".join(tracks)
        return music if music else self.prompts.get("moh")

    # -- running --------------------------------------------------------------------------

    def _guarded(self, what: str, run: Callable[[AppSession], Any]) -> Application:
        """`run` with the caller hanging up as its normal end."""
        log = self.log

        async def application(session: AppSession) -> None:
            log.debug("{what} for {caller} (dialled {dialled})", what=what, caller=session.caller,
                      dialled=session.dialled)
            try:
                await run(session)
            except CallEnded:
                log.debug("{what}: {caller} hung up", what=what, caller=session.caller)

        return application
