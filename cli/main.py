"""The ``patchdb`` command: a thin click front end over the library.

Each subcommand lives in its own module (``cli/<name>.py``) exposing ``command``; this file only
groups them and turns library errors into one line and exit code 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys

import click

from patchdb.errors import PatchdbError

# Subcommand modules, in the order ``patchdb --help`` lists them.
COMMANDS = ["sample", "build", "info", "validate", "query", "attribute", "train", "calibrate", "compare"]


class PatchdbGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PatchdbError as err:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"Error: {err}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("Interrupted; no partial output was left behind.", err=True)
            sys.exit(130)


@click.group(cls=PatchdbGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug logs).")
@click.version_option(package_name="patchdb")
@click.pass_context
def main(ctx: click.Context, debug: bool, verbose: int) -> None:
    """patchdb: patch databases and the closed-form ELS machines of Kamb & Ganguli."""
    ctx.obj = {"debug": debug}
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


for _name in COMMANDS:
    if importlib.util.find_spec(f"cli.{_name}") is not None:
        main.add_command(importlib.import_module(f"cli.{_name}").command, name=_name)


if __name__ == "__main__":
    main()
