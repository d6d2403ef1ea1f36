"""The auto attendant: a greeting, a menu of single keys, and dialling an extension by number.

The first key decides. A key that is a menu option is taken at once, so a
menu answers as fast as the caller presses. With `dial_by_extension`, any
other digit starts an extension number: digits are collected up to
`MAX_EXTENSION_DIGITS`, until '#' or until the caller pauses for
`INTER_DIGIT_TIMEOUT` seconds. (So an extension cannot start with a digit
that is a menu option; a site that wants both gives the menu other keys.)

No key within `settings.timeout`, an invalid key, or a number that cannot
be reached is a failed try; the menu is repeated `settings.max_retries`
times (so there are max_retries + 1 tries), then the caller goes to
`settings.operator_extension`, or hears goodbye.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from pbx.apps.session import AppSession

__all__ = ["attendant", "PROMPTS", "MAX_EXTENSION_DIGITS", "INTER_DIGIT_TIMEOUT"]

log = Logger(namespace="pbx.apps.attendant")

MAX_EXTENSION_DIGITS = 6
INTER_DIGIT_TIMEOUT = 3.0

#: The prompts said besides the configured greeting.
PROMPTS = ("invalid-option", "aa-unavailable", "goodbye")


async def attendant(session: AppSession, *, settings: Any, prompts: Any,
                    is_reachable: Callable[[str], bool] | None = None) -> None:
    """Greet, take the caller's choice and connect it; `is_reachable` screens numbers before ringing."""
    greeting = prompts.get(settings.greeting)
    options = {str(key): str(number) for key, number in (settings.menu_options or {}).items()}
    failures = 0
    while failures <= max(0, settings.max_retries):
        await session.play(greeting)
        chosen = await _chosen(session, settings, options)
        failures += 1  # until connected
        if chosen == "":
            continue  # silence: the greeting again
        session.flush_digits()
        if chosen is None:
            await session.play(prompts.get("invalid-option"))
            continue
        if chosen == settings.extension or (is_reachable is not None and not is_reachable(chosen)):
            log.info("attendant: {caller} chose {number}, which cannot be reached", caller=session.caller,
                     number=chosen)
            await session.play(prompts.get("aa-unavailable"))
            continue
        log.info("attendant: connecting {caller} to {number}", caller=session.caller, number=chosen)
        if await session.connect(chosen):
            return
        await session.play(prompts.get("aa-unavailable"))
    operator = settings.operator_extension
    if operator:
        log.info("attendant: no choice from {caller} after {tries} tries; connecting the operator {number}",
                 caller=session.caller, tries=failures, number=operator)
        if await session.connect(operator):
            return
    await session.play(prompts.get("goodbye"), interruptible=False)
    session.hangup()


async def _chosen(session: AppSession, settings: Any, options: dict[str, str]) -> str | None:
    """The number the caller picked; "" for no key at all, None for a key that leads nowhere."""
    key = await session.collect(1, timeout=settings.timeout, terminators="")
    if not key:
        return ""
    if key in options:
        return options[key]
    if not settings.dial_by_extension or not key.isdigit():
        return None
    number = key + await session.collect(
        MAX_EXTENSION_DIGITS - 1, timeout=INTER_DIGIT_TIMEOUT, terminators="#",
        inter_digit_timeout=INTER_DIGIT_TIMEOUT,
    )
    return number if number.isdigit() else None
