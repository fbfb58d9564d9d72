"""``patchdb compare``: how well each machine predicts a trained network from the same noise."""

from __future__ import annotations

import time

import click

from patchdb.errors import PatchdbError
from patchdb.evaluation.compare import compare, format_table, write_report
from patchdb.evaluation.factories import machine_factory
from patchdb.schedule import parse_schedule
from patchdb.spec import Machine

from .options import DTYPES, dataset_options, network_options, retrieval_from, setup


@click.command()
@dataset_options
@network_options
@click.option("--machine", "-m", "machines", multiple=True, default=["bbels"],
              help="Local machine(s) to compare: bbels, els, ls (repeatable). IS is always compared.")
@click.option("--schedule", "-s", "schedules", multiple=True, default=None,
              help="Schedule per --machine (or one for all): a calibrate JSON, preset, constant:K or comma list.")
@click.option("--out", "-o", type=click.Path(file_okay=False), default="compare", help="Output folder.")
def command(dataset, root, split, download, limit, only_classes, policy, checkpoint, num, seed, steps, label,
            batch_size, device, dtype, block_mb, index, threads, topk, nprobe, ef, k_factor, tail_correction, scan_cap,
            machines, schedules, out):
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
    retrieval = retrieval_from(topk, nprobe, ef, k_factor, tail_correction, scan_cap)
    denoisers = {}
    for m, s in zip(machines, scheds):
        make = machine_factory(m, images, data.labels, dev, block, index, fingerprint=data.fingerprint(),
                               retrieval=retrieval)
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
        "num": num, "label": label, "engine": "approx" if index else "exact", "index": index,
        "retrieval": retrieval.to_dict() if index else None,
        "dataset": data.meta, "fingerprint": data.fingerprint(), "device": str(dev), "dtype": dtype,
        "batch_size": batch_size,
    }
    paths = write_report(cmp, out, images)
    click.echo(format_table(cmp))
    click.echo(f"wrote {', '.join(str(p) for p in paths.values())} ({time.perf_counter() - start:.0f} s)")
