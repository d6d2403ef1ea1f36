"""The location service: which contacts each extension is reachable at.

Pure in-memory state on an injected clock, so the registrar's hot path never
waits on the database. Changes are collected per AOR and written behind in
batches by `LocationStore` (see pbx.core.registrar).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Binding:
    aor: str
    contact: str  # the contact URI, the binding's identity within an AOR
    expires_at: float
    q: float | None
    call_id: str
    cseq: int
    user_agent: str | None
    source_host: str
    source_port: int
    transport: str
    params: str = ""  # other contact parameters, e.g. +sip.instance, verbatim

    def expires_in(self, now: float) -> int:
        return max(0, int(self.expires_at - now + 0.5))

    def as_row(self) -> tuple[Any, ...]:
        return (
            self.aor, self.contact, self.expires_at, self.q, self.call_id, self.cseq,
            self.user_agent, self.source_host, self.source_port, self.transport, self.params,
        )  # fmt: skip


class LocationService:
    """AOR -> {contact -> Binding}, with expiry and a set of changed AORs."""

    def __init__(self, clock: Any, max_contacts: int = 10) -> None:
        self.clock = clock
        self.max_contacts = max_contacts
        self._bindings: dict[str, dict[str, Binding]] = {}
        self._dirty: set[str] = set()

    def load(self, bindings: list[Binding]) -> None:
        for b in bindings:
            self._bindings.setdefault(b.aor, {})[b.contact] = b

    def lookup(self, aor: str) -> list[Binding]:
        """Current bindings, highest q first (RFC 3261 §16.6 forking order)."""
        contacts = self._bindings.get(aor)
        if not contacts:
            return []
        now = self.clock.seconds()
        current = [b for b in contacts.values() if b.expires_at > now]
        if len(current) > 1:  # most extensions have one phone: nothing to order
            current.sort(key=lambda b: -(b.q if b.q is not None else 1.0))
        return current

    def get(self, aor: str, contact: str) -> Binding | None:
        return self._bindings.get(aor, {}).get(contact)

    def put(self, binding: Binding) -> None:
        self._bindings.setdefault(binding.aor, {})[binding.contact] = binding
        self._dirty.add(binding.aor)

    def remove(self, aor: str, contact: str) -> None:
        contacts = self._bindings.get(aor)
        if contacts is not None and contacts.pop(contact, None) is not None:
            self._dirty.add(aor)
            if not contacts:
                del self._bindings[aor]

    def remove_all(self, aor: str) -> None:
        if self._bindings.pop(aor, None):
            self._dirty.add(aor)

    def count(self, aor: str) -> int:
        return len(self._bindings.get(aor, ()))

    def aors(self) -> list[str]:
        return list(self._bindings)

    def expire(self) -> list[str]:
        """Drop expired bindings; returns the AORs that lost one."""
        now = self.clock.seconds()
        changed: list[str] = []
        for aor in list(self._bindings):
            contacts = self._bindings[aor]
            stale = [c for c, b in contacts.items() if b.expires_at <= now]
            for contact in stale:
                del contacts[contact]
            if stale:
                changed.append(aor)
                self._dirty.add(aor)
                if not contacts:
                    del self._bindings[aor]
        return changed

    def take_changes(self) -> dict[str, list[Binding]]:
        """The current bindings of every AOR changed since the last call."""
        changes = {aor: list(self._bindings.get(aor, {}).values()) for aor in self._dirty}
        self._dirty.clear()
        return changes

    def __len__(self) -> int:
        return sum(len(c) for c in self._bindings.values())
