"""SIP messages on bytes: parse, serialize, frame (RFC 3261 §7, §18.3, §20).

Pure code: bytes in, objects out. Header values are kept as unfolded text;
structured views (Via, name-addr, CSeq) are parsed on demand by
`pbx.sip.headers`, so a request that is only challenged costs little.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from pbx.sip.errors import ParseError, VersionNotSupported
from pbx.sip.headers import (
    TOKEN,
    CSeq,
    NameAddr,
    Via,
    parse_cseq,
    parse_name_addr,
    parse_via,
    parse_via_list,
    split_list,
)

COMPACT = {
    "i": "call-id", "m": "contact", "e": "content-encoding", "l": "content-length",
    "c": "content-type", "f": "from", "s": "subject", "k": "supported", "t": "to",
    "v": "via", "o": "event", "r": "refer-to", "u": "allow-events", "a": "accept-contact",
    "b": "referred-by", "j": "reject-contact", "d": "request-disposition",
    "x": "session-expires", "y": "identity", "n": "identity-info",
}  # fmt: skip

_SPELLING = {
    "call-id": "Call-ID", "cseq": "CSeq", "www-authenticate": "WWW-Authenticate",
    "mime-version": "MIME-Version", "rack": "RAck", "rseq": "RSeq", "sip-etag": "SIP-ETag",
    "sip-if-match": "SIP-If-Match",
}  # fmt: skip

_NAME_RE = re.compile(TOKEN + r"\Z")
_METHOD_RE = re.compile(TOKEN + r"\Z")
_VERSION_RE = re.compile(r"SIP/([0-9]+)\.([0-9]+)\Z", re.IGNORECASE)
_CRLF2 = b"\r\n\r\n"
MAX_UDP_SIZE = 65535


_KEYS: dict[str, str] = {}
_KEYS_MAX = 4096


def header_key(name: str) -> str:
    """Case-insensitive key for a header name, compact forms expanded.

    Memoized: the same few spellings arrive in every message. The memo is
    bounded so a peer inventing header names cannot grow it without limit.
    """
    key = _KEYS.get(name)
    if key is None:
        lower = name.lower()
        key = COMPACT.get(lower, lower)
        if len(_KEYS) < _KEYS_MAX:
            _KEYS[name] = key
    return key


def _spell(key: str) -> str:
    return _SPELLING.get(key) or "-".join(part.capitalize() for part in key.split("-"))


class Headers:
    """An ordered multi-map of header fields.

    Fields with the same name keep their relative order (RFC 3261 §7.3.1); the
    order between different names is not significant and may change.
    """

    __slots__ = ("_fields", "_names")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._fields: dict[str, list[str]] = {}
        self._names: dict[str, str] = {}
        for name, value in items:
            self.add(name, value)

    def add(self, name: str, value: str, first: bool = False) -> None:
        key = header_key(name)
        values = self._fields.get(key)
        if values is None:
            self._fields[key] = [value]
            self._names[key] = _spell(key) if len(name) == 1 else name
        elif first:
            values.insert(0, value)
        else:
            values.append(value)

    def set(self, name: str, value: str) -> None:
        key = header_key(name)
        if key not in self._fields:
            self._names[key] = _spell(key) if len(name) == 1 else name
        self._fields[key] = [value]

    def remove(self, name: str) -> None:
        key = header_key(name)
        self._fields.pop(key, None)
        self._names.pop(key, None)

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self._fields.get(header_key(name))
        return values[0] if values else default

    def values(self, name: str) -> list[str]:
        """Every field line of this name, unsplit."""
        return list(self._fields.get(header_key(name), ()))

    def get_list(self, name: str) -> list[str]:
        """Every element of a comma-separated list header (Via, Contact, ...)."""
        out: list[str] = []
        for value in self._fields.get(header_key(name), ()):
            out.extend(split_list(value))
        return [item for item in out if item]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and header_key(name) in self._fields

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return self.items()

    def items(self) -> Iterator[tuple[str, str]]:
        for key, values in self._fields.items():
            name = self._names[key]
            for value in values:
                yield name, value

    def copy(self) -> Headers:
        new = Headers()
        new._fields = {k: list(v) for k, v in self._fields.items()}
        new._names = dict(self._names)
        return new

    def __repr__(self) -> str:
        return f"Headers({list(self.items())!r})"


class Message:
    __slots__ = ("headers", "body", "version", "_vias", "_cseq", "_from", "_to", "_contacts")

    def __init__(self, headers: Headers | None = None, body: bytes = b"", version: str = "SIP/2.0") -> None:
        self.headers = headers if headers is not None else Headers()
        self.body = body
        self.version = version
        self._vias: list[Via] | None = None
        self._cseq: CSeq | None = None
        self._from: NameAddr | None = None
        self._to: NameAddr | None = None
        self._contacts: list[NameAddr | str] | None = None

    # Structured views, parsed once and cached. Callers that change the
    # underlying header must call `invalidate()`.
    @property
    def vias(self) -> list[Via]:
        if self._vias is None:
            # Unlike get_list, an empty element ("Via: a, , b") is refused.
            self._vias = parse_via_list(self.headers._fields.get("via", ()))
        return self._vias

    @property
    def top_via(self) -> Via:
        values = self.headers._fields.get("via")
        if not values:
            raise ParseError("missing Via")
        if self._vias is not None:
            return self._vias[0]
        return parse_via(split_list(values[0])[0])

    @property
    def cseq(self) -> CSeq:
        if self._cseq is None:
            value = self.headers.get("cseq")
            if value is None:
                raise ParseError("missing CSeq")
            self._cseq = parse_cseq(value)
        return self._cseq

    @property
    def call_id(self) -> str:
        value = self.headers.get("call-id")
        if not value:
            raise ParseError("missing Call-ID")
        return value

    def from_(self) -> NameAddr:
        if self._from is None:
            self._from = parse_name_addr(self.headers.get("from") or "", "From")
        return self._from

    def to(self) -> NameAddr:
        if self._to is None:
            self._to = parse_name_addr(self.headers.get("to") or "", "To")
        return self._to

    def contacts(self) -> list[NameAddr | str]:
        """Parsed Contact values; the wildcard stays the string "*"."""
        if self._contacts is None:
            self._contacts = [
                value if value == "*" else parse_name_addr(value, "Contact")
                for value in self.headers.get_list("contact")
            ]
        return self._contacts

    def invalidate(self) -> None:
        self._vias = None
        self._cseq = None
        self._from = None
        self._to = None
        self._contacts = None

    def start_line(self) -> str:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """Serialize; Content-Length always states the real body length."""
        lines = [self.start_line()]
        names = self.headers._names
        for key, values in self.headers._fields.items():
            if key != "content-length":
                name = names[key]
                for value in values:
                    lines.append(f"{name}: {value}")
        lines.append(f"Content-Length: {len(self.body)}")
        lines.append("\r\n")
        return "\r\n".join(lines).encode("utf-8", "surrogateescape") + self.body


class Request(Message):
    __slots__ = ("method", "uri")

    def __init__(self, method: str, uri: str, headers: Headers | None = None, body: bytes = b"", version: str = "SIP/2.0") -> None:
        super().__init__(headers, body, version)
        self.method = method
        self.uri = uri

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


class Response(Message):
    __slots__ = ("status", "reason")

    def __init__(self, status: int, reason: str = "", headers: Headers | None = None, body: bytes = b"", version: str = "SIP/2.0") -> None:
        super().__init__(headers, body, version)
        self.status = status
        self.reason = reason

    def start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


def _parse_start_line(line: str) -> Request | Response:
    if line[:4].upper() == "SIP/":
        parts = line.split(" ", 2)
        m = _VERSION_RE.match(parts[0])
        if len(parts) < 3 or m is None:
            raise ParseError("bad status line")
        if m.groups() != ("2", "0"):
            raise VersionNotSupported(f"version {parts[0]} not supported")
        code = parts[1]
        if len(code) != 3 or not (code.isascii() and code.isdigit()) or not "100" <= code <= "699":
            raise ParseError("bad status code")
        return Response(int(code), parts[2], version="SIP/2.0")
    parts = line.split(" ")
    if len(parts) != 3:
        raise ParseError("bad request line")
    method, uri, version = parts
    if not _METHOD_RE.match(method) or not uri:
        raise ParseError("bad request line")
    m = _VERSION_RE.match(version)
    if m is None:
        raise ParseError("bad SIP version")
    if m.groups() != ("2", "0"):
        raise VersionNotSupported(f"version {version} not supported")
    return Request(method, uri, version="SIP/2.0")


def parse_head(head: bytes) -> Request | Response:
    """Parse the start line and header fields (everything before the blank line)."""
    text = head.decode("utf-8", "surrogateescape")
    if text[-1:] == "\r":
        text = text[:-1]  # "\r\n\n" ending a head found by the bare-LF fallback
    lines = text.split("\r\n")
    if len(lines) == 1 and "\n" in text:
        lines = text.split("\n")
    # A CR or LF inside a line would survive into a value and split it in two
    # when the message is serialized again (RFC 3261 §7.3.1 allows neither).
    if text.count("\n") != len(lines) - 1 or text.count("\r") != (len(lines) - 1 if "\r\n" in text else 0):
        raise ParseError("stray CR or LF in the header section")
    message = _parse_start_line(lines[0])
    if "\n " in text or "\n\t" in text:
        lines = _unfold(lines)
    # Headers.add, inlined: this loop runs for every header of every message.
    fields = message.headers._fields
    names = message.headers._names
    known = _KEYS  # names seen before are valid tokens: skip the regex
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        key = known.get(name)
        if key is None:
            name = name.rstrip(" \t")
            if not colon or not _NAME_RE.match(name):
                raise ParseError(f"bad header line {line[:40]!r}")
            key = header_key(name)
        elif not colon:
            raise ParseError(f"bad header line {line[:40]!r}")
        values = fields.get(key)
        if values is None:
            fields[key] = [value.strip(" \t")]
            names[key] = name if len(name) > 1 else _spell(key)
        else:
            values.append(value.strip(" \t"))
    return message


def _unfold(lines: list[str]) -> list[str]:
    """Join continuation lines to the header line they continue (RFC 3261 §7.3.1)."""
    out = lines[:1]
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t":
            if len(out) == 1:
                raise ParseError("continuation line before any header")
            more = line.strip(" \t")
            if more:
                out[-1] = out[-1].rstrip(" \t") + " " + more
            continue
        out.append(line)
    return out


def content_length(message: Message) -> int | None:
    """The declared body length; ParseError for a missing-but-garbled or duplicated one."""
    values = message.headers._fields.get("content-length")
    if not values:
        return None
    if len(values) > 1:
        raise ParseError("more than one Content-Length")
    text = values[0]
    if not (text.isascii() and text.isdigit()) or len(text) > 10:
        raise ParseError("bad Content-Length")
    return int(text)


def parse_datagram(data: bytes) -> Request | Response:
    """Parse one UDP datagram (RFC 3261 §18.3).

    A body shorter than Content-Length is an error; octets past it are ignored;
    without Content-Length the body is the rest of the datagram.
    """
    end = data.find(_CRLF2)
    skip = 4
    if end < 0:
        end = data.find(b"\n\n")  # tolerate bare-LF senders
        skip = 2
        if end < 0:
            raise ParseError("no blank line after the headers")
    message = parse_head(data[:end])
    body = data[end + skip :]
    length = content_length(message)
    if length is not None:
        if len(body) < length:
            raise ParseError("body shorter than Content-Length")
        body = body[:length]
    message.body = body
    return message


class StreamFramer:
    """Cut a TCP byte stream into SIP messages (RFC 3261 §18.3).

    Content-Length is mandatory on streams; a message larger than `max_size`
    or with unusable framing raises ParseError, after which the connection
    cannot be trusted and should be closed.
    """

    def __init__(self, max_size: int = MAX_UDP_SIZE) -> None:
        self._buffer = b""
        self.max_size = max_size

    def feed(self, data: bytes) -> list[Request | Response]:
        self._buffer += data
        out: list[Request | Response] = []
        while True:
            buf = self._buffer.lstrip(b"\r\n")  # keep-alive CRLFs (RFC 5626 §3.5.1)
            self._buffer = buf
            end = buf.find(_CRLF2)
            if end < 0:
                if len(buf) > self.max_size:
                    raise ParseError("message too large")
                return out
            message = parse_head(buf[:end])
            length = content_length(message)
            if length is None:
                raise ParseError("Content-Length is required on stream transports")
            total = end + 4 + length
            if total > self.max_size:
                raise ParseError("message too large")
            if len(buf) < total:
                return out
            message.body = buf[end + 4 : total]
            self._buffer = buf[total:]
            out.append(message)



def _has_tag(value: str) -> bool:
    """Whether a To value carries a tag parameter (not one inside its URI or display name)."""
    if "tag" not in value.lower():
        return False  # the common case, decided without parsing
    try:
        return "tag" in parse_name_addr(value, "To").params
    except ParseError:
        return ";tag=" in "".join(value.split()).lower()


def make_response(request: Request, status: int, reason: str, to_tag: str | None = None) -> Response:
    """A response to `request` per RFC 3261 §8.2.6: Via, From, Call-ID, CSeq copied, To tagged.

    The top Via carries the `received`/`rport` values the transport stored on
    the request's first Via (RFC 3261 §18.2.1, RFC 3581).
    """
    src = request.headers._fields
    response = Response(status, reason)
    # Filled field by field rather than through Headers.add: every answer
    # the PBX sends is built here.
    fields = response.headers._fields
    names = response.headers._names
    vias = src.get("via")
    if vias:
        vias = list(vias)
        if request._vias:
            first = request._vias[0]
            if "received" in first.params or first.params.get("rport"):
                items = split_list(vias[0])
                items[0] = str(first)
                vias[0] = ", ".join(items)
        fields["via"] = vias
        names["via"] = "Via"
    for key, name in _COPIED:
        values = src.get(key)
        if values:
            value = values[0]
            if key == "to" and to_tag is not None and status > 100 and not _has_tag(value):
                value = f"{value};tag={to_tag}"
            fields[key] = [value]
            names[key] = name
    return response


_COPIED = (("from", "From"), ("to", "To"), ("call-id", "Call-ID"), ("cseq", "CSeq"))
