"""``patchdb attribute``: per pixel and step, the training patches that made each sample."""

from __future__ import annotations

import json
from pathlib import Path

import click

from patchdb.attribute import (
    attrib_path,
    attribute_file,
    read_attribution,
    recorded_retrieval,
    samples_fingerprint,
    storage_bytes,
    summarize,
    training_set_of,
)
from patchdb.errors import PatchdbError
from patchdb.indexing.reader import open_index
from patchdb.store import claim_output, read_samples

from .options import DTYPES, FiniteFloatRange, parse_ints, retrieval_from, retrieval_options


def _reusable(out: Path, samples: Path, mass: float, max_contrib: int, rows: list[int] | None):
    """The existing attribution file if it was made for these samples and settings, else None."""
    if not out.exists():
        return None
    try:
        attr = read_attribution(out)
    except PatchdbError:
        return None
    meta = attr.meta
    drawn = read_samples(samples)["metadata"]
    engine_ok = meta.get("engine", "exact") == drawn.get("engine", "exact") and (
        drawn.get("engine") != "approx" or meta.get("retrieval") == recorded_retrieval(drawn).to_dict())
    same = (engine_ok and meta.get("samples_fingerprint") == samples_fingerprint(read_samples(samples))
            and abs(meta.get("mass", -1) - mass) < 1e-12 and meta.get("max_contrib") == max_contrib
            and (rows is None or list(attr.sample_index) == rows))
    return attr if same else None


def _table(rows: list[dict], classes) -> str:
    head = (f"{'sample':>6} {'distinct imgs':>13} {'dominant share':>14} {'top source':>16} "
            f"{'eff. sources first->last step':>30} {'nearest train (rms)':>20}")
    lines = [head]
    for r in rows:
        lab = r["top_source_label"]
        name = "" if lab is None else f" ({classes[lab] if classes else lab})"
        eff = r["effective_sources"]
        lines.append(f"{r['sample']:>6} {r['distinct_images']:>13} {r['dominant_share']:>14.2f} "
                     f"{'#' + str(r['top_source']) + name:>16} {eff[0]:>14.1f} -> {eff[-1]:<12.2f} "
                     f"#{r['nearest_image']} ({r['nearest_rms']:.3f})".rstrip())
    return "\n".join(lines)


@click.command()
@click.argument("samples", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "-o", type=click.Path(dir_okay=False), default=None,
              help="Attribution file (default: SAMPLES.attrib.h5 beside the samples).")
@click.option("--mass", type=FiniteFloatRange(min=0.0, max=1.0, min_open=True), default=0.9,
              help="Share of each pixel's weight the stored contributors must cover.")
@click.option("--max-contrib", "-m", type=click.IntRange(min=1, max=1024), default=8,
              help="Most contributors stored per pixel and step (the top ones, largest weight first).")
@click.option("--samples", "sample_ids", default=None, help="Comma list of sample ids to attribute (default: all).")
@click.option("--dataset", "-d", default=None, help="Training set to reload (default: the one the sample file records).")
@click.option("--root", type=click.Path(), default=None, help="Folder of the named dataset (default: as recorded).")
@click.option("--index", "index_path", type=click.Path(dir_okay=False), default=None,
              help="Index file (patchdb build) of the same training set: approximate mode, FAISS top-K per window "
                   "(default: the index that samples of the approximate engine record).")
@click.option("--exact", is_flag=True, help="Attribute with the exact engine even if the samples were drawn with --index.")
@retrieval_options(recorded=True)
@click.option("--dtype", type=click.Choice(list(DTYPES)), default="float64",
              help="Precision of the weights (float64 agrees with docs/math.md to ~1e-9; float32 is ~2x faster).")
@click.option("--block-mb", type=FiniteFloatRange(min=0.01, max=2**20), default=16.0, help="Size of one block of logits in MiB.")
@click.option("--plots", type=click.Path(file_okay=False), default=None,
              help="Folder for the pictures: mosaic map, time strip, one pixel's sources (per sample).")
@click.option("--pixel", default=None, help="Pixel 'y,x' of the per-pixel picture (default: the centre).")
@click.option("--recompute", is_flag=True, help="Recompute even if --out already holds this attribution.")
@click.option("--json", "as_json", is_flag=True, help="Print the summaries as JSON.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), default=None,
              help="Also write one self-contained HTML page to explore the attribution in a browser.")
@click.option("--force", is_flag=True, help="Replace existing outputs (--out of other settings, --plots pictures, the "
                                           "--html page) and create missing folders.")
def command(samples, out, mass, max_contrib, sample_ids, dataset, root, index_path, exact, knobs, dtype, block_mb,
            plots, pixel, recompute, as_json, html_path, force):
    """Which training patches made each pixel of each sample, at each step (exact, or --index).

    Reloads the training set the sample file records (refusing another one by fingerprint),
    rebuilds every step's x_t from the seeds and the stored trajectory, stores per pixel the
    top contributors covering --mass of the weight in SAMPLES.attrib.h5, prints per-sample
    summaries, with --plots draws the pictures and with --html writes the page. Without engine options the samples' own engine
    and settings are used (for --index samples: the index file and retrieval settings they record),
    so the recomputed D is the sampler's; a D that differs is an error.
    """
    samples = Path(samples)
    out = Path(out or attrib_path(samples))
    out = claim_output(out, force or out.is_file(), suffixes=(".h5",))  # an existing one: reused, or --force below
    if plots:
        plots = claim_output(plots, force, what="--plots", folder=True)
    if html_path:
        from patchdb.attribution_page import check_page_path

        html_path = check_page_path(html_path, force)  # refuse before the long computation
    rows = parse_ints(sample_ids, "--samples")
    pix = parse_ints(pixel, "--pixel", 2)
    stored = read_samples(samples)
    meta = stored["metadata"]
    if pix is not None:
        h, w = stored["samples"].shape[-2:]
        if not (0 <= pix[0] < h and 0 <= pix[1] < w):
            raise PatchdbError(f"--pixel {pix[0]},{pix[1]} is outside the {h}x{w} image; use 0 <= y < {h}, 0 <= x < {w}")
    index = open_index(index_path) if index_path else None
    train = training_set_of(meta, dataset, root, None if exact else index)
    as_drawn = index is None and not exact and not knobs
    attr = None if recompute or not as_drawn else _reusable(out, samples, mass, max_contrib, rows)
    if attr is None:
        if out.exists() and not force:
            raise PatchdbError(f"--out {out} already exists and holds another attribution (other samples or settings"
                               f"{', or --recompute' if recompute else ''}); pass --force to replace it or choose another --out")
        base = retrieval_from(knobs, base=recorded_retrieval(meta)) if knobs else None
        attr, out = attribute_file(samples, out, mass, max_contrib, rows, dataset, root, DTYPES[dtype],
                                   int(block_mb * 2**20), progress=True, index=index, retrieval=base, exact=exact)
        click.echo(f"wrote {out} ({attr.meta['seconds']:.1f} s, {storage_bytes(out)['file'] / 1e6:.2f} MB)", err=True)
    else:
        click.echo(f"reusing {out} (same samples and settings; --recompute to redo)", err=True)
    summary = summarize(attr, train.to_float(), train.labels)
    click.echo(json.dumps(summary, indent=1) if as_json else _table(summary, train.classes))
    if plots:
        from patchdb.attribution_plots import all_plots

        files = all_plots(attr, train.to_float().numpy(), plots, tuple(pix) if pix else None,
                          train.labels.numpy(), train.classes)
        click.echo(f"wrote {len(files)} pictures to {plots}", err=True)
    if html_path:
        from patchdb.attribution_page import write_samples_page

        page = write_samples_page(html_path, attr, train, stored, force=force)
        click.echo(f"wrote {page} ({page.stat().st_size / 1e6:.2f} MB)", err=True)
