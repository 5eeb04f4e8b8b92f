"""How a package adds its `herd` sub-commands: each app/*/cli.py has a `register(sub)` that
calls `command` and `group` here, and app/cli.py calls every `register` in turn."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from app.config import Settings

CommandFunc = Callable[[Settings, argparse.Namespace], int]
# What argparse's add_subparsers returns (its class is private to argparse).
SubParsers = Any


def command(parent: SubParsers, name: str, func: CommandFunc, help: str) -> argparse.ArgumentParser:
    """A sub-command of parent that runs func(settings, args); help is also its description."""
    parser: argparse.ArgumentParser = parent.add_parser(name, help=help, description=help)
    # origin: the command as typed ("herd dataset build"), for the audit log's rows.
    parser.set_defaults(func=func, origin=parser.prog)
    return parser


def group(parent: SubParsers, name: str, help: str) -> SubParsers:
    """A command that only holds sub-commands (`herd models ...`); its chosen sub-command's
    name lands in args.<name>_command."""
    return parent.add_parser(name, help=help).add_subparsers(
        dest=f"{name.replace('-', '_')}_command", required=True, metavar="COMMAND"
    )
