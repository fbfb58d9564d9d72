"""Computing one shard where the work runs: in the driver, a local worker process or a Ray actor."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import torch

from ..errors import PatchdbError
from ..sampler import ddim_sample, initial_noise
from ..store import write_samples
from .spec import Engine, RunSpec, set_threads


def seed_labels(seeds: list[int], label: str | None, num_classes: int | None) -> torch.Tensor | None:
    """Seed ``s``'s class: None (unconditional), one class for all, or ``all``: ``s mod num_classes``
    (as :func:`patchdb.generate.sample_labels`), so a seed's label does not depend on its shard."""
    if label is None:
        return None
    if num_classes is None:
        raise PatchdbError("class-conditional sampling needs a labelled dataset")
    s = torch.as_tensor(seeds, dtype=torch.long)
    if label == "all":
        return s % num_classes
    value = int(label)
    if not 0 <= value < num_classes:
        raise PatchdbError(f"label {value} is out of range 0..{num_classes - 1}; pick a class of the dataset")
    return torch.full_like(s, value)


def sample_seeds(engine: Engine, seeds: list[int], shape: tuple[int, int, int], num_classes: int | None,
                 check=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The samples of ``seeds``; seed ``s`` is always computed at row ``s % B`` of a batch of exactly
    ``B = batch_size`` rows (the other rows hold copies of a neighbour's noise, whose content does not
    matter). Measured on the CPU: a row's bits change with the batch size (bbELS: up to 9e-6) and, for
    IS, with its position in the batch (identical rows of one batch differ), not with the other rows."""
    spec = engine.spec
    size = spec.batch_size
    labels = seed_labels(seeds, spec.label, num_classes)
    groups: dict[int, list[int]] = {}
    for j, s in enumerate(seeds):
        groups.setdefault(s // size, []).append(j)
    out = torch.empty((len(seeds), *shape), dtype=engine.dtype)
    for members in groups.values():
        rows = [seeds[j] % size for j in members]
        fill = [members[0]] * size  # which of our seeds each row copies
        for j, r in zip(members, rows):
            fill[r] = j
        noise = initial_noise([seeds[j] for j in fill], shape, engine.dtype).to(engine.device)
        lab = None if labels is None else labels[fill].to(engine.device)
        res = ddim_sample(engine.denoiser, noise, engine.steps, lab, callback=check)
        out[members] = res.samples[rows].cpu().to(engine.dtype)
    return out, labels


def write_shard(engine: Engine, path: Path, seeds: list[int], shape, num_classes, settings_id: str,
                sizes: list[int] | None, check=None) -> float:
    """Compute a shard and write it atomically to ``path``; returns its (wall, CPU) seconds (CPU: this
    process, all its threads; the fair cost per sample when the machine is shared)."""
    start, cpu0 = time.perf_counter(), time.process_time()
    samples, labels = sample_seeds(engine, seeds, shape, num_classes, check)
    seconds = time.perf_counter() - start
    save_shard(path, samples, seeds, labels, sizes, engine.spec, settings_id, seconds)
    return seconds, time.process_time() - cpu0


def save_shard(path: Path, samples: torch.Tensor, seeds: list[int], labels: torch.Tensor | None,
               sizes: list[int] | None, spec: RunSpec, settings_id: str, seconds: float) -> None:
    """A shard as a ``patchdb-samples`` file, written under a temporary name and renamed."""
    meta = {"settings_id": settings_id, "run_spec": spec.to_dict(), "seconds": seconds}
    write_samples(path, samples, seeds, labels, sizes, meta)


# -- local worker processes ----------------------------------------------------------------------

_ENGINE: Engine | None = None
_PARENT: int | None = None


READY_TIMEOUT = 600.0  # seconds a loaded worker waits for the others (a failed start breaks the pool first)


def init_local_worker(spec: dict, threads: int, ready=None) -> None:
    """Process-pool initializer: this process's share of threads, then the engine (loaded once), then
    wait at ``ready`` (a barrier of all workers) so that the workers start taking shards together."""
    global _ENGINE, _PARENT
    _PARENT = os.getppid()
    _die_with_parent()
    set_threads(threads)
    _ENGINE = Engine(RunSpec.from_dict(spec))
    if ready is not None:
        ready.wait(READY_TIMEOUT)


def local_task(path: str, seeds: list[int], shape, num_classes, settings_id, sizes) -> tuple[float, float, str]:
    from .folder import worker_name

    seconds, cpu = write_shard(_ENGINE, Path(path), seeds, tuple(shape), num_classes, settings_id, sizes, _check_parent)
    return seconds, cpu, worker_name()


def _check_parent(info: dict) -> None:
    """Sampler callback: stop if the driver is gone (a ``kill -9``ed driver must not leave workers
    writing shards while its rerun computes them)."""
    if _PARENT is not None and os.getppid() != _PARENT:
        os._exit(1)


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this worker when its parent dies (``prctl(PR_SET_PDEATHSIG)``)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # elsewhere the per-step parent check above does the job
