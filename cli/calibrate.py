"""``patchdb calibrate``: per-step patch sizes of a machine that best match a trained network."""

from __future__ import annotations

import time

import click

from patchdb.errors import PatchdbError
from patchdb.evaluation.calibrate import CRITERIA, calibrate, check_sizes, write_calibration
from patchdb.evaluation.exactcheck import calibrate_exact_check, format_calibrate_check
from patchdb.evaluation.factories import machine_factory
from patchdb.spec import Machine
from patchdb.store import claim_output

from .options import DTYPES, dataset_options, network_options, setup


@click.command()
@dataset_options
@network_options
@click.option("--machine", "-m", default="bbels", help="Local machine to calibrate: bbels, els or ls.")
@click.option("--sizes", default="auto", show_default=True,
              help="Candidate odd patch sizes, comma separated, or 'auto': 3, 5, ... up to the network's receptive "
                   "field (ResNet: 2 (depth + 2) + 1; UNet: the image; --network: measured by a gradient), capped at the image size.")
@click.option("--criterion", type=click.Choice(list(CRITERIA)), default="cosine", show_default=True,
              help="What picks each step's size: 'cosine' of network and machine scores (docs/math.md, the paper's default) or "
                   "'rollout', the Pearson r of the network's final image when the machine takes that one step "
                   "(an extension, a few to ~15% slower; keeps the cosine table too).")
@click.option("--out", "-o", type=click.Path(dir_okay=False), default="schedule.json",
              help="Schedule JSON (usable as --schedule); the heat map PNG goes beside it.")
@click.option("--force", is_flag=True, help="Replace an existing --out and its PNG (and create a missing folder).")
def command(dataset, root, split, download, limit, only_classes, policy, checkpoint, network, predict, net_schedule,
            net_time, num, seed, steps, label, batch_size, device, dtype, block_mb, index, exact_check, threads, retrieval,
            machine, sizes, criterion, out, force, allow_other_data):
    """Calibrate a scale schedule against a trained network (best size per step, median over seeds)."""
    out = claim_output(out, force, suffixes=(".json",))
    claim_output(out.with_suffix(".png"), force, what="--out (its heat map)")
    machine = Machine.parse(machine)
    if machine is Machine.IS:
        raise PatchdbError("IS has no patch size to calibrate; choose bbels, els or ls")
    auto = sizes.strip() == "auto"
    if not auto:
        try:
            candidates = [int(k) for k in sizes.split(",")]
            if not all(k.strip().isascii() for k in sizes.split(",")):
                raise ValueError(sizes)
        except ValueError:
            raise PatchdbError(f"--sizes '{sizes}' is not a comma list of odd integers (e.g. 3,5,7) or 'auto'") from None
    dev, data, net, about, seeds, labels, images = setup(
        dataset, root, split, download, limit, only_classes, policy, checkpoint, network, predict, net_schedule,
        net_time, num, seed, label, device, dtype, threads, index, exact_check, allow_other_data)
    if auto:
        candidates = list(range(3, about["receptive_field"] + 1, 2))
    candidates = check_sizes(candidates, data.height, data.width)
    make = machine_factory(machine, images, data.labels, dev, int(block_mb * 2**20), index, fingerprint=data.fingerprint(),
                           retrieval=retrieval)
    click.echo(f"calibrating {machine.value} against {about['text']} over {num} seeds, sizes {list(candidates)}, "
               f"{len(data)} training images of {data.name}", err=True)
    start = time.perf_counter()
    cal = calibrate(net, make, (data.channels, data.height, data.width), seeds, candidates, steps, labels,
                    batch_size, dev, DTYPES[dtype], progress=True, criterion=criterion)
    seconds = round(time.perf_counter() - start, 1)
    if exact_check:
        exact = machine_factory(machine, images, data.labels, dev, int(block_mb * 2**20))
        cal.exact_check = calibrate_exact_check(net, make, exact, (data.channels, data.height, data.width), seeds,
                                                exact_check, cal.sizes, steps, labels, dev, DTYPES[dtype])
    cal.settings = {
        "name": f"calibrated-{machine.value}-{about['name']}", "command": "calibrate",
        "checkpoint": None if checkpoint is None else str(checkpoint), "network": about.get("network"),
        "weights": about["weights"], "model": about["model"], "machine": machine.value, "steps": steps, "seed": seed,
        "num": num, "label": label, "engine": "approx" if index else "exact", "index": index,
        "retrieval": retrieval.to_dict() if index else None, "dataset": data.meta,
        "fingerprint": data.fingerprint(), "device": str(dev), "dtype": dtype, "seconds": seconds,
        **({"exact_check": exact_check} if exact_check else {}),
    }
    path, png = write_calibration(cal, out)
    click.echo(f"schedule {','.join(str(k) for k in cal.schedule.sizes)} (step 1 = lowest noise first; by {criterion})")
    if cal.rollout is not None:
        click.echo(f"  by cosine it would be {','.join(str(k) for k in cal.choose('cosine').schedule.sizes)}")
    if cal.exact_check is not None:
        click.echo(format_calibrate_check(cal.exact_check))
    click.echo(f"wrote {path} and {png} ({cal.settings['seconds']:.0f} s)")
