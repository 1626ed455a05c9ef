"""The `leader` command line: parses options and calls one library function per command.

Each command lives in the module that owns its work and is registered here; bad input raises
:class:`leader.errors.LeaderError`, which becomes a one-line message and exit status 2.
"""

from __future__ import annotations

import os
import sys

import typer

from leader.commands.options import flag_for
from leader.configs import ConfigError
from leader.errors import LeaderError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

app = typer.Typer(
    name="leader",
    help="Medication recommendation distilled from a large language model (LEADER).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register() -> None:
    """Import the command modules; each adds its commands to ``app``."""
    import importlib

    for module in (
        "leader.commands.data",
        "leader.commands.synth",
        "leader.commands.teacher",
        "leader.commands.student",
        "leader.commands.evaluation",
        "leader.commands.tune",
        "leader.commands.recommend",
    ):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise


def main() -> None:
    _register()
    try:
        app()
    except ConfigError as e:  # a field the user set through its flag, or in a file
        where = e.where or flag_for(e.field)
        field = f"{e.field}: " if e.where else ""
        print(f"error: {where}: {field}{e.detail}", file=sys.stderr)
        sys.exit(2)
    except LeaderError as e:
        message = str(e).replace("\r", "\\r").replace("\n", "\\n")  # one line, always
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        if e.filename is None:  # not about a path the user gave: a bug, keep the traceback
            raise
        print(f"error: {e.filename}: {e.strerror or e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":  # `python -m leader.cli`: commands register on leader.cli.app
    from leader.cli import main as _main

    _main()
