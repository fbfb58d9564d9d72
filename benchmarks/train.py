"""Training throughput of the baseline networks: optimizer steps per second by size and memory layout.

    python benchmarks/train.py                       # ResNets 32/48/64 x 8, batch 32, 1 thread
    python benchmarks/train.py --sizes 64x8,64x6 --batch 32 --threads 2

One step = ``diffusion_loss`` + backward + AdamW, as ``patchdb train`` runs it, on random 1x32x32
images. Each row: the median of ``--repeats`` timings of ``--steps`` steps after a warm-up, for NCHW
(contiguous) and channels-last weights and inputs; ``ratio`` is contiguous time / channels-last time
in the same run (what ``patchdb train``'s channels-last layout buys). Peak RSS is the process's.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from patchdb.baselines.models import ModelConfig, build_model
from patchdb.baselines.train import diffusion_loss


def time_steps(width: int, depth: int, batch: int, channels_last: bool, steps: int, repeats: int) -> float:
    """Median seconds per optimizer step."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = build_model(ModelConfig(arch="resnet", width=width, depth=depth)).to(memory_format=fmt)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x0 = (torch.rand(batch, 1, 32, 32) * 2 - 1).contiguous(memory_format=fmt)
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        diffusion_loss(net, x0, None, gen).backward()
        opt.step()

    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        times.append((time.perf_counter() - t0) / steps)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="32x8,48x8,64x8", help="WIDTHxDEPTH,... (ResNet)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"batch {args.batch}, {args.threads} thread(s), median of {args.repeats} x {args.steps} steps")
    print(f"{'net':>6} {'NCHW ms/step':>13} {'ch-last ms/step':>16} {'samples/s':>10} {'ratio':>6}")
    for size in args.sizes.split(","):
        width, depth = (int(v) for v in size.lower().split("x"))
        plain = time_steps(width, depth, args.batch, False, args.steps, args.repeats)
        last = time_steps(width, depth, args.batch, True, args.steps, args.repeats)
        print(f"{size:>6} {plain * 1e3:13.1f} {last * 1e3:16.1f} {args.batch / last:10.0f} {plain / last:6.2f}",
              flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak RSS {peak:.2f} GB")


if __name__ == "__main__":
    main()
