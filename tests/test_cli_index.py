"""build -> info -> sample --index -> validate through the CLI, bad inputs, and kill -9 mid-build."""

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import pytest
from click.testing import CliRunner

from patchdb.cli.main import main

BUILD = ["build", "--limit", "12", "--scales", "3,5", "--recall-k", "8"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def built(tmp_path):
    out = tmp_path / "i.h5"
    res = run(*BUILD, "--out", out)
    assert res.exit_code == 0, res.output
    return out


def test_build_info_sample_validate(tmp_path, built):
    with h5py.File(built) as h5:
        assert h5.attrs["format"] == "patchdb-index" and h5["images"].shape == (12, 1, 32, 32)
    res = run("info", built)
    assert res.exit_code == 0 and "interior" in res.output and "memory to load" in res.output
    info = json.loads(run("info", built, "--json").output)
    assert info["metadata"]["sizes"] == [3, 5] and info["sizes"]["5"][0]["plan"]["key"] == "Flat"
    out = tmp_path / "s.h5"
    res = run("sample", "--index", built, "-s", "3,5", "-n", "2", "--topk", "16", "--k-factor", "2", "--label", "all", "-o", out)
    assert res.exit_code == 0, res.output
    with h5py.File(out) as h5:
        assert h5["samples"].shape == (2, 1, 32, 32)
        meta = json.loads(h5.attrs["metadata"])
        assert meta["engine"] == "approx" and len(meta["step_reports"]) == 2 and meta["k_factor"] == 2
    res = run("sample", "--index", built, "--exact", "-s", "3,5", "-n", "1", "-o", tmp_path / "e.h5")
    assert res.exit_code == 0, res.output
    report, small = tmp_path / "v.json", tmp_path / "small.h5"
    assert run("build", "--limit", "3", "--scales", "3,5", "--out", small).exit_code == 0
    res = run("validate", small, "-s", "3,5", "--seeds", "2", "--topk", "100000", "--min-r2", "0.999", "--json-out", report)
    assert res.exit_code == 0, res.output
    saved = json.loads(report.read_text())
    assert "median r^2 1.0000" in res.output and saved["r2_median"] > 0.999999 and saved["labels"] is None
    res = run("validate", built, "-s", "3,5", "--seeds", "1", "--topk", "1", "--tail-correction", "0", "--min-r2", "0.9999")
    assert res.exit_code == 1 and "FAIL" in res.output


@pytest.mark.parametrize("args,message", [
    (["sample", "--index", "{f}", "-s", "3,7"], "no index for patch sizes [7]"),
    (["info", "{missing}"], "does not exist"),
    (["build", "--limit", "12", "--scales", "3", "--out", "{f}"], "already exists"),
    (["build", "--limit", "10", "--scales", "3", "--index-key", "Flat", "--memory", "1kB", "--out", "{new}"], "over --memory"),
    (["build", "--limit", "10", "--scales", "3", "--index-key", "Bogus12", "--out", "{new}"], "FAISS cannot build index key"),
    (["build", "--limit", "10", "--scales", "3", "--memory", "lots", "--out", "{new}"], "--memory 'lots'"),
    (["build", "--limit", "10", "--dataset", "mnist", "--root", "{tmp}", "--scales", "3", "--out", "{new}"], ""),
    (["validate", "{trunc}"], "truncated or corrupted"),
    (["validate", "{f}", "-s", "3,5", "--json-out", "{tmp}/no/such/dir/v.json"], "does not exist; create it"),
    (["build", "--limit", "10", "--scales", "3", "--add", "--machine", "els", "--out", "{f}"], "another dataset"),
])
def test_bad_inputs_one_line_exit_2(tmp_path, built, args, message):
    trunc = tmp_path / "t.h5"
    trunc.write_bytes(built.read_bytes()[:3000])
    fill = {"f": built, "missing": tmp_path / "none.h5", "new": tmp_path / "new.h5", "trunc": trunc, "tmp": tmp_path}
    res = run(*[a.format(**fill) for a in args])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in res.output


def test_build_sample_above_leaves_out_sizes_of_sample_only_steps(tmp_path):
    """build --sample-above indexes only the sizes of the steps below it; sample runs with that setting (or a
    lower one) and refuses others in one line naming it; --add completes the file."""
    sched, out = tmp_path / "four.json", tmp_path / "part.h5"
    sched.write_text(json.dumps({"name": "four", "sizes": [3, 3, 5, 7]}))
    res = run("build", "--limit", "12", "--scales", sched, "--sample-above", "0.75", "--recall-k", "8", "--out", out)
    assert res.exit_code == 0, res.output
    assert json.loads(run("info", out, "--json").output)["metadata"]["sizes"] == [3]
    assert "sizes [5, 7] have no index (built with --sample-above 0.75" in run("info", out).output
    res = run("sample", "--index", out, "-n", "2", "-b", "2", "--sample-above", "0.75", "--sample-size", "64",
              "-o", tmp_path / "s.h5")
    assert res.exit_code == 0, res.output
    with h5py.File(tmp_path / "s.h5") as h5:
        meta = json.loads(h5.attrs["metadata"])
        assert h5["samples"].shape == (2, 1, 32, 32) and [r["k"] for r in meta["step_reports"]] == [7, 5, 3, 3]
    res = run("sample", "--index", out, "-n", "1", "-o", tmp_path / "t.h5")
    assert res.exit_code == 2 and "sample with --sample-above 0.75 (or lower)" in res.output, res.output
    res = run("validate", out, "--seeds", "1", "--sample-above", "0.75", "--min-r2", "0", "--json-out", tmp_path / "v.json")
    assert res.exit_code == 0, res.output  # the file's recorded schedule, not the Fashion-MNIST preset
    assert json.loads((tmp_path / "v.json").read_text())["settings"]["schedule"] == [3, 3, 5, 7]
    res = run("build", "--limit", "12", "--scales", "3,5", "--sample-above", "0.5", "--out", tmp_path / "x.h5")
    assert res.exit_code == 2 and "needs the steps of a schedule" in res.output
    res = run("build", "--limit", "12", "--scales", sched, "--sample-above", "0.1", "--out", tmp_path / "x.h5")
    assert res.exit_code == 2 and "leaves no step that searches" in res.output
    assert run("build", "--limit", "12", "--scales", "5", "--add", "--recall-k", "8", "--out", out).exit_code == 0
    res = run("sample", "--index", out, "-n", "1", "-o", tmp_path / "t.h5")  # 7 still left out, and said so
    assert res.exit_code == 2 and "no index for patch sizes [7]" in res.output and "--sample-above 0.75" in res.output
    assert run("build", "--limit", "12", "--scales", "7", "--add", "--recall-k", "8", "--out", out).exit_code == 0
    assert run("sample", "--index", out, "-n", "1", "-o", tmp_path / "t.h5").exit_code == 0


def test_add_names_the_command_and_works(tmp_path, built):
    res = run("validate", built, "-s", "3,5,7", "--seeds", "1")
    assert res.exit_code == 2 and "--scales 7 --add" in res.output
    res = run("build", "--limit", "12", "--scales", "7", "--add", "--recall-k", "8", "--out", built)
    assert res.exit_code == 0, res.output
    assert json.loads(run("info", built, "--json").output)["metadata"]["sizes"] == [3, 5, 7]


def test_kill_9_leaves_nothing_info_accepts_and_rerun_completes(tmp_path):
    out = tmp_path / "k.h5"
    cmd = [sys.executable, "-m", "patchdb.cli.main", "build", "--limit", "300", "--scales", "3,5,7,9", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=os.path.dirname(os.path.dirname(__file__)), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = tmp_path / "k.h5.partial"
    deadline = time.time() + 60
    while time.time() < deadline and not list(partial.glob("*.faiss")):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    res = run("info", out)
    assert res.exit_code == 2 and "does not exist" in res.output
    res = run("build", "--limit", "300", "--scales", "3,5,7,9", "--out", out)
    assert res.exit_code == 0, res.output
    assert run("info", out).exit_code == 0 and not partial.exists()


def test_validate_keeps_exact_samples_and_reuses_them(tmp_path):
    small = tmp_path / "small.h5"
    assert run("build", "--limit", "3", "--scales", "3,5", "--out", small).exit_code == 0
    keep, first, again = tmp_path / "exact.h5", tmp_path / "a.json", tmp_path / "b.json"
    common = ["validate", small, "-s", "3,5", "--seeds", "2", "-b", "1", "--topk", "4", "--min-r2", "0", "--exact-samples", keep]
    res = run(*common, "--json-out", first)
    assert res.exit_code == 0 and "read from" not in res.output, res.output
    with h5py.File(keep) as h5:
        assert list(h5["seeds"][()]) == [0, 1] and h5["trajectory"].shape == (2, 2, 1, 32, 32)
    res = run(*common, "--json-out", again)
    assert res.exit_code == 0 and "exact samples of 2 seeds read from" in res.output, res.output
    a, b = json.loads(first.read_text()), json.loads(again.read_text())
    assert a["r2"] == b["r2"] and b["exact_reused"] == 2 and a["exact_reused"] == 0
    assert [s["max_abs_diff_max"] for s in a["steps"]] == [s["max_abs_diff_max"] for s in b["steps"]]
    res = run("validate", small, "-s", "5,3", "--seeds", "1", "--exact-samples", keep)
    assert res.exit_code == 2 and "holds exact samples for other settings (schedule differ)" in res.output


def test_exact_samples_side_by_side_runs_keep_each_others_seeds(tmp_path):
    import torch

    from patchdb.errors import PatchdbError
    from patchdb.store import ExactSamples

    key = {"fingerprint": "x", "schedule": [3, 5]}
    path = tmp_path / "exact.h5"
    one, two = ExactSamples(path, key), ExactSamples(path, key)  # both opened before either wrote
    traj = torch.arange(2 * 2 * 4, dtype=torch.float32).view(2, 2, 1, 2, 2)
    one.store([0, 1], None, traj, traj[-1], 2.0)
    two.store([5], torch.tensor([3]), traj[:, :1] + 100, traj[-1, :1] + 100, 1.5)
    again = ExactSamples(path, key)
    assert sorted(again.entries) == [(0, -1), (1, -1), (5, 3)]
    got = again.lookup([0, 1], None)
    assert torch.equal(got[0], traj) and torch.equal(got[1], traj[-1]) and got[2] == 2.0
    assert again.lookup([5], None) is None and again.lookup([5], [3])[2] == 1.5
    with pytest.raises(PatchdbError, match="other settings"):
        ExactSamples(path, {**key, "schedule": [3, 7]})


def test_merge_exact_takes_sample_files_and_validate_reuses_them(tmp_path):
    """Exact samples drawn by ``patchdb sample --save-trajectory`` (on the dataset, or through an index file
    with --exact), merged by ``patchdb merge exact``, are what ``validate`` computes itself for those seeds."""
    small = tmp_path / "small.h5"
    assert run("build", "--limit", "3", "--scales", "3,5", "--out", small).exit_code == 0
    fresh, merged = tmp_path / "fresh.h5", tmp_path / "merged.h5"
    common = ["validate", small, "-s", "3,5", "--seeds", "2", "-b", "1", "--topk", "4", "--min-r2", "0"]
    assert run(*common, "--exact-samples", fresh, "--json-out", tmp_path / "fresh.json").exit_code == 0
    s0, s1 = tmp_path / "s0.h5", tmp_path / "s1.h5"
    one = ["-s", "3,5", "-n", "1", "-b", "1", "--save-trajectory"]
    assert run("sample", "--limit", "3", *one, "--seed", "0", "--out", s0).exit_code == 0
    assert run("sample", "--index", small, "--exact", *one, "--seed", "1", "--out", s1).exit_code == 0
    res = run("merge", "exact", "--out", merged, s0, s1)
    assert res.exit_code == 0 and "2 exact samples (seeds 0..1)" in res.output, res.output
    with h5py.File(fresh) as a, h5py.File(merged) as b:
        assert json.loads(a.attrs["metadata"]) == json.loads(b.attrs["metadata"])
        for name in ("seeds", "labels", "samples", "trajectory"):
            assert (a[name][()] == b[name][()]).all(), name
    res = run(*common, "--exact-samples", merged, "--json-out", tmp_path / "reused.json")
    assert res.exit_code == 0 and "exact samples of 2 seeds read from" in res.output, res.output
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("fresh", "reused"))
    assert a["r2"] == b["r2"] and b["exact_reused"] == 2
    # the cache itself merges too; a seed held twice with the same values is taken once
    res = run("merge", "exact", "--out", tmp_path / "again.h5", fresh, s1)
    assert res.exit_code == 0 and "taken once" in res.output, res.output


@pytest.mark.parametrize("make, message", [
    (["--index", "{small}"], "holds samples of the approx engine"),
    (["--limit", "3"], "no trajectory"),
    (["--limit", "3", "-s", "5,3", "--save-trajectory"], "other settings than"),
    (["--limit", "3", "--seed", "1", "--save-trajectory"], "with different values"),
])
def test_merge_exact_refuses_what_is_not_a_reference(tmp_path, make, message):
    small = tmp_path / "small.h5"
    assert run("build", "--limit", "3", "--scales", "3,5", "--out", small).exit_code == 0
    ref, other = tmp_path / "ref.h5", tmp_path / "other.h5"
    assert run("sample", "--limit", "3", "-s", "3,5", "-n", "1", "--save-trajectory", "--out", ref).exit_code == 0
    args = [a.format(small=small) for a in make]
    if "--seed" in args:  # seed 1's sample stored as if it were seed 0's
        assert run("sample", "-s", "3,5", "-n", "1", "--out", other, *args).exit_code == 0
        with h5py.File(other, "r+") as h5:
            del h5["seeds"]
            h5["seeds"] = [0]
    else:
        assert run("sample", "-s", "3,5", "-n", "1", "--out", other, *args).exit_code == 0
    res = run("merge", "exact", "--out", tmp_path / "m.h5", ref, other)
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "m.h5").exists()
