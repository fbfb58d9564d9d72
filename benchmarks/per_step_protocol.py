"""Per-step protocol over the library API (the same computation as ``patchdb compare --protocol per-step``).

    python benchmarks/per_step_protocol.py CHECKPOINT SCHEDULE.json OUT_FOLDER --seeds 0-3 DATASET_ARGS...

DATASET_ARGS: --dataset NAME_OR_PATH [--root R] [--split S] [--limit N]. Machines: bbELS with SCHEDULE
(exact engine over the dataset) and IS. Writes OUT_FOLDER/perstep.{json,txt,png}.
"""

import argparse
import time

import torch

from patchdb.data import load_dataset
from patchdb.evaluation.factories import load_network, machine_factory
from patchdb.evaluation.perstep import format_per_step, per_step, write_per_step
from patchdb.schedule import parse_schedule
from patchdb.spec import Machine

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("checkpoint")
    p.add_argument("schedule")
    p.add_argument("out")
    p.add_argument("--seeds", default="0-3", help="first-last")
    p.add_argument("--dataset", required=True)
    p.add_argument("--root", default=None)
    p.add_argument("--split", default="train")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    first, last = (int(v) for v in a.seeds.split("-"))
    seeds = list(range(first, last + 1))
    data = load_dataset(a.dataset, root=a.root, split=a.split, limit=a.limit)
    net, cfg, _ = load_network(a.checkpoint, data.channels, data.height, data.width)
    images = data.to_float(torch.float32)
    sched = parse_schedule(a.schedule, a.steps)
    machines = {"bbels": machine_factory(Machine.BBELS, images, data.labels)(sched),
                "is": machine_factory(Machine.IS, images, data.labels)(None)}
    start = time.perf_counter()
    ps = per_step(net, machines, (data.channels, data.height, data.width), seeds, a.steps, batch_size=len(seeds),
                  progress=True)
    ps.settings = {"command": "benchmarks/per_step_protocol.py", "checkpoint": a.checkpoint, "model": cfg.to_dict(),
                   "schedule": list(sched.sizes), "schedule_file": a.schedule, "steps": a.steps, "seeds": seeds,
                   "engine": "exact", "dataset": data.meta, "fingerprint": data.fingerprint(), "threads": a.threads,
                   "seconds": round(time.perf_counter() - start, 1)}
    write_per_step(ps, a.out)
    print(format_per_step(ps))
    print(f"{ps.settings['seconds']:.0f} s")
