"""``patchdb build``: put every training patch a schedule needs into FAISS indexes in one HDF5 file."""

from __future__ import annotations

import re
import time
from pathlib import Path

import click

from patchdb.errors import PatchdbError
from patchdb.indexing.builder import BuildConfig, build_index_file, partial_path
from patchdb.indexing.faiss_ops import parse_bytes, set_threads
from patchdb.indexing.reader import IndexFile
from patchdb.spec import Machine
from patchdb.store import claim_output

from .options import SEED, dataset_options, load_from_options, parse_schedule_option


def parse_memory(text: str) -> int:
    return parse_bytes(text, "--memory")


def default_out(dataset: str, machine: Machine) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(dataset).stem if "/" in dataset else dataset).strip("-")
    return Path("indexes") / f"{name}-{machine.value}.h5"


@click.command()
@dataset_options
@click.option("--machine", "-m", default="bbels", help="els or bbels: which candidate families to index.")
@click.option("--scales", "-s", default="fashion-mnist-resnet-zeros",
              help="Patch sizes: a schedule preset, a .json/.txt schedule file or a comma list (all distinct sizes are "
                   "built). A preset or file is also recorded as the schedule 'sample --index' uses by default.")
@click.option("--sample-above", type=click.FloatRange(min=0, max=1, min_open=True), default=None,
              help="Index only the sizes of the steps at t < this (a schedule preset or file in --scales): the others are "
                   "sampled with 'sample --sample-above' this or lower and need no index (e.g. 0.65).")
@click.option("--index-key", default="auto", help="A faiss index_factory string for every size, or auto (from size and --memory).")
@click.option("--memory", default="8GiB", help="Memory budget of one index (per patch-size family).")
@click.option("--recall-k", type=click.IntRange(min=1), default=64, help="K of the recall@K the search defaults are tuned for.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="FAISS threads (default: all cores).")
@click.option("--seed", type=SEED, default=0, help="Seed of the training and recall samples (0..2**32-1).")
@click.option("--out", "-o", type=click.Path(dir_okay=False), default=None, help="Output file (default: indexes/<dataset>-<machine>.h5).")
@click.option("--add", is_flag=True, help="Add missing patch sizes to an existing file (same dataset and machine).")
@click.option("--force", is_flag=True, help="Rebuild over an existing file (and create a missing --out folder).")
@click.pass_context
def command(ctx, dataset, root, split, download, limit, only_classes, policy, machine, scales, sample_above, index_key,
            memory, recall_k, threads, seed, out, add, force):
    """Build the patch index file of a dataset for a machine and a set of patch sizes."""
    machine = Machine.parse(machine)
    if machine not in (Machine.ELS, Machine.BBELS):
        raise PatchdbError(f"--machine {machine.value}: build indexes the els or bbels candidate families; "
                           f"{machine.value} needs no index (patchdb sample --machine {machine.value} scans exactly)")
    sched = parse_schedule_option(scales, what="--scales")
    sizes = _sizes(scales, sched, sample_above)
    parse_memory(memory)
    out = Path(out) if out else default_out(dataset, machine)
    if out.exists() and not (add or force):
        raise PatchdbError(f"{out} already exists; pass --add to add patch sizes to it or --force to rebuild it")
    out = claim_output(out, force or add, suffixes=(".h5", ".hdf5"))
    partial = partial_path(out)
    ctx.ensure_object(dict)["on_interrupt"] = (  # printed by the group on Ctrl-C
        f"Interrupted; the finished sub-indexes are kept in {partial}/: rerun the same command to resume, "
        f"or remove that folder (rm -r {partial}) to discard them")
    set_threads(threads)
    data = load_from_options(dataset, root, split, download, limit, only_classes, policy)
    schedule = _recorded_schedule(scales, sched, out if add else None)
    if sample_above is None and add:  # the sizes --add leaves out are still sampled-only ones
        sample_above = _recorded_build(out).get("sample_above")
    config = BuildConfig(machine.value, sizes, index_key, parse_memory(memory), recall_k, seed=seed,
                         sample_above=float(sample_above or 0), **schedule)
    click.echo(f"building {machine.value} indexes of {len(data):,} images of {data.name} for sizes {list(sizes)} -> {out}", err=True)
    start = time.perf_counter()
    build_index_file(data, out, config, progress=True, overwrite=force, add=add)
    with IndexFile(out) as f:
        size = out.stat().st_size
        click.echo(f"wrote {out} ({size / 2**20:.1f} MiB, sizes {list(f.sizes)}) in {time.perf_counter() - start:.1f} s")


def _names_schedule(text: str) -> bool:
    """Whether --scales names a schedule (a preset or a file) rather than listing sizes."""
    return not re.fullmatch(r"[\d,\s]*", text)


def _sizes(text: str, sched, sample_above: float | None) -> tuple[int, ...]:
    """The sizes to build: every distinct size of --scales, or with --sample-above those of its searched steps."""
    if sample_above is None:
        return sched.distinct()
    if not _names_schedule(text):
        raise PatchdbError(f"--sample-above needs the steps of a schedule: give --scales a preset or a schedule file, "
                           f"not the list of sizes {text!r}")
    sizes = sched.searched(sample_above)
    if not sizes:
        raise PatchdbError(f"--sample-above {sample_above:g} leaves no step that searches an index (the first step is at "
                           f"t = {1 / sched.steps:g}); give a larger value or leave it out")
    return sizes


def _recorded_schedule(text: str, sched, existing: Path | None) -> dict:
    """The schedule to record: --scales' own when it names one (a preset or a file, not a plain comma list
    of sizes), else the one an existing file (--add) recorded, else none."""
    if _names_schedule(text):
        return {"schedule": tuple(sched.sizes), "schedule_name": sched.name}
    build = _recorded_build(existing) if existing is not None else {}
    if build.get("schedule"):
        return {"schedule": tuple(build["schedule"]), "schedule_name": str(build.get("schedule_name", ""))}
    return {}


def _recorded_build(existing: Path) -> dict:
    """The build settings an existing file records (none: {})."""
    if not existing.exists():
        return {}
    with IndexFile(existing) as old:
        return old.build
