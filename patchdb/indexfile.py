"""The patch index file: one HDF5 file with the training images and a FAISS index per patch size.

Layout (format ``patchdb-index``, version 1)::

    /                      attrs: format, format-version, generated-by, creation-date, metadata (JSON:
                           dataset name/meta/fingerprint, policy, machine, sizes, shape, classes,
                           library versions, build settings)
    /images                (N, C, H, W) uint8, ordered by class (each class a contiguous id range)
    /labels                (N,) int64, non-decreasing
    /sizes/k{K}/           attrs: k, info (JSON: per family plans, recall, timings)
        e{i}/              one entry per window-geometry group i of patches.geometry(machine, K, H, W)
                           attrs: family, indexed (bool), per_image L, groups G
            cand_pos       (G, L) int64: flat candidate positions y * W + x of each sub-group
            index/{g}      uint8: faiss.serialize_index of sub-group g (indexed families only)

Id rule, stored in the metadata and used everywhere: in sub-index ``(K, i, g)`` the vector id
``v`` is image ``n = v // L`` at flat position ``cand_pos[g, v % L]``, family ``e{i}.family``. A class
``[start, stop)`` of images is the id range ``[start * L, stop * L)``. Corner (and LS fallback)
families are not indexed: they have only N candidates per pixel and are scanned exactly.

Loading takes the blank windows (all in-image pixels 0) out of each IVF sub-index and counts them
(:class:`Blanks`); the approximate engine adds them back as one candidate of known multiplicity. The
stored bytes are not changed.

Building streams: vectors are cut from chunks of images, added in chunks, and every finished
sub-index is checkpointed into ``<out>.partial/`` (temp name + rename), so a killed build resumes.
The final file is written under a temporary name and renamed; until then ``info`` refuses the path.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Self

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from . import index as fx
from .errors import PatchdbError, PatchdbFileError
from .patches import clipped_boxes, geometry
from .schedule import check_patch_size
from .spec import Machine
from .store import atomic_h5, check_writable, library_versions, metadata, open_checked

log = logging.getLogger(__name__)

INDEX_FORMAT = "patchdb-index"
INDEX_VERSION = 1
ID_RULE = "image = id // L; position = cand_pos[g, id % L] (flat y*W+x); class [a,b) = ids [a*L, b*L)"
#: Families whose candidates are few per query pixel (N): scanned exactly, never indexed.
EXACT_FAMILIES = ("corner", "ls")
#: Elements per vector chunk (floats); bounds the build's working memory (~3x this in bytes x 4).
CHUNK_ELEMENTS = 8_000_000
#: Window elements gathered per block by PatchSource.window_terms: small enough that the block's
#: float64 copy stays in cache between the gather and the two products (measured, k = 9-17).
TERM_BLOCK_ELEMENTS = 1 << 20


# --------------------------------------------------------------------------------------------
# Windows cut from training images
# --------------------------------------------------------------------------------------------


class PatchSource:
    """Training images in [-1, 1], zero padded by ``pad``, from which windows are gathered by id.

    Parameters
    ----------
    images : (N, C, H, W) uint8.  pad : largest ``k // 2`` needed.  dtype : float dtype of windows.
    """

    def __init__(self, images: torch.Tensor, pad: int, dtype: torch.dtype = torch.float32):
        self.n, self.channels, self.height, self.width = images.shape
        self.pad = pad
        x = images.to(dtype).div_(127.5).sub_(1.0)  # same arithmetic as Dataset.to_float
        self.padded = F.pad(x, (pad, pad, pad, pad)).contiguous()
        self.hp, self.wp = self.height + 2 * pad, self.width + 2 * pad
        self._codes: torch.Tensor | None = None  # int16 codes for window_terms, made on first use

    def _base(self, image: torch.Tensor, pos: torch.Tensor, shift: int) -> torch.Tensor:
        y, x = pos // self.width, pos % self.width
        return image * (self.channels * self.hp * self.wp) + (y + shift) * self.wp + (x + shift)

    def windows(self, image: torch.Tensor, pos: torch.Tensor, k: int) -> torch.Tensor:
        """Zero-padded ``k x k`` windows centred at flat ``pos`` of images ``image``: (..., C*k*k).

        Features are ordered as :func:`patches.unfold_windows` orders them (channel, row, column).
        """
        shift = self.pad - k // 2
        y, x = pos // self.width + shift, pos % self.width + shift
        # A strided view of every k x k window (no copy): indexing it copies whole window rows, about
        # twice as fast as gathering each element by a flat offset.
        c, hp, wp = self.channels, self.hp, self.wp
        view = self.padded.as_strided((self.n, c, hp - k + 1, wp - k + 1, k, k), (c * hp * wp, hp * wp, wp, 1, wp, 1))
        return view[image, :, y, x].reshape(*torch.broadcast_shapes(image.shape, pos.shape), c * k * k)

    def window_terms(self, q: torch.Tensor, image: torch.Tensor, pos: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(q_r . phi_rj, |phi_rj|^2)`` (R, P) float64 for query rows ``q`` (R, C*k*k) and the windows
        at ``image``, ``pos`` (R, P): what the re-rank needs, without the (R, P, C*k*k) float windows.

        The windows are read from int16 codes ``2 w - 255`` of the uint8 pixels ``w`` (zero padding stays
        0; ``phi = code / 255`` exactly), a quarter of the bytes of the float64 images, so the gathers of
        a re-rank hit the cache instead of memory. Gathered and multiplied in row blocks of about
        :data:`TERM_BLOCK_ELEMENTS`. Both terms are exact up to float64 rounding of the dot products.
        """
        codes = self._int16_codes()
        r, p = image.shape
        c, hp, wp = self.channels, self.hp, self.wp
        # One view row per (window row start): k consecutive pixels, overlapping rows (no copy).
        rows = codes.as_strided((codes.numel() - k + 1, k), (1, 1))
        row_off = (torch.arange(c).view(-1, 1) * (hp * wp) + torch.arange(k).view(1, -1) * wp).view(-1)  # (C*k,)
        base = self._base(image, pos, self.pad - k // 2)  # (R, P) flat offset of each window's top-left pixel
        qd = q.double().unsqueeze(-1) / 255.0  # (R, d, 1)
        dots = torch.empty(r, p, dtype=torch.float64)
        norms = torch.empty(r, p, dtype=torch.float64)
        step = max(1, TERM_BLOCK_ELEMENTS // max(1, p * c * k * k))
        for s in range(0, r, step):
            offs = (base[s : s + step].unsqueeze(-1) + row_off).view(-1)
            w = rows.index_select(0, offs).view(-1, p, c * k * k).to(torch.float64)  # codes, exact in float64
            torch.bmm(w, qd[s : s + step], out=dots[s : s + step].unsqueeze(-1))
            norms[s : s + step] = torch.einsum("rpd,rpd->rp", w, w)
        return dots, norms.div_(255.0 * 255.0)

    def _int16_codes(self) -> torch.Tensor:
        """Flat int16 ``2 w - 255`` of the padded images (padding 0), made on first use."""
        if self._codes is None:
            inner = self.padded[:, :, self.pad : self.pad + self.height, self.pad : self.pad + self.width]
            codes = torch.zeros(self.padded.shape, dtype=torch.int16)
            codes[:, :, self.pad : self.pad + self.height, self.pad : self.pad + self.width] = (inner.double() * 255.0).round_().to(torch.int16)
            self._codes = codes.view(-1)
        return self._codes

    def centres(self, image: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Centre pixels (..., C)."""
        base = self._base(image, pos, self.pad)
        chan = torch.arange(self.channels) * (self.hp * self.wp)
        return self.padded.view(-1)[base.unsqueeze(-1) + chan]


def vector_chunks(images: torch.Tensor, k: int, cand_pos: torch.Tensor, chunk_images: int):
    """Float32 vectors of one sub-group, id order (image-major, then position): (n_chunk * L, C*k*k) arrays."""
    for start in range(0, images.shape[0], chunk_images):
        src = PatchSource(images[start : start + chunk_images], k // 2)
        n = src.n
        img = torch.arange(n).view(-1, 1).expand(n, len(cand_pos))
        yield src.windows(img, cand_pos.view(1, -1).expand(n, -1), k).reshape(n * len(cand_pos), -1).numpy()


def sample_vectors(images: torch.Tensor, k: int, cand_pos: torch.Tensor, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` vectors drawn uniformly over images, sub-groups and positions: (vectors, (g, id) pairs)."""
    g = torch.Generator().manual_seed(seed)
    groups, per_image = cand_pos.shape
    sub = torch.randint(groups, (count,), generator=g)
    img = torch.randint(images.shape[0], (count,), generator=g)
    j = torch.randint(per_image, (count,), generator=g)
    order = torch.argsort(img)  # touch images in order; gather only those used
    sub, img, j = sub[order], img[order], j[order]
    used, local = torch.unique(img, return_inverse=True)
    src = PatchSource(images[used], k // 2)
    vecs = src.windows(local, cand_pos[sub, j], k).numpy()
    return vecs, torch.stack([sub, img * per_image + j], 1).numpy()


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


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

    def key(self) -> dict:
        return {"machine": self.machine, "index_key": self.index_key, "recall_k": self.recall_k,
                "target_recall": self.target_recall, "seed": self.seed}


@dataclass
class Entry:
    """One geometry group of one patch size, as stored."""

    family: str
    cand_pos: torch.Tensor  # (G, L)
    indexed: bool
    info: dict = field(default_factory=dict)

    @property
    def per_image(self) -> int:
        return int(self.cand_pos.shape[1])


@dataclass
class Blanks:
    """The blank windows of one sub-index (every in-image pixel 0, i.e. -1 after scaling: black background),
    kept out of its IVF lists when it is loaded and counted instead (all of them are one identical
    vector, so one logit and a multiplicity stand for them exactly).

    ``mask`` (N * L,) bool over ids; ``cumulative`` (N + 1,) int64 counts over images, so images
    ``[lo, hi)`` hold ``cumulative[hi] - cumulative[lo]`` of them; ``first`` the smallest blank id.
    """

    mask: torch.Tensor
    cumulative: torch.Tensor
    first: int

    def count(self, lo: int, hi: int) -> int:
        return int(self.cumulative[hi] - self.cumulative[lo])

    def ids(self, lo: int, hi: int, per_image: int, most: int) -> torch.Tensor:
        """Up to ``most`` blank ids of images ``[lo, hi)``, evenly spread over them (representatives)."""
        found = self.mask[lo * per_image : hi * per_image].nonzero().view(-1)
        if len(found) > most:
            found = found[torch.linspace(0, len(found) - 1, most).round().long()]
        return found + lo * per_image

    @property
    def nbytes(self) -> int:
        return self.mask.numel() + 8 * self.cumulative.numel()


def lit_integral(images: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Integral images of the non-zero pixel count (over channels) of uint8 ``images`` (N, C, H, W):
    (N, (H+1)(W+1)), int16 when the largest count fits, so any window's count is four reads."""
    n, c, h, w = images.shape
    dtype = torch.int16 if c * h * w < 2**15 else torch.int32
    out = torch.empty(n, (h + 1) * (w + 1), dtype=dtype)
    for start in range(0, n, chunk):
        lit = (images[start : start + chunk] != 0).sum(1, dtype=torch.int32)
        out[start : start + chunk] = F.pad(lit.cumsum(1).cumsum(2), (1, 0, 1, 0)).flatten(1).to(dtype)
    return out


def blank_mask(integral: torch.Tensor, height: int, width: int, k: int, cand_pos: torch.Tensor) -> torch.Tensor:
    """(N, L) bool: is the zero-padded ``k x k`` window at ``cand_pos`` (L,) all zero, read from
    :func:`lit_integral` (the window clipped to the image holds no lit pixel)."""
    y0, y1, x0, x1 = clipped_boxes(cand_pos, k // 2, height, width)

    def at(yy, xx):
        return integral[:, yy * (width + 1) + xx].int()

    return (at(y1, x1) - at(y0, x1) - at(y1, x0) + at(y0, x0)) == 0


def take_out_blanks(index, integral: torch.Tensor, height: int, width: int, k: int, cand_pos: torch.Tensor,
                    where: str = "index") -> Blanks | None:
    """Remove the blank windows (:func:`blank_mask`) from an IVF index over windows at ``cand_pos`` (L,);
    None for a Flat index (ids are positions, nothing is taken out) or when no window is blank.
    On black-background data blank windows are a large share of all windows (28% at k = 3 on
    Fashion-MNIST), all in one inverted list, which every query near black scans whole: taking them
    out halves the k = 3 search (see README)."""
    if fx._ivf(index) is None:
        return None
    mask = blank_mask(integral, height, width, k, cand_pos)  # (N, L)
    if not bool(mask.any()):
        return None
    flat = mask.reshape(-1)
    removed = fx.remove_ids(index, flat.numpy())
    if removed != int(flat.sum()):
        raise PatchdbError(f"{where}: the index holds {removed} of its {int(flat.sum())} blank windows; "
                           "the file is inconsistent, rebuild it with patchdb build")
    cumulative = torch.cat([torch.zeros(1, dtype=torch.long), mask.sum(1).cumsum(0)])
    return Blanks(flat, cumulative, int(flat.nonzero()[0]))


def entries_for(machine: Machine, k: int, height: int, width: int) -> list[Entry]:
    geom = geometry(machine, k, height, width)
    return [Entry(grp.family, grp.cand_pos.clone(), grp.family not in EXACT_FAMILIES) for grp in geom.groups]


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
    keep_from = _existing(out, dataset, config, overwrite, add)
    todo = [k for k in sorted(set(config.sizes)) if k not in keep_from]
    partial = _partial_dir(out, fingerprint, config)
    for k in todo:
        _build_size(dataset, k, machine, config, partial, progress)
    _assemble(dataset, out, config, partial, sorted(set(todo) | set(keep_from)), keep_from)
    shutil.rmtree(partial, ignore_errors=True)
    return out


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
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _partial_dir(out: Path, fingerprint: str, config: BuildConfig) -> Path:
    """``<out>.partial/`` holds finished sub-indexes of an interrupted build with the same inputs."""
    partial = out.with_name(out.name + ".partial")
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
        index = fx.new_index(plan.key, d) if trained is None else fx.faiss.clone_index(trained)
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
        "build": {**asdict(config), "sizes": list(config.sizes)}, "id_rule": ID_RULE,
    }
    old = h5py.File(out, "r") if keep_from else None
    try:
        with atomic_h5(out, INDEX_FORMAT, INDEX_VERSION, meta) as f:
            f.create_dataset("images", data=dataset.images.numpy())
            f.create_dataset("labels", data=dataset.labels.numpy())
            sizes_group = f.create_group("sizes")
            for k in sizes:
                if k in keep_from:
                    old.copy(old[f"sizes/k{k}"], sizes_group, name=f"k{k}")
                else:
                    _write_size(sizes_group, k, machine, dataset, partial)
    finally:
        if old is not None:
            old.close()


def _write_size(parent: h5py.Group, k: int, machine: Machine, dataset, partial: Path) -> None:
    grp = parent.create_group(f"k{k}")
    grp.attrs["k"] = k
    infos = []
    for i, entry in enumerate(entries_for(machine, k, dataset.height, dataset.width)):
        e = grp.create_group(f"e{i}")
        e.attrs["family"] = entry.family
        e.attrs["indexed"] = entry.indexed
        e.create_dataset("cand_pos", data=entry.cand_pos.numpy())
        info = {"family": entry.family, "groups": int(entry.cand_pos.shape[0]), "per_image": entry.per_image,
                "vectors": len(dataset) * entry.cand_pos.numel(), "indexed": entry.indexed}
        if entry.indexed:
            info = json.loads((partial / f"k{k}_e{i}.json").read_text())
            sub = e.create_group("index")
            for g in range(entry.cand_pos.shape[0]):
                sub.create_dataset(str(g), data=np.fromfile(piece_path(partial / f"k{k}_e{i}", g), dtype=np.uint8))
        e.attrs["info"] = json.dumps(info)
        infos.append(info)
    grp.attrs["info"] = json.dumps(infos)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


#: Environment variable: memory for loaded sub-indexes (e.g. ``8GiB``); unset: half the available memory.
CACHE_ENV = "PATCHDB_INDEX_MEMORY"


def default_cache_bytes() -> int | None:
    """``PATCHDB_INDEX_MEMORY`` if set, else half of MemAvailable (Linux), else None (no limit)."""
    text = os.environ.get(CACHE_ENV)
    if text:
        return fx.parse_bytes(text, CACHE_ENV)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    return None


class IndexFile:
    """A complete index file opened for reading; sub-indexes are deserialized on first use.

    Loaded sub-indexes are kept per patch size, least recently used size first out, within
    ``cache_bytes`` ("auto": :func:`default_cache_bytes`; None: no limit): a sampler walking a schedule over a file
    bigger than memory (N = 60,000, 8 sizes: 20 GB) holds the sizes it is using and reloads the others.
    The size being used is never unloaded, so one size larger than the budget still works.
    """

    def __init__(self, path: str | os.PathLike, cache_bytes: int | None | str = "auto"):
        self.path = Path(path)
        self.cache_bytes = default_cache_bytes() if cache_bytes == "auto" else cache_bytes  # None: no limit
        self.loads = 0  # sub-index deserializations (tests and logs)
        self.h5 = open_checked(self.path, INDEX_FORMAT, INDEX_VERSION)
        try:
            self.meta = metadata(self.h5)
            self._check_complete()
        except (KeyError, ValueError, OSError) as err:
            self.h5.close()
            if isinstance(err, PatchdbError):
                raise
            raise PatchdbError(f"{self.path} is incomplete or corrupted ({err.__class__.__name__}); rebuild it with patchdb build") from None
        self.machine = Machine.parse(self.meta["machine"])
        self.sizes = tuple(int(k) for k in self.meta["sizes"])
        self.channels, self.height, self.width = self.meta["shape"]
        self._indexes: dict[tuple[int, int, int], tuple[object, int]] = {}
        self._entries: dict[int, list[Entry]] = {}
        self._source: PatchSource | None = None
        self._blanks: dict[tuple[int, int, int], Blanks | None] = {}
        self._lit: torch.Tensor | None = None  # lit_integral of the images, made on first need

    def _check_complete(self) -> None:
        for name in ("images", "labels", "sizes"):
            if name not in self.h5:
                raise PatchdbError(f"{self.path} has no '{name}': the build did not finish; rerun patchdb build")
        for k in self.meta["sizes"]:
            grp = self.h5["sizes"].get(f"k{k}")
            if grp is None:
                raise PatchdbError(f"{self.path} lacks patch size {k} its metadata lists; rebuild it")
            for e in grp.values():
                if e.attrs["indexed"] and len(e["index"]) != e["cand_pos"].shape[0]:
                    raise PatchdbError(f"{self.path} size {k} has missing sub-indexes; rebuild it")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.h5.close()

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    def images(self) -> torch.Tensor:
        """(N, C, H, W) uint8, ordered by class."""
        return torch.from_numpy(self.h5["images"][()])

    def labels(self) -> torch.Tensor:
        return torch.from_numpy(self.h5["labels"][()]).long()

    def entries(self, k: int) -> list[Entry]:
        """The stored entries of size ``k`` (read once; callers must not modify them)."""
        if k not in self._entries:
            grp = self.h5[f"sizes/k{k}"]
            out = []
            for i in range(len(grp)):
                e = grp[f"e{i}"]
                out.append(Entry(str(e.attrs["family"]), torch.from_numpy(e["cand_pos"][()]).long(),
                                 bool(e.attrs["indexed"]), json.loads(e.attrs["info"])))
            self._entries[k] = out
        return self._entries[k]

    def entries_for_groups(self, k: int, groups, machine: Machine) -> list[tuple[int, Entry]]:
        """(entry number, entry) of each geometry group of ``machine`` at size ``k``, matched by candidate
        positions (so a bbELS file serves ELS); one line naming the fix when the file lacks a family."""
        stored = self.entries(k)
        found = []
        for grp in groups:
            match = [(i, e) for i, e in enumerate(stored) if e.cand_pos.shape == grp.cand_pos.shape
                     and torch.equal(e.cand_pos, grp.cand_pos)]
            if not match:
                raise PatchdbError(f"{self.path} has no {grp.family} candidates for k={k}; it was built for "
                                   f"machine {self.machine.value}, rebuild it for {Machine.parse(machine).value}")
            found.append(match[0])
        return found

    def source(self) -> PatchSource:
        """The stored images as a float64 :class:`PatchSource` padded for the largest size, made once and
        shared by everything reading windows through this file (the approximate engine, attribution)."""
        if self._source is None:
            self._source = PatchSource(self.images(), max(self.sizes) // 2, torch.float64)
        return self._source

    def index(self, k: int, i: int, g: int):
        key = (k, i, g)
        if key not in self._indexes:
            data = self.h5[f"sizes/k{k}/e{i}/index/{g}"]
            self._make_room(k, data.nbytes)
            index = fx.deserialize(data[()])
            self._blanks[key] = self._take_out_blanks(index, k, i, g)
            extra = 0 if self._blanks[key] is None else self._blanks[key].nbytes
            self._indexes[key] = (index, int(data.nbytes) + extra)
            self.loads += 1
        # Most recently used last: re-insert this size's entries (dicts keep insertion order).
        if next(reversed(self._indexes))[0] != k:
            for other in [key2 for key2 in self._indexes if key2[0] == k]:
                self._indexes[other] = self._indexes.pop(other)
        return self._indexes[key][0]

    def blanks(self, k: int, i: int, g: int) -> Blanks | None:
        """The blank windows taken out of sub-index ``(k, i, g)`` (None: none, or a Flat index, where
        ids are positions and nothing is taken out); loads the sub-index if needed."""
        self.index(k, i, g)
        return self._blanks[(k, i, g)]

    def _take_out_blanks(self, index, k: int, i: int, g: int) -> Blanks | None:
        """Remove blank windows from a freshly loaded IVF sub-index (:func:`take_out_blanks`)."""
        if fx._ivf(index) is None:
            return None
        if self._lit is None:
            self._lit = lit_integral(self.images())
        return take_out_blanks(index, self._lit, self.height, self.width, k, self.entries(k)[i].cand_pos[g],
                               where=f"{self.path} size {k}")

    def loaded_sizes(self) -> list[int]:
        """Patch sizes with sub-indexes in memory, least recently used first."""
        return list(dict.fromkeys(key[0] for key in self._indexes))

    def _make_room(self, k: int, incoming: int) -> None:
        if self.cache_bytes is None:
            return
        used = sum(nbytes for _, nbytes in self._indexes.values())
        for old in self.loaded_sizes():
            if used + incoming <= self.cache_bytes:
                break
            if old == k:
                continue
            for key in [key2 for key2 in self._indexes if key2[0] == old]:
                used -= self._indexes.pop(key)[1]
                self._blanks.pop(key, None)
            log.info("unloaded the k=%d indexes of %s (index memory budget %.1f GiB; set %s to keep more)",
                     old, self.path.name, self.cache_bytes / 2**30, CACHE_ENV)

    def check_dataset(self, fingerprint: str | None) -> None:
        if fingerprint is not None and fingerprint != self.fingerprint:
            raise PatchdbError(
                f"{self.path} was built from another dataset ({self.meta['dataset']}, fingerprint "
                f"{self.fingerprint[:12]}), not the one given ({fingerprint[:12]}); build an index for this data"
            )

    def check(self, machine: Machine | str, sizes, fingerprint: str | None = None) -> None:
        """One-line errors for a file built for another dataset, machine or set of patch sizes."""
        self.check_dataset(fingerprint)
        machine = Machine.parse(machine)
        if machine is Machine.IS:
            raise PatchdbError("the IS machine needs no index; run patchdb sample --machine is without --index")
        if machine is Machine.BBELS and self.machine is not Machine.BBELS:
            raise PatchdbError(f"{self.path} was built for machine {self.machine.value}, which has no edge families; "
                               "rebuild it with --machine bbels")
        missing = sorted({int(k) for k in sizes} - set(self.sizes))
        if missing:
            add = ",".join(str(k) for k in missing)
            raise PatchdbError(
                f"{self.path} has no index for patch sizes {missing} (it has {list(self.sizes)}); add them with "
                f"patchdb build --dataset {self.meta['dataset']} --machine {self.machine.value} --scales {add} --add --out {self.path}"
            )

    def info(self) -> dict:
        """What is inside: dataset, machine, and per size the families, index types, recall, memory."""
        attrs = {key: (v.item() if hasattr(v, "item") else v) for key, v in self.h5.attrs.items() if key != "metadata"}
        sizes = {}
        for k in self.sizes:
            fams = []
            for i, entry in enumerate(self.entries(k)):
                stored = sum(d.nbytes for d in self.h5[f"sizes/k{k}/e{i}/index"].values()) if entry.indexed else 0
                fams.append({**entry.info, "stored_bytes": int(stored)})
            sizes[str(k)] = fams
        images_bytes = int(self.h5["images"].nbytes)
        total = images_bytes + sum(f["stored_bytes"] for fams in sizes.values() for f in fams)
        return {"path": str(self.path), **attrs, "metadata": self.meta, "images_bytes": images_bytes,
                "sizes": sizes, "memory_to_load_bytes": total, "file_bytes": self.path.stat().st_size}


def open_index(path: str | os.PathLike) -> IndexFile:
    if not Path(path).exists():
        raise PatchdbFileError(f"index file {path} does not exist; build it with patchdb build --out {path}")
    return IndexFile(path)
