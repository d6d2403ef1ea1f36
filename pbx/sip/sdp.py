"""Session descriptions (RFC 4566) and the offer/answer rewrites a relay needs (RFC 3264).

Every line is kept, in order, as (type, value): the PBX rewrites only what the
relay changes (origin, connection, ports, RTCP, ICE) and passes the rest,
codecs included, from one phone to the other. Parsing is strict only where the
PBX interprets a line (v=, o=, c=, m=); unknown lines and attributes survive a
round trip unchanged. Bytes that are not UTF-8 are carried through
(surrogateescape), since RFC 4566 lets a=charset change the encoding.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import NamedTuple

from pbx.media.rtp import STATIC_PAYLOAD_TYPES

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
HOLD_DIRECTIONS = frozenset({"sendonly", "inactive"})
# Attributes that describe ICE paths (RFC 8839, RFC 8840); through a relay they lead nowhere.
_ICE_ATTRIBUTES = frozenset({"candidate", "remote-candidates", "end-of-candidates"})
_PORT_RE = re.compile(r"([0-9]{1,5})(?:/([0-9]{1,5}))?\Z")
# Session-level lines that come before c= (RFC 4566 §5 order: v o s i u e p c b t r z k a).
_BEFORE_CONNECTION = frozenset("vosiuep")
_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")  # the type of a line

Line = tuple[str, str]


class SDPError(ValueError):
    """A body that is not a usable session description (the call gets 488)."""


class Connection(NamedTuple):
    """A c= line: nettype, addrtype, and the address without /ttl or /count."""

    nettype: str
    addrtype: str
    address: str

    @classmethod
    def parse(cls, value: str) -> Connection:
        parts = value.split()
        if len(parts) != 3:
            raise SDPError(f"bad c= line: {value!r}")
        nettype, addrtype, address = parts
        return cls(nettype, addrtype, address.split("/", 1)[0])


class OriginField(NamedTuple):
    """The o= line of a parsed description (text as received)."""

    username: str
    session_id: str
    version: str
    nettype: str
    addrtype: str
    address: str


class Attribute(NamedTuple):
    """An a= line: "a=name:value" or the flag "a=name" (value None)."""

    name: str
    value: str | None


def _attribute(value: str) -> Attribute:
    name, colon, rest = value.partition(":")
    return Attribute(name.strip(), rest if colon else None)


def _attributes(lines: list[Line]) -> list[Attribute]:
    return [_attribute(v) for t, v in lines if t == "a"]


def _connection(lines: list[Line]) -> Connection | None:
    for t, v in lines:
        if t == "c":
            return Connection.parse(v)
    return None


def _direction(lines: list[Line]) -> str | None:
    found = None
    for t, v in lines:
        if t == "a":
            flag = v.strip()
            if flag in DIRECTIONS:
                found = flag  # the last one wins, as most stacks do
    return found


@dataclass
class MediaDescription:
    """One m= section: the parsed m= line and every line after it, in order."""

    media: str
    port: int
    proto: str
    formats: list[str]
    port_count: int | None = None
    lines: list[Line] = field(default_factory=list)

    @classmethod
    def parse_m_line(cls, value: str) -> MediaDescription:
        parts = value.split()
        if len(parts) < 3:
            raise SDPError(f"bad m= line: {value!r}")
        match = _PORT_RE.match(parts[1])
        if match is None:
            raise SDPError(f"bad port in m= line: {value!r}")
        port = int(match.group(1))
        count = int(match.group(2)) if match.group(2) is not None else None
        if port > 65535 or count == 0:
            raise SDPError(f"bad port in m= line: {value!r}")
        return cls(parts[0], port, parts[2], parts[3:], count)

    def m_line(self) -> str:
        port = str(self.port) if self.port_count is None else f"{self.port}/{self.port_count}"
        return " ".join([self.media, port, self.proto, *self.formats])

    @property
    def connection(self) -> Connection | None:
        """The media-level c= (see `connection_address` for the effective one)."""
        return _connection(self.lines)

    @property
    def attributes(self) -> list[Attribute]:
        """Media-level a= lines in order (rtpmap, fmtp, ptime, direction, rtcp, ...)."""
        return _attributes(self.lines)

    def attribute(self, name: str) -> str | None:
        """The value of the first a=name (\"\" for a flag), or None."""
        for attribute in self.attributes:
            if attribute.name == name:
                return "" if attribute.value is None else attribute.value
        return None

    @property
    def rtpmap(self) -> dict[int, tuple[str, int, int | None]]:
        """a=rtpmap by payload type: (encoding name, clock rate, channels or None)."""
        result: dict[int, tuple[str, int, int | None]] = {}
        for attribute in self.attributes:
            if attribute.name != "rtpmap" or attribute.value is None:
                continue
            parts = attribute.value.split(None, 1)
            if len(parts) != 2 or not _is_number(parts[0]):
                continue
            encoding = parts[1].strip().split("/")
            if len(encoding) < 2 or not _is_number(encoding[1]):
                continue
            channels = int(encoding[2]) if len(encoding) > 2 and _is_number(encoding[2]) else None
            result.setdefault(int(parts[0]), (encoding[0], int(encoding[1]), channels))
        return result

    @property
    def fmtp(self) -> dict[str, str]:
        """a=fmtp by format: the parameter string, uninterpreted."""
        result: dict[str, str] = {}
        for attribute in self.attributes:
            if attribute.name == "fmtp" and attribute.value is not None:
                parts = attribute.value.split(None, 1)
                if parts:
                    result.setdefault(parts[0], parts[1].strip() if len(parts) > 1 else "")
        return result

    @property
    def ptime(self) -> int | None:
        value = self.attribute("ptime")
        return int(value.strip()) if value is not None and _is_number(value.strip()) else None

    @property
    def direction(self) -> str | None:
        """The media-level direction attribute only (see `direction()` for the effective one)."""
        return _direction(self.lines)

    @property
    def rtcp(self) -> tuple[int, Connection | None] | None:
        """a=rtcp (RFC 3605): the RTCP port and, when given, its address."""
        value = self.attribute("rtcp")
        if value is None:
            return None
        parts = value.split(None, 1)
        if not parts or not _is_number(parts[0]) or int(parts[0]) > 65535:
            return None
        try:
            connection = Connection.parse(parts[1]) if len(parts) > 1 else None
        except SDPError:
            connection = None
        return int(parts[0]), connection


@dataclass
class SessionDescription:
    """Session-level lines (v= first) and the m= sections, every line in order."""

    lines: list[Line]
    media: list[MediaDescription] = field(default_factory=list)

    @classmethod
    def parse(cls, body: bytes) -> SessionDescription:
        """Parse an SDP body; SDPError on anything that is not one."""
        text = bytes(body).decode("utf-8", "surrogateescape")
        # Most bodies have no control character at all: look line by line only when there is one.
        suspect = "\x00" in text or "\r" in text.replace("\r\n", "")
        session: list[Line] = []
        media: list[MediaDescription] = []
        current = session
        for raw in text.split("\n"):
            line = raw[:-1] if raw[-1:] == "\r" else raw
            if not line or line.isspace():
                continue
            kind = line[0]
            if line[1:2] != "=" or kind not in _LETTERS:
                raise SDPError(f"not an SDP line: {line[:40]!r}")
            if suspect and ("\r" in line or "\x00" in line):
                raise SDPError(f"control character in SDP line: {line[:40]!r}")
            value = line[2:]
            if not session:
                if kind != "v" or value.strip() != "0":
                    raise SDPError("SDP must start with v=0")
            elif kind == "m":
                section = MediaDescription.parse_m_line(value)
                media.append(section)
                current = section.lines
                continue
            elif kind == "c":
                Connection.parse(value)
            elif kind == "o" and current is session and len(value.split()) != 6:
                raise SDPError(f"bad o= line: {value!r}")
            current.append((kind, value))
        if not session:
            raise SDPError("empty SDP body")
        return cls(session, media)

    def to_bytes(self) -> bytes:
        """The description with CRLF line ends (RFC 4566 §5)."""
        return _serialize(self.lines, self.media)

    def copy(self) -> SessionDescription:
        return SessionDescription(
            list(self.lines),
            [
                MediaDescription(m.media, m.port, m.proto, list(m.formats), m.port_count, list(m.lines))
                for m in self.media
            ],
        )

    @property
    def origin(self) -> OriginField | None:
        for t, v in self.lines:
            if t == "o":
                return OriginField(*v.split())
        return None

    @property
    def connection(self) -> Connection | None:
        """The session-level c=."""
        return _connection(self.lines)

    @property
    def attributes(self) -> list[Attribute]:
        """Session-level a= lines in order."""
        return _attributes(self.lines)


@dataclass(eq=False)
class Origin:
    """The PBX's own o= for the descriptions it sends on one call leg.

    The caller keeps one per leg for the whole call. RFC 3264 §8: the version
    goes up exactly when the description sent on that leg differs from the
    previous one, so a retransmitted or repeated answer (183 then 200) keeps it.
    """

    address: str
    username: str = "pbx"
    session_id: int = field(default_factory=lambda: random.randint(1, 2**31 - 1))
    version: int = 1
    _last: bytes | None = field(default=None, repr=False)

    def stamp(self, content: bytes) -> int:
        """The version for a description whose body (without o=) is `content`."""
        if self._last is not None and content != self._last:
            self.version += 1
        self._last = content
        return self.version

    def line(self) -> str:
        """The o= value."""
        return f"{self.username} {self.session_id} {self.version} IN {_addrtype(self.address)} {self.address}"


def connection_address(sdp: SessionDescription, media: MediaDescription | None = None) -> str | None:
    """Where a stream's media goes: the media-level c= address, else the session-level one."""
    if media is not None:
        connection = media.connection
        if connection is not None:
            return connection.address
    connection = sdp.connection
    return connection.address if connection is not None else None


def direction(sdp: SessionDescription, media: MediaDescription) -> str:
    """The effective direction of a stream: media attribute, else session attribute, else sendrecv."""
    return media.direction or _direction(sdp.lines) or "sendrecv"


def codecs(media: MediaDescription) -> list[tuple[int, str, int]]:
    """(payload type, encoding name, clock rate) per RTP format in m= order.

    a=rtpmap wins; static payload types without one take their RFC 3551 values;
    dynamic types without an rtpmap are left out (nobody can tell what they are).
    """
    if "RTP/" not in media.proto.upper():
        return []
    rtpmap = media.rtpmap
    result = []
    for fmt in media.formats:
        if not _is_number(fmt) or int(fmt) > 127:
            continue
        pt = int(fmt)
        if pt in rtpmap:
            name, rate, _ = rtpmap[pt]
            result.append((pt, name, rate))
        elif pt in STATIC_PAYLOAD_TYPES:
            name, rate = STATIC_PAYLOAD_TYPES[pt]
            result.append((pt, name, rate))
    return result


def is_hold(sdp: SessionDescription) -> bool:
    """Whether a description puts the call on hold.

    Hold is every active stream (port not 0) being sendonly or inactive
    (RFC 3264 §8.4), or aimed at 0.0.0.0 (RFC 2543 style). A description with
    no active stream at all is not hold.
    """
    active = [m for m in sdp.media if m.port != 0]
    if not active:
        return False
    for media in active:
        if direction(sdp, media) in HOLD_DIRECTIONS:
            continue
        if connection_address(sdp, media) == "0.0.0.0":
            continue
        return False
    return True


def set_direction(sdp: SessionDescription, media_index: int, value: str) -> SessionDescription:
    """A copy of `sdp` with one stream's direction attribute replaced (for hold/resume)."""
    if value not in DIRECTIONS:
        raise ValueError(f"not an SDP direction: {value!r}")
    result = sdp.copy()
    media = result.media[media_index]
    media.lines = [(t, v) for t, v in media.lines if not (t == "a" and v.strip() in DIRECTIONS)]
    media.lines.append(("a", value))
    return result


def rewrite_for_relay(
    sdp: SessionDescription, address: str, ports: list[int | None], origin: Origin
) -> bytes:
    """The description one phone sent, as the PBX passes it to the other phone.

    Media goes to the relay: every c= names `address`, the i-th m= gets
    ports[i] (None, a missing entry, or a stream the phone already disabled:
    port 0), a=rtcp points at port+1, ICE attributes go (their candidates
    bypass the relay), and o= is the PBX's `origin` for that leg, whose
    version goes up only when the result differs from the last one sent.
    Codec lines (m= formats, rtpmap, fmtp, ptime) pass untouched.
    """
    connection = f"IN {_addrtype(address)} {address}"
    session: list[Line] = []
    have_connection = False
    for t, v in sdp.lines:
        if t == "o" or (t == "a" and _is_ice(_attribute_name(v))):
            continue
        if t == "c":
            if not have_connection:
                session.append(("c", connection))
                have_connection = True
            continue
        session.append((t, v))
    if not have_connection:
        at = next((i for i, (t, _) in enumerate(session) if t not in _BEFORE_CONNECTION), len(session))
        session.insert(at, ("c", connection))

    media: list[MediaDescription] = []
    for index, section in enumerate(sdp.media):
        port = ports[index] if index < len(ports) else None
        if port is None or section.port == 0:
            port = 0
        lines: list[Line] = []
        for t, v in section.lines:
            if t == "c":
                lines.append(("c", connection))
            elif t == "a":
                name = _attribute_name(v)
                if _is_ice(name):
                    continue
                if name == "rtcp":
                    if port:
                        lines.append(("a", f"rtcp:{port + 1}"))
                    continue
                lines.append((t, v))
            else:
                lines.append((t, v))
        media.append(MediaDescription(section.media, port, section.proto, list(section.formats), None, lines))

    # The version is decided on the description without o=; o= then goes second, after v=.
    first = _text(session[:1], [])
    rest = _text(session[1:], media)
    origin.stamp((first + rest).encode("utf-8", "surrogateescape"))
    return (first + f"o={origin.line()}\r\n" + rest).encode("utf-8", "surrogateescape")


def _serialize(session: list[Line], media: list[MediaDescription]) -> bytes:
    return _text(session, media).encode("utf-8", "surrogateescape")


def _text(session: list[Line], media: list[MediaDescription]) -> str:
    out = [f"{t}={v}\r\n" for t, v in session]
    for section in media:
        out.append(f"m={section.m_line()}\r\n")
        out.extend([f"{t}={v}\r\n" for t, v in section.lines])
    return "".join(out)


def _attribute_name(value: str) -> str:
    """The name of an a= line's value ("rtpmap" of "rtpmap:0 PCMU/8000")."""
    return value.partition(":")[0].strip()


def _is_ice(name: str) -> bool:
    return name in _ICE_ATTRIBUTES or name.startswith("ice-")


def _is_number(text: str) -> bool:
    return 0 < len(text) <= 10 and text.isascii() and text.isdigit()


def _addrtype(address: str) -> str:
    return "IP6" if ":" in address else "IP4"
