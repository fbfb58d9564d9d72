"""Speed of the exact engine: per denoiser call and per full 20-step sample, against a conv2d baseline.

Usage:
    python benchmarks/exact.py calls             # seconds per call vs N (500, 2000, 10000), k, batch 1/16
    python benchmarks/exact.py sample            # 20-step bbELS samples, batch 8, N = 2000 and 10000,
                                                 # patchdb vs the conv2d baseline (benchmarks/conv_baseline.py)
    python benchmarks/exact.py dedup             # one call per k: distinct-window scan vs plain scan

Data: the MNIST test split in ../shared/data/mnist-t10k (or --root), bilinear-resized to 32x32.
Each configuration runs in a fresh subprocess so that its peak memory (max RSS) is its own.
The baseline's cost is linear in N (it streams the training set in blocks), so for N above
--baseline-n it is timed on the first --baseline-n images for the same inputs and scaled by
N / baseline-n; the table says so in its "baseline" column header.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DEFAULT_ROOT = HERE.parents[1] / "shared" / "data" / "mnist-t10k"
SCHEDULE = "mnist-resnet-zeros"


def load(n: int, root: str) -> torch.Tensor:
    from patchdb.data import load_dataset

    data = load_dataset("mnist", root=root, split="test", limit=n, progress=False)
    return data.to_float()


def clock() -> float:
    return time.process_time() if CLOCK == "cpu" else time.perf_counter()


CLOCK = "wall"


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_call(args) -> dict:
    """Median seconds of one bbELS call at (N, k, batch) with t where the schedule uses k."""
    from patchdb.denoisers.exact import ExactMachine
    from patchdb.schedule import PRESETS

    images = load(args.n, args.root)
    sizes = PRESETS[SCHEDULE]
    t = (sizes.index(args.k) + 1) / len(sizes)
    engine = ExactMachine(images, "bbels")
    x = torch.randn(args.batch, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.5
    times = []
    for _ in range(args.repeat):
        start = clock()
        engine.denoise(x, t, k=args.k)
        times.append(clock() - start)
    return {"n": args.n, "k": args.k, "t": t, "batch": args.batch, "seconds": statistics.median(times),
            "peak_mib": peak_mib()}


def one_dedup(args) -> dict:
    """One bbELS call at (N, k, batch) with and without distinct-window pools, same inputs."""
    from patchdb.denoisers.exact import ExactMachine
    from patchdb.schedule import PRESETS

    images = load(args.n, args.root)
    sizes = PRESETS[SCHEDULE]
    t = (sizes.index(args.k) + 1) / len(sizes) if args.k in sizes else 0.5
    x = torch.randn(args.batch, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.5
    row = {"n": args.n, "k": args.k, "t": t, "batch": args.batch}
    outs = {}
    for dedup in (False, True):
        engine = ExactMachine(images, "bbels", dedup=dedup)
        start = clock()
        pools = engine._pools_for(None, engine.images, args.k) if dedup else None
        prep = clock() - start
        times = []
        for _ in range(args.repeat):
            start = clock()
            outs[dedup] = engine.denoise(x, t, k=args.k)
            times.append(clock() - start)
        row["dedup" if dedup else "plain"] = statistics.median(times)
        if dedup:
            row["prep"] = prep
            total = sum(int(p.count.sum()) for p in pools)
            row["distinct"] = sum(p.size for p in pools) / total
    row["max_diff"] = float((outs[True] - outs[False]).abs().max())
    row["peak_mib"] = peak_mib()
    return row


def one_sample(args) -> dict:
    """A full 20-step bbELS batch with patchdb, then the baseline on the same inputs of every step."""
    sys.path.insert(0, str(HERE))
    from conv_baseline import conv_bbels

    from patchdb.denoisers.exact import ExactMachine
    from patchdb.sampler import ddim_sample, initial_noise
    from patchdb.schedule import parse_schedule

    images = load(args.n, args.root)
    sched = parse_schedule(SCHEDULE)
    engine = ExactMachine(images, "bbels", sched)
    calls = []

    def timed(x, t, labels=None):
        start = clock()
        out = engine(x, t, labels)
        calls.append((x.clone(), t, clock() - start))
        return out

    noise = initial_noise(list(range(args.batch)), (1, 32, 32))
    start = clock()
    ddim_sample(timed, noise, sched.steps)
    ours = clock() - start
    ours_peak = peak_mib()
    sub = images[: min(args.baseline_n, args.n)]
    base = 0.0
    for x, t, _ in calls:
        begin = clock()
        conv_bbels(x, sub, t, engine.size_at(t))
        base += clock() - begin
    base *= args.n / len(sub)
    return {"n": args.n, "batch": args.batch, "ours_s_per_sample": ours / args.batch,
            "baseline_s_per_sample": base / args.batch, "baseline_n": len(sub), "ratio": base / ours,
            "ours_peak_mib": ours_peak, "per_step_s": [c[2] for c in calls], "clock": args.clock}


def run_child(mode: str, **kw) -> dict:
    cmd = [sys.executable, __file__, "--child", mode] + [f"--{k.replace('_', '-')}={v}" for k, v in kw.items()]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def grid_runs(mode: str, args):
    """``(N, k, batch, result)`` of one child run per combination of --sizes, --ks and --batches."""
    for n in map(int, args.sizes.split(",")):
        for k in map(int, args.ks.split(",")):
            for b in map(int, args.batches.split(",")):
                yield n, k, b, run_child(mode, root=args.root, n=n, k=k, batch=b, repeat=args.repeat, clock=args.clock)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["calls", "sample", "dedup"], nargs="?", default="calls")
    p.add_argument("--child", choices=["call", "sample", "dedup"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--root", default=str(DEFAULT_ROOT))
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--sizes", default="500,2000,10000", help="N values")
    p.add_argument("--ks", default="3,7,11,15", help="patch sizes for 'calls'")
    p.add_argument("--batches", default="1,16", help="batch sizes for 'calls'")
    p.add_argument("--baseline-n", type=int, default=500, help="images the baseline is timed on (scaled to N)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall: elapsed seconds; cpu: process CPU seconds (steadier on a busy machine with 1 thread)")
    args = p.parse_args()
    global CLOCK
    CLOCK = args.clock
    if args.child:
        print(json.dumps({"call": one_call, "sample": one_sample, "dedup": one_dedup}[args.child](args)))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, {args.clock} clock")
    if args.what == "calls":
        print("| N | k | t | batch | s/call | s/call/image | peak MiB |")
        print("|---|---|---|---|---|---|---|")
        for n, k, b, r in grid_runs("call", args):
            print(f"| {n} | {k} | {r['t']:.2f} | {b} | {r['seconds']:.3f} | {r['seconds'] / b:.3f} | {r['peak_mib']:.0f} |", flush=True)
    elif args.what == "dedup":
        print("| N | k | batch | distinct windows | plain s/call | dedup s/call | speed-up | pool build s | max abs diff | peak MiB |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for n, k, b, r in grid_runs("dedup", args):
            print(f"| {n} | {k} | {b} | {r['distinct']:.0%} | {r['plain']:.2f} | {r['dedup']:.2f} | "
                  f"{r['plain'] / r['dedup']:.2f}x | {r['prep']:.1f} | {r['max_diff']:.1e} | {r['peak_mib']:.0f} |", flush=True)
    else:
        sizes = args.sizes if args.sizes != "500,2000,10000" else "2000,10000"
        print(f"| N | batch | patchdb s/sample | baseline s/sample (timed on N'={args.baseline_n}, x N/N') | speed-up | patchdb peak MiB |")
        print("|---|---|---|---|---|---|")
        for n in map(int, sizes.split(",")):
            r = run_child("sample", root=args.root, n=n, batch=8, baseline_n=args.baseline_n, clock=args.clock)
            print(f"| {n} | {r['batch']} | {r['ours_s_per_sample']:.1f} | {r['baseline_s_per_sample']:.1f} | "
                  f"{r['ratio']:.1f}x | {r['ours_peak_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
