"""Attribution is faithful by default (issue 26): the sampler records its retrieval settings, and
``patchdb attribute`` with no engine options reuses them, reproducing the sampler's D at every step."""

import h5py
import json

import numpy as np
import pytest
from click.testing import CliRunner

from patchdb.attribute import read_attribution
from patchdb.cli.main import load_command, main
from patchdb.denoisers.approx import ApproxMachine
from patchdb.denoisers.retrieval import Retrieval
from patchdb.store import read_samples


def test_api_default_retrieval_is_the_cli_default():
    """Every engine knob of ``patchdb sample`` defaults to the value of the Python API's Retrieval()."""
    defaults = Retrieval()
    params = {p.name: p.default for p in load_command("sample").params}
    for name, value in defaults.to_dict().items():
        if name in params:
            assert params[name] == value, name
    assert {"topk", "nprobe", "ef", "k_factor", "tail_correction", "scan_cap"} <= set(params)
    assert Retrieval().tail_correction == 1024
    assert ApproxMachine.__init__.__defaults__[1] is None  # retrieval=None means Retrieval()


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """An IVF index of 40 random 10 x 10 images and two samples drawn through it with tail correction on,
    --scan-cap 0.5 and a non-default nprobe, trajectory kept."""
    root = tmp_path_factory.mktemp("faithful")
    rng = np.random.default_rng(1)
    images = (rng.random((40, 10, 10)) * 255).astype(np.uint8)
    images[:, :2] = 0  # some blank windows, which the index takes out and counts
    np.savez(root / "d.npz", images=images, labels=np.arange(40) % 2)
    runner = CliRunner()
    res = runner.invoke(main, ["build", "--dataset", str(root / "d.npz"), "--policy", "none", "--machine", "bbels",
                               "--scales", "3,5", "--index-key", "IVF8,Flat", "--recall-k", "8", "--threads", "1",
                               "--out", str(root / "i.h5")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["sample", "--index", str(root / "i.h5"), "-s", "3,5,5,3", "--topk", "8", "--nprobe", "3",
                               "--scan-cap", "0.5", "--tail-correction", "200", "--num", "2", "--seed", "5",
                               "--save-trajectory", "--out", str(root / "s.h5")])
    assert res.exit_code == 0, res.output
    return root


def test_sample_file_records_every_retrieval_knob(drawn):
    meta = read_samples(drawn / "s.h5")["metadata"]
    assert meta["engine"] == "approx"
    assert Retrieval.from_dict(meta["retrieval"]) == Retrieval(topk=8, nprobe=3, scan_cap=0.5, tail_correction=200)


def test_attribute_without_engine_options_reproduces_the_sampled_d(drawn):
    res = CliRunner().invoke(main, ["attribute", str(drawn / "s.h5"), "--out", str(drawn / "a.h5")])
    assert res.exit_code == 0, res.output
    attr = read_attribution(drawn / "a.h5")
    assert attr.meta["engine"] == "approx" and attr.meta["index"] == str(drawn / "i.h5")
    assert Retrieval.from_dict(attr.meta["retrieval"]) == Retrieval(topk=8, nprobe=3, scan_cap=0.5, tail_correction=200)
    with h5py.File(drawn / "s.h5") as f:
        trajectory = f["trajectory"][()]  # (S, B, C, H, W), step S first
    d = np.asarray(attr.denoised).reshape(trajectory.shape)
    per_step = np.abs(d - trajectory).reshape(len(trajectory), -1).max(1)
    assert per_step.max() < 1e-5, per_step


def test_other_settings_give_another_d_and_that_is_an_error(drawn):
    res = CliRunner().invoke(main, ["attribute", str(drawn / "s.h5"), "--tail-correction", "0",
                                    "--out", str(drawn / "b.h5")])
    assert res.exit_code == 2 and "Error: recomputed D differs" in res.output, res.output
    assert not (drawn / "b.h5").exists()


def test_query_reuses_the_recorded_index(drawn):
    args = ["query", str(drawn / "s.h5"), "--size", "3", "--pixel", "5,5", "--top", "2", "--json"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    via_file = CliRunner().invoke(main, args + ["--index", str(drawn / "i.h5"), "--topk", "8", "--nprobe", "3",
                                                "--scan-cap", "0.5"])
    assert json.loads(res.stdout) == json.loads(via_file.stdout)


def test_samples_drawn_with_reuse_are_refused_before_any_work_and_explained_exactly(drawn):
    """Attribution searches at every step, so it cannot replay candidates carried between steps
    (--reuse/--across): one line naming the fix; --exact explains the same samples with the exact engine."""
    runner = CliRunner()
    res = runner.invoke(main, ["sample", "--index", str(drawn / "i.h5"), "-s", "3,5,5,3", "--topk", "8", "--reuse", "2",
                               "--across", "--refresh", "0.5", "--num", "2", "--seed", "5", "--out", str(drawn / "r.h5")])
    assert res.exit_code == 0, res.output
    meta = read_samples(drawn / "r.h5")["metadata"]
    assert Retrieval.from_dict(meta["retrieval"]) == Retrieval(topk=8, reuse=2, across=True, refresh=0.5)
    res = runner.invoke(main, ["attribute", str(drawn / "r.h5"), "--out", str(drawn / "r.attrib.h5")])
    assert res.exit_code == 2 and "drawn with --reuse 2" in res.output and "--exact" in res.output, res.output
    assert not (drawn / "r.attrib.h5").exists()
    res = runner.invoke(main, ["attribute", str(drawn / "r.h5"), "--exact", "--out", str(drawn / "r.attrib.h5")])
    assert res.exit_code == 0, res.output


def test_samples_drawn_with_sample_above_are_refused_before_any_work(drawn):
    """Steps estimated from the uniform sample alone have no candidates to attribute: one line, --exact named."""
    runner = CliRunner()
    res = runner.invoke(main, ["sample", "--index", str(drawn / "i.h5"), "-s", "3,5,5,3", "--topk", "8",
                               "--sample-above", "0.7", "--num", "1", "--seed", "5", "--out", str(drawn / "above.h5")])
    assert res.exit_code == 0, res.output
    assert Retrieval.from_dict(read_samples(drawn / "above.h5")["metadata"]["retrieval"]).sample_above == 0.7
    res = runner.invoke(main, ["attribute", str(drawn / "above.h5"), "--out", str(drawn / "above.attrib.h5")])
    assert res.exit_code == 2 and "--sample-above 0.7" in res.output and "--exact" in res.output, res.output
    assert not (drawn / "above.attrib.h5").exists()
