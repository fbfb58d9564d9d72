"""FAISS's query-by-query search against patchdb's list-major search on the same call (issue 27).

The query windows of one sampling step: the interior family's windows of stored trajectories (an exact
samples file, e.g. the merged one of docs/results/throughput/run.sh) at one step, divided by a_t, as the
approximate engine asks them; the number of candidates and the scan cap as the engine computes them.
Both searches run in the same process, one after the other; prints a markdown row with the seconds, the
ratio and the share of FAISS's ids the list scan also found. Run with OMP_NUM_THREADS=1.

    python benchmarks/list_scan.py indexes/fmnist-bbels.h5 EXACT.h5 --step 16 --queries 4096
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click
import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from patchdb.denoisers.retrieval import Retrieval, search_ids
from patchdb.indexing.reader import open_index
from patchdb.patches import geometry, unfold_windows
from patchdb.schedule import alpha_sigma, parse_schedule


@click.command()
@click.argument("index_file")
@click.argument("trajectories")
@click.option("--schedule", default="fashion-mnist-resnet-zeros", show_default=True)
@click.option("--step", type=int, default=16, show_default=True, help="Trajectory step (t = (S - step) / S).")
@click.option("--queries", type=int, default=4096, show_default=True)
@click.option("--scan-cap", type=float, default=0.5, show_default=True)
def main(index_file, trajectories, schedule, step, queries, scan_cap):
    sched = parse_schedule(schedule)
    t = (sched.steps - step) / sched.steps
    k = sched.size_at_time(t)
    a, _ = alpha_sigma(t)
    with h5py.File(trajectories, "r") as f:
        x = torch.from_numpy(f["trajectory"][step]).double()
    with open_index(index_file) as f:
        geom = geometry(f.machine, k, x.shape[-2], x.shape[-1])
        entry, qpos = f.entries(k)[0], geom.groups[0].query_pos[0]
        q = unfold_windows(x, k, geom.query_padding)[:, :, qpos].permute(0, 2, 1).reshape(-1, x.shape[1] * k * k)
        q = (q / a)[:queries]
        settings = Retrieval(scan_cap=scan_cap)
        want = settings.wanted(entry, entry.info["vectors"])
        index = f.index(k, 0, 0)
        seconds, found = {}, {}
        for name, by_list in (("faiss", False), ("list", True)):
            start = time.perf_counter()
            found[name] = search_ids(index, q, want, 0, 0, None, scan_cap, list_scan=by_list).numpy()
            seconds[name] = time.perf_counter() - start
    overlap = np.mean([len(np.intersect1d(a_, b_[b_ >= 0])) / max(1, (b_ >= 0).sum())
                       for a_, b_ in zip(found["list"], found["faiss"])])
    print("| k | t | queries | candidates | FAISS s | list s | ratio | FAISS ids found by list |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {k} | {t:.2f} | {len(q)} | {want} | {seconds['faiss']:.2f} | {seconds['list']:.2f} | "
          f"{seconds['faiss'] / seconds['list']:.1f}x | {overlap:.4f} |")


if __name__ == "__main__":
    main()
