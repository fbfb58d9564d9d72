"""Image folders, as a directory or read in place from a ``.zip``: one sub-folder of images per class."""

from __future__ import annotations

import io
import os
import sys
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from zlib import error as zlib_error

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..errors import PatchdbError
from .base import (
    MAX_BYTES_ENV,
    MAX_PIXELS_ENV,
    SPLIT_DIRS,
    SPLITS,
    Raw,
    Selector,
    image_file_cap,
    max_bytes,
    max_pixels,
    too_big,
)

_IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "F"}
_PROGRESS_MIN = 5000  # auto progress bar only for folders with at least this many images


class DirTree:
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
        cap = image_file_cap()

        def read(parts: tuple[str, ...]) -> bytes:
            path = self.root.joinpath(*parts)
            size = path.stat().st_size
            if size > cap:
                raise too_big(f"image file {path}", size, cap, MAX_PIXELS_ENV)
            return path.read_bytes()

        return read

    def close(self) -> None:
        pass


class ZipTree:
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
        cap = image_file_cap()

        def read(parts: tuple[str, ...]) -> bytes:
            name = "/".join(parts)
            size = self.zf.getinfo(name).file_size  # declared; zipfile never inflates past it
            if size > cap:
                raise too_big(f"member {name} of {self.label}", size, cap, MAX_PIXELS_ENV)
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
    while _deep(files) and len(tops := {p[0] for p in files}) == 1 and not tops <= SPLIT_DIRS:
        prefix.append(files[0][0])
        files = [p[1:] for p in files]
    tops = {p[0] for p in files}
    if _deep(files) and tops <= SPLIT_DIRS:
        if split not in tops:
            usable = sorted(tops & set(SPLITS))
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


def load_image_folder(
    tree: DirTree | ZipTree, split: str, select: Selector, progress: bool | None
) -> Raw:
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
    return Raw(images, labels[ids].astype(np.int64), tuple(names), source, tree.kind, split_used)


def _decode_all(
    files: list[tuple[str, ...]], read: Callable[[tuple[str, ...]], bytes], where: str,
    progress: bool | None,
) -> np.ndarray:
    """Decode image files into uint8 ``(n, H, W, C)``; grayscale is promoted if RGB is mixed in."""
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
            raise too_big(f"the decoded images of {where}", total, cap, MAX_BYTES_ENV)
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
