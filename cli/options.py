"""Options shared by several subcommands, and the loaders they feed (commands never import each other)."""

from __future__ import annotations

import click
import torch

from patchdb.data import Dataset, load_dataset
from patchdb.denoisers.retrieval import Retrieval
from patchdb.errors import PatchdbError
from patchdb.evaluation.factories import load_network, seed_labels


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


def parse_ints(text: str | None, what: str, count: int | None = None) -> list[int] | None:
    """'3,4' -> [3, 4]; one-line error otherwise."""
    if text is None:
        return None
    try:
        vals = [int(v) for v in str(text).replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise PatchdbError(f"{what} '{text}' is not a comma list of integers, e.g. 16,16") from None
    if count is not None and len(vals) != count:
        raise PatchdbError(f"{what} '{text}' needs {count} integers separated by commas")
    return vals


def retrieval_options(recorded: bool = False):
    """--topk/--nprobe/--ef/--k-factor/--tail-correction/--scan-cap of the approximate engine.

    ``recorded``: the defaults are the settings a sample file records (attribute, query), so that
    attribution retrieves what the sampler retrieved; otherwise :class:`Retrieval`'s defaults.
    """
    base = Retrieval()

    def default(value):
        return None if recorded else value

    def say(text: str, value) -> str:
        return f"{text} (default: as the sample file records, else {value})." if recorded else f"{text}."

    opts = [
        click.option("--topk", type=click.IntRange(min=1), default=default(base.topk),
                     help=say("With --index: candidates kept per query window", base.topk)),
        click.option("--nprobe", type=click.IntRange(min=0), default=default(base.nprobe),
                     help=say("With --index: IVF lists probed (0: tuned default in the file)", base.nprobe)),
        click.option("--ef", type=click.IntRange(min=0), default=default(base.ef),
                     help=say("With --index: HNSW efSearch of the coarse quantizer (0: default)", base.ef)),
        click.option("--k-factor", type=click.IntRange(min=0), default=default(base.k_factor),
                     help=say("With --index: search and exactly re-rank topk x this many candidates "
                              "(0: tuned default in the file)", base.k_factor)),
        click.option("--tail-correction", type=click.IntRange(min=0), default=default(base.tail_correction),
                     help=say("With --index: estimate the ignored mass from a uniform sample of this many "
                              "candidates (0: off)", base.tail_correction)),
        click.option("--scan-cap", type=click.FloatRange(min=0), default=default(base.scan_cap),
                     help=say("With --index: a query stops scanning after this many times the codes its nprobe "
                              "lists hold on average (0: no cap)", base.scan_cap)),
    ]

    def wrap(f):
        for opt in reversed(opts):
            f = opt(f)
        return f

    return wrap


def retrieval_from(topk, nprobe, ef, k_factor, tail_correction, scan_cap, base: Retrieval | None = None) -> Retrieval:
    """The :class:`Retrieval` of the options given (None: as in ``base``, else the default)."""
    return (base or Retrieval()).with_options(topk=topk, nprobe=nprobe, ef=ef, k_factor=k_factor,
                                              tail_correction=tail_correction, scan_cap=scan_cap)


def network_options(f):
    """Options shared by calibrate and compare: checkpoint, seeds, labels, engine and device."""
    opts = [
        click.option("--checkpoint", "-c", type=click.Path(), required=True, help="Checkpoint folder written by 'patchdb train'."),
        click.option("--num", "-n", type=click.IntRange(min=1), default=50, help="Number of seeds M."),
        click.option("--seed", type=int, default=0, help="Seeds are seed, seed+1, ..., seed+M-1."),
        click.option("--steps", type=click.IntRange(min=1), default=20, help="Sampler steps S."),
        click.option("--label", default=None, help="Conditional networks: a class, or 'all' (default) to cycle classes."),
        click.option("--batch-size", "-b", type=click.IntRange(min=1), default=16, help="Seeds per batch."),
        click.option("--device", default="cpu", help="cpu, cuda, cuda:N or auto."),
        click.option("--dtype", type=click.Choice(list(DTYPES)), default="float32", help="Machine compute precision."),
        click.option("--block-mb", type=click.FloatRange(min=0.01), default=16.0, help="Exact engine: size of one block of logits."),
        click.option("--index", type=click.Path(dir_okay=False), default=None,
                     help="Index file (patchdb build): use the approximate engine for the local machines."),
        click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads for torch."),
    ]
    f = retrieval_options()(f)
    for opt in reversed(opts):
        f = opt(f)
    return f


def setup(dataset, root, split, download, limit, only_classes, policy, checkpoint, num, seed, label, device, dtype,
          threads):
    """Load data and network, check that they fit, and pick the seeds and labels."""
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    data = load_from_options(dataset, root, split, download, limit, only_classes, policy)
    net, cfg, info = load_network(checkpoint, data.channels, data.height, data.width, dev)
    seeds = list(range(seed, seed + num))
    labels = seed_labels(num, label, cfg.conditional, data.num_classes, seed)
    images = data.to_float(DTYPES[dtype])
    return dev, data, net, cfg, info, seeds, labels, images
