"""Scale calibration: recovers a known patch size; bad sizes fail in one line; files readable by `sample`."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from patchdb.cli.main import main
from patchdb.denoisers.exact import ExactMachine
from patchdb.errors import PatchdbError
from patchdb.evaluation.calibrate import (
    Calibration,
    calibrate,
    check_sizes,
    cosine,
    median_size,
    merge_calibrations,
    read_calibration,
    write_calibration,
)
from patchdb.evaluation.factories import machine_factory
from patchdb.schedule import ScaleSchedule, parse_schedule

torch.set_num_threads(1)


def tiny_set(n=6, size=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, size, size, generator=g) * 2 - 1).double()


class FixedSizeNet:
    """A 'network' whose denoiser (hence epsilon) is exactly the bbELS machine's at patch size k."""

    def __init__(self, images, k):
        self.machine, self.k = ExactMachine(images, "bbels"), k

    def __call__(self, x, t, labels=None):
        return self.machine.denoise(x, t, k=self.k)


@pytest.mark.parametrize("true_k", [3, 5])
def test_calibration_recovers_the_size_of_a_synthetic_network(true_k):
    images = tiny_set()
    cal = calibrate(FixedSizeNet(images, true_k), machine_factory("bbels", images), (1, 10, 10),
                    seeds=[0, 1, 2], sizes=(3, 5, 7), steps=5, dtype=torch.float64)
    assert cal.schedule.sizes == (true_k,) * 5
    k_col = cal.sizes.index(true_k)
    assert torch.allclose(cal.cosine[:, k_col, :], torch.ones(5, 3, dtype=torch.float64))
    assert (cal.best_per_seed() == true_k).all()


def test_calibration_runs_one_size_at_a_time_with_the_step_by_step_cosines():
    """Each candidate size's machine takes all the steps of a batch in a row (so an index keeps one size
    loaded), and every cosine equals one computed step by step on the network's own trajectory."""
    from patchdb.sampler import ddim_sample
    from patchdb.schedule import alpha_sigma

    images, steps, sizes = tiny_set(), 4, (3, 5, 7)
    net = FixedSizeNet(images, 5)
    calls = []

    def factory(schedule):
        machine, k = ExactMachine(images, "bbels"), schedule.sizes[0]

        def call(x, t, labels=None):
            calls.append(k)
            return machine.denoise(x, t, k=k)

        return call

    cal = calibrate(net, factory, (1, 10, 10), seeds=[0, 1, 2], sizes=sizes, steps=steps, batch_size=2,
                    dtype=torch.float64)
    runs = [k for i, k in enumerate(calls) if i == 0 or calls[i - 1] != k]
    assert runs == list(sizes) * 2 and len(calls) == len(sizes) * steps * 2  # two batches (2 + 1 seeds)

    # Independently: follow the network, and at each step ask every size about the same x_t.
    ref = ExactMachine(images, "bbels")
    expected = torch.zeros(steps, len(sizes), 3, dtype=torch.float64)
    for seed in range(3):
        def probe(x, t, labels=None, seed=seed):
            a, _ = alpha_sigma(t)
            d_net = net(x, t)
            for j, k in enumerate(sizes):
                expected[round(t * steps) - 1, j, seed] = cosine(x - a * d_net, x - a * ref.denoise(x, t, k=k))[0]
            return d_net

        ddim_sample(probe, torch.randn(1, 1, 10, 10, generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.float64), steps)
    assert torch.allclose(cal.cosine, expected, atol=1e-12)


def brute_median_size(table, sizes):
    """Independent rule: sort each step's per-seed best sizes; odd M: the middle one; even M: of the two
    middle ones, the one with the higher seed-averaged cosine (the smaller on a tie)."""
    out = []
    for step in table.tolist():  # (K, M)
        m = len(step[0])
        best = sorted(max(range(len(sizes)), key=lambda j, s=s: (step[j][s], -j)) for s in range(m))
        low, high = best[(m - 1) // 2], best[m // 2]
        mean = [sum(row) / m for row in step]
        out.append(sizes[high] if mean[high] > mean[low] else sizes[low])
    return out


def test_median_size_and_cosine():
    sizes = (3, 5, 7, 9)
    # Odd M: the plain median of the best sizes (9, 5, 7 -> 7).
    odd = torch.zeros(1, 4, 3, dtype=torch.float64)
    odd[0, 3, 0] = odd[0, 1, 1] = odd[0, 2, 2] = 1.0
    assert median_size(odd, sizes).tolist() == [7]
    # Even M: best sizes 5 and 9; size 9 has the higher mean cosine, so 9 (the lower median would say 5).
    even = torch.zeros(1, 4, 2, dtype=torch.float64)
    even[0, 1, 0], even[0, 3, 0] = 0.9, 0.8
    even[0, 1, 1], even[0, 3, 1] = 0.1, 0.95
    assert median_size(even, sizes).tolist() == [9]
    even[0, 3, 0] = 0.0  # now 5 has the higher mean: 5
    assert median_size(even, sizes).tolist() == [5]
    g = torch.Generator().manual_seed(0)
    for m in (1, 2, 3, 4, 6):
        table = torch.rand(20, 4, m, generator=g, dtype=torch.float64)
        assert median_size(table, sizes).tolist() == brute_median_size(table, sizes)
    u = torch.randn(2, 1, 4, 4)
    assert torch.allclose(cosine(u, 3 * u), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(cosine(u, -u), -torch.ones(2, dtype=torch.float64))


def test_bad_sizes():
    with pytest.raises(PatchdbError, match="larger than the 8x8 image"):
        check_sizes([3, 9, 11], 8, 8)
    with pytest.raises(PatchdbError, match="odd"):
        check_sizes([4], 8, 8)
    assert check_sizes([7, 3, 3, 5], 8, 8) == (3, 5, 7)


def test_written_schedule_is_readable_and_heatmap_exists(tmp_path):
    images = tiny_set(n=4, size=8)
    cal = calibrate(FixedSizeNet(images, 3), machine_factory("bbels", images), (1, 8, 8), seeds=[0, 1],
                    sizes=(3, 5), steps=3, dtype=torch.float64)
    path, png = write_calibration(cal, tmp_path / "sched.json")
    assert png.stat().st_size > 0
    sched = parse_schedule(str(path), steps=3)
    assert isinstance(sched, ScaleSchedule) and sched.sizes == (3, 3, 3)
    data = json.loads(path.read_text())
    assert len(data["mean_cosine"]) == 3 and data["candidates"] == [3, 5]
    with pytest.raises(PatchdbError, match="20 steps"):
        parse_schedule(str(path), steps=20)


def test_cli_calibrate_bad_sizes_one_line(tmp_path, tiny_checkpoint):
    res = CliRunner().invoke(main, ["calibrate", "-c", str(tiny_checkpoint), "--limit", "20", "--num", "1",
                                    "--sizes", "3,35", "--out", str(tmp_path / "s.json")])
    assert res.exit_code == 2
    assert "larger than the 32x32 image" in res.output and len(res.output.strip().splitlines()) == 1


def test_cli_calibrate_runs(tmp_path, tiny_checkpoint):
    out = tmp_path / "s.json"
    res = CliRunner().invoke(main, ["calibrate", "-c", str(tiny_checkpoint), "--limit", "12", "--num", "2",
                                    "--steps", "2", "--sizes", "3,5", "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    sizes = data["sizes"]
    assert len(sizes) == 2 and set(sizes) <= {3, 5} and out.with_suffix(".png").exists()
    assert len(data["settings"]["weights"]) == 16 and torch.tensor(data["cosine"]).shape == (2, 2, 2)


class SwitchingNet:
    """A 'network' that is the bbELS machine at size 3 for the first half of the seeds' steps, 5 after."""

    def __init__(self, images):
        self.machine = ExactMachine(images, "bbels")

    def __call__(self, x, t, labels=None):
        return self.machine.denoise(x, t, k=3 if t <= 0.5 else 5)


def test_merging_runs_over_disjoint_seeds_equals_one_run(tmp_path):
    images = tiny_set()
    make = machine_factory("bbels", images)
    net = SwitchingNet(images)
    run = {"shape": (1, 10, 10), "sizes": (3, 5, 7), "steps": 4, "dtype": torch.float64}
    whole = calibrate(net, make, seeds=[0, 1, 2], **run)
    parts = [calibrate(net, make, seeds=[0, 1], **run), calibrate(net, make, seeds=[2], **run)]
    settings = {"weights": "abc", "model": {"width": 4}, "machine": "bbels", "steps": 4, "seconds": 2.0}
    back = []
    for j, part in enumerate(parts):  # through the JSON files, as the merge script reads them
        part.settings = dict(settings)
        path, _ = write_calibration(part, tmp_path / f"part{j}.json")
        back.append(read_calibration(json.loads(path.read_text()), str(path)))
    merged = merge_calibrations(back)
    assert merged.seeds == [0, 1, 2]
    assert torch.allclose(merged.cosine, whole.cosine, rtol=0, atol=1e-12)
    assert merged.schedule.sizes == whole.schedule.sizes == (3, 3, 5, 5)
    assert merged.settings["num"] == 3 and merged.settings["seconds"] == 4.0
    # The JSON keeps the table at full precision: read back, it is the table that was computed.
    assert torch.equal(back[0].cosine, parts[0].cosine)


def test_merging_runs_over_other_sizes_equals_one_run():
    images = tiny_set()
    make = machine_factory("bbels", images)
    net = SwitchingNet(images)
    run = {"shape": (1, 10, 10), "seeds": [0, 1], "steps": 4, "dtype": torch.float64}
    whole = calibrate(net, make, sizes=(1, 3, 5, 7), **run)
    merged = merge_calibrations([calibrate(net, make, sizes=(3, 5, 7), **run), calibrate(net, make, sizes=(1, 3), **run)])
    assert merged.sizes == (1, 3, 5, 7) and merged.seeds == [0, 1]
    assert torch.allclose(merged.cosine, whole.cosine, rtol=0, atol=1e-12)
    assert merged.schedule.sizes == whole.schedule.sizes == (3, 3, 5, 5)


def test_merge_recomputes_the_median_over_all_seeds():
    g = torch.Generator().manual_seed(1)
    sizes = (3, 5, 7, 9)
    tables = [torch.rand(6, 4, m, generator=g, dtype=torch.float64) for m in (2, 3, 1)]
    parts, first = [], 0
    for table in tables:
        seeds = list(range(first, first + table.shape[2]))
        first += table.shape[2]
        parts.append(Calibration(sizes, seeds, table, ScaleSchedule(tuple(median_size(table, sizes).tolist())), {}))
    merged = merge_calibrations(parts)
    assert list(merged.schedule.sizes) == brute_median_size(torch.cat(tables, dim=2), sizes)


def test_merge_refuses_what_does_not_belong_together():
    table = torch.rand(2, 2, 1, dtype=torch.float64)

    def cal(seeds, sizes=(3, 5), **settings):
        return Calibration(sizes, seeds, table.clone(), ScaleSchedule((3, 3)), {"weights": "w", **settings})

    with pytest.raises(PatchdbError, match="share some seeds"):
        merge_calibrations([cal([0, 1]), cal([1, 2])])
    with pytest.raises(PatchdbError, match="different cosines"):
        merge_calibrations([cal([0]), Calibration((3, 5), [0], table + 0.1, ScaleSchedule((3, 3)), {"weights": "w"})])
    with pytest.raises(PatchdbError, match="same --sizes"):
        merge_calibrations([cal([0]), cal([1], sizes=(3, 7))])
    with pytest.raises(PatchdbError, match="differ in 'weights'"):
        merge_calibrations([cal([0]), cal([1], weights="other")])
    with pytest.raises(PatchdbError, match="differ in 'machine'"):
        merge_calibrations([cal([0], machine="bbels"), cal([1], machine="els")])
    with pytest.raises(PatchdbError, match="no per-seed cosine table"):
        read_calibration({"sizes": [3], "candidates": [3], "seeds": [0]}, "old.json")
    with pytest.raises(PatchdbError, match="does not match"):
        read_calibration({"sizes": [3], "candidates": [3, 5], "seeds": [0], "cosine": [[[1.0]]]}, "bad.json")


def test_cli_default_sizes_reach_the_receptive_field(tmp_path, tiny_checkpoint):
    out = tmp_path / "s.json"  # tiny_checkpoint: ResNet of depth 1, 3 convolutions, receptive field 7
    res = CliRunner().invoke(main, ["calibrate", "-c", str(tiny_checkpoint), "--limit", "12", "--num", "1",
                                    "--steps", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["candidates"] == [3, 5, 7]
    res = CliRunner().invoke(main, ["calibrate", "-c", str(tiny_checkpoint), "--sizes", "3,five", "--out", str(out),
                                    "--force"])  # an existing --out needs --force (issue 29): the error is the sizes'
    assert res.exit_code == 2 and "'auto'" in res.output


# ------------------------------------------------------------------------------------------------
# The rollout criterion: size k at step i only, the network for every other step, final image's r
# ------------------------------------------------------------------------------------------------


def brute_rollout(net, machine, shape, seed, steps):
    """(S, K) final-image Pearson r, one full sampler run per (step, size): an independent reading of the rule."""
    from patchdb.evaluation.metrics import pearson
    from patchdb.sampler import ddim_sample, initial_noise

    noise = initial_noise([seed], shape, torch.float64)
    own = ddim_sample(net, noise.clone(), steps).samples
    out = torch.zeros(steps, len(machine), dtype=torch.float64)
    for i in range(1, steps + 1):
        for j, m in enumerate(machine):
            def hybrid(x, t, labels=None, i=i, m=m):
                return m(x, t, labels) if round(t * steps) == i else net(x, t, labels)
            out[i - 1, j] = pearson(ddim_sample(hybrid, noise.clone(), steps).samples, own)[0]
    return out


def test_rollout_table_equals_one_hybrid_run_per_step_and_size():
    images = tiny_set()
    make = machine_factory("bbels", images)
    net = SwitchingNet(images)
    sizes, steps = (3, 5, 7), 4
    cal = calibrate(net, make, (1, 10, 10), seeds=[0, 1], sizes=sizes, steps=steps, dtype=torch.float64,
                    criterion="rollout")
    assert cal.criterion == "rollout" and cal.rollout.shape == (steps, 3, 2)
    machines = [make(ScaleSchedule((k,) * steps)) for k in sizes]
    for col, seed in enumerate([0, 1]):
        brute = brute_rollout(net, machines, (1, 10, 10), seed, steps)
        assert torch.allclose(cal.rollout[:, :, col], brute, rtol=0, atol=1e-12)
    # the network *is* size 3 at t <= 0.5 and size 5 after: substituting those leaves its image unchanged
    assert torch.allclose(cal.rollout[:2, 0, :], torch.ones(2, 2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(cal.rollout[2:, 1, :], torch.ones(2, 2, dtype=torch.float64), atol=1e-12)
    assert cal.schedule.sizes == (3, 3, 5, 5)
    # both tables are kept: the cosine schedule is one call away and agrees here
    assert cal.choose("cosine").schedule.sizes == (3, 3, 5, 5)


def test_rollout_survives_json_and_merge(tmp_path):
    images = tiny_set()
    make = machine_factory("bbels", images)
    net = SwitchingNet(images)
    run = {"shape": (1, 10, 10), "sizes": (3, 5), "steps": 3, "dtype": torch.float64}
    whole = calibrate(net, make, seeds=[0, 1, 2], criterion="rollout", **run)
    parts = [calibrate(net, make, seeds=[0], criterion="rollout", **run), calibrate(net, make, seeds=[1, 2], criterion="rollout", **run)]
    back = []
    for j, part in enumerate(parts):
        path, _ = write_calibration(part.choose("cosine"), tmp_path / f"p{j}.json")
        back.append(read_calibration(json.loads(path.read_text()), str(path)))
    assert back[0].criterion == "cosine" and torch.equal(back[0].rollout, parts[0].rollout)
    assert calibrate(net, make, seeds=[0], **run).rollout is None  # a cosine run does not pay for the rollouts
    merged = merge_calibrations(back, "rollout")
    assert torch.allclose(merged.rollout, whole.rollout, rtol=0, atol=1e-12)
    assert merged.schedule.sizes == whole.schedule.sizes and merged.criterion == "rollout"
    old = Calibration((3, 5), [5], torch.rand(3, 2, 1, dtype=torch.float64), ScaleSchedule((3, 3, 3)), {})
    with pytest.raises(PatchdbError, match="rollout table"):
        merge_calibrations([parts[0], old], "rollout")
    assert merge_calibrations([parts[0], old], "cosine").rollout is None  # by cosine, cosine-only parts still merge
    with pytest.raises(PatchdbError, match="unknown calibration criterion"):
        merge_calibrations([parts[0]], "psnr")
    with pytest.raises(PatchdbError, match="no rollout table"):
        read_calibration({"sizes": [3], "candidates": [3], "seeds": [0], "cosine": [[[1.0]]], "criterion": "rollout"}, "x.json")


def test_cli_criterion_rollout(tmp_path, tiny_checkpoint):
    out = tmp_path / "r.json"
    res = CliRunner().invoke(main, ["calibrate", "-c", str(tiny_checkpoint), "--limit", "12", "--num", "1",
                                    "--steps", "2", "--sizes", "3,5", "--criterion", "rollout", "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["criterion"] == "rollout" and "by rollout" in res.output and "by cosine it would be" in res.output
    assert len(data["rollout"]) == 2 and parse_schedule(str(out), steps=2).sizes == tuple(data["sizes"])
