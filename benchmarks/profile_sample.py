"""cProfile of one batch of whole approximate samples (issue 27): where a sample's time goes.

Prints the seconds per sample, then cProfile's top functions by own time and the engine's functions by
cumulative time (search: ``search_ids``; re-rank: ``_rerank``; corners: ``_exact_same_position``;
index loads: ``IndexFile.index``; tail: ``_add_tail``). Run with OMP_NUM_THREADS=1.

    python benchmarks/profile_sample.py indexes/fmnist-bbels.h5 --batch 16 --knobs '{"exact_scan": 81}'
"""

from __future__ import annotations

import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from patchdb.denoisers.factory import make_denoiser
from patchdb.denoisers.retrieval import Retrieval
from patchdb.indexing.reader import IndexFile
from patchdb.sampler import ddim_sample, initial_noise
from patchdb.schedule import parse_schedule


@click.command()
@click.argument("index_file")
@click.option("--schedule", default="fashion-mnist-resnet-zeros", show_default=True)
@click.option("--batch", type=int, default=16, show_default=True)
@click.option("--memory-gib", type=float, default=4.0, show_default=True, help="Index memory budget.")
@click.option("--knobs", default="{}", help="JSON of Retrieval knobs over --scan-cap 0.5 --reuse 4 --sample-above 0.9.")
def main(index_file, schedule, batch, memory_gib, knobs):
    f = IndexFile(index_file, cache_bytes=int(memory_gib * 2**30))
    sched = parse_schedule(schedule)
    retrieval = Retrieval.from_dict({"scan_cap": 0.5, "reuse": 4, "sample_above": 0.9, "list_scan": True,
                                     "exact_scan": 0, **json.loads(knobs)})
    engine = make_denoiser(f.machine, sched, index=f, retrieval=retrieval)
    noise = initial_noise(list(range(batch)), (f.channels, f.height, f.width))
    profile = cProfile.Profile()
    profile.enable()
    start = time.perf_counter()
    ddim_sample(engine, noise, sched.steps, None)
    wall = time.perf_counter() - start
    profile.disable()
    print(f"batch {batch}: {wall / batch:.2f} s/sample ({retrieval})")
    stats = pstats.Stats(profile)
    stats.sort_stats("tottime").print_stats(14)
    stats.sort_stats("cumulative").print_stats("approx.py|retrieval.py|reader.py|batch_search.py", 25)


if __name__ == "__main__":
    main()
