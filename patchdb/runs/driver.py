"""The driver of a run: settings into the manifest, the shards left to do, and who computes them
(this process, ``workers`` local processes, or a Ray cluster), with progress on stderr."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import PatchdbError
from .folder import RunFolder, split_shards, worker_name
from .spec import Engine, Resolved, RunSpec, environment, resolve, set_threads

log = logging.getLogger(__name__)

#: Default samples per shard (rounded up to a multiple of the batch size): small enough that a killed
#: run loses minutes at ~1 s/sample, large enough that a 50,000-sample run has < 1,000 files.
DEFAULT_SHARD_SAMPLES = 64


@dataclass
class RunSummary:
    folder: str
    samples: int  # in the run
    computed: int  # samples computed by this call
    shards_computed: int
    shards_skipped: int
    seconds: float
    notes: list[str]


def default_shard_size(batch_size: int) -> int:
    return -(-DEFAULT_SHARD_SAMPLES // batch_size) * batch_size


def run_settings(spec: RunSpec, res: Resolved) -> dict:
    """The settings a run folder is tied to (compared on every rerun; all of them can change bits)."""
    env = environment()
    settings = {
        "engine": spec.engine, "machine": spec.machine, "schedule": res.sizes, "schedule_name": res.schedule_name,
        "steps": res.steps, "label": spec.label, "dtype": spec.dtype, "device": spec.device if spec.engine == "exact" else "cpu",
        "batch_size": spec.batch_size, "shape": list(res.shape), "num_classes": res.num_classes,
        "dataset_fingerprint": res.fingerprints["dataset"], "dataset_name": res.fingerprints["dataset_name"],
        "versions": {k: env[k] for k in ("torch", "faiss") if k in env},
    }
    if spec.engine == "exact":
        settings["block_mb"] = spec.block_mb
    else:
        settings["retrieval"] = dict(spec.retrieval or {})
    if "index" in res.fingerprints:
        settings["index"] = res.fingerprints["index"]
    if spec.source["kind"] == "dataset":
        settings["source"] = {k: spec.source.get(k) for k in ("split", "limit", "only_classes", "policy")}
    return settings


def run_samples(
    folder: str | os.PathLike,
    spec: RunSpec,
    seeds: list[int],
    shard_size: int | None = None,
    workers: int = 1,
    threads: int | None = None,
    ray: str | None = None,
    force: bool = False,
    progress: bool = True,
    on_shard: Callable[[dict], None] | None = None,
    echo: Callable[[str], None] | None = None,
) -> RunSummary:
    """Compute the samples of ``seeds`` into the run folder ``folder``, skipping finished shards.

    Sample ``s`` starts from the noise of seed ``s`` and is computed at row ``s % batch_size`` of a batch
    of exactly ``spec.batch_size`` rows, so its bits depend on the settings only, not on the shard size,
    the seed list, the workers or the machines. ``on_shard`` gets ``{"shard", "seeds", "seconds",
    "cpu_seconds", "worker"}`` per finished shard. Progress (samples done, samples/s, ETA) goes to stderr.
    Relative paths of ``spec.source`` (``--root``, a dataset path, ``--index``) are recorded absolute,
    resolved against the working directory (:func:`patchdb.runs.spec.absolute_source`), so the folder is
    read the same from anywhere.
    """
    spec = spec.with_absolute_paths()
    echo = echo or (lambda line: print(line, file=sys.stderr))
    if not seeds:
        raise PatchdbError("no seeds to sample; pass --seeds or --num")
    if workers < 1:
        raise PatchdbError(f"--workers must be at least 1, got {workers}")
    shard_size = shard_size or default_shard_size(spec.batch_size)
    owned = False
    if ray is not None:  # before anything is written: an unreachable cluster leaves no folder behind
        from .ray_backend import connect, import_ray

        owned = connect(import_ray(), ray)
    try:
        return _drive(folder, spec, seeds, shard_size, workers, threads, ray, force, progress, on_shard, echo)
    finally:
        if owned:
            import ray as ray_module

            ray_module.shutdown()


def _drive(folder, spec, seeds, shard_size, workers, threads, ray, force, progress, on_shard, echo) -> RunSummary:
    res = resolve(spec)
    settings = run_settings(spec, res)
    run = RunFolder(folder)
    extra = {"run_spec": spec.to_dict(), "environment": environment(), "describe": res.describe,
             "note": "seed s is computed at row s % batch_size of a batch of exactly batch_size rows: on the CPU "
                     "a row's bits change with the batch size and (IS) with its row, so batch_size is pinned here"}
    run.start(settings, seeds, shard_size, extra, force)
    shards = split_shards(seeds, shard_size)
    plan = run.plan(shards)
    for line in plan.notes:
        echo(line)
    todo = [(i, shards[i]) for i in plan.todo]
    n_todo = sum(len(s) for _, s in todo)
    echo(f"{res.describe}: {len(seeds)} samples in {len(shards)} shards of {shard_size}; "
         f"{plan.done} shards done, {len(todo)} to compute ({n_todo} samples)")
    bar = Progress(n_todo, progress, echo)
    start = time.perf_counter()

    def finished(i: int, seconds: float, worker: str, cpu: float | None = None) -> None:
        run.record(i, shards[i], seconds, worker, cpu)
        bar.update(len(shards[i]))
        if on_shard is not None:
            on_shard({"shard": i, "seeds": shards[i], "seconds": seconds, "cpu_seconds": cpu, "worker": worker})

    if todo:
        job = (run, todo, res, settings)
        if ray is not None:
            from .ray_backend import run_ray

            run_ray(spec, *job, finished, echo)
        elif workers == 1:
            _run_here(spec, *job, finished, threads)
        else:
            _run_local(spec, *job, finished, workers, threads)
    bar.close()
    seconds = time.perf_counter() - start
    return RunSummary(str(run.path), len(seeds), n_todo, len(todo), plan.done, seconds, plan.notes)


def _run_here(spec, run, todo, res, settings, finished, threads) -> None:
    from .work import write_shard

    if threads:
        set_threads(threads)
    engine = Engine(spec)
    try:
        for i, seeds in todo:
            seconds, cpu = write_shard(engine, run.shard_path(i), seeds, res.shape, res.num_classes,
                                  run.manifest["settings_id"], res.sizes)
            finished(i, seconds, worker_name(), cpu)
    finally:
        engine.close()


def _run_local(spec, run, todo, res, settings, finished, workers, threads) -> None:
    """``workers`` spawned processes, each with its share of the threads and its own engine."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    from .work import init_local_worker, local_task

    share = threads or max(1, (os.cpu_count() or 1) // workers)
    args = (res.shape, res.num_classes, run.manifest["settings_id"], res.sizes)
    workers = min(workers, len(todo))
    ctx = mp.get_context("spawn")
    # Every worker loads its engine, then waits for the others, so that no worker takes every shard
    # while a slower one is still starting (the pool spawns one process per submit up to `workers`).
    ready = ctx.Barrier(workers)
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=init_local_worker,
                             initargs=(spec.to_dict(), share, ready)) as pool:
        futures = {pool.submit(local_task, str(run.shard_path(i)), seeds, *args): i for i, seeds in todo}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for fut in done:
                    seconds, cpu, worker = fut.result()  # re-raises a worker's error here
                    finished(futures[fut], seconds, worker, cpu)
        except BrokenProcessPool:
            raise PatchdbError("a local worker process died (out of memory? killed?); finished shards are kept: "
                               "rerun the same command to compute the rest") from None
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise


class Progress:
    """Samples done, samples/s and ETA on stderr (a tqdm bar; a plain line every 10% when not a terminal)."""

    def __init__(self, total: int, enabled: bool, echo):
        from tqdm.auto import tqdm

        self.total, self.done, self.start = total, 0, time.perf_counter()
        self.bar = tqdm(total=total, unit="sample", desc="sampling", disable=not enabled or total == 0,
                        mininterval=1.0, smoothing=0.1)

    def update(self, n: int) -> None:
        self.done += n
        self.bar.update(n)

    def rate(self) -> float:
        return self.done / max(time.perf_counter() - self.start, 1e-9)

    def close(self) -> None:
        self.bar.close()
