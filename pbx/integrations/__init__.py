"""Outgoing integrations: Jitsi, Matrix, EspoCRM and Zoom (see docs/integrations.md).

`pbx.integrations.http` is the shared non-blocking JSON client and its
errors, `pbx.integrations.outbox` the persistent at-least-once queue for
event-driven requests, `pbx.integrations.dispatch` what PBX events trigger,
and `pbx.integrations.service.make_integrations` builds all of it for the
PBX.  One module per integration holds its client.
"""

from pbx.integrations.http import (
    IntegrationError,
    JSONClient,
    JSONResponse,
    NotConfigured,
    UpstreamError,
    UpstreamTimeout,
)

__all__ = [
    "IntegrationError",
    "JSONClient",
    "JSONResponse",
    "NotConfigured",
    "UpstreamError",
    "UpstreamTimeout",
]
