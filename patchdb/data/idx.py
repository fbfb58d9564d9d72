"""MNIST-style IDX files (MNIST, Fashion-MNIST), gzipped or not, read with bounded reads."""

from __future__ import annotations

import gzip
from pathlib import Path
from zlib import error as zlib_error

import numpy as np

from ..errors import PatchdbError, PatchdbFileError
from .base import (
    CLASS_NAMES,
    MAX_BYTES_ENV,
    TV_FOLDER,
    Raw,
    Selector,
    download_torchvision,
    labels_and_names,
    max_bytes,
    too_big,
)

_SUBDIRS = {"mnist": ("mnist", "mnist-t10k"), "fashion-mnist": ("fashion-mnist",)}
_IDX_PREFIX = {"train": "train", "test": "t10k"}
#: First ten labels of the label files of MNIST and Fashion-MNIST (file order): enough to tell the four
#: files apart, so that ``--dataset mnist`` over Fashion-MNIST files is refused instead of mislabelled.
_KNOWN_LABEL_STARTS = {
    (5, 0, 4, 1, 9, 2, 1, 3, 1, 4): ("mnist", "train"),
    (7, 2, 1, 0, 4, 1, 4, 9, 5, 9): ("mnist", "test"),
    (9, 0, 0, 3, 0, 2, 7, 2, 5, 5): ("fashion-mnist", "train"),
    (9, 2, 1, 1, 6, 1, 4, 6, 5, 7): ("fashion-mnist", "test"),
}
_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzipped if it ends in ``.gz``) into a read-only numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    cap = max_bytes()
    try:
        with opener(path, "rb") as f:
            data = f.read(cap + 1)  # bounded: a gzip bomb stops here
    except (OSError, EOFError, zlib_error) as e:
        raise PatchdbError(f"cannot read IDX file {path} ({e}): re-download it") from e
    if len(data) > cap:
        raise too_big(f"IDX file {path} (decompressed)", len(data), cap, MAX_BYTES_ENV)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise PatchdbError(f"{path} is not an IDX file (bad magic number): re-download it")
    ndim = data[3]
    dims = np.frombuffer(data, ">u4", ndim, offset=4).astype(np.int64)
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    offset = 4 + 4 * ndim
    count = int(np.prod(dims))
    if len(data) != offset + count * dtype.itemsize:
        raise PatchdbError(
            f"{path} is truncated or corrupt (header says {tuple(dims)}, "
            f"{len(data) - offset} data bytes): re-download it"
        )
    return np.frombuffer(data, dtype, count, offset).reshape(tuple(dims))


def _idx_names(split: str) -> tuple[str, str]:
    prefix = _IDX_PREFIX[split]
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def idx_dirs(root: Path, name: str | None = None) -> list[Path]:
    """Folders searched for IDX files: root, torchvision's raw/ folders, named sub-folders."""
    tv = [TV_FOLDER[name]] if name else list(TV_FOLDER.values())
    subs = list(_SUBDIRS.get(name, ())) if name else []
    dirs = [root] + [root / t / "raw" for t in tv]
    for s in subs:
        dirs += [root / s] + [root / s / t / "raw" for t in tv]
    return dirs


def find_idx(dirs: list[Path], split: str) -> tuple[Path, Path] | None:
    images, labels = _idx_names(split)
    for d in dirs:
        for ext in (".gz", ""):
            pair = (d / (images + ext), d / (labels + ext))
            if pair[0].is_file() and pair[1].is_file():
                return pair
    return None


def fail_if_other_split(dirs: list[Path], split: str, what: str) -> None:
    other = "test" if split == "train" else "train"
    found = find_idx(dirs, other)
    if found is not None:
        raise PatchdbFileError(
            f"{what} has IDX files for the {other} split only ({found[0].parent}): "
            f"pass --split {other}"
        )


def load_idx(
    images_path: Path, labels_path: Path, select: Selector, names: tuple[str, ...] | None,
    expect: str | None = None,
) -> Raw:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim not in (3, 4) or labels.ndim != 1 or len(images) != len(labels):
        raise PatchdbError(
            f"{images_path} {images.shape} and {labels_path} {labels.shape} do not match: "
            "use an images file and the labels file of the same split"
        )
    if images.dtype != np.uint8 or not np.issubdtype(labels.dtype, np.integer):
        raise PatchdbError(f"{images_path} holds {images.dtype} pixels and {labels.dtype} labels; patchdb reads "
                           "uint8 pixels and integer labels (MNIST-style IDX files)")
    known = _KNOWN_LABEL_STARTS.get(tuple(int(v) for v in labels[:10]))
    if expect is not None and known is not None and known[0] != expect:
        raise PatchdbError(f"{labels_path} holds the {known[0]} {known[1]} labels, not {expect}'s: pass "
                           f"--dataset {known[0]}, or point --root at the {expect} files")
    labels, names = labels_and_names(labels.astype(np.int64), names, labels_path)
    ids = select(labels, len(names))
    picked = images[ids]
    picked = picked[..., None] if picked.ndim == 3 else picked
    return Raw(picked.astype(np.uint8, copy=False), labels[ids], names,
                str(images_path.resolve()), "idx")


def load_mnist_like(name: str, root: Path, split: str, download: bool, select: Selector) -> Raw:
    dirs = idx_dirs(root, name)
    found = find_idx(dirs, split)
    if found is None and download:
        download_torchvision(name, root, split)
        found = find_idx(dirs, split)
    if found is None:
        fail_if_other_split(dirs, split, f"{name} root {root}")
        looked = ", ".join(str(d) for d in dirs)
        raise PatchdbFileError(
            f"{name} {split} files ({_idx_names(split)[0]}.gz) not found; looked in {looked}: "
            f"pass --download to fetch them, or --root DIR holding the IDX files"
        )
    return load_idx(*found, select, CLASS_NAMES[name], expect=name)
