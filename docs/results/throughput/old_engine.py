"""Seconds per sample of the approximate engine as it was before issue 27 (git 17050b7), for the table
in README.md: whole 20-step samples from the same seeds as benchmarks/throughput.py, indexes loaded first.

    git archive 17050b7 patchdb cli | tar -x -C OLD
    OMP_NUM_THREADS=1 python docs/results/throughput/old_engine.py OLD INDEX.h5 1 8
"""

import sys
import time

sys.path.insert(0, sys.argv[1])  # the old package, before the installed one

from patchdb.indexfile import open_index  # noqa: E402  (old module paths)
from patchdb.sample import ddim_sample, initial_noise  # noqa: E402
from patchdb.score.approx import ApproxMachine  # noqa: E402

f = open_index(sys.argv[2])
f.cache_bytes = None
eng = ApproxMachine(f, "bbels", "fashion-mnist-resnet-zeros", topk=64, tail_samples=1024, scan_cap=0.5)
for k in eng.schedule.distinct():
    eng.prepare(k)
for batch in [int(b) for b in sys.argv[3:]]:
    noise = initial_noise(list(range(batch)), (1, 32, 32))
    start = time.perf_counter()
    ddim_sample(eng, noise, 20, None)
    print(f"old engine (17050b7), N={eng.n_images}, batch {batch}: {(time.perf_counter() - start) / batch:.2f} s/sample")
