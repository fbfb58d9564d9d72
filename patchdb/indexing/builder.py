"""Building an index file: one FAISS index per patch size and window family, streamed, resumable.

Vectors are cut from chunks of images, added in chunks, and every finished sub-index is checkpointed
into ``<out>.partial/`` (temp name + rename), so a killed build resumes. The final file is written
under a temporary name and renamed; until then the reader refuses the path. The layout is
:mod:`.format`'s.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import h5py
import numpy as np
import torch

from ..errors import PatchdbError
from ..schedule import check_patch_size
from ..spec import Machine
from ..store import (
    CHECKSUM_ATTR,
    atomic_h5,
    check_writable,
    claimed,
    digest,
    library_versions,
    pid_alive,
    put_array,
)
from . import faiss_ops as fx
from .format import (
    BUILD_ID_ATTR,
    ID_RULE,
    INDEX_FORMAT,
    INDEX_VERSION,
    METADATA_SHA_ATTR,
    Entry,
    entries_for,
)
from .reader import IndexFile
from .windows import PatchSource, sample_vectors, vector_chunks

log = logging.getLogger(__name__)

#: Elements per vector chunk (floats); bounds the build's working memory (~3x this in bytes x 4).
CHUNK_ELEMENTS = 8_000_000


@dataclass(frozen=True)
class BuildConfig:
    """Everything that decides the content of an index file (stored in its metadata)."""

    machine: str
    sizes: tuple[int, ...]
    index_key: str = "auto"  # "auto" or a faiss index_factory string
    memory_bytes: int = 8 * 2**30
    recall_k: int = 64  # K of the recall@K the tuner targets
    recall_queries: int = 100
    target_recall: float = fx.RECALL_TARGET
    seed: int = 0
    #: the scale schedule ``sample --index`` uses when given none (recorded when --scales names one)
    schedule: tuple[int, ...] = ()
    schedule_name: str = ""
    #: T > 0: the sizes used only at steps t >= T were left out (``build --sample-above``): those steps
    #: search no index when sampled with ``--sample-above`` T or lower (recorded for the error that says so)
    sample_above: float = 0.0

    def key(self) -> dict:
        return {"machine": self.machine, "index_key": self.index_key, "recall_k": self.recall_k,
                "target_recall": self.target_recall, "seed": self.seed}


def build_index_file(
    dataset,
    out: str | os.PathLike,
    config: BuildConfig,
    progress: bool = True,
    overwrite: bool = False,
    add: bool = False,
) -> Path:
    """Build (or resume, or extend with ``add``) the index file of ``dataset`` for ``config``.

    ``dataset`` is a :class:`patchdb.data.Dataset` (uint8 images ordered by class). Returns the path.
    """
    out = check_writable(out)
    machine = Machine.parse(config.machine)
    if not machine.is_local:
        raise PatchdbError("the IS machine compares whole images and has no patch index; use --machine els or bbels")
    for k in config.sizes:
        check_patch_size(k)
    fingerprint = dataset.fingerprint()
    # One builder per path: a second build into the same file (or its .partial/) is refused while this runs.
    with claimed(out, force=True, what="--out"):
        keep_from = _existing(out, dataset, config, overwrite, add)
        todo = [k for k in sorted(set(config.sizes)) if k not in keep_from]
        partial = _partial_dir(out, fingerprint, config)
        for k in todo:
            _build_size(dataset, k, machine, config, partial, progress)
        _assemble(dataset, out, config, partial, sorted(set(todo) | set(keep_from)), keep_from)
        shutil.rmtree(partial, ignore_errors=True)
    return out


def partial_path(out: str | os.PathLike) -> Path:
    """``<out>.partial/``: the finished sub-indexes of an interrupted build, where a rerun resumes."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def _existing(out: Path, dataset, config: BuildConfig, overwrite: bool, add: bool) -> list[int]:
    """Sizes to copy from an existing complete file (``add``); refuse to clobber without ``overwrite``."""
    _remove_stale_temps(out)
    if not out.exists() or overwrite:
        return []
    if not add:
        raise PatchdbError(f"{out} already exists; pass --add to add patch sizes to it or --force to rebuild it")
    with IndexFile(out) as old:
        old.check_dataset(dataset.fingerprint())
        if old.machine.value != Machine.parse(config.machine).value:
            raise PatchdbError(f"{out} was built for machine {old.machine.value}, not {config.machine}; use another --out")
        return list(old.sizes)


def _remove_stale_temps(out: Path) -> None:
    """Temp files of killed builds (``.name.PID.tmp`` whose PID is gone) only waste disk; remove them."""
    for tmp in out.parent.glob(f".{out.name}.*.tmp"):
        pid = tmp.name[len(out.name) + 2 : -4]
        if pid.isdigit() and not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _partial_dir(out: Path, fingerprint: str, config: BuildConfig) -> Path:
    """``<out>.partial/`` holds finished sub-indexes of an interrupted build with the same inputs."""
    partial = partial_path(out)
    manifest = {"fingerprint": fingerprint, **config.key(), "format-version": INDEX_VERSION}
    found = partial / "manifest.json"
    if found.exists():
        try:
            same = json.loads(found.read_text()) == manifest
        except (OSError, json.JSONDecodeError):
            same = False
        if same:
            log.warning("resuming the build from %s", partial)
            return partial
        log.warning("discarding %s: it belongs to another dataset or other settings", partial)
        shutil.rmtree(partial)
    partial.mkdir(exist_ok=True)
    _write_atomic(found, json.dumps(manifest).encode())
    return partial


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _build_size(dataset, k: int, machine: Machine, config: BuildConfig, partial: Path, progress: bool) -> None:
    images = dataset.images
    for i, entry in enumerate(entries_for(machine, k, dataset.height, dataset.width)):
        if not entry.indexed:
            continue
        info_path = partial / f"k{k}_e{i}.json"
        if info_path.exists():
            continue
        info = _build_entry(images, k, entry, config, partial / f"k{k}_e{i}", progress)
        _write_atomic(info_path, json.dumps(info).encode())


def piece_path(stem: Path, g: int) -> Path:
    """The serialized index of sub-group ``g`` that :func:`_build_entry` writes beside ``stem``."""
    return stem.with_name(f"{stem.name}_g{g}.faiss")


def _build_entry(images: torch.Tensor, k: int, entry: Entry, config: BuildConfig, stem: Path, progress: bool) -> dict:
    """Train one index for the family (shared by its sub-groups), fill one copy per sub-group, tune on the first."""
    groups, per_image = entry.cand_pos.shape
    n, d = images.shape[0] * per_image, images.shape[1] * k * k
    pca_dim = fx.EDGE_PCA_DIM if entry.family == "edge" else fx.PCA_DIM
    plan = fx.choose_key(n, d, config.memory_bytes, config.index_key, copies=groups, pca_dim=pca_dim)
    start = time.perf_counter()
    trained = None
    if plan.ntrain:
        sample, _ = sample_vectors(images, k, entry.cand_pos, plan.ntrain, config.seed + k)
        t0 = time.perf_counter()
        trained = fx.train(plan.key, sample)
        log.info("k=%d %s: trained %s on %d vectors in %.1f s", k, entry.family, plan.key, len(sample), time.perf_counter() - t0)
        del sample
    chunk_images = max(1, CHUNK_ELEMENTS // (per_image * d))
    tuning, add_seconds = {}, 0.0
    for g in range(groups):
        piece = piece_path(stem, g)
        index = fx.new_index(plan.key, d) if trained is None else faiss.clone_index(trained)
        t0 = time.perf_counter()
        desc = f"k={k} {entry.family} {g + 1}/{groups}"
        fx.add_chunks(index, vector_chunks(images, k, entry.cand_pos[g], chunk_images), n, desc, progress)
        add_seconds += time.perf_counter() - t0
        if g == 0:
            tuning = _tune(index, plan.key, images, k, entry.cand_pos[:1], config, chunk_images)
        else:
            fx.set_nprobe(index, tuning["nprobe"])
        _write_atomic(piece, fx.serialize(index).tobytes())
        del index
    total = time.perf_counter() - start
    return {
        "family": entry.family, "plan": plan.to_dict(), "groups": groups, "per_image": per_image,
        "vectors": n * groups, "dim": d, "nprobe": tuning["nprobe"], "k_factor": tuning["k_factor"], "efSearch": tuning["efSearch"],
        "recall": tuning["recall"], "recall_k": config.recall_k, "recall_curve": tuning["curve"],
        "seconds": total, "add_seconds": add_seconds, "vectors_per_second": n * groups / max(add_seconds, 1e-9),
    }


def _tune(index, key: str, images: torch.Tensor, k: int, cand_pos: torch.Tensor, config: BuildConfig,
          chunk_images: int) -> dict:
    """Recall@K of sub-index 0 against exact search, on data-like queries (a stored window plus noise)."""
    if key == "Flat":
        return {"nprobe": 0, "k_factor": 1, "efSearch": 0, "recall": 1.0, "curve": []}
    queries, kth, true_dist = recall_probe(images, k, cand_pos, config, chunk_images)
    return fx.tune(index, queries, kth, true_dist, config.recall_k, config.target_recall)


def recall_probe(images: torch.Tensor, k: int, cand_pos: torch.Tensor, config: BuildConfig, chunk_images: int):
    """What recall@K of sub-group ``cand_pos[0]`` is measured with: data-like queries (a stored window
    plus noise 0.2), their true K-th distances by exact search, and ``true_dist(ids)``, the exact
    distances of found ids (inf for -1) as the engine's re-rank sees them."""
    queries, _ = sample_vectors(images, k, cand_pos, config.recall_queries, config.seed + 1000 + k)
    rng = np.random.default_rng(config.seed)
    queries = (queries + 0.2 * rng.standard_normal(queries.shape)).astype(np.float32)
    dist, _ = fx.exact_knn(queries, vector_chunks(images, k, cand_pos[0], chunk_images), config.recall_k)
    per_image = cand_pos.shape[1]
    source = PatchSource(images, k // 2)  # as the engine holds it: made once, outside the timed calls
    q = torch.from_numpy(queries).double()
    q_sq = q.square().sum(-1, keepdim=True)

    def true_dist(ids: np.ndarray) -> np.ndarray:
        # The engine's re-rank arithmetic (PatchSource.window_terms), so the tuner charges what it costs.
        safe = torch.from_numpy(np.maximum(ids, 0))
        dots, norms = source.window_terms(q, safe // per_image, cand_pos[0][safe % per_image], k)
        return np.where(ids >= 0, (q_sq - 2 * dots + norms).numpy(), np.inf)

    return queries, dist[:, -1], true_dist


def _assemble(dataset, out: Path, config: BuildConfig, partial: Path, sizes: list[int], keep_from: list[int]) -> None:
    """Write the final file under a temp name, copying finished pieces (and kept sizes), then rename."""
    machine = Machine.parse(config.machine)
    meta = {
        "dataset": dataset.name, "dataset_meta": dataset.meta, "fingerprint": dataset.fingerprint(),
        "policy": dataset.meta.get("policy"), "normalisation": "pixel / 127.5 - 1, zero padding = 0",
        "machine": machine.value, "sizes": sizes, "shape": [dataset.channels, dataset.height, dataset.width],
        "count": len(dataset), "classes": list(dataset.classes), "libraries": library_versions(),
        "build": {**asdict(config), "sizes": list(config.sizes), "schedule": list(config.schedule)}, "id_rule": ID_RULE,
    }
    old = h5py.File(out, "r") if keep_from else None
    try:
        # --add keeps the old file's build id, so the pieces copied from it and the new ones agree.
        build_id = str((old.attrs.get(BUILD_ID_ATTR) if old is not None else None) or uuid.uuid4().hex)
        with atomic_h5(out, INDEX_FORMAT, INDEX_VERSION, meta) as f:
            f.attrs[BUILD_ID_ATTR] = build_id
            f.attrs[METADATA_SHA_ATTR] = digest(str(f.attrs["metadata"]).encode())
            _put(f, "images", dataset.images.numpy(), build_id)
            _put(f, "labels", dataset.labels.numpy(), build_id)
            sizes_group = f.create_group("sizes")
            for k in sizes:
                if k in keep_from:
                    old.copy(old[f"sizes/k{k}"], sizes_group, name=f"k{k}")
                    _stamp_copied(sizes_group[f"k{k}"], build_id)
                else:
                    _write_size(sizes_group, k, machine, dataset, partial, build_id)
    finally:
        if old is not None:
            old.close()


def _put(group: h5py.Group, name: str, data: np.ndarray, build_id: str) -> h5py.Dataset:
    """An array with its checksum and the build's id (:mod:`.format`, "Integrity")."""
    ds = put_array(group, name, data)
    ds.attrs[BUILD_ID_ATTR] = build_id
    return ds


def _stamp_copied(group: h5py.Group, build_id: str) -> None:
    """Arrays copied by ``--add`` from a file built before checksums existed get theirs now."""
    def visit(_name, obj):
        if isinstance(obj, h5py.Dataset) and CHECKSUM_ATTR not in obj.attrs:
            obj.attrs[CHECKSUM_ATTR] = digest(obj[()])
            obj.attrs[BUILD_ID_ATTR] = build_id

    group.visititems(visit)


def _write_size(parent: h5py.Group, k: int, machine: Machine, dataset, partial: Path, build_id: str) -> None:
    grp = parent.create_group(f"k{k}")
    grp.attrs["k"] = k
    infos = []
    for i, entry in enumerate(entries_for(machine, k, dataset.height, dataset.width)):
        e = grp.create_group(f"e{i}")
        e.attrs["family"] = entry.family
        e.attrs["indexed"] = entry.indexed
        _put(e, "cand_pos", entry.cand_pos.numpy(), build_id)
        info = {"family": entry.family, "groups": int(entry.cand_pos.shape[0]), "per_image": entry.per_image,
                "vectors": len(dataset) * entry.cand_pos.numel(), "indexed": entry.indexed}
        if entry.indexed:
            info = json.loads((partial / f"k{k}_e{i}.json").read_text())
            sub = e.create_group("index")
            for g in range(entry.cand_pos.shape[0]):
                _put(sub, str(g), np.fromfile(piece_path(partial / f"k{k}_e{i}", g), dtype=np.uint8), build_id)
        e.attrs["info"] = json.dumps(info)
        infos.append(info)
    grp.attrs["info"] = json.dumps(infos)
