"""Command line: ``python -m pbx <command>``.

Each command is a subparser with its own handler returning the exit status,
so new commands are one ``add_parser`` and one function.

Exit status: 0 all good, 1 the command found a problem (e.g. a port
conflict), 2 the configuration or the command line is unusable.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pbx.config import ConfigError, load_config
from pbx.ports import build_port_plan, find_conflicts, format_port_plan

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_CONFIG = 2


def _ports(args: argparse.Namespace) -> int:
    """Print the port plan; a conflict is a problem (exit 1)."""
    config = load_config(args.config)
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    plan = build_port_plan(config)
    print(format_port_plan(plan))
    conflicts = find_conflicts(plan)
    print()
    if not conflicts:
        print("no conflicts")
        return EXIT_OK
    print(f"{len(conflicts)} conflict{'s' if len(conflicts) > 1 else ''}:")
    for conflict in conflicts:
        print(f"  {conflict}")
    return EXIT_PROBLEM


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, one subcommand per task."""
    parser = argparse.ArgumentParser(prog="python -m pbx", description="Twisted PBX tools")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ports = commands.add_parser(
        "ports", help="show every port the PBX opens or calls, and any conflict")
    ports.add_argument("--config", default="config.yml", metavar="PATH",
                       help="configuration file (default: %(default)s)")
    ports.set_defaults(handler=_ports)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a bad configuration is one line on stderr, no traceback."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
