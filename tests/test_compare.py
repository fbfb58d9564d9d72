"""Comparison: Pearson r (== numpy corrcoef), determinism, the report files, and one-line bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from patchdb.cli.main import main
from patchdb.errors import PatchdbError
from patchdb.evaluation.compare import compare, format_table, nearest_images, write_report
from patchdb.evaluation.factories import machine_factory, seed_labels
from patchdb.evaluation.metrics import pearson
from patchdb.schedule import ScaleSchedule

torch.set_num_threads(1)


def tiny_set(n=6, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, size, size, generator=g) * 2 - 1


def test_pearson_equals_numpy_corrcoef():
    g = torch.Generator().manual_seed(1)
    u, v = torch.randn(4, 3, 5, 5, generator=g), torch.randn(4, 3, 5, 5, generator=g)
    v = v + 0.8 * u
    r = pearson(u, v)
    for i in range(4):
        assert abs(float(r[i]) - np.corrcoef(u[i].flatten().numpy(), v[i].flatten().numpy())[0, 1]) < 1e-12
    assert torch.allclose(pearson(u, 2 * u + 1), torch.ones(4, dtype=torch.float64))


def small_compare(images, seeds=(0, 1, 2, 3), batch_size=2):
    make_bbels = machine_factory("bbels", images)
    net = make_bbels(ScaleSchedule((3, 3, 5)))  # a "network" that is a machine: r must be 1 for that machine
    machines = {"bbels": make_bbels(ScaleSchedule((3, 3, 5))), "els-big": machine_factory("els", images)(ScaleSchedule((5, 5, 5))),
                "is": machine_factory("is", images)(None)}
    return compare(net, machines, (1, 8, 8), list(seeds), steps=3, batch_size=batch_size)


def test_compare_identical_machine_has_r_one_and_summary():
    cmp = small_compare(tiny_set())
    assert torch.allclose(cmp.r["bbels"], torch.ones(4, dtype=torch.float64))
    summ = cmp.summary()
    assert summ["bbels"]["median_r2"] == pytest.approx(1.0) and summ["bbels"]["seeds"] == 4
    assert summ["bbels"]["beats_is"] == float((cmp.r["is"] ** 2 < 1 - 1e-12).double().mean())
    assert "beats_is" not in summ["is"]
    assert summ["is"]["median_r2"] == pytest.approx(float(np.median(cmp.r["is"].numpy() ** 2)))
    assert "r^2" in format_table(cmp)


def test_compare_is_deterministic_and_batch_independent():
    images = tiny_set()
    a, b, c = small_compare(images), small_compare(images), small_compare(images, batch_size=3)
    for name in a.r:
        assert torch.equal(a.r[name], b.r[name])
        assert torch.allclose(a.r[name], c.r[name], atol=1e-6)
    assert torch.equal(a.samples["net"], b.samples["net"])


def test_nearest_images_and_report(tmp_path):
    images = tiny_set(n=10)
    assert nearest_images(images[[3, 7]] + 0.01, images).tolist() == [3, 7]
    cmp = small_compare(images, seeds=(0, 1))
    paths = write_report(cmp, tmp_path / "rep", images)
    data = json.loads(paths["compare.json"].read_text())
    assert data["per_seed_r"]["bbels"] == pytest.approx([1.0, 1.0])
    assert data["summary"]["is"]["median_r"] == pytest.approx(float(np.median(cmp.r["is"].numpy())))
    assert "Pearson" in data["definitions"]["r"]
    assert all(p.stat().st_size > 0 for p in paths.values())


def test_seed_labels_and_bad_label_input():
    assert seed_labels(3, None, False, 10) is None
    assert seed_labels(4, None, True, 3).tolist() == [0, 1, 2, 0]
    with pytest.raises(PatchdbError, match="needs labels"):
        seed_labels(3, "none", True, 10)
    with pytest.raises(PatchdbError, match="unconditional"):
        seed_labels(3, "2", False, 10)
    with pytest.raises(PatchdbError, match="one label per seed"):
        compare(lambda x, t, l=None: x, {"is": lambda x, t, l=None: x}, (1, 4, 4), [0, 1], labels=torch.tensor([0]))


def run(args):
    return CliRunner().invoke(main, args)


def test_cli_compare_twice_identical(tmp_path, tiny_checkpoint):
    base = ["compare", "-c", str(tiny_checkpoint), "--limit", "12", "--num", "2", "--steps", "2", "-s", "3,5"]
    res1 = run(base + ["--out", str(tmp_path / "a")])
    assert res1.exit_code == 0, res1.output
    res2 = run(base + ["--out", str(tmp_path / "b")])
    assert res2.exit_code == 0, res2.output
    a = json.loads((tmp_path / "a" / "compare.json").read_text())
    b = json.loads((tmp_path / "b" / "compare.json").read_text())
    assert a["per_seed_r"] == b["per_seed_r"] and a["summary"] == b["summary"]
    assert set(a["per_seed_r"]) == {"bbels", "is"}
    assert (tmp_path / "a" / "grid.png").exists() and (tmp_path / "a" / "scatter.png").exists()


def test_cli_compare_bad_inputs_one_line(tmp_path, tiny_checkpoint):
    ck = str(tiny_checkpoint)
    cases = [
        (["--steps", "20", "-s", "3,5"], "sizes but the sampler runs 20 steps"),
        (["--dataset", "cifar10", "--root", str(tmp_path)], None),  # missing data: one line, whatever the reason
        (["-s", "3,5", "--steps", "2", "--label", "1"], "unconditional"),
        (["-c", str(tmp_path / "nope"), "-s", "3,5", "--steps", "2"], "does not exist"),
    ]
    for extra, expected in cases:
        args = ["compare", "-c", ck, "--limit", "12", "--num", "1", "--out", str(tmp_path / "o")] + extra
        res = run(args)
        assert res.exit_code == 2, (extra, res.output)
        assert len(res.output.strip().splitlines()) == 1, res.output
        if expected:
            assert expected in res.output


def test_cli_compare_channel_mismatch(tmp_path):
    from patchdb.baselines import ModelConfig, TrainConfig, train

    out = tmp_path / "rgb"
    train(ModelConfig(channels=3, width=4, depth=1, emb_dim=8), TrainConfig(epochs=1, batch_size=4, ema=0),
          torch.rand(4, 3, 32, 32) * 2 - 1, None, out)
    res = run(["compare", "-c", str(out), "--limit", "12", "--num", "1", "-s", "3", "--steps", "1", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "1x32x32 images but the network" in res.output and "takes 3x32x32" in res.output


def test_cli_conditional_network_needs_labels(tmp_path):
    from patchdb.baselines import ModelConfig, TrainConfig, train

    out = tmp_path / "cond"
    train(ModelConfig(num_classes=10, width=4, depth=1, emb_dim=8), TrainConfig(epochs=1, batch_size=4, ema=0),
          torch.rand(4, 1, 32, 32) * 2 - 1, torch.arange(4), out)
    res = run(["compare", "-c", str(out), "--limit", "12", "--num", "1", "-s", "3", "--steps", "1", "--label", "none",
               "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "needs labels" in res.output
    res = run(["compare", "-c", str(out), "--limit", "12", "--num", "2", "-s", "3", "--steps", "1", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "o" / "compare.json").read_text())["labels"] == [0, 1]


def test_index_engine_plugs_into_calibrate_and_compare(tmp_path):
    """With a Flat index and K covering every candidate, the approximate engine gives the exact answer."""
    from patchdb.data import Dataset
    from patchdb.evaluation.calibrate import calibrate
    from patchdb.indexing.builder import BuildConfig, build_index_file

    g = torch.Generator().manual_seed(3)
    ds = Dataset(torch.randint(0, 256, (5, 1, 8, 8), generator=g, dtype=torch.uint8), torch.zeros(5, dtype=torch.long),
                 ("0",), "tiny", {"policy": "none"})
    path = tmp_path / "i.h5"
    build_index_file(ds, path, BuildConfig("bbels", (3, 5), index_key="Flat"), progress=False)
    images = ds.to_float(torch.float64)
    exact = machine_factory("bbels", images)
    approx = machine_factory("bbels", images, index=str(path), topk=5 * 64, fingerprint=ds.fingerprint())
    net = exact(ScaleSchedule((3, 3)))
    c_exact = calibrate(net, exact, (1, 8, 8), [0, 1], (3, 5), steps=2, dtype=torch.float64)
    c_approx = calibrate(net, approx, (1, 8, 8), [0, 1], (3, 5), steps=2, dtype=torch.float64)
    assert c_approx.schedule == c_exact.schedule
    assert torch.allclose(c_approx.cosine, c_exact.cosine, atol=1e-6)
    with pytest.raises(PatchdbError, match="another dataset"):
        machine_factory("bbels", images, index=str(path), fingerprint="0" * 64)
