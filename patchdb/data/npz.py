"""``.npz`` files holding ``images`` and ``labels`` (and optionally ``classes``)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..errors import PatchdbError
from .base import MAX_BYTES_ENV, Raw, Selector, labels_and_names, max_bytes, too_big


def load_npz(path: Path, select: Selector, names: tuple[str, ...] | None) -> Raw:
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
                raise too_big(f"{path} (its arrays)", size, cap, MAX_BYTES_ENV)
            images, labels = z["images"], z["labels"]
            stored = tuple(str(c) for c in z["classes"]) if "classes" in z else None
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        if isinstance(e, PatchdbError):
            raise
        raise PatchdbError(f"cannot read {path} as .npz ({e}): check the file") from e
    images = _npz_to_nhwc(images, path)
    labels = _npz_labels(labels, len(images), path)
    labels, names = labels_and_names(labels, names or stored, path)
    ids = select(labels, len(names))
    return Raw(images[ids], labels[ids], names, str(path.resolve()), "npz", None)


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
