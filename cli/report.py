"""``patchdb report``: nearest training images, near-copy share, diversity and classes of a sample set."""

from __future__ import annotations

from pathlib import Path

import click

from patchdb.store import claim_output

from .options import dataset_options, load_from_options


@click.command()
@click.argument("run", type=click.Path(exists=True))
@click.option("--out", "-o", type=click.Path(file_okay=False), default=None,
              help="Report folder (report.json, report.png, index.html); default RUN/report (RUN.report for a .h5).")
@click.option("--index", "index_file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Compare with the images stored in this index file (default: the run's own training data).")
@dataset_options
@click.option("--partial", is_flag=True, help="Report on the finished shards of an unfinished run.")
@click.option("--attribution", "attribution", type=click.IntRange(min=0), default=0, show_default=True,
              help="Attribute N samples (as patchdb attribute, with the run's own engine and settings) and write "
                   "the interactive page attribution.html, linked from index.html; 0: none. Costs a few times "
                   "the sampling of N samples (float64, every source tracked).")
@click.option("--attribution-pick", type=click.Choice(["extremes", "first"]), default="extremes", show_default=True,
              help="Which samples --attribution takes: extremes = the least and the most novel by nearest distance "
                   "(as report.png), first = the first N seeds of the run.")
@click.option("--force", is_flag=True, help="Replace an existing report.")
def command(run, out, index_file, dataset, root, split, download, limit, only_classes, policy, partial, attribution,
            attribution_pick, force):
    """Report on RUN (a run folder or a .h5 sample file): nearest training images, near-copy share, diversity, classes.

    Nearest and second-nearest training image of every sample by exact L2 (brute force in blocks); a
    near-copy has d1/d2 < 1/3. Writes report.json, report.png (histograms, most and least novel samples
    beside their nearest training images) and index.html. With --attribution N, also the attribution page
    of N samples (attribution.html, the page of patchdb attribute --html), computed with the samples' own
    training set, engine and retrieval settings whatever --index/--dataset say.
    """
    from patchdb.report import (
        Training,
        attribute_samples,
        check_attributable,
        check_attribution_count,
        pick_samples,
        picture,
        report,
        training_of_index,
        training_of_run,
        write_report,
    )
    from patchdb.runs.folder import load_samples

    run_path = Path(run)
    out = Path(out) if out else (run_path / "report" if run_path.is_dir() else run_path.with_suffix(".report"))
    claim_output(out, force, folder=True)  # refused before the work, not after it
    got = load_samples(run, partial=partial)
    if attribution:  # refused before the work, not after it
        check_attribution_count(attribution, len(got.seeds), run)
        if run_path.is_dir():
            check_attributable(got.metadata, run)
    asked = dataset != "embedded" or limit is not None
    if index_file is not None:
        training = training_of_index(index_file)
    elif not asked and not run_path.is_dir() and (got.metadata.get("dataset_name") or got.metadata.get("index")):
        from patchdb.attribute import training_set_of  # a sample file: the training set it records

        data = training_set_of(got.metadata)
        training = Training(data.to_float(), data.labels, f"{len(data)} images of {data.name}")
    elif asked or "run_spec" not in got.metadata:
        data = load_from_options(dataset, root, split, download, limit, only_classes, policy)
        training = Training(data.to_float(), data.labels, f"{len(data)} images of {data.name}")
    else:
        training = training_of_run(got.metadata)
    click.echo(f"{len(got.seeds)} samples of {run} against {training.describe}", err=True)
    result = report(got.samples, got.seeds, got.labels, training, source=str(run))
    attribute = None
    if attribution:
        rows = pick_samples(result, attribution, attribution_pick)
        click.echo(f"attributing {len(rows)} samples (seeds {', '.join(str(int(got.seeds[r])) for r in rows)})", err=True)

        def attribute(folder):
            return attribute_samples(got, run, rows, folder, attribution_pick, progress=True, result=result)
    write_report(result, picture(got.samples, result, training), out, force, attribution=attribute)
    if attribution:
        info = result["attribution"]
        click.echo(f"wrote {out}/{info['page']} ({info['page_bytes'] / 1e6:.2f} MB, {len(info['seeds'])} samples, "
                   f"{info['engine']} engine, {info['seconds']:.1f} s)")
    nc = result["near_copy"]
    click.echo(f"wrote {out}/report.json, report.png, index.html: near-copy share {nc['share']:.3f} "
               f"({nc['count']} of {result['samples']}), median nearest distance {result['nearest_distance']['median']:.3f}, "
               f"diversity {result['diversity']['mean_pairwise_l2']:.3f} (training {result['diversity']['training_mean_pairwise_l2']:.3f})")
