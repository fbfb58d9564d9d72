"""Recall@K of the bbELS edge families, per edge row, for several PCA widths of the edge indexes.

Builds one index file per width (``patchdb.indexing.faiss_ops.EDGE_PCA_DIM``) over the first N images and, for
every edge row/column sub-index, measures recall@K on data-like queries (a stored window plus noise
0.2, tie-aware, as the builder's tuner) at the nprobe / re-rank factor the builder tuned on row 0.

    OMP_NUM_THREADS=1 python benchmarks/edge_recall.py --n 2000 --sizes 9,13 --dims 32,64
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import click
import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import patchdb.indexing.builder as ixf
import patchdb.indexing.faiss_ops as fx
from patchdb.data import load_dataset


def recall_fixed(images, index, k, cand_pos, cfg, nprobe, factor) -> float:
    """Recall@K of one sub-index at a fixed (nprobe, re-rank factor), measured as the builder's tuner does."""
    chunk = max(1, ixf.CHUNK_ELEMENTS // (cand_pos.shape[1] * k * k))
    queries, kth, true_dist = ixf.recall_probe(images, k, cand_pos, cfg, chunk)
    _, ids = fx.search(index, queries, cfg.recall_k * factor, nprobe)
    return fx.recall_at(true_dist(ids), kth, cfg.recall_k)


@click.command()
@click.option("--dataset", default="fashion-mnist")
@click.option("--root", default="../shared/data")
@click.option("--n", "limit", type=int, default=2000)
@click.option("--sizes", default="9,13")
@click.option("--dims", default="32,64", help="Edge PCA widths to compare.")
@click.option("--out-dir", type=click.Path(file_okay=False), default=None)
def main(dataset, root, limit, sizes, dims, out_dir):
    sizes = tuple(int(s) for s in sizes.split(","))
    data = load_dataset(dataset, root=root, limit=limit)
    folder = Path(out_dir or tempfile.mkdtemp(prefix="edge-recall-"))
    folder.mkdir(parents=True, exist_ok=True)
    print("| k | edge family | PCA dims | index | tuned nprobe, f | recall row 0 | median over rows (min) | build s (family) |")
    print("|---|---|---|---|---|---|---|---|")
    for width in (int(s) for s in dims.split(",")):
        fx.EDGE_PCA_DIM = width
        out = folder / f"edge{width}-{limit}.h5"
        cfg = ixf.BuildConfig(machine="bbels", sizes=sizes)
        ixf.build_index_file(data, out, cfg, progress=False, overwrite=True)
        with h5py.File(out) as h:
            for k in sizes:
                for name, grp in h[f"sizes/k{k}"].items():
                    info = json.loads(grp.attrs["info"])
                    if info["family"] != "edge":
                        continue
                    cand = torch.from_numpy(grp["cand_pos"][()])
                    recs = [recall_fixed(data.images, fx.deserialize(grp[f"index/{g}"][()]), k, cand[g : g + 1], cfg,
                                         info["nprobe"], info["k_factor"]) for g in range(cand.shape[0])]
                    print(f"| {k} | {name} | {width} | {info['plan']['key']} | {info['nprobe']}, {info['k_factor']} | "
                          f"{info['recall']:.3f} | {np.median(recs):.3f} ({min(recs):.3f}) | {info['seconds']:.1f} |",
                          flush=True)


if __name__ == "__main__":
    main()
