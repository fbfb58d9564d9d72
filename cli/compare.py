"""``patchdb compare``: how well each machine predicts a trained network from the same noise."""

from __future__ import annotations

import time

import click

from patchdb.errors import PatchdbError
from patchdb.evaluation.compare import compare, format_table, write_report
from patchdb.evaluation.exactcheck import compare_exact_check
from patchdb.evaluation.factories import machine_factory
from patchdb.evaluation.perstep import PROTOCOLS, format_per_step, per_step, write_per_step
from patchdb.spec import Machine
from patchdb.store import claim_output

from .options import (
    DTYPES,
    dataset_options,
    network_options,
    parse_ints,
    parse_schedule_option,
    setup,
)


@click.command()
@dataset_options
@network_options
@click.option("--machine", "-m", "machines", multiple=True, default=["bbels"],
              help="Local machine(s) to compare: bbels, els, ls (repeatable). IS is always compared.")
@click.option("--schedule", "-s", "schedules", multiple=True, default=None,
              help="Schedule per --machine (or one for all): a calibrate JSON, preset, constant:K or comma list.")
@click.option("--protocol", type=click.Choice(PROTOCOLS), default="end-to-end", show_default=True,
              help="end-to-end: sample network and machines from the same noise, r^2 of the final images (docs/math.md); "
                   "per-step: feed the network's own DDIM trajectory to the machines, r^2 and MSE of D per step.")
@click.option("--at-steps", default=None,
              help="With --protocol per-step: evaluate the machines only at these sampler steps (comma list of "
                   "1..S; default all), e.g. to bound the cost of the exact engine on a large training set.")
@click.option("--out", "-o", type=click.Path(file_okay=False), default="compare", help="Output folder.")
@click.option("--force", is_flag=True, help="Write into an --out folder that holds files, replacing them (and create "
                                           "a missing parent folder).")
def command(dataset, root, split, download, limit, only_classes, policy, checkpoint, network, predict, net_schedule,
            net_time, num, seed, steps, label, batch_size, device, dtype, block_mb, index, exact_check, threads, retrieval,
            machines, schedules, protocol, at_steps, out, force, allow_other_data):
    """Sample the network and each machine from the same seeds; table of median r and r^2, scatter, grid
    (--protocol per-step: r^2 and MSE of D per step on the network's own trajectory)."""
    machines = [Machine.parse(m) for m in machines]
    machines = [m for m in machines if m is not Machine.IS]
    if not schedules:
        raise PatchdbError("give --schedule (e.g. the JSON 'patchdb calibrate' wrote, or a preset) for the local machines")
    if len(schedules) not in (1, len(machines)):
        raise PatchdbError(f"got {len(schedules)} --schedule for {len(machines)} --machine; give one, or one per machine")
    scheds = [parse_schedule_option(s, steps) for s in (schedules * len(machines) if len(schedules) == 1 else schedules)]
    out = claim_output(out, force, folder=True)
    if at_steps is not None and protocol != "per-step":
        raise PatchdbError("--at-steps belongs to --protocol per-step; add it or drop --at-steps")
    if exact_check and protocol == "per-step":
        raise PatchdbError("--exact-check belongs to the end-to-end protocol; drop it or --protocol per-step")
    dev, data, net, about, seeds, labels, images = setup(
        dataset, root, split, download, limit, only_classes, policy, checkpoint, network, predict, net_schedule,
        net_time, num, seed, label, device, dtype, threads, index, exact_check, allow_other_data)
    for s in scheds:
        s.check_fits(data.height, data.width)
    block = int(block_mb * 2**20)
    denoisers, exact = {}, {}
    for m, s in zip(machines, scheds):
        name = m.value if list(machines).count(m) == 1 else f"{m.value}:{s.name}"
        make = machine_factory(m, images, data.labels, dev, block, index, fingerprint=data.fingerprint(),
                               retrieval=retrieval)
        denoisers[name] = make(s)
        if exact_check:
            exact[name] = machine_factory(m, images, data.labels, dev, block)(s)
    denoisers["is"] = machine_factory(Machine.IS, images, data.labels, dev, block)(None)
    shape = (data.channels, data.height, data.width)
    click.echo(f"comparing {about['text']} with {', '.join(denoisers)} over {num} seeds ({protocol}), "
               f"{len(data)} training images of {data.name}", err=True)
    start = time.perf_counter()
    if protocol == "per-step":
        result = per_step(net, denoisers, shape, seeds, steps, labels, batch_size, dev, DTYPES[dtype], progress=True,
                          at_steps=parse_ints(at_steps, "--at-steps"))
    else:
        result = compare(net, denoisers, shape, seeds, steps, labels, batch_size, dev, DTYPES[dtype], progress=True)
        if exact_check:
            result.exact_check = compare_exact_check(result.samples, exact, shape, seeds, exact_check, steps, labels,
                                                     dev, DTYPES[dtype])
    result.settings = {
        "command": "compare", "protocol": protocol, "checkpoint": None if checkpoint is None else str(checkpoint),
        "network": about.get("network"), "weights": about["weights"], "model": about["model"], "machines": list(denoisers),
        "schedules": {m.value: list(s.sizes) for m, s in zip(machines, scheds)}, "steps": steps, "seed": seed,
        "num": num, "label": label, "engine": "approx" if index else "exact", "index": index,
        "retrieval": retrieval.to_dict() if index else None,
        "dataset": data.meta, "fingerprint": data.fingerprint(), "device": str(dev), "dtype": dtype,
        "batch_size": batch_size, "exact_check": exact_check, "at_steps": at_steps, "seconds": round(time.perf_counter() - start, 1),
    }
    if protocol == "per-step":
        paths = write_per_step(result, out)
        click.echo(format_per_step(result))
    else:
        paths = write_report(result, out, images)
        click.echo(format_table(result))
    click.echo(f"wrote {', '.join(str(p) for p in paths.values())} ({time.perf_counter() - start:.0f} s)")
