"""CIFAR-10: the python batches (torchvision's download) or a folder / zip of its images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import PatchdbFileError
from .base import Raw, Selector, download_torchvision
from .folder import DirTree, ZipTree, load_image_folder


def load_cifar10(
    root: Path, split: str, download: bool, select: Selector, progress: bool | None
) -> Raw:
    for base in (root, root / "cifar10"):
        if (base / "cifar-10-batches-py").is_dir():
            return load_cifar_batches(base, split, False, select)
        if (base / "cifar10-jpeg.zip").is_file():
            return load_image_folder(ZipTree(base / "cifar10-jpeg.zip"), split, select, progress)
        if (base / "cifar10-jpeg").is_dir():
            return load_image_folder(DirTree(base / "cifar10-jpeg"), split, select, progress)
    if root.is_dir() and DirTree(root).has_images():
        return load_image_folder(DirTree(root), split, select, progress)
    if download:
        return load_cifar_batches(root, split, True, select)
    raise PatchdbFileError(
        f"cifar10 not found in {root} (looked for cifar-10-batches-py, cifar10-jpeg.zip, "
        "cifar10-jpeg/, an image folder): pass --download to fetch it, "
        "or --root pointing at one of those"
    )


def load_cifar_batches(root: Path, split: str, download: bool, select: Selector) -> Raw:
    """torchvision's ``cifar-10-batches-py`` (downloaded first when ``download``)."""
    if download:
        ds = download_torchvision("cifar10", root, split)
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
    return Raw(np.asarray(ds.data)[ids], labels[ids], tuple(ds.classes),
                f"torchvision:{(root / 'cifar-10-batches-py').resolve()}", "cifar-batches")
