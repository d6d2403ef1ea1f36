"""SIP failures as exceptions, each carrying the status code that answers it.

Call control raises these; one place (the SIP core) turns them into responses,
as twisted.names maps its errors to DNS response codes.
"""

from __future__ import annotations


class SIPError(Exception):
    """A request that ends in a final error response."""

    status = 500
    reason = "Server Internal Error"

    def __init__(self, detail: str = "", reason: str | None = None) -> None:
        super().__init__(detail or reason or self.reason)
        self.detail = detail
        if reason is not None:
            self.reason = reason


class ParseError(SIPError):
    """Bytes that are not a well-formed SIP message (400 when a request)."""

    status = 400
    reason = "Bad Request"


class VersionNotSupported(ParseError):
    status = 505
    reason = "Version Not Supported"


class TooManyHops(SIPError):
    status = 483
    reason = "Too Many Hops"


class MethodNotAllowed(SIPError):
    status = 405
    reason = "Method Not Allowed"


class NotImplementedMethod(SIPError):
    status = 501
    reason = "Not Implemented"


class UnsupportedURIScheme(SIPError):
    status = 416
    reason = "Unsupported URI Scheme"


class BadExtension(SIPError):
    status = 420
    reason = "Bad Extension"

    def __init__(self, unsupported: list[str]) -> None:
        super().__init__("unsupported extension: " + ", ".join(unsupported))
        self.unsupported = unsupported


class UnsupportedMediaType(SIPError):
    status = 415
    reason = "Unsupported Media Type"


class NotFound(SIPError):
    status = 404
    reason = "Not Found"


class Forbidden(SIPError):
    status = 403
    reason = "Forbidden"


class IntervalTooBrief(SIPError):
    status = 423
    reason = "Interval Too Brief"

    def __init__(self, min_expires: int) -> None:
        super().__init__(f"expires below minimum {min_expires}")
        self.min_expires = min_expires


class ServiceUnavailable(SIPError):
    status = 503
    reason = "Service Unavailable"
