"""``patchdb sample``: generate samples of a machine and write them with a PNG grid."""

from __future__ import annotations

import time
from pathlib import Path

import click

from patchdb.errors import PatchdbError
from patchdb.generate import generate, sample_labels
from patchdb.plots import save_grid
from patchdb.schedule import parse_schedule
from patchdb.score import ExactMachine
from patchdb.spec import Machine
from patchdb.store import check_writable, write_samples

from .options import DTYPES, dataset_options, load_from_options, resolve_device


@click.command()
@dataset_options
@click.option("--machine", "-m", default="bbels", help="is, ls, els or bbels.")
@click.option("--schedule", "-s", default="mnist-resnet-zeros",
              help="Preset name, constant:K, a comma list (scales[0] = lowest noise first) or a .json/.txt file.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Sampler steps (default: the schedule's length).")
@click.option("--num", "-n", type=click.IntRange(min=1), default=16, help="Number of samples.")
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=16, help="Samples per batch.")
@click.option("--seed", type=int, default=0, help="Sample j starts from the noise of seed + j.")
@click.option("--label", default=None, help="Condition on this class label, or 'all' to cycle through the classes.")
@click.option("--device", default="cpu", help="cpu, cuda, cuda:N or auto.")
@click.option("--dtype", type=click.Choice(list(DTYPES)), default="float32", help="Compute precision.")
@click.option("--block-mb", type=click.FloatRange(min=0.01), default=4.0, help="Size of one block of logits in MiB (bounds memory; small blocks stay in cache).")
@click.option("--save-trajectory", is_flag=True, help="Also store the denoiser output of every step.")
@click.option("--out", "-o", type=click.Path(dir_okay=False), default="samples.h5", help="Output HDF5 file (a PNG grid goes beside it).")
def command(dataset, root, split, download, limit, only_classes, policy, machine, schedule, steps, num,
            batch_size, seed, label, device, dtype, block_mb, save_trajectory, out):
    """Generate samples with the exact engine of a machine (IS, LS, ELS, bbELS)."""
    out = check_writable(out)
    machine = Machine.parse(machine)
    dev = resolve_device(device)
    data = load_from_options(dataset, root, split, download, limit, only_classes, policy)
    sched = parse_schedule(schedule, steps)
    sched.check_fits(data.height, data.width)
    labels = sample_labels(num, label, data.num_classes)
    engine = ExactMachine(data.to_float(DTYPES[dtype]), machine, sched, labels=data.labels, device=dev,
                          block_bytes=int(block_mb * 2**20))
    click.echo(f"{machine.value} machine over {len(data)} images of {data.name} ({data.channels}x{data.height}x{data.width}), "
               f"schedule {sched.name}, {num} samples", err=True)
    start = time.perf_counter()
    res = generate(engine, (data.channels, data.height, data.width), num, seed, batch_size, sched.steps, labels,
                   DTYPES[dtype], dev, save_trajectory, progress=True)
    seconds = time.perf_counter() - start
    settings = {
        "command": "sample", "engine": "exact", "machine": machine.value, "schedule": list(sched.sizes),
        "schedule_name": sched.name, "steps": sched.steps, "num": num, "batch_size": batch_size, "seed": seed,
        "label": label, "device": str(dev), "dtype": dtype, "block_mb": block_mb, "dataset": data.meta,
        "dataset_name": data.name, "fingerprint": data.fingerprint(), "seconds": seconds,
    }
    write_samples(out, res.samples, res.seeds, res.labels, list(sched.sizes) if machine is not Machine.IS else None,
                  settings, res.trajectory)
    png = Path(out).with_suffix(".png")
    save_grid(res.samples, png)
    click.echo(f"wrote {out} and {png} ({num} samples, {seconds:.1f} s, {seconds / num:.2f} s/sample)")
