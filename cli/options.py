"""Options shared by several subcommands, and the loaders they feed."""

from __future__ import annotations

import click
import torch

from patchdb.data import Dataset, load_dataset
from patchdb.errors import PatchdbError


def dataset_options(f):
    """--dataset/--root/--split/--download/--limit/--classes-filter/--policy."""
    opts = [
        click.option("--dataset", "-d", default="embedded",
                     help="embedded, mnist, fashion-mnist, cifar10, or a path: image folder, .zip of one, IDX folder, .npz."),
        click.option("--root", type=click.Path(file_okay=True), default=None,
                     help="Folder holding the named dataset's files (default: $PATCHDB_DATA or ~/.cache/patchdb/data)."),
        click.option("--split", type=click.Choice(["train", "test"]), default="train", help="Which split to read."),
        click.option("--download", is_flag=True, help="Let torchvision download a named dataset into --root."),
        click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N images (of an image folder or zip: the classes in turn, so balanced)."),
        click.option("--only-classes", default=None, help="Comma list of class labels to keep, e.g. 0,1,7."),
        click.option("--policy", type=click.Choice(["resize", "pad", "none"]), default="resize",
                     help="How 28x28 images become 32x32: bilinear resize (the paper) or zero padding."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def load_from_options(dataset: str, root, split: str, download: bool, limit, only_classes, policy: str) -> Dataset:
    classes = None
    if only_classes:
        try:
            classes = [int(c) for c in only_classes.split(",")]
        except ValueError:
            raise PatchdbError(f"--only-classes '{only_classes}' is not a comma list of integers, e.g. 0,1,7") from None
    name = None if dataset == "embedded" else dataset
    return load_dataset(name, root=root, split=split, download=download, limit=limit, classes=classes,
                        policy=policy, progress=True)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PatchdbError(f"--device {device} asked for CUDA but no CUDA device is available; use --device cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise PatchdbError(f"unknown --device '{device}'; use cpu, cuda, cuda:1 or auto") from None


DTYPES = {"float32": torch.float32, "float64": torch.float64}
