"""Attribution: which training patches made each pixel of a sample, at each step.

A sample file holds each sample's seed and (with ``--save-trajectory``) the denoiser output ``D``
of every step; the DDIM recursion ``x_{t'} = a' D + b' (x - a D) / b`` (docs/math.md "Sampler") then
rebuilds every ``x_t`` the sampler saw. At each step the top contributors of ``D(x_t, t)`` are
recomputed (:mod:`patchdb.denoisers.contrib`) and stored compactly beside the samples in
``SAMPLES.attrib.h5``; :func:`summarize` turns them into per-sample numbers (distinct sources,
dominant-source share, effective number of sources, distance to the nearest training image).

Without a stored trajectory the steps are re-run with the recomputed ``D`` (the same engine, so
the same path up to rounding) and the final image is checked against the stored sample.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from ._callable import make_callable
from .data import Dataset, load_dataset
from .denoisers.contrib import (
    DEFAULT_BLOCK_BYTES,
    FAMILIES,
    Contributors,
    contributors,
    index_contributors,
    nearest_patches,
    nearest_patches_index,
    stitch,
)
from .denoisers.retrieval import Retrieval
from .errors import PatchdbError
from .indexing.reader import open_index
from .patches import geometry
from .sampler import ddim_step, initial_noise
from .schedule import check_patch_size
from .spec import Machine
from .store import atomic_h5, metadata, open_checked, read_samples

log = logging.getLogger(__name__)

ATTRIB_FORMAT = "patchdb-attribution"
ATTRIB_VERSION = 1
ID_RULE = "image = id // (H*W); position = id % (H*W) (flat y*W+x, the candidate window's centre); -1 = none"
#: |D recomputed - D stored| above this is reported (float32 sampling vs float64 attribution differ ~1e-6).
D_TOLERANCE = 1e-3


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass
class Attribution:
    """Per-sample, per-step, per-pixel top contributors (arrays; step S, the noisiest, first).

    Attributes
    ----------
    ids : (B, S, HW, m) int32 candidate ids ``image * H * W + q``; -1 pads. Largest weight first.
    weights : (B, S, HW, m) float32, normalised over all candidates of the pixel.
    count : (B, S, HW) int16, how many of the ids cover ``mass`` of the weight (at most m).
    covered : (B, S, HW) float32, the weight those ``count`` ids carry.
    effective : (B, S, HW) float32, ``exp(entropy)`` of the full weight distribution.
    family : (S, HW) uint8 family code of each pixel's candidates (``FAMILIES``).
    denoised : (S, B, C, H, W) float32, the recomputed ``D`` of each step.
    steps : (S,) step numbers i (S..1).  times : (S,) i / S.  sizes : (S,) patch sizes (0 for IS).
    samples : (B, C, H, W) float32 final samples.  sample_index : (B,) rows of the sample file.
    train_labels : (N,) labels of the training set (for labelling sources).
    """

    ids: np.ndarray
    weights: np.ndarray
    count: np.ndarray
    covered: np.ndarray
    effective: np.ndarray
    family: np.ndarray
    denoised: np.ndarray
    steps: np.ndarray
    times: np.ndarray
    sizes: np.ndarray
    samples: np.ndarray
    sample_index: np.ndarray
    mass: float
    machine: str
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.samples.shape[1:])

    @property
    def hw(self) -> int:
        return self.shape[1] * self.shape[2]

    def images_of(self, ids: np.ndarray) -> np.ndarray:
        """Training image of each candidate id (-1 stays -1)."""
        return np.where(ids >= 0, ids // self.hw, -1)

    def positions_of(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(y, x) centre of each candidate window."""
        q = np.where(ids >= 0, ids % self.hw, -1)
        return q // self.shape[2], q % self.shape[2]

    def step_row(self, step: int) -> int:
        """Row of step ``step`` (1..S) in the step axis."""
        rows = np.flatnonzero(self.steps == step)
        if rows.size == 0:
            raise PatchdbError(f"step {step} is not one of the steps 1..{len(self.steps)}")
        return int(rows[0])

    def within_mass(self) -> np.ndarray:
        """(B, S, HW, m) bool: the ids that are among the first ``count`` (cover the mass share)."""
        m = self.ids.shape[-1]
        return np.arange(m) < self.count[..., None]


def dominant_sources(attr: Attribution, b: int, step: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel the training image with the largest summed weight, and that weight: (HW,), (HW,).

    Weights of candidates from the same image (different positions) add up.
    """
    row = attr.step_row(step)
    img = attr.images_of(attr.ids[b, row])  # (HW, m)
    w = attr.weights[b, row].astype(np.float64)
    same = (img[:, :, None] == img[:, None, :]) & (img[:, None, :] >= 0)
    per = (same * w[:, None, :]).sum(-1)  # weight of each entry's image
    best = per.argmax(-1)
    rows = np.arange(img.shape[0])
    return img[rows, best], per[rows, best]


# --------------------------------------------------------------------------------------------
# Loading the training set the samples came from
# --------------------------------------------------------------------------------------------


def samples_fingerprint(data: dict) -> str:
    """SHA-256 of what identifies a sample file: samples, seeds, labels and its dataset fingerprint."""
    h = hashlib.sha256(b"patchdb-samples-v1\n")
    for name in ("samples", "seeds", "labels"):
        h.update(np.ascontiguousarray(data[name]).tobytes())
    h.update(str(data["metadata"].get("fingerprint")).encode())
    return h.hexdigest()


def training_set_for(meta: dict, dataset: str | None = None, root: str | None = None) -> Dataset:
    """Reload the training set a sample file records (``dataset``/``root`` override), checked by fingerprint."""
    dmeta = meta.get("dataset") or {}
    want = meta.get("fingerprint") or dmeta.get("fingerprint")
    name, kwargs = _dataset_args(meta, dmeta, dataset, root)
    try:
        data = load_dataset(name, **kwargs)
    except PatchdbError as err:
        raise PatchdbError(f"cannot reload the training set of the samples ({err}); pass --dataset/--root") from None
    if want and data.fingerprint() != want:
        raise PatchdbError(
            f"training set {data.name} ({len(data)} images, fingerprint {data.fingerprint()[:12]}) is not the one the "
            f"samples were drawn from (fingerprint {want[:12]}, {dmeta.get('count', '?')} images of "
            f"{meta.get('dataset_name', '?')}); pass the same --dataset/--root/--limit"
        )
    return data


def dataset_from_index(index) -> Dataset:
    """The training set stored inside an index file (images, labels, class names, provenance)."""
    meta = index.meta
    return Dataset(index.images(), index.labels(), tuple(meta.get("classes") or ()), str(meta.get("dataset")),
                   dict(meta.get("dataset_meta") or {}))


def check_fingerprint(train: Dataset, meta: dict, what: str) -> None:
    """Refuse a training set other than the one a sample file records, in one line."""
    want = meta.get("fingerprint") or (meta.get("dataset") or {}).get("fingerprint")
    if want and train.fingerprint() != want:
        raise PatchdbError(
            f"{what} holds another training set ({train.name}, {len(train)} images, fingerprint "
            f"{train.fingerprint()[:12]}) than the samples were drawn from (fingerprint {want[:12]}); "
            "use the index or dataset the samples were made with"
        )


def training_set_of(meta: dict, dataset: str | None = None, root: str | None = None, index=None) -> Dataset:
    """The training set of a sample file: ``index``'s images, else ``--dataset``, else the one recorded
    (for samples of the approximate engine: the images stored in the index file they name)."""
    if index is not None and dataset is None:
        train = dataset_from_index(index)
        check_fingerprint(train, meta, f"index {index.path}")
        return train
    recorded = meta.get("index")
    if dataset is None and not meta.get("dataset") and recorded:
        if not Path(recorded).exists():
            raise PatchdbError(f"the samples were drawn from index {recorded}, which does not exist here; "
                               "pass --index FILE (or --dataset) of the same training set")
        with open_index(recorded) as f:
            train = dataset_from_index(f)
        check_fingerprint(train, meta, f"index {recorded}")
        return train
    return training_set_for(meta, dataset, root)


def _dataset_args(meta: dict, dmeta: dict, dataset: str | None, root: str | None) -> tuple:
    kwargs = {
        "split": dmeta.get("split") or "train",
        "limit": dmeta.get("limit"),
        "classes": dmeta.get("classes"),
        "policy": dmeta.get("policy", "resize"),
        "size": int((dmeta.get("size") or [32])[0]),
    }
    name = dataset if dataset is not None else meta.get("dataset_name")
    if name is None:
        raise PatchdbError("the sample file records no dataset; pass --dataset (and --root)")
    if dataset is None and ":" in str(name) and str(name).split(":", 1)[0] in ("npz", "folder", "zip", "idx"):
        name = dmeta.get("source") or str(name).split(":", 1)[1]  # a path the samples were drawn from
        name = str(name).split("::", 1)[0]  # a folder inside a zip is recorded as ZIP::inner/folder
    if name == "embedded":
        name = None
    if root is not None:
        kwargs["root"] = root
    elif dataset is None and name is not None and ":" not in str(meta.get("dataset_name", ":")):
        source = Path(str(dmeta.get("source", "")))
        if source.is_file():  # a named dataset read from files: their folder is its root
            kwargs["root"] = str(source.parent)
    return name, kwargs


# --------------------------------------------------------------------------------------------
# Computing
# --------------------------------------------------------------------------------------------


def attribute(
    images: torch.Tensor,
    machine: Machine | str,
    sizes: list[int] | None,
    noise: torch.Tensor,
    steps: int,
    trajectory: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    train_labels: torch.Tensor | None = None,
    mass: float = 0.9,
    max_contrib: int = 8,
    dtype: torch.dtype = torch.float64,
    sample_dtype: torch.dtype = torch.float32,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    contrib_fn: Callable | None = None,
    progress: bool = False,
) -> dict:
    """Top contributors of every step of the DDIM paths that start at ``noise``.

    Parameters
    ----------
    images : (N, C, H, W) float training set in [-1, 1].
    sizes : patch size per step, ``sizes[i-1]`` at step i (None for IS).
    noise : (B, C, H, W) the x_T of each sample (``initial_noise(seeds)``).
    trajectory : (S, B, C, H, W) stored D of each step, step S first; when given, x_t is rebuilt
        from it exactly as the sampler did (in ``sample_dtype``); otherwise from the recomputed D.
    labels : (B,) class of each sample or None.  train_labels : (N,) classes of ``images``.
    dtype : precision of the attribution (float64 keeps weights within ~1e-9 of the exact weights).
    contrib_fn : ``f(x, t, k, labels) -> Contributors`` replacing the exact computation.

    Returns
    -------
    dict of arrays: ids, weights, count, covered, effective, family, denoised, steps, times,
    sizes, and ``max_d_diff`` (S,), the largest |recomputed D - stored D| per step.
    """
    machine = Machine.parse(machine)
    images = images.to(dtype)
    fn = contrib_fn or (lambda x, t, k, lab: contributors(
        x, images, t, k, machine, max_contrib, mass, lab, train_labels, block_bytes))
    x = noise.to(sample_dtype)
    parts: dict[str, list] = {name: [] for name in ("ids", "weights", "count", "covered", "effective", "family", "denoised")}
    diffs, step_list, size_list = [], [], []
    for j, i in enumerate(tqdm(range(steps, 0, -1), desc="attributing", unit="step", disable=not progress, leave=False)):
        t = i / steps
        k = None if machine is Machine.IS else int(sizes[i - 1])
        res: Contributors = fn(x.to(dtype), t, k, labels)
        d_used = res.denoised.to(sample_dtype) if trajectory is None else trajectory[j].to(sample_dtype)
        diffs.append(float((res.denoised.double() - d_used.double()).abs().max()))
        _collect(parts, res)
        step_list.append(i)
        size_list.append(k or 0)
        x = ddim_step(x, d_used, i, steps)
    out = {name: np.stack(v, axis=1 if name not in ("family", "denoised") else 0) for name, v in parts.items()}
    out.update(steps=np.asarray(step_list), times=np.asarray(step_list) / steps, sizes=np.asarray(size_list),
               max_d_diff=np.asarray(diffs), final=x.float().numpy())
    return out


def _collect(parts: dict, res: Contributors) -> None:
    parts["ids"].append(res.ids.numpy().astype(np.int32))
    parts["weights"].append(res.weights.float().numpy())
    parts["count"].append(res.count.numpy().astype(np.int16))
    parts["covered"].append(res.covered.float().numpy())
    parts["effective"].append(res.effective_sources.float().numpy())
    parts["family"].append(res.family.numpy())
    parts["denoised"].append(res.denoised.float().numpy())


def attribute_file(
    path: str | os.PathLike,
    out: str | os.PathLike | None = None,
    mass: float = 0.9,
    max_contrib: int = 8,
    samples: list[int] | None = None,
    dataset: str | None = None,
    root: str | None = None,
    dtype: torch.dtype = torch.float64,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    progress: bool = False,
    index=None,
    topk: int | None = None,
    retrieval: Retrieval | None = None,
    exact: bool = False,
) -> tuple[Attribution, Path]:
    """Attribute the samples of a sample file and write ``SAMPLES.attrib.h5`` (or ``out``).

    By default the engine that drew the samples is the one attributed: samples of the approximate
    engine are attributed through the index file they record (``index`` overrides its path) with the
    retrieval settings they record (``retrieval`` and ``topk`` override them), so the recomputed D is
    the sampler's; a D that differs from the stored trajectory by more than :data:`D_TOLERANCE` is an
    error. ``index`` on samples of the exact engine, or ``exact=True`` on samples of the approximate one,
    attributes with the other engine on purpose (a differing D is then only logged).
    Returns the :class:`Attribution` and the path written.
    """
    data = read_samples(path)
    meta = data["metadata"]
    with contextlib.ExitStack() as stack:
        if index is None and not exact and meta.get("engine") == "approx":
            index = stack.enter_context(_recorded_index(meta, path))
        if exact:
            index = None
        settings = None
        if index is not None:
            settings = (retrieval or recorded_retrieval(meta)).with_options(topk=topk)
            # Knobs whose steps attribution (a search at every step) cannot replay: the flag and what it did.
            unreplayable = [(f"--reuse {settings.reuse}", "candidates carried from step to step", settings.reuse),
                            (f"--sample-above {settings.sample_above:g}", f"steps at t >= {settings.sample_above:g} "
                             "estimated from a uniform sample, no candidates", settings.sample_above)]
            for flag, what, used in unreplayable:
                if used:
                    raise PatchdbError(
                        f"{path} was drawn with {flag} ({what}), which attribution cannot replay: it searches the "
                        f"index at every step; explain these samples with patchdb attribute {shlex.quote(str(path))} "
                        f"--exact, or draw the samples to explain without {flag.split()[0]}")
        return _attribute_file(data, path, out, mass, max_contrib, samples, dataset, root, dtype, block_bytes,
                               progress, index, settings)


def recorded_retrieval(meta: dict) -> Retrieval:
    """The retrieval settings a sample file of the approximate engine records (files written before they
    were recorded as one object hold the same knobs at the top level); the defaults for other files."""
    if meta.get("engine") != "approx":
        return Retrieval()
    return Retrieval.from_dict(meta.get("retrieval") or meta)


def _recorded_index(meta: dict, path):
    """The index file that samples of the approximate engine record, opened."""
    recorded = meta.get("index")
    if not recorded or not Path(recorded).exists():
        raise PatchdbError(f"{path} was drawn with the approximate engine over {recorded}, which does not exist here; "
                           f"pass the same index with patchdb attribute {shlex.quote(str(path))} --index FILE")
    return open_index(recorded)


def _attribute_file(data: dict, path, out, mass, max_contrib, samples, dataset, root, dtype, block_bytes, progress,
                    index, retrieval: Retrieval | None) -> tuple[Attribution, Path]:
    meta = data["metadata"]
    machine = Machine.parse(meta.get("machine", "bbels"))
    steps = int(meta.get("steps") or (len(data["trajectory"]) if "trajectory" in data else 0))
    if steps < 1:
        raise PatchdbError(f"{path} records no number of steps; it was not written by patchdb sample")
    rows = _sample_rows(samples, len(data["seeds"]), path)
    train = training_set_of(meta, dataset, root, index)
    _check_shape(train, data["samples"].shape[1:], path)
    sizes = None if machine is Machine.IS else [int(k) for k in data.get("schedule", meta.get("schedule"))]
    sample_dtype = torch.float64 if meta.get("dtype") == "float64" else torch.float32
    noise = initial_noise([int(s) for s in data["seeds"][rows]], tuple(data["samples"].shape[1:]), sample_dtype)
    traj = torch.from_numpy(data["trajectory"][:, rows]) if "trajectory" in data else None
    lab = data["labels"][rows]
    labels = None if (lab < 0).all() else torch.from_numpy(lab)
    start = time.perf_counter()
    fn = None
    if index is not None:
        fn = _index_fn(index, train, machine, sizes, max_contrib, mass, retrieval)
    raw = attribute(train.to_float(dtype), machine, sizes, noise, steps, traj, labels, train.labels, mass,
                    max_contrib, dtype, sample_dtype, block_bytes, contrib_fn=fn, progress=progress)
    seconds = time.perf_counter() - start
    engine = "exact" if index is None else "approx"
    _check_consistency(raw, data["samples"][rows], traj is not None, path, meta.get("engine", "exact"), engine)
    attr = Attribution(
        **{k: raw[k] for k in ("ids", "weights", "count", "covered", "effective", "family", "denoised", "steps",
                               "times", "sizes")},
        samples=data["samples"][rows].astype(np.float32), sample_index=np.asarray(rows), mass=float(mass),
        machine=machine.value,
        meta={
            "samples_file": str(Path(path).resolve()), "samples_fingerprint": samples_fingerprint(data),
            "dataset_fingerprint": train.fingerprint(), "dataset_name": train.name, "dataset": train.meta,
            "machine": machine.value, "mass": float(mass), "max_contrib": int(max_contrib),
            "engine": engine, "index": None if index is None else str(index.path),
            "topk": None if retrieval is None else retrieval.topk,
            "retrieval": None if retrieval is None else retrieval.to_dict(),
            "dtype": str(dtype).replace("torch.", ""), "seconds": seconds, "id_rule": ID_RULE,
            "families": list(FAMILIES), "used_trajectory": traj is not None,
            "max_d_diff": float(raw["max_d_diff"].max()), "steps": steps,
        },
    )
    out = Path(out) if out is not None else attrib_path(path)
    write_attribution(out, attr)
    return attr, out


def _index_fn(index, train: Dataset, machine: Machine, sizes, m: int, mass: float, retrieval: Retrieval) -> Callable:
    """``f(x, t, k, labels)`` computing contributors through ``index`` (one class range per label)."""
    if machine is Machine.IS:
        raise PatchdbError("the IS machine compares whole images and needs no index; attribute without --index")
    index.check(machine, sorted(set(sizes)), train.fingerprint())

    def fn(x, t, k, labels):
        if labels is None:
            return index_contributors(x, index, t, k, machine, m, mass, retrieval=retrieval)
        parts = {}
        for label in torch.unique(labels).tolist():
            rows = (labels == label).nonzero().view(-1)
            rng = train.class_range(int(label)) if label >= 0 else None
            parts[label] = (rows, index_contributors(x[rows], index, t, k, machine, m, mass, image_range=rng,
                                                     retrieval=retrieval))
        return stitch(parts, x.shape[0])

    return fn


def attrib_path(samples_path: str | os.PathLike) -> Path:
    """``samples.h5`` -> ``samples.attrib.h5`` beside it."""
    p = Path(samples_path)
    return p.with_name(p.stem + ".attrib.h5")


def _sample_rows(samples: list[int] | None, n: int, path) -> list[int]:
    if samples is None:
        return list(range(n))
    bad = [s for s in samples if not 0 <= int(s) < n]
    if bad:
        raise PatchdbError(f"sample ids {bad} are outside 0..{n - 1} of {path}; pick ids of stored samples")
    return [int(s) for s in samples]


def _check_shape(train: Dataset, shape: tuple, path) -> None:
    if tuple(train.images.shape[1:]) != tuple(shape):
        raise PatchdbError(
            f"{path} holds {'x'.join(map(str, shape))} samples but the training set is "
            f"{train.channels}x{train.height}x{train.width}; load the dataset the samples used"
        )


def _check_consistency(raw: dict, stored: np.ndarray, had_traj: bool, path, drawn_with: str, used: str) -> None:
    """The recomputed D must be the stored one: an error when the samples' own engine was attributed
    (a different trajectory would be explained), a warning when another engine was asked for."""
    worst = float(raw["max_d_diff"].max())
    final_diff = float(np.abs(raw["final"] - stored).max())
    if (had_traj and worst > D_TOLERANCE) or final_diff > 10 * D_TOLERANCE:
        what = (f"recomputed D differs from the trajectory stored in {path} by up to {worst:.2e}" if had_traj else
                f"rebuilt final images differ from the samples stored in {path} by up to {final_diff:.2e}")
        if drawn_with != used:
            log.warning("%s (drawn with the %s engine, attributed with the %s one, as asked)", what, drawn_with, used)
            return
        raise PatchdbError(f"{what} (tolerance {D_TOLERANCE:g}), so the sources would be those of another trajectory; "
                           "attribute with the training set, index and settings the samples were drawn with")


# --------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------


def write_attribution(path: str | os.PathLike, attr: Attribution) -> Path:
    """Write ``attr`` atomically (format ``patchdb-attribution``), chunked per sample and step."""
    with atomic_h5(path, ATTRIB_FORMAT, ATTRIB_VERSION, attr.meta) as f:
        _b, _s, hw, m = attr.ids.shape
        opts = {"compression": "gzip", "shuffle": True}
        f.create_dataset("ids", data=attr.ids, chunks=(1, 1, hw, m), **opts)
        f.create_dataset("weights", data=attr.weights, chunks=(1, 1, hw, m), **opts)
        f.create_dataset("count", data=attr.count, **opts)
        f.create_dataset("covered", data=attr.covered, **opts)
        f.create_dataset("effective", data=attr.effective, **opts)
        f.create_dataset("family", data=attr.family, **opts)
        f.create_dataset("denoised", data=attr.denoised, **opts)
        for name in ("steps", "times", "sizes", "sample_index"):
            f.create_dataset(name, data=getattr(attr, name))
        f.create_dataset("samples", data=attr.samples, **opts)
        f.attrs["mass"] = attr.mass
        f.attrs["machine"] = attr.machine
    return Path(path)


def read_attribution(path: str | os.PathLike, samples_path: str | os.PathLike | None = None) -> Attribution:
    """Read an attribution file; with ``samples_path``, refuse one made for other samples."""
    with open_checked(path, ATTRIB_FORMAT, ATTRIB_VERSION) as f:
        arrays = {name: f[name][()] for name in f}
        meta = metadata(f)
        mass, machine = float(f.attrs["mass"]), str(f.attrs["machine"])
    if samples_path is not None:
        want = samples_fingerprint(read_samples(samples_path))
        if meta.get("samples_fingerprint") != want:
            raise PatchdbError(f"{path} was made for other samples than {samples_path}; rerun patchdb attribute")
    return Attribution(**arrays, mass=mass, machine=machine, meta=meta)


def storage_bytes(path: str | os.PathLike) -> dict:
    """Stored bytes per dataset of an attribution file, and the file size."""
    with h5py.File(path, "r") as f:
        out = {name: int(f[name].id.get_storage_size()) for name in f}
    out["file"] = Path(path).stat().st_size
    return out


# --------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------


#: A pixel whose dominant source image carries less than this share of its weight has no specific
#: source: e.g. a black background window that ties with millions of identical training windows.
GENERIC_WEIGHT = 0.01


def dominant_share(attr: Attribution, b: int, step: int = 1) -> dict:
    """Dominant-source statistics of sample row ``b`` at ``step``.

    Pixels whose dominant image carries < ``GENERIC_WEIGHT`` are *generic* (ties among very many
    identical windows decide their "dominant" image arbitrarily); the share is taken over the other,
    *specific* pixels (all pixels when none is specific): the fraction whose dominant image is the
    single most used one. A copy scores 1, a mosaic near 0.
    """
    dom, dom_w = dominant_sources(attr, b, step)
    specific = dom_w >= GENERIC_WEIGHT
    pool = dom[specific] if specific.any() else dom
    used, counts = np.unique(pool, return_counts=True)
    top = int(used[counts.argmax()])
    return {"dominant_share": float(counts.max() / pool.size), "top_source": top,
            "dominant_images": int(used.size), "generic_share": float(1 - specific.mean()),
            "dominant_share_all_pixels": float((dom == top).mean())}


def summarize(attr: Attribution, train_images: torch.Tensor, train_labels: torch.Tensor | None = None) -> list[dict]:
    """Per-sample numbers (see :func:`dominant_share` and the module docstring).

    ``train_images`` (N, C, H, W) float in [-1, 1]. ``effective_sources`` is the per-step median
    over pixels of ``exp(entropy)`` (step S, the noisiest, first); ``distinct_images`` counts the
    images among the contributors that cover the mass share, over all steps.
    """
    flat = train_images.reshape(len(train_images), -1).double()
    out = []
    for b in range(attr.ids.shape[0]):
        dom = dominant_share(attr, b, step=1)
        within = attr.within_mass()[b]
        contrib_imgs = attr.images_of(attr.ids[b])[within]
        final_row = attr.step_row(1)
        final_imgs = attr.images_of(attr.ids[b, final_row])[within[final_row]]
        sample = torch.from_numpy(attr.samples[b]).reshape(1, -1).double()
        dist = torch.cdist(sample, flat)[0]
        near = int(dist.argmin())
        top = dom["top_source"]
        out.append({
            "sample": int(attr.sample_index[b]),
            "distinct_images": int(np.unique(contrib_imgs[contrib_imgs >= 0]).size),
            "distinct_images_final": int(np.unique(final_imgs[final_imgs >= 0]).size),
            **dom,
            "top_source_label": None if train_labels is None else int(train_labels[top]),
            "effective_sources": [float(v) for v in np.median(attr.effective[b], axis=-1)],
            "mass_reached": float((attr.covered[b] >= attr.mass - 1e-6).mean()),
            "nearest_image": near,
            "nearest_distance": float(dist[near]),
            "nearest_rms": float(dist[near] / np.sqrt(flat.shape[1])),
        })
    return out


# --------------------------------------------------------------------------------------------
# Query: nearest training windows of an image
# --------------------------------------------------------------------------------------------


@dataclass
class QueryResult:
    """Top-n nearest training windows of each queried pixel's window.

    pixels : (P, 2) (y, x) queried.  image, y, x, label, family : (P, n) ints / strings.
    distance : (P, n) float, Euclidean window distance in [-1, 1] units, ascending.
    """

    k: int
    machine: str
    pixels: np.ndarray
    image: np.ndarray
    y: np.ndarray
    x: np.ndarray
    label: np.ndarray
    family: list[str]
    distance: np.ndarray

    def records(self) -> list[dict]:
        rows = []
        for p, (py, px) in enumerate(self.pixels.tolist()):
            rows.append({"pixel": [py, px], "family": self.family[p], "neighbours": [
                {"rank": j + 1, "image": int(self.image[p, j]), "label": int(self.label[p, j]),
                 "y": int(self.y[p, j]), "x": int(self.x[p, j]), "distance": float(self.distance[p, j])}
                for j in range(self.image.shape[1]) if self.image[p, j] >= 0]})
        return rows


def select_pixels(height: int, width: int, pixel: tuple[int, int] | None = None,
                  box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """(P, 2) pixels: one ``pixel`` (y, x), a ``box`` (y0, x0, y1, x1) inclusive, or every pixel."""
    if pixel is not None and box is not None:
        raise PatchdbError("give either a pixel or a box, not both")
    if pixel is not None:
        box = (pixel[0], pixel[1], pixel[0], pixel[1])
    if box is None:
        box = (0, 0, height - 1, width - 1)
    y0, x0, y1, x1 = (int(v) for v in box)
    if not (0 <= y0 <= y1 < height and 0 <= x0 <= x1 < width):
        what = "pixel" if pixel is not None else "box"
        raise PatchdbError(f"{what} {tuple(int(v) for v in (pixel or box))} is outside the {height}x{width} image; "
                           f"use 0 <= y < {height}, 0 <= x < {width}")
    ys, xs = np.meshgrid(np.arange(y0, y1 + 1), np.arange(x0, x1 + 1), indexing="ij")
    return np.stack([ys.ravel(), xs.ravel()], 1)


def query(
    image: torch.Tensor,
    train: Dataset,
    k: int,
    machine: Machine | str = Machine.BBELS,
    n: int = 5,
    pixel: tuple[int, int] | None = None,
    box: tuple[int, int, int, int] | None = None,
    label: int | None = None,
    index=None,
    retrieval: Retrieval | None = None,
) -> QueryResult:
    """Nearest training windows of the windows of ``image`` (C, H, W) in [-1, 1], exact scan.

    Candidates are those the machine lets each pixel see (docs/math.md table), optionally one class.
    With ``index`` (an open :class:`patchdb.indexing.reader.IndexFile`) the indexed families are
    searched with FAISS instead of scanned, with ``retrieval``'s settings (default: top-max(32, 4n),
    the file's tuned search defaults).
    """
    check_patch_size(k)
    machine = Machine.parse(machine)
    c, h, w = train.channels, train.height, train.width
    if image.ndim != 3 or tuple(image.shape) != (c, h, w):
        raise PatchdbError(f"image has shape {tuple(image.shape)} but the training images are {c}x{h}x{w}; "
                           "pass an image of the same size and channels")
    pixels = select_pixels(h, w, pixel, box)
    images, offset = train.to_float(), 0
    if label is not None:
        lo, hi = train.class_range(int(label))
        images, offset = images[lo:hi], lo
    x = image.unsqueeze(0).float()
    if index is not None:
        ids, dist, fam = nearest_patches_index(x, index, k, machine, n, None if label is None else (offset, offset + len(images)),
                                               retrieval=retrieval)
    else:
        ids, dist, fam = nearest_patches(x, images, k, machine, n)
        ids = torch.where(ids >= 0, ids + offset * h * w, ids)
    flat = pixels[:, 0] * w + pixels[:, 1]
    ids, dist = ids[0, flat].numpy(), dist[0, flat].numpy()
    img = np.where(ids >= 0, ids // (h * w), -1)
    q = np.where(ids >= 0, ids % (h * w), 0)
    lab = np.where(img >= 0, train.labels.numpy()[np.clip(img, 0, None)], -1)
    fams = [FAMILIES[int(v)] for v in fam.numpy()[flat]]
    return QueryResult(k, machine.value, pixels, img, q // w, q % w, lab, fams, dist)


def check_size_known(k: int, height: int, width: int, machine: Machine | str) -> None:
    """A window size the machine can use on this image (raises otherwise)."""
    check_patch_size(k)
    if k > 2 * max(height, width) - 1:
        raise PatchdbError(f"patch size {k} is larger than twice the {height}x{width} image; use a smaller --size")
    geometry(Machine.parse(machine), k, height, width)


make_callable(__name__)  # patchdb.attribute(...) calls the function above
