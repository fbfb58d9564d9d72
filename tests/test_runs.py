"""Run folders (issue 28): seed ranges, shards, resume after kill -9, deleted and corrupt shards, settings
refused by name, local workers, export and report. Tiny 16x16 digits so that each test takes seconds."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from patchdb.cli.main import main
from PIL import Image

from patchdb.errors import PatchdbError
from patchdb.runs import RunSpec, format_seeds, open_run, parse_seeds, run_samples
from patchdb.runs.export import png_path, to_uint8

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """100 embedded MNIST digits pooled to 16x16 with their labels, as an .npz dataset."""
    from patchdb.data import load_dataset

    ds = load_dataset(None, limit=100)
    x = torch.nn.functional.avg_pool2d(ds.images.float(), 2).round().to(torch.uint8)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, images=x.permute(0, 2, 3, 1).numpy(), labels=ds.labels.numpy())
    return path


def base(tiny, machine="bbels"):
    return ["sample", "--dataset", str(tiny), "--policy", "none", "-m", machine, "-s", "3,3,5", "-b", "2"]


def run(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def ok(args):
    res = run(args)
    assert res.exit_code == 0, res.output
    return res


def shard_events(folder: Path) -> dict:
    counts: dict = {}
    for line in (folder / "log.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event["event"] == "shard":
            counts[event["shard"]] = counts.get(event["shard"], 0) + 1
    return counts


# -- seeds --------------------------------------------------------------------------------------------

def test_parse_seeds_edm_style_and_errors():
    assert parse_seeds("0-3,10,7-8") == [0, 1, 2, 3, 10, 7, 8]
    assert format_seeds(parse_seeds("0-3,10,7-8")) == "0-3,10,7-8"
    for bad, needle in [("5-2", "backwards"), ("1,x", "not a seed"), ("0-3,2", "twice"), ("", "not a seed")]:
        with pytest.raises(PatchdbError, match=needle):
            parse_seeds(bad)


# -- one set of bits whatever the split ----------------------------------------------------------------

def test_run_folder_matches_the_one_file_output(tiny, tmp_path):
    """Equal bits where the one-file output's batches are full (its short last batch is not padded)."""
    ok([*base(tiny), "--num", 8, "--out", tmp_path / "one.h5"])
    ok([*base(tiny), "--seeds", "0-7", "--shard-size", 6, "--out", tmp_path / "run"])
    got = open_run(tmp_path / "run")
    with h5py.File(tmp_path / "one.h5") as f:
        assert np.array_equal(got.samples, f["samples"][()])
    assert got.seeds.tolist() == list(range(8)) and got.labels is None
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["settings"]["batch_size"] == 2 and manifest["count"] == 8 and len(manifest["shards"]) == 2
    assert all(len(e["sha256"]) == 64 for e in manifest["shards"].values())
    assert (tmp_path / "run" / "preview.png").exists()


@pytest.mark.parametrize("machine", ["is", "bbels"])
def test_a_seed_has_the_same_bits_whatever_the_shards_and_seed_list(tiny, tmp_path, machine):
    """Batches are always batch_size rows (a short one padded), so IS, whose matrix products change
    bits with the batch size, gives a seed the same bits in any shard and any seed list."""
    ok([*base(tiny, machine), "--seeds", "0-6", "--shard-size", 4, "--out", tmp_path / "a"])
    ok([*base(tiny, machine), "--seeds", "5,3-4,9", "--shard-size", 1, "--out", tmp_path / "b"])
    a, b = open_run(tmp_path / "a"), open_run(tmp_path / "b")
    assert b.seeds.tolist() == [5, 3, 4, 9]
    for j, seed in enumerate([5, 3, 4]):
        assert np.array_equal(b.samples[j], a.samples[seed])


def test_one_and_two_local_workers_give_the_same_bits(tiny, tmp_path):
    ok([*base(tiny), "--seeds", "0-7", "--shard-size", 2, "--out", tmp_path / "w1"])
    ok([*base(tiny), "--seeds", "0-7", "--shard-size", 2, "--workers", 2, "--out", tmp_path / "w2"])
    a, b = open_run(tmp_path / "w1"), open_run(tmp_path / "w2")
    assert np.array_equal(a.samples, b.samples) and np.array_equal(a.seeds, b.seeds)
    workers = {json.loads(line)["worker"] for line in (tmp_path / "w2" / "log.jsonl").read_text().splitlines()}
    assert len(workers) == 2  # both processes computed shards


def test_conditional_labels_follow_the_seed(tiny, tmp_path):
    ok([*base(tiny), "--seeds", "8-12", "--label", "all", "--shard-size", 2, "--out", tmp_path / "c"])
    got = open_run(tmp_path / "c")
    assert got.labels.tolist() == [s % 10 for s in range(8, 13)]


# -- resume and faults ---------------------------------------------------------------------------------

def test_rerun_skips_finished_shards_and_refuses_other_settings_by_name(tiny, tmp_path):
    out = tmp_path / "r"
    ok([*base(tiny), "--seeds", "0-5", "--shard-size", 2, "--out", out])
    res = ok([*base(tiny), "--seeds", "0-5", "--shard-size", 2, "--out", out])
    assert "0 computed now" in res.output and "3 shards already done" in res.output
    assert shard_events(out) == {f"shard-{i:06d}.h5": 1 for i in range(3)}
    for change, key in [(["-s", "3,3,7"], "settings.schedule"), (["-b", "3"], "settings.batch_size"),
                        (["-m", "is"], "settings.machine"), (["--label", "all"], "settings.label")]:
        args = [*base(tiny), "--seeds", "0-5", "--shard-size", 2, "--out", out, *change]
        res = run(args)
        assert res.exit_code == 2 and key in res.output and "Error:" in res.output, res.output
    res = run([*base(tiny), "--seeds", "0-6", "--shard-size", 2, "--out", out])
    assert res.exit_code == 2 and "seeds is '0-5' there, '0-6' here" in res.output
    ok([*base(tiny), "--seeds", "0-5", "--shard-size", 2, "--out", out, "-s", "3,3,7", "--force"])
    assert json.loads((out / "manifest.json").read_text())["settings"]["schedule"] == [3, 3, 7]


def test_a_run_from_before_a_new_retrieval_knob_resumes(tiny, tmp_path):
    """An approximate run whose manifest predates a retrieval knob (here sample_above, removed from it)
    resumes with the same command: the missing knob is its default, off; giving it a value is refused."""
    idx = tmp_path / "i.h5"
    ok(["build", "--dataset", tiny, "--policy", "none", "--scales", "3,5", "--threads", "1", "--out", idx])
    args = ["sample", "--index", idx, "-s", "3,3,5", "-b", "2", "--topk", "8", "--seeds", "0-3", "--shard-size", 2]
    out = tmp_path / "r"
    ok([*args, "--out", out])
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["settings"]["retrieval"]["sample_above"], manifest["settings"]["retrieval"]["sample_size"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    res = ok([*args, "--out", out])
    assert "2 shards already done" in res.output, res.output
    res = run([*args, "--out", out, "--sample-above", "0.9"])
    assert res.exit_code == 2 and "settings.retrieval.sample_above" in res.output, res.output
    # Before list-major search: on by default, off there; the refusal names it.
    del manifest["settings"]["retrieval"]["list_scan"], manifest["settings"]["retrieval"]["exact_scan"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    res = run([*args, "--out", out])
    assert res.exit_code == 2 and "settings.retrieval.list_scan is False there, True here" in res.output, res.output
    res = ok([*args, "--out", out, "--query-scan"])
    assert "2 shards already done" in res.output, res.output


def test_deleted_and_corrupt_shards_are_recomputed_and_said(tiny, tmp_path):
    out = tmp_path / "r"
    args = [*base(tiny), "--seeds", "0-7", "--shard-size", 2, "--out", out]
    ok(args)
    before = open_run(out).samples
    (out / "shards" / "shard-000001.h5").unlink()
    path = out / "shards" / "shard-000002.h5"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(PatchdbError, match="checksum"):
        open_run(out)
    res = ok(args)
    assert "shard-000001.h5 (seeds 2-3) was deleted; recomputing it" in res.output
    assert "shard-000002.h5 (seeds 4-5) fails its SHA-256 checksum; recomputing it" in res.output
    assert "2 computed now" not in res.output and "4 computed now" in res.output
    assert np.array_equal(open_run(out).samples, before)
    assert shard_events(out) == {"shard-000000.h5": 1, "shard-000001.h5": 2, "shard-000002.h5": 2, "shard-000003.h5": 1}


def test_kill_9_mid_run_then_rerun_equals_an_uninterrupted_run(tiny, tmp_path):
    args = [*base(tiny), "--seeds", "0-39", "--shard-size", 2]
    whole = tmp_path / "whole"
    ok([*args, "--out", whole])
    out = tmp_path / "killed"
    cmd = [sys.executable, "-c", "from patchdb.cli.main import main; main()", *map(str, args), "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and proc.poll() is None:
        try:
            done = len(json.loads((out / "manifest.json").read_text())["shards"])
        except (OSError, ValueError):
            done = 0
        if done >= 3:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(json.loads((out / "manifest.json").read_text())["shards"])
    assert 3 <= done < 20, f"the run was not caught mid-way ({done} of 20 shards done when killed)"
    res = ok([*args, "--out", out])
    assert f"{done} shards done" in res.output
    assert np.array_equal(open_run(out).samples, open_run(whole).samples)
    counts = shard_events(out)
    shards = json.loads((out / "manifest.json").read_text())["shards"]
    adopted = {name for name, e in shards.items() if e["worker"] == "adopted"}
    assert max(counts.values()) == 1  # no shard computed twice
    assert set(counts) | adopted == set(shards) and len(shards) == 20  # each one computed (or found finished)
    assert not list(out.rglob("*.tmp"))


def test_unfinished_run_is_refused_unless_partial(tiny, tmp_path):
    spec = RunSpec({"kind": "dataset", "dataset": str(tiny), "policy": "none"}, "bbels", "3,3,5", batch_size=2)
    run_samples(tmp_path / "p", spec, list(range(4)), shard_size=2, progress=False)
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    del manifest["shards"]["shard-000001.h5"]
    (tmp_path / "p" / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "p" / "shards" / "shard-000001.h5").unlink()
    with pytest.raises(PatchdbError, match="unfinished: 2 of 4 samples missing; rerun"):
        open_run(tmp_path / "p")
    part = open_run(tmp_path / "p", partial=True)
    assert part.seeds.tolist() == [0, 1] and part.missing == [2, 3]


@pytest.mark.parametrize("args,needle", [
    (["--seeds", "0-3", "--num", "4"], "--seeds with --num"),
    (["--seeds", "0-2,5", "--out", "x.h5"], "one contiguous range"),
    (["--workers", "2", "--out", "x.h5"], "write a run folder"),
    (["--seeds", "3-1"], "backwards"),
])
def test_bad_run_options_give_one_line(tiny, tmp_path, args, needle):
    res = run([*base(tiny), "--out", tmp_path / "o", *args])
    assert res.exit_code == 2 and needle in res.output and "Traceback" not in res.output, res.output


def test_ray_connect_gives_up_after_its_bound(monkeypatch):
    """A cluster whose ray.init never returns: one PatchdbError after the timeout, not a hang; and the
    process is set to leave through the exit handler that skips Ray's own (recorded here, not run, so
    that pytest keeps its exit code)."""
    from patchdb.runs import ray_backend
    from patchdb.runs.ray_backend import connect

    registered = []
    monkeypatch.setattr(ray_backend.atexit, "register", registered.append)
    release = threading.Event()

    class Hanging:
        def is_initialized(self):
            return False

        def init(self, **kwargs):
            release.wait(60)

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        start = time.time()
        with pytest.raises(PatchdbError, match=f"cannot join the Ray cluster at '{address}' .no answer in 1 s"):
            connect(Hanging(), address, timeout=1.0)
    assert time.time() - start < 10
    assert registered == [ray_backend._exit_now]
    release.set()


def test_ray_missing_or_unreachable_gives_one_line_in_bounded_time(tiny, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    res = run([*base(tiny), "--seeds", "0-1", "--ray", "127.0.0.1:1", "--out", tmp_path / "o"])
    assert res.exit_code == 2 and "does not answer" in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
    # A port that accepts connections but never speaks Ray: bounded by PATCHDB_RAY_TIMEOUT (in a
    # subprocess, so that Ray's abandoned connection attempt dies with it).
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        cmd = [sys.executable, "-c", "from patchdb.cli.main import main; main()", *map(str, base(tiny)),
               "--seeds", "0-1", "--ray", address, "--out", str(tmp_path / "o")]
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PATCHDB_RAY_TIMEOUT": "3"})
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert proc.returncode == 2 and len(errors) == 1 and address in errors[0], proc.stderr[-2000:]
    assert not (tmp_path / "o").exists()  # (wall time here is mostly importing torch on a busy machine)
    monkeypatch.setitem(sys.modules, "ray", None)
    res = run([*base(tiny), "--seeds", "0-1", "--ray", "auto", "--out", tmp_path / "o"])
    assert res.exit_code == 2 and 'pip install "patchdb[ray]"' in res.output


# -- export ---------------------------------------------------------------------------------------------

def test_export_png_per_seed_in_folders_of_1000_and_npz(tiny, tmp_path):
    ok([*base(tiny), "--seeds", "998-1001", "--label", "all", "--out", tmp_path / "run"])
    ok(["export", tmp_path / "run", "--png", tmp_path / "png", "--npz", tmp_path / "s.npz"])
    files = sorted(p.relative_to(tmp_path / "png").as_posix() for p in (tmp_path / "png").rglob("*.png"))
    assert files == ["00000/000998.png", "00000/000999.png", "01000/001000.png", "01000/001001.png"]
    got = open_run(tmp_path / "run")
    pix = to_uint8(got.samples)
    for j, seed in enumerate(got.seeds):
        img = np.asarray(Image.open(png_path(tmp_path / "png", int(seed))))
        assert img.shape == (16, 16) and np.array_equal(img, pix[j, ..., 0])
    with np.load(tmp_path / "s.npz") as z:
        assert z["arr_0"].shape == (4, 16, 16, 1) and z["arr_0"].dtype == np.uint8
        assert z["seeds"].tolist() == [998, 999, 1000, 1001] and z["labels"].tolist() == [8, 9, 0, 1]
    res = run(["export", tmp_path / "run", "--png", tmp_path / "png"])
    assert res.exit_code == 2 and "--force" in res.output
    ok(["export", tmp_path / "run", "--png", tmp_path / "png", "--force"])


# -- report ---------------------------------------------------------------------------------------------

def test_report_fields_and_is_copies_more_than_bbels(tiny, tmp_path):
    shares = {}
    for machine in ("is", "bbels"):
        folder = tmp_path / machine
        ok([*base(tiny, machine), "--seeds", "0-7", "--out", folder])
        res = ok(["report", folder])
        assert "near-copy share" in res.output
        rep = json.loads((folder / "report" / "report.json").read_text())
        for key in ("nearest_distance", "ratio", "near_copy", "diversity", "classes", "per_sample"):
            assert key in rep
        assert "1/3" in rep["near_copy"]["criterion"] and len(rep["per_sample"]) == 8
        assert (folder / "report" / "report.png").stat().st_size > 1000
        assert "report.png" in (folder / "report" / "index.html").read_text()
        shares[machine] = rep["near_copy"]["share"]
        got = open_run(folder)
        train = np.load(tiny)["images"].transpose(0, 3, 1, 2).astype(np.float64) / 127.5 - 1
        d = np.sqrt(((got.samples[:, None].astype(np.float64) - train[None]) ** 2).sum((2, 3, 4)))
        d.sort(1)
        assert np.allclose([p["d1"] for p in rep["per_sample"]], d[:, 0], atol=1e-5)
        assert np.allclose([p["d2"] for p in rep["per_sample"]], d[:, 1], atol=1e-5)
    assert shares["is"] > shares["bbels"], shares
    res = run(["report", tmp_path / "is"])
    assert res.exit_code == 2 and "--force" in res.output


def test_disk_full_mid_shard_leaves_no_shard_that_looks_finished(tiny, tmp_path, monkeypatch):
    """A write failing with ENOSPC half way through a shard file: nothing under a shard's name, no temp
    file left, the manifest lists no such shard, and the rerun completes with the same bits."""
    import errno

    spec = RunSpec({"kind": "dataset", "dataset": str(tiny), "policy": "none"}, "bbels", "3,3,5", batch_size=2)
    run_samples(tmp_path / "ref", spec, list(range(4)), shard_size=2, progress=False)
    real = h5py.Group.create_dataset

    def full(self, name, *args, **kwargs):
        if name == "labels":  # after the samples went into the temporary file
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", full)
    with pytest.raises(OSError, match="No space left"):
        run_samples(tmp_path / "r", spec, list(range(4)), shard_size=2, progress=False)
    assert list((tmp_path / "r" / "shards").iterdir()) == []
    assert json.loads((tmp_path / "r" / "manifest.json").read_text())["shards"] == {}
    monkeypatch.setattr(h5py.Group, "create_dataset", real)
    run_samples(tmp_path / "r", spec, list(range(4)), shard_size=2, progress=False)
    assert np.array_equal(open_run(tmp_path / "r").samples, open_run(tmp_path / "ref").samples)
