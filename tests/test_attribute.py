"""Attribution (patchdb.attribute, `patchdb attribute`, `patchdb query`) on tiny data.

The acceptance check: for samples drawn at small N, the stored contributors and weights agree
with a loop-by-loop recomputation at the x_t the sampler actually saw.
"""

import json
import math

import h5py
import numpy as np
import pytest
import torch
from brute import candidates, schedule_ab, window
from click.testing import CliRunner

from patchdb.cli.main import main
from patchdb.attribute import (
    attrib_path,
    attribute_file,
    dominant_sources,
    read_attribution,
    select_pixels,
    summarize,
)
from patchdb.data import load_dataset
from patchdb.denoisers.exact import ExactMachine
from patchdb.errors import PatchdbError
from patchdb.sampler import ddim_sample, initial_noise
from patchdb.schedule import parse_schedule
from patchdb.store import read_samples

SCHEDULE = "3,3,5,5"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 10-image 8x8 dataset and bbELS / IS / conditional sample files drawn from it by the CLI."""
    root = tmp_path_factory.mktemp("attr")
    rng = np.random.default_rng(0)
    images = (rng.random((10, 8, 8)) * 255).astype(np.uint8)
    np.savez(root / "tiny.npz", images=images, labels=np.arange(10) % 2)
    other = images.copy()
    other[0, 0, 0] ^= 1
    np.savez(root / "other.npz", images=other, labels=np.arange(10) % 2)
    runner = CliRunner()
    common = ["sample", "--dataset", str(root / "tiny.npz"), "--policy", "none", "--schedule", SCHEDULE,
              "--steps", "4", "--num", "2", "--seed", "3"]
    for name, extra in [("bbels", ["--machine", "bbels", "--save-trajectory"]), ("is", ["--machine", "is", "--save-trajectory"]),
                        ("notraj", ["--machine", "bbels"]), ("cond", ["--machine", "bbels", "--label", "all", "--save-trajectory"])]:
        res = runner.invoke(main, common + extra + ["--out", str(root / f"{name}.h5")])
        assert res.exit_code == 0, res.output
    return root


def sampler_inputs(root, machine, labels=None):
    """The x_t the sampler fed to the denoiser at each step (re-run with a recording wrapper)."""
    data = load_dataset(str(root / "tiny.npz"), policy="none")
    engine = ExactMachine(data.to_float(), machine, parse_schedule(SCHEDULE), labels=data.labels)
    seen = []

    def recording(x, t, lab=None):
        seen.append(x.clone())
        return engine(x, t, lab)

    res = ddim_sample(recording, initial_noise([3, 4], (1, 8, 8)), 4, labels)
    return data, seen, res.samples


def brute_pixel_weights(img, t, k, images, machine, y, x):
    """{candidate id: normalised weight} of pixel (y, x), one candidate at a time, float64."""
    a, b = schedule_ab(t)
    _, h, w = img.shape
    if machine == "is":
        logw = {n * h * w + y * w + x: -np.sum((img - a * phi) ** 2) / (2 * b * b) for n, phi in enumerate(images)}
    else:
        query = window(img, y, x, k, circular=machine == "els" and k < min(h, w))
        logw = {}
        for n, phi in enumerate(images):
            for qy, qx in candidates(machine, y, x, h, w, k):
                logw[n * h * w + qy * w + qx] = -np.sum((query - a * window(phi, qy, qx, k, False)) ** 2) / (2 * b * b)
    top = max(logw.values())
    z = sum(math.exp(v - top) for v in logw.values())
    return {i: math.exp(v - top) / z for i, v in logw.items()}


@pytest.mark.parametrize("machine", ["bbels", "is"])
def test_stored_contributors_match_brute_force(tiny, machine):
    _attr, path = attribute_file(tiny / f"{machine}.h5", mass=0.9, max_contrib=6)
    assert path == attrib_path(tiny / f"{machine}.h5") and path.exists()
    stored = read_attribution(path, tiny / f"{machine}.h5")
    data, seen, final = sampler_inputs(tiny, machine)
    assert np.array_equal(final.numpy(), read_samples(tiny / f"{machine}.h5")["samples"])  # the capture is the real path
    images = data.to_float(torch.float64).numpy()
    sizes = [3, 3, 5, 5]
    pixels = [(0, 0), (0, 4), (3, 0), (4, 4), (7, 7), (2, 5)]
    for row, step in enumerate(range(4, 0, -1)):
        assert stored.steps[row] == step
        for b in range(2):
            img = seen[row][b].double().numpy()
            for y, x in pixels:
                p = y * 8 + x
                want = brute_pixel_weights(img, step / 4, sizes[step - 1], images, machine, y, x)
                ranked = sorted(want.items(), key=lambda kv: -kv[1])
                n = int(stored.count[b, row, p])
                ids = stored.ids[b, row, p]
                got_w = stored.weights[b, row, p]
                # same top contributors (up to exact ties) and weights to 1e-5
                assert [want[int(i)] for i in ids[:n]] == pytest.approx([v for _, v in ranked[:n]], abs=1e-12)
                np.testing.assert_allclose(got_w[:n], [want[int(i)] for i in ids[:n]], atol=1e-5)
                kept = [(int(i), float(v)) for i, v in zip(ids, got_w) if i >= 0]
                for i, v in kept:
                    assert abs(want[i] - v) < 1e-5
                cum = np.cumsum([v for _, v in ranked])
                assert n == min(6, int((cum < 0.9).sum()) + 1)


def test_copy_check_is_machine_is_a_copy(tiny):
    attr, _ = attribute_file(tiny / "is.h5")
    data = load_dataset(str(tiny / "tiny.npz"), policy="none")
    for s in summarize(attr, data.to_float(), data.labels):
        assert s["dominant_share"] == 1.0 and s["distinct_images_final"] == 1
        assert s["nearest_distance"] < 1e-3 and s["top_source"] == s["nearest_image"]
        assert s["effective_sources"][-1] == pytest.approx(1.0, abs=1e-3)
        assert s["effective_sources"][0] > s["effective_sources"][-1]


@pytest.fixture(scope="module")
def bbels_attr(tiny):
    return attribute_file(tiny / "bbels.h5", out=tiny / "bbels_default.h5")[0]


def test_bbels_is_a_mosaic_not_a_copy(tiny, bbels_attr):
    attr = bbels_attr
    data = load_dataset(str(tiny / "tiny.npz"), policy="none")
    for b, s in enumerate(summarize(attr, data.to_float(), data.labels)):
        assert s["dominant_share"] < 0.6 and s["distinct_images"] > 3
        dom, w = dominant_sources(attr, b)
        assert dom.shape == (64,) and bool(((w > 0) & (w <= 1 + 1e-6)).all())


def test_without_trajectory_rebuilds_the_same_path(tiny, bbels_attr):
    a, _ = attribute_file(tiny / "notraj.h5", out=tiny / "notraj_a.h5")
    b = bbels_attr
    assert np.array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.weights, b.weights, atol=1e-5)
    assert a.meta["used_trajectory"] is False and b.meta["used_trajectory"] is True


def test_class_conditional_sources_stay_in_class(tiny):
    attr, _ = attribute_file(tiny / "cond.h5", out=tiny / "cond_a.h5")
    labels = read_samples(tiny / "cond.h5")["labels"]
    train_labels = load_dataset(str(tiny / "tiny.npz"), policy="none").labels.numpy()  # sorted by class
    for b, lab in enumerate(labels):
        imgs = attr.images_of(attr.ids[b])
        assert set(train_labels[imgs[imgs >= 0]]) == {lab}
        assert attr.denoised.shape == (4, 2, 1, 8, 8)


def test_fingerprint_mismatch_is_refused(tiny):
    with pytest.raises(PatchdbError, match="not the one the samples were drawn from"):
        attribute_file(tiny / "bbels.h5", out=tiny / "x.h5", dataset=str(tiny / "other.npz"))
    res = CliRunner().invoke(main, ["attribute", str(tiny / "bbels.h5"), "--dataset", str(tiny / "other.npz"),
                                    "--out", str(tiny / "x.h5")])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "fingerprint" in res.output
    assert not (tiny / "x.h5").exists()


def test_attribution_of_other_samples_is_refused(tiny, bbels_attr):
    with pytest.raises(PatchdbError, match="other samples"):
        read_attribution(tiny / "bbels_default.h5", tiny / "is.h5")


def test_cli_attribute_writes_file_and_pictures(tiny):
    runner = CliRunner()
    out, plots = tiny / "cli.attrib.h5", tiny / "plots"
    args = ["attribute", str(tiny / "bbels.h5"), "--out", str(out), "--plots", str(plots), "--pixel", "0,3",
            "--samples", "1", "--json", "--max-contrib", "4"]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert [s["sample"] for s in summary] == [1] and len(summary[0]["effective_sources"]) == 4
    with h5py.File(out, "r") as f:
        assert f.attrs["format"] == "patchdb-attribution" and f.attrs["format-version"] == 1
        assert f["ids"].dtype == np.int32 and f["ids"].shape == (1, 4, 64, 4)
        meta = json.loads(f.attrs["metadata"])
        assert len(meta["samples_fingerprint"]) == 64 and meta["mass"] == 0.9
    assert sorted(p.name for p in plots.iterdir()) == ["sample1_mosaic.png", "sample1_pixel0_3.png", "sample1_steps.png"]
    again = runner.invoke(main, args)  # the pictures exist: replacing them needs --force (issue 29)
    assert again.exit_code == 2 and again.stderr.startswith("Error: --plots") and "--force" in again.stderr
    again = runner.invoke(main, args + ["--force"])
    assert again.exit_code == 0 and "reusing" in again.stderr


@pytest.mark.parametrize("args,message", [
    (["--pixel", "8,0"], "outside the 8x8 image"),
    (["--samples", "7"], "outside 0..1"),
    (["--pixel", "a,b"], "comma list of integers"),
])
def test_cli_attribute_bad_input(tiny, args, message):
    res = CliRunner().invoke(main, ["attribute", str(tiny / "bbels.h5"), "--out", str(tiny / "bad.h5")] + args)
    assert res.exit_code == 2 and message in res.output and res.output.count("\n") == 1


def test_query_matches_brute_force_and_draws(tiny):
    out = tiny / "q.png"
    res = CliRunner().invoke(main, ["query", str(tiny / "bbels.h5"), "--sample-id", "1", "--size", "3",
                                    "--pixel", "0,4", "--top", "3", "--json", "--png", str(out)])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)["results"][0]
    img = read_samples(tiny / "bbels.h5")["samples"][1].astype(np.float64)
    images = load_dataset(str(tiny / "tiny.npz"), policy="none").to_float(torch.float64).numpy()
    q = window(img, 0, 4, 3, False)
    want = sorted((float(np.linalg.norm(q - window(phi, cy, cx, 3, False))), n, cy, cx)
                  for n, phi in enumerate(images) for cy, cx in candidates("bbels", 0, 4, 8, 8, 3))[:3]
    assert rec["family"] == "edge"
    assert [(nb["image"], nb["y"], nb["x"]) for nb in rec["neighbours"]] == [w[1:] for w in want]
    assert [nb["distance"] for nb in rec["neighbours"]] == pytest.approx([w[0] for w in want], abs=1e-5)
    assert out.exists() and out.stat().st_size > 1000


@pytest.mark.parametrize("args,message", [
    (["--pixel", "0,8"], "outside the 8x8 image"),
    (["--box", "0,0,9,2"], "outside the 8x8 image"),
    (["--size", "4"], "must be odd and fit the 8x8 image"),
])
def test_query_bad_input(tiny, args, message):
    base = ["query", str(tiny / "bbels.h5")] + ([] if "--size" in args else ["--size", "3"])
    res = CliRunner().invoke(main, base + args)
    assert res.exit_code == 2 and message in res.output, res.output


def test_query_refuses_wrong_channels(tiny):
    np.save(tiny / "rgb.npy", np.zeros((8, 8, 3), np.uint8))
    res = CliRunner().invoke(main, ["query", str(tiny / "rgb.npy"), "--size", "3", "--dataset", str(tiny / "tiny.npz"),
                                    "--policy", "none"])
    assert res.exit_code == 2 and "same size and channels" in res.output


def test_select_pixels():
    assert select_pixels(4, 5).shape == (20, 2)
    assert select_pixels(4, 5, box=(1, 1, 2, 3)).tolist()[0] == [1, 1]
    with pytest.raises(PatchdbError):
        select_pixels(4, 5, pixel=(0, 0), box=(0, 0, 1, 1))


def test_index_with_every_candidate_equals_exact(tiny, bbels_attr):
    runner = CliRunner()
    idx = tiny / "idx.h5"
    res = runner.invoke(main, ["build", "--dataset", str(tiny / "tiny.npz"), "--policy", "none", "--machine", "bbels",
                               "--scales", "3,5", "--index-key", "Flat", "--threads", "1", "--out", str(idx)])
    if res.exit_code != 0 and "No such command" in res.output:
        pytest.skip("patchdb build is not available")
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["attribute", str(tiny / "bbels.h5"), "--index", str(idx), "--topk", "1000",
                               "--out", str(tiny / "approx.h5")])
    assert res.exit_code == 0, res.output
    exact = bbels_attr
    approx = read_attribution(tiny / "approx.h5")
    assert approx.meta["engine"] == "approx"
    np.testing.assert_allclose(approx.weights, exact.weights, atol=1e-5)
    assert (approx.ids == exact.ids).mean() > 0.99  # float32 windows may swap near-ties
    res = runner.invoke(main, ["attribute", str(tiny / "is.h5"), "--index", str(idx), "--out", str(tiny / "y.h5")])
    assert res.exit_code == 2 and "needs no index" in res.output
    args = ["query", str(tiny / "bbels.h5"), "--size", "3", "--box", "0,0,2,7", "--top", "3", "--json"]
    via_index = runner.invoke(main, args + ["--index", str(idx)])
    scanned = runner.invoke(main, args)
    assert via_index.exit_code == 0 and scanned.exit_code == 0, via_index.output
    a, b = json.loads(via_index.stdout)["results"], json.loads(scanned.stdout)["results"]
    assert [[n["image"] for n in r["neighbours"]] for r in a] == [[n["image"] for n in r["neighbours"]] for r in b]
    res = runner.invoke(main, ["query", str(tiny / "bbels.h5"), "--size", "7", "--index", str(idx)])
    assert res.exit_code == 2 and "no index for patch sizes [7]" in res.output


def test_cli_attribute_reloads_a_training_set_read_from_inside_a_zip(tmp_path):
    """A zip's split folder is recorded as ZIP::inner/folder; attribute must reload it with no options."""
    import zipfile

    from PIL import Image

    rng = np.random.default_rng(0)
    with zipfile.ZipFile(tmp_path / "d.zip", "w") as zf:
        for split, n in (("train", 3), ("test", 1)):
            for cls in ("a", "b"):
                for i in range(n):
                    png = tmp_path / f"{split}-{cls}-{i}.png"
                    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(png)
                    zf.write(png, f"top/{split}/{cls}/{i}.png")
    runner = CliRunner()
    res = runner.invoke(main, ["sample", "--dataset", str(tmp_path / "d.zip"), "--policy", "none", "-n", "1",
                               "-s", "3,3", "--out", str(tmp_path / "s.h5")])
    assert res.exit_code == 0, res.output
    assert "::top/train" in read_samples(tmp_path / "s.h5")["metadata"]["dataset"]["source"]
    res = runner.invoke(main, ["attribute", str(tmp_path / "s.h5")])
    assert res.exit_code == 0, res.output
    assert read_attribution(attrib_path(tmp_path / "s.h5")).ids.shape[:2] == (1, 2)  # 1 sample, 2 steps
