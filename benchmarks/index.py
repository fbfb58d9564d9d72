"""Benchmark the patch index: build cost per size, exact vs approximate time per sample, recall vs nprobe.

Prints markdown tables. Run with ``OMP_NUM_THREADS`` set to the cores you mean to use (on a shared
2-core machine, 1: oversubscribed OpenMP threads spin and can run 10x slower).

    python benchmarks/index.py build --dataset fashion-mnist --root ../shared/data/fashion-mnist --limit 10000
    python benchmarks/index.py speed FILE --schedule fashion-mnist-resnet-zeros --batch 1 --batch 16
    python benchmarks/index.py recall FILE
    python benchmarks/index.py scan-cap FILE --sizes 3,5,7 --caps 0,1,0.5,0.25

``build`` runs one ``patchdb build`` subprocess per patch size, so each size's peak memory (max RSS)
is its own; ``speed`` times one denoiser call per distinct size at the noise level of its steps and
sums over the schedule (the sampler adds nothing measurable), exact and approximate in the same run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from patchdb.indexfile import open_index
from patchdb.schedule import alpha_sigma, parse_schedule
from patchdb.score import make_denoiser
from patchdb.score.approx import DEFAULT_SCAN_CAP


@click.group()
def cli() -> None:
    """Index benchmarks (markdown tables on stdout)."""


def _run_measured(cmd: list[str], cwd: Path):
    """Run ``cmd``; (return code, stderr text, resource usage of that child alone)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        return proc.returncode, err.read().decode(errors="replace"), usage


@cli.command()
@click.option("--dataset", default="fashion-mnist")
@click.option("--root", default="../shared/data/fashion-mnist")
@click.option("--limit", type=int, default=None)
@click.option("--machine", default="bbels")
@click.option("--scales", default="fashion-mnist-resnet-zeros")
@click.option("--memory", default="8GiB")
@click.option("--keep", type=click.Path(), default=None, help="Folder to keep the per-size files in.")
def build(dataset, root, limit, machine, scales, memory, keep):
    """Build time, file size and peak memory per patch size (one subprocess each)."""
    folder = Path(keep or tempfile.mkdtemp())
    folder.mkdir(parents=True, exist_ok=True)
    print("| dataset | N | k | vectors | index | build s | vectors/s | file MiB | peak RSS MiB | recall@K |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    total_s = 0.0
    for k in parse_schedule(scales).distinct():
        out = folder / f"{Path(dataset).stem}-{limit or 'all'}-k{k}.h5"
        cmd = [sys.executable, "-m", "cli.main", "build", "--dataset", dataset, "--root", root, "--machine", machine,
               "--scales", str(k), "--memory", memory, "--out", str(out), "--force"]
        if limit:
            cmd += ["--limit", str(limit)]
        start = time.perf_counter()
        returncode, stderr, usage = _run_measured(cmd, Path(__file__).resolve().parents[1])
        seconds = time.perf_counter() - start
        if returncode:
            print(f"| {dataset} | {limit} | {k} | failed: {stderr.strip().splitlines()[-1]} |")
            continue
        peak = usage.ru_maxrss / 1024  # this child's own peak (RUSAGE_CHILDREN would be the max so far)
        total_s += seconds
        with open_index(out) as f:
            info = f.info()
        fams = [fam for fam in info["sizes"][str(k)] if "plan" in fam]
        vectors = sum(fam["vectors"] for fam in fams)
        keys = "; ".join(sorted({f"{fam['family']}: {fam['plan']['key']}" for fam in fams}))
        recall = min(fam["recall"] for fam in fams)
        print(f"| {dataset} | {info['metadata']['count']} | {k} | {vectors:,} | {keys} | {seconds:.0f} | "
              f"{vectors / seconds:,.0f} | {info['file_bytes'] / 2**20:,.0f} | {peak:,.0f} | {recall:.3f} |")
        if not keep:
            out.unlink()
    print(f"\ntotal build time {total_s:.0f} s (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")


def _x_at(t: float, data: torch.Tensor, batch: int, seed: int) -> torch.Tensor:
    """A realistic x_t: a training image of the file, noised to time t."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(data), (batch,), generator=g)
    a, b = alpha_sigma(t)
    return a * data[idx] + b * torch.randn(data[idx].shape, generator=g)


def _steps_of(sched, k: int) -> tuple[list[int], float]:
    """The steps of size ``k`` in ``sched`` and the time of the middle one (where ``k`` is timed)."""
    steps = [i for i in range(1, sched.steps + 1) if sched.size_at(i) == k]
    if not steps:
        raise click.UsageError(f"size {k} is not in the schedule {sched.name}")
    return steps, steps[len(steps) // 2] / sched.steps


@cli.command()
@click.argument("file")
@click.option("--schedule", default="fashion-mnist-resnet-zeros")
@click.option("--batch", "batches", type=int, multiple=True, default=[1])
@click.option("--topk", type=int, default=64)
@click.option("--tail", type=int, default=0)
@click.option("--label", type=int, default=None, help="Class-conditional timing (id-range selector).")
@click.option("--skip-exact", is_flag=True, help="Time only the approximate engine.")
@click.option("--scan-cap", type=float, default=DEFAULT_SCAN_CAP, show_default=True, help="The engine's scan cap (0: none).")
def speed(file, schedule, batches, topk, tail, label, skip_exact, scan_cap):
    """Per-sample time (sum of one denoiser call per step) exact vs approximate, in one run."""
    sched = parse_schedule(schedule)
    with open_index(file) as f:
        f.cache_bytes = 0  # one size's indexes in memory at a time (N = 60,000: 20 GB for all sizes)
        data = f.images().float() / 127.5 - 1
        approx = make_denoiser(f.machine, sched, index=f, topk=topk, tail_samples=tail, scan_cap=scan_cap)
        exact = None if skip_exact else make_denoiser(f.machine, sched, index=f, exact=True)
        n = f.meta["count"]
        print("| N | batch | label | k | t | exact s/call | approx s/call | speedup |")
        print("|---|---|---|---|---|---|---|---|")
        for batch in batches:
            totals = {"exact": 0.0, "approx": 0.0}
            setup, loads = {}, {}
            for k in sched.distinct():
                steps, t = _steps_of(sched, k)
                x = _x_at(t, data, batch, seed=k)
                labels = None if label is None else torch.full((batch,), label)
                row = {}
                # One-time costs, not per call: the approximate engine's index load (one size in memory
                # at a time here) and the exact engine's distinct-window sort.
                start = time.perf_counter()
                approx.prepare(k, label)
                loads[k] = time.perf_counter() - start
                if exact is not None and hasattr(exact, "prepare"):
                    start = time.perf_counter()
                    exact.prepare(k, label)
                    setup[k] = time.perf_counter() - start
                for name, engine in (("approx", approx), ("exact", exact)):
                    if engine is None:
                        continue
                    start = time.perf_counter()
                    engine.denoise(x, t, k=k, labels=labels)
                    row[name] = time.perf_counter() - start
                    totals[name] += row[name] * len(steps)
                ex = f"{row['exact']:.2f}" if "exact" in row else "-"
                sp = f"{row['exact'] / row['approx']:.1f}x" if "exact" in row else "-"
                print(f"| {n} | {batch} | {label} | {k} | {t:.2f} | {ex} | {row['approx']:.2f} | {sp} |", flush=True)
            per = {k: v / batch for k, v in totals.items()}
            print(f"| {n} | {batch} | {label} | **sample** | | {per['exact']:.1f} s | {per['approx']:.1f} s | "
                  f"{per['exact'] / per['approx'] if per['exact'] else float('nan'):.1f}x |")
            print("approx engine one-time index load per size (not in the per-call times): "
                  + ", ".join(f"k={k}: {v:.1f} s" for k, v in loads.items()))
            if setup:
                print("exact engine one-time pool sort per size (not in the per-call times): "
                      + ", ".join(f"k={k}: {v:.1f} s" for k, v in setup.items()))
            print("approx ignored-mass bound per call: " + ", ".join(f"k={r.k}: {r.bound_max:.1e}" for r in approx.reports[-len(sched.distinct()):]))


@cli.command()
@click.argument("file")
def recall(file):
    """Recall@K vs nprobe (and re-rank factor) as measured at build time."""
    with open_index(file) as f:
        info = f.info()
    print("| k | family | index | nprobe | k_factor | recall@K | ms/query |")
    print("|---|---|---|---|---|---|---|")
    for k, fams in info["sizes"].items():
        for fam in fams:
            for c in fam.get("recall_curve", []):
                print(f"| {k} | {fam['family']} | {fam['plan']['key']} | {c['nprobe']} | {c['k_factor']} | "
                      f"{c['recall']:.3f}@{fam['recall_k']} | {c['ms_per_query']:.3f} |")


@cli.command("scan-cap")
@click.argument("file")
@click.option("--schedule", default="fashion-mnist-resnet-zeros")
@click.option("--sizes", default="3,5,7,9,11", help="Patch sizes to time (each at the middle step time of its steps).")
@click.option("--caps", default="0,1,0.5,0.25", help="Scan caps to compare (0: no cap).")
@click.option("--tail", type=int, default=1024)
def scan_cap(file, schedule, sizes, caps, tail):
    """One approximate call per size and scan cap against the exact call on the same x: time and |D - D_exact|."""
    sched = parse_schedule(schedule)
    with open_index(file) as f:
        f.cache_bytes = 0
        data = f.images().float() / 127.5 - 1
        exact = make_denoiser(f.machine, sched, index=f, exact=True)
        print("| N | k | t | scan cap | exact s | approx s | speedup | max abs dD | mean abs dD |")
        print("|---|---|---|---|---|---|---|---|---|")
        for k in (int(v) for v in sizes.split(",")):
            _, t = _steps_of(sched, k)
            x = _x_at(t, data, 1, seed=k)
            exact.prepare(k, None)
            start = time.perf_counter()
            want = exact.denoise(x, t, k=k)
            te = time.perf_counter() - start
            for cap in (float(v) for v in caps.split(",")):
                approx = make_denoiser(f.machine, sched, index=f, topk=64, tail_samples=tail, scan_cap=cap)
                approx.prepare(k, None)
                start = time.perf_counter()
                got = approx.denoise(x, t, k=k)
                ta = time.perf_counter() - start
                d = (got - want).abs()
                print(f"| {f.meta['count']} | {k} | {t:.2f} | {cap:g} | {te:.1f} | {ta:.2f} | {te / ta:.1f}x | "
                      f"{d.max():.4f} | {d.mean():.5f} |", flush=True)


if __name__ == "__main__":
    cli()
