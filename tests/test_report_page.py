"""``patchdb report RUN --attribution N`` (issue 30): the attribution page of a run folder, and run folders
that record absolute paths (so ``report`` works from any working directory).

The page's data are checked against ``patchdb attribute`` run on a one-file sample of the same seeds and
settings (same images, window positions and weights to 1e-6), for the exact and the approximate engine;
one test opens the page in headless Chromium (skipped without it, as tests/test_attribution_page.py).
Tiny 16x16 digits and 3 steps, so each run takes seconds.
"""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path

import numpy as np
from test_attribution_page import browser, check_listed, hover, open_page, pick_sample  # noqa: F401 (browser: a fixture)
from test_runs import ok, run, tiny  # noqa: F401 (tiny: a fixture; the same data as the run tests)

from patchdb.attribute import read_attribution
from patchdb.attribution_page import WEIGHT_BITS, unshuffle_bytes
from patchdb.runs import open_run
from patchdb.runs.spec import absolute_source, relative_paths


def refused(args, needle: str):
    res = run(args)
    assert res.exit_code == 2, res.output
    assert needle in res.output and res.output.count("\n") == 1, res.output
    return res


def page_json(path: Path) -> dict:
    text = path.read_text()
    return json.loads(text[text.index('type="application/json">') + 24:text.index("</script>")])


def page_sources(data: dict, b: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidate ids (S, P, m) and weights of sample ``b`` decoded from the page (as its JavaScript does)."""
    s, p, m, c = data["S"], data["H"] * data["W"], data["m"], data["C"]
    raw = gzip.decompress(base64.b64decode(data["samples"][b]["blob"]))
    n, at = s * p * m, s * c * p * (2 if data["has_inputs"] else 1)
    image = unshuffle_bytes(raw[at:at + 4 * n], np.int32, n).reshape(s, p, m)
    offset = unshuffle_bytes(raw[at + 4 * n:at + 6 * n], np.uint16, n).reshape(s, p, m)
    fixed = unshuffle_bytes(raw[at + 6 * n:at + 10 * n], np.uint32, n).reshape(s, p, m)
    ids = np.where(image >= 0, image * p + (np.arange(p)[None, :, None] + offset) % p, -1)
    return ids, fixed / 2.0**WEIGHT_BITS


def check_page_is_attribute(page: Path, seeds: list[int], reference: Path, rows_of_seed: dict) -> None:
    """The page lists, per sample, the sources and weights ``patchdb attribute`` stored for that seed."""
    data = page_json(page)
    ref = read_attribution(reference)
    assert data["B"] == len(seeds)
    for b, seed in enumerate(seeds):
        r = list(ref.sample_index).index(rows_of_seed[seed])
        ids, weights = page_sources(data, b)
        assert np.array_equal(ids, ref.ids[r])
        assert np.abs(weights - ref.weights[r]).max() <= 1e-6


# -- the page of a run folder -------------------------------------------------------------------------

SAMPLE = ["-m", "bbels", "-s", "3,3,5", "-b", "2"]


def test_exact_run_page_agrees_with_attribute(tiny, tmp_path):
    data = ["--dataset", tiny, "--policy", "none"]
    ok(["sample", *data, *SAMPLE, "--seeds", "0-5", "--out", tmp_path / "run"])
    res = ok(["report", tmp_path / "run", "--attribution", 2])
    folder = tmp_path / "run" / "report"
    assert "attribution.html" in res.output and "exact engine" in res.output
    rep = json.loads((folder / "report.json").read_text())
    info = rep["attribution"]
    # extremes: the least and the most novel sample by nearest distance d1
    d1 = {p["seed"]: p["d1"] for p in rep["per_sample"]}
    assert info["seeds"] == [min(d1, key=d1.get), max(d1, key=d1.get)]
    assert info["engine"] == "exact" and info["page_bytes"] == (folder / "attribution.html").stat().st_size
    assert "href='attribution.html'" in (folder / "index.html").read_text()
    # patchdb attribute on a one-file sample of the same seeds and settings gives the same sources
    ok(["sample", *data, *SAMPLE, "--num", 6, "--out", tmp_path / "one.h5"])
    rows = ",".join(str(s) for s in info["seeds"])
    ok(["attribute", tmp_path / "one.h5", "--samples", rows, "--out", tmp_path / "one.attrib.h5"])
    check_page_is_attribute(folder / "attribution.html", info["seeds"], tmp_path / "one.attrib.h5",
                            {s: s for s in range(6)})
    # the report's own sample file is one patchdb attribute reads as it is
    ok(["attribute", folder / "attribution-samples.h5", "--out", tmp_path / "again.attrib.h5"])
    check_page_is_attribute(folder / "attribution.html", info["seeds"], tmp_path / "again.attrib.h5",
                            {s: j for j, s in enumerate(info["seeds"])})
    # a one-file sample set (the same bits: full batches) is attributed in place, the same samples picked
    ok(["report", tmp_path / "one.h5", "--attribution", 2])
    one = json.loads((tmp_path / "one.report" / "report.json").read_text())["attribution"]
    assert one["samples_file"] is None and one["seeds"] == info["seeds"]
    check_page_is_attribute(tmp_path / "one.report" / "attribution.html", info["seeds"], tmp_path / "one.attrib.h5",
                            {s: s for s in range(6)})
    ok(["report", tmp_path / "run", "--attribution", 1, "--attribution-pick", "first", "--force"])
    assert json.loads((folder / "report.json").read_text())["attribution"]["seeds"] == [0]


def test_approximate_run_page_agrees_with_attribute(tmp_path):
    ok(["build", "--limit", "12", "--scales", "3,5", "--recall-k", "8", "--out", tmp_path / "i.h5"])
    knobs = ["--index", tmp_path / "i.h5", "-s", "3,5", "-b", "2", "--topk", "16", "--k-factor", "2"]
    ok(["sample", *knobs, "--seeds", "0-3", "--out", tmp_path / "run"])
    res = ok(["report", tmp_path / "run", "--attribution", 3])
    assert "approx engine" in res.output
    info = json.loads((tmp_path / "run" / "report" / "report.json").read_text())["attribution"]
    assert info["engine"] == "approx" and info["retrieval"]["topk"] == 16 and info["retrieval"]["k_factor"] == 2
    ok(["sample", *knobs, "--num", 4, "--out", tmp_path / "one.h5"])
    ok(["attribute", tmp_path / "one.h5", "--out", tmp_path / "one.attrib.h5"])
    check_page_is_attribute(tmp_path / "run" / "report" / "attribution.html", info["seeds"],
                            tmp_path / "one.attrib.h5", {s: s for s in range(4)})


def test_bad_attribution_requests_are_one_line(tiny, tmp_path):
    folder = tmp_path / "run"
    ok(["sample", "--dataset", tiny, "--policy", "none", *SAMPLE, "--seeds", "0-3", "--out", folder])
    refused(["report", folder, "--attribution", 5], "--attribution 5 asks for more samples than the 4")
    assert not (folder / "report").exists()  # refused before any work or output
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["run_spec"]  # a folder of an older patchdb
    (folder / "manifest.json").write_text(json.dumps(manifest))
    refused(["report", folder, "--attribution", 2], "records no run_spec")


# -- absolute paths in the run folder ---------------------------------------------------------------

def test_relative_paths_are_recorded_absolute_and_the_run_resumes(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny.parent)
    cmd = ["sample", "--dataset", tiny.name, "--policy", "none", *SAMPLE, "--seeds", "0-3", "--shard-size", 2]
    ok([*cmd, "--out", tmp_path / "run"])
    source = json.loads((tmp_path / "run" / "manifest.json").read_text())["run_spec"]["source"]
    assert source["dataset"] == str(tiny) and source["given"] == {"dataset": tiny.name}
    (tmp_path / "run" / "shards" / "shard-000001.h5").unlink()
    res = ok([*cmd, "--out", tmp_path / "run"])  # the same command from the same place resumes the run
    assert "2 computed now" in res.output and "1 shards already done" in res.output
    monkeypatch.chdir(tmp_path)
    ok(["report", "run", "--attribution", 1])  # from another working directory
    # a folder written before paths were recorded absolute: one line naming the fix
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    manifest["run_spec"]["source"]["dataset"] = tiny.name
    (tmp_path / "run" / "manifest.json").write_text(json.dumps(manifest))
    refused(["report", "run", "--force"], f"records --dataset {tiny.name} relative to the folder it was started in")
    monkeypatch.chdir(tiny.parent)
    ok(["report", tmp_path / "run", "--force"])
    assert len(open_run(tmp_path / "run")) == 4


def test_absolute_source(tmp_path):
    named = {"kind": "dataset", "dataset": "mnist", "root": "data/mnist", "policy": "resize"}
    got = absolute_source(named, tmp_path)
    assert got["root"] == str(tmp_path / "data" / "mnist") and got["dataset"] == "mnist"
    assert got["given"] == {"root": "data/mnist"} and relative_paths(named) == ["--root data/mnist"]
    assert absolute_source(got, "/elsewhere") == got and relative_paths(got) == []
    index = absolute_source({"kind": "index", "path": "../i.h5", "exact": False}, tmp_path)
    assert index["path"] == str(tmp_path.parent / "i.h5")
    assert absolute_source({"kind": "dataset", "dataset": "embedded", "root": None}, tmp_path) == {
        "kind": "dataset", "dataset": "embedded", "root": None}


# -- in the browser ---------------------------------------------------------------------------------

def test_report_page_in_the_browser(browser, tiny, tmp_path):  # noqa: F811 (the imported fixture)
    folder = tmp_path / "run"
    ok(["sample", "--dataset", tiny, "--policy", "none", *SAMPLE, "--seeds", "0-3", "--out", folder])
    ok(["report", folder, "--attribution", 2])
    attr = read_attribution(folder / "report" / "attribution.attrib.h5")
    # the report's index.html links to the page; follow the link as a person would
    browser.get((folder / "report" / "index.html").resolve().as_uri())
    link = browser.find_element("id", "attribution")
    assert link.get_attribute("href") == (folder / "report" / "attribution.html").resolve().as_uri()
    seconds = open_page(browser, folder / "report" / "attribution.html")
    print(f"\nreport attribution page: {(folder / 'report' / 'attribution.html').stat().st_size / 1e6:.3f} MB, "
          f"opened in {seconds:.2f} s")
    assert browser.execute_script("return patchdbPage.data.B") == 2
    _h, w = attr.shape[1:]
    row = attr.step_row(1)
    p = int(np.argmax(attr.weights[1, row, :, 0]))
    pick_sample(browser, 1)
    hover(browser, p // w, p % w, w)
    check_listed(browser, attr, 1, row, p)
