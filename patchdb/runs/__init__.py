"""Samples at scale: seed ranges, run folders of checksummed shards, resume, local workers and Ray.

``patchdb sample --seeds 0-49999 --out run/`` cuts the seeds into shards, computes each (here, in
``--workers`` local processes, or on a Ray cluster with ``--ray``), writes it atomically with its
SHA-256 in ``run/manifest.json``, and skips finished shards when rerun. :func:`open_run` reads a run
folder back as one set.
"""

from .driver import RunSummary, run_samples
from .folder import RunFolder, RunSet, open_run
from .seeds import format_seeds, parse_seeds, seeds_option
from .spec import RunSpec

__all__ = [
           "RunFolder",
           "RunSet",
           "RunSpec",
           "RunSummary",
           "format_seeds",
           "open_run",
           "parse_seeds",
           "run_samples",
           "seeds_option",
]
