"""Throughput of the approximate engine against the exact one: seconds per sample against batch size.

Prints one markdown table per index file. Run with ``OMP_NUM_THREADS`` set to the cores you mean to
use (on a shared 2-core machine, 1). Command and measured tables: docs/results/throughput/.

    python benchmarks/throughput.py FILE [FILE ...] --batch 1 --batch 16 --batch 64 [--exact-sizes 3,9,17]

Approximate engine: whole 20-step DDIM samples from seeded noise (so step-to-step candidate reuse is
measured as a sampler uses it), every size's indexes loaded before timing (``prepare``), per-sample
time = wall time of the batch / batch size, split into search (FAISS), re-rank (exact logits of the
retrieved candidates), corners (the exactly scanned families) and tail (the uniform tail sample);
loads (FAISS sub-indexes read from the file: with ``--memory-gib`` the budget a sampler at scale runs
under, so sizes are reloaded within a sample as they are there); the rest (query windows, bookkeeping)
is ``total - parts``. The settings take turns, one sample
each per repeat (a load change on a shared machine then falls on all of them), ``--repeat`` times, and
the median is kept.

Exact engine: one call per distinct size of the schedule (or of ``--exact-sizes``) at the time of the
middle step of that size, on ``x_t`` = noised training images, times the number of steps of that size
(``benchmarks/index.py speed`` does the same); pools are prepared before timing. The ratio is taken
over the steps the exact side covered: exact seconds on those steps / approximate seconds on the same
steps (per step of a size: the approximate calls of that size in the timed samples).

Peak memory: the process's peak RSS after the approximate runs (before the exact engine loads) and at
the end.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

import click
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from patchdb.denoisers import retrieval as retrieval_module
from patchdb.denoisers.factory import make_denoiser
from patchdb.denoisers.retrieval import Retrieval
from patchdb.indexing.reader import open_index
from patchdb.sampler import ddim_sample, initial_noise
from patchdb.schedule import alpha_sigma, parse_schedule

PARTS = ("search", "rerank", "corners", "tail", "loads")
_SEARCH_IDS = retrieval_module.search_ids


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


class _Split:
    """Wall seconds spent in the engine's parts, by patching the approximate engine's methods (the
    tail sample is called from the re-rank, so its time is taken out of the re-rank's)."""

    def __init__(self, engine) -> None:
        self.spent = defaultdict(float)
        self.per_size = defaultdict(float)  # k -> seconds of whole denoiser calls
        _install_search_timer()
        for name, part in (("_rerank", "rerank"), ("_exact_same_position", "corners"), ("_add_tail", "tail")):
            if hasattr(engine, name):
                setattr(engine, name, _timed(getattr(engine, name), lambda sec, args, kw, part=part: self._add(part, sec)))

        def per_size(sec, args, kwargs):  # denoise(x, t, k=k, labels=labels): seconds of whole calls per size
            self.per_size[kwargs.get("k", args[2] if len(args) > 2 else None)] += sec

        engine.denoise = _timed(engine.denoise, per_size)

    def _add(self, part: str, seconds: float) -> None:
        self.spent[part] += seconds

    def reset(self) -> None:
        self.spent.clear()
        self.per_size.clear()


_RUNNING: list = [None]  # the _Split of the engine sampling now: FAISS search is one module function


def _install_search_timer() -> None:
    """Time ``retrieval.search_ids`` (which ``Retrieval.search`` calls) into the running engine's split."""
    if retrieval_module.search_ids is not _SEARCH_IDS:
        return

    retrieval_module.search_ids = _timed(_SEARCH_IDS, _charge_running("search"))


def _charge_running(part: str):
    """A ``charge`` for :func:`_timed` that adds the call's seconds to ``part`` of the running engine's split."""

    def charge(sec, args, kwargs):
        if _RUNNING[0] is not None:
            _RUNNING[0]._add(part, sec)

    return charge


def _timed(fn, charge):
    """``fn`` that passes its wall seconds, and the call's arguments, to ``charge(seconds, args, kwargs)``."""

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            charge(time.perf_counter() - start, args, kwargs)

    return wrapper


def _approx_runs(f, sched, batch: int, settings: dict[str, Retrieval], repeat: int) -> dict[str, dict]:
    """Per setting, the median over ``repeat`` whole samples of a batch: total and parts (seconds per
    batch). The settings take turns (one sample each, then the next repeat), so that a change in the
    machine's load falls on all of them alike."""
    engines = {}
    for name, retrieval in settings.items():
        engine = make_denoiser(f.machine, sched, index=f, retrieval=retrieval)
        engines[name] = (engine, _Split(engine))
        for k in sched.distinct():
            engine.prepare(k)
    runs = {name: [] for name in settings}
    for r in range(repeat):
        noise = initial_noise(list(range(r * batch, (r + 1) * batch)), (f.channels, f.height, f.width))
        for name, (engine, split) in engines.items():
            split.reset()
            _RUNNING[0] = split
            start = time.perf_counter()
            ddim_sample(engine, noise, sched.steps, None)
            total = time.perf_counter() - start
            tail = split.spent["tail"]
            parts = {**split.spent, "rerank": split.spent["rerank"] - tail}  # the tail sample runs inside the re-rank
            runs[name].append({"total": total, **{p: parts.get(p, 0.0) for p in PARTS}, "per_size": dict(split.per_size)})
    return {name: sorted(rs, key=lambda run: run["total"])[len(rs) // 2] for name, rs in runs.items()}


def _exact_time(f, sched, batch: int, sizes: list[int]) -> dict[int, float]:
    """Seconds of one exact call per size in ``sizes`` (x_t = noised training images)."""
    exact = make_denoiser(f.machine, sched, index=f, exact=True)
    data = f.images().float() / 127.5 - 1
    out = {}
    for k in sizes:
        steps = [i for i in range(1, sched.steps + 1) if sched.size_at(i) == k]
        t = steps[len(steps) // 2] / sched.steps
        g = torch.Generator().manual_seed(k)
        idx = torch.randint(len(data), (batch,), generator=g)
        a, b = alpha_sigma(t)
        x = a * data[idx] + b * torch.randn(data[idx].shape, generator=g)
        if hasattr(exact, "prepare"):
            exact.prepare(k)
        start = time.perf_counter()
        exact.denoise(x, t, k=k)
        out[k] = time.perf_counter() - start
    return out


@click.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--schedule", default="fashion-mnist-resnet-zeros", show_default=True)
@click.option("--batch", "batches", type=int, multiple=True, default=[1, 16, 64], show_default=True)
@click.option("--exact-sizes", default=None, help="Time the exact engine on these sizes only (comma list); "
              "default: every size of the schedule. 'none': skip the exact engine.")
@click.option("--exact-batches", default=None, help="Batch sizes to time the exact engine at (default: all).")
@click.option("--repeat", type=int, default=1, show_default=True, help="Approximate samples per setting (median).")
@click.option("--scan-cap", type=float, default=Retrieval().scan_cap, show_default=True)
@click.option("--reuse", type=int, default=Retrieval().reuse, show_default=True, help="Retrieval.reuse of the engine timed.")
@click.option("--baseline/--no-baseline", default=True, show_default=True,
              help="Also time the engine with step-to-step reuse off (the engine before this change).")
@click.option("--setting", "named", multiple=True,
              help="NAME=JSON of Retrieval knobs, e.g. 'carry={\"reuse\": 4, \"across\": true, \"refresh\": 0.125}' "
                   "(--scan-cap applies unless the JSON sets it); replaces --reuse, repeatable, they take turns.")
@click.option("--memory-gib", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Index memory budget (GiB) while sampling, as PATCHDB_INDEX_MEMORY; default: no limit.")
def main(files, schedule, batches, exact_sizes, exact_batches, repeat, scan_cap, reuse, baseline, named, memory_gib):
    """Seconds per sample against batch size, exact vs approximate, with the split of the approximate time."""
    sched = parse_schedule(schedule)
    if named:
        settings = {}
        for item in named:
            name, _, text = item.partition("=")
            try:  # unset knobs take today's defaults (from_dict would read a missing list_scan as an old file's)
                settings[name] = dataclasses.replace(Retrieval(scan_cap=scan_cap), **json.loads(text))
            except (TypeError, ValueError) as e:
                raise click.BadParameter(f"{item}: {e}", param_hint="--setting") from None
    else:
        settings = {f"approx (reuse {reuse})": Retrieval(scan_cap=scan_cap, reuse=reuse)}
    if baseline and any(r.reuse for r in settings.values()):
        settings["approx, no reuse"] = Retrieval(scan_cap=scan_cap, reuse=0)
    print("| N | batch | engine | s/sample | search | re-rank | corners | tail | loads | rest | exact s/sample (steps) | ratio | peak RSS GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for path in files:
        with open_index(path) as f:
            f.index = _timed(f.index, _charge_running("loads"))  # sub-index reads, shared by the file's engines
            # No budget: every size's indexes stay loaded (prepare() before timing); with one, the sizes
            # are reloaded within each sample as under a sampler's budget (the ``loads`` column).
            f.cache_bytes = None if memory_gib is None else int(memory_gib * 2**30)
            n = f.meta["count"]
            sizes = sched.distinct() if exact_sizes is None else (
                [] if exact_sizes == "none" else sorted({int(v) for v in exact_sizes.split(",")}))
            exact_at = set(batches if exact_batches is None else (int(v) for v in exact_batches.split(",")))
            for batch in batches:
                rows = _approx_runs(f, sched, batch, settings, repeat)
                peak_approx = _peak_gib()
                for name, run in rows.items():  # now, before an exact call that may take an hour
                    print(f"<!-- N={n} batch={batch} {name}: {run['total'] / batch:.2f} s/sample, parts "
                          + ", ".join(f"{p} {run[p] / batch:.2f}" for p in PARTS) + " -->", flush=True)
                ex = _exact_time(f, sched, batch, sizes) if sizes and batch in exact_at else {}
                covered = [i for i in range(1, sched.steps + 1) if sched.size_at(i) in ex]
                ex_total = sum(ex[sched.size_at(i)] for i in covered)
                for name, run in rows.items():
                    parts = [run[p] / batch for p in PARTS]
                    total = run["total"] / batch
                    ratio, ex_txt = "-", "-"
                    if ex:
                        approx_cov = sum(v for k, v in run["per_size"].items() if k in ex) / batch
                        ratio = f"{ex_total / batch / approx_cov:.1f}x" if approx_cov else "-"
                        ex_txt = f"{ex_total / batch:.1f} ({len(covered)} of {sched.steps})"
                    print(f"| {n} | {batch} | {name} | {total:.2f} | " + " | ".join(f"{p:.2f}" for p in parts)
                          + f" | {total - sum(parts):.2f} | {ex_txt} | {ratio} | {peak_approx:.1f} |", flush=True)
                if ex:
                    print(f"<!-- N={n} batch={batch}: exact s/call "
                          + ", ".join(f"k={k}: {v:.2f}" for k, v in ex.items())
                          + f"; peak RSS after exact {_peak_gib():.1f} GiB -->", flush=True)


if __name__ == "__main__":
    main()
