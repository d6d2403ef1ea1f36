"""A small synchronous event bus: components publish, others subscribe.

Names are part of the API (`registration.changed`, `call.incoming`, ...).
A failing subscriber is logged and never breaks the publisher.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

Subscriber = Callable[[str, dict[str, Any]], Any]


class EventBus:
    log = Logger()

    def __init__(self) -> None:
        self._subscribers: dict[str, list[Subscriber]] = defaultdict(list)

    def subscribe(self, name: str, subscriber: Subscriber) -> Callable[[], None]:
        """Call `subscriber(name, fields)` on each event; returns an unsubscribe function."""
        self._subscribers[name].append(subscriber)
        return lambda: self._subscribers[name].remove(subscriber)

    def emit(self, name: str, **fields: Any) -> None:
        for subscriber in list(self._subscribers.get(name, ())):
            try:
                subscriber(name, fields)
            except Exception:
                self.log.failure("subscriber {subscriber!r} failed on {event}", subscriber=subscriber, event=name)
