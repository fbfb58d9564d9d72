"""Reading an index file: a complete file opened once, sub-indexes deserialized on first use and kept
within a memory budget, blank windows taken out as they load. The layout is :mod:`.format`'s."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
from pathlib import Path
from typing import Self

import numpy as np
import torch

from ..errors import PatchdbError, PatchdbFileError
from ..schedule import ScaleSchedule, parse_schedule
from ..spec import Machine
from ..store import CHECKSUM_ATTR, digest, metadata, open_checked
from . import faiss_ops as fx
from .format import (
    BUILD_ID_ATTR,
    CACHE_ENV,
    INDEX_FORMAT,
    INDEX_VERSION,
    METADATA_SHA_ATTR,
    VERIFY_ON_OPEN_BYTES,
    Entry,
    entries_for,
)
from .windows import Blanks, PatchSource, find_blanks, lit_integral, take_out_blanks

log = logging.getLogger(__name__)

#: Info key of the entries of a size the file has no index for (:meth:`IndexFile.entries`).
UNINDEXED = "unindexed"

#: Datasets the CLI knows by name (their files live in --root).
NAMED_DATASETS = ("mnist", "fashion-mnist", "cifar10")


def dataset_cli_options(name: str, meta: dict) -> list[str]:
    """``--dataset ... --root ... --limit ...`` (as a list) that load a dataset recorded as ``name`` with
    metadata ``meta`` (:attr:`patchdb.data.Dataset.meta`); options left at their defaults are left out."""
    source = str(meta.get("source") or "")
    if name == "embedded":
        out = []
    elif name in NAMED_DATASETS:
        out = ["--dataset", name] + (["--root", str(Path(source).parent)] if Path(source).is_file() else [])
    else:  # a path: an image folder, a zip, an IDX folder or an .npz ("kind:path")
        out = ["--dataset", source or name.split(":", 1)[-1]]
    if meta.get("split") not in (None, "", "train") and name != "embedded":
        out += ["--split", str(meta["split"])]
    if meta.get("limit") is not None:
        out += ["--limit", str(meta["limit"])]
    if meta.get("classes"):
        out += ["--only-classes", ",".join(str(c) for c in meta["classes"])]
    if meta.get("policy") not in (None, "resize"):
        out += ["--policy", str(meta["policy"])]
    return out


def default_cache_bytes() -> int | None:
    """``PATCHDB_INDEX_MEMORY`` if set, else half of MemAvailable (Linux), else None (no limit)."""
    text = os.environ.get(CACHE_ENV)
    if text:
        return fx.parse_bytes(text, CACHE_ENV)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    return None


class IndexFile:
    """A complete index file opened for reading; sub-indexes are deserialized on first use.

    Loaded sub-indexes are kept per patch size, least recently used size first out, within
    ``cache_bytes`` ("auto": :func:`default_cache_bytes`; None: no limit): a sampler walking a schedule over a file
    bigger than memory (N = 60,000, 8 sizes: 20 GB) holds the sizes it is using and reloads the others.
    The size being used is never unloaded, so one size larger than the budget still works.
    """

    def __init__(self, path: str | os.PathLike, cache_bytes: int | None | str = "auto"):
        self.path = Path(path)
        self.cache_bytes = default_cache_bytes() if cache_bytes == "auto" else cache_bytes  # None: no limit
        self.loads = 0  # sub-index deserializations (tests and logs)
        self.h5 = open_checked(self.path, INDEX_FORMAT, INDEX_VERSION)
        self._images_ok = False  # images checked against their checksum
        self._verified: set[str] = set()  # FAISS payloads checked against their checksum (verify_sizes)
        self.build_id: str | None = None  # None: a file built before checksums existed
        try:
            self.meta = metadata(self.h5)
            self._check_complete()
            self.build_id = self._check_build()
            self._check_labels()
            if self.build_id is not None and self.h5["images"].nbytes <= VERIFY_ON_OPEN_BYTES:
                self.images()
        except (KeyError, ValueError, OSError, TypeError) as err:
            self.h5.close()
            if isinstance(err, PatchdbError):
                raise
            raise PatchdbError(f"{self.path} is incomplete or corrupted ({err.__class__.__name__}); rebuild it with patchdb build") from None
        self.machine = Machine.parse(self.meta["machine"])
        self.sizes = tuple(int(k) for k in self.meta["sizes"])
        self.build = self.meta.get("build") or {}  # the build settings (older files: fewer keys)
        self.channels, self.height, self.width = self.meta["shape"]
        self._indexes: dict[tuple[int, int, int], tuple[object, int]] = {}
        self._entries: dict[int, list[Entry]] = {}
        self._source: PatchSource | None = None
        # Blank windows per sub-index as found from the images (depend on nothing else): kept when the
        # sub-index is unloaded, so a reload (every batch, under a tight budget) need not find them again.
        self._blanks_found: dict[tuple[int, int, int], Blanks | None] = {}
        self._lit: torch.Tensor | None = None  # lit_integral of the images, made on first need

    def _check_complete(self) -> None:
        for name in ("images", "labels", "sizes"):
            if name not in self.h5:
                raise PatchdbError(f"{self.path} has no '{name}': the build did not finish; rerun patchdb build")
        for k in self.meta["sizes"]:
            grp = self.h5["sizes"].get(f"k{k}")
            if grp is None:
                raise PatchdbError(f"{self.path} lacks patch size {k} its metadata lists; rebuild it")
            for e in grp.values():
                if e.attrs["indexed"] and len(e["index"]) != e["cand_pos"].shape[0]:
                    raise PatchdbError(f"{self.path} size {k} has missing sub-indexes; rebuild it")

    # ---- integrity (format.py, "Integrity") ------------------------------------------------

    def _damaged(self, part: str, why: str = "checksum mismatch") -> PatchdbError:
        return PatchdbError(f"{self.path} is damaged: {part} ({why}); rebuild it with patchdb build --force "
                            "(patchdb info --check lists every damaged part)")

    def _arrays(self):
        """Every stored array of the file: images, labels, and per size each cand_pos and FAISS index."""
        yield self.h5["images"]
        yield self.h5["labels"]
        for k in self.meta["sizes"]:
            for e in self.h5[f"sizes/k{k}"].values():
                yield e["cand_pos"]
                if "index" in e:
                    yield from e["index"].values()

    def _check_build(self) -> str | None:
        """The build id; one line for damaged metadata or a piece of another build (a mixed file).
        None for a file built before checksums existed (nothing to check)."""
        build = self.h5.attrs.get(BUILD_ID_ATTR)
        if build is None:
            return None
        self.build_id = build = str(build)
        want = self.h5.attrs.get(METADATA_SHA_ATTR)
        if want is None or digest(str(self.h5.attrs["metadata"]).encode()) != want:
            raise self._damaged("its metadata")
        for ds in self._arrays():
            found = ds.attrs.get(BUILD_ID_ATTR)
            if found is None or CHECKSUM_ATTR not in ds.attrs:
                raise self._damaged(ds.name, "no checksum or build id: replaced, or written by another program")
            if found != build:
                raise PatchdbError(f"{self.path}: {ds.name} belongs to another build ({str(found)[:8]}, not {build[:8]}); "
                                   "the file mixes two builds, rebuild it with patchdb build --force")
            if ds.name.endswith("cand_pos"):
                self._verify(ds)
        return build

    def _verify(self, ds, data=None):
        """``ds``'s data, refused in one line when it does not match its checksum (files with checksums)."""
        data = ds[()] if data is None else data
        if self.build_id is not None and digest(data) != ds.attrs.get(CHECKSUM_ATTR):
            raise self._damaged(ds.name)
        return data

    def _check_labels(self) -> None:
        """Labels 0..classes-1, sorted, one per image (every file; cheap: 8 bytes an image)."""
        labels = self._verify(self.h5["labels"]) if self.build_id is not None else self.h5["labels"][()]
        classes = len(self.meta.get("classes") or ())
        n = int(self.h5["images"].shape[0])
        if labels.ndim != 1 or len(labels) != n or n != int(self.meta.get("count", n)):
            raise self._damaged("/labels", f"{labels.shape} labels for {n} images")
        if n and (int(labels.min()) < 0 or int(labels.max()) >= classes):
            raise self._damaged("/labels", f"labels {int(labels.min())}..{int(labels.max())} outside 0..{classes - 1}")
        if n > 1 and bool((labels[1:] < labels[:-1]).any()):
            raise self._damaged("/labels", "not sorted by class")

    def verify(self) -> list[str]:
        """Check every stored array against its checksum: the names of the damaged ones (empty: all match).
        Raises for a file without checksums."""
        if self.build_id is None:
            raise PatchdbError(f"{self.path} was built before patchdb kept checksums; nothing to check against, "
                               "rebuild it with patchdb build --force to get them")
        damaged = []
        for ds in self._arrays():
            if digest(ds[()]) != ds.attrs.get(CHECKSUM_ATTR):
                damaged.append(ds.name)
        return damaged

    def verify_sizes(self, sizes) -> None:
        """Check the FAISS payloads of patch sizes ``sizes`` against their checksums now, before any work
        (an engine is made for a schedule: a damaged payload is one line naming it, not a failure mid-run).
        Read in chunks (memory bounded by the chunk, not the payload); each payload is checked once."""
        if self.build_id is None:
            return
        for k in sorted({int(k) for k in sizes} & set(self.sizes)):
            for e in self.h5[f"sizes/k{k}"].values():
                for ds in (e["index"].values() if "index" in e else ()):
                    if ds.name in self._verified:
                        continue
                    if _chunked_digest(ds) != ds.attrs.get(CHECKSUM_ATTR):
                        raise self._damaged(ds.name)
                    self._verified.add(ds.name)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.h5.close()

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    def images(self) -> torch.Tensor:
        """(N, C, H, W) uint8, ordered by class (checked against their checksum on the first read)."""
        data = self.h5["images"][()]
        if not self._images_ok:
            self._verify(self.h5["images"], data)
            self._images_ok = True
        return torch.from_numpy(data)

    def labels(self) -> torch.Tensor:
        """(N,) int64, checked when the file was opened."""
        return torch.from_numpy(self.h5["labels"][()]).long()

    def entries(self, k: int) -> list[Entry]:
        """The stored entries of size ``k`` (read once; callers must not modify them). A size the file has no
        index for (``build --sample-above``) gets the machine's families with no index, as a sample-only step
        uses them: candidate positions, and blank windows found from the images (:meth:`blanks`)."""
        if k not in self._entries and k not in self.sizes:
            self._entries[k] = [Entry(e.family, e.cand_pos, e.indexed, {UNINDEXED: True})
                                for e in entries_for(self.machine, k, self.height, self.width)]
        if k not in self._entries:
            grp = self.h5[f"sizes/k{k}"]
            out = []
            for i in range(len(grp)):
                e = grp[f"e{i}"]
                out.append(Entry(str(e.attrs["family"]), torch.from_numpy(e["cand_pos"][()]).long(),
                                 bool(e.attrs["indexed"]), json.loads(e.attrs["info"])))
            self._entries[k] = out
        return self._entries[k]

    def entries_for_groups(self, k: int, groups, machine: Machine) -> list[tuple[int, Entry]]:
        """(entry number, entry) of each geometry group of ``machine`` at size ``k``, matched by candidate
        positions (so a bbELS file serves ELS); one line naming the fix when the file lacks a family."""
        stored = self.entries(k)
        found = []
        for grp in groups:
            match = [(i, e) for i, e in enumerate(stored) if e.cand_pos.shape == grp.cand_pos.shape
                     and torch.equal(e.cand_pos, grp.cand_pos)]
            if not match:
                raise PatchdbError(f"{self.path} has no {grp.family} candidates for k={k}; it was built for "
                                   f"machine {self.machine.value}, rebuild it for {Machine.parse(machine).value}")
            found.append(match[0])
        return found

    def source(self, largest: int = 0) -> PatchSource:
        """The stored images as a float64 :class:`PatchSource` padded for the largest size (of the file's, of
        its recorded schedule's and ``largest``), made once and shared by everything reading windows through
        this file (the approximate engine, attribution)."""
        pad = max(*self.sizes, *(self.build.get("schedule") or ()), largest) // 2
        if self._source is None or self._source.pad < pad:
            self._source = PatchSource(self.images(), pad, torch.float64)
        return self._source

    def index(self, k: int, i: int, g: int):
        key = (k, i, g)
        if key not in self._indexes:
            data = self.h5[f"sizes/k{k}/e{i}/index/{g}"]
            self._make_room(k, data.nbytes)
            # Checked against its checksum before FAISS parses it the first time (damaged bytes must give
            # the one-line error, not whatever FAISS makes of them); later loads stream from the file.
            index = fx.read_index(data if data.name in self._verified else self._verify(data))
            self._verified.add(data.name)
            blanks = self._take_out_blanks(index, k, i, g)
            extra = 0 if blanks is None else blanks.nbytes
            self._indexes[key] = (index, int(data.nbytes) + extra)
            self.loads += 1
        # Most recently used last: re-insert this size's entries (dicts keep insertion order).
        if next(reversed(self._indexes))[0] != k:
            for other in [key2 for key2 in self._indexes if key2[0] == k]:
                self._indexes[other] = self._indexes.pop(other)
        return self._indexes[key][0]

    def blanks(self, k: int, i: int, g: int, load: bool = True) -> Blanks | None:
        """The blank windows taken out of sub-index ``(k, i, g)`` (None: none, or a Flat index, where
        ids are positions and nothing is taken out); loads the sub-index if needed, unless ``load`` is
        False: then the same windows are found from the images alone (a step that searches nothing,
        ``Retrieval.sample_above``, need not load seconds of index for them)."""
        key = (k, i, g)
        if load or key in self._indexes:
            self.index(k, i, g)
            return self._blanks_found.get(key)  # None for a Flat sub-index: nothing taken out
        if key not in self._blanks_found:
            info = self.entries(k)[i].info
            # a size with no index is estimated as an IVF one is: blank windows counted apart, exactly
            ivf = info.get(UNINDEXED) or "IVF" in info.get("plan", {}).get("key", "")
            self._blanks_found[key] = find_blanks(self._lit_images(), self.height, self.width, k,
                                                  self.entries(k)[i].cand_pos[g]) if ivf else None
        return self._blanks_found[key]

    def _lit_images(self) -> torch.Tensor:
        if self._lit is None:
            self._lit = lit_integral(self.images())
        return self._lit

    def _take_out_blanks(self, index, k: int, i: int, g: int) -> Blanks | None:
        """Remove blank windows from a freshly loaded IVF sub-index (:func:`take_out_blanks`)."""
        if fx.as_ivf(index) is None:
            return None
        key = (k, i, g)
        found = (self._blanks_found[key],) if key in self._blanks_found else None
        blanks = take_out_blanks(index, self._lit_images(), self.height, self.width, k, self.entries(k)[i].cand_pos[g],
                                 where=f"{self.path} size {k}", found=found)
        self._blanks_found[key] = blanks
        return blanks

    def loaded_sizes(self) -> list[int]:
        """Patch sizes with sub-indexes in memory, least recently used first."""
        return list(dict.fromkeys(key[0] for key in self._indexes))

    def _make_room(self, k: int, incoming: int) -> None:
        if self.cache_bytes is None:
            return
        used = sum(nbytes for _, nbytes in self._indexes.values())
        for old in self.loaded_sizes():
            if used + incoming <= self.cache_bytes:
                break
            if old == k:
                continue
            for key in [key2 for key2 in self._indexes if key2[0] == old]:
                used -= self._indexes.pop(key)[1]
            log.info("unloaded the k=%d indexes of %s (index memory budget %.1f GiB; set %s to keep more)",
                     old, self.path.name, self.cache_bytes / 2**30, CACHE_ENV)

    def check_dataset(self, fingerprint: str | None) -> None:
        if fingerprint is not None and fingerprint != self.fingerprint:
            raise PatchdbError(
                f"{self.path} was built from another dataset ({self.meta['dataset']}, fingerprint "
                f"{self.fingerprint[:12]}), not the one given ({fingerprint[:12]}); build an index for this data"
            )

    def check(self, machine: Machine | str, sizes, fingerprint: str | None = None) -> None:
        """One-line errors for a file built for another dataset, machine or set of patch sizes."""
        self.check_dataset(fingerprint)
        machine = Machine.parse(machine)
        if machine is Machine.IS:
            raise PatchdbError("the IS machine needs no index; sample it without --index, e.g. "
                               f"patchdb sample --machine is {shlex.join(self.dataset_options())}")
        if machine is Machine.BBELS and self.machine is not Machine.BBELS:
            sizes = ",".join(str(k) for k in self.sizes)
            raise PatchdbError(f"{self.path} was built for machine {self.machine.value}, which has no edge families; "
                               f"rebuild it with {self.build_command('bbels', sizes, '--force')}")
        missing = sorted({int(k) for k in sizes} - set(self.sizes))
        if missing:
            add = ",".join(str(k) for k in missing)
            above = float(self.build.get("sample_above") or 0)
            hint = (f"it was built with --sample-above {above:g}: sample with --sample-above {above:g} (or lower), "
                    "where those steps search no index, or " if above else "")
            raise PatchdbError(
                f"{self.path} has no index for patch sizes {missing} (it has {list(self.sizes)}); {hint}add them with "
                f"{self.build_command(self.machine.value, add, '--add')}"
            )

    def dataset_options(self) -> list[str]:
        """The dataset options of ``patchdb build`` (and sample) that load the images this file was built from."""
        return dataset_cli_options(str(self.meta["dataset"]), self.meta.get("dataset_meta") or {})

    def build_command(self, machine: str, scales: str, flag: str) -> str:
        """A ``patchdb build`` command over this file's dataset that can be pasted as is."""
        extra = [] if self.build.get("index_key", "auto") == "auto" else ["--index-key", str(self.build["index_key"])]
        return shlex.join(["patchdb", "build", *self.dataset_options(), "--machine", machine, *extra, "--scales", scales,
                           flag, "--out", str(self.path)])

    def recorded_schedule(self, steps: int | None = None) -> ScaleSchedule:
        """The scale schedule the build recorded (``build --scales`` given a preset or a schedule file), for
        sampling without --schedule; one line listing the sizes when it recorded none."""
        build = self.build
        sizes = build.get("schedule")
        if not sizes:
            have = ",".join(str(k) for k in self.sizes)
            raise PatchdbError(
                f"{self.path} records no scale schedule (it holds patch sizes {have}); give one with --schedule, "
                f"e.g. patchdb sample --index {shlex.quote(str(self.path))} --schedule constant:{self.sizes[-1]}"
            )
        return parse_schedule(ScaleSchedule(tuple(int(k) for k in sizes), str(build.get("schedule_name") or "recorded")),
                              steps)

    def info(self) -> dict:
        """What is inside: dataset, machine, and per size the families, index types, recall, memory."""
        attrs = {key: (v.item() if hasattr(v, "item") else v) for key, v in self.h5.attrs.items() if key != "metadata"}
        sizes = {}
        for k in self.sizes:
            fams = []
            for i, entry in enumerate(self.entries(k)):
                stored = sum(d.nbytes for d in self.h5[f"sizes/k{k}/e{i}/index"].values()) if entry.indexed else 0
                fams.append({**entry.info, "stored_bytes": int(stored)})
            sizes[str(k)] = fams
        images_bytes = int(self.h5["images"].nbytes)
        total = images_bytes + sum(f["stored_bytes"] for fams in sizes.values() for f in fams)
        return {"path": str(self.path), **attrs, "metadata": self.meta, "images_bytes": images_bytes,
                "sizes": sizes, "memory_to_load_bytes": total, "file_bytes": self.path.stat().st_size,
                "checksums": self.build_id is not None}


def _chunked_digest(ds, chunk_bytes: int = 64 * 2**20) -> str:
    """:func:`patchdb.store.digest` of a stored array, read ``chunk_bytes`` at a time along its first axis."""
    if ds.ndim == 0 or ds.nbytes <= chunk_bytes:
        return digest(ds[()])
    h = hashlib.sha256()
    rows = max(1, chunk_bytes // max(ds.nbytes // ds.shape[0], 1))
    for start in range(0, ds.shape[0], rows):
        h.update(memoryview(np.ascontiguousarray(ds[start : start + rows])).cast("B"))
    return h.hexdigest()


def open_index(path: str | os.PathLike) -> IndexFile:
    if not Path(path).exists():
        raise PatchdbFileError(f"index file {path} does not exist; build it with patchdb build --out {path}")
    return IndexFile(path)
