"""``patchdb info``: what an index file holds, its index types, recall figures and memory to load."""

from __future__ import annotations

import json

import click
import faiss

from patchdb.errors import PatchdbError
from patchdb.indexing.format import CACHE_ENV
from patchdb.indexing.reader import open_index


def _faiss_simd() -> str:
    """The SIMD level of the FAISS kernels loaded in this process (1.15 dispatches at run time; older wheels
    load one of several compiled modules, named by their level) and the levels the wheel was built with."""
    level = faiss.SIMDConfig.get_level_name() if hasattr(faiss, "SIMDConfig") else \
        next((m for m in ("avx512_spr", "avx512", "avx2", "sve") if hasattr(faiss, f"swigfaiss_{m}")), "generic")
    return f"faiss {faiss.__version__} here: SIMD level {level} (built with: {faiss.get_compile_options().strip()})"


#: ``info`` checks every array's checksum by itself up to this many stored bytes (about a second); larger
#: files are checked piece by piece as they are loaded, or all at once with --check.
INFO_VERIFY_BYTES = 2**30


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON.")
@click.option("--check", is_flag=True,
              help="Check every stored array (images, every FAISS index) against its checksum, however large the file; "
                   f"without it info checks them all when they hold at most {INFO_VERIFY_BYTES // 2**30} GiB. Opening "
                   "a file always checks the metadata, the labels and that every piece is of one build.")
def command(file, as_json, check):
    """Describe an index file built by patchdb build (refuses incomplete or foreign files)."""
    with open_index(file) as f:
        info = f.info()
        check = check or (info["checksums"] and info["memory_to_load_bytes"] <= INFO_VERIFY_BYTES)
        if check:
            damaged = f.verify()
            if damaged:
                more = f" and {len(damaged) - 1} more ({', '.join(damaged[1:8])})" if len(damaged) > 1 else ""
                raise PatchdbError(f"{file} is damaged: checksum mismatch in {damaged[0]}{more}; "
                                   "rebuild it with patchdb build --force")
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    if check:
        click.echo(f"{file}: checksums match (metadata, images, labels and every index of build {f.build_id[:12]})")
    elif info["checksums"]:
        click.echo(f"{file}: metadata, labels and build ids checked; images and indexes are checked as they load "
                   "(--check: all now)")
    else:
        click.echo(f"{file}: no checksums (built before patchdb kept them; rebuild with --force to get them)")
    meta = info["metadata"]
    c, h, w = meta["shape"]
    click.echo(f"{info['path']}: {info['format']} v{info['format-version']}, {info['generated-by']}, created {info['creation-date']}")
    click.echo(f"dataset {meta['dataset']}: {meta['count']:,} images {c}x{h}x{w}, policy {meta['policy']}, "
               f"{len(meta['classes'])} classes, fingerprint {meta['fingerprint'][:16]}")
    click.echo(f"machine {meta['machine']}, patch sizes {meta['sizes']}; id rule: {meta['id_rule']}")
    build = meta.get("build") or {}
    if build.get("schedule"):
        unindexed = sorted(set(build["schedule"]) - set(meta["sizes"]))
        click.echo(f"schedule {build.get('schedule_name') or 'recorded'}: {build['schedule']}" + (
            f"; sizes {unindexed} have no index (built with --sample-above {build['sample_above']:g}: sample with "
            f"--sample-above {build['sample_above']:g} or lower)" if unindexed and build.get("sample_above") else
            f"; sizes {unindexed} have no index (add them with build --add)" if unindexed else ""))
    click.echo(f"libraries: {', '.join(f'{k} {v}' for k, v in meta['libraries'].items())}")
    click.echo(_faiss_simd())
    click.echo(f"{'k':>3} {'family':9} {'subidx':>6} {'vectors':>13} {'index':28} {'train':>7} {'nprobe':>6} {'kf':>3} "
               f"{'recall':>8} {'stored':>12} {'build s':>8}")
    for k, fams in info["sizes"].items():
        for fam in fams:
            plan = fam.get("plan", {})
            key = plan.get("key", "exact scan (no index)")
            recall = f"{fam['recall']:.3f}@{fam['recall_k']}" if "recall" in fam else "exact"
            click.echo(f"{k:>3} {fam['family']:9} {fam['groups']:>6} {fam['vectors']:>13,} {key:28} {plan.get('ntrain', 0):>7} "
                       f"{fam.get('nprobe', 0):>6} {fam.get('k_factor', 1):>3} {recall:>8} {_mib(fam['stored_bytes']):>12} "
                       f"{fam.get('seconds', 0):>8.1f}")
            if plan.get("reason"):
                click.echo(f"{'':14}why: {plan['reason']}")
    click.echo(f"memory to load everything: {_mib(info['memory_to_load_bytes'])} (images {_mib(info['images_bytes'])}); "
               f"file {_mib(info['file_bytes'])}")
    largest = max((sum(f["stored_bytes"] for f in fams) for fams in info["sizes"].values()), default=0)
    click.echo(f"sampling keeps loaded sizes within {CACHE_ENV} (default half the available memory); "
               f"the largest size needs {_mib(largest)}")
