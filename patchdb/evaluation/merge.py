"""Merging runs split by seed: compare, calibrate and validate outputs over disjoint seeds.

Every per-seed number depends only on that seed's noise (and label), never on the batch it ran in, so
parts over seeds 0-24 and 25-49 put together give what one run over 0-49 gives: the per-seed rows are
joined and every summary is recomputed from them. Parts must agree on every setting except those that
change no number (:data:`FREE`); the merged settings are the parts' own, with the seed range widened and
the parts listed under ``merged_from``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import PatchdbError
from ..store import ExactSamples, atomic_write, check_writable, differing_keys, read_exact_part
from .calibrate import Calibration, merge_calibrations, read_calibration, write_calibration
from .compare import Comparison
from .exactcheck import merge_compare_checks
from .metrics import median

#: Settings that may differ between parts: where they start, how many seeds, how they were batched
#: and run, how long they took, where exact samples were kept (a cache), and on how many of a part's
#: first seeds the exact engine was also run (``--exact-check N``: a diagnostic beside the run that
#: changes none of its per-seed numbers; the merged check joins the parts' checked seeds).
FREE = {"seed", "num", "batch_size", "seconds", "exact_samples", "device", "threads", "merged_from", "exact_check"}


def _check_same(settings: list[dict], names: list[str]) -> None:
    """One line naming the first setting two parts differ in."""
    fixed = [{k: v for k, v in s.items() if k not in FREE} for s in settings]
    for name, other in zip(names[1:], fixed[1:]):
        if other != fixed[0]:
            diff = sorted(k for k in other.keys() | fixed[0].keys() if other.get(k) != fixed[0].get(k))
            raise PatchdbError(f"{name} differs from {names[0]} in {', '.join(diff)}; merge parts of one run only")


def _check_disjoint(seeds: list[int]) -> None:
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise PatchdbError(f"seeds {repeated[:10]} are in more than one part; merge parts over disjoint seeds only")


def _merged_settings(settings: list[dict], seeds: list[int], names: list[str]) -> dict:
    out = dict(settings[0])
    out.update({k: v for k, v in (("seed", min(seeds)), ("num", len(seeds))) if k in out}, merged_from=list(names))
    if all("seconds" in s for s in settings):
        out["seconds"] = sum(float(s["seconds"]) for s in settings)
    return out


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise PatchdbError(f"cannot read {path} ({err.__class__.__name__}); pass files written by patchdb") from None


# --------------------------------------------------------------------------------------------
# compare: folders holding compare.json
# --------------------------------------------------------------------------------------------


def merge_comparisons(folders: list[Path]) -> Comparison:
    """One :class:`Comparison` (without samples) from ``patchdb compare`` output folders over disjoint seeds."""
    missing = [str(f) for f in folders if not (Path(f) / "compare.json").exists()]
    if missing:
        raise PatchdbError(f"no compare.json in {', '.join(missing)}; pass folders written by patchdb compare --out")
    parts = [_read_json(Path(f) / "compare.json") for f in folders]
    names = [str(f) for f in folders]
    _check_same([p["settings"] for p in parts], names)
    seeds = [s for p in parts for s in p["seeds"]]
    _check_disjoint(seeds)
    machines = list(parts[0]["per_seed_r"])
    if any(list(p["per_seed_r"]) != machines for p in parts):
        raise PatchdbError("the parts compare different machines; merge parts of one run only")
    r = {name: torch.tensor([v for p in parts for v in p["per_seed_r"][name]], dtype=torch.float64) for name in machines}
    has_labels = [p.get("labels") is not None for p in parts]
    if any(has_labels) and not all(has_labels):
        raise PatchdbError("some parts are class-conditional and some not; merge parts of one run only")
    labels = torch.tensor([v for p in parts for v in p["labels"]]) if all(has_labels) else None
    settings = _merged_settings([p["settings"] for p in parts], seeds, names)
    check = merge_compare_checks([p.get("exact_check") for p in parts])
    if "exact_check" in settings:
        settings["exact_check"] = 0 if check is None else len(check["seeds"])
    return Comparison(seeds, labels, {}, r, settings, exact_check=check)


# --------------------------------------------------------------------------------------------
# calibrate: calibration JSON files
# --------------------------------------------------------------------------------------------


def merge_calibration_files(paths: list[Path], criterion: str | None = None) -> Calibration:
    """One calibration from ``patchdb calibrate`` JSON files (more seeds, or more sizes: see
    :func:`patchdb.evaluation.calibrate.merge_calibrations`)."""
    raw = [_read_json(p) for p in paths]
    cals = [read_calibration(data, str(p)) for data, p in zip(raw, paths)]
    merged = merge_calibrations(cals, criterion)
    merged.settings["merged_from"] = [str(p) for p in paths]
    # --exact-check may differ between parts: its summaries cannot be joined, so each part's is kept
    checks = [dict(data["exact_check"], part=str(p)) for data, p in zip(raw, paths) if data.get("exact_check")]
    if "exact_check" in merged.settings or checks:
        merged.settings["exact_check"] = sum(len(c["seeds"]) for c in checks)
    merged.exact_check = {"parts": checks} if checks else None
    return merged


def write_merged_calibration(cal: Calibration, path: Path) -> tuple[Path, Path]:
    return write_calibration(cal, path)


# --------------------------------------------------------------------------------------------
# validate: JSON of patchdb validate --json-out
# --------------------------------------------------------------------------------------------


def merge_validations(paths: list[Path]) -> dict:
    """One ``patchdb validate`` report from parts over disjoint seeds: per-seed r^2 and per-step
    differences joined, summaries recomputed; the per-batch bounds are joined over the parts' batches
    (a one-run report batches alike when the parts start at multiples of its batch size)."""
    parts = [_read_json(p) for p in paths]
    names = [str(p) for p in paths]
    for name, part in zip(names, parts):
        if "per_seed_max_abs_diff" not in part:
            raise PatchdbError(f"{name} has no per-seed rows (written before patchdb merge); rerun patchdb validate")
    _check_same([p["settings"] for p in parts], names)
    seeds = [s for p in parts for s in p["seeds"]]
    _check_disjoint(seeds)
    r2 = torch.tensor([v for p in parts for v in p["r2"]], dtype=torch.float64)
    diff = torch.tensor([row for p in parts for row in p["per_seed_max_abs_diff"]], dtype=torch.float64).T  # (S, seeds)
    bounds = torch.tensor([row for p in parts for row in p["per_batch_bound_max"]], dtype=torch.float64)  # (batches, S)
    tails = torch.tensor([row for p in parts for row in p["per_batch_tail_median"]], dtype=torch.float64)
    steps = [dict(step, max_abs_diff_median=median(diff[i]), max_abs_diff_max=float(diff[i].max()),
                  bound_max_median=median(bounds[:, i]), tail_share_median=median(tails[:, i]))
             for i, step in enumerate(parts[0]["steps"])]
    timed = all("per_batch_approx_seconds" in p for p in parts)  # older parts have no per-step seconds
    step_seconds = [row for p in parts for row in p["per_batch_approx_seconds"]] if timed else None
    for i, step in enumerate(steps):
        step.pop("approx_seconds", None)
        if timed:
            step["approx_seconds"] = sum(row[i] for row in step_seconds)
    seconds = {k: sum(p["seconds"][k] for p in parts) for k in ("exact", "approx")}
    labels = [v for p in parts for v in (p.get("labels") or [None] * len(p["seeds"]))]
    settings = _merged_settings([p["settings"] for p in parts], seeds, names)
    return {
        "seeds": seeds, "r2": r2.tolist(), "r2_median": median(r2), "r2_min": float(r2.min()), "steps": steps,
        "seconds": seconds, "speedup": seconds["exact"] / max(seconds["approx"], 1e-9),
        "seconds_per_sample": {k: v / len(seeds) for k, v in seconds.items()},
        "exact_reused": sum(int(p.get("exact_reused", 0)) for p in parts),
        "per_seed_max_abs_diff": diff.T.tolist(), "per_batch_bound_max": bounds.tolist(),
        "per_batch_tail_median": tails.tolist(), **({"per_batch_approx_seconds": step_seconds} if timed else {}),
        "labels": None if all(v is None for v in labels) else labels, "settings": settings,
    }


def write_merged_validation(report: dict, path: Path) -> Path:
    with atomic_write(path) as tmp, open(tmp, "w") as fh:
        json.dump(report, fh, indent=2)
    return Path(path)


def merge_exact_samples(paths: list[Path], out: Path) -> tuple[ExactSamples, list[str]]:
    """Put exact samples from several files into one exact-samples file ``out`` (what ``patchdb validate
    --exact-samples`` reads): exact-samples files, and sample files of the exact engine with their
    trajectories (:func:`patchdb.store.read_exact_part`). Every part must hold samples for the same key
    (dataset fingerprint, machine, schedule, dtype, device, shape). A (seed, label) held by two parts is
    taken once when both hold the same arrays and refused otherwise. Returns the written file and notes."""
    parts = [(Path(p), *read_exact_part(p)) for p in paths]
    first, key, _ = parts[0]
    merged: dict = {}
    origin: dict = {}
    notes = []
    for path, other, entries in parts:
        if other != key:
            raise PatchdbError(f"{path} holds exact samples for other settings than {first} "
                               f"({', '.join(differing_keys(other, key))} differ); merge samples of one dataset, "
                               "machine, schedule, dtype and device only")
        for k, (traj, sample, sec) in entries.items():
            if k in merged:
                if not (torch.equal(merged[k][0], traj) and torch.equal(merged[k][1], sample)):
                    raise PatchdbError(f"seed {k[0]} (label {k[1]}) is in {origin[k]} and {path} with different values; "
                                       "leave one of them out")
                notes.append(f"seed {k[0]} (label {k[1]}) is in {origin[k]} and {path}: taken once")
                continue
            merged[k], origin[k] = (traj, sample, sec), path
    cache = ExactSamples.holding(check_writable(out), key, merged)
    cache.save()
    return cache, notes
