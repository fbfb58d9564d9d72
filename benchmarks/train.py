"""Training throughput of the baseline networks: optimizer steps per second by size and memory layout.

    python benchmarks/train.py                       # ResNets 32/48/64 x 8, batch 32, 1 thread
    python benchmarks/train.py --sizes 64x8,64x6 --batch 32 --threads 2
    python benchmarks/train.py --sizes 64x8 --compile    # adds torch.compile (channels-last) to the table

One step = ``diffusion_loss`` + backward + AdamW, as ``patchdb train`` runs it, on random 1x32x32
images. Each row: the median of ``--repeats`` timings of ``--steps`` steps after a warm-up, for NCHW
(contiguous) and channels-last weights and inputs; ``ratio`` is contiguous time / channels-last time
in the same run (what ``patchdb train``'s channels-last layout buys). With ``--compile`` the
channels-last network is also wrapped in ``torch.compile`` (inductor; needs a C++ compiler) and
timed after its compilation; ``compiled`` is channels-last time / compiled time. The step includes
the EMA update ``patchdb train`` makes (decay 0.999). Peak RSS is the process's.
"""

from __future__ import annotations

import argparse
import copy
import resource
import statistics
import time

import torch

from patchdb.baselines.models import ModelConfig, build_model
from patchdb.baselines.train import _update_ema, diffusion_loss


def time_steps(width: int, depth: int, batch: int, channels_last: bool, steps: int, repeats: int,
               compile: bool = False) -> float:
    """Median seconds per optimizer step (EMA update included)."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = build_model(ModelConfig(arch="resnet", width=width, depth=depth)).to(memory_format=fmt)
    ema = copy.deepcopy(net)
    model = torch.compile(net) if compile else net
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x0 = (torch.rand(batch, 1, 32, 32) * 2 - 1).contiguous(memory_format=fmt)
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        diffusion_loss(model, x0, None, gen).backward()
        opt.step()
        _update_ema(ema, net, 0.999)

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
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of the channels-last network")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"batch {args.batch}, {args.threads} thread(s), median of {args.repeats} x {args.steps} steps")
    extra = f" {'compiled ms/step':>17} {'compiled':>8}" if args.compile else ""
    print(f"{'net':>6} {'NCHW ms/step':>13} {'ch-last ms/step':>16} {'samples/s':>10} {'ratio':>6}{extra}")
    for size in args.sizes.split(","):
        width, depth = (int(v) for v in size.lower().split("x"))
        plain = time_steps(width, depth, args.batch, False, args.steps, args.repeats)
        last = time_steps(width, depth, args.batch, True, args.steps, args.repeats)
        row = f"{size:>6} {plain * 1e3:13.1f} {last * 1e3:16.1f} {args.batch / last:10.0f} {plain / last:6.2f}"
        if args.compile:
            fast = time_steps(width, depth, args.batch, True, args.steps, args.repeats, compile=True)
            row += f" {fast * 1e3:17.1f} {last / fast:8.2f}"
        print(row, flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak RSS {peak:.2f} GB")


if __name__ == "__main__":
    main()
