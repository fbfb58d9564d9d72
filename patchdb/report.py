"""``patchdb report``: what a sample set is, next to its training set.

For every sample: the nearest training image (exact L2 over all pixels and channels in [-1, 1], by
brute force in blocks) and the second nearest. A sample is a *near-copy* when
``d1 / d2 < 1/3``: its nearest training image is three times closer than any other, the distance-ratio
test of the memorisation literature (Carlini et al. 2023, "Extracting training data from diffusion
models", compare the nearest distance with the mean over the 50 nearest and threshold at 1/3; the
second nearest used here is never farther than that mean, so this test flags no more samples than
theirs). Diversity is the mean pairwise L2 distance between samples, beside the same for as many
training images. Class balance: the sample labels when conditional and, always, the class of each
sample's nearest training image.
"""

from __future__ import annotations

import html
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import PatchdbError
from .store import atomic_write, claimed

NEAR_COPY_RATIO = 1.0 / 3.0
CRITERION = ("near-copy: d1 / d2 < 1/3, d1 and d2 the L2 distances (pixels in [-1, 1], all channels) to the "
             "nearest and second-nearest training image (distance-ratio test as in Carlini et al. 2023)")
#: Samples (and training images) used for the mean pairwise distance.
DIVERSITY_SAMPLES = 1000
#: Training rows per block of the brute-force search (bounds memory: block x samples floats).
BLOCK_ROWS = 4096
#: How ``--attribution N`` picks its samples: ``extremes``, the ceil(N/2) least and floor(N/2) most novel
#: by nearest distance d1 (the two rows of report.png), or ``first``, the first N of the run's seeds.
ATTRIBUTION_PICKS = ("extremes", "first")
#: Names of the attribution outputs inside the report folder.
ATTRIBUTION_PAGE = "attribution.html"
ATTRIBUTION_SAMPLES = "attribution-samples.h5"
ATTRIBUTION_FILE = "attribution.attrib.h5"


@dataclass
class Training:
    images: torch.Tensor  # (M, C, H, W) float32 in [-1, 1]
    labels: torch.Tensor | None  # (M,)
    describe: str


def training_of_run(manifest: dict) -> Training:
    """The training set a run folder's samples were made from (its dataset, or the images of its index file),
    checked against the dataset fingerprint the run records."""
    from .runs.spec import load_source_dataset

    source = source_of_run(manifest)
    if source["kind"] == "index":
        training = training_of_index(source["path"])
    else:
        data = load_source_dataset(source)
        want = (manifest.get("settings") or {}).get("dataset_fingerprint")
        if want and data.fingerprint() != want:
            raise PatchdbError(f"{data.name} ({len(data)} images) is not the training set the run was drawn from "
                               f"(fingerprint {data.fingerprint()[:12]}, the run records {want[:12]}); "
                               "pass the same --dataset/--root/--limit")
        training = Training(data.to_float(torch.float32), data.labels, f"{len(data)} images of {data.name}")
    return training


def source_of_run(manifest: dict) -> dict:
    """The run's ``run_spec.source``; a relative path that does not reach its file from here (folders
    written before paths were recorded absolute) is one line naming the fix."""
    from .runs.spec import relative_paths

    source = (manifest.get("run_spec") or {}).get("source")
    if source is None:
        raise PatchdbError("this sample set does not record its training data; pass --index FILE or --dataset NAME")
    missing = [p for p in relative_paths(source) if not Path(p.split(" ", 1)[1]).expanduser().exists()]
    if missing:
        raise PatchdbError(f"the run records {', '.join(missing)} relative to the folder it was started in, not "
                           f"found from {Path.cwd()}; run patchdb report from that folder, or pass the training set "
                           "(--dataset/--root or --index)")
    return source


def training_of_index(path: str | os.PathLike) -> Training:
    from .indexing.reader import open_index

    with open_index(path) as f:
        images = f.images().float().div_(127.5).sub_(1.0)
        return Training(images, f.labels(), f"{len(images)} images stored in {path}")


def nearest_two(samples: torch.Tensor, train: torch.Tensor, block: int = BLOCK_ROWS, shortlist: int = 8):
    """Exact two nearest training rows of every sample row: (ids (N, 2) int64, distances (N, 2) float64).

    Candidates are ranked block by block with float32 products (the faiss contrib habit: one running
    shortlist folded over database blocks), then the shortlist's distances are recomputed in float64."""
    n = samples.shape[0]
    q = samples.reshape(n, -1).float()
    qn = (q * q).sum(1, keepdim=True)
    best_d = torch.full((n, 0), float("inf"))
    best_i = torch.zeros((n, 0), dtype=torch.long)
    for start in range(0, train.shape[0], block):
        t = train[start : start + block].reshape(-1, q.shape[1]).float()
        d = qn - 2 * q @ t.T + (t * t).sum(1)[None]
        cand_d = torch.cat([best_d, d], 1)
        cand_i = torch.cat([best_i, torch.arange(start, start + t.shape[0]).expand(n, -1)], 1)
        keep = min(shortlist, cand_d.shape[1])
        best_d, pos = cand_d.topk(keep, dim=1, largest=False)
        best_i = cand_i.gather(1, pos)
    if best_i.shape[1] < 2:
        raise PatchdbError("the near-copy test needs at least two training images")
    exact = ((q.double()[:, None] - train.reshape(train.shape[0], -1)[best_i].double()) ** 2).sum(-1).sqrt()
    order = exact.argsort(1)[:, :2]
    return best_i.gather(1, order), exact.gather(1, order)


def mean_pairwise(x: torch.Tensor, most: int = DIVERSITY_SAMPLES) -> tuple[float, int]:
    """Mean L2 distance over all pairs of (at most ``most``, evenly spaced) rows of ``x``."""
    rows = torch.linspace(0, x.shape[0] - 1, min(most, x.shape[0])).round().long().unique()
    v = x[rows].reshape(len(rows), -1).double()
    if len(rows) < 2:
        return float("nan"), len(rows)
    d = torch.cdist(v, v)
    return float(d.sum() / (len(rows) * (len(rows) - 1))), len(rows)


def _counts(labels) -> dict:
    vals, counts = np.unique(np.asarray(labels), return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(vals, counts)}


def _quantiles(v: np.ndarray) -> dict:
    q = {"min": 0.0, "p05": 0.05, "median": 0.5, "p95": 0.95, "max": 1.0}
    return {name: float(np.quantile(v, p)) for name, p in q.items()} | {"mean": float(v.mean())}


def report(samples: np.ndarray, seeds: np.ndarray, labels: np.ndarray | None, training: Training,
           source: str = "", block: int = BLOCK_ROWS) -> dict:
    """The report's numbers (JSON-able), with per-sample rows."""
    x = torch.from_numpy(np.ascontiguousarray(samples)).float()
    if x.shape[1:] != training.images.shape[1:]:
        raise PatchdbError(f"samples are {tuple(x.shape[1:])} but the training images {tuple(training.images.shape[1:])}; "
                           "pass the training set the samples were made from")
    ids, dist = nearest_two(x, training.images, block)
    d1, d2 = dist[:, 0].numpy(), dist[:, 1].numpy()
    ratio = np.where(d2 > 0, d1 / np.maximum(d2, 1e-300), 1.0)
    copy = ratio < NEAR_COPY_RATIO
    dim = int(np.prod(x.shape[1:]))
    div_s, n_s = mean_pairwise(x)
    div_t, n_t = mean_pairwise(training.images, n_s)
    nn_class = None if training.labels is None else training.labels[ids[:, 0]].numpy()
    classes = {"conditional": labels is not None}
    if labels is not None:
        classes["sample_labels"] = _counts(labels)
    if nn_class is not None:
        classes["nearest_training_class"] = _counts(nn_class)
        if labels is not None:
            classes["nearest_class_is_label_share"] = float((nn_class == np.asarray(labels)).mean())
    per = [{"seed": int(s), "label": None if labels is None else int(labels[j]), "nearest": int(ids[j, 0]),
            "d1": float(d1[j]), "d2": float(d2[j]), "ratio": float(ratio[j]), "near_copy": bool(copy[j]),
            "nearest_class": None if nn_class is None else int(nn_class[j])} for j, s in enumerate(seeds)]
    return {
        "source": source, "samples": len(seeds), "training": training.describe,
        "distance": f"L2 over all {dim} pixel values in [-1, 1]; rms per value = L2 / sqrt({dim})",
        "nearest_distance": _quantiles(d1), "nearest_rms": _quantiles(d1 / np.sqrt(dim)),
        "ratio": _quantiles(ratio),
        "near_copy": {"criterion": CRITERION, "threshold": NEAR_COPY_RATIO, "count": int(copy.sum()),
                      "share": float(copy.mean())},
        "diversity": {"mean_pairwise_l2": div_s, "samples_used": n_s, "training_mean_pairwise_l2": div_t,
                      "training_used": n_t, "ratio_to_training": div_s / div_t if div_t else float("nan")},
        "classes": classes, "per_sample": per,
    }


def picture(samples: np.ndarray, result: dict, training: Training, count: int = 8) -> bytes:
    """A PNG page: histograms of d1 and d1/d2, and the least and most novel samples above their nearest
    training images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = result["per_sample"]
    d1 = np.array([p["d1"] for p in per])
    ratio = np.array([p["ratio"] for p in per])
    order = np.argsort(d1)
    least, most = order[:count], order[::-1][:count]
    fig = plt.figure(figsize=(12, 9))
    ax = fig.add_subplot(3, 2, 1)
    ax.hist(d1, bins=40, color="tab:blue")
    ax.set(title="nearest training image: L2 distance d1", xlabel="d1", ylabel="samples")
    ax = fig.add_subplot(3, 2, 2)
    ax.hist(ratio, bins=np.linspace(0, 1, 41), color="tab:orange")
    ax.axvline(NEAR_COPY_RATIO, color="k", ls="--")
    nc = result["near_copy"]
    ax.set(title=f"d1/d2 (near-copy < 1/3: {nc['count']} of {result['samples']}, {nc['share']:.1%})", xlabel="d1/d2")
    for row, (rows, name) in enumerate(((least, "least novel"), (most, "most novel"))):
        ax = fig.add_subplot(3, 1, row + 2)
        pair = torch.cat([torch.from_numpy(samples[rows]).float(), training.images[[per[j]["nearest"] for j in rows]]])
        from .plots import grid_array

        ax.imshow(grid_array(pair, ncol=len(rows)))
        ax.set_axis_off()
        seeds = ", ".join(str(per[j]["seed"]) for j in rows)
        ax.set_title(f"{name} (top: samples, seeds {seeds}; bottom: nearest training images)")
    fig.suptitle(f"{result['source']}: {result['samples']} samples vs {result['training']}; diversity "
                 f"{result['diversity']['mean_pairwise_l2']:.2f} (training {result['diversity']['training_mean_pairwise_l2']:.2f})")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def page(result: dict) -> str:
    """A small HTML page around ``report.png`` with the summary numbers (and a link to the attribution page)."""
    rows = [("samples", result["samples"]), ("training", result["training"]),
            ("near-copy share", f"{result['near_copy']['share']:.3f} ({result['near_copy']['count']})"),
            ("criterion", result["near_copy"]["criterion"]),
            ("median nearest distance", f"{result['nearest_distance']['median']:.3f}"),
            ("median d1/d2", f"{result['ratio']['median']:.3f}"),
            ("diversity (mean pairwise L2)", (f"{result['diversity']['mean_pairwise_l2']:.3f} "
                                             f"(training: {result['diversity']['training_mean_pairwise_l2']:.3f})")),
            ("classes", json.dumps(result["classes"]))]
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return (f"<!doctype html><meta charset='utf-8'><title>patchdb report</title><h1>{html.escape(result['source'])}</h1>"
            f"<table>{body}</table>{_attribution_section(result.get('attribution'))}"
            f"<p><img src='report.png' alt='report'></p><p>Numbers: report.json</p>\n")


def _attribution_section(info: dict | None) -> str:
    if not info:
        return ""
    rows = "".join(
        f"<tr><td>{r['seed']}</td><td>{'' if r['d1'] is None else format(r['d1'], '.3f')}</td><td>{r['distinct_images']}</td><td>{r['dominant_share']:.2f}</td>"
        f"<td>#{r['top_source']}</td></tr>" for r in info["per_sample"])
    why = {"extremes": "the least and the most novel samples (nearest distance d1)",
           "first": "the first samples of the run"}[info["pick"]]
    return (f"<h2>Where the samples came from</h2><p><a id='attribution' href='{ATTRIBUTION_PAGE}'>Attribution page</a> "
            f"of {len(info['per_sample'])} samples, {html.escape(why)}: per pixel and step, the training patches that "
            f"made it ({html.escape(info['engine'])} engine, as the run). Files: {html.escape(info['attribution_file'])}"
            f"{', ' + html.escape(info['samples_file']) if info.get('samples_file') else ''}.</p>"
            "<table><tr><th>seed</th><th>d1</th><th>distinct source images</th><th>dominant share</th>"
            f"<th>top source</th></tr>{rows}</table>")


def pick_samples(result: dict, count: int, pick: str = "extremes") -> list[int]:
    """Rows of the sample set that ``--attribution count`` attributes (see :data:`ATTRIBUTION_PICKS`)."""
    n = int(result["samples"])
    if pick not in ATTRIBUTION_PICKS:
        raise PatchdbError(f"--attribution-pick {pick!r} is not one of {', '.join(ATTRIBUTION_PICKS)}")
    check_attribution_count(count, n, result["source"])
    if pick == "first":
        return list(range(count))
    order = [int(r) for r in np.argsort([p["d1"] for p in result["per_sample"]], kind="stable")]
    least = order[: (count + 1) // 2]
    return least + [r for r in reversed(order) if r not in least][: count // 2]


def check_attribution_count(count: int, n: int, source) -> None:
    """``--attribution count`` of a set of ``n`` samples: at least 1, at most ``n`` (one line if not)."""
    if count < 1:
        raise PatchdbError(f"--attribution {count}: give a number of samples, at least 1 (0 writes no page)")
    if count > n:
        raise PatchdbError(f"--attribution {count} asks for more samples than the {n} of {source}; pass at most {n}")


def check_attributable(manifest: dict, folder: str | os.PathLike) -> dict:
    """The run's source if its manifest holds what attribution needs (one line naming the fix if not)."""
    spec, settings = manifest.get("run_spec"), manifest.get("settings")
    if not spec or not settings or "source" not in spec:
        raise PatchdbError(f"{folder} records no run_spec in its manifest.json (an older run folder), so its engine "
                           "cannot be rebuilt; rerun the patchdb sample command into a new folder to attribute it")
    return source_of_run(manifest)


def run_sample_metadata(manifest: dict, folder: str | os.PathLike) -> dict:
    """The metadata ``patchdb sample --out X.h5`` records for one file (cli/sample.py), built from a run
    folder's manifest (its ``run_spec`` and settings), so that ``patchdb attribute`` reads the run's samples
    with the run's training set, engine and retrieval settings."""
    from .runs.spec import load_source_dataset

    source = check_attributable(manifest, folder)
    spec, settings = manifest["run_spec"], manifest["settings"]
    meta = {
        "command": "sample", "from_run": str(folder), "run_settings_id": manifest.get("settings_id"),
        "engine": settings["engine"], "machine": settings["machine"], "schedule": settings["schedule"],
        "schedule_name": settings["schedule_name"], "steps": settings["steps"], "batch_size": spec["batch_size"],
        "label": spec.get("label"), "dtype": spec["dtype"], "dataset_name": settings["dataset_name"],
        "fingerprint": settings["dataset_fingerprint"],
    }
    if source["kind"] == "dataset":
        data = load_source_dataset(source)
        meta.update(device=spec["device"], block_mb=spec["block_mb"], dataset=data.meta, dataset_name=data.name)
    else:
        meta["index"] = source["path"]
        if settings["engine"] == "approx":
            meta.update({**spec["retrieval"], "retrieval": dict(spec["retrieval"])})
        else:
            meta.update(device=spec["device"], block_mb=spec["block_mb"])
    return meta


def attribute_samples(got, path: str | os.PathLike, rows: list[int], out: str | os.PathLike, pick: str = "extremes",
                      mass: float = 0.9, max_contrib: int = 8, progress: bool = False, result: dict | None = None) -> dict:
    """Attribute the samples ``rows`` of ``got`` (a :class:`patchdb.runs.folder.RunSet` read from ``path``,
    a run folder or a sample file) as ``patchdb attribute`` does, and write the interactive page.

    A run folder's samples first go to ``out/attribution-samples.h5``, a sample file with the metadata the
    one-file ``patchdb sample`` records (:func:`run_sample_metadata`); a sample file is attributed in place.
    Same engine, training set and retrieval settings as the samples were drawn with, and attribute's
    check that the recomputed path reaches the stored samples. Writes ``out/attribution.attrib.h5`` and
    ``out/attribution.html``; returns what the report records about them (with ``result``, the report's
    numbers, each sample's nearest distance d1 too).
    """
    from .attribute import attribute_file, summarize, training_set_of
    from .attribution_page import write_samples_page
    from .store import read_samples, write_samples

    start = time.perf_counter()
    out, path = Path(out), Path(path)
    if path.is_dir():
        meta = run_sample_metadata(got.metadata, path)
        samples_file, ids = out / ATTRIBUTION_SAMPLES, None
        labels = None if got.labels is None else torch.from_numpy(np.asarray(got.labels)[rows])
        write_samples(samples_file, torch.from_numpy(np.asarray(got.samples)[rows]), [int(got.seeds[r]) for r in rows],
                      labels, meta["schedule"], meta)
    else:
        samples_file, ids = path, rows
    attr, _ = attribute_file(samples_file, out / ATTRIBUTION_FILE, mass, max_contrib, ids, progress=progress)
    stored = read_samples(samples_file)
    train = training_set_of(stored["metadata"])
    seeds = [int(got.seeds[r]) for r in rows]  # the page numbers its samples 0..N-1: the title names their seeds
    title = f"Where {len(rows)} samples of {path.name} came from (seeds {', '.join(map(str, seeds))})"
    page_path = write_samples_page(out / ATTRIBUTION_PAGE, attr, train, stored, force=True, title=title)
    summary = summarize(attr, train.to_float(), train.labels)
    d1 = [None if result is None else result["per_sample"][r]["d1"] for r in rows]
    return {
        "page": ATTRIBUTION_PAGE, "pick": pick, "rows": [int(r) for r in rows],
        "seeds": seeds, "engine": attr.meta["engine"], "index": attr.meta["index"],
        "retrieval": attr.meta["retrieval"], "mass": float(mass), "max_contrib": int(max_contrib),
        "samples_file": ATTRIBUTION_SAMPLES if path.is_dir() else None, "attribution_file": ATTRIBUTION_FILE,
        "max_d_diff": attr.meta["max_d_diff"], "page_bytes": page_path.stat().st_size,
        "seconds": time.perf_counter() - start,
        "per_sample": [{"row": int(r), "seed": int(got.seeds[r]), "d1": d, "distinct_images": s["distinct_images"],
                        "dominant_share": s["dominant_share"], "top_source": s["top_source"]}
                       for r, d, s in zip(rows, d1, summary)],
    }


def write_report(result: dict, png: bytes, out: str | os.PathLike, force: bool = False, attribution=None) -> Path:
    """``out/report.json``, ``out/report.png`` and ``out/index.html``, each written atomically.

    ``attribution``, when given, is called with the report folder once it exists (e.g. a closure over
    :func:`attribute_samples`); what it returns is recorded as ``result["attribution"]`` and linked from
    index.html."""
    with claimed(out, force, folder=True) as out:  # the one overwrite rule (store.claim_output)
        out.mkdir(exist_ok=True)
        if attribution is not None:
            result["attribution"] = attribution(out)
        with atomic_write(out / "report.json") as tmp:
            tmp.write_text(json.dumps(result, indent=1))
        with atomic_write(out / "report.png") as tmp:
            tmp.write_bytes(png)
        with atomic_write(out / "index.html") as tmp:
            tmp.write_text(page(result))
    return out
