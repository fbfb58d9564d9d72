"""Runs through Ray (issue 28): a local cluster started here, the same bits as a local run, and a run
whose Ray worker is killed mid-way completing with the same samples. Skipped without Ray."""

import json
import os
import signal

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from test_runs import base, ok, tiny  # noqa: F401  (tiny: the module's dataset fixture)

from patchdb.runs import RunSpec, open_run, run_samples


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 2 CPUs on 127.0.0.1, started by this test module and stopped after it."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_run_has_the_same_bits_as_a_local_run(tiny, tmp_path, cluster):  # noqa: F811
    ok([*base(tiny), "--seeds", "0-7", "--shard-size", 2, "--out", tmp_path / "local"])
    res = ok([*base(tiny), "--seeds", "0-7", "--shard-size", 2, "--ray", "auto", "--out", tmp_path / "ray"])
    assert "Ray: 1 actor(s)" in res.output
    a, b = open_run(tmp_path / "local"), open_run(tmp_path / "ray")
    assert np.array_equal(a.samples, b.samples) and np.array_equal(a.seeds, b.seeds)
    workers = {json.loads(line)["worker"] for line in (tmp_path / "ray" / "log.jsonl").read_text().splitlines()}
    assert all(int(w.rsplit(":", 1)[1]) != os.getpid() for w in workers)  # computed in the actor, not here


def test_a_killed_ray_worker_is_restarted_and_the_run_completes_with_the_same_samples(tiny, tmp_path, cluster):  # noqa: F811
    spec = RunSpec({"kind": "dataset", "dataset": str(tiny), "policy": "none"}, "bbels", "3,3,5", batch_size=2)
    seeds = list(range(12))
    run_samples(tmp_path / "local", spec, seeds, shard_size=2, progress=False)
    killed = []

    def kill_once(info):
        if not killed:  # the actor that finished the first shard has the next one in flight: kill it
            pid = int(info["worker"].rsplit(":", 1)[1])
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    summary = run_samples(tmp_path / "ray", spec, seeds, shard_size=2, ray="auto", progress=False, on_shard=kill_once)
    assert summary.shards_computed == 6 and killed
    assert np.array_equal(open_run(tmp_path / "ray").samples, open_run(tmp_path / "local").samples)
    workers = [json.loads(line)["worker"] for line in (tmp_path / "ray" / "log.jsonl").read_text().splitlines()]
    pids = {int(w.rsplit(":", 1)[1]) for w in workers}
    assert killed[0] in pids and len(pids) >= 2  # shards after the kill came from the restarted actor
