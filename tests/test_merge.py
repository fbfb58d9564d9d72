"""``patchdb merge``: two halves of a run split by seed merge into what one run over all seeds gives."""

import json
import math

import torch
from click.testing import CliRunner
from patchdb.cli.main import main

from patchdb.data import Dataset
from patchdb.denoisers.factory import make_denoiser
from patchdb.evaluation.calibrate import calibrate, write_calibration
from patchdb.evaluation.compare import compare, write_report
from patchdb.evaluation.exactcheck import compare_exact_check
from patchdb.evaluation.factories import machine_factory
from patchdb.evaluation.validate import validate_engines
from patchdb.indexing.builder import BuildConfig, build_index_file
from patchdb.indexing.reader import IndexFile
from patchdb.schedule import ScaleSchedule

SHAPE = (1, 8, 8)


def tiny_images(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *SHAPE), generator=g, dtype=torch.uint8)


def close(a, b):
    """Equal JSON values, floats to 1e-12 (sums of the same numbers in another order), NaN equal to NaN."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-12 * max(1.0, abs(a))
    return a == b


def test_merge_compare_halves_equal_one_run(tmp_path):
    images = tiny_images().double() / 127.5 - 1
    net = machine_factory("bbels", images)(ScaleSchedule((3, 5)))
    machines = {"bbels": machine_factory("bbels", images)(ScaleSchedule((3, 3))), "is": machine_factory("is", images)(None)}
    for name, seeds in (("all", [0, 1, 2, 3]), ("a", [0, 1]), ("b", [2, 3])):
        cmp = compare(net, machines, SHAPE, seeds, steps=2, batch_size=2, dtype=torch.float64)
        cmp.settings = {"command": "compare", "machines": list(machines), "seed": seeds[0], "num": len(seeds), "steps": 2}
        write_report(cmp, tmp_path / name)
    res = CliRunner().invoke(main, ["merge", "compare", "--out", str(tmp_path / "m"), str(tmp_path / "a"), str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    one, merged = (json.loads((tmp_path / d / "compare.json").read_text()) for d in ("all", "m"))
    assert merged["settings"].pop("merged_from") == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert close(one, merged)
    assert (tmp_path / "m" / "compare.txt").read_text() == (tmp_path / "all" / "compare.txt").read_text()


def test_merge_refuses_overlapping_seeds_and_other_settings(tmp_path):
    images = tiny_images().double() / 127.5 - 1
    net = machine_factory("bbels", images)(ScaleSchedule((3, 5)))
    machines = {"is": machine_factory("is", images)(None)}
    for name, seeds, steps in (("a", [0, 1], 2), ("b", [1, 2], 2), ("c", [5], 2)):
        cmp = compare(net, machines, SHAPE, seeds, steps=steps, dtype=torch.float64)
        cmp.settings = {"seed": seeds[0], "num": len(seeds), "steps": steps, "dtype": "float64" if name != "c" else "x"}
        write_report(cmp, tmp_path / name)
    runner = CliRunner()
    res = runner.invoke(main, ["merge", "compare", "-o", str(tmp_path / "m"), str(tmp_path / "a"), str(tmp_path / "b")])
    assert res.exit_code == 2 and "more than one part" in res.output
    res = runner.invoke(main, ["merge", "compare", "-o", str(tmp_path / "m"), str(tmp_path / "a"), str(tmp_path / "c")])
    assert res.exit_code == 2 and "differs" in res.output and "dtype" in res.output


def test_merge_calibrate_halves_equal_one_run(tmp_path):
    images = tiny_images().double() / 127.5 - 1
    net = machine_factory("bbels", images)(ScaleSchedule((3, 5, 5)))
    make = machine_factory("bbels", images)
    for name, seeds in (("all", [0, 1, 2]), ("a", [0]), ("b", [1, 2])):
        cal = calibrate(net, make, SHAPE, seeds, (1, 3, 5), steps=3, dtype=torch.float64)
        cal.settings = {"machine": "bbels", "seed": seeds[0], "num": len(seeds), "steps": 3}
        write_calibration(cal, tmp_path / f"{name}.json")
    res = CliRunner().invoke(main, ["merge", "calibrate", "-o", str(tmp_path / "m.json"), str(tmp_path / "a.json"),
                                    str(tmp_path / "b.json")])
    assert res.exit_code == 0, res.output
    one, merged = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("all", "m"))
    assert merged["sizes"] == one["sizes"] and merged["seeds"] == one["seeds"]
    for key in ("sizes", "seeds", "cosine"):
        assert close(one[key], merged[key]), key
    assert (tmp_path / "m.png").exists()


def test_merge_validate_halves_equal_one_run(tmp_path):
    ds = Dataset(tiny_images(10, seed=4), torch.arange(10) // 5, ("0", "1"), "tiny", {"policy": "none"})
    build_index_file(ds, tmp_path / "i.h5", BuildConfig("bbels", (3, 5)), progress=False)
    f = IndexFile(tmp_path / "i.h5")
    approx = make_denoiser("bbels", "3,5", index=f, topk=8, tail_correction=64)
    exact = make_denoiser("bbels", "3,5", index=f, exact=True)
    for name, seeds in (("all", [0, 1, 2, 3]), ("a", [0, 1]), ("b", [2, 3])):
        rep = validate_engines(exact, approx, seeds, SHAPE, 2, batch_size=2)
        rep.update(labels=None, settings={"file": "i.h5", "topk": 8, "batch_size": 2})
        (tmp_path / f"{name}.json").write_text(json.dumps(rep))
    res = CliRunner().invoke(main, ["merge", "validate", "-o", str(tmp_path / "m.json"), str(tmp_path / "a.json"),
                                    str(tmp_path / "b.json")])
    assert res.exit_code == 0, res.output
    one, merged = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("all", "m"))
    timing = ("seconds", "speedup", "seconds_per_sample", "per_batch_approx_seconds")
    assert merged["settings"].pop("merged_from") == [str(tmp_path / "a.json"), str(tmp_path / "b.json")]
    # Per-step seconds: the parts' sums (timings differ from the one run's, so they are compared apart).
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("a", "b"))
    for i, step in enumerate(merged["steps"]):
        assert step["approx_seconds"] == a["steps"][i]["approx_seconds"] + b["steps"][i]["approx_seconds"] > 0
    for rep in (one, merged):
        for step in rep["steps"]:
            step.pop("approx_seconds")
    assert close({k: v for k, v in one.items() if k not in timing}, {k: v for k, v in merged.items() if k not in timing})


def _compare_parts(tmp_path, checks=None):
    """compare outputs over seeds 0-3 (all) and halves a, b; ``checks``: --exact-check N per name."""
    images = tiny_images().double() / 127.5 - 1
    net = machine_factory("bbels", images)(ScaleSchedule((3, 5)))
    machines = {"bbels": machine_factory("bbels", images)(ScaleSchedule((3, 3))), "is": machine_factory("is", images)(None)}
    exact = {"bbels": machine_factory("bbels", images)(ScaleSchedule((5, 3)))}  # stands in for the exact engine
    for name, seeds in (("all", [0, 1, 2, 3]), ("a", [0, 1]), ("b", [2, 3])):
        cmp = compare(net, machines, SHAPE, seeds, steps=2, batch_size=2, dtype=torch.float64)
        n = (checks or {}).get(name, 0)
        cmp.settings = {"command": "compare", "machines": list(machines), "seed": seeds[0], "num": len(seeds), "steps": 2,
                        "exact_check": n}
        if n:
            cmp.exact_check = compare_exact_check(cmp.samples, exact, SHAPE, seeds, n, steps=2, dtype=torch.float64)
        write_report(cmp, tmp_path / name)


def test_merge_follows_the_one_overwrite_rule(tmp_path):
    """merge compare|calibrate|validate: an existing output refused unless --force, a missing parent folder
    refused with a mkdir hint unless --force (issue 29); nothing is written by a refusal."""
    _compare_parts(tmp_path)
    images = tiny_images().double() / 127.5 - 1
    make = machine_factory("bbels", images)
    for name, seeds in (("ca", [0]), ("cb", [1])):
        cal = calibrate(make(ScaleSchedule((3, 3))), make, SHAPE, seeds, (1, 3), steps=2, dtype=torch.float64)
        cal.settings = {"machine": "bbels", "seed": seeds[0], "num": 1, "steps": 2}
        write_calibration(cal, tmp_path / f"{name}.json")
    runner = CliRunner()
    parts = {"compare": [str(tmp_path / "a"), str(tmp_path / "b")],
             "calibrate": [str(tmp_path / "ca.json"), str(tmp_path / "cb.json")],
             "validate": [str(tmp_path / "ca.json")]}  # refused before the parts are read
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "compare.json").write_text("precious")
    (tmp_path / "old.json").write_text("precious")
    for cmd, out in (("compare", "old"), ("calibrate", "old.json"), ("validate", "old.json")):
        res = runner.invoke(main, ["merge", cmd, "-o", str(tmp_path / out), *parts[cmd]])
        assert res.exit_code == 2 and "already exists" in res.output and "--force" in res.output, res.output
        res = runner.invoke(main, ["merge", cmd, "-o", str(tmp_path / "no" / "such" / out), *parts[cmd]])
        assert res.exit_code == 2 and "mkdir -p" in res.output, res.output
        assert not (tmp_path / "no").exists()
    assert (tmp_path / "old.json").read_text() == "precious" and (tmp_path / "old" / "compare.json").read_text() == "precious"
    assert not (tmp_path / "old.png").exists()
    res = runner.invoke(main, ["merge", "compare", "-o", str(tmp_path / "old"), "--force", *parts["compare"]])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "old" / "compare.json").read_text())["seeds"] == [0, 1, 2, 3]
    res = runner.invoke(main, ["merge", "calibrate", "-o", str(tmp_path / "new" / "m.json"), "--force", *parts["calibrate"]])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "new" / "m.json").exists() and (tmp_path / "new" / "m.png").exists()
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob(".*.lock"))


def test_merge_compare_joins_exact_checks_of_other_counts(tmp_path):
    """Parts run with --exact-check 2 and 1 merge (the count changes no per-seed number); the merged check
    holds the parts' checked seeds, equal to one run's --exact-check over those seeds (0, 1, 2)."""
    _compare_parts(tmp_path, {"all": 3, "a": 2, "b": 1})
    res = CliRunner().invoke(main, ["merge", "compare", "--out", str(tmp_path / "m"), str(tmp_path / "a"), str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    one, merged = (json.loads((tmp_path / d / "compare.json").read_text()) for d in ("all", "m"))
    assert merged["exact_check"]["seeds"] == [0, 1, 2]
    assert merged["settings"]["exact_check"] == 3
    merged["settings"].pop("merged_from")
    assert close(one, merged)
    assert "exact check on seeds 0..2 (3)" in (tmp_path / "m" / "compare.txt").read_text()


def test_merge_calibrate_keeps_each_parts_exact_check(tmp_path):
    images = tiny_images().double() / 127.5 - 1
    make = machine_factory("bbels", images)
    for name, seeds, n in (("a", [0], 1), ("b", [1, 2], 0)):
        cal = calibrate(make(ScaleSchedule((3, 3))), make, SHAPE, seeds, (1, 3), steps=2, dtype=torch.float64)
        cal.settings = {"machine": "bbels", "seed": seeds[0], "num": len(seeds), "steps": 2, "exact_check": n}
        if n:
            cal.exact_check = {"seeds": seeds[:n], "r2_approx_vs_exact": {"median": 1.0}}
        write_calibration(cal, tmp_path / f"{name}.json")
    res = CliRunner().invoke(main, ["merge", "calibrate", "-o", str(tmp_path / "m.json"), str(tmp_path / "a.json"),
                                    str(tmp_path / "b.json")])
    assert res.exit_code == 0, res.output
    merged = json.loads((tmp_path / "m.json").read_text())
    assert merged["seeds"] == [0, 1, 2] and merged["settings"]["exact_check"] == 1
    assert merged["exact_check"]["parts"] == [{"seeds": [0], "r2_approx_vs_exact": {"median": 1.0}, "part": str(tmp_path / "a.json")}]
