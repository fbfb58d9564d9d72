"""Benchmark the patch index: build cost per size, exact vs approximate time per sample, recall vs nprobe.

Prints markdown tables. Run with ``OMP_NUM_THREADS`` set to the cores you mean to use (on a shared
2-core machine, 1: oversubscribed OpenMP threads spin and can run 10x slower).

    python benchmarks/index.py build --dataset fashion-mnist --root ../shared/data/fashion-mnist --limit 10000
    python benchmarks/index.py speed FILE --schedule fashion-mnist-resnet-zeros --batch 1 --batch 16 [--sizes 3,7,9,17]
    python benchmarks/index.py breakdown FILE --schedule fashion-mnist-resnet-zeros [--k-factor 8]
    python benchmarks/index.py recall FILE
    python benchmarks/index.py scan-cap FILE --sizes 3,5,7 --caps 0,1,0.5,0.25
    python benchmarks/index.py class-search --limit 10000 --k 9 --classes 0,7
    python benchmarks/index.py tune --limit 10000 --k 9

``build`` runs one ``patchdb build`` subprocess per patch size, so each size's peak memory (max RSS)
is its own; ``speed`` times one denoiser call per distinct size at the noise level of its steps and
sums over the schedule (the sampler adds nothing measurable), exact and approximate in the same run.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import patchdb.denoisers.retrieval as ap
import patchdb.indexing.faiss_ops as fx
from patchdb.data import load_dataset
from patchdb.denoisers.factory import make_denoiser
from patchdb.denoisers.retrieval import DEFAULT_SCAN_CAP
from patchdb.indexing.builder import (
    CHUNK_ELEMENTS,
    BuildConfig,
    _build_entry,
    piece_path,
    recall_probe,
)
from patchdb.indexing.format import Entry, entries_for
from patchdb.indexing.reader import open_index
from patchdb.indexing.windows import lit_integral, take_out_blanks
from patchdb.schedule import alpha_sigma, parse_schedule


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
        cmd = [sys.executable, "-m", "patchdb.cli.main", "build", "--dataset", dataset, "--root", root, "--machine", machine,
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
@click.option("--sizes", default=None, help="Time only these of the schedule's sizes (e.g. 3,7,9,17), to split one "
              "long run over processes; the sample row then sums only their steps. Default: all.")
@click.option("--k-factor", type=int, default=0, help="Re-rank factor for every size (0: each family's tuned one).")
def speed(file, schedule, batches, topk, tail, label, skip_exact, scan_cap, sizes, k_factor):
    """Per-sample time (sum of one denoiser call per step) exact vs approximate, in one run."""
    sched = parse_schedule(schedule)
    timed = sched.distinct()
    if sizes:
        try:
            timed = sorted({int(v) for v in sizes.split(",")})  # a size named twice is timed once
        except ValueError:
            raise click.UsageError(f"--sizes '{sizes}' is not a comma list of patch sizes, e.g. 3,7,9") from None
        unknown = sorted(set(timed) - set(sched.distinct()))
        if unknown:
            raise click.UsageError(f"--sizes {unknown} not in the schedule {sched.name} (its sizes: {sched.distinct()})")
    with open_index(file) as f:
        f.cache_bytes = 0  # one size's indexes in memory at a time (N = 60,000: 20 GB for all sizes)
        data = f.images().float() / 127.5 - 1
        approx = make_denoiser(f.machine, sched, index=f, topk=topk, tail_samples=tail, scan_cap=scan_cap,
                               k_factor=k_factor)
        exact = None if skip_exact else make_denoiser(f.machine, sched, index=f, exact=True)
        n = f.meta["count"]
        print("| N | batch | label | k | t | exact s/call | approx s/call | speedup |")
        print("|---|---|---|---|---|---|---|---|")
        for batch in batches:
            totals = {"exact": 0.0, "approx": 0.0}
            setup, loads = {}, {}
            covered = 0  # steps of the schedule the timed sizes make up
            for k in timed:
                steps, t = _steps_of(sched, k)
                covered += len(steps)
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
            what = "**sample**" if covered == sched.steps else f"part of a sample (sizes {sizes}: {covered} of {sched.steps} steps)"
            print(f"| {n} | {batch} | {label} | {what} | | {per['exact']:.1f} s | {per['approx']:.1f} s | "
                  f"{per['exact'] / per['approx'] if per['exact'] else float('nan'):.1f}x |")
            print("approx engine one-time index load per size (not in the per-call times): "
                  + ", ".join(f"k={k}: {v:.1f} s" for k, v in loads.items()))
            if setup:
                print("exact engine one-time pool sort per size (not in the per-call times): "
                      + ", ".join(f"k={k}: {v:.1f} s" for k, v in setup.items()))
            print("approx ignored-mass bound per call: " + ", ".join(f"k={r.k}: {r.bound_max:.1e}" for r in approx.reports[-len(timed):]))


@cli.command()
@click.argument("file")
@click.option("--schedule", default="fashion-mnist-resnet-zeros")
@click.option("--batch", type=int, default=1)
@click.option("--tail", type=int, default=1024)
@click.option("--scan-cap", type=float, default=DEFAULT_SCAN_CAP, show_default=True)
@click.option("--k-factor", type=int, default=0, help="Re-rank factor for every size (0: each family's tuned one).")
def breakdown(file, schedule, batch, tail, scan_cap, k_factor):
    """Where one approximate sample goes: search, re-rank and the rest (corner scans, tail, bookkeeping)
    per step, every step of the schedule called once (index loads and prepare() excluded)."""
    sched = parse_schedule(schedule)
    spent = {"search": 0.0, "rerank": 0.0}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - start
        return wrapper

    with open_index(file) as f:
        f.cache_bytes = 0
        data = f.images().float() / 127.5 - 1
        approx = make_denoiser(f.machine, sched, index=f, topk=64, tail_samples=tail, scan_cap=scan_cap, k_factor=k_factor)
        search_ids, approx._rerank = ap.search_ids, timed("rerank", approx._rerank)
        ap.search_ids = timed("search", search_ids)
        try:
            rows, size = {}, None
            for i in range(sched.steps, 0, -1):
                t, k = i / sched.steps, sched.size_at(i)
                if k != size:
                    approx.prepare(k)
                    size = k
                x = _x_at(t, data, batch, seed=i)
                spent.update(search=0.0, rerank=0.0)
                start = time.perf_counter()
                approx.denoise(x, t, k=k)
                total = time.perf_counter() - start
                row = rows.setdefault(k, [0, 0.0, 0.0, 0.0])
                row[0] += 1
                row[1] += spent["search"]
                row[2] += spent["rerank"]
                row[3] += total
        finally:
            ap.search_ids = search_ids
    print(f"| k | steps | search s | re-rank s | rest s | total s (batch {batch}, per batch) |")
    print("|---|---|---|---|---|---|")
    for k, (n, se, rr, tot) in rows.items():
        print(f"| {k} | {n} | {se:.2f} | {rr:.2f} | {tot - se - rr:.2f} | {tot:.2f} |")
    se, rr, tot = (sum(r[j] for r in rows.values()) for j in (1, 2, 3))
    print(f"| **sample** | {sched.steps} | {se:.2f} | {rr:.2f} | {tot - se - rr:.2f} | {tot:.2f} |")


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


def _build_one(images: torch.Tensor, k: int, cand_pos: torch.Tensor, config) -> tuple:
    """One interior index over ``images``, made by the builder's own ``_build_entry`` (auto key, trained on
    a sample, filled in chunks, tuned to recall@K 0.95, written as a piece) and read back, then with blank
    windows taken out as the engine does on load. ``cand_pos`` (L,).
    Returns (index, tuning, index key, build seconds, stored bytes)."""
    with tempfile.TemporaryDirectory() as tmp:
        info = _build_entry(images, k, Entry("interior", cand_pos.view(1, -1), True), config, Path(tmp) / "piece", False)
        piece = piece_path(Path(tmp) / "piece", 0)
        nbytes = piece.stat().st_size
        index = fx.deserialize(np.fromfile(piece, dtype=np.uint8))
    chosen = [c for c in info["recall_curve"] if (c["nprobe"], c["k_factor"]) == (info["nprobe"], info["k_factor"])]
    tuning = {"nprobe": info["nprobe"], "k_factor": info["k_factor"], "recall": info["recall"],
              "curve": info["recall_curve"], "ms_per_query": chosen[0]["ms_per_query"] if chosen else 0.0}
    if fx.as_ivf(index) is not None:
        take_out_blanks(index, lit_integral(images), images.shape[2], images.shape[3], k, cand_pos, where=f"k={k}")
    return index, tuning, info["plan"]["key"], info["seconds"], nbytes


def _one_family(command):
    """Options of the commands that build one interior family: dataset, root, first N images, patch size."""
    for option in reversed([
        click.option("--dataset", default="fashion-mnist"),
        click.option("--root", default="../shared/data/fashion-mnist"),
        click.option("--limit", type=int, default=10000, help="First N images of the training split."),
        click.option("--k", "k", type=int, default=9, help="Patch size (its interior family is used)."),
    ]):
        command = option(command)
    return command


@cli.command("class-search")
@_one_family
@click.option("--classes", default="0,7", help="Classes whose conditional queries are timed.")
@click.option("--queries", type=int, default=100)
@click.option("--repeat", type=int, default=3, help="Timings per variant; the median is printed.")
def class_search(dataset, root, limit, k, classes, queries, repeat):
    """Class-conditional search two ways: one index over all images filtered by id range, against one index
    per class. Recall@64 (tie-aware, against exact search within the class), ms/query, build cost."""
    data = load_dataset(dataset, root=root, limit=limit)
    images, labels = data.images, data.labels
    entry = next(e for e in entries_for("bbels", k, images.shape[2], images.shape[3]) if e.family == "interior")
    cand = entry.cand_pos[0]
    per_image = len(cand)
    config = BuildConfig(machine="bbels", sizes=(k,), recall_queries=queries)
    bounds = torch.cat([torch.zeros(1, dtype=torch.long), torch.bincount(labels, minlength=len(data.classes)).cumsum(0)])

    whole, wt, wkey, wsec, wbytes = _build_one(images, k, cand, config)
    print(f"whole: {wkey}, {len(images):,} images, build {wsec:.1f} s, {wbytes / 2**20:.1f} MiB, "
          f"tuned nprobe {wt['nprobe']} x factor {wt['k_factor']} (recall@64 {wt['recall']:.3f} unconditional)", flush=True)
    per_class_sec, per_class_bytes = 0.0, 0
    rows = []
    wanted = [int(c) for c in classes.split(",")]
    for c in range(len(data.classes)):
        lo, hi = int(bounds[c]), int(bounds[c + 1])
        sub = images[lo:hi]
        index, tuning, key, sec, nbytes = _build_one(sub, k, cand, config)
        per_class_sec += sec
        per_class_bytes += nbytes
        if c not in wanted:
            continue
        q, kth, true_dist = recall_probe(sub, k, cand.view(1, -1), config, max(1, CHUNK_ELEMENTS // (per_image * k * k)))
        variants = (
            ("id range in whole", whole, wt, (lo * per_image, hi * per_image), lo * per_image),
            (f"class index {key}", index, tuning, None, 0),
        )
        for name, idx, tun, id_range, offset in variants:
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                _, ids = fx.search(idx, q, 64 * tun["k_factor"], tun["nprobe"], id_range=id_range)
                times.append(1e3 * (time.perf_counter() - t0) / len(q))
            local = np.where(ids >= 0, ids - offset, -1)
            rec = fx.recall_at(true_dist(local), kth, 64)
            rows.append((c, hi - lo, name, tun["nprobe"], tun["k_factor"], rec, statistics.median(times)))
    print(f"per class: 10 indexes, build {per_class_sec:.1f} s in all, {per_class_bytes / 2**20:.1f} MiB in all")
    print("| class | images | search | nprobe | factor | recall@64 | ms/query (median) |")
    print("|---|---|---|---|---|---|---|")
    for c, n, name, nprobe, factor, rec, ms in rows:
        print(f"| {c} | {n:,} | {name} | {nprobe} | {factor} | {rec:.3f} | {ms:.2f} |")


@cli.command("tune")
@_one_family
@click.option("--extra-nprobe", default="512,1024,2048", help="nprobe values past the tuner's grid to measure recall at.")
def tune_grid(dataset, root, limit, k, extra_nprobe):
    """What the build-time tuner picks for one interior family, its whole curve (recall@64 and search +
    re-rank ms/query per nprobe x re-rank factor), and recall past its grid."""
    data = load_dataset(dataset, root=root, limit=limit)
    entry = next(e for e in entries_for("bbels", k, data.height, data.width) if e.family == "interior")
    config = BuildConfig(machine="bbels", sizes=(k,))
    index, tuning, key, seconds, _ = _build_one(data.images, k, entry.cand_pos[0], config)
    print(f"{key}, {len(data):,} images, k={k}, build {seconds:.1f} s: tuner picks nprobe {tuning['nprobe']} x "
          f"factor {tuning['k_factor']}, recall@64 {tuning['recall']:.3f}, {tuning['ms_per_query']:.2f} ms/query")
    print("| nprobe | factor | recall@64 | search + re-rank ms/query |")
    print("|---|---|---|---|")
    for c in tuning["curve"]:
        print(f"| {c['nprobe']} | {c['k_factor']} | {c['recall']:.3f} | {c['ms_per_query']:.2f} |")
    queries, kth, true_dist = recall_probe(data.images, k, entry.cand_pos[:1], config,
                                           max(1, CHUNK_ELEMENTS // (entry.per_image * k * k)))
    for nprobe in (int(v) for v in extra_nprobe.split(",") if v):
        for factor in (8, 16, 32):
            start = time.perf_counter()
            _, ids = fx.search(index, queries, 64 * factor, nprobe)
            dist = true_dist(ids)
            ms = 1e3 * (time.perf_counter() - start) / len(queries)
            print(f"| {nprobe} | {factor} | {fx.recall_at(dist, kth, 64):.3f} | {ms:.2f} |")


if __name__ == "__main__":
    cli()
