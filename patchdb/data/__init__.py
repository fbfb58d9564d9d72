"""Datasets of training images, docs/math.md "Images and noise".

:func:`load_dataset` reads a named dataset (the embedded MNIST subset, MNIST, Fashion-MNIST,
CIFAR-10) or a path (an image folder, a zip of one, a folder of IDX files, an ``.npz``) into a
:class:`Dataset`: uint8 pixels ``(N, C, H, W)`` ordered by class, with int64 labels. The 28x28
sources are brought to ``size`` x ``size`` by an explicit, recorded policy (bilinear resize as in
the paper's code, zero padding, or none). ``Dataset.to_float`` gives the ``[-1, 1]`` floats the
score machines use; :func:`check_images` validates such tensors.

One module per source format: :mod:`.idx` (MNIST-style IDX), :mod:`.cifar` (CIFAR-10 batches),
:mod:`.npz`, :mod:`.folder` (image folders and zips, read in place); :mod:`.dataset` holds the type,
:mod:`.base` what the readers share (the raw result, class names, caps on decoded sizes).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import PatchdbError
from .base import (  # re-exported
    CLASS_NAMES,
    MAX_BYTES_ENV,
    MAX_PIXELS_ENV,
    PATH_KINDS,
    SPLITS,
    Raw,
    Selector,
    max_bytes,
    max_pixels,
)
from .cifar import load_cifar10, load_cifar_batches
from .dataset import Dataset, as_label, check_images
from .folder import DirTree, ZipTree, load_image_folder
from .idx import fail_if_other_split, find_idx, idx_dirs, load_idx, load_mnist_like
from .npz import load_npz

__all__ = [
    "MAX_BYTES_ENV", "MAX_PIXELS_ENV", "Dataset", "check_images", "dataset_family", "dataset_names", "load_dataset",
    "max_bytes", "max_pixels",
]
_NAMES = ("embedded", "mnist", "fashion-mnist", "cifar10")
_ALIASES = {
    "default": "embedded",
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
}
_POLICIES = ("resize", "pad", "none")
_EMBEDDED_FILE = "mnist2000.npz"
#: Images smaller than this share of the target size are refused by the resize policy (a 1x1 image
#: blown up to 32x32 is made up, not resized): pad them or keep them with policy "none".
_MIN_RESIZE_SHARE = 0.25


def dataset_family(name: str) -> str | None:
    """The named dataset a :attr:`Dataset.name` is (the embedded set is MNIST), or None for paths."""
    key = _canonical(name) if isinstance(name, str) and ":" not in name else None
    return "mnist" if key == "embedded" else key


def dataset_names() -> tuple[str, ...]:
    """Names :func:`load_dataset` accepts besides paths."""
    return _NAMES


def load_dataset(
    name: str | os.PathLike | None = None,
    *,
    root: str | Path | None = None,
    split: str = "train",
    download: bool = False,
    limit: int | None = None,
    classes: Sequence[int] | None = None,
    size: int = 32,
    policy: str = "resize",
    progress: bool | None = None,
) -> Dataset:
    """Load a dataset of training images.

    Parameters
    ----------
    name : str or path, optional
        ``None`` or ``"embedded"`` (2,000 MNIST test digits shipped with patchdb), ``"mnist"``,
        ``"fashion-mnist"``, ``"cifar10"``, or a path: a ``.zip`` of an image folder, a folder
        of class sub-folders of images, a folder of IDX ``.gz`` files, or an ``.npz`` with
        ``images`` and ``labels``.
    root : str or Path, optional
        Where a named dataset lives (default: ``$PATCHDB_DATA``, else
        ``~/.cache/patchdb/data/<name>``). Ignored for the embedded set and for paths.
    split : {"train", "test"}
        Which split to read (ignored by the embedded set, which is MNIST test images, and by
        ``.npz`` files and image folders without ``train``/``test`` sub-folders).
    download : bool
        Fetch a missing named dataset with torchvision.
    limit : int, optional
        Keep the first ``limit`` images (in file order, after the class filter). In an image
        folder or zip, file order takes the classes in turn (the first file of every class, then
        the second, ...), so a limit keeps the classes balanced.
    classes : sequence of int, optional
        Labels to keep.
    size : int
        Target height and width.
    policy : {"resize", "pad", "none"}
        How images of another size reach ``size``: bilinear resize (PIL, per image, uint8, as
        the paper's torchvision transform), centred zero padding, or keep the native size.
    progress : bool, optional
        Progress bar while decoding image files; default: only on a terminal for big folders.

    Returns
    -------
    Dataset
        Images ``(N, C, size, size)`` uint8 ordered by class, with provenance in ``meta``.

    Raises
    ------
    PatchdbError
        On bad arguments or unusable files; :class:`PatchdbFileError` when files are missing.
    """
    _check_args(split, limit, classes, size, policy)
    key = _canonical(name)
    display = key or str(name)
    select = _make_selector(display, classes, limit)
    if key == "embedded":
        raw = _load_embedded(select)
    elif key is not None:
        raw = _load_named(key, root, split, download, select, progress)
    else:
        raw, display = _load_user_path(name, split, select, progress)
    return _finish(raw, display, split=split, size=size, policy=policy, limit=limit,
                   classes=classes)


def _canonical(name: str | os.PathLike | None) -> str | None:
    """Canonical dataset name, or ``None`` when ``name`` is not a known name."""
    if name is None:
        return "embedded"
    if not isinstance(name, str):
        return None
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    return key if key in _NAMES else None


def _check_args(
    split: str, limit: int | None, classes: Sequence[int] | None, size: int, policy: str
) -> None:
    if split not in SPLITS:
        raise PatchdbError(f"split {split!r} is not one of {', '.join(SPLITS)}: pick one of them")
    if policy not in _POLICIES:
        raise PatchdbError(
            f"resize policy {policy!r} is not one of {', '.join(_POLICIES)}: pick one of them"
        )
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise PatchdbError(f"size {size!r} is not a positive integer: pass e.g. size=32")
    if limit is not None and (
        isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1
    ):
        raise PatchdbError(f"limit {limit!r} is not a positive integer: pass e.g. limit=1000")
    if classes is not None:
        if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
            raise PatchdbError(f"classes {classes!r} is not a list of labels: pass e.g. [0, 1]")
        if len(classes) == 0:
            raise PatchdbError("classes is an empty list: pass at least one label, or None for all")
        for c in classes:
            as_label(c, "every entry of classes")


def _make_selector(what: str, classes: Sequence[int] | None, limit: int | None) -> Selector:
    """Build ``select(labels, num_classes) -> ids``: class filter, then limit, in file order."""
    wanted = None if classes is None else [int(c) for c in classes]

    def select(labels: np.ndarray, num_classes: int) -> np.ndarray:
        ids = np.arange(len(labels))
        if wanted is not None:
            for c in wanted:
                if not 0 <= c < num_classes:
                    raise PatchdbError(
                        f"label {c} is out of range 0..{num_classes - 1} for {what}: "
                        f"pass labels between 0 and {num_classes - 1}"
                    )
            ids = np.flatnonzero(np.isin(labels, wanted))
        if limit is not None:
            ids = ids[:limit]
        if ids.size == 0:
            raise PatchdbError(
                f"no images of classes {wanted} in {what}: pick classes that are present"
            )
        return ids

    return select


def _finish(
    raw: Raw, name: str, *, split: str, size: int, policy: str, limit: int | None,
    classes: Sequence[int] | None,
) -> Dataset:
    """Sort by class, apply the size policy and wrap in a :class:`Dataset`."""
    order = np.argsort(raw.labels, kind="stable")
    images = _fit_size(raw.images[order], size, policy, name)
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    y = torch.from_numpy(raw.labels[order].astype(np.int64))
    meta = {
        "source": raw.source,
        "format": raw.format,
        "split": split if raw.split == "" else raw.split,
        "policy": policy,
        "original_size": [int(raw.images.shape[1]), int(raw.images.shape[2])],
        "size": [int(x.shape[2]), int(x.shape[3])],
        "limit": None if limit is None else int(limit),
        "classes": None if classes is None else [int(c) for c in classes],
        "count": len(y),
        "fingerprint": None,
    }
    ds = Dataset(x, y, raw.classes, name, meta)
    meta["fingerprint"] = ds.fingerprint()
    return ds


def _fit_size(images: np.ndarray, size: int, policy: str, what: str) -> np.ndarray:
    """Bring uint8 ``(n, H, W, C)`` images to ``size`` x ``size`` by ``policy``."""
    n, h, w, c = images.shape
    if policy == "none" or (h, w) == (size, size):
        return images
    if policy == "pad":
        if h > size or w > size:
            raise PatchdbError(
                f"{what} images are {h}x{w}, larger than size {size}: cannot pad; "
                f"use policy 'resize' or size={max(h, w)}"
            )
        top, left = (size - h) // 2, (size - w) // 2
        out = np.zeros((n, size, size, c), np.uint8)
        out[:, top:top + h, left:left + w] = images
        return out
    if h != w:
        raise PatchdbError(
            f"{what} images are {h}x{w}, not square: resizing to {size}x{size} would distort "
            "them; use policy 'none' or crop them to a square first"
        )
    if h < _MIN_RESIZE_SHARE * size:
        raise PatchdbError(
            f"{what} images are {h}x{w}: resizing them to {size}x{size} would make up "
            f"{1 - h * w / size**2:.0%} of the pixels; use --policy pad (zero padding) or none"
        )
    return _resize_bilinear(images, size)


def _resize_bilinear(images: np.ndarray, size: int) -> np.ndarray:
    """PIL bilinear resize of each uint8 ``(H, W, C)`` image (torchvision ``Resize`` on PIL)."""
    n, _, _, c = images.shape
    out = np.empty((n, size, size, c), np.uint8)
    planes = images[..., 0] if c == 1 else images
    target = out[..., 0] if c == 1 else out
    for i in range(n):
        target[i] = np.asarray(Image.fromarray(planes[i]).resize((size, size), Image.BILINEAR))
    return out


def _load_embedded(select: Selector) -> Raw:
    """The 2,000 MNIST test digits shipped as ``patchdb/data/mnist2000.npz``."""
    ref = resources.files(__name__).joinpath(_EMBEDDED_FILE)
    with ref.open("rb") as f, np.load(f) as z:
        images, labels = z["images"], z["labels"].astype(np.int64)
    ids = select(labels, 10)
    return Raw(images[ids][..., None], labels[ids], CLASS_NAMES["mnist"],
                f"patchdb.data/{_EMBEDDED_FILE} (MNIST test split, first 2000)", "npz", "test")


def _default_root(name: str) -> Path:
    env = os.environ.get("PATCHDB_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "patchdb" / "data" / name


def _load_named(
    name: str, root: str | Path | None, split: str, download: bool, select: Selector,
    progress: bool | None,
) -> Raw:
    root = _default_root(name) if root is None else Path(root).expanduser()
    if root.is_file():
        return _load_path(root, split, select, progress, CLASS_NAMES.get(name))
    if name == "cifar10":
        return load_cifar10(root, split, download, select, progress)
    return load_mnist_like(name, root, split, download, select)


def _load_user_path(
    name: str | os.PathLike, split: str, select: Selector, progress: bool | None
) -> tuple[Raw, str]:
    path = Path(name).expanduser()
    if not path.exists():
        raise PatchdbError(
            f"unknown dataset {str(name)!r}: not one of {', '.join(_NAMES)} and no such path; "
            f"pass a known name or {PATH_KINDS}"
        )
    raw = _load_path(path, split, select, progress, None)
    return raw, f"{raw.format}:{name}"


def _load_path(
    path: Path, split: str, select: Selector, progress: bool | None,
    names: tuple[str, ...] | None,
) -> Raw:
    """Load a zip, npz or folder; ``names`` overrides the class names of IDX/npz data."""
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".zip":
            return load_image_folder(ZipTree(path), split, select, progress)
        if suffix == ".npz":
            return load_npz(path, select, names)
        raise PatchdbError(f"cannot read {path}: not a .zip or .npz; pass {PATH_KINDS}")
    found = find_idx(idx_dirs(path), split)
    if found is not None:
        return load_idx(*found, select, names)
    fail_if_other_split(idx_dirs(path), split, str(path))
    if (path / "cifar-10-batches-py").is_dir():
        return load_cifar_batches(path, split, False, select)
    return load_image_folder(DirTree(path), split, select, progress)
