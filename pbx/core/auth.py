"""Digest authentication as SIP answers, shared by the registrar (401) and call control (407)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from pbx.sip.digest import DigestAuthenticator
from pbx.sip.errors import Forbidden, ParseError
from pbx.sip.message import Request
from pbx.sip.transaction import ServerTransaction

# Verification failures that mean "these credentials are wrong" (403); every
# other failure (a foreign nonce after a restart, another scheme, a replayed
# nonce count) gets a fresh challenge instead.
REJECTED = frozenset({"wrong response", "unknown user"})


class DigestGate:
    """Challenges, verifies, and refuses, the same way for every method.

    An unknown user and a wrong password get the same 403, so nothing tells
    a scanner which extensions exist.
    """

    log = Logger()

    def __init__(self, core: Any, authenticator: DigestAuthenticator,
                 lookup_ha1: Callable[[str, str], str | None]) -> None:
        self.core = core
        self.authenticator = authenticator
        self.lookup_ha1 = lookup_ha1

    def check(self, request: Request, transaction: ServerTransaction, proxy: bool) -> str | None:
        """The authenticated user name, or None once a challenge has been sent.

        Raises Forbidden for wrong credentials and ParseError for unusable ones.
        """
        credentials = request.headers.get("proxy-authorization" if proxy else "authorization")
        if credentials is None:
            self.challenge(request, transaction, proxy, stale=False)
            return None
        result = self.authenticator.verify(request.method, credentials, self.lookup_ha1)
        if result.outcome == "ok":
            return result.username
        if result.outcome == "bad-request":
            raise ParseError(result.reason, reason="Bad Credentials")
        if result.outcome == "failed" and result.reason in REJECTED:
            self.log.info(
                "{method} refused from {source}: {reason}",
                method=request.method, source=request.vias[0].params.get("received") or request.vias[0].host,
                reason=result.reason,
            )  # fmt: skip
            raise Forbidden(result.reason)
        self.challenge(request, transaction, proxy, stale=result.outcome == "stale")
        return None

    def challenge(self, request: Request, transaction: ServerTransaction, proxy: bool, stale: bool) -> None:
        if proxy:
            status, reason, header = 407, "Proxy Authentication Required", "Proxy-Authenticate"
        else:
            status, reason, header = 401, "Unauthorized", "WWW-Authenticate"
        # A non-INVITE challenge is answered statelessly (RFC 3261 §8.2.7); an
        # INVITE's keeps its transaction, which must absorb the ACK.
        self.core.respond(
            transaction, request, status, reason,
            [(header, value) for value in self.authenticator.challenges(stale=stale)],
            stateless=request.method != "INVITE",
        )  # fmt: skip
