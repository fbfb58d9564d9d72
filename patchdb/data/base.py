"""What every dataset reader shares: the raw result before sorting and resizing, the class filter,
class names, torchvision downloads, and the caps on what a user's file may make patchdb decode."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import PatchdbError, PatchdbFileError

CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "mnist": tuple(str(i) for i in range(10)),
    "fashion-mnist": (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
    "cifar10": (
        "airplane", "automobile", "bird", "cat", "deer",
        "dog", "frog", "horse", "ship", "truck",
    ),
}
TV_FOLDER = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
SPLITS = ("train", "test")
SPLIT_DIRS = {"train", "test", "val", "valid", "validation"}
PATH_KINDS = (
    "a .zip of an image folder, a folder with one sub-folder of images per class, "
    "a folder of MNIST-style IDX .gz files, or an .npz with 'images' and 'labels'"
)
#: Caps on what a user's file may make patchdb decode (issue 29: bombs and giant images are one line,
#: not gigabytes). Raise them with these environment variables.
MAX_PIXELS_ENV = "PATCHDB_MAX_PIXELS"  # decoded pixels of one image (default 2**24, 16.8 megapixels)
MAX_BYTES_ENV = "PATCHDB_MAX_BYTES"  # one archive member, one decompressed file, all decoded images (default 1 GiB)
_DEFAULT_MAX_PIXELS = 2**24
_DEFAULT_MAX_BYTES = 2**30


def _cap(env: str, default: int) -> int:
    text = os.environ.get(env, "").strip()
    if not text:
        return default
    try:
        value = int(float(text))
    except ValueError:
        raise PatchdbError(f"${env}={text!r} is not a number; set it to a count such as {default}") from None
    if value < 1:
        raise PatchdbError(f"${env}={text!r} must be positive; unset it for the default {default}")
    return value


def max_pixels() -> int:
    """Most pixels one decoded image may have (``$PATCHDB_MAX_PIXELS``)."""
    return _cap(MAX_PIXELS_ENV, _DEFAULT_MAX_PIXELS)


def max_bytes() -> int:
    """Most bytes of one archive member, one decompressed file, or all decoded images (``$PATCHDB_MAX_BYTES``)."""
    return _cap(MAX_BYTES_ENV, _DEFAULT_MAX_BYTES)


def image_file_cap() -> int:
    """Most bytes of one image file: 4 bytes per allowed pixel and 1 MiB of headers (never more than max_bytes)."""
    return min(4 * max_pixels() + 2**20, max_bytes())


def too_big(what: str, size: int, cap: int, env: str) -> PatchdbError:
    return PatchdbError(f"{what} is {size:,} bytes, over the {cap:,} patchdb reads (a decompression bomb?); "
                        f"if it is genuine, raise ${env}")


class Raw(NamedTuple):
    """Selected images before sorting and resizing."""

    images: np.ndarray  # uint8 (n, H, W, C), file order
    labels: np.ndarray  # int64 (n,)
    classes: tuple[str, ...]
    source: str
    format: str
    split: str | None = ""  # "" = the requested split; None = the source has no splits


Selector = Callable[[np.ndarray, int], np.ndarray]


def download_torchvision(name: str, root: Path, split: str) -> object:
    """Download ``name`` with torchvision into ``root``; returns the torchvision dataset."""
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[name]
    try:
        root.mkdir(parents=True, exist_ok=True)
        return cls(str(root), train=split == "train", download=True)
    except Exception as e:  # network or checksum failures come in many types
        reason = " ".join(str(e).split()) or type(e).__name__
        raise PatchdbFileError(
            f"downloading {name} into {root} failed ({reason}): check the network, "
            "or pass --root DIR holding the files"
        ) from e


def labels_and_names(
    labels: np.ndarray, names: tuple[str, ...] | None, path: Path
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Labels 0..K-1 and the K class names.

    With ``names`` (a named dataset, an npz ``classes`` array) every label must index one. Without,
    the distinct label values are compacted in increasing order and name their classes (labels
    0..K-1 keep their numbers), so a label of 10**9 costs one class, not a billion names (issue 29).
    """
    if len(labels) == 0:
        raise PatchdbError(f"{path} holds no images: pass a file with at least one image")
    if names is not None:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= len(names):
            raise PatchdbError(f"{path} has labels {lo}..{hi} but {len(names)} class names: labels must be "
                               f"0..{len(names) - 1}; fix the labels or the class names")
        return labels, names
    values, inverse = np.unique(labels, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64), tuple(str(int(v)) for v in values)
