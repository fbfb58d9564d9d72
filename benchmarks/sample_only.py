"""Seconds of the approximate engine's sample-only steps (``--sample-above``): no search, D from a uniform
sample of every candidate (docs/engines.md "Sample-only steps"). Such a step reads only the stored images
and the blank windows found from them, so any index file of the dataset will do, whatever sizes it holds.

Per size: one call of the step at its time (x_t = noised training images, seeded) to make the one-time
parts (blank windows of the size, int16 codes), then ``--repeat`` timed calls; the median is printed, per
batch and per sample. To compare two versions of the engine, run it from two checkouts (``git worktree``)
side by side on the same file; the sums of D printed beside the times show they compute the same thing.

    OMP_NUM_THREADS=1 python benchmarks/sample_only.py indexes/fmnist-bbels.h5 --batch 64 \
        --step 0.9:17 --step 0.8:15 --step 0.7:13 --sample-size 4096
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import click
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from patchdb.denoisers.approx import ApproxMachine
from patchdb.denoisers.retrieval import Retrieval
from patchdb.indexing.reader import IndexFile
from patchdb.schedule import alpha_sigma


@click.command()
@click.argument("index_file")
@click.option("--batch", type=int, default=64, show_default=True)
@click.option("--step", "steps", multiple=True, default=["0.9:17", "0.8:15", "0.7:13"], show_default=True,
              help="T:K, a sample-only step at time T with patch size K (repeatable).")
@click.option("--sample-size", type=int, default=4096, show_default=True)
@click.option("--machine", default="bbels", show_default=True)
@click.option("--repeat", type=int, default=1, show_default=True)
def main(index_file, batch, steps, sample_size, machine, repeat):
    f = IndexFile(index_file, cache_bytes=4 * 2**30)
    parsed = [(float(t), int(k)) for t, k in (s.split(":") for s in steps)]
    below = min(t for t, _ in parsed)
    engine = ApproxMachine(f, machine, None, Retrieval(scan_cap=0.5, sample_above=below, sample_size=sample_size))
    engine.source = f.source(max(k for _, k in parsed))
    images = f.images()[:batch].float() / 127.5 - 1
    g = torch.Generator().manual_seed(0)
    print(f"{index_file}: N = {f.meta['count']}, batch {batch}, sample {sample_size}, {torch.get_num_threads()} thread(s)")
    print("| t | k | s per batch | s per sample | sum of D |")
    print("|---|---|---|---|---|")
    for t, k in parsed:
        a, b = alpha_sigma(t)
        x = a * images + b * torch.randn(images.shape, generator=g)
        engine.denoise(x, t, k=k)  # one-time parts
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            out = engine.denoise(x, t, k=k)
            times.append(time.perf_counter() - start)
        sec = statistics.median(times)
        print(f"| {t} | {k} | {sec:.2f} | {sec / batch:.3f} | {out.double().sum():.4f} |", flush=True)


if __name__ == "__main__":
    main()
