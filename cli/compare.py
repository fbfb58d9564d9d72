"""``patchdb compare``: how well each machine predicts a trained network from the same noise."""

from __future__ import annotations

import time

import click
import torch

from patchdb.errors import PatchdbError
from patchdb.evaluation.compare import compare, format_table, write_report
from patchdb.evaluation.factories import load_network, machine_factory, seed_labels
from patchdb.schedule import parse_schedule
from patchdb.spec import Machine

from .options import DTYPES, dataset_options, load_from_options, resolve_device


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
        click.option("--topk", type=click.IntRange(min=1), default=None, help="Approximate engine: candidates per query window."),
        click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads for torch."),
    ]
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


@click.command()
@dataset_options
@network_options
@click.option("--machine", "-m", "machines", multiple=True, default=["bbels"],
              help="Local machine(s) to compare: bbels, els, ls (repeatable). IS is always compared.")
@click.option("--schedule", "-s", "schedules", multiple=True, default=None,
              help="Schedule per --machine (or one for all): a calibrate JSON, preset, constant:K or comma list.")
@click.option("--out", "-o", type=click.Path(file_okay=False), default="compare", help="Output folder.")
def command(dataset, root, split, download, limit, only_classes, policy, checkpoint, num, seed, steps, label,
            batch_size, device, dtype, block_mb, index, topk, threads, machines, schedules, out):
    """Sample the network and each machine from the same seeds; table of median r and r^2, scatter, grid."""
    machines = [Machine.parse(m) for m in machines]
    machines = [m for m in machines if m is not Machine.IS]
    if not schedules:
        raise PatchdbError("give --schedule (e.g. the JSON 'patchdb calibrate' wrote, or a preset) for the local machines")
    if len(schedules) not in (1, len(machines)):
        raise PatchdbError(f"got {len(schedules)} --schedule for {len(machines)} --machine; give one, or one per machine")
    scheds = [parse_schedule(s, steps) for s in (schedules * len(machines) if len(schedules) == 1 else schedules)]
    dev, data, net, cfg, _info, seeds, labels, images = setup(
        dataset, root, split, download, limit, only_classes, policy, checkpoint, num, seed, label, device, dtype, threads)
    for s in scheds:
        s.check_fits(data.height, data.width)
    block = int(block_mb * 2**20)
    denoisers = {}
    for m, s in zip(machines, scheds):
        make = machine_factory(m, images, data.labels, dev, block, index, topk, data.fingerprint())
        denoisers[m.value if list(machines).count(m) == 1 else f"{m.value}:{s.name}"] = make(s)
    denoisers["is"] = machine_factory(Machine.IS, images, data.labels, dev, block)(None)
    click.echo(f"comparing {cfg.arch} ({cfg.padding}) with {', '.join(denoisers)} over {num} seeds, "
               f"{len(data)} training images of {data.name}", err=True)
    start = time.perf_counter()
    cmp = compare(net, denoisers, (data.channels, data.height, data.width), seeds, steps, labels, batch_size, dev,
                  DTYPES[dtype], progress=True)
    cmp.settings = {
        "command": "compare", "checkpoint": str(checkpoint), "model": cfg.to_dict(), "machines": list(denoisers),
        "schedules": {m.value: list(s.sizes) for m, s in zip(machines, scheds)}, "steps": steps, "seed": seed,
        "num": num, "label": label, "engine": "approx" if index else "exact", "index": index, "topk": topk,
        "dataset": data.meta, "fingerprint": data.fingerprint(), "device": str(dev), "dtype": dtype,
        "batch_size": batch_size,
    }
    paths = write_report(cmp, out, images)
    click.echo(format_table(cmp))
    click.echo(f"wrote {', '.join(str(p) for p in paths.values())} ({time.perf_counter() - start:.0f} s)")
