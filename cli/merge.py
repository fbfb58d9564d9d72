"""``patchdb merge``: put together the parts of a compare, calibrate or validate run split by seed."""

from __future__ import annotations

from pathlib import Path

import click

from patchdb.evaluation.calibrate import CRITERIA
from patchdb.evaluation.compare import format_table, write_report
from patchdb.evaluation.merge import (
    merge_calibration_files,
    merge_comparisons,
    merge_exact_samples,
    merge_validations,
    write_merged_calibration,
    write_merged_validation,
)
from patchdb.store import claim_output

PARTS = click.argument("parts", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
FORCE = click.option("--force", is_flag=True, help="Replace an existing --out (and create a missing parent folder).")


@click.group()
def command() -> None:
    """Merge the parts of a compare, calibrate or validate run split by seed into one output.

    Each per-seed number depends only on its seed, so the merged output is what one run over all the
    seeds gives; the parts must agree on every other setting.
    """


@command.command("compare")
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder: compare.json, compare.txt, scatter.png.")
@FORCE
@PARTS
def compare_parts(out: Path, force: bool, parts: tuple[Path, ...]) -> None:
    """Merge the output folders of patchdb compare over disjoint seeds."""
    out = claim_output(out, force, folder=True)
    cmp = merge_comparisons(list(parts))
    paths = write_report(cmp, out)
    click.echo(format_table(cmp))
    click.echo(f"wrote {', '.join(str(p) for p in paths.values())}", err=True)


@command.command("calibrate")
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Output schedule JSON (usable as --schedule); its heat map PNG goes beside it.")
@click.option("--criterion", type=click.Choice(list(CRITERIA)), default=None,
              help="What picks each step's size (default: the first part's).")
@FORCE
@PARTS
def calibrate_parts(out: Path, criterion: str | None, force: bool, parts: tuple[Path, ...]) -> None:
    """Merge calibration JSON files: disjoint seeds (same sizes) or the same seeds (other sizes)."""
    out = claim_output(out, force, suffixes=(".json",))
    claim_output(out.with_suffix(".png"), force, what="--out (its heat map)")
    merged = merge_calibration_files(list(parts), criterion)
    path, png = write_merged_calibration(merged, out)
    click.echo(f"schedule {','.join(str(k) for k in merged.schedule.sizes)} over seeds {merged.seeds}")
    click.echo(f"wrote {path} and {png}", err=True)


@command.command("validate")
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Output JSON, in the form of one patchdb validate --json-out.")
@FORCE
@PARTS
def validate_parts(out: Path, force: bool, parts: tuple[Path, ...]) -> None:
    """Merge the JSON of patchdb validate --json-out runs over disjoint seeds."""
    out = claim_output(out, force, suffixes=(".json",))
    report = merge_validations(list(parts))
    write_merged_validation(report, out)
    click.echo(f"median r^2 {report['r2_median']:.5f} (min {report['r2_min']:.5f}) over {len(report['seeds'])} seeds")
    click.echo(f"wrote {out}", err=True)


@command.command("exact")
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Output exact-samples file (.h5), for patchdb validate --exact-samples.")
@FORCE
@PARTS
def exact_parts(out: Path, force: bool, parts: tuple[Path, ...]) -> None:
    """Merge exact samples into one file for patchdb validate --exact-samples: its own files, and sample
    files of the exact engine written with --save-trajectory (e.g. one seed per process, on several machines)."""
    out = claim_output(out, force, suffixes=(".h5",))
    cache, notes = merge_exact_samples(list(parts), out)
    for note in notes:
        click.echo(note, err=True)
    seeds = sorted({seed for seed, _ in cache.entries})
    click.echo(f"{len(cache.entries)} exact samples (seeds {seeds[0]}..{seeds[-1]}) of {cache.key['machine']}, "
               f"schedule {','.join(str(k) for k in cache.key['schedule'])}")
    click.echo(f"wrote {out}", err=True)
