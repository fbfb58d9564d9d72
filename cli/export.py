"""``patchdb export``: a run folder (or a .h5 sample file) as PNGs named by seed, or one .npz."""

from __future__ import annotations

import click

from patchdb.errors import PatchdbError
from patchdb.store import claim_output


@click.command()
@click.argument("run", type=click.Path(exists=True))
@click.option("--png", "png_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for one PNG per seed, in sub-folders of 1,000 (00000/000123.png), the layout FID tools read.")
@click.option("--npz", "npz_file", type=click.Path(dir_okay=False), default=None,
              help="One .npz: arr_0 (N, H, W, C) uint8, seeds, labels (-1: unconditional).")
@click.option("--partial", is_flag=True, help="Export the finished shards of an unfinished run.")
@click.option("--force", is_flag=True, help="Replace existing outputs.")
def command(run, png_dir, npz_file, partial, force):
    """Export the samples of RUN (a run folder from patchdb sample --out FOLDER, or a .h5 sample file)."""
    from patchdb.runs.export import export_npz, export_png
    from patchdb.runs.folder import load_samples

    if png_dir is None and npz_file is None:
        raise PatchdbError("nothing to export; pass --png DIR and/or --npz FILE")
    for path, what, folder in ((png_dir, "--png", True), (npz_file, "--npz", False)):
        if path is not None:  # refused before the samples are read
            claim_output(path, force, what=what, folder=folder)
    got = load_samples(run, partial=partial)
    if png_dir is not None:
        n = export_png(got.samples, got.seeds, png_dir, force)
        click.echo(f"wrote {n} PNGs under {png_dir}")
    if npz_file is not None:
        export_npz(got.samples, got.seeds, got.labels, npz_file, force)
        click.echo(f"wrote {npz_file} ({len(got.seeds)} samples)")
