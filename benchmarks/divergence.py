"""Where along the sampler does a machine part from the network? A step-by-step profile.

`patchdb compare` gives one number per seed: the Pearson r of the machine's and the network's final
images. This script says which steps lose it. From each seed's noise it runs two hybrid samplers and,
after every step j, lets the network finish the remaining steps from the hybrid's state:

* ``machine-first``: the machine takes steps S..j, the network j-1..1. At j = 1 this is the machine's
  own sample, so the last row equals `patchdb compare`'s r for the same seed and schedule.
* ``network-first``: the network takes step S (t = 1), the machine S-1..j, the network the rest.

r(j) is the Pearson r of that final image with the network's own sample. The drop from one row to the
next is what the machine's step j costs; the gap between the two columns is what step S costs.

    python benchmarks/divergence.py run -c CK --dataset mnist --root DATA --split test \\
        -s CK/schedule.json --seed 0 --num 8 --threads 1 --out prof-0.json
    python benchmarks/divergence.py report prof-0.json prof-8.json [--png profile.png]
    python benchmarks/divergence.py denoised -c CK_A -c CK_B ... --dataset mnist --root DATA --split test \
        [--times 1,0.95,0.9] [--seed 0 --num 16]

``denoised`` compares networks at the first, noisiest steps: for each t, the rms distance of each
network's D(noise, t) from the training mean, and the median over seeds of the Pearson r between two
networks' D - mean (how much of what they add to the mean they share).

Also printed by ``run``: at t = 1, the root-mean-square distance of the network's and the machine's
denoised images D from the training set's mean image (the ideal denoiser there is within ~0.02 of it).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from patchdb.data import load_dataset
from patchdb.evaluation.factories import load_network, machine_factory
from patchdb.evaluation.metrics import pearson
from patchdb.sampler import ddim_sample, ddim_step, initial_noise
from patchdb.schedule import parse_schedule
from patchdb.store import atomic_write

MODES = ("machine-first", "network-first")


def profile(net, machine, noise: torch.Tensor, steps: int, mode: str) -> dict[int, torch.Tensor]:
    """r(j) per seed for j = S..1 (network-first: S-1..1) of one hybrid sampler (module docstring)."""
    reference = ddim_sample(net, noise.clone(), steps).samples
    x, first, out = noise.clone(), steps, {}
    if mode == "network-first":
        x, first = ddim_step(x, net(x, 1.0, None), steps, steps), steps - 1
    for j in range(first, 0, -1):
        x = ddim_step(x, machine(x, j / steps, None), j, steps)
        final = ddim_sample(net, x.clone(), steps, first_step=j - 1).samples if j > 1 else x
        out[j] = pearson(reference, final)
        print(f"{mode}: machine through step {j}: median r {float(out[j].median()):.4f}", flush=True)
    return out


def load_data(args: argparse.Namespace):
    """Set the thread count and read the dataset of the common options."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return load_dataset(None if args.dataset == "embedded" else args.dataset, root=args.root, split=args.split,
                        limit=args.limit)


def run(args: argparse.Namespace) -> None:
    data = load_data(args)
    net, cfg, _ = load_network(args.checkpoint, data.channels, data.height, data.width)
    if cfg.conditional:
        raise SystemExit("error: this profile covers unconditional networks only")
    schedule = parse_schedule(args.schedule, args.steps)
    images = data.to_float(torch.float32)
    machine = machine_factory(args.machine, images)(schedule)
    seeds = list(range(args.seed, args.seed + args.num))
    noise = initial_noise(seeds, (data.channels, data.height, data.width))
    mean = images.mean(0, keepdim=True)
    rms = {name: float((d(noise, 1.0, None) - mean).pow(2).mean().sqrt()) for name, d in (("net", net), ("machine", machine))}
    print(f"t = 1: rms of D - training mean: network {rms['net']:.3f}, machine {rms['machine']:.3f}")
    result = {"seeds": seeds, "checkpoint": str(args.checkpoint), "machine": args.machine, "steps": args.steps,
              "schedule": list(schedule.sizes), "dataset_fingerprint": data.fingerprint(), "rms_t1": rms, "r": {}}
    start = time.perf_counter()
    for mode in MODES:
        result["r"][mode] = {str(j): r.tolist() for j, r in profile(net, machine, noise, args.steps, mode).items()}
    result["seconds"] = time.perf_counter() - start
    with atomic_write(args.out) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out} ({result['seconds']:.0f} s)")


def merge(paths: list[Path]) -> dict:
    parts = [json.loads(p.read_text()) for p in paths]
    first = parts[0]
    for p, path in zip(parts[1:], paths[1:]):
        for key in ("checkpoint", "machine", "steps", "schedule", "dataset_fingerprint"):
            if p[key] != first[key]:
                raise SystemExit(f"error: {path} was run with another {key} than {paths[0]}; merge runs of one setting")
    seeds = [s for p in parts for s in p["seeds"]]
    if len(set(seeds)) != len(seeds):
        raise SystemExit("error: the runs overlap in seeds; merge disjoint seed ranges only")
    r = {mode: {j: np.concatenate([np.array(p["r"][mode][j]) for p in parts]) for j in first["r"][mode]}
         for mode in MODES}
    return {"seeds": seeds, "steps": first["steps"], "schedule": first["schedule"], "r": r}


def report(args: argparse.Namespace) -> None:
    m = merge(args.parts)
    steps = m["steps"]
    print(f"{len(m['seeds'])} seeds, schedule {','.join(map(str, m['schedule']))} (step 1 first)")
    print(f"{'machine through step':>21} {'size':>5} | {'machine-first r':>15} {'r^2':>6} | {'network-first r':>15} {'r^2':>6}")
    for j in range(steps, 0, -1):
        row = f"{j:>21} {m['schedule'][j - 1]:>5} |"
        for mode in MODES:
            r = m["r"][mode].get(str(j))
            row += "        (network)       |" if r is None else f" {np.median(r):>15.4f} {np.median(r**2):>6.4f} |"
        print(row.rstrip("|"))
    a, b = m["r"]["machine-first"]["1"] ** 2, m["r"]["network-first"]["1"] ** 2
    print(f"final r^2 per seed, network-first minus machine-first: median {np.median(b - a):+.4f}, "
          f"higher on {(b > a).sum()}/{len(a)} seeds")
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.6))
        for mode, colour in zip(MODES, ("tab:red", "tab:blue")):
            js = sorted((int(j) for j in m["r"][mode]), reverse=True)
            med = [np.median(m["r"][mode][str(j)] ** 2) for j in js]
            q25 = [np.percentile(m["r"][mode][str(j)] ** 2, 25) for j in js]
            q75 = [np.percentile(m["r"][mode][str(j)] ** 2, 75) for j in js]
            ax.plot(js, med, "o-", color=colour, label=f"{mode} (median)")
            ax.fill_between(js, q25, q75, color=colour, alpha=0.15)
        ax.set_xlim(steps + 0.5, 0.5)
        ax.set_xticks(range(steps, 0, -1 if steps <= 20 else -steps // 10))
        ax.set_xlabel("machine through step j (network after)")
        ax.set_ylabel("r^2 with the network's sample")
        ax.set_title(f"{len(m['seeds'])} seeds; band: interquartile range", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        with atomic_write(args.png) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
        plt.close(fig)
        print(f"wrote {args.png}")


def denoised(args: argparse.Namespace) -> None:
    import itertools

    data = load_data(args)
    mean = data.to_float(torch.float32).mean(0, keepdim=True)
    noise = initial_noise(list(range(args.seed, args.seed + args.num)), (data.channels, data.height, data.width))
    nets = {str(ck): load_network(ck, data.channels, data.height, data.width)[0] for ck in args.checkpoint}
    for t in (float(x) for x in args.times.split(",")):
        extra = {}
        with torch.no_grad():
            for name, net in nets.items():
                extra[name] = (net(noise, t, None) - mean).flatten(1).double()
                print(f"t = {t:g}  rms of D - mean  {extra[name].pow(2).mean().sqrt():.3f}  {name}")
        for a, b in itertools.combinations(nets, 2):
            r = pearson(extra[a], extra[b])
            print(f"t = {t:g}  median r of D - mean  {r.median():.3f}  {a} vs {b}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dataset", default="embedded")
    common.add_argument("--root")
    common.add_argument("--split", default="train")
    common.add_argument("--limit", type=int)
    common.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("run", parents=[common])
    r.add_argument("-c", "--checkpoint", type=Path, required=True)
    r.add_argument("-s", "--schedule", required=True)
    r.add_argument("--machine", default="bbels")
    r.add_argument("--steps", type=int, default=20)
    r.add_argument("--num", type=int, default=8)
    r.add_argument("--threads", type=int)
    r.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("report")
    p.add_argument("parts", type=Path, nargs="+")
    p.add_argument("--png", type=Path)
    d = sub.add_parser("denoised", parents=[common])
    d.add_argument("-c", "--checkpoint", type=Path, action="append", required=True)
    d.add_argument("--times", default="1,0.95,0.9")
    d.add_argument("--num", type=int, default=16)
    d.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    {"run": run, "report": report, "denoised": denoised}[args.cmd](args)


if __name__ == "__main__":
    main()
