"""What a media application (voicemail, the auto attendant) sees of its call.

Call control answers the caller with a `pbx.media.endpoint.MediaEndpoint`
and hands the application an `AppSession`. Applications are `async def`
functions taking the session: they read like the menu they implement, and
every await raises `CallEnded` once the caller has hung up, so no script
needs to check for that between steps.

Key presses are buffered from the moment the call is answered: a caller who
knows the menu may type ahead, and a key pressed during an interruptible
prompt cuts the prompt short and stays in the buffer for the next `collect`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger

from pbx.deferreds import uncancellable
from pbx.media.recorder import Recorder

__all__ = ["AppSession", "CallEnded", "Application", "EndpointSession"]


class CallEnded(Exception):
    """The caller hung up (or call control ended the call); the application stops."""


class AppSession(Protocol):
    """The call as an application drives it."""

    #: The authenticated caller (extension number, or "anonymous").
    caller: str
    #: The caller's display name from From, "" when none.
    caller_name: str
    #: The number the caller dialled.
    dialled: str
    #: The call's id (its call record), to link what the application stores to the call.
    call_id: str | None
    #: IReactorTime: timers of the application (prompt timeouts) run on it.
    clock: Any

    async def play(self, pcm: bytes, interruptible: bool = True) -> bool:
        """Play 8 kHz s16le PCM to its end; True when played out.

        An interruptible prompt stops at the first key press (the digit stays
        buffered for `collect`) and returns False.
        """

    async def play_all(self, prompts: list[bytes], interruptible: bool = True) -> bool:
        """Play several prompts in a row (one announcement); False when a key cut it short."""

    async def collect(self, max_digits: int = 1, timeout: float = 5.0, terminators: str = "#",
                      inter_digit_timeout: float = 3.0) -> str:
        """Digits typed by the caller, from the buffer first.

        Returns when `max_digits` have been typed, a terminator is pressed
        (not included in the result), `timeout` passes before the first digit
        or `inter_digit_timeout` between later digits ("" when nothing was
        typed).
        """

    def flush_digits(self) -> None:
        """Forget buffered key presses (before asking something new, e.g. a PIN after an error)."""

    async def record(self, max_duration: float, silence_timeout: float | None, terminators: str = "#") -> Recorder:
        """Record what the caller says until a terminator key, silence, `max_duration` or hang-up.

        Returns the stopped `Recorder` even when the caller hung up during
        the recording (a voicemail left by hanging up is the usual case);
        `recorder.reason` says why it ended.
        """

    async def connect(self, number: str) -> bool:
        """Hand the caller over to `number` as a normal call (the caller hears ringback).

        True once the call has been handed over (the application must then
        return without touching the session); False when `number` cannot be
        reached (unknown, not registered, busy, no answer): the application
        still owns the caller.
        """

    def hangup(self) -> None:
        """End the call (BYE to the caller); idempotent."""


#: An application: run it with the session; when it returns the PBX hangs up
#: (unless it connected the caller elsewhere).
Application = Callable[[AppSession], Awaitable[None]]


class EndpointSession:
    """`AppSession` over a `MediaEndpoint`; call control provides `connect` and `hangup`.

    `ended()` is called by call control when the caller hangs up: pending
    waits then raise `CallEnded`.
    """

    log = Logger()

    def __init__(self, endpoint: Any, clock: Any, *, caller: str, caller_name: str, dialled: str,
                 call_id: str | None = None,
                 connect: Callable[[str], Deferred[bool]] | None = None,
                 hangup: Callable[[], None] | None = None, ringback: bytes | None = None) -> None:
        self.endpoint = endpoint
        self.clock = clock
        self.caller = caller
        self.caller_name = caller_name
        self.dialled = dialled
        self.call_id = call_id
        self._connect = connect
        self._hangup = hangup
        self.ringback = ringback
        self.is_ended = False
        self._digits: list[str] = []
        self._digit_waiter: Deferred[None] | None = None
        self._pending: set[Deferred[Any]] = set()
        endpoint.on_dtmf = self._dtmf

    # -- events from the endpoint and from call control ------------------------

    def _dtmf(self, digit: str) -> None:
        self._digits.append(digit)
        waiter, self._digit_waiter = self._digit_waiter, None
        if waiter is not None and not waiter.called:
            waiter.callback(None)

    def ended(self) -> None:
        """The call is over: every pending wait raises CallEnded."""
        if self.is_ended:
            return
        self.is_ended = True
        for d in list(self._pending):
            if not d.called:
                d.cancel()

    # -- helpers ------------------------------------------------------------------

    def _check(self) -> None:
        if self.is_ended:
            raise CallEnded()

    async def _wait(self, d: Deferred[Any]) -> Any:
        """Await `d`, raising CallEnded when the call ends first.

        The wait is a separate Deferred: ending the call cancels that one,
        never `d` itself, which belongs to the player or recorder.
        """
        self._check()
        waiter = uncancellable(d, "a media application's step")
        self._pending.add(waiter)
        try:
            return await waiter
        except CancelledError:
            if self.is_ended:
                raise CallEnded() from None
            raise
        finally:
            self._pending.discard(waiter)

    def _next_digit(self, timeout: float) -> Deferred[None]:
        """Fires when a key is pressed; CancelledError-free: on timeout it fires too (buffer stays empty)."""
        d: Deferred[None] = Deferred()
        self._digit_waiter = d
        timer = self.clock.callLater(timeout, lambda: d.called or d.callback(None))

        def done(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            if self._digit_waiter is d:
                self._digit_waiter = None
            return result

        d.addBoth(done)
        return d

    # -- AppSession -----------------------------------------------------------------

    async def play(self, pcm: bytes, interruptible: bool = True) -> bool:
        return await self.play_all([pcm], interruptible)

    async def play_all(self, prompts: list[bytes], interruptible: bool = True) -> bool:
        self._check()
        if interruptible and self._digits:
            return False
        if not prompts:
            return True
        endpoint = self.endpoint
        finished = endpoint.play(prompts[0])
        for pcm in prompts[1:]:
            finished = endpoint.play_then(pcm)
        if not interruptible:
            return bool(await self._wait(finished))
        played: Deferred[bool] = Deferred()
        finished.addBoth(lambda result: played.called or played.callback(result is True))

        def pressed(_: str) -> None:
            if not played.called:
                played.callback(False)  # first: stopping fires the player's own Deferreds
                endpoint.stop_playing()

        previous = endpoint.on_dtmf

        def on_key(digit: str) -> None:
            self._dtmf(digit)
            pressed(digit)

        endpoint.on_dtmf = on_key
        try:
            return bool(await self._wait(played))
        finally:
            endpoint.on_dtmf = previous

    async def collect(self, max_digits: int = 1, timeout: float = 5.0, terminators: str = "#",
                      inter_digit_timeout: float = 3.0) -> str:
        typed = ""
        wait = timeout
        while True:
            self._check()
            while self._digits:
                digit = self._digits.pop(0)
                if digit in terminators:
                    return typed
                typed += digit
                if len(typed) >= max_digits:
                    return typed
                wait = inter_digit_timeout
            before = len(self._digits)
            await self._wait(self._next_digit(wait))
            if len(self._digits) == before:
                return typed  # timed out

    def flush_digits(self) -> None:
        self._digits.clear()

    async def record(self, max_duration: float, silence_timeout: float | None, terminators: str = "#") -> Recorder:
        self._check()
        self.flush_digits()
        endpoint = self.endpoint
        recorder = endpoint.record(max_duration=max_duration, silence_timeout=silence_timeout)
        previous = endpoint.on_dtmf

        def on_key(digit: str) -> None:
            if digit in terminators:
                recorder.stop()
            else:
                self._dtmf(digit)

        endpoint.on_dtmf = on_key
        try:
            await self._wait(recorder.done)
        except CallEnded:
            recorder.stop()
        finally:
            endpoint.on_dtmf = previous
        return recorder

    async def connect(self, number: str) -> bool:
        self._check()
        if self._connect is None:
            return False
        self.flush_digits()
        if self.ringback:
            self.endpoint.play(self.ringback, loop=True)
        connected = bool(await self._wait(self._connect(number)))
        if not connected:
            self.endpoint.stop_playing()
        return connected

    def hangup(self) -> None:
        if self._hangup is not None and not self.is_ended:
            self._hangup()
        self.ended()
