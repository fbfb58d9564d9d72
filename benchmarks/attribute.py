"""Benchmark attribution: seconds to attribute one 20-step sample, and the storage it takes.

For each training-set size N: build (or reuse) the index file, draw one sample with the
approximate engine (``--save-trajectory``), then time ``attribute_file`` with the approximate
engine (the same index) and, with ``--exact``, with the exact engine. Prints a markdown table.
Run with ``OMP_NUM_THREADS`` set to the cores you mean to use (1 on a shared 2-core machine).

    OMP_NUM_THREADS=1 python benchmarks/attribute.py --dataset fashion-mnist --root ../shared/data \\
        --n 10000 --n 60000 --index-dir indexes
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import click
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from patchdb.attribute import attribute_file, storage_bytes
from patchdb.data import load_dataset
from patchdb.denoisers.factory import make_denoiser
from patchdb.generate import generate
from patchdb.indexing.builder import BuildConfig, build_index_file
from patchdb.indexing.reader import open_index
from patchdb.schedule import parse_schedule
from patchdb.store import write_samples


def index_for(dataset, folder: Path, machine: str, sizes: tuple[int, ...], index_key: str) -> tuple[Path, float]:
    """The index file of ``dataset`` in ``folder`` (built if missing) and the seconds building took."""
    path = folder / f"{dataset.name.replace(':', '_').replace('/', '_')}-{len(dataset)}-{machine}.h5"
    if path.exists():
        return path, 0.0
    start = time.perf_counter()
    build_index_file(dataset, path, BuildConfig(machine=machine, sizes=sizes, index_key=index_key), progress=False)
    return path, time.perf_counter() - start


def one_sample(index_path: Path, machine: str, schedule, topk: int, out: Path) -> float:
    """Draw one approximate-engine sample with its trajectory into ``out``; returns seconds."""
    with open_index(index_path) as f:
        engine = make_denoiser(machine, schedule, index=f, topk=topk)
        start = time.perf_counter()
        res = generate(engine, (f.channels, f.height, f.width), 1, 0, 1, schedule.steps, None, torch.float32,
                       "cpu", True)
        seconds = time.perf_counter() - start
        settings = {"command": "benchmark", "engine": "approx", "index": str(index_path), "machine": machine,
                    "schedule": list(schedule.sizes), "steps": schedule.steps, "dtype": "float32",
                    "retrieval": engine.retrieval.to_dict(),
                    "dataset_name": f.meta["dataset"], "fingerprint": f.fingerprint}
    write_samples(out, res.samples, res.seeds, None, list(schedule.sizes), settings, res.trajectory)
    return seconds


@click.command()
@click.option("--dataset", default="fashion-mnist")
@click.option("--root", default="../shared/data")
@click.option("--n", "sizes_n", type=int, multiple=True, default=(10_000, 60_000), help="Training-set sizes.")
@click.option("--machine", default="bbels")
@click.option("--schedule", default="fashion-mnist-resnet-zeros")
@click.option("--index-dir", type=click.Path(file_okay=False), default="indexes")
@click.option("--index-key", default="auto")
@click.option("--index", "index_files", type=click.Path(exists=True, dir_okay=False), multiple=True,
              help="Existing index files to time instead of building one per --n (their N is read from them).")
@click.option("--topk", type=int, default=64)
@click.option("--max-contrib", type=int, default=8)
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32")
@click.option("--exact", is_flag=True, help="Also time the exact attribution of the same sample.")
def main(dataset, root, sizes_n, machine, schedule, index_dir, index_key, index_files, topk, max_contrib, dtype,
         exact):
    """Seconds and storage of attributing one sample at each N (markdown table on stdout)."""
    sched = parse_schedule(schedule)
    folder = Path(index_dir)
    folder.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="attrib-bench-"))
    dt = getattr(torch, dtype)
    print("| N | index build s | sample s (approx) | attribute s (approx) | attribute s (exact) | "
          "file bytes | bytes per pixel-step |")
    print("|---|---|---|---|---|---|---|")
    runs = [(Path(p), None) for p in index_files] or [(None, n) for n in sizes_n]
    for idx, n in runs:
        built = 0.0
        if idx is None:
            data = load_dataset(dataset, root=root, limit=n)
            idx, built = index_for(data, folder, machine, sched.distinct(), index_key)
        with open_index(idx) as f:
            n = int(f.meta["count"])
        samples = work / f"n{n}.h5"
        sampled = one_sample(idx, machine, sched, topk, samples)
        with open_index(idx) as f:
            attr, path = attribute_file(samples, work / f"n{n}.approx.h5", max_contrib=max_contrib, dtype=dt,
                                        index=f, topk=topk)
        approx_s = attr.meta["seconds"]
        exact_s = float("nan")
        if exact:
            ex, _ = attribute_file(samples, work / f"n{n}.exact.h5", max_contrib=max_contrib, dtype=dt, exact=True)
            exact_s = ex.meta["seconds"]
        size = storage_bytes(path)["file"]
        per = size / (attr.ids.shape[1] * attr.ids.shape[2])
        print(f"| {n} | {built:.0f} | {sampled:.1f} | {approx_s:.1f} | {exact_s:.1f} | {size} | {per:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
