"""The ``patchdb`` command: a thin click front end over the library.

Each subcommand lives in its own module (``cli/<name>.py``, installed as ``patchdb.cli.<name>``)
exposing ``command``; this file only groups them, loading a command's module when it is invoked or
its own help is asked for, so ``patchdb --help`` and shell completion answer without importing torch.
Library errors become one line and exit code 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from patchdb.errors import PatchdbError

#: name -> one-line help, in the order ``patchdb --help`` lists them; the module is ``patchdb.cli.<name>``.
#: The help must be the command's own short help (tests/test_cli_main.py checks it).
COMMANDS = {
    "sample": "Generate samples with the exact engine of a machine (IS, LS, ELS, bbELS), or the top-K engine with --index.",
    "build": "Build the patch index file of a dataset for a machine and a set of patch sizes.",
    "info": "Describe an index file built by patchdb build (refuses incomplete or foreign files).",
    "validate": "For M seeds, sample with the exact and the approximate engine from the same noise and compare.",
    "query": "Top-n nearest training windows of every window of IMAGE (or of one pixel or box).",
    "attribute": "Which training patches made each pixel of each sample, at each step (exact, or --index).",
    "train": "Train a convolution-only diffusion baseline (epsilon prediction, the cosine schedule of docs/math.md).",
    "calibrate": "Calibrate a scale schedule against a trained network (best size per step, median over seeds).",
    "compare": "Sample the network and each machine from the same seeds; table of median r and r^2, scatter, grid.",
    "merge": "Merge the parts of a compare, calibrate or validate run split by seed into one output.",
    "export": "Export the samples of RUN (a run folder from patchdb sample --out FOLDER, or a .h5 sample file).",
    "report": "Report on RUN (a run folder or a .h5 sample file): nearest training images, near-copy share, diversity, classes.",
}


def load_command(name: str) -> click.Command:
    return importlib.import_module(f"patchdb.cli.{name}").command


class PatchdbGroup(click.Group):
    """Subcommands loaded on first use; library errors as one line and exit code 2."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return load_command(name) if name in COMMANDS else None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from COMMANDS, without importing any command module."""
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        rows = [(name, click.utils.make_default_short_help(text, limit)) for name, text in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def shell_complete(self, ctx: click.Context, incomplete: str):
        """Command names (and the group's options) without importing any command module."""
        from click.shell_completion import CompletionItem

        items = [CompletionItem(name, help=text) for name, text in COMMANDS.items() if name.startswith(incomplete)]
        return items + click.Command.shell_complete(self, ctx, incomplete)

    def invoke(self, ctx: click.Context):
        """Every bad input ends as one line ``Error: ...`` and exit code 2 (issue 29): library errors, click's
        usage errors (which click would print as usage + hint + error) and OS errors on user files."""
        debug = bool(ctx.obj and ctx.obj.get("debug"))
        try:
            return super().invoke(ctx)
        except click.UsageError as err:
            if debug:
                raise
            where = err.ctx.command_path if err.ctx is not None else ctx.command_path
            _fail(f"{err.format_message().rstrip('.')} (see '{where} -h')")
        except click.ClickException as err:
            if debug:
                raise
            _fail(err.format_message())
        except PatchdbError as err:
            if debug:
                raise
            _fail(str(err))
        except OSError as err:  # a user file or folder that cannot be read or written (permissions, disk full, ...)
            if debug:
                raise
            name = f" {err.filename}" if getattr(err, "filename", None) else ""
            _fail(f"{err.strerror or err.__class__.__name__}:{name}; check the path and its permissions (--debug shows where)")
        except MemoryError:
            if debug:
                raise
            _fail("ran out of memory; use fewer images (--limit), a smaller --batch-size or --block-mb")
        except KeyboardInterrupt:
            note = (ctx.obj or {}).get("on_interrupt") or "Interrupted; no partial output was left behind."
            click.echo(note, err=True)
            sys.exit(130)
        finally:
            store = sys.modules.get("patchdb.store")  # loaded by any command that claimed an output
            if store is not None:
                store.release_outputs()


def _fail(message: str) -> None:
    """Print ``Error: message`` as one line and exit with code 2."""
    click.echo("Error: " + " ".join(str(message).split()), err=True)
    sys.exit(2)


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


if __name__ == "__main__":
    main()
