"""Options shared by several subcommands, and the loaders they feed (commands never import each other)."""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path

import click
import torch

from patchdb.baselines import read_config
from patchdb.data import Dataset, dataset_family, load_dataset
from patchdb.denoisers.retrieval import Retrieval
from patchdb.errors import PatchdbError
from patchdb.evaluation.factories import load_any_network, seed_labels
from patchdb.schedule import parse_schedule


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
                     help="How 28x28 images become 32x32: bilinear resize (the paper) or zero padding. Resizing "
                          "refuses images under a quarter of the size (e.g. 1x1): pad them, or keep them with none."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def load_from_options(dataset: str, root, split: str, download: bool, limit, only_classes, policy: str) -> Dataset:
    classes = None
    if only_classes is not None:
        parts = [c.strip() for c in str(only_classes).split(",")]
        if not all(re.fullmatch(r"[0-9]+", c) for c in parts):
            raise PatchdbError(f"--only-classes '{only_classes}' is not a comma list of class labels, e.g. 0,1,7")
        classes = [int(c) for c in parts]
    name = None if dataset == "embedded" else dataset
    return load_dataset(name, root=root, split=split, download=download, limit=limit, classes=classes,
                        policy=policy, progress=True)


def resolve_device(device: str) -> torch.device:
    device = str(device).strip()
    if not re.fullmatch(r"cpu|auto|cuda(:[0-9]+)?", device):
        raise PatchdbError(f"unknown --device '{device}'; use cpu, cuda, cuda:1 or auto")
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
    if not vals:
        raise PatchdbError(f"{what} '{text}' names no integer; give a comma list such as 0,3 (or leave {what} out)")
    return vals


def retrieval_options(recorded: bool = False):
    """--topk/--nprobe/--ef/--k-factor/--tail-correction/--scan-cap of the approximate engine, and
    (unless ``recorded``) --reuse/--across/--refresh, its step-to-step coherence, and --sample-above /
    --sample-size.

    The command gets them gathered in one argument, so a new knob touches only this function and
    :class:`Retrieval`: ``retrieval``, the :class:`Retrieval` of the options given (unknown ones at its
    defaults); or, when ``recorded`` (attribute, query), ``knobs``, a dict of only the options given, to
    lay over the settings a sample file records (:func:`retrieval_from`) so that attribution retrieves
    what the sampler retrieved.
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
        click.option("--scan-cap", type=FiniteFloatRange(min=0), default=default(base.scan_cap),
                     help=say("With --index: a query stops scanning after this many times the codes its nprobe "
                              "lists hold on average (0: no cap)", base.scan_cap)),
        click.option("--list-scan/--query-scan", default=default(base.list_scan),
                     help=say("With --index: scan IVF lists once per call for all the queries that probe them "
                              "(dense products), or query by query with FAISS's own search",
                              "--list-scan" if base.list_scan else "--query-scan")),
        click.option("--exact-scan", type=click.IntRange(min=0), default=default(base.exact_scan),
                     help=say("With --list-scan: windows of at most this many values (channels x k x k) are "
                              "scanned with exact distances, the codes only choosing the lists (0: off)",
                              base.exact_scan)),
    ]
    if not recorded:  # step-to-step coherence: the sampler's; attribution re-runs steps one at a time
        opts += [
            click.option("--reuse", type=click.IntRange(min=0), default=base.reuse,
                         help="With --index: at a step of the same patch size as the previous one, re-rank the "
                              "reuse x topk candidates that ranked best there instead of searching (0: off)."),
            click.option("--across/--no-across", default=base.across,
                         help="With --reuse: carry candidates across patch-size changes too (same image and "
                              "position, the new size), so only a trajectory's first step searches the index."),
            click.option("--refresh", type=FiniteFloatRange(min=0), default=base.refresh,
                         help="With --reuse: at a reused step also search for topk more candidates, scanning "
                              "this fraction of a normal search's codes (0: no search)."),
            click.option("--sample-above", type=FiniteFloatRange(min=0), default=base.sample_above,
                         help="With --index: at steps whose time t is at least this (t = 1 is pure noise), skip "
                              "the index and estimate D from the uniform tail sample alone (0: off)."),
            click.option("--sample-size", type=click.IntRange(min=0), default=base.sample_size,
                         help="With --sample-above: the uniform sample's size at those steps (0: --tail-correction)."),
        ]

    names = [_param_name(opt) for opt in opts]

    def wrap(f):
        @functools.wraps(f)
        def command(*args, **kwargs):
            given = {name: kwargs.pop(name) for name in names}
            if recorded:
                kwargs["knobs"] = {name: value for name, value in given.items() if value is not None}
            else:
                kwargs["retrieval"] = retrieval_from(given)
            return f(*args, **kwargs)

        for opt in reversed(opts):
            command = opt(command)
        return command

    return wrap


def _param_name(option) -> str:
    """The Python name click gives the parameter of an option decorator."""
    return option(lambda: None).__click_params__[0].name


def retrieval_from(knobs: dict, base: Retrieval | None = None) -> Retrieval:
    """The :class:`Retrieval` of the options given in ``knobs`` (None or absent: as in ``base``, else the default)."""
    return (base or Retrieval()).with_options(**knobs)


def network_options(f):
    """Options shared by calibrate and compare: checkpoint, seeds, labels, engine and device."""
    opts = [
        click.option("--checkpoint", "-c", type=click.Path(), default=None,
                     help="Checkpoint folder written by 'patchdb train' (or give --network)."),
        click.option("--network", default=None,
                     help="A network patchdb did not train: module:function or file.py:function returning a torch "
                          "module, a TorchScript file, or a diffusers UNet2DModel folder (docs/networks.md)."),
        click.option("--predict", type=click.Choice(["eps", "x0", "v"]), default=None,
                     help="With --network: what it predicts, the noise eps, the clean image x0, or v = a eps - b x0."),
        click.option("--net-schedule", default=None,
                     help="With --network: its noise schedule, cosine (docs/math.md, time in [0, 1]), "
                          "ddpm-linear[:beta0,beta1,T] (default 1e-4,0.02,1000) or a file of alphabar per timestep."),
        click.option("--net-time", type=click.Choice(["nearest", "interp"]), default="nearest", show_default=True,
                     help="With a discrete --net-schedule: the timestep nearest patchdb's t in log-SNR, or the "
                          "fractional timestep interpolated between the two neighbours."),
        click.option("--num", "-n", type=click.IntRange(min=1), default=50, help="Number of seeds M."),
        click.option("--seed", type=SEED, default=0, help="Seeds are seed, seed+1, ..., seed+M-1 (0..2**32-1)."),
        click.option("--steps", type=click.IntRange(min=1), default=20, help="Sampler steps S."),
        click.option("--label", type=LabelType(allow_none=True), default=None,
                     help="Conditional networks: a class, or 'all' (default) to cycle classes."),
        click.option("--batch-size", "-b", type=click.IntRange(min=1), default=16, help="Seeds per batch."),
        click.option("--device", default="cpu", help="cpu, cuda, cuda:N or auto."),
        click.option("--dtype", type=click.Choice(list(DTYPES)), default="float32", help="Machine compute precision."),
        click.option("--block-mb", type=FiniteFloatRange(min=0.01, max=2**20), default=16.0, help="Exact engine: size of one block of logits."),
        click.option("--index", type=click.Path(dir_okay=False), default=None,
                     help="Index file (patchdb build): use the approximate engine for the local machines."),
        click.option("--exact-check", type=click.IntRange(min=0), default=0,
                     help="With --index: also run the exact engine on the first N seeds and report r^2 approx-vs-exact."),
        click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads for torch."),
        click.option("--allow-other-data", is_flag=True,
                     help="Run against data other than the checkpoint's training data. Without it a network trained on "
                          "another named dataset is refused, and for data given by path one whose recorded dataset "
                          "fingerprint differs from the data loaded (a subset of the training files differs too: "
                          "pass this flag when that is meant)."),
    ]
    f = retrieval_options()(f)
    for opt in reversed(opts):
        f = opt(f)
    return f


def setup(dataset, root, split, download, limit, only_classes, policy, checkpoint, network, predict, net_schedule,
          net_time, num, seed, label, device, dtype, threads, index=None, exact_check=0, allow_other_data=False):
    """Load data and network, check that they fit, and pick the seeds and labels.

    Returns ``(device, data, net, about, seeds, labels, images)``; ``about`` describes the network
    (:func:`patchdb.evaluation.factories.load_any_network`).
    """
    if exact_check and index is None:
        raise PatchdbError("--exact-check needs --index: it compares the approximate engine with the exact one; "
                           "add --index FILE or drop --exact-check")
    if checkpoint is not None and network is not None:
        raise PatchdbError("give -c/--checkpoint or --network, not both: they name the network to follow")
    if threads:
        torch.set_num_threads(threads)
    check_seed_span(seed, num)
    dev = resolve_device(device)
    data = load_from_options(dataset, root, split, download, limit, only_classes, policy)
    if checkpoint is not None and not allow_other_data:
        check_trained_on(checkpoint, data)
    net, about = load_any_network((data.channels, data.height, data.width), checkpoint, network, predict, net_schedule,
                                  net_time, dev)
    seeds = list(range(seed, seed + num))
    labels = seed_labels(num, label, about["conditional"], data.num_classes, seed)
    images = data.to_float(DTYPES[dtype])
    return dev, data, net, about, seeds, labels, images


# --------------------------------------------------------------------------------------------
# Option types and parsers that turn every malformed value into one line (issue 29)
# --------------------------------------------------------------------------------------------

#: torch's CPU generator keeps only the low 32 bits of a seed (2**32 draws seed 0's noise), so seeds
#: are validated to the range it tells apart instead of being silently folded.
SEED_MAX = 2**32 - 1


class SeedType(click.ParamType):
    """A seed in 0..2**32-1, recorded as given."""

    name = "seed"

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            seed = value
        elif isinstance(value, str) and re.fullmatch(r"\s*[+-]?[0-9]+\s*", value):
            seed = int(value)
        else:
            self.fail(f"{value!r} is not an integer; give a seed in 0..{SEED_MAX}", param, ctx)
        if not 0 <= seed <= SEED_MAX:
            self.fail(f"{seed} is outside 0..{SEED_MAX}, the seeds torch's generator tells apart "
                      f"(it keeps 32 bits: 2**32 would give seed 0's noise); pick a seed in that range", param, ctx)
        return seed


SEED = SeedType()


def check_seeds(seeds, what: str = "--seeds") -> None:
    """Every seed of a list within 0..2**32-1."""
    bad = [s for s in seeds if not 0 <= int(s) <= SEED_MAX]
    if bad:
        raise PatchdbError(f"{what}: seed {bad[0]} is outside 0..{SEED_MAX}, the seeds torch's generator tells apart; "
                           "use seeds in that range")


def check_seed_span(seed: int, count: int, what: str = "--seed") -> None:
    """Seeds ``seed .. seed + count - 1`` must all be valid (the last one too)."""
    if seed + count - 1 > SEED_MAX:
        raise PatchdbError(f"{what} {seed} with {count} seeds runs past {SEED_MAX} (the largest seed torch's generator "
                           f"tells apart); use --seed {SEED_MAX - count + 1} or lower")


class LabelType(click.ParamType):
    """A class label (non-negative integer), 'all' (cycle the classes) or, where allowed, 'none'."""

    name = "label"

    def __init__(self, allow_none: bool = False):
        self.allow_none = allow_none

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            text = str(value)
        else:
            text = str(value).strip()
        if text.lower() == "all":
            return "all"
        if self.allow_none and text.lower() == "none":
            return "none"
        if not re.fullmatch(r"[0-9]+", text):
            extra = ", 'none'" if self.allow_none else ""
            self.fail(f"{value!r} is not a class label; give a class number such as 0, 'all'{extra}", param, ctx)
        return int(text)


LABEL = LabelType()


class FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that also refuses nan and inf (which pass its comparisons)."""

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return rv


def check_trained_on(checkpoint, data: Dataset) -> None:
    """Refuse, in one line, a dataset other than the one a checkpoint's network was trained on.

    Named datasets are told apart by name (the embedded set counting as MNIST; a subset or another split
    of one is fine). Data given by path has no name to compare: there the dataset fingerprint the checkpoint
    records (when it records one) must equal the loaded data's; a subset differs as well, so the way out,
    for data that is legitimately other, is ``--allow-other-data``.
    """
    info = read_config(checkpoint).get("dataset") or {}
    recorded = info.get("name")
    trained, given = dataset_family(str(recorded)), dataset_family(data.name)
    if trained and given:
        if trained != given:
            raise PatchdbError(f"the network in {checkpoint} was trained on {recorded}, not {data.name}: calibrating or "
                               f"comparing it against another dataset means nothing; pass --dataset {recorded} "
                               "(or --allow-other-data if this is meant)")
        return
    want, have = info.get("fingerprint"), data.fingerprint()
    if want and str(want) != have:
        raise PatchdbError(f"the network in {checkpoint} was trained on {recorded} (fingerprint {str(want)[:12]}), not on "
                           f"the data loaded, {data.name} (fingerprint {have[:12]}): pass the data it was trained on "
                           f"(--dataset {recorded} with its --limit/--only-classes), or --allow-other-data if other data "
                           "is meant (e.g. a subset of its training files)")


def parse_schedule_option(text: str, steps: int | None = None, what: str = "--schedule"):
    """:func:`patchdb.schedule.parse_schedule` with one-line errors for empty text, folders and unreadable files."""
    if not str(text).strip():
        raise PatchdbError(f"{what} is empty; give a preset name, constant:K, a comma list of odd sizes or a .json/.txt file")
    path = Path(str(text).strip())
    if path.is_dir():
        raise PatchdbError(f"{what} {text} is a folder; give a preset, constant:K, a comma list or a schedule file")
    try:
        return parse_schedule(text, steps)
    except (OSError, UnicodeDecodeError) as err:
        raise PatchdbError(f"{what} {text}: cannot read it ({err.__class__.__name__}); give a readable schedule file") from None
