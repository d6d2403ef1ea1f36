"""/api/voicemail/{number}: a mailbox's messages, their recordings and its greeting.

The routes are a thin face over the voicemail store (``pbx.voicemail``,
pbx.apps.mailbox.VoicemailStore).  Every change goes through the store, which
emits ``voicemail.changed``, so the phones' message lamps follow without any
work here.  A mailbox is an extension's: a number the directory does not know
is a 404 before the store is asked.  The store's writes run to their end
when a client goes away mid-request, so the handlers need not shield them.

Nothing here blocks the reactor: recordings are read from disk in a thread,
and an uploaded greeting is decoded, mixed down and resampled in one.
"""

from __future__ import annotations

import functools
import struct
import sys
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from pbx.api.context import ApiContext
from pbx.api.errors import (
    BadRequest,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    UnsupportedMediaType,
    install_error_handlers,
)
from pbx.api.http import MAX_BODY, endpoint, json_response, query_params, read_json
from pbx.api.schemas import VOICEMAIL_PATCH
from pbx.media.wav import RATE, WavError, decode_wav, resample

__all__ = [
    "DEFAULT_MAX_GREETING",
    "FOLDERS",
    "MAX_MESSAGE_ID",
    "MAX_SAMPLE_RATE",
    "MIN_SAMPLE_RATE",
    "WAV_TYPES",
    "GreetingError",
    "VoicemailRoutes",
    "greeting_pcm",
    "mount_endpoint",
    "wav_endpoint",
]

#: Content-Types a greeting upload may have.
WAV_TYPES = ("audio/wav", "audio/x-wav")
FOLDERS = ("new", "old")
#: Seconds a greeting may last when the configuration does not say.
DEFAULT_MAX_GREETING = 60
#: Message ids are SQLite integers; a larger number in the path is simply not found.
MAX_MESSAGE_ID = 2**63 - 1
#: The resampler's kernel grows with the input rate: refuse rates no recorder makes.
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 384_000

F = TypeVar("F", bound=Callable[..., Any])
_BODY_METHODS = (b"POST", b"PUT", b"PATCH")
_BIG_ENDIAN = sys.byteorder == "big"


class GreetingError(ValueError):
    """An upload that cannot become a greeting; ``str()`` says why, for the 400."""


def greeting_pcm(data: bytes, max_seconds: float) -> bytes:
    """A WAV file's audio as 8 kHz 16-bit mono PCM (s16le), ready for the store.

    Takes what `pbx.media.wav.decode_wav` reads (8/16/24/32-bit PCM, float,
    µ-law, A-law; any channels and rate).  The length is checked before the
    resampling, which is the costly part.  Blocking: run it in a thread.
    """
    try:
        rate, channels, samples = decode_wav(data)
    except struct.error:
        raise GreetingError("not a WAV file: its header is cut short") from None
    except (WavError, ValueError, OverflowError) as error:
        raise GreetingError(f"not a WAV file this PBX can read: {error}") from None
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise GreetingError(f"sample rate {rate} Hz not supported ({MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz)")
    frames = len(samples) // channels
    if frames == 0:
        raise GreetingError("the WAV file holds no audio")
    seconds = frames / rate
    if seconds > max_seconds:
        raise GreetingError(f"the greeting lasts {seconds:.1f} s, longer than the {max_seconds:g} s allowed")
    if channels > 1:
        columns = [samples[c : frames * channels : channels] for c in range(channels)]
        samples = [sum(frame) // channels for frame in zip(*columns)]
    mono = resample(samples, rate, RATE)
    if not mono:
        raise GreetingError("the WAV file holds less than one sample at 8 kHz")
    out = mono if isinstance(mono, array) else array("h", mono)
    if _BIG_ENDIAN:
        out = array("h", out)
        out.byteswap()
    return out.tobytes()


def _media_type(request: Any) -> str:
    value = request.getHeader("content-type") or ""
    return value.split(";", 1)[0].strip().lower()


def _check_token_and_size(guard: Any, request: Any) -> None:
    guard.check(request)
    if getattr(request, "body_too_large", False):
        limit = request._limit() if hasattr(request, "_limit") else MAX_BODY
        raise PayloadTooLarge(f"request body larger than {limit} bytes")


def wav_endpoint(route: str | None) -> Callable[[F], F]:
    """`pbx.api.http.endpoint` for a route whose body is a WAV file instead of JSON.

    The same checks in the same order: token (401), body size (413), then
    the Content-Type, which must be one of `WAV_TYPES` (415).
    """

    def decorate(handler: F) -> F:
        @functools.wraps(handler)
        def wrapper(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
            if route is not None:
                request.api_route = route
            _check_token_and_size(self.guard, request)
            media_type = _media_type(request)
            if media_type not in WAV_TYPES:
                expected = " or ".join(WAV_TYPES)
                raise UnsupportedMediaType(f"expected Content-Type {expected}, got {media_type or 'none'}")
            return handler(self, request, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def mount_endpoint(handler: F) -> F:
    """``endpoint(None)`` for the root's mount of this group, minus the JSON
    check of a body: the greeting's is a WAV file, so each route checks the
    type of its own body (and says which it expects).  Token and size are
    checked here as for every group; a request without a body (a CORS
    preflight among them) goes through ``endpoint`` itself."""
    plain = endpoint(None)(handler)

    @functools.wraps(handler)
    def wrapper(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        if request.method not in _BODY_METHODS:
            return plain(self, request, *args, **kwargs)
        _check_token_and_size(self.guard, request)
        return handler(self, request, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _wav_response(request: Any, data: bytes, filename: str) -> bytes:
    request.setResponseCode(200)
    request.setHeader(b"content-type", b"audio/wav")
    request.setHeader(b"content-length", str(len(data)).encode("ascii"))
    request.setHeader(b"content-disposition", f'inline; filename="{filename}"'.encode("ascii"))
    return data


def _read_file(path: str) -> bytes | None:
    """The file's bytes, or None when it is gone (blocking)."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return None


_MESSAGE = f"<int(max={MAX_MESSAGE_ID}):message_id>"


class VoicemailRoutes:
    """GET /api/voicemail/{number}; GET|PATCH|DELETE .../{message_id}; GET .../{message_id}/audio;
    GET|PUT|DELETE .../greeting."""

    app = Klein()
    install_error_handlers(app)
    log = Logger()

    def __init__(self, context: ApiContext,
                 in_thread: Callable[..., Deferred[Any]] | None = None) -> None:
        self.context = context
        self.pbx = context.pbx
        self.guard = context.guard
        self._in_thread = in_thread

    # -- helpers -------------------------------------------------------------

    def _run(self, work: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Blocking work (disk, resampling) off the reactor thread."""
        if self._in_thread is not None:
            return self._in_thread(work, *args)
        reactor = self.context.clock
        return deferToThreadPool(reactor, reactor.getThreadPool(), work, *args)

    def _store(self, number: str) -> Any:
        """The voicemail store, once ``number`` is known to be an extension."""
        if number not in self.pbx.directory:
            raise NotFound(f"no extension {number}", "number")
        store = getattr(self.pbx, "voicemail", None)
        if store is None or not self.pbx.config.voicemail.enabled:
            raise ServiceUnavailable("voicemail is not enabled (voicemail.enabled)")
        return store

    def _max_greeting(self) -> float:
        config = getattr(self.pbx.config, "voicemail", None)
        value = getattr(config, "max_greeting_duration", None)
        return DEFAULT_MAX_GREETING if value is None else value

    @staticmethod
    def _missing(number: str, message_id: int) -> NotFound:
        return NotFound(f"no message {message_id} in mailbox {number}", "message_id")

    @staticmethod
    def _view(message: Any) -> dict[str, Any]:
        view = message.as_json()
        view["audio"] = f"/api/voicemail/{message.mailbox}/{message.id}/audio"
        return view

    async def _message(self, store: Any, number: str, message_id: int) -> Any:
        message = await store.get(number, message_id)
        if message is None or message.mailbox != number:
            raise self._missing(number, message_id)
        return message

    # -- mailbox and messages ------------------------------------------------

    @app.route("/<number>", methods=["GET"])
    @endpoint("/api/voicemail/{number}")
    async def get_mailbox(self, request: Any, number: str) -> bytes:
        params = query_params(request, ("folder",))
        store = self._store(number)
        folder = params.get("folder")
        if folder is not None and folder not in FOLDERS:
            raise BadRequest(f"folder: expected one of {', '.join(FOLDERS)}", "folder")
        messages = await store.messages(number, folder)
        new, old = await store.counts(number)
        return json_response(request, {
            "mailbox": number, "new": new, "old": old,
            "messages": [self._view(message) for message in messages],
        })  # fmt: skip

    @app.route(f"/<number>/{_MESSAGE}", methods=["GET"])
    @endpoint("/api/voicemail/{number}/{message_id}")
    async def get_message(self, request: Any, number: str, message_id: int) -> bytes:
        message = await self._message(self._store(number), number, message_id)
        return json_response(request, self._view(message))

    @app.route(f"/<number>/{_MESSAGE}/audio", methods=["GET"])
    @endpoint("/api/voicemail/{number}/{message_id}/audio")
    async def get_audio(self, request: Any, number: str, message_id: int) -> bytes:
        store = self._store(number)
        message = await self._message(store, number, message_id)
        data = await self._run(_read_file, store.audio_path(message))
        if data is None:
            self.log.warn("voicemail {mailbox}/{message_id}: the recording is missing from disk",
                          mailbox=number, message_id=message_id)
            raise NotFound(f"the recording of message {message_id} is missing", "message_id")
        return _wav_response(request, data, f"voicemail-{number}-{message_id}.wav")

    @app.route(f"/<number>/{_MESSAGE}", methods=["PATCH"])
    @endpoint("/api/voicemail/{number}/{message_id}")
    async def update_message(self, request: Any, number: str, message_id: int) -> bytes:
        store = self._store(number)
        body = read_json(request, VOICEMAIL_PATCH)
        if not body:
            raise BadRequest("expected heard or saved (or both)")
        message = await store.update(number, message_id, heard=body.get("heard"), saved=body.get("saved"))
        if message is None or message.mailbox != number:
            raise self._missing(number, message_id)
        self.log.info("voicemail {mailbox}/{message_id} changed through the API ({fields})",
                      mailbox=number, message_id=message_id, fields=", ".join(sorted(body)))
        return json_response(request, self._view(message))

    @app.route(f"/<number>/{_MESSAGE}", methods=["DELETE"])
    @endpoint("/api/voicemail/{number}/{message_id}")
    async def delete_message(self, request: Any, number: str, message_id: int) -> bytes:
        if not await self._store(number).delete(number, message_id):
            raise self._missing(number, message_id)
        self.log.info("voicemail {mailbox}/{message_id} deleted through the API",
                      mailbox=number, message_id=message_id)
        request.setResponseCode(204)
        return b""

    # -- greeting ------------------------------------------------------------

    @app.route("/<number>/greeting", methods=["GET"])
    @endpoint("/api/voicemail/{number}/greeting")
    async def get_greeting(self, request: Any, number: str) -> bytes:
        store = self._store(number)
        path = await store.greeting_path(number)
        data = None if path is None else await self._run(_read_file, path)
        if data is None:
            raise NotFound(f"mailbox {number} has no greeting of its own")
        return _wav_response(request, data, f"greeting-{number}.wav")

    @app.route("/<number>/greeting", methods=["PUT"])
    @wav_endpoint("/api/voicemail/{number}/greeting")
    async def put_greeting(self, request: Any, number: str) -> bytes:
        store = self._store(number)
        request.content.seek(0)
        data = request.content.read()
        if not data:
            raise BadRequest("a WAV request body is required")
        try:
            pcm = await self._run(greeting_pcm, data, self._max_greeting())
        except GreetingError as error:
            raise BadRequest(str(error)) from None
        await store.save_greeting(number, pcm)
        self.log.info("voicemail {mailbox}: greeting of {seconds} s saved through the API",
                      mailbox=number, seconds=round(len(pcm) / (2 * RATE), 1))
        request.setResponseCode(204)
        return b""

    @app.route("/<number>/greeting", methods=["DELETE"])
    @endpoint("/api/voicemail/{number}/greeting")
    async def delete_greeting(self, request: Any, number: str) -> bytes:
        store = self._store(number)
        if not await store.delete_greeting(number):
            raise NotFound(f"mailbox {number} has no greeting of its own")
        self.log.info("voicemail {mailbox}: greeting deleted through the API", mailbox=number)
        request.setResponseCode(204)
        return b""
