"""FAISS: choose an index key, train on a sample, add in chunks, tune, (de)serialize.

Small plain functions over numpy float32 arrays, in the spirit of faiss ``contrib``: the HDF5
layout lives in :mod:`patchdb.indexing.format`, the window geometry in :mod:`patchdb.patches`.
Vector ids are the order of addition (``0 .. n-1``), so the id -> patch rule stays arithmetic.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import faiss
import numpy as np
from tqdm.auto import tqdm

from ..errors import PatchdbError

log = logging.getLogger(__name__)

#: Below this many vectors (and FLAT_MAX_BYTES of floats) a Flat index is exact and about as fast as
#: anything else; above, its float copy of every window costs more disk and memory than it is worth.
FLAT_MAX = 200_000
FLAT_MAX_BYTES = 32 * 2**20
#: Most inverted lists: more lists scan fewer codes per query, but k-means and assignment cost grow.
NLIST_MAX = 16384
#: Dimension above which vectors are PCA-rotated down before the coarse quantizer and codec.
PCA_DIM = 32
#: The same for edge families. Their windows are partly zero padding, so a row's informative dims are
#: fewer but differ from row to row; 32 shared PCA dims lost too much of them (recall@64 0.68-0.85 at
#: k >= 7 on Fashion-MNIST), and edge sub-indexes are small, so they keep more.
EDGE_PCA_DIM = 64
#: Recall@K the tuner aims for (the issue asks for >= 0.95).
RECALL_TARGET = 0.95


@dataclass(frozen=True)
class IndexPlan:
    """What ``auto`` chose for ``n`` vectors of dimension ``d`` and why."""

    key: str  # a faiss.index_factory string
    n: int
    d: int
    nlist: int  # 0 for Flat
    bytes: int  # estimated memory of the filled index
    ntrain: int  # training sample size (0: no training)
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def code_bytes(key: str, d: int) -> int:
    """Bytes per vector of a factory key (codes plus the 8-byte id of IVF lists)."""
    codec = key.split(",")[-1]
    dim = _out_dim(key, d)
    if codec == "Flat":
        return 4 * dim + (8 if "IVF" in key else 0)
    if codec == "SQ8":
        return dim + 8
    if codec.startswith("PQ"):
        m, _, nbits = codec[2:].partition("x")
        return math.ceil(int(m) * int(nbits.rstrip("fs") or 8) / 8) + 8
    return 4 * dim + 8  # other codecs: assume float storage (an upper bound for the budget check)


def _out_dim(key: str, d: int) -> int:
    first = key.split(",")[0]
    if first.startswith(("PCAR", "PCA")):
        return int(first.lstrip("PCAR"))
    return d


def estimate_bytes(key: str, n: int, d: int, nlist: int = 0) -> int:
    """Memory of a filled index: codes + ids + coarse centroids (+ HNSW links) + PCA matrix."""
    dim = _out_dim(key, d)
    extra = nlist * dim * 4 + (nlist * 32 * 2 * 4 if "HNSW" in key else 0) + d * dim * 4
    return n * code_bytes(key, d) + extra


def choose_key(n: int, d: int, memory_bytes: int, spec: str = "auto", copies: int = 1,
               pca_dim: int = PCA_DIM) -> IndexPlan:
    """The index for ``n`` vectors of dimension ``d`` under a memory budget (autofaiss's recipe, simplified).

    Flat when small (exact, ``n <= FLAT_MAX``). Otherwise IVF with ``~sqrt(n)`` lists (an HNSW coarse
    quantizer from 4096 lists on, so assigning a vector is a graph walk instead of ``nlist`` distances);
    vectors larger than ``pca_dim`` (32) dims are PCA-rotated to that many first (patches are smooth: measured on
    Fashion-MNIST k=9, 32 dims + exact re-rank of 8x more candidates keeps recall@64 >= 0.95 and adds
    vectors 2.7x faster than 48 dims), coded SQ8 (1 byte/dim) or, if that does not fit, PQ.
    ``copies`` sub-indexes of ``n`` vectors each share the decision and the budget (edge families).
    Raises a one-line error naming what would fit when nothing does.
    """
    memory_bytes = memory_bytes // max(1, copies)
    if spec != "auto":
        new_index(spec, d)  # a one-line error now for a key FAISS cannot build, not after loading data
        nlist = _nlist_of(spec)
        plan = IndexPlan(spec, n, d, nlist, estimate_bytes(spec, n, d, nlist), _ntrain(n, nlist, spec), "given")
        return _check_budget(plan, memory_bytes)
    if n <= FLAT_MAX and copies * n * d * 4 <= FLAT_MAX_BYTES:
        key = "Flat"
        plan = IndexPlan(key, n, d, 0, estimate_bytes(key, n, d), 0, f"{n:,} vectors of dim {d} fit {FLAT_MAX_BYTES >> 20} MiB: exact Flat")
        return _check_budget(plan, memory_bytes)
    nlist = min(NLIST_MAX, int(2 ** round(math.log2(max(2 * math.sqrt(n), 64)))))
    quant = f"IVF{nlist}_HNSW32" if nlist >= 4096 else f"IVF{nlist}"
    pre = f"PCAR{pca_dim}," if d > pca_dim else ""
    dim = min(d, pca_dim)
    codecs = ["SQ8"] + [f"PQ{m}" for m in _pq_choices(dim)]
    for codec in codecs:
        key = f"{pre}{quant},{codec}"
        size = estimate_bytes(key, n, d, nlist)
        if size <= memory_bytes:
            why = (f"{n:,} vectors of dim {d}: too many for Flat; IVF with {nlist} lists (~2 sqrt(n))"
                   + (f", PCA {d}->{dim} dims" if pre else "") + f", {codec} codes fit --memory; exact re-rank after search")
            return IndexPlan(key, n, d, nlist, size, _ntrain(n, nlist, key), why)
    smallest = estimate_bytes(f"{pre}{quant},{codecs[-1]}", n, d, nlist)
    raise PatchdbError(
        f"no index for {n:,} vectors of dim {d} fits --memory {_gib(memory_bytes)}; "
        f"the smallest ({pre}{quant},{codecs[-1]}) needs {_gib(smallest)}: raise --memory or use fewer images (--limit)"
    )


def _pq_choices(dim: int) -> list[int]:
    """PQ sub-quantizer counts that divide ``dim``, largest first, at least 2 dims each."""
    return [m for m in range(min(64, dim // 2), 0, -1) if dim % m == 0][:4] or [1]


def _nlist_of(key: str) -> int:
    for part in key.split(","):
        if part.startswith("IVF"):
            return int(part[3:].split("_")[0])
    return 0


def _ntrain(n: int, nlist: int, key: str) -> int:
    """Training sample: ~20 points per list (faiss warns below 39; coarse centroids only need to tile
    the data, and the exact re-rank absorbs the rest), at least 20,000 for PCA and the SQ/PQ codecs."""
    if nlist == 0 and "PQ" not in key and "SQ" not in key and "PCA" not in key:
        return 0
    return int(min(n, max(20 * nlist, 20_000)))


def _check_budget(plan: IndexPlan, memory_bytes: int) -> IndexPlan:
    if plan.bytes > memory_bytes:
        raise PatchdbError(
            f"index '{plan.key}' for {plan.n:,} vectors needs {_gib(plan.bytes)}, over --memory {_gib(memory_bytes)}; "
            "use --index-key auto (it picks compressed codes) or raise --memory"
        )
    return plan


_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_bytes(text: str, what: str = "size") -> int:
    """Bytes from ``8GiB``, ``16G``, ``500MB`` or a plain number of bytes; ``what`` names the option in errors."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([kmgt]?)(i?b)?\s*", str(text).lower())
    if not match or float(match.group(1)) * _UNITS[match.group(2)] < 1:
        raise PatchdbError(f"{what} '{text}' is not a size; write e.g. 8GiB, 16G or 500MB")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def new_index(key: str, d: int) -> faiss.Index:
    try:
        return faiss.index_factory(d, key)
    except RuntimeError as err:
        first = " ".join(str(err).split())[-120:]
        raise PatchdbError(f"FAISS cannot build index key '{key}' for dim {d} ({first}); see the index_factory docs") from None


def train(key: str, sample: np.ndarray, niter: int = 10) -> faiss.Index:
    """An empty index of ``key`` trained on ``sample`` (n, d) float32 (ten k-means rounds suffice here)."""
    _, d = sample.shape
    index = new_index(key, d)
    if not index.is_trained:
        ivf = as_ivf(index)
        if ivf is not None:
            ivf.cp.niter = niter
            ivf.cp.verbose = False
            ivf.cp.max_points_per_centroid = 10_000_000  # we already sampled; don't subsample again
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return index


def add_chunks(index: faiss.Index, chunks: Iterable[np.ndarray], total: int, desc: str, progress: bool = True) -> None:
    """Add vectors chunk by chunk (never all of them in memory); ids are the running count."""
    with tqdm(total=total, desc=desc, unit="vec", unit_scale=True, disable=not progress, leave=False) as bar:
        for chunk in chunks:
            index.add(np.ascontiguousarray(chunk, dtype=np.float32))
            bar.update(len(chunk))


def as_ivf(index: faiss.Index):
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def search_params(index: faiss.Index, nprobe: int = 0, ef: int = 0, id_range: tuple[int, int] | None = None,
                  max_codes: int = 0):
    """SearchParameters for ``index``: nprobe / efSearch, an optional id range ``[lo, hi)`` and an optional
    cap on the codes one query scans (IVF: lists are visited nearest first and the scan stops after the
    list that reaches ``max_codes``; 0: no cap).

    Returns (params, keep): ``keep`` holds the SWIG objects params point to (they must outlive the search).
    """
    sel = faiss.IDSelectorRange(int(id_range[0]), int(id_range[1])) if id_range is not None else None
    keep = [sel]
    ivf = as_ivf(index)
    if ivf is not None:
        params = faiss.SearchParametersIVF(nprobe=max(1, int(nprobe or ivf.nprobe)), max_codes=int(max_codes))
        if isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW):
            qp = faiss.SearchParametersHNSW(efSearch=int(ef or max(64, 2 * params.nprobe)))
            params.quantizer_params = qp
            keep.append(qp)
    else:
        params = faiss.SearchParameters()
    if sel is not None:
        params.sel = sel
    if isinstance(index, faiss.IndexPreTransform):
        keep.append(params)
        params = faiss.SearchParametersPreTransform(index_params=params)
    return params, keep


def search(index: faiss.Index, queries: np.ndarray, k: int, nprobe: int = 0, ef: int = 0,
           id_range: tuple[int, int] | None = None, max_codes: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (distances, ids) of ``queries`` (m, d) float32; ids -1 where fewer exist."""
    params, keep = search_params(index, nprobe, ef, id_range, max_codes)
    dist, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), int(k), params=params)
    del keep
    return dist, ids


def exact_knn(queries: np.ndarray, chunks: Iterable[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` (distances, ids) of ``queries`` over vectors streamed in chunks (one result heap)."""
    m, _ = queries.shape  # queries (m, d) float32
    heap = faiss.ResultHeap(m, k)
    offset = 0
    for chunk in chunks:
        dist, ids = faiss.knn(queries, np.ascontiguousarray(chunk, dtype=np.float32), min(k, len(chunk)))
        heap.add_result(dist, np.where(ids >= 0, ids + offset, -1))
        offset += len(chunk)
    heap.finalize()
    return heap.D, heap.I


def recall_at(found_dist: np.ndarray, kth: np.ndarray, k: int) -> float:
    """Tie-aware recall@k: share of the k best *exact* distances among the found candidates that are
    no worse than the true k-th distance (background patches repeat, so ids alone undercount)."""
    best = np.sort(found_dist, axis=1)[:, :k]
    return float((best <= kth[:, None] * (1 + 1e-5) + 1e-6).mean())


#: Re-rank factors tried: search k * f candidates by approximate distance, re-rank them exactly. Where
#: the codes (PCA 32 + SQ8) blur near-identical windows, recall stops growing with nprobe and only a
#: larger f helps: Fashion-MNIST k = 9 interior, 10,000 images, nprobe 256: f = 8 0.925, 16 0.948,
#: 32 0.965, and nprobe 2048 adds nothing; nprobe 64 x f 32 reaches 0.951 at about the cost (search +
#: re-rank) of nprobe 256 x f 8 (README "Tuning the re-rank factor").
K_FACTORS = (1, 2, 4, 8, 16, 32)


def tune(index: faiss.Index, queries: np.ndarray, kth: np.ndarray, true_dist: Callable[[np.ndarray], np.ndarray],
         k: int, target: float = RECALL_TARGET) -> dict:
    """Cheapest (nprobe, k_factor) reaching ``target`` recall@k; the curve is kept for ``info``.

    ``kth`` (m,) are the true k-th distances; ``true_dist(ids)`` gives exact distances of found ids
    (inf for -1), as the engine's exact re-rank sees them. The cost of a pair is its search plus that
    re-rank (``ms_per_query``), since a larger factor moves work from the lists to the re-rank, so the
    first nprobe that reaches ``target`` (often with a large factor) is not where the search stops. When
    no pair reaches ``target``, the one with the best recall is kept and a warning names the shortfall.
    """
    ivf = as_ivf(index)
    curve = []
    nprobes = [0] if ivf is None else [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256) if p <= ivf.nlist]
    for nprobe in nprobes:
        level = []
        for factor in K_FACTORS:
            start = time.perf_counter()
            _, ids = search(index, queries, k * factor, nprobe)
            dist = true_dist(ids)
            ms = 1e3 * (time.perf_counter() - start) / len(queries)
            level.append({"nprobe": nprobe, "k_factor": factor, "recall": recall_at(dist, kth, k), "ms_per_query": ms})
        curve += level
        # Stop once a pair reaches the target and this nprobe's cheapest pair already costs more than it:
        # more lists cost more, so a pair with a smaller factor at a larger nprobe can no longer win.
        good = [c["ms_per_query"] for c in curve if c["recall"] >= target]
        if good and min(c["ms_per_query"] for c in level) >= min(good):
            break
    good = [c for c in curve if c["recall"] >= target]
    best = min(good, key=lambda c: c["ms_per_query"]) if good else max(curve, key=lambda c: c["recall"])
    if not good:
        log.warning("recall@%d reaches %.3f at most (nprobe %d, re-rank factor %d), below the target %.2f; "
                    "raise --topk or pass --nprobe / --k-factor at sampling time", k, best["recall"], best["nprobe"],
                    best["k_factor"], target)
    set_nprobe(index, best["nprobe"])
    return {**best, "efSearch": 0, "curve": curve}


def nominal_codes(index: faiss.Index, nprobe: int = 0) -> int:
    """Codes ``nprobe`` lists hold on average (``nprobe * ntotal / nlist``): what one query scans when the
    lists are balanced. 0 for an index without lists."""
    ivf = as_ivf(index)
    if ivf is None or not ivf.nlist:
        return 0
    return math.ceil(max(1, int(nprobe or ivf.nprobe)) * ivf.ntotal / ivf.nlist)


def set_nprobe(index: faiss.Index, nprobe: int) -> None:
    ivf = as_ivf(index)
    if ivf is not None and nprobe:
        ivf.nprobe = int(nprobe)


def remove_ids(index: faiss.Index, mask: np.ndarray) -> int:
    """Drop the vectors whose id ``v`` has ``mask[v]`` (bool, one per possible id) from an IVF index, in
    place; ids of the others are unchanged (IVF lists store them). Returns how many were removed.
    Not for Flat indexes, whose ids are positions and would shift."""
    if as_ivf(index) is None:
        raise ValueError("remove_ids needs an IVF index")
    bitmap = np.packbits(np.ascontiguousarray(mask, dtype=bool), bitorder="little")
    sel = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bitmap))
    return int(index.remove_ids(sel))


def serialize(index: faiss.Index) -> np.ndarray:
    """The index as a uint8 array (``faiss.serialize_index``), ready for an HDF5 dataset."""
    return faiss.serialize_index(index)


class _DatasetReader:
    """FAISS reads through this callback (``PyCallbackIOReader``) straight from an array-like of uint8
    (an HDF5 dataset), in chunks: no whole copy of the serialized index in memory
    (``deserialize_index`` copies it into a zero-filled vector first: for a 2.5 GB sub-index that copy
    took longer than the read itself, and doubled the peak)."""

    def __init__(self, data, chunk: int = 64 * 2**20):
        self.data, self.chunk, self.pos, self.buf, self.off = data, chunk, 0, b"", 0

    def __call__(self, n: int) -> bytes:
        pieces = []
        while n > 0:
            if self.off == len(self.buf):
                if self.pos >= len(self.data):
                    break
                self.buf = np.ascontiguousarray(self.data[self.pos : self.pos + self.chunk], dtype=np.uint8).tobytes()
                self.pos, self.off = self.pos + len(self.buf), 0
            take = min(n, len(self.buf) - self.off)
            pieces.append(self.buf[self.off : self.off + take])
            self.off, n = self.off + take, n - take
        return b"".join(pieces)


def read_index(data) -> faiss.Index:
    """An index from its serialized bytes in ``data`` (an HDF5 dataset or array of uint8, read in chunks)."""
    try:
        return faiss.read_index(faiss.PyCallbackIOReader(_DatasetReader(data)))
    except (RuntimeError, MemoryError):
        raise PatchdbError("a stored FAISS index is corrupted and cannot be read; rebuild the file with patchdb build") from None


def deserialize(data: np.ndarray) -> faiss.Index:
    try:
        return faiss.deserialize_index(np.ascontiguousarray(data, dtype=np.uint8))
    except RuntimeError:
        raise PatchdbError("a stored FAISS index is corrupted and cannot be read; rebuild the file with patchdb build") from None


def set_threads(n: int | None) -> None:
    if n:
        faiss.omp_set_num_threads(int(n))


ChunkFn = Callable[[], Iterable[np.ndarray]]
