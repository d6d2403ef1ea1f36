"""The dial plan: which target a dialled number reaches.

Pure: no reactor, no SIP.  The B2BUA hands over the dialled string (the
unescaped user part of the Request-URI) and gets back one `Route`:

1. a ring group's exact number                    -> `GroupTarget`
2. a number the extension directory knows         -> `ExtensionTarget`
3. the ``dialplan.voicemail`` pattern             -> `VoicemailTarget`
4. ``auto_attendant.extension`` or the
   ``dialplan.attendant`` pattern                  -> `AttendantTarget`
5. the ``dialplan.internal`` pattern, but no such
   extension                                      -> `NotFound("no such extension")`
6. anything else                                  -> `NotFound("no route")`

Extensions are looked up through a callable rather than a list so that
extensions created through the API later route without a reload.

Every pattern must match the whole (normalised) number, as if written
between ``^`` and ``$``: an unanchored ``1003`` never matches ``91003``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

__all__ = [
    "DEFAULT_INTERNAL",
    "AttendantTarget",
    "DialPlan",
    "ExtensionTarget",
    "Group",
    "GroupTarget",
    "NotFound",
    "Route",
    "VoicemailTarget",
    "normalise",
]

DEFAULT_INTERNAL = r"^[1-9][0-9]{3}$"

# Visual separators people type or paste ("+49 (30) 123-45.67"); *, # and +
# are dialled characters and stay.
_SEPARATORS = re.compile(r"[\s\-.()\u00a0\u2010-\u2015\u2212]+")


def normalise(dialled: str) -> str:
    """The dialled string without visual separators (spaces, dashes, dots,
    parentheses); ``*``, ``#`` and ``+`` are kept."""
    return _SEPARATORS.sub("", dialled)


@dataclass(frozen=True, slots=True)
class Group:
    """A ring group as the B2BUA needs it (built from ``groups[]``)."""

    number: str
    members: tuple[str, ...]
    strategy: str = "ringall"
    ring_timeout: int = 20
    name: str | None = None


@dataclass(frozen=True, slots=True)
class ExtensionTarget:
    number: str


@dataclass(frozen=True, slots=True)
class GroupTarget:
    """Ring ``group.members``: all at once (ringall) or in turn (hunt)."""

    group: Group

    @property
    def members(self) -> tuple[str, ...]:
        return self.group.members

    @property
    def strategy(self) -> str:
        return self.group.strategy

    @property
    def ring_timeout(self) -> int:
        return self.group.ring_timeout


@dataclass(frozen=True, slots=True)
class VoicemailTarget:
    """``mailbox`` is the named group ``mailbox`` of the voicemail pattern
    (``*981001`` -> ``"1001"``); None when the pattern has none (the caller's
    own box), "" when the group matched nothing (the application asks)."""

    mailbox: str | None = None


@dataclass(frozen=True, slots=True)
class AttendantTarget:
    pass


@dataclass(frozen=True, slots=True)
class NotFound:
    """No target; ``reason`` is short lower-case text (it may become the
    SIP reason phrase)."""

    reason: str


Route = ExtensionTarget | GroupTarget | VoicemailTarget | AttendantTarget | NotFound


def _compile(pattern: str | None) -> re.Pattern[str] | None:
    return None if pattern is None else re.compile(pattern)


def _matches(pattern: re.Pattern[str] | None, number: str) -> re.Match[str] | None:
    return None if pattern is None else pattern.fullmatch(number)


class DialPlan:
    """Routes dialled numbers; immutable once built."""

    def __init__(
        self,
        is_extension: Callable[[str], bool],
        *,
        groups: Iterable[Group] = (),
        internal: str | None = DEFAULT_INTERNAL,
        voicemail: str | None = None,
        attendant: str | None = None,
        attendant_number: str | None = None,
        patterns: Mapping[str, str] | None = None,
        allow_unauthenticated: Iterable[str] = (),
    ) -> None:
        self.is_extension = is_extension
        self.groups: dict[str, Group] = {group.number: group for group in groups}
        self.internal = _compile(internal)
        self.voicemail = _compile(voicemail)
        self.attendant = _compile(attendant)
        self.attendant_number = None if attendant_number is None else normalise(attendant_number)
        # Every dialplan entry by name, the ones route() does not use included
        # (user patterns, e.g. for trunks later).
        self.patterns: dict[str, re.Pattern[str]] = {
            name: re.compile(pattern) for name, pattern in (patterns or {}).items()
        }
        self._unauthenticated = tuple(re.compile(p) for p in allow_unauthenticated)

    @classmethod
    def from_config(cls, config: Any, is_extension: Callable[[str], bool] | None = None) -> DialPlan:
        """Build from a `pbx.config.Config`.

        ``is_extension`` should consult the live extension directory; without
        it only the configured extensions count.
        """
        if is_extension is None:
            is_extension = frozenset(e.number for e in config.extensions).__contains__
        dialplan = dict(config.dialplan)
        return cls(
            is_extension,
            groups=[
                Group(g.number, tuple(g.members), g.strategy, g.ring_timeout, g.name)
                for g in config.groups
            ],
            internal=dialplan.get("internal", DEFAULT_INTERNAL),
            voicemail=dialplan.get("voicemail"),
            attendant=dialplan.get("attendant"),
            attendant_number=config.auto_attendant.extension,
            patterns=dialplan,
            allow_unauthenticated=config.features.allow_unauthenticated,
        )

    def route(self, number: str, caller: str | None = None) -> Route:
        """Where ``number`` (as dialled, separators allowed) goes.

        ``caller`` is left out of a group it dials, so that a member calling
        its own group does not ring itself.
        """
        number = normalise(number)
        if not number:
            return NotFound("empty number")
        group = self.groups.get(number)
        if group is not None:
            if caller is not None and caller in group.members:
                others = tuple(m for m in group.members if m != caller)
                if not others:
                    return NotFound("no other group member")
                group = replace(group, members=others)
            return GroupTarget(group)
        if self.is_extension(number):
            return ExtensionTarget(number)
        match = _matches(self.voicemail, number)
        if match is not None:
            # None: the pattern has no mailbox (one's own box); "": it was left empty (ask for one).
            mailbox = match.groupdict().get("mailbox")
            if mailbox and not self.is_extension(mailbox):
                return NotFound("no such mailbox")
            return VoicemailTarget(mailbox)
        if number == self.attendant_number or _matches(self.attendant, number):
            return AttendantTarget()
        if _matches(self.internal, number):
            return NotFound("no such extension")
        return NotFound("no route")

    def allows_unauthenticated(self, number: str) -> bool:
        """Whether a caller without credentials may dial ``number``
        (``features.allow_unauthenticated``; nothing by default)."""
        number = normalise(number)
        return bool(number) and any(p.fullmatch(number) for p in self._unauthenticated)

    def matches(self, name: str, number: str) -> bool:
        """Whether the ``dialplan.<name>`` pattern matches the whole number."""
        pattern = self.patterns.get(name)
        return pattern is not None and pattern.fullmatch(normalise(number)) is not None
