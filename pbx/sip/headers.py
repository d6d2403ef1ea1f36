"""Structured header values: Via, name-addr (From/To/Contact/Route), CSeq, lists.

Each parser takes the unfolded header value as text and raises ParseError on
anything the RFC 3261 grammar refuses, so the core can answer 400.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pbx.sip.errors import ParseError
from pbx.sip.uri import AbsoluteURI, SipURI, parse_uri

TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_TOKEN_RE = re.compile(TOKEN + r"\Z")
_QUOTED = r'"(?:[^"\\]|\\.)*"'
# One ";name[=value]" with the linear whitespace RFC 3261 allows around it.
_PARAM_RE = re.compile(
    r"\s*;\s*(" + TOKEN + r")\s*(?:=\s*(" + _QUOTED + r"|\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-.!%*_+`'~:]+))?\s*"
)
_VIA_RE = re.compile(
    r"\s*(" + TOKEN + r")\s*/\s*(" + TOKEN + r")\s*/\s*(" + TOKEN + r")\s+"
    r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-.]+)(?:\s*:\s*([0-9]{1,5}))?"
)
# One way only to split the words: "(?:TOKEN\s*)+" backtracks exponentially.
_DISPLAY_TOKENS = re.compile(TOKEN + r"(?:\s+" + TOKEN + r")*\s*\Z")
_CSEQ_RE = re.compile(r"\s*([0-9]{1,10})\s+(" + TOKEN + r")\s*\Z")
MAX_CSEQ = 2**32 - 1


def split_list(value: str) -> list[str]:
    """Split a comma-separated header value, respecting quotes and <...>."""
    if "," not in value:
        return [value.strip()]
    items: list[str] = []
    depth = 0
    quoted = False
    start = 0
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == "<":
            depth += 1
        elif c == ">":
            depth -= 1
        elif c == "," and depth == 0:
            items.append(value[start:i].strip())
            start = i + 1
        i += 1
    items.append(value[start:].strip())
    return items


def parse_params(text: str, where: str) -> dict[str, str | None]:
    """Parse ';name=value' parameters; names are case-insensitive (lowered)."""
    params: dict[str, str | None] = {}
    pos = 0
    n = len(text)
    while pos < n:
        m = _PARAM_RE.match(text, pos)
        if m is None or m.end() == pos:
            if text[pos:].strip():
                raise ParseError(f"bad parameter in {where}")
            break
        params[m.group(1).lower()] = m.group(2)
        pos = m.end()
    return params


def format_params(params: dict[str, str | None]) -> str:
    return "".join(";" + k if v is None else f";{k}={v}" for k, v in params.items())


def unquote_string(text: str) -> str:
    """Remove the quotes of a quoted-string and its backslash escapes."""
    inner = text[1:-1]
    return re.sub(r"\\(.)", r"\1", inner) if "\\" in inner else inner


def quote_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(slots=True)
class Via:
    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    protocol: str = "SIP/2.0"

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.protocol}/{self.transport} {self.sent_by()}{format_params(self.params)}"


def parse_via(value: str) -> Via:
    m = _VIA_RE.match(value)
    if m is None:
        raise ParseError("bad Via")
    name, version, transport, host, port = m.groups()
    if port is not None and int(port) > 65535:
        raise ParseError("bad Via port")
    params = parse_params(value[m.end() :], "Via")
    for key in ("branch", "received", "maddr", "ttl"):
        if key in params and not params[key]:
            raise ParseError(f"empty Via {key}")
    return Via(
        transport.upper(),
        host,
        None if port is None else int(port),
        params,
        f"{name.upper()}/{version}",
    )


def parse_via_list(values: list[str]) -> list[Via]:
    return [parse_via(item) for value in values for item in split_list(value)]


@dataclass(slots=True)
class NameAddr:
    uri: SipURI | AbsoluteURI
    display: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def __str__(self) -> str:
        display = "" if self.display is None else quote_string(self.display) + " "
        return f"{display}<{self.uri}>{format_params(self.params)}"


def parse_name_addr(value: str, where: str = "header") -> NameAddr:
    """Parse name-addr or addr-spec followed by header parameters."""
    text = value.strip()
    display: str | None = None
    if text.startswith('"'):
        m = re.match(_QUOTED, text)
        if m is None:
            raise ParseError(f"unterminated quoted display name in {where}")
        display = unquote_string(m.group(0))
        text = text[m.end() :].lstrip()
        if not text.startswith("<"):
            raise ParseError(f"quoted display name without <URI> in {where}")
    lt = text.find("<")
    if lt >= 0:
        if display is None and lt > 0:
            words = text[:lt]
            if not _DISPLAY_TOKENS.match(words):
                raise ParseError(f"bad display name in {where}")
            display = " ".join(words.split())
        gt = text.find(">", lt)
        if gt < 0:
            raise ParseError(f"missing > in {where}")
        uri = parse_uri(text[lt + 1 : gt])
        rest = text[gt + 1 :]
    else:
        semi = text.find(";")
        spec = text if semi < 0 else text[:semi]
        rest = "" if semi < 0 else text[semi:]
        spec = spec.strip()
        if "?" in spec or "," in spec:
            raise ParseError(f"URI with ? or , must be enclosed in <> in {where}")
        uri = parse_uri(spec)
    return NameAddr(uri, display, parse_params(rest, where))


@dataclass(slots=True)
class CSeq:
    number: int
    method: str

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


def parse_cseq(value: str) -> CSeq:
    m = _CSEQ_RE.match(value)
    if m is None:
        raise ParseError("bad CSeq")
    number = int(m.group(1))
    if number > MAX_CSEQ:
        raise ParseError("CSeq number out of range")
    return CSeq(number, m.group(2))


def is_token(text: str) -> bool:
    return bool(_TOKEN_RE.match(text))
