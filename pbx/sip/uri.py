"""SIP and SIPS URIs (RFC 3261 §19.1), parsed strictly enough to refuse garbage.

Other schemes (tel:, soap.beep:, ...) parse as opaque `AbsoluteURI` so that the
core can answer 416 instead of 400.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote

from pbx.sip.errors import ParseError

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*\Z")
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9.])?\Z|[A-Za-z0-9]\Z")
# unreserved / escaped / user-unreserved / ":" password chars; no "@", no whitespace.
_USERINFO = re.compile(r"[A-Za-z0-9\-_.!~*'()%&=+$,;?/:]*\Z")
_PARAM = re.compile(r"[A-Za-z0-9\-_.!~*'()%\[\]/:&+$]+\Z")
_HEADERS = re.compile(r"[A-Za-z0-9\-_.!~*'()%\[\]/?:+$=&]*\Z")
_FORBIDDEN = re.compile(r'[ \t\r\n<>"]')
# The shape nearly every URI on the wire has: lower-case sip/sips, a plain
# user without password, a host name or IPv4 address, a port, parameters and
# no headers. Whatever it matches, the general parser would accept the same
# way; anything else (IPv6, passwords, escapes in odd places) takes that path.
_PCHARS = r"[A-Za-z0-9\-_.!~*'()%\[\]/:&+$]+"
_COMMON = re.compile(
    r"(sips?):(?:([A-Za-z0-9\-_.!~*'()%&=+$,]+)@)?"
    r"([A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9.])?)(?::([0-9]{1,5}))?"
    r"((?:;" + _PCHARS + r"(?:=" + _PCHARS + r")?)*)\Z"
)


def unescape(text: str) -> str:
    """Decode %HH escapes once (value%41 stays distinct from valueA on the wire)."""
    return unquote(text, errors="surrogateescape") if "%" in text else text


@dataclass(slots=True)
class AbsoluteURI:
    """A URI whose scheme the PBX does not route (kept verbatim)."""

    scheme: str
    opaque: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.opaque}"


@dataclass(slots=True)
class SipURI:
    scheme: str = "sip"
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: str | None = None

    @property
    def user_unescaped(self) -> str | None:
        return None if self.user is None else unescape(self.user)

    def host_port(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out.append(":" + self.password)
            out.append("@")
        out.append(self.host_port())
        for name, value in self.params.items():
            out.append(";" + name if value is None else f";{name}={value}")
        if self.headers is not None:
            out.append("?" + self.headers)
        return "".join(out)


def _parse_host_port(text: str, whole: str) -> tuple[str, int | None]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ParseError(f"unterminated IPv6 reference in {whole!r}")
        host, rest = text[: end + 1], text[end + 1 :]
        if not all(c in "0123456789abcdefABCDEF:." for c in host[1:-1]) or ":" not in host:
            raise ParseError(f"bad IPv6 reference in {whole!r}")
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise ParseError(f"bad host in {whole!r}")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.partition(":")
        if not host or not _HOSTNAME.match(host):
            raise ParseError(f"bad host in {whole!r}")
        if not sep:
            return host, None
    if not (port_text.isascii() and port_text.isdigit()) or len(port_text) > 5 or int(port_text) > 65535:
        raise ParseError(f"bad port in {whole!r}")
    return host, int(port_text)


def parse_uri(text: str) -> SipURI | AbsoluteURI:
    """Parse a URI; raises ParseError for anything that is not a URI at all."""
    m = _COMMON.match(text)
    if m is not None:
        scheme, user, host, port, param_text = m.groups()
        if port is None or int(port) <= 65535:
            params: dict[str, str | None] = {}
            if param_text:
                for part in param_text[1:].split(";"):
                    name, eq, value = part.partition("=")
                    params[name.lower()] = value if eq else None
            return SipURI(scheme, user, None, host, None if port is None else int(port), params, None)
    return _parse_any_uri(text)


def _parse_any_uri(text: str) -> SipURI | AbsoluteURI:
    scheme, sep, rest = text.partition(":")
    if not sep or not _SCHEME.match(scheme) or not rest or _FORBIDDEN.search(text) is not None:
        raise ParseError(f"bad URI {text!r}")
    lower = scheme.lower()
    if lower not in ("sip", "sips"):
        return AbsoluteURI(scheme, rest)
    # Neither URI parameters nor headers may hold a raw "@", so the last one
    # ends the userinfo (which itself may hold "?" and ";").
    at = rest.rfind("@")
    user = password = None
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        if not userinfo or not _USERINFO.match(userinfo):
            raise ParseError(f"bad user part in {text!r}")
        user, colon, pw = userinfo.partition(":")
        if not user:
            raise ParseError(f"empty user part in {text!r}")
        if colon:
            password = pw
    rest, qmark, headers = rest.partition("?")
    if qmark and not _HEADERS.match(headers):
        raise ParseError(f"bad URI headers in {text!r}")
    hostport, *param_parts = rest.split(";")
    host, port = _parse_host_port(hostport, text)
    params: dict[str, str | None] = {}
    for part in param_parts:
        name, eq, value = part.partition("=")
        if not name or not _PARAM.match(name) or (eq and not _PARAM.match(value)):
            raise ParseError(f"bad URI parameter in {text!r}")
        params[name.lower()] = value if eq else None
    return SipURI(lower, user, password, host, port, params, headers if qmark else None)
