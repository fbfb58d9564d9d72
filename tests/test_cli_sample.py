"""`patchdb sample` end to end on the embedded default dataset, and its one-line errors."""

import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from patchdb.cli.main import main

FAST = ["--limit", "40", "--schedule", "3,5,5", "--num", "3", "--batch-size", "2"]


def run(args):
    return CliRunner().invoke(main, args)


def test_sample_writes_h5_and_png(tmp_path):
    out = tmp_path / "s.h5"
    res = run(["sample", *FAST, "--save-trajectory", "--out", str(out)])
    assert res.exit_code == 0, res.output
    with h5py.File(out) as f:
        assert f.attrs["format"] == "patchdb-samples"
        meta = json.loads(f.attrs["metadata"])
        assert meta["machine"] == "bbels" and meta["schedule"] == [3, 5, 5]
        assert f["samples"].shape == (3, 1, 32, 32)
        assert list(f["seeds"][()]) == [0, 1, 2]
        assert list(f["labels"][()]) == [-1, -1, -1]
        assert f["trajectory"].shape == (3, 3, 1, 32, 32)
        s = f["samples"][()]
    assert np.isfinite(s).all() and s.min() >= -1 - 1e-5 and s.max() <= 1 + 1e-5
    assert (tmp_path / "s.png").stat().st_size > 100
    assert not list(tmp_path.glob(".*tmp"))


def test_same_seed_is_bit_identical_and_labels_recorded(tmp_path):
    outs = []
    for name in ("a.h5", "b.h5"):
        res = run(["sample", *FAST, "--label", "all", "--seed", "11", "--out", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
        with h5py.File(tmp_path / name) as f:
            outs.append((f["samples"][()], f["labels"][()], f["seeds"][()]))
    assert np.array_equal(outs[0][0], outs[1][0])
    # --label all: seed s gets class s mod 10, whatever the run's first seed
    assert list(outs[0][1]) == [1, 2, 3] and list(outs[0][2]) == [11, 12, 13]


@pytest.mark.parametrize("args,needle", [
    (["--schedule", "3,4,5"], "not a positive odd integer"),
    (["--schedule", "3,5,5", "--steps", "4"], "has 3 sizes but the sampler runs 4 steps"),
    (["--machine", "xls"], "unknown machine 'xls'"),
    (["--dataset", "imagenet"], "imagenet"),
    (["--dataset", "mnist", "--root", "/nonexistent/folder"], "--download"),
    (["--label", "12"], "out of range"),
    (["--out", "/nonexistent/dir/s.h5"], "does not exist"),
    (["--only-classes", "3", "--label", "4"], "label 4"),
])
def test_bad_input_gives_one_line_exit_2(tmp_path, args, needle):
    base = ["sample", "--limit", "20", "--schedule", "3,5,5", "--num", "1", "--out", str(tmp_path / "x.h5")]
    res = run(base + args)
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert any(needle in line for line in lines), res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "x.h5").exists()


def test_interrupt_leaves_no_output(tmp_path, monkeypatch):
    import patchdb.generate as gen

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(gen, "ddim_sample", boom)
    out = tmp_path / "s.h5"
    res = run(["sample", *FAST, "--out", str(out)])
    assert res.exit_code == 130
    assert not out.exists() and not list(tmp_path.iterdir())


def test_interrupt_while_writing_leaves_no_file(tmp_path, monkeypatch):
    from patchdb import store

    real = store.stamp

    def stamp_then_die(*a, **k):
        real(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "stamp", stamp_then_die)
    out = tmp_path / "s.h5"
    res = run(["sample", *FAST, "--out", str(out)])
    assert res.exit_code == 130
    assert not out.exists() and not list(tmp_path.iterdir())


def test_is_machine_needs_no_schedule_with_steps(tmp_path):
    """IS uses no patch size, so --steps alone must do (the default schedule has 20 sizes)."""
    from click.testing import CliRunner

    from patchdb.cli.main import main
    from patchdb.store import read_samples

    res = CliRunner().invoke(main, ["sample", "--limit", "20", "-m", "is", "--steps", "3", "-n", "2",
                                    "--out", str(tmp_path / "is.h5")])
    assert res.exit_code == 0, res.output
    got = read_samples(tmp_path / "is.h5")
    assert got["samples"].shape == (2, 1, 32, 32) and got["metadata"]["steps"] == 3
