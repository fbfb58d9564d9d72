"""``patchdb query``: the nearest training patches of an image's windows."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import click
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from patchdb.attribute import (
    check_fingerprint,
    dataset_from_index,
    query,
    recorded_retrieval,
    training_set_of,
)
from patchdb.data import MAX_PIXELS_ENV, max_pixels
from patchdb.errors import PatchdbError
from patchdb.indexing.reader import open_index
from patchdb.store import claim_output, read_samples

from .options import (
    dataset_options,
    load_from_options,
    parse_ints,
    retrieval_from,
    retrieval_options,
)


def read_image(path: Path, sample_id: int) -> tuple[torch.Tensor, dict | None]:
    """(C, H, W) float in [-1, 1] from a PNG/JPEG, an .npy, or sample ``sample_id`` of a sample file.

    Returns the image and, for a sample file, its metadata (to find the training set).
    """
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        data = read_samples(path)
        n = len(data["samples"])
        if not 0 <= sample_id < n:
            raise PatchdbError(f"--sample-id {sample_id} is outside 0..{n - 1} of {path}")
        return torch.from_numpy(data["samples"][sample_id]).float(), data["metadata"]
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:  # object arrays (pickles), truncated or foreign files
            raise PatchdbError(f"cannot read {path} as an array of pixels ({err.__class__.__name__}: "
                               f"{str(err).splitlines()[0][:80] if str(err) else ''}); save uint8 pixels or floats "
                               "with np.save") from None
        return _from_array(arr, path), None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            if img.size[0] * img.size[1] > max_pixels():
                raise PatchdbError(f"{path} is {img.size[0]}x{img.size[1]} pixels, over the {max_pixels():,} patchdb "
                                   f"decodes; if it is genuine, raise ${MAX_PIXELS_ENV}")
            img.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise PatchdbError(f"cannot read {path} as an image; pass a PNG/JPEG, an .npy or a patchdb sample file") from None
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGB" if img.mode in ("RGBA", "P", "CMYK", "YCbCr") else "L")
    return _from_array(np.asarray(img), path), None


def _from_array(arr: np.ndarray, path: Path) -> torch.Tensor:
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3 and arr.shape[-1] in (1, 3) and arr.shape[0] not in (1, 3):
        arr = arr.transpose(2, 0, 1)
    if arr.ndim != 3:
        raise PatchdbError(f"{path} holds an array of shape {arr.shape}; expected (H, W), (H, W, C) or (C, H, W)")
    if arr.dtype != np.uint8 and arr.dtype.kind != "f":
        raise PatchdbError(f"{path} holds {arr.dtype} values; store uint8 pixels 0..255 or floats pixel / 127.5 - 1")
    if arr.size == 0 or arr.size > 2**24:
        raise PatchdbError(f"{path} holds an array of shape {arr.shape}; pass one image of the training images' size")
    x = torch.from_numpy(np.ascontiguousarray(arr))
    if x.dtype == torch.uint8:
        return x.float() / 127.5 - 1
    x = x.float()
    if not bool(torch.isfinite(x).all()):
        raise PatchdbError(f"{path} holds NaN or infinite values; pass an image of finite pixels")
    if x.min() < -1.01 or x.max() > 1.01:
        raise PatchdbError(f"{path} holds floats outside [-1, 1]; store uint8 pixels or floats pixel / 127.5 - 1")
    return x


@click.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("--sample-id", type=click.IntRange(min=0), default=0, help="Which sample, when IMAGE is a sample file.")
@click.option("--index", "index_path", type=click.Path(dir_okay=False), default=None,
              help="Index file (patchdb build): FAISS search (default: the index a sample file of the approximate "
                   "engine records). Without one the dataset is scanned exactly.")
@retrieval_options(recorded=True)
@dataset_options
@click.option("--size", "-k", type=click.IntRange(min=1), required=True, help="Window size K (odd).")
@click.option("--machine", "-m", default="bbels", help="Whose candidates a window may match: ls, els or bbels.")
@click.option("--top", "-n", type=click.IntRange(min=1, max=100), default=5, help="Neighbours per window.")
@click.option("--pixel", default=None, help="Only the window centred at 'y,x'.")
@click.option("--box", default=None, help="Only the windows centred in the box 'y0,x0,y1,x1' (inclusive).")
@click.option("--label", type=int, default=None, help="Only training images of this class.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--png", type=click.Path(dir_okay=False), default=None,
              help="Write a picture: each window beside its neighbours, outlined in their training images.")
@click.option("--force", is_flag=True, help="Replace an existing --png (and create its missing folder).")
@click.pass_context
def command(ctx, image, sample_id, index_path, knobs, dataset, root, split, download, limit, only_classes, policy,
            size, machine, top, pixel, box, label, as_json, png, force):
    """Top-n nearest training windows of every window of IMAGE (or of one pixel or box).

    IMAGE is a PNG/JPEG, an .npy array, or a patchdb sample file (with --sample-id). The training
    set is the --index file's, else --dataset, else the one a sample file records.
    """
    if png:
        png = claim_output(png, force, what="--png", suffixes=(".png",))
    img, meta = read_image(Path(image), sample_id)
    check_query_size(size, img.shape[-2], img.shape[-1])
    index = None
    dataset_given = any(ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
                        for name in ("dataset", "root", "split", "limit", "only_classes", "policy"))
    drawn_approx = meta is not None and meta.get("engine") == "approx"
    if index_path is None and drawn_approx and not dataset_given:
        index_path = meta.get("index")  # the sampler's own index and retrieval settings
    retrieval = None
    if drawn_approx or knobs:
        retrieval = retrieval_from(knobs, base=recorded_retrieval(meta) if drawn_approx else None)
    if index_path:
        index = open_index(index_path)
        index.check(machine, [size])
        train = dataset_from_index(index)
        if meta is not None:
            check_fingerprint(train, meta, f"index {index_path}")
    elif meta is not None and not dataset_given:
        train = training_set_of(meta, None, root)
    else:
        train = load_from_options(dataset, root, split, download, limit, only_classes, policy)
        if meta is not None:  # the README's promise: the samples' own training set, or a refusal
            check_fingerprint(train, meta, "the dataset given")
    res = query(img, train, size, machine, top, _pair(pixel, "--pixel"), _box(box), label, index, retrieval)
    if as_json:
        click.echo(json.dumps({"k": res.k, "machine": res.machine, "dataset": train.name,
                               "results": res.records()}, indent=1))
    else:
        click.echo(_text(res, train.classes))
    if png:
        from patchdb.attribution_plots import query_figure

        query_figure(img.numpy(), res, train.to_float().numpy(), png, train.classes)
        click.echo(f"wrote {png}", err=True)


def check_query_size(k: int, height: int, width: int) -> None:
    """One line for a window that is even or does not fit the image (issue 29: ``--size 99`` grew past 11 GB;
    a window as large as the image is the LS fallback of every pixel, nothing a patch query can show)."""
    largest = min(height, width) - (1 - min(height, width) % 2)
    if k % 2 == 0 or k > largest:
        raise PatchdbError(f"--size {k}: the window must be odd and fit the {height}x{width} image; use an odd "
                           f"size from 1 to {largest}")


def _pair(text, what):
    vals = parse_ints(text, what, 2)
    return None if vals is None else (vals[0], vals[1])


def _box(text):
    vals = parse_ints(text, "--box", 4)
    return None if vals is None else tuple(vals)


def _text(res, classes) -> str:
    lines = []
    for rec in res.records():
        y, x = rec["pixel"]
        lines.append(f"pixel ({y},{x}) [{rec['family']}]")
        for nb in rec["neighbours"]:
            lab = nb["label"]
            name = classes[lab] if 0 <= lab < len(classes) else str(lab)
            lines.append(f"  {nb['rank']:>2}. image {nb['image']:>6} ({name})  at ({nb['y']},{nb['x']})  "
                         f"distance {nb['distance']:.4f}")
    return "\n".join(lines)
