"""twistd plugin glue: options and the composition root.

This is the one module that imports the global reactor. A user error (bad
config, port conflict) ends twistd with one line on stderr and exit status 1,
never a traceback.
"""

from __future__ import annotations

import sys

from twisted.application.service import IService
from twisted.logger import Logger
from twisted.python import usage

from pbx.api.errors import APIStartupError
from pbx.api.service import check_api_config
from pbx.apps.router import check_application_paths
from pbx.config import ConfigError, load_config
from pbx.ports import build_port_plan, find_conflicts

log = Logger()


class Options(usage.Options):
    optParameters = [
        ["config", "c", "config.yml", "Path to the PBX configuration file (YAML)."],
    ]

    def postOptions(self) -> None:
        try:
            self.pbx_config = load_config(self["config"])
        except ConfigError as error:
            _fail(str(error))
        conflicts = find_conflicts(build_port_plan(self.pbx_config))
        if conflicts:
            _fail("port conflict: " + "; ".join(conflicts))
        try:
            check_api_config(self.pbx_config.api)
            check_application_paths(self.pbx_config)
        except (APIStartupError, ConfigError) as error:
            _fail(str(error))


def _fail(message: str) -> None:
    sys.stderr.write(f"pbx: {message}\n")
    raise SystemExit(1)


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    from pbx.service import PBXService

    config = options.pbx_config
    for warning in config.warnings:
        log.warn("config: {warning}", warning=warning)
    return PBXService(config, reactor)
