"""What every route group is given: the PBX, the token guard and the clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from pbx.api.http import TokenGuard

__all__ = ["ApiContext", "pbx_version"]


def pbx_version() -> str:
    """The installed package's version (the API reports it in health and status)."""
    try:
        return metadata.version("twisted-pbx")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass
class ApiContext:
    """Shared by the route groups of one API instance (no global state)."""

    pbx: Any  # pbx.service.PBXService, duck-typed so tests may pass parts
    clock: Any  # IReactorTime
    guard: TokenGuard
    started: float = 0.0
    version: str = field(default_factory=pbx_version)

    def uptime(self) -> float:
        return round(max(0.0, self.clock.seconds() - self.started), 3)
