"""``patchdb sample``: generate samples of a machine and write them with a PNG grid."""

from __future__ import annotations

import time
from pathlib import Path

import click
import torch

from patchdb.denoisers.exact import ExactMachine
from patchdb.denoisers.factory import make_denoiser
from patchdb.errors import PatchdbError
from patchdb.generate import generate, sample_labels
from patchdb.indexing.reader import open_index
from patchdb.plots import save_grid
from patchdb.runs.seeds import seeds_option
from patchdb.spec import Machine
from patchdb.store import claim_output, write_samples

from .options import (
    DTYPES,
    LABEL,
    SEED,
    FiniteFloatRange,
    check_seed_span,
    check_seeds,
    dataset_options,
    load_from_options,
    parse_schedule_option,
    resolve_device,
    retrieval_options,
)

#: Suffixes of files sample never writes (a .h5 file or a run folder only): refused, not made into a folder.
FILE_SUFFIXES = {".txt", ".png", ".jpg", ".jpeg", ".json", ".npz", ".npy", ".pt", ".csv", ".hdf5", ".hdf", ".zip", ".html"}

#: Schedule of the exact engine when --schedule is not given.
DEFAULT_SCHEDULE = "mnist-resnet-zeros"


@click.command()
@dataset_options
@click.option("--machine", "-m", default="bbels", help="is, ls, els or bbels.")
@click.option("--schedule", "-s", default=None,
              help="Preset name, constant:K, a comma list (scales[0] = lowest noise first) or a .json/.txt file "
                   f"(default: with --index the schedule the file records, else {DEFAULT_SCHEDULE}).")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Sampler steps (default: the schedule's length).")
@click.option("--num", "-n", type=click.IntRange(min=1), default=None, help="Number of samples (default 16): short for --seeds SEED-(SEED+num-1).")
@click.option("--seeds", default=None, help="Seeds to sample, EDM style: 0-49999,60-70 (one sample per seed; with --out FOLDER).")
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=16, help="Samples per batch.")
@click.option("--seed", type=SEED, default=0, help="Sample j starts from the noise of seed + j (0..2**32-1).")
@click.option("--label", type=LABEL, default=None, help="Condition on this class label, or 'all' to cycle through the classes.")
@click.option("--device", default="cpu", help="cpu, cuda, cuda:N or auto.")
@click.option("--dtype", type=click.Choice(list(DTYPES)), default="float32", help="Compute precision.")
@click.option("--block-mb", type=FiniteFloatRange(min=0.01, max=2**20), default=4.0, help="Size of one block of logits in MiB (bounds memory; small blocks stay in cache).")
@click.option("--save-trajectory", is_flag=True, help="Also store the denoiser output of every step.")
@click.option("--out", "-o", type=click.Path(), default="samples.h5",
              help="Output: a .h5 file (one file, a PNG grid beside it) or a run folder of shards (resumable; patchdb export/report read it).")
@click.option("--shard-size", type=click.IntRange(min=1), default=None,
              help="Run folder: samples per shard file (default: 64 rounded up to a multiple of --batch-size).")
@click.option("--workers", type=click.IntRange(min=1), default=1, help="Run folder: local worker processes, each with its share of the threads.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Run folder: threads per worker (default: the cores / --workers).")
@click.option("--ray", "ray_address", default=None, help="Run folder: compute on a Ray cluster, 'auto' or HOST:PORT (pip install \"patchdb[ray]\").")
@click.option("--force", is_flag=True, help="Replace an existing output: a .h5 file and its PNG, or a run folder's shards "
                                           "(start over even if its settings differ).")
@click.option("--index", "index_file", type=click.Path(dir_okay=False), default=None,
              help="Sample with the approximate (top-K) engine over this index file (patchdb build); dataset options are ignored.")
@click.option("--exact", is_flag=True, help="With --index: run the exact engine on the images stored in the file.")
@retrieval_options()
def command(dataset, root, split, download, limit, only_classes, policy, machine, schedule, steps, num, seeds,
            batch_size, seed, label, device, dtype, block_mb, save_trajectory, out, shard_size, workers, threads,
            ray_address, force, index_file, exact, retrieval):
    """Generate samples with the exact engine of a machine (IS, LS, ELS, bbELS), or the top-K engine with --index.

    With --out ending in .h5 all samples go to one file; any other --out is a run folder: the seeds are
    cut into shards written as they finish, and rerunning the same command resumes the run.
    """
    if exact and index_file is None:
        raise PatchdbError("--exact runs the exact engine on the images of an index file; add --index FILE, or drop "
                           "--exact (without --index the exact engine is what runs)")
    if str(out).strip() in ("", ".", "..", "/"):
        raise PatchdbError(f"--out '{out}' names no file or folder; give a .h5 file name or a new run folder name")
    if Path(str(out)).suffix.lower() in FILE_SUFFIXES:
        raise PatchdbError(f"--out {out}: sample writes a .h5 file (with a PNG beside it) or a run folder; name it "
                           f"{Path(str(out)).with_suffix('.h5')} or give a folder name without a file suffix")
    check_seeds(seeds_option(seeds, num, seed))
    if schedule is None and steps is not None and Machine.parse(machine) is Machine.IS:
        schedule = "constant:1"  # IS uses no patch size: --steps alone sets the sampler's length
    if schedule is not None:
        parse_schedule_option(schedule, steps)  # a bad --schedule is one line before any work
    if not str(out).endswith(".h5"):
        if index_file is None:  # checks the dataset options (and downloads) once, in this process
            load_from_options(dataset, root, split, download, limit, only_classes, policy)
        source = ({"kind": "index", "path": index_file, "exact": exact} if index_file is not None else
                  {"kind": "dataset", "dataset": dataset, "root": root, "split": split, "limit": limit,
                   "only_classes": only_classes and [int(c) for c in only_classes.split(",")], "policy": policy})
        return _sample_run(out, source, machine, schedule, steps, label, device, dtype, batch_size, block_mb,
                           None if index_file is not None and exact else retrieval.to_dict(), seeds_option(seeds, num, seed),
                           shard_size, workers, threads, ray_address, force, save_trajectory)
    if workers > 1 or ray_address is not None or shard_size is not None:
        raise PatchdbError("--workers, --ray and --shard-size write a run folder; give --out a folder name, not a .h5 file")
    num, seed = _one_range(seeds_option(seeds, num, seed))
    check_seed_span(seed, num)
    out = claim_output(out, force, suffixes=(".h5",))
    claim_output(out.with_suffix(".png"), force, what="--out (its PNG grid)")
    machine = Machine.parse(machine)
    dev = resolve_device(device)
    if index_file is not None:
        return _sample_index(index_file, machine, schedule, steps, num, batch_size, seed, label, dev, dtype,
                             save_trajectory, out, exact, retrieval)
    data = load_from_options(dataset, root, split, download, limit, only_classes, policy)
    sched = parse_schedule_option(DEFAULT_SCHEDULE if schedule is None else schedule, steps)
    sched.check_fits(data.height, data.width)
    labels = sample_labels(num, label, data.num_classes, seed)
    engine = ExactMachine(data.to_float(DTYPES[dtype]), machine, sched, labels=data.labels, device=dev,
                          block_bytes=int(block_mb * 2**20))
    click.echo(f"{machine.value} machine over {len(data)} images of {data.name} ({data.channels}x{data.height}x{data.width}), "
               f"schedule {sched.name}, {num} samples", err=True)
    start = time.perf_counter()
    res = generate(engine, (data.channels, data.height, data.width), num, seed, batch_size, sched.steps, labels,
                   DTYPES[dtype], dev, save_trajectory, progress=True)
    seconds = time.perf_counter() - start
    settings = {
        "command": "sample", "engine": "exact", "machine": machine.value, "schedule": list(sched.sizes),
        "schedule_name": sched.name, "steps": sched.steps, "num": num, "batch_size": batch_size, "seed": seed,
        "label": label, "device": str(dev), "dtype": dtype, "block_mb": block_mb, "dataset": data.meta,
        "dataset_name": data.name, "fingerprint": data.fingerprint(), "seconds": seconds,
    }
    _write_outputs(out, res, list(sched.sizes) if machine is not Machine.IS else None, settings, seconds)


def _sample_index(index_file, machine, schedule, steps, num, batch_size, seed, label, dev, dtype, save_trajectory, out,
                  exact, retrieval):
    """``sample --index``: the approximate engine over the file, or ``--exact`` on the images it stores."""
    with open_index(index_file) as f:
        sched = parse_schedule_option(schedule, steps) if schedule is not None else f.recorded_schedule(steps)
        labels = sample_labels(num, label, len(f.meta["classes"]), seed)
        extra = {"device": dev} if exact else {"retrieval": retrieval}
        engine = make_denoiser(machine, sched, index=f, exact=exact, dtype=DTYPES[dtype], **extra)
        shape = (f.channels, f.height, f.width)
        kind = "exact" if exact else f"approximate (top-{retrieval.topk})"
        click.echo(f"{kind} {machine.value} engine over {f.meta['count']} images of {f.meta['dataset']} from {index_file}, "
                   f"schedule {sched.name}, {num} samples", err=True)
        start = time.perf_counter()
        res = generate(engine, shape, num, seed, batch_size, sched.steps, labels, DTYPES[dtype], dev if exact else "cpu",
                       save_trajectory, progress=True)
        seconds = time.perf_counter() - start
        reports = [vars(r) for r in getattr(engine, "reports", [])]
        settings = {
            "command": "sample", "engine": "exact" if exact else "approx", "index": str(index_file), "machine": machine.value,
            "schedule": list(sched.sizes), "schedule_name": sched.name, "steps": sched.steps, "num": num,
            "batch_size": batch_size, "seed": seed, "label": label, "dtype": dtype,
            **({"device": str(dev)} if exact else {**retrieval.to_dict(), "retrieval": retrieval.to_dict()}),
            "dataset_name": f.meta["dataset"], "fingerprint": f.fingerprint,
            "seconds": seconds, "step_reports": reports,
        }
    for r in reports:
        if r["bound_max"] > 1e-3:
            note = f"tail share est. {r['tail_median']:.1e}" if r["tail_used"] else "consider --tail-correction"
            click.echo(f"t={r['t']:.2f} k={r['k']}: ignored-mass bound up to {r['bound_max']:.1e} ({note})", err=True)
            break
    _write_outputs(out, res, list(sched.sizes), settings, seconds)


def _one_range(seeds: list[int]) -> tuple[int, int]:
    """(num, first seed) of a contiguous seed list: the one-file output takes nothing else."""
    if seeds != list(range(seeds[0], seeds[0] + len(seeds))):
        raise PatchdbError("a .h5 --out takes one contiguous range of seeds; give --out a folder for other seed lists")
    return len(seeds), seeds[0]


def _sample_run(out, source, machine, schedule, steps, label, device, dtype, batch_size, block_mb, retrieval, seeds,
                shard_size, workers, threads, ray_address, force, save_trajectory) -> None:
    """``sample --out FOLDER``: a resumable run folder of shards (:func:`patchdb.runs.run_samples`)."""
    from patchdb.runs import RunSpec, open_run, run_samples

    if save_trajectory:
        raise PatchdbError("--save-trajectory writes one .h5 file; give --out a .h5 name")
    dev = resolve_device(device)
    if schedule is None and source["kind"] == "index":  # the schedule the index file records, as sizes
        with open_index(source["path"]) as f:
            schedule = ",".join(str(k) for k in f.recorded_schedule(steps).sizes)
    spec = RunSpec(source, Machine.parse(machine).value, schedule or DEFAULT_SCHEDULE, steps, label, dtype, str(dev), batch_size,
                   block_mb, retrieval)
    res = run_samples(out, spec, seeds, shard_size, workers, threads, ray_address, force,
                      echo=lambda line: click.echo(line, err=True))
    preview = Path(out) / "preview.png"
    if res.computed or not preview.exists():
        save_grid(torch.from_numpy(open_run(out, verify=False).samples[:64]), preview)
    rate = f", {res.seconds / res.computed:.2f} s/sample" if res.computed else ""
    click.echo(f"{out}: {res.samples} samples done ({res.computed} computed now in {res.seconds:.1f} s{rate}, "
               f"{res.shards_skipped} shards already done); preview {preview}")


def _write_outputs(out: Path, res, schedule: list[int] | None, settings: dict, seconds: float) -> None:
    """The sample file and its PNG grid (both atomic), and a one-line summary."""
    write_samples(out, res.samples, res.seeds, res.labels, schedule, settings, res.trajectory)
    png = Path(out).with_suffix(".png")
    save_grid(res.samples, png)
    num = len(res.seeds)
    click.echo(f"wrote {out} and {png} ({num} samples, {seconds:.1f} s, {seconds / num:.2f} s/sample)")
