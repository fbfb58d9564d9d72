"""``patchdb validate``: approximate vs exact engine from the same noise, with a pass/fail on r^2."""

from __future__ import annotations

import json
import sys

import click

from patchdb.denoisers.factory import make_denoiser
from patchdb.evaluation.validate import validate_engines
from patchdb.generate import sample_labels
from patchdb.indexing.reader import open_index
from patchdb.spec import Machine
from patchdb.store import ExactSamples, atomic_write, claim_output, exact_key

from .options import (
    DTYPES,
    LABEL,
    SEED,
    FiniteFloatRange,
    check_seed_span,
    parse_schedule_option,
    resolve_device,
    retrieval_options,
)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--machine", "-m", default=None, help="els or bbels (default: the file's machine).")
@click.option("--schedule", "-s", default=None,
              help="Preset, constant:K, comma list or file (default: the schedule FILE records, else fashion-mnist-resnet-zeros).")
@click.option("--seeds", "num_seeds", type=click.IntRange(min=1), default=20, help="Number of seeds M.")
@click.option("--seed", type=SEED, default=0, help="First seed; seeds are seed .. seed + M - 1 (0..2**32-1).")
@click.option("--label", type=LABEL, default=None, help="Condition on a class, or 'all' to cycle through the classes.")
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=16, help="Samples per batch (both engines).")
@retrieval_options()
@click.option("--dtype", type=click.Choice(list(DTYPES)), default="float32", help="Compute precision of both engines.")
@click.option("--device", default="cpu", help="Where the exact engine runs (cpu, cuda, auto); FAISS search stays on the CPU.")
@click.option("--min-r2", type=FiniteFloatRange(0, 1), default=0.99, help="Exit 1 when the median r^2 is below this.")
@click.option("--json-out", type=click.Path(dir_okay=False), default=None, help="Also write the full report as JSON.")
@click.option("--force", is_flag=True, help="Replace an existing --json-out (and create its missing folder).")
@click.option("--exact-samples", type=click.Path(dir_okay=False), default=None,
              help="HDF5 file of exact samples: seeds it holds are not recomputed, new ones are added (the exact engine "
                   "is the slow half; keep its samples to compare other approximate settings against them).")
def command(file, machine, schedule, num_seeds, seed, label, batch_size, retrieval, dtype, device, min_r2, json_out,
            exact_samples, force):
    """For M seeds, sample with the exact and the approximate engine from the same noise and compare."""
    check_seed_span(seed, num_seeds)
    sched = parse_schedule_option(schedule) if schedule is not None else None
    if json_out:  # now, not after hours of exact sampling
        json_out = claim_output(json_out, force, what="--json-out", suffixes=(".json",))
    with open_index(file) as f:
        if sched is None:
            sched = f.recorded_schedule() if f.build.get("schedule") else parse_schedule_option("fashion-mnist-resnet-zeros")
        machine = machine if machine is not None else f.machine.value
        approx = make_denoiser(machine, sched, index=f, retrieval=retrieval, dtype=DTYPES[dtype])
        dev = resolve_device(device)
        exact = make_denoiser(machine, sched, index=f, exact=True, dtype=DTYPES[dtype], device=dev)
        cache = None if exact_samples is None else ExactSamples(exact_samples, exact_key(
            f.fingerprint, Machine.parse(machine).value, sched.sizes, dtype, str(dev), (f.channels, f.height, f.width)))
        seeds = list(range(seed, seed + num_seeds))
        labels = sample_labels(num_seeds, label, len(f.meta["classes"]), seed)
        report = validate_engines(exact, approx, seeds, (f.channels, f.height, f.width), sched.steps, labels,
                                  batch_size, progress=True, exact_samples=cache)
    click.echo(f"{'step':>4} {'t':>5} {'k':>3} {'max|dD| med':>12} {'max|dD| max':>12} {'ignored bound':>14} {'tail share':>11}")
    for s in report["steps"]:
        click.echo(f"{s['step']:>4} {s['t']:>5.2f} {s['k']:>3} {s['max_abs_diff_median']:>12.2e} {s['max_abs_diff_max']:>12.2e} "
                   f"{s['bound_max_median']:>14.2e} {s['tail_share_median']:>11.2e}")
    for sd, r2 in zip(report["seeds"], report["r2"]):
        click.echo(f"seed {sd}: r^2 {r2:.5f}")
    sec = report["seconds_per_sample"]
    click.echo(f"median r^2 {report['r2_median']:.5f} (min {report['r2_min']:.5f}) over {num_seeds} seeds; "
               f"exact {sec['exact']:.2f} s/sample, approx {sec['approx']:.2f} s/sample, speedup {report['speedup']:.1f}x")
    if report["exact_reused"]:
        click.echo(f"exact samples of {report['exact_reused']} seeds read from {exact_samples} (their stored times counted)")
    if json_out:
        report["labels"] = None if labels is None else labels.tolist()  # per seed, as sampled
        with atomic_write(json_out) as tmp, open(tmp, "w") as fh:
            json.dump({**report, "settings": {"file": file, "machine": machine, "schedule": list(sched.sizes), "label": label,
                                              **retrieval.to_dict(),
                                              "batch_size": batch_size, "exact_samples": exact_samples}}, fh, indent=2)
    if report["r2_median"] < min_r2:
        click.echo(f"FAIL: median r^2 {report['r2_median']:.5f} < --min-r2 {min_r2}", err=True)
        sys.exit(1)
