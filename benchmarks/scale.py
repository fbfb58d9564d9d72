"""Samples at scale: samples per hour against local workers and batch size, memory per worker, and a
paper estimate of 50,000 samples on a CPU cluster and on one GPU from measured per-sample costs.

    python benchmarks/scale.py measure --index FILE --num 16 --workers 1,2 --batch 4,16 --out rows.json
    python benchmarks/scale.py estimate rows.json --samples 50000 --nodes 16 --cores 32

``measure`` runs each (workers, batch) configuration as its own ``patchdb sample --out FOLDER``
subprocess (so its memory is its own): wall time including engine loads, the shards' compute seconds
and CPU seconds (from the manifest), and peak RSS per worker (the process itself with one worker, the
largest child with several). On a shared machine the wall times measure the neighbours too; the CPU
seconds per sample are the cost a dedicated core would pay. ``estimate`` scales the measured
single-worker CPU cost per sample: a cluster of ``nodes`` x ``cores`` single-thread workers (Ray: one
actor per node; here one worker per core, as --workers on a node), with the efficiency measured from 1
to 2 workers (how much a sample's CPU cost grows when two share a machine); and one GPU for the exact engine
from the floating-point work of the schedule (counted from the candidate geometry) at an assumed
sustained rate. The paper estimate is arithmetic on measured inputs, not a measurement.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import click


@click.group()
def cli():
    pass


def _one(args: list[str], workers: int) -> dict:
    """Run one ``patchdb sample`` in a child and report wall time and peak memory per worker."""
    # The child dies with this script (the run workers' own PR_SET_PDEATHSIG), and its workers with it: a
    # killed benchmark must not leave a sampler and its workers running beside the next measurement.
    code = ("import json, resource, sys, time\n"
            "from patchdb.runs.work import _die_with_parent\n_die_with_parent()\n"
            "from patchdb.cli.main import main\n"
            "t = time.perf_counter()\ncode = 0\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
            "self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "kids_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
            "print('SCALE-ROW ' + json.dumps({'wall': time.perf_counter() - t, 'self_kb': self_kb, 'kids_kb': kids_kb,"
            " 'code': code}))\n")
    proc = subprocess.run([sys.executable, "-c", code, *args], check=False, capture_output=True, text=True)
    line = [s for s in proc.stdout.splitlines() if s.startswith("SCALE-ROW ")]
    if proc.returncode != 0 or not line or json.loads(line[-1][10:])["code"] not in (0, None):
        raise SystemExit(f"patchdb sample failed:\n{proc.stderr[-3000:]}")
    got = json.loads(line[-1][10:])
    got["rss_worker_mb"] = (got["kids_kb"] if workers > 1 else got["self_kb"]) / 1024
    return got


@cli.command()
@click.option("--index", "index_file", required=True, type=click.Path(exists=True), help="Index file (approximate engine).")
@click.option("--schedule", default=None, help="Scale schedule (default: the one the index records).")
@click.option("--num", type=int, default=16, help="Samples per configuration (seeds 0..num-1).")
@click.option("--workers", default="1,2", help="Comma list of local worker counts.")
@click.option("--batch", default="4,16", help="Comma list of batch sizes.")
@click.option("--threads", type=int, default=1, help="Threads per worker.")
@click.option("--extra", default="", help="More patchdb sample options, e.g. '--scan-cap 0.5'.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the rows as JSON here.")
def measure(index_file, schedule, num, workers, batch, threads, extra, out):
    """Samples per hour against workers and batch size on one index file."""
    rows = []
    for b in [int(v) for v in batch.split(",")]:
        for w in [int(v) for v in workers.split(",")]:
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp) / "run"
                args = ["sample", "--index", index_file, "--seeds", f"0-{num - 1}", "-b", str(b),
                        "--shard-size", str(b), "--workers", str(w), "--threads", str(threads), "--out", str(folder),
                        *(["--schedule", schedule] if schedule else []), *extra.split()]
                got = _one(args, w)
                manifest = json.loads((folder / "manifest.json").read_text())
            compute = sum(s["seconds"] for s in manifest["shards"].values())
            cpu = sum(s["cpu_seconds"] for s in manifest["shards"].values())
            row = {"workers": w, "batch": b, "threads": threads, "samples": num, "wall_s": round(got["wall"], 1),
                   "samples_per_hour": round(num / got["wall"] * 3600, 1),
                   "compute_s_per_sample_per_worker": round(compute / num, 2),
                   "steady_samples_per_hour": round(w * 3600 * num / compute, 1),
                   "cpu_s_per_sample": round(cpu / num, 2), "samples_per_core_hour": round(3600 * num / cpu, 1),
                   "rss_per_worker_mb": round(got["rss_worker_mb"]), "describe": manifest["describe"],
                   "settings": manifest["settings"]}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "settings"}), file=sys.stderr, flush=True)
    print(table(rows))
    if out:
        Path(out).write_text(json.dumps(rows, indent=1))


def table(rows: list[dict]) -> str:
    head = ("| workers | batch | samples | wall s | samples/hour (wall) | compute s/sample/worker | "
            "samples/hour (steady) | CPU s/sample | samples per core-hour (CPU) | peak RSS/worker MB |\n"
            "|---|---|---|---|---|---|---|---|---|---|")
    body = [f"| {r['workers']} | {r['batch']} | {r['samples']} | {r['wall_s']} | {r['samples_per_hour']} | "
            f"{r['compute_s_per_sample_per_worker']} | {r['steady_samples_per_hour']} | {r['cpu_s_per_sample']} | "
            f"{r['samples_per_core_hour']} | {r['rss_per_worker_mb']} |"
            for r in rows]
    return "\n".join([head, *body])


def exact_flops_per_sample(machine: str, sizes: list[int], n: int, c: int, h: int, w: int) -> float:
    """Multiply-adds x 2 of the exact engine for one sample: every query pixel against every candidate
    window of its geometry group (k^2 C values each), summed over the schedule's steps. An upper bound:
    the engine's distinct-window pooling scans fewer windows on flat-background data."""
    from patchdb.patches import geometry

    total = 0.0
    for k in sizes:
        for g in geometry(machine, k, h, w).groups:
            total += g.query_pos.numel() * g.cand_pos.shape[1] * n * k * k * c * 2
    return total


@cli.command()
@click.argument("rows_file", type=click.Path(exists=True))
@click.option("--samples", type=int, default=50_000)
@click.option("--nodes", type=int, default=16)
@click.option("--cores", type=int, default=32, help="Cores per node (one single-thread worker each).")
@click.option("--per-sample", type=float, default=None,
              help="Single-worker seconds per sample to scale instead of the measured one (e.g. a figure at N = 60,000).")
@click.option("--n-images", type=int, default=60_000, help="Training images for the GPU estimate.")
@click.option("--gpu-tflops", type=float, default=25.0,
              help="Assumed sustained float32 rate of the exact engine on one GPU (H100 peak ~67 non-tensor).")
def estimate(rows_file, samples, nodes, cores, per_sample, n_images, gpu_tflops):
    """Paper estimate of a large run from measured rows."""
    rows = json.loads(Path(rows_file).read_text())
    one = min((r for r in rows if r["workers"] == 1), key=lambda r: r["cpu_s_per_sample"])
    two = [r for r in rows if r["workers"] == 2 and r["batch"] == one["batch"]]
    # CPU seconds, not wall: on a shared machine the wall time measures the neighbours. Efficiency from 1 to
    # 2 workers = how much a sample's CPU cost grows when two workers share memory and caches.
    eff = min(one["cpu_s_per_sample"] / two[0]["cpu_s_per_sample"], 1.0) if two else 1.0
    cost = per_sample or one["cpu_s_per_sample"]
    workers = nodes * cores
    hours = samples * cost / (workers * eff) / 3600
    s = one["settings"]
    c, h, w = s["shape"]
    flops = exact_flops_per_sample(s["machine"], s["schedule"], n_images, c, h, w)
    gpu_hours = samples * flops / (gpu_tflops * 1e12) / 3600
    print(f"measured: {one['describe']}, batch {one['batch']}: {one['cpu_s_per_sample']} CPU s/sample "
          f"per single-thread worker; 1 -> 2 workers CPU efficiency "
          f"{f'{eff:.2f}' if two else '1.00 (assumed: no 2-worker row at this batch size)'}")
    print(f"cluster: {samples} samples x {cost} s / ({nodes} nodes x {cores} workers x efficiency {eff:.2f}) "
          f"= {hours:.2f} h")
    print(f"one GPU, exact engine, N = {n_images}: {flops:.3g} FLOP per sample (schedule {s['schedule']}, "
          f"{c}x{h}x{w}, no pooling) / {gpu_tflops} TFLOP/s sustained = {flops / gpu_tflops / 1e12:.1f} s/sample, "
          f"{gpu_hours:.1f} h for {samples}")


if __name__ == "__main__":
    cli()
