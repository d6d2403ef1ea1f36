"""Waiting for work without being able to stop it."""

from __future__ import annotations

from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["uncancellable"]

T = TypeVar("T")

_log = Logger()


def uncancellable(d: Deferred[T], what: str = "work") -> Deferred[T]:
    """A Deferred with `d`'s result whose cancellation leaves `d` running.

    A write on its way to the disk or the database must finish even when
    whoever waited for it goes away (an HTTP client, a caller who hung up):
    cancelling only stops the waiting. A failure that arrives after that is
    logged, naming `what`, since nobody else will see it.
    """
    outer: Deferred[T] = Deferred()

    def forward(result: Any) -> None:
        if not outer.called:
            if isinstance(result, Failure):
                outer.errback(result)
            else:
                outer.callback(result)
        elif isinstance(result, Failure):
            _log.failure("{what} failed after its waiter went away", result, what=what)

    d.addBoth(forward)
    return outer
