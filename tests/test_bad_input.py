"""Bad input to every command (issue 29): one line, exit code 2, no traceback, nothing written.

A table of crafted files and options (each finding of issue 29 has a row), a few behaviour checks
that are not refusals (integrity report, label compaction, overwrite with --force), and a
hypothesis fuzz of option values for every command. Small assets are built once per session
(12 embedded images, patch size 3); the whole file runs in well under two minutes on one core.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from patchdb.cli.main import main

from patchdb.data import load_dataset
from patchdb.denoisers.factory import make_denoiser
from patchdb.errors import PatchdbError
from patchdb.indexing.reader import IndexFile, _chunked_digest
from patchdb.store import digest

MARKER = "pwned-by-a-file"


def invoke(*args, cwd: Path | None = None, env: dict | None = None):
    runner = CliRunner()
    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return runner.invoke(main, [str(a) for a in args], env=env)
    finally:
        os.chdir(old)


def ok(*args, **kw):
    res = invoke(*args, **kw)
    assert res.exit_code == 0, (res.output, res.stderr, res.exception)
    return res


def snapshot(folder: Path) -> dict:
    """Every file below ``folder`` with its size and mtime (to see that nothing was written)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def assert_one_line_error(res, expect: str = "") -> str:
    err = res.stderr
    assert res.exit_code == 2, f"exit {res.exit_code}\nstdout: {res.stdout}\nstderr: {err}\n{res.exception!r}"
    assert "Traceback" not in err + res.stdout
    assert isinstance(res.exception, SystemExit), repr(res.exception)
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert expect.lower() in errors[0].lower(), errors[0]
    return errors[0]


# ------------------------------------------------------------------------------------------------
# Assets, built once
# ------------------------------------------------------------------------------------------------


class Pwn:
    """A pickle that runs code when loaded (it would create the marker file)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels (a decompression bomb's first bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _flip(src: Path, dst: Path, dataset: str, at: int) -> None:
    with h5py.File(src) as f:
        offset = f[dataset].id.get_offset()
        assert offset is not None, "contiguous dataset expected"
    raw = bytearray(src.read_bytes())
    raw[offset + at] ^= 0x40
    dst.write_bytes(raw)


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad_input")
    ok("build", "--limit", "12", "--scales", "3", "--recall-k", "8", "--out", d / "idx.h5")
    ok("build", "--limit", "12", "--scales", "3", "--recall-k", "8", "--only-classes", "1,2", "--out", d / "other.h5")
    ok("sample", "--limit", "12", "-s", "3", "-n", "2", "-o", d / "s.h5")
    ok("train", "--limit", "16", "--width", "4", "--depth", "1", "--epochs", "0.5", "-b", "8", "--ema", "0", "--out", d / "ck")
    ck = d / "ck"
    for name in ("evil_state", "evil_model", "garbage", "trunc", "wrongkeys", "badjson", "badmodelcfg",
                 "state_garbage", "state_trunc", "state_wrongkeys"):
        shutil.copytree(ck, d / f"ck_{name}")
    torch.save({"x": Pwn(d / MARKER)}, d / "ck_evil_state" / "train_state.pt")
    torch.save({"x": Pwn(d / MARKER)}, d / "ck_evil_model" / "model.pt")
    (d / "ck_garbage" / "model.pt").write_bytes(b"garbage" * 100)
    (d / "ck_trunc" / "model.pt").write_bytes((ck / "model.pt").read_bytes()[:600])
    torch.save({"foo": torch.zeros(3)}, d / "ck_wrongkeys" / "model.pt")
    (d / "ck_badjson" / "config.json").write_text("{]")
    cfg = json.loads((ck / "config.json").read_text())
    cfg["model"]["width"] = "abc"
    (d / "ck_badmodelcfg" / "config.json").write_text(json.dumps(cfg))
    (d / "ck_state_garbage" / "train_state.pt").write_bytes(b"garbage" * 100)
    (d / "ck_state_trunc" / "train_state.pt").write_bytes((ck / "train_state.pt").read_bytes()[:600])
    torch.save({"foo": torch.zeros(3)}, d / "ck_state_wrongkeys" / "train_state.pt")
    # Corrupted index files: a byte of a FAISS payload, of the images; a label; a mixed file.
    with h5py.File(d / "idx.h5") as f:
        n = f["sizes/k3/e0/index/0"].shape[0]
    _flip(d / "idx.h5", d / "idx_faiss.h5", "sizes/k3/e0/index/0", n // 2)
    _flip(d / "idx.h5", d / "idx_images.h5", "images", 6000)
    shutil.copy(d / "idx.h5", d / "idx_labels.h5")
    with h5py.File(d / "idx_labels.h5", "a") as f:
        f["labels"][0] = -1
    shutil.copy(d / "idx.h5", d / "idx_mixed.h5")
    with h5py.File(d / "idx_mixed.h5", "a") as f, h5py.File(d / "other.h5") as g:
        del f["sizes/k3/e0"]
        g.copy(g["sizes/k3/e0"], f["sizes/k3"], name="e0")
    # Data files
    np.savez(d / "neglab.npz", images=np.zeros((4, 8, 8), np.uint8), labels=np.array([0, 1, -1, 2]))
    np.savez(d / "floatlab.npz", images=np.zeros((4, 8, 8), np.uint8), labels=np.array([0, 1, 0.5, 2]))
    with zipfile.ZipFile(d / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("a/x.png", "w", force_zip64=True) as fh:
            for _ in range(80):
                fh.write(bytes(2**20))
        z.writestr("b/y.png", _png_header(8, 8))
    for cls in ("a", "b"):
        (d / "big" / cls).mkdir(parents=True)
        (d / "big" / cls / "x.png").write_bytes(_png_header(12000, 12000))
        (d / "tiny" / cls).mkdir(parents=True)
        from PIL import Image

        Image.new("L", (1, 1), 200).save(d / "tiny" / cls / "x.png")
    np.save(d / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(d / "nan.npy", np.full((1, 32, 32), np.nan, np.float32))
    np.save(d / "ints.npy", np.full((1, 32, 32), 7, np.int64))
    (d / "empty_folder").mkdir()
    # MNIST-style files whose labels start as Fashion-MNIST's training labels do
    _idx_pair(d / "fashion", [9, 0, 0, 3, 0, 2, 7, 2, 5, 5, 1, 4])
    return d


def _idx_pair(folder: Path, labels: list[int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    n = len(labels)
    with gzip.open(folder / "train-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(struct.pack(">BBBBIII", 0, 0, 8, 3, n, 28, 28) + bytes(n * 28 * 28))
    with gzip.open(folder / "train-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(struct.pack(">BBBBI", 0, 0, 8, 1, n) + bytes(labels))


# ------------------------------------------------------------------------------------------------
# The table: every finding of issue 29 that is a refusal
# ------------------------------------------------------------------------------------------------

CK_SHORT = ["-n", "1", "--steps", "2", "--limit", "12"]
CASES = {
    # code execution and bad checkpoints
    "train-resume-crafted-pickle": (["train", "--limit", "16", "--width", "4", "--depth", "1", "--epochs", "1", "-b", "8",
                                     "--ema", "0", "--out", "{a}/ck_evil_state", "--resume"], "train_state.pt"),
    "calibrate-crafted-model": (["calibrate", "-c", "{a}/ck_evil_model", *CK_SHORT, "--sizes", "3", "-o", "cal.json"], "model.pt"),
    "compare-crafted-model": (["compare", "-c", "{a}/ck_evil_model", *CK_SHORT, "-s", "3,3", "-o", "cmp"], "model.pt"),
    "compare-garbage-model": (["compare", "-c", "{a}/ck_garbage", *CK_SHORT, "-s", "3,3", "-o", "cmp"], "model.pt"),
    "compare-truncated-model": (["compare", "-c", "{a}/ck_trunc", *CK_SHORT, "-s", "3,3", "-o", "cmp"], "model.pt"),
    "compare-wrong-keys-model": (["compare", "-c", "{a}/ck_wrongkeys", *CK_SHORT, "-s", "3,3", "-o", "cmp"], "model.pt"),
    "compare-bad-json": (["compare", "-c", "{a}/ck_badjson", *CK_SHORT, "-s", "3,3", "-o", "cmp"], "config.json"),
    "compare-bad-model-config": (["compare", "-c", "{a}/ck_badmodelcfg", *CK_SHORT, "-s", "3,3", "-o", "cmp"], "config.json"),
    "train-resume-garbage-state": (["train", "--limit", "16", "--width", "4", "--depth", "1", "--epochs", "1", "-b", "8",
                                    "--ema", "0", "--out", "{a}/ck_state_garbage", "--resume"], "train_state.pt"),
    "train-resume-truncated-state": (["train", "--limit", "16", "--width", "4", "--depth", "1", "--epochs", "1", "-b", "8",
                                      "--ema", "0", "--out", "{a}/ck_state_trunc", "--resume"], "train_state.pt"),
    "train-resume-wrong-keys-state": (["train", "--limit", "16", "--width", "4", "--depth", "1", "--epochs", "1", "-b", "8",
                                       "--ema", "0", "--out", "{a}/ck_state_wrongkeys", "--resume"], "train_state.pt"),
    # unbounded memory
    "query-size-99": (["query", "{a}/s.h5", "--size", "99"], "--size"),
    "query-size-63": (["query", "{a}/s.h5", "--size", "63"], "--size"),
    "query-size-33": (["query", "{a}/s.h5", "--size", "33"], "--size"),
    "zip-bomb-member": (["sample", "--dataset", "{a}/bomb.zip", "-s", "3", "-n", "1", "-o", "x.h5"], "PATCHDB_MAX"),
    "144-megapixel-png": (["sample", "--dataset", "{a}/big", "-s", "3", "-n", "1", "-o", "x.h5"], "PATCHDB_MAX"),
    # corruption
    "info-flipped-faiss": (["info", "{a}/idx_faiss.h5", "--check"], "sizes/k3/e0/index/0"),
    "info-flipped-faiss-small-file": (["info", "{a}/idx_faiss.h5"], "sizes/k3/e0/index/0"),
    "info-flipped-images": (["info", "{a}/idx_images.h5", "--check"], "images"),
    "info-labels-minus-1": (["info", "{a}/idx_labels.h5"], "labels"),
    "info-mixed-build": (["info", "{a}/idx_mixed.h5"], "another build"),
    "sample-flipped-faiss": (["sample", "--index", "{a}/idx_faiss.h5", "-s", "3", "-n", "1", "-o", "x.h5"], "sizes/k3/e0/index/0"),
    "sample-flipped-images": (["sample", "--index", "{a}/idx_images.h5", "-s", "3", "-n", "1", "-o", "x.h5"], "images"),
    "sample-labels-minus-1": (["sample", "--index", "{a}/idx_labels.h5", "-s", "3", "-n", "1", "--label", "0", "-o", "x.h5"], "labels"),
    "sample-mixed-build": (["sample", "--index", "{a}/idx_mixed.h5", "-s", "3", "-n", "1", "-o", "x.h5"], "another build"),
    # silently wrong
    "seed-2**32": (["sample", "--limit", "12", "-s", "3", "-n", "1", "--seed", str(2**32), "-o", "x.h5"], "--seed"),
    "seed--1": (["sample", "--limit", "12", "-s", "3", "-n", "1", "--seed", "-1", "-o", "x.h5"], "--seed"),
    "seed-2**64": (["sample", "--limit", "12", "-s", "3", "-n", "1", "--seed", str(2**64), "-o", "x.h5"], "--seed"),
    "seed-range-overflows": (["sample", "--limit", "12", "-s", "3", "-n", "3", "--seed", str(2**32 - 2), "-o", "x.h5"], "--seed"),
    "validate-seed-2**64": (["validate", "{a}/idx.h5", "-s", "3", "--seed", str(2**64)], "--seed"),
    "calibrate-seed--5": (["calibrate", "-c", "{a}/ck", *CK_SHORT, "--sizes", "3", "--seed", "-5", "-o", "c.json"], "--seed"),
    "build-seed-2**40": (["build", "--limit", "12", "--scales", "3", "--seed", str(2**40), "--out", "x.h5"], "--seed"),
    "train-seed-2**40": (["train", "--limit", "16", "--seed", str(2**40), "--out", "t"], "--seed"),
    "query-other-dataset": (["query", "{a}/s.h5", "--size", "3", "--limit", "20", "--pixel", "5,5"], "another training set"),
    "query-all-nan": (["query", "{a}/nan.npy", "--size", "3", "--limit", "12"], "NaN"),
    "query-int64-npy": (["query", "{a}/ints.npy", "--size", "3", "--limit", "12"], "int64"),
    "calibrate-other-dataset": (["calibrate", "-c", "{a}/ck", "-n", "1", "--steps", "2", "--sizes", "3",
                                 "--dataset", "fashion-mnist", "--root", "{a}/fashion", "-o", "c.json"], "trained on"),
    "mnist-name-over-fashion-files": (["build", "--dataset", "mnist", "--root", "{a}/fashion", "--scales", "3",
                                       "--out", "x.h5"], "--dataset fashion-mnist"),
    # overwrite rule and folders
    "sample-over-existing": (["sample", "--limit", "12", "-s", "3", "-n", "1", "-o", "keep.h5"], "--force"),
    "sample-png-beside-existing": (["sample", "--limit", "12", "-s", "3", "-n", "1", "-o", "keep2.h5"], "--force"),
    "sample-out-txt": (["sample", "--limit", "12", "-s", "3", "-n", "1", "-o", "x.txt"], ".h5"),
    "sample-missing-folder": (["sample", "--limit", "12", "-s", "3", "-n", "1", "-o", "no/such/x.h5"], "does not exist"),
    "attribute-over-existing": (["attribute", "{a}/s.h5", "--out", "keep.h5", "--samples", "0"], "--force"),
    "attribute-plots-missing-parent": (["attribute", "{a}/s.h5", "--out", "a.h5", "--samples", "0", "--plots", "no/such/dir"],
                                       "does not exist"),
    "calibrate-over-existing": (["calibrate", "-c", "{a}/ck", *CK_SHORT, "--sizes", "3", "-o", "keep.json"], "--force"),
    "compare-over-existing": (["compare", "-c", "{a}/ck", *CK_SHORT, "-s", "3,3", "-o", "keepdir"], "--force"),
    "compare-missing-parent": (["compare", "-c", "{a}/ck", *CK_SHORT, "-s", "3,3", "-o", "no/such/cmp"], "does not exist"),
    "validate-json-over-existing": (["validate", "{a}/idx.h5", "-s", "3", "--seeds", "1", "--json-out", "keep.json"], "--force"),
    "query-png-over-existing": (["query", "{a}/s.h5", "--size", "3", "--pixel", "3,3", "--png", "keep.png"], "--force"),
    "build-over-existing": (["build", "--limit", "12", "--scales", "3", "--out", "keep.h5"], "--force"),
    "train-into-full-folder": (["train", "--limit", "16", "--out", "keepdir"], "--resume"),
    # one line instead of a traceback
    "label-abc": (["sample", "--limit", "12", "-s", "3", "-n", "1", "--label", "abc", "-o", "x.h5"], "--label"),
    "label-3.5": (["sample", "--limit", "12", "-s", "3", "-n", "1", "--label", "3.5", "-o", "x.h5"], "--label"),
    "label-empty": (["sample", "--limit", "12", "-s", "3", "-n", "1", "--label", "", "-o", "x.h5"], "--label"),
    "label-out-of-range": (["sample", "--limit", "12", "-s", "3", "-n", "1", "--label", "12", "-o", "x.h5"], "label"),
    "validate-label-abc": (["validate", "{a}/idx.h5", "-s", "3", "--label", "abc"], "--label"),
    "compare-label-abc": (["compare", "-c", "{a}/ck", *CK_SHORT, "-s", "3,3", "--label", "x", "-o", "cmp"], "--label"),
    "schedule-empty": (["sample", "--limit", "12", "-s", "", "-n", "1", "-o", "x.h5"], "schedule"),
    "schedule-folder": (["sample", "--limit", "12", "-s", "{a}", "-n", "1", "-o", "x.h5"], "schedule"),
    "build-scales-empty": (["build", "--limit", "12", "--scales", "", "--out", "x.h5"], "--scales"),
    "build-memory-bad": (["build", "--limit", "12", "--scales", "3", "--memory", "1.5.3GB", "--out", "x.h5"], "--memory"),
    "train-resume-and-force": (["train", "--limit", "16", "--out", "{a}/ck", "--resume", "--force"], "--force"),
    "attribute-samples-empty": (["attribute", "{a}/s.h5", "--samples", "", "--out", "a.h5"], "--samples"),
    "query-object-npy": (["query", "{a}/obj.npy", "--size", "3", "--limit", "12"], "obj.npy"),
    "negative-label-npz": (["sample", "--dataset", "{a}/neglab.npz", "--policy", "none", "-s", "3", "-n", "1", "-o", "x.h5"],
                           "label"),
    "float-label-npz": (["sample", "--dataset", "{a}/floatlab.npz", "--policy", "none", "-s", "3", "-n", "1", "-o", "x.h5"],
                        "label"),
    "empty-folder-dataset": (["sample", "--dataset", "{a}/empty_folder", "-s", "3", "-n", "1", "-o", "x.h5"], "empty_folder"),
    "unknown-command": (["smaple"], "smaple"),
    "bad-choice": (["sample", "--dtype", "float16"], "--dtype"),
    # questionable accepts
    "exact-without-index": (["sample", "--limit", "12", "-s", "3", "-n", "1", "--exact", "-o", "x.h5"], "--index"),
    "build-machine-ls": (["build", "--limit", "12", "-m", "ls", "--scales", "3", "--out", "x.h5"], "els or bbels"),
    "upscale-1x1": (["sample", "--dataset", "{a}/tiny", "-s", "3", "-n", "1", "-o", "x.h5"], "1x1"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_one_line_exit_2_nothing_written(assets, tmp_path, name):
    args, expect = CASES[name]
    work = tmp_path / "work"
    work.mkdir()
    for keep in ("keep.h5", "keep.json", "keep.png", "keep2.png"):
        (work / keep).write_text("precious")
    (work / "keepdir").mkdir()
    (work / "keepdir" / "compare.json").write_text("precious")
    before, assets_before = snapshot(work), snapshot(assets)
    res = invoke(*[a.format(a=assets) for a in args], cwd=work)
    assert_one_line_error(res, expect)
    assert snapshot(work) == before, "wrote or replaced files"
    assert snapshot(assets) == assets_before, "changed an input"
    assert not (assets / MARKER).exists(), "ran code from a file"


# ------------------------------------------------------------------------------------------------
# Behaviour that is not a refusal
# ------------------------------------------------------------------------------------------------


def test_info_check_passes_on_a_good_file_and_names_each_damaged_part(assets):
    res = ok("info", assets / "idx.h5", "--check")
    assert "checksums match" in res.stdout
    for name, part in [("idx_faiss.h5", "sizes/k3/e0/index/0"), ("idx_images.h5", "images")]:
        line = assert_one_line_error(invoke("info", assets / name, "--check"), part)
        assert "checksum" in line


def test_force_replaces_and_the_rule_is_the_same_for_folders(tmp_path):
    (tmp_path / "s.h5").write_text("old")
    res = invoke("sample", "--limit", "12", "-s", "3", "-n", "1", "-o", tmp_path / "s.h5", "--force")
    assert res.exit_code == 0, res.stderr
    with h5py.File(tmp_path / "s.h5") as f:
        assert f["samples"].shape == (1, 1, 32, 32)
    res = invoke("sample", "--limit", "12", "-s", "3", "-n", "1", "-o", tmp_path / "new" / "s.h5", "--force")
    assert res.exit_code == 0 and (tmp_path / "new" / "s.png").exists()


def test_seed_is_recorded_as_given_and_top_seed_is_usable(tmp_path):
    top = 2**32 - 1
    ok("sample", "--limit", "12", "-s", "3", "-n", "1", "--seed", top, "-o", tmp_path / "a.h5")
    with h5py.File(tmp_path / "a.h5") as f:
        assert int(f["seeds"][0]) == top


def test_sparse_labels_are_compacted_not_enumerated(tmp_path):
    from patchdb.data import load_dataset

    np.savez(tmp_path / "l.npz", images=np.zeros((4, 8, 8), np.uint8), labels=np.array([7, 10**12, 7, 3]))
    data = load_dataset(tmp_path / "l.npz", policy="none")
    assert data.classes == ("3", "7", "1000000000000") and data.labels.tolist() == [0, 1, 1, 2]


def test_mnist_name_over_fashion_files_is_refused(tmp_path):
    from patchdb.data import load_dataset
    from patchdb.errors import PatchdbError

    # IDX files whose labels start like Fashion-MNIST's training split (9, 0, 0, 3, 0, 2, 7, 2, 5, 5)
    _idx_pair(tmp_path, [9, 0, 0, 3, 0, 2, 7, 2, 5, 5, 1, 4])
    with pytest.raises(PatchdbError, match="fashion-mnist"):
        load_dataset("mnist", root=tmp_path)
    assert load_dataset("fashion-mnist", root=tmp_path).classes[0] == "T-shirt/top"


def test_two_writers_to_one_path_cannot_both_succeed(tmp_path):
    """A path locked by a live run is refused at once; a lock left by a killed run is taken over."""
    import subprocess
    import sys

    from patchdb.store import lock_path

    out = tmp_path / "o.h5"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock_path(out).write_text(str(holder.pid))
        res = invoke("build", "--limit", "12", "--scales", "3", "--out", out)
        assert "another patchdb run (pid" in assert_one_line_error(res)
        res = invoke("sample", "--limit", "12", "-s", "3", "-n", "1", "-o", out)
        assert "another patchdb run" in assert_one_line_error(res)
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    ok("build", "--limit", "12", "--scales", "3", "--recall-k", "8", "--out", out)  # the dead run's lock is stale
    assert not lock_path(out).exists() and invoke("info", out).exit_code == 0


def test_ctrl_c_of_build_names_the_partial_folder(tmp_path, monkeypatch):
    from patchdb.indexing import builder

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(builder, "_assemble", interrupted)
    res = invoke("build", "--limit", "12", "--scales", "3", "--recall-k", "8", "--out", tmp_path / "b.h5")
    assert res.exit_code == 130 and "b.h5.partial/" in res.stderr and "rerun the same command" in res.stderr
    assert (tmp_path / "b.h5.partial").is_dir() and not (tmp_path / "b.h5").exists()


# ------------------------------------------------------------------------------------------------
# Fuzz: malformed option values for every command
# ------------------------------------------------------------------------------------------------

NOT_INT = st.sampled_from(["", "abc", "3.5", "1e3", "0x10", "nan", " ", "--", "1,2"])
NEG_OR_ZERO = st.integers(max_value=0).map(str)
BAD_SEED = st.one_of(st.integers(min_value=2**32), st.integers(max_value=-1)).map(str) | NOT_INT
BAD_FLOAT = st.sampled_from(["", "abc", "nan", "-1", "-inf", "1,5"])
BAD_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12).filter(
    lambda s: s.strip().lower() not in {"all", "none", "cpu", "auto", "bbels", "els", "ls", "is"}
    and not re.fullmatch(r"[\s0-9,+_-]+", s))
BAD_SCHEDULE = st.sampled_from(["", " ", "0", "2", "3,4", "-3", "abc", "3,,5", "constant:", "constant:4", ".", "/",
                                "none.json", "x.txt", "999999999999"])
BAD_PATH = st.sampled_from(["", ".", "/", "does/not/exist.h5", "missing.h5"])
BAD_DATASET = st.sampled_from(["", ".", "does/not/exist", "missing.npz", "x.zip", "cifar-100"])
BAD_CLASSES = st.sampled_from(["", "a", "1.5", "-1", "10", "1,,2", "99", "\u0663", "0;1"])
BAD_MEMORY = st.sampled_from(["", "lots", "-1GiB", "1.5.3GB", "GiB", "nan", "0"])

SAMPLE = ["sample", "--limit", "12", "-s", "3", "-n", "1", "-o", "x.h5"]
COMMON_LOAD = ["--limit", "12"]
FUZZ = {
    "sample": (SAMPLE, {"--seed": BAD_SEED, "--label": BAD_TEXT, "--num": NEG_OR_ZERO | NOT_INT,
                        "--batch-size": NEG_OR_ZERO | NOT_INT, "--schedule": BAD_SCHEDULE, "--machine": BAD_TEXT,
                        "--device": BAD_TEXT, "--block-mb": BAD_FLOAT, "--limit": NEG_OR_ZERO | NOT_INT,
                        "--only-classes": BAD_CLASSES, "--topk": NEG_OR_ZERO | NOT_INT, "--steps": NEG_OR_ZERO | NOT_INT,
                        "--dataset": BAD_DATASET, "--out": st.sampled_from(["", ".", "/", "x.txt", "no/such/x.h5", "x.png"])}),
    "build": (["build", "--limit", "12", "--scales", "3", "--out", "x.h5"],
              {"--seed": BAD_SEED, "--scales": BAD_SCHEDULE, "--memory": BAD_MEMORY, "--recall-k": NEG_OR_ZERO | NOT_INT,
               "--machine": BAD_TEXT, "--threads": NEG_OR_ZERO | NOT_INT, "--limit": NEG_OR_ZERO | NOT_INT}),
    "info": (["info", "{a}/idx.h5"], {"": BAD_PATH}),
    "validate": (["validate", "{a}/idx.h5", "-s", "3", "--seeds", "1"],
                 {"--seed": BAD_SEED, "--label": BAD_TEXT, "--schedule": BAD_SCHEDULE, "--topk": NEG_OR_ZERO | NOT_INT,
                  "--machine": BAD_TEXT, "--device": BAD_TEXT, "--min-r2": BAD_FLOAT}),
    "query": (["query", "{a}/s.h5", "--size", "3", "--pixel", "3,3"],
              {"--size": st.sampled_from(["0", "2", "4", "-3", "abc", "65", "99", "1001"]), "--pixel": BAD_TEXT,
               "--box": BAD_TEXT, "--top": NEG_OR_ZERO | NOT_INT, "--machine": BAD_TEXT, "--sample-id": BAD_SEED,
               "--label": NOT_INT | st.just("99")}),
    "attribute": (["attribute", "{a}/s.h5", "--out", "a.h5", "--samples", "0"],
                  {"--samples": BAD_TEXT.filter(lambda s: s.strip() not in {"0", "1"}), "--pixel": BAD_TEXT,
                   "--mass": BAD_FLOAT, "--max-contrib": NEG_OR_ZERO | NOT_INT, "--block-mb": BAD_FLOAT,
                   "--topk": NEG_OR_ZERO | NOT_INT}),
    "train": (["train", "--limit", "16", "--width", "4", "--depth", "1", "--epochs", "0.1", "--out", "t"],
              {"--seed": BAD_SEED, "--width": NEG_OR_ZERO | NOT_INT, "--lr": BAD_FLOAT, "--ema": BAD_FLOAT,
               "--batch-size": NEG_OR_ZERO | NOT_INT, "--device": BAD_TEXT, "--epochs": BAD_FLOAT}),
    "calibrate": (["calibrate", "-c", "{a}/ck", "-n", "1", "--steps", "2", "--limit", "12", "--sizes", "3", "-o", "c.json"],
                  {"--seed": BAD_SEED, "--label": BAD_TEXT, "--sizes": BAD_SCHEDULE.filter(lambda s: s.strip() != ""),
                   "--machine": BAD_TEXT, "--steps": NEG_OR_ZERO | NOT_INT, "--checkpoint": BAD_PATH}),
    "compare": (["compare", "-c", "{a}/ck", "-n", "1", "--steps", "2", "--limit", "12", "-s", "3,3", "-o", "cmp"],
                {"--seed": BAD_SEED, "--label": BAD_TEXT, "--schedule": BAD_SCHEDULE, "--machine": BAD_TEXT,
                 "--num": NEG_OR_ZERO | NOT_INT, "--checkpoint": BAD_PATH}),
}


def _fuzz_case(command: str):
    options = FUZZ[command][1]
    return st.sampled_from(sorted(options)).flatmap(lambda opt: st.tuples(st.just(opt), options[opt]))


@pytest.mark.parametrize("command", list(FUZZ))
def test_fuzz_option_values(assets, tmp_path, command):
    base = [a.format(a=assets) for a in FUZZ[command][0]]
    work = tmp_path / "w"
    work.mkdir()
    assets_before = snapshot(assets)

    @settings(max_examples=int(os.environ.get("PATCHDB_FUZZ_EXAMPLES", "50")), deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(_fuzz_case(command))
    def check(case):
        option, value = case
        args = [*base, value] if option == "" else [*base, option, value]
        if option == "":  # the positional argument itself is the bad value
            args = [base[0], value]
        res = invoke(*args, cwd=work)
        assert_one_line_error(res)
        assert not any(work.iterdir()), f"{args} wrote {list(work.iterdir())}"

    check()
    assert snapshot(assets) == assets_before


def test_damaged_faiss_payload_is_refused_when_the_engine_is_made(assets, tmp_path):
    """sample --index checks the FAISS payloads of the schedule's sizes when the engine is made: the one
    line naming the damaged part comes before any progress line, and the library refuses alike."""
    res = invoke("sample", "--index", assets / "idx_faiss.h5", "-s", "3", "-n", "1", "-o", "x.h5", cwd=tmp_path)
    line = assert_one_line_error(res, "sizes/k3/e0/index/0")
    assert [x for x in res.stderr.splitlines() if x.strip()] == [line], res.stderr  # nothing ran before it
    f = IndexFile(assets / "idx_faiss.h5")
    try:
        with pytest.raises(PatchdbError, match="sizes/k3/e0/index/0"):
            make_denoiser("bbels", "3,3", index=f)
        assert f.loads == 0
    finally:
        f.close()
    with IndexFile(assets / "idx.h5") as good:
        make_denoiser("bbels", "3,3", index=good)
        ds = good.h5["sizes/k3/e0/index/0"]
        assert _chunked_digest(ds, chunk_bytes=7) == digest(ds[()]) == ds.attrs["sha256"]


def test_network_trained_on_a_path_dataset_is_checked_by_fingerprint(assets, tmp_path):
    """calibrate/compare of a checkpoint trained on data given by path: the data's fingerprint must be the
    one the checkpoint records (one line naming both otherwise), unless --allow-other-data."""
    g = np.random.default_rng(0)
    for name in ("train", "other"):
        np.savez(tmp_path / f"{name}.npz", images=g.integers(0, 256, (12, 32, 32), dtype=np.uint8),
                 labels=np.arange(12) % 2)
    ck = tmp_path / "ck"
    shutil.copytree(assets / "ck", ck)
    cfg = json.loads((ck / "config.json").read_text())
    trained_on = load_dataset(str(tmp_path / "train.npz"))
    cfg["dataset"] = dict(cfg["dataset"], name=str(tmp_path / "train.npz"), fingerprint=trained_on.fingerprint())
    (ck / "config.json").write_text(json.dumps(cfg))
    other = load_dataset(str(tmp_path / "other.npz")).fingerprint()
    run = ["-c", ck, "-n", "1", "--steps", "2"]
    before = snapshot(tmp_path)
    for cmd, extra in (("calibrate", ["--sizes", "3", "-o", "c.json"]), ("compare", ["-s", "3,3", "-o", "cmp"])):
        res = invoke(cmd, *run, "--dataset", tmp_path / "other.npz", *extra, cwd=tmp_path)
        line = assert_one_line_error(res, "--allow-other-data")
        assert trained_on.fingerprint()[:12] in line and other[:12] in line and "other.npz" in line
    assert snapshot(tmp_path) == before
    ok("calibrate", *run, "--dataset", tmp_path / "train.npz", "--sizes", "3", "-o", "same.json", cwd=tmp_path)
    ok("calibrate", *run, "--dataset", tmp_path / "other.npz", "--sizes", "3", "-o", "allowed.json", "--allow-other-data",
       cwd=tmp_path)
    assert (tmp_path / "same.json").exists() and (tmp_path / "allowed.json").exists()
