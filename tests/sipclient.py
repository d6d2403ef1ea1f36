"""A tiny SIP user agent for tests: builds requests and answers digest challenges."""

from __future__ import annotations

import secrets

from pbx.sip.digest import compute_ha1, compute_response, parse_auth_params
from pbx.sip.message import Response, parse_datagram


def register(
    user: str,
    *,
    host: str = "127.0.0.1",
    port: int = 5061,
    server: str = "127.0.0.1:5060",
    call_id: str = "reg-call-1",
    cseq: int = 1,
    expires: int | None = 3600,
    contact: str | None = None,
    authorization: str | None = None,
    extra: str = "",
    branch: str | None = None,
) -> bytes:
    branch = branch or "z9hG4bK" + secrets.token_hex(8)
    contact_line = "" if contact == "" else f"Contact: {contact or f'<sip:{user}@{host}:{port}>'}\r\n"
    lines = (
        f"REGISTER sip:{server} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{port};branch={branch};rport\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <sip:{user}@{server}>;tag=from{user}\r\n"
        f"To: <sip:{user}@{server}>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} REGISTER\r\n"
        f"{contact_line}"
        + (f"Expires: {expires}\r\n" if expires is not None else "")
        + (f"Authorization: {authorization}\r\n" if authorization else "")
        + extra
        + "User-Agent: test-ua\r\nContent-Length: 0\r\n\r\n"
    )
    return lines.encode()


def challenge_params(response: Response, algorithm: str = "MD5", header: str = "WWW-Authenticate") -> dict[str, str]:
    for value in response.headers.values(header):
        scheme, params = parse_auth_params(value)
        if params.get("algorithm", "MD5").upper() == algorithm:
            return params
    raise AssertionError(f"no {algorithm} challenge in {response.headers!r}")


def authorization(
    response: Response,
    user: str,
    password: str,
    *,
    method: str = "REGISTER",
    uri: str = "sip:127.0.0.1:5060",
    algorithm: str = "MD5",
    nc: int = 1,
    cnonce: str = "0a4f113b",
    header: str = "WWW-Authenticate",
) -> str:
    p = challenge_params(response, algorithm, header)
    ha1 = compute_ha1(user, p["realm"], password, algorithm)
    nc_text = f"{nc:08x}"
    digest = compute_response(ha1, method, uri, p["nonce"], algorithm, "auth", nc_text, cnonce)
    return (
        f'Digest username="{user}", realm="{p["realm"]}", nonce="{p["nonce"]}", uri="{uri}", '
        f'response="{digest}", algorithm={algorithm}, qop=auth, nc={nc_text}, cnonce="{cnonce}", '
        f'opaque="{p.get("opaque", "")}"'
    )


def parse(data: bytes) -> Response:
    message = parse_datagram(data)
    assert isinstance(message, Response), message
    return message
