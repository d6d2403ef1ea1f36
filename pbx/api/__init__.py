"""The REST API (Klein), served in the PBX's reactor: see docs/api.md.

`make_api_service(pbx, reactor)` is the one entry point for the composition
root; `APIStartupError` is what it raises when the API must not start.
"""

from pbx.api.errors import APIStartupError
from pbx.api.service import make_api_service, make_site

__all__ = ["APIStartupError", "make_api_service", "make_site"]
