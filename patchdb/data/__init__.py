"""Datasets of training images, SPEC.md "Images and noise".

:func:`load_dataset` reads a named dataset (the embedded MNIST subset, MNIST, Fashion-MNIST,
CIFAR-10) or a path (an image folder, a zip of one, a folder of IDX files, an ``.npz``) into a
:class:`Dataset`: uint8 pixels ``(N, C, H, W)`` ordered by class, with int64 labels. The 28x28
sources are brought to ``size`` x ``size`` by an explicit, recorded policy (bilinear resize as in
the paper's code, zero padding, or none). ``Dataset.to_float`` gives the ``[-1, 1]`` floats the
score machines use; :func:`check_images` validates such tensors.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import sys
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import NamedTuple
from zlib import error as zlib_error

import numpy as np
import torch
from PIL import Image

from ..errors import PatchdbError, PatchdbFileError

__all__ = ["Dataset", "check_images", "dataset_names", "load_dataset"]

_NAMES = ("embedded", "mnist", "fashion-mnist", "cifar10")
_ALIASES = {
    "default": "embedded",
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
}
_CLASS_NAMES: dict[str, tuple[str, ...]] = {
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
# torchvision class whose raw/ folder holds the IDX files, and extra sub-folder names searched.
_TV_FOLDER = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_SUBDIRS = {"mnist": ("mnist", "mnist-t10k"), "fashion-mnist": ("fashion-mnist",)}
_IDX_PREFIX = {"train": "train", "test": "t10k"}
_SPLITS = ("train", "test")
_SPLIT_DIRS = {"train", "test", "val", "valid", "validation"}
_POLICIES = ("resize", "pad", "none")
_IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "F"}
_EMBEDDED_FILE = "mnist2000.npz"
_PROGRESS_MIN = 5000  # auto progress bar only for folders with at least this many images
_PATH_KINDS = (
    "a .zip of an image folder, a folder with one sub-folder of images per class, "
    "a folder of MNIST-style IDX .gz files, or an .npz with 'images' and 'labels'"
)


#: Caps on what a user's file may make patchdb decode (issue 29: bombs and giant images are one line,
#: not gigabytes). Raise them with these environment variables.
MAX_PIXELS_ENV = "PATCHDB_MAX_PIXELS"  # decoded pixels of one image (default 2**24, 16.8 megapixels)
MAX_BYTES_ENV = "PATCHDB_MAX_BYTES"  # one archive member, one decompressed file, all decoded images (default 1 GiB)
_DEFAULT_MAX_PIXELS = 2**24
_DEFAULT_MAX_BYTES = 2**30
#: Images smaller than this share of the target size are refused by the resize policy (a 1x1 image
#: blown up to 32x32 is made up, not resized): pad them or keep them with policy "none".
_MIN_RESIZE_SHARE = 0.25
#: First ten labels of the label files of MNIST and Fashion-MNIST (file order): enough to tell the four
#: files apart, so that ``--dataset mnist`` over Fashion-MNIST files is refused instead of mislabelled.
_KNOWN_LABEL_STARTS = {
    (5, 0, 4, 1, 9, 2, 1, 3, 1, 4): ("mnist", "train"),
    (7, 2, 1, 0, 4, 1, 4, 9, 5, 9): ("mnist", "test"),
    (9, 0, 0, 3, 0, 2, 7, 2, 5, 5): ("fashion-mnist", "train"),
    (9, 2, 1, 1, 6, 1, 4, 6, 5, 7): ("fashion-mnist", "test"),
}


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


def _image_file_cap() -> int:
    """Most bytes of one image file: 4 bytes per allowed pixel and 1 MiB of headers (never more than max_bytes)."""
    return min(4 * max_pixels() + 2**20, max_bytes())


def _too_big(what: str, size: int, cap: int, env: str) -> PatchdbError:
    return PatchdbError(f"{what} is {size:,} bytes, over the {cap:,} patchdb reads (a decompression bomb?); "
                        f"if it is genuine, raise ${env}")


def dataset_family(name: str) -> str | None:
    """The named dataset a :attr:`Dataset.name` is (the embedded set is MNIST), or None for paths."""
    key = _canonical(name) if isinstance(name, str) and ":" not in name else None
    return "mnist" if key == "embedded" else key


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Dataset:
    """Training images ordered by class.

    Attributes
    ----------
    images : torch.Tensor
        uint8 ``(N, C, H, W)``, contiguous, stably sorted by label so each class is a
        contiguous range of ids.
    labels : torch.Tensor
        int64 ``(N,)``, non-decreasing, each in ``[0, len(classes))``.
    classes : tuple of str
        Class names; index = label. Classes filtered out at load time keep their name.
    name : str
        ``"embedded"``, ``"mnist"``, ``"fashion-mnist"``, ``"cifar10"``, or ``"<kind>:<path>"``
        with kind ``folder``, ``zip``, ``idx`` or ``npz``.
    meta : dict
        JSON-serialisable provenance: source, format, split, policy, original/final size,
        limit, class filter, count, fingerprint.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    name: str
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        x, y = self.images, self.labels
        if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.dim() != 4:
            raise PatchdbError(
                f"Dataset images must be a uint8 tensor (N, C, H, W), got "
                f"{_describe(x)}: convert pixels to uint8 0..255 first"
            )
        if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.shape != (len(x),):
            raise PatchdbError(
                f"Dataset labels must be an int64 tensor of shape ({len(x)},), got "
                f"{_describe(y)}: pass one integer label per image"
            )
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        object.__setattr__(self, "images", x.contiguous())
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(self.classes)):
            raise PatchdbError(
                f"Dataset labels span {int(y.min())}..{int(y.max())} but there are "
                f"{len(self.classes)} classes: pass a class name for every label"
            )
        if len(y) > 1 and not bool((y[1:] >= y[:-1]).all()):
            raise PatchdbError(
                "Dataset labels are not sorted: order images by class "
                "(stable sort by label), as load_dataset does"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of class names (including classes filtered out at load time)."""
        return len(self.classes)

    @property
    def channels(self) -> int:
        """Number of channels ``C`` (1 for grayscale, 3 for RGB)."""
        return int(self.images.shape[1])

    @property
    def height(self) -> int:
        """Image height ``H`` in pixels."""
        return int(self.images.shape[2])

    @property
    def width(self) -> int:
        """Image width ``W`` in pixels."""
        return int(self.images.shape[3])

    def to_float(
        self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Pixels as floats ``pixel / 127.5 - 1`` in ``[-1, 1]``, shape ``(N, C, H, W)``.

        Parameters
        ----------
        dtype : torch.dtype
            A floating dtype.
        device : torch.device or str, optional
            Target device; the conversion runs there (the uint8 tensor is moved first).
        """
        if not dtype.is_floating_point:
            raise PatchdbError(f"to_float needs a floating dtype, got {dtype}: use torch.float32")
        x = self.images.to(device=device).to(dtype)
        return x.div_(127.5).sub_(1.0)

    def fingerprint(self) -> str:
        """SHA-256 hex digest of the shape, uint8 pixels and int64 labels (stable across runs)."""
        key = (self.images._version, self.labels._version)
        cached = self.__dict__.get("_fingerprint")
        if cached is not None and cached[0] == key:
            return cached[1]
        digest = _fingerprint(self.images, self.labels)
        self.__dict__["_fingerprint"] = (key, digest)
        return digest

    def class_range(self, label: int) -> tuple[int, int]:
        """Ids ``[start, stop)`` of the images of class ``label``.

        Raises
        ------
        PatchdbError
            If ``label`` is out of range or the dataset holds no image of that class.
        """
        label = _as_label(label, "class_range label")
        if not 0 <= label < self.num_classes:
            raise PatchdbError(
                f"label {label} is out of range 0..{self.num_classes - 1} for {self.name}: "
                f"pass a label between 0 and {self.num_classes - 1}"
            )
        y = self.labels.cpu()
        start = int(torch.searchsorted(y, label, right=False))
        stop = int(torch.searchsorted(y, label, right=True))
        if start == stop:
            present = sorted(set(y.unique().tolist()))
            raise PatchdbError(
                f"class {label} ({self.classes[label]}) has no images in {self.name} "
                f"(present: {present}): load it without a class filter that drops it"
            )
        return start, stop


def _fingerprint(images: torch.Tensor, labels: torch.Tensor) -> str:
    h = hashlib.sha256()
    h.update(f"patchdb-dataset-v1 {tuple(images.shape)}\n".encode())
    h.update(np.ascontiguousarray(images.detach().cpu().numpy()))
    h.update(np.ascontiguousarray(labels.detach().cpu().numpy().astype("<i8")))
    return h.hexdigest()


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


def _as_label(value: object, what: str) -> int:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise PatchdbError(f"{what} must be an integer class label, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------
# Public helpers
# --------------------------------------------------------------------------------------------


def dataset_names() -> tuple[str, ...]:
    """Names :func:`load_dataset` accepts besides paths."""
    return _NAMES


def check_images(x: torch.Tensor, what: str = "images", *, tol: float = 1e-2) -> None:
    """Check that ``x`` is a finite float ``(N, C, H, W)`` tensor with values in ``[-1, 1]``.

    Parameters
    ----------
    x : torch.Tensor
        Images scaled as ``pixel / 127.5 - 1``.
    what : str
        Name used in the error message.
    tol : float
        Values within ``tol`` outside ``[-1, 1]`` are accepted.

    Raises
    ------
    PatchdbError
        On a non-tensor, non-float dtype, a shape that is not 4-D, NaN/inf, or values outside
        ``[-1 - tol, 1 + tol]``.
    """
    if not isinstance(x, torch.Tensor):
        raise PatchdbError(f"{what} must be a torch tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise PatchdbError(
            f"{what} has dtype {x.dtype}, not float: scale uint8 pixels with "
            "pixel/127.5 - 1 (Dataset.to_float)"
        )
    if x.dim() != 4:
        raise PatchdbError(
            f"{what} has shape {tuple(x.shape)}, expected 4-D (N, C, H, W): "
            "add a batch dimension with x[None]"
        )
    if x.numel() == 0:
        return
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise PatchdbError(f"{what} contains {bad} NaN or infinite values: check how it was made")
    lo, hi = (float(v) for v in torch.aminmax(x))
    if lo < -1.0 - tol or hi > 1.0 + tol:
        raise PatchdbError(
            f"{what} has values in [{lo:.4g}, {hi:.4g}], outside [-1, 1]: "
            "scale pixels with pixel/127.5 - 1 (Dataset.to_float)"
        )


# --------------------------------------------------------------------------------------------
# load_dataset
# --------------------------------------------------------------------------------------------


class _Raw(NamedTuple):
    """Selected images before sorting and resizing."""

    images: np.ndarray  # uint8 (n, H, W, C), file order
    labels: np.ndarray  # int64 (n,)
    classes: tuple[str, ...]
    source: str
    format: str
    split: str | None = ""  # "" = the requested split; None = the source has no splits


_Selector = Callable[[np.ndarray, int], np.ndarray]


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
    if split not in _SPLITS:
        raise PatchdbError(f"split {split!r} is not one of {', '.join(_SPLITS)}: pick one of them")
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
            _as_label(c, "every entry of classes")


def _make_selector(what: str, classes: Sequence[int] | None, limit: int | None) -> _Selector:
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
    raw: _Raw, name: str, *, split: str, size: int, policy: str, limit: int | None,
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


# --------------------------------------------------------------------------------------------
# Size policy
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Embedded, named and path sources
# --------------------------------------------------------------------------------------------


def _load_embedded(select: _Selector) -> _Raw:
    """The 2,000 MNIST test digits shipped as ``patchdb/data/mnist2000.npz``."""
    ref = resources.files(__name__).joinpath(_EMBEDDED_FILE)
    with ref.open("rb") as f, np.load(f) as z:
        images, labels = z["images"], z["labels"].astype(np.int64)
    ids = select(labels, 10)
    return _Raw(images[ids][..., None], labels[ids], _CLASS_NAMES["mnist"],
                f"patchdb.data/{_EMBEDDED_FILE} (MNIST test split, first 2000)", "npz", "test")


def _default_root(name: str) -> Path:
    env = os.environ.get("PATCHDB_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "patchdb" / "data" / name


def _load_named(
    name: str, root: str | Path | None, split: str, download: bool, select: _Selector,
    progress: bool | None,
) -> _Raw:
    root = _default_root(name) if root is None else Path(root).expanduser()
    if root.is_file():
        return _load_path(root, split, select, progress, _CLASS_NAMES.get(name))
    if name == "cifar10":
        return _load_cifar10(root, split, download, select, progress)
    return _load_mnist_like(name, root, split, download, select)


def _load_user_path(
    name: str | os.PathLike, split: str, select: _Selector, progress: bool | None
) -> tuple[_Raw, str]:
    path = Path(name).expanduser()
    if not path.exists():
        raise PatchdbError(
            f"unknown dataset {str(name)!r}: not one of {', '.join(_NAMES)} and no such path; "
            f"pass a known name or {_PATH_KINDS}"
        )
    raw = _load_path(path, split, select, progress, None)
    return raw, f"{raw.format}:{name}"


def _load_path(
    path: Path, split: str, select: _Selector, progress: bool | None,
    names: tuple[str, ...] | None,
) -> _Raw:
    """Load a zip, npz or folder; ``names`` overrides the class names of IDX/npz data."""
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".zip":
            return _load_image_folder(_ZipTree(path), split, select, progress)
        if suffix == ".npz":
            return _load_npz(path, select, names)
        raise PatchdbError(f"cannot read {path}: not a .zip or .npz; pass {_PATH_KINDS}")
    found = _find_idx(_idx_dirs(path), split)
    if found is not None:
        return _load_idx(*found, select, names)
    _fail_if_other_split(_idx_dirs(path), split, str(path))
    if (path / "cifar-10-batches-py").is_dir():
        return _load_cifar_batches(path, split, False, select)
    return _load_image_folder(_DirTree(path), split, select, progress)


# --- IDX (MNIST, Fashion-MNIST) -----------------------------------------------------------

_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzipped if it ends in ``.gz``) into a read-only numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    cap = max_bytes()
    try:
        with opener(path, "rb") as f:
            data = f.read(cap + 1)  # bounded: a gzip bomb stops here
    except (OSError, EOFError, zlib_error) as e:
        raise PatchdbError(f"cannot read IDX file {path} ({e}): re-download it") from e
    if len(data) > cap:
        raise _too_big(f"IDX file {path} (decompressed)", len(data), cap, MAX_BYTES_ENV)
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


def _idx_dirs(root: Path, name: str | None = None) -> list[Path]:
    """Folders searched for IDX files: root, torchvision's raw/ folders, named sub-folders."""
    tv = [_TV_FOLDER[name]] if name else list(_TV_FOLDER.values())
    subs = list(_SUBDIRS.get(name, ())) if name else []
    dirs = [root] + [root / t / "raw" for t in tv]
    for s in subs:
        dirs += [root / s] + [root / s / t / "raw" for t in tv]
    return dirs


def _find_idx(dirs: list[Path], split: str) -> tuple[Path, Path] | None:
    images, labels = _idx_names(split)
    for d in dirs:
        for ext in (".gz", ""):
            pair = (d / (images + ext), d / (labels + ext))
            if pair[0].is_file() and pair[1].is_file():
                return pair
    return None


def _fail_if_other_split(dirs: list[Path], split: str, what: str) -> None:
    other = "test" if split == "train" else "train"
    found = _find_idx(dirs, other)
    if found is not None:
        raise PatchdbFileError(
            f"{what} has IDX files for the {other} split only ({found[0].parent}): "
            f"pass --split {other}"
        )


def _load_idx(
    images_path: Path, labels_path: Path, select: _Selector, names: tuple[str, ...] | None,
    expect: str | None = None,
) -> _Raw:
    images, labels = _read_idx(images_path), _read_idx(labels_path)
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
    labels, names = _labels_and_names(labels.astype(np.int64), names, labels_path)
    ids = select(labels, len(names))
    picked = images[ids]
    picked = picked[..., None] if picked.ndim == 3 else picked
    return _Raw(picked.astype(np.uint8, copy=False), labels[ids], names,
                str(images_path.resolve()), "idx")


def _load_mnist_like(name: str, root: Path, split: str, download: bool, select: _Selector) -> _Raw:
    dirs = _idx_dirs(root, name)
    found = _find_idx(dirs, split)
    if found is None and download:
        _download_torchvision(name, root, split)
        found = _find_idx(dirs, split)
    if found is None:
        _fail_if_other_split(dirs, split, f"{name} root {root}")
        looked = ", ".join(str(d) for d in dirs)
        raise PatchdbFileError(
            f"{name} {split} files ({_idx_names(split)[0]}.gz) not found; looked in {looked}: "
            f"pass --download to fetch them, or --root DIR holding the IDX files"
        )
    return _load_idx(*found, select, _CLASS_NAMES[name], expect=name)


def _download_torchvision(name: str, root: Path, split: str) -> object:
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


# --- CIFAR-10 -------------------------------------------------------------------------------


def _load_cifar10(
    root: Path, split: str, download: bool, select: _Selector, progress: bool | None
) -> _Raw:
    for base in (root, root / "cifar10"):
        if (base / "cifar-10-batches-py").is_dir():
            return _load_cifar_batches(base, split, False, select)
        if (base / "cifar10-jpeg.zip").is_file():
            return _load_image_folder(_ZipTree(base / "cifar10-jpeg.zip"), split, select, progress)
        if (base / "cifar10-jpeg").is_dir():
            return _load_image_folder(_DirTree(base / "cifar10-jpeg"), split, select, progress)
    if root.is_dir() and _DirTree(root).has_images():
        return _load_image_folder(_DirTree(root), split, select, progress)
    if download:
        return _load_cifar_batches(root, split, True, select)
    raise PatchdbFileError(
        f"cifar10 not found in {root} (looked for cifar-10-batches-py, cifar10-jpeg.zip, "
        "cifar10-jpeg/, an image folder): pass --download to fetch it, "
        "or --root pointing at one of those"
    )


def _load_cifar_batches(root: Path, split: str, download: bool, select: _Selector) -> _Raw:
    """torchvision's ``cifar-10-batches-py`` (downloaded first when ``download``)."""
    if download:
        ds = _download_torchvision("cifar10", root, split)
    else:
        import torchvision.datasets as tvd

        try:
            ds = tvd.CIFAR10(str(root), train=split == "train", download=False)
        except RuntimeError as e:
            raise PatchdbFileError(
                f"cannot read cifar-10-batches-py in {root} ({' '.join(str(e).split())}): "
                "pass --download to fetch it again"
            ) from e
    labels = np.asarray(ds.targets, dtype=np.int64)
    ids = select(labels, len(ds.classes))
    return _Raw(np.asarray(ds.data)[ids], labels[ids], tuple(ds.classes),
                f"torchvision:{(root / 'cifar-10-batches-py').resolve()}", "cifar-batches")


# --- npz ------------------------------------------------------------------------------------


def _load_npz(path: Path, select: _Selector, names: tuple[str, ...] | None) -> _Raw:
    try:
        with np.load(path, allow_pickle=False) as z:
            if "images" not in z or "labels" not in z:
                raise PatchdbError(
                    f"{path} has arrays {sorted(z.files)}, not 'images' and 'labels': "
                    "save it with np.savez(path, images=..., labels=...)"
                )
            cap = max_bytes()
            size = sum(info.file_size for info in z.zip.infolist())  # as declared; reads stop there
            if size > cap:
                raise _too_big(f"{path} (its arrays)", size, cap, MAX_BYTES_ENV)
            images, labels = z["images"], z["labels"]
            stored = tuple(str(c) for c in z["classes"]) if "classes" in z else None
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        if isinstance(e, PatchdbError):
            raise
        raise PatchdbError(f"cannot read {path} as .npz ({e}): check the file") from e
    images = _npz_to_nhwc(images, path)
    labels = _npz_labels(labels, len(images), path)
    labels, names = _labels_and_names(labels, names or stored, path)
    ids = select(labels, len(names))
    return _Raw(images[ids], labels[ids], names, str(path.resolve()), "npz", None)


def _labels_and_names(
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


def _npz_to_nhwc(images: np.ndarray, path: Path) -> np.ndarray:
    if images.dtype != np.uint8:
        raise PatchdbError(
            f"{path} images have dtype {images.dtype}, not uint8: store pixels 0..255 "
            "as uint8 (images.astype(np.uint8))"
        )
    if images.ndim == 3:
        return images[..., None]
    if images.ndim == 4 and images.shape[3] in (1, 3):
        return images
    if images.ndim == 4 and images.shape[1] in (1, 3):
        return images.transpose(0, 2, 3, 1)
    raise PatchdbError(
        f"{path} images have shape {images.shape}: expected (N, H, W), (N, H, W, C) or "
        "(N, C, H, W) with C = 1 or 3"
    )


def _npz_labels(labels: np.ndarray, n: int, path: Path) -> np.ndarray:
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise PatchdbError(
            f"{path} labels have shape {labels.shape} and dtype {labels.dtype}: "
            f"expected {n} integer labels, one per image"
        )
    labels = labels.astype(np.int64)
    if n and int(labels.min()) < 0:
        raise PatchdbError(f"{path} has negative label {int(labels.min())}: labels start at 0")
    if n == 0:
        raise PatchdbError(f"{path} holds no images: pass a file with at least one image")
    return labels


# --- Image folders (directory or zip) -------------------------------------------------------


class _DirTree:
    """Image files under a directory, as relative path parts."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.label = str(root)
        self.kind = "folder"

    def files(self) -> list[tuple[str, ...]]:
        out = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not _hidden(d)]
            rel = Path(dirpath).relative_to(self.root).parts
            out += [rel + (f,) for f in filenames if _is_image_name(f)]
        return out

    def has_images(self) -> bool:
        return any(_is_image_name(p.name) for pat in ("*/*", "*/*/*", "*/*/*/*")
                   for p in self.root.glob(pat))

    def reader(self) -> Callable[[tuple[str, ...]], bytes]:
        cap = _image_file_cap()

        def read(parts: tuple[str, ...]) -> bytes:
            path = self.root.joinpath(*parts)
            size = path.stat().st_size
            if size > cap:
                raise _too_big(f"image file {path}", size, cap, MAX_PIXELS_ENV)
            return path.read_bytes()

        return read

    def close(self) -> None:
        pass


class _ZipTree:
    """Image members of a zip file, read directly (no extraction)."""

    def __init__(self, path: Path) -> None:
        try:
            self.zf = zipfile.ZipFile(path)
        except (OSError, zipfile.BadZipFile) as e:
            raise PatchdbError(f"cannot open {path} as a zip ({e}): check the file") from e
        self.root = path
        self.label = str(path)
        self.kind = "zip"

    def files(self) -> list[tuple[str, ...]]:
        names = (n for n in self.zf.namelist() if not n.endswith("/"))
        parts = (tuple(n.split("/")) for n in names)
        return [p for p in parts if _is_image_name(p[-1]) and not any(map(_hidden, p))]

    def reader(self) -> Callable[[tuple[str, ...]], bytes]:
        cap = _image_file_cap()

        def read(parts: tuple[str, ...]) -> bytes:
            name = "/".join(parts)
            size = self.zf.getinfo(name).file_size  # declared; zipfile never inflates past it
            if size > cap:
                raise _too_big(f"member {name} of {self.label}", size, cap, MAX_PIXELS_ENV)
            try:
                return self.zf.read(name)
            except (zipfile.BadZipFile, OSError, EOFError, zlib_error, NotImplementedError) as e:
                raise PatchdbError(f"cannot read member {name} of {self.label} ({e}): check the zip") from e

        return read

    def close(self) -> None:
        self.zf.close()


def _hidden(part: str) -> bool:
    return part.startswith(".") or part == "__MACOSX"


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in _IMAGE_EXTS


def _layout(
    files: list[tuple[str, ...]], split: str, where: str
) -> tuple[list[tuple[str, ...]], list[str]]:
    """Resolve ``[top/][split/]class/.../file`` into (files relative to the classes, prefix)."""
    prefix: list[str] = []
    while _deep(files) and len(tops := {p[0] for p in files}) == 1 and not tops <= _SPLIT_DIRS:
        prefix.append(files[0][0])
        files = [p[1:] for p in files]
    tops = {p[0] for p in files}
    if _deep(files) and tops <= _SPLIT_DIRS:
        if split not in tops:
            usable = sorted(tops & set(_SPLITS))
            fix = f"pass --split {usable[0]}" if usable else "name the split folders train and test"
            found = ", ".join(sorted(tops))
            raise PatchdbError(f"{where} has no {split!r} folder (found {found}): {fix}")
        prefix.append(split)
        files = [p[1:] for p in files if p[0] == split]
    files = sorted(p for p in files if len(p) >= 2)
    if not files:
        raise PatchdbError(
            f"no images in class sub-folders of {where}: expected class/image.png "
            "(one folder per class, PNG or JPEG)"
        )
    return files, prefix


def _deep(files: list[tuple[str, ...]]) -> bool:
    """True when every file lies at least two folders down."""
    return bool(files) and all(len(p) >= 3 for p in files)


def _load_image_folder(
    tree: _DirTree | _ZipTree, split: str, select: _Selector, progress: bool | None
) -> _Raw:
    try:
        files, prefix = _layout(tree.files(), split, tree.label)
        names = sorted({p[0] for p in files})
        labels = np.searchsorted(np.asarray(names), np.asarray([p[0] for p in files]))
        # File order interleaves the classes (the i-th file of every class, then the (i+1)-th), so
        # that a limit keeps them balanced instead of taking the first classes only.
        rank = np.arange(len(files)) - np.searchsorted(labels, labels)
        order = np.lexsort((labels, rank))
        files, labels = [files[i] for i in order], labels[order]
        ids = select(labels.astype(np.int64), len(names))
        chosen = [tuple(prefix) + files[i] for i in ids]
        images = _decode_all(chosen, tree.reader(), tree.label, progress)
    finally:
        tree.close()
    source = str(Path(tree.root).resolve()) + ("::" + "/".join(prefix) if prefix else "")
    split_used = split if prefix and prefix[-1] == split else None
    return _Raw(images, labels[ids].astype(np.int64), tuple(names), source, tree.kind, split_used)


def _decode_all(
    files: list[tuple[str, ...]], read: Callable[[tuple[str, ...]], bytes], where: str,
    progress: bool | None,
) -> np.ndarray:
    """Decode image files into uint8 ``(n, H, W, C)``; grayscale is promoted if RGB is mixed in."""
    from tqdm.auto import tqdm

    show = progress if progress is not None else (
        len(files) >= _PROGRESS_MIN and sys.stderr.isatty()
    )
    arrays: list[np.ndarray] = []
    first: tuple[int, int] | None = None
    total, cap = 0, max_bytes()
    for parts in tqdm(files, desc=f"reading {Path(where).name}", unit="img", disable=not show):
        a = _decode(read(parts), parts, where)
        total += a.nbytes
        if total > cap:
            raise _too_big(f"the decoded images of {where}", total, cap, MAX_BYTES_ENV)
        if first is None:
            first = a.shape[:2]
        elif a.shape[:2] != first:
            raise PatchdbError(
                f"images in {where} have different sizes: {'/'.join(files[0])} is "
                f"{first[0]}x{first[1]}, {'/'.join(parts)} is {a.shape[0]}x{a.shape[1]}; "
                "resize them all to one size first"
            )
        arrays.append(a)
    if any(a.shape[2] == 3 for a in arrays):
        arrays = [np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a for a in arrays]
    return np.stack(arrays)


def _decode(data: bytes, parts: tuple[str, ...], where: str) -> np.ndarray:
    cap = max_pixels()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise PatchdbError(f"{'/'.join(parts)} in {where} has over {cap:,} pixels (a decompression bomb?); "
                           f"if it is genuine, raise ${MAX_PIXELS_ENV}") from None
    except (OSError, ValueError) as e:
        raise PatchdbError(f"cannot decode {'/'.join(parts)} in {where} ({e}): remove or re-save that file") from e
    if im.size[0] * im.size[1] > cap:
        raise PatchdbError(f"{'/'.join(parts)} in {where} is {im.size[0]}x{im.size[1]} pixels, over the {cap:,} "
                           f"patchdb decodes (a decompression bomb?); if it is genuine, raise ${MAX_PIXELS_ENV}")
    try:
        with im:
            im = im.convert("L" if im.mode in _GRAY_MODES else "RGB")
            a = np.asarray(im)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise PatchdbError(
            f"cannot decode {'/'.join(parts)} in {where} ({e}): remove or re-save that file"
        ) from e
    return a[..., None] if a.ndim == 2 else a

