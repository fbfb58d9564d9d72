"""``patchdb merge``: put together the parts of a compare, calibrate or validate run split by seed."""

from __future__ import annotations

from pathlib import Path

import click

from patchdb.evaluation.calibrate import CRITERIA
from patchdb.evaluation.compare import format_table, write_report
from patchdb.evaluation.merge import (
    merge_calibration_files,
    merge_comparisons,
    merge_validations,
    write_merged_calibration,
    write_merged_validation,
)
from patchdb.store import check_writable

PARTS = click.argument("parts", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))


@click.group()
def command() -> None:
    """Merge the parts of a compare, calibrate or validate run split by seed into one output.

    Each per-seed number depends only on its seed, so the merged output is what one run over all the
    seeds gives; the parts must agree on every other setting.
    """


@command.command("compare")
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder: compare.json, compare.txt, scatter.png.")
@PARTS
def compare_parts(out: Path, parts: tuple[Path, ...]) -> None:
    """Merge the output folders of patchdb compare over disjoint seeds."""
    cmp = merge_comparisons(list(parts))
    paths = write_report(cmp, out)
    click.echo(format_table(cmp))
    click.echo(f"wrote {', '.join(str(p) for p in paths.values())}", err=True)


@command.command("calibrate")
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Output schedule JSON (usable as --schedule); its heat map PNG goes beside it.")
@click.option("--criterion", type=click.Choice(list(CRITERIA)), default=None,
              help="What picks each step's size (default: the first part's).")
@PARTS
def calibrate_parts(out: Path, criterion: str | None, parts: tuple[Path, ...]) -> None:
    """Merge calibration JSON files: disjoint seeds (same sizes) or the same seeds (other sizes)."""
    check_writable(out)
    merged = merge_calibration_files(list(parts), criterion)
    path, png = write_merged_calibration(merged, out)
    click.echo(f"schedule {','.join(str(k) for k in merged.schedule.sizes)} over seeds {merged.seeds}")
    click.echo(f"wrote {path} and {png}", err=True)


@command.command("validate")
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Output JSON, in the form of one patchdb validate --json-out.")
@PARTS
def validate_parts(out: Path, parts: tuple[Path, ...]) -> None:
    """Merge the JSON of patchdb validate --json-out runs over disjoint seeds."""
    check_writable(out)
    report = merge_validations(list(parts))
    write_merged_validation(report, out)
    click.echo(f"median r^2 {report['r2_median']:.5f} (min {report['r2_min']:.5f}) over {len(report['seeds'])} seeds")
    click.echo(f"wrote {out}", err=True)
