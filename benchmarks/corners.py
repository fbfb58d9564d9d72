"""Same-position (corner) dot products: dense products per region (patches.box_dots) against integral
images of the elementwise product (patches.box_sums), the two ways the approximate engine can scan the
bbELS corner families and the LS fallback exactly. Synthetic float64 data, one thread recommended.

    OMP_NUM_THREADS=1 python benchmarks/corners.py --batch 64 --images 4096
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import click
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from patchdb import patches
from patchdb.patches import box_dots, box_regions, box_sums, geometry
from patchdb.spec import Machine


def _time(fn, repeat):
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return statistics.median(out)


@click.command()
@click.option("--batch", type=int, default=64, show_default=True)
@click.option("--images", type=int, default=4096, show_default=True)
@click.option("--size", "sizes", type=int, multiple=True, default=[3, 5, 9, 13, 17], show_default=True)
@click.option("--repeat", type=int, default=3, show_default=True)
def main(batch, images, sizes, repeat):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=g, dtype=torch.float64)
    phi = torch.rand(images, 3, 32, 32, generator=g, dtype=torch.float64) * 2 - 1
    print(f"B = {batch}, N = {images}, 3 x 32 x 32, float64, {torch.get_num_threads()} thread(s)")
    print("| k | positions per region | integral images s | dense products s | ratio |")
    print("|---|---|---|---|---|")
    for k in sizes:
        grp = next(g for g in geometry(Machine.BBELS, k, 32, 32).groups if g.family == "corner")
        pos = grp.query_pos.view(-1)
        regions = box_regions(pos, k // 2, 32, 32)

        def integral(regions=regions, pos=pos):
            return box_sums(lambda rs, cs: torch.einsum("bchw,nchw->bnhw", x[:, :, rs, cs], phi[:, :, rs, cs]),
                            regions, len(pos))

        def dense(regions=regions, pos=pos):
            saved = patches.BOX_PRODUCT_MAX_POSITIONS
            patches.BOX_PRODUCT_MAX_POSITIONS = 10**9
            try:
                return box_dots(x, phi, regions, len(pos))
            finally:
                patches.BOX_PRODUCT_MAX_POSITIONS = saved

        assert torch.allclose(integral(), dense(), rtol=1e-10, atol=1e-9)
        a, b = _time(integral, repeat), _time(dense, repeat)
        print(f"| {k} | {max(len(i) for i, *_ in regions)} | {a:.3f} | {b:.3f} | {a / b:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
