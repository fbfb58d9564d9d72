"""r^2 of approximate samples against exact ones from the same noise, for Retrieval settings given as JSON
(the N = 1,000 reuse figures of README.md; at N = 60,000 `patchdb validate --reuse` is used).

    OMP_NUM_THREADS=1 python docs/results/throughput/accuracy.py INDEX.h5 4 '{"reuse": 0}' '{"reuse": 4}' '{"reuse": 2}'

Seeds 0..B-1, unconditional, fashion-mnist-resnet-zeros, scan cap 0.5 unless the JSON says otherwise.
The exact samples are kept in INDEX.h5.exact{B}.pt and reused by later runs.
"""

import json
import os
import sys
import time

import torch

from patchdb.denoisers.factory import make_denoiser
from patchdb.denoisers.retrieval import Retrieval
from patchdb.evaluation.metrics import median, pearson
from patchdb.indexing.reader import open_index
from patchdb.sampler import ddim_sample, initial_noise

path, batch = sys.argv[1], int(sys.argv[2])
f = open_index(path)
schedule = "fashion-mnist-resnet-zeros"
noise = initial_noise(list(range(batch)), (f.channels, f.height, f.width))
cache = f"{path}.exact{batch}.pt"
if os.path.exists(cache):
    exact = torch.load(cache)
else:
    start = time.perf_counter()
    exact = ddim_sample(make_denoiser(f.machine, schedule, index=f, exact=True), noise, 20, None).samples
    torch.save(exact, cache)
    print(f"exact: {(time.perf_counter() - start) / batch:.1f} s/sample", flush=True)
for text in sys.argv[3:]:
    engine = make_denoiser(f.machine, schedule, index=f, retrieval=Retrieval(**{"scan_cap": 0.5, **json.loads(text)}))
    for k in engine.schedule.distinct():
        engine.prepare(k)
    start = time.perf_counter()
    out = ddim_sample(engine, noise, 20, None).samples
    seconds = (time.perf_counter() - start) / batch
    r2 = (pearson(out, exact) ** 2).tolist()
    print(f"{text}: {seconds:.2f} s/sample; r^2 vs exact per seed {[round(v, 5) for v in r2]}, "
          f"median {median(torch.tensor(r2)):.5f}, min {min(r2):.5f}", flush=True)
