"""The patch index file, as stored: one HDF5 file with the training images and a FAISS index per patch size.

Layout (format ``patchdb-index``, version 1)::

    /                      attrs: format, format-version, generated-by, creation-date, metadata (JSON:
                           dataset name/meta/fingerprint, policy, machine, sizes, shape, classes,
                           library versions, build settings)
    /images                (N, C, H, W) uint8, ordered by class (each class a contiguous id range)
    /labels                (N,) int64, non-decreasing
    /sizes/k{K}/           attrs: k, info (JSON: per family plans, recall, timings)
        e{i}/              one entry per window-geometry group i of patches.geometry(machine, K, H, W)
                           attrs: family, indexed (bool), per_image L, groups G
            cand_pos       (G, L) int64: flat candidate positions y * W + x of each sub-group
            index/{g}      uint8: faiss.serialize_index of sub-group g (indexed families only)

Id rule, stored in the metadata and used everywhere: in sub-index ``(K, i, g)`` the vector id
``v`` is image ``n = v // L`` at flat position ``cand_pos[g, v % L]``, family ``e{i}.family``. A class
``[start, stop)`` of images is the id range ``[start * L, stop * L)``. Corner (and LS fallback)
families are not indexed: they have only N candidates per pixel and are scanned exactly.

Integrity (issue 29; files built since then, still format version 1: older files simply lack it). The
root carries ``build-id`` (a random id of the build, kept by ``build --add``) and ``metadata-sha256``;
every stored array (images, labels, each ``cand_pos`` and each serialized FAISS index) carries
``sha256`` (of its bytes) and the ``build-id``. A file whose pieces carry another build's id is
refused (a mixed file). When checked: metadata, build ids, labels (checksum and range 0..classes-1,
sorted) and candidate positions on every open; images on open when at most
:data:`VERIFY_ON_OPEN_BYTES`, else when first read; each FAISS index when it is loaded; everything
by ``patchdb info --check``.

Everything that names the stored layout is here; :mod:`.builder` writes it, :mod:`.reader` reads it,
:mod:`.windows` cuts the vectors.

Loading takes the blank windows (all in-image pixels 0) out of each IVF sub-index and counts them
(:class:`patchdb.indexing.windows.Blanks`); the approximate engine adds them back as one candidate of known multiplicity. The
stored bytes are not changed.

Building streams: vectors are cut from chunks of images, added in chunks, and every finished
sub-index is checkpointed into ``<out>.partial/`` (temp name + rename), so a killed build resumes.
The final file is written under a temporary name and renamed; until then ``info`` refuses the path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..patches import geometry
from ..spec import Machine

INDEX_FORMAT = "patchdb-index"
INDEX_VERSION = 1
ID_RULE = "image = id // L; position = cand_pos[g, id % L] (flat y*W+x); class [a,b) = ids [a*L, b*L)"
#: Families whose candidates are few per query pixel (N): scanned exactly, never indexed.
EXACT_FAMILIES = ("corner", "ls")
#: Root and per-array attribute: the random id of the build that wrote the piece.
BUILD_ID_ATTR = "build-id"
#: Root attribute: SHA-256 of the metadata JSON string.
METADATA_SHA_ATTR = "metadata-sha256"
#: Images up to this size are checked against their checksum when the file is opened (larger: when first read).
VERIFY_ON_OPEN_BYTES = 64 * 2**20
#: Environment variable: memory for loaded sub-indexes (e.g. ``8GiB``); unset: half the available memory.
CACHE_ENV = "PATCHDB_INDEX_MEMORY"


@dataclass
class Entry:
    """One geometry group of one patch size, as stored."""

    family: str
    cand_pos: torch.Tensor  # (G, L)
    indexed: bool
    info: dict = field(default_factory=dict)

    @property
    def per_image(self) -> int:
        return int(self.cand_pos.shape[1])


def entries_for(machine: Machine, k: int, height: int, width: int) -> list[Entry]:
    geom = geometry(machine, k, height, width)
    return [Entry(grp.family, grp.cand_pos.clone(), grp.family not in EXACT_FAMILIES) for grp in geom.groups]
