"""List-major ("big batch") search of an IVF scalar-quantizer index: every probed list is decoded once for
all the queries that probe it, and their distances are one dense product.

FAISS's own search walks query by query: each query decodes the codes of its lists one by one. For
code widths that are not a multiple of 8 (9 and 25 dims: the 3 x 3 and 5 x 5 windows of one channel) its
SQ8 distance falls back to a scalar loop, ~30 ns per code. A batch of samples asks tens of thousands
of queries of one sub-index at one step, so most lists are probed by dozens of them: grouping the
queries by list (faiss ``contrib/big_batch_search.py`` does the same) turns the scan into one BLAS
product per list.

The candidates are those FAISS would scan: each query's nprobe nearest lists (found exactly here,
where FAISS's HNSW coarse quantizer finds them approximately), nearest first until ``max_codes`` codes
are scanned (the last list cut short, as FAISS does). With an id range (a class of a conditional batch)
only the codes of the range are scanned and counted, so a class's query scans as many of its class's
codes as an unconditional one scans of all (FAISS's selector counts the cap its own way). Distances are
the decoded codes' (as FAISS's), ``|q|^2 - 2 q.y + |y|^2`` in float32, so they agree with FAISS's to
rounding; the exact re-rank that follows recomputes every kept candidate's weight from the images.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import faiss
import numpy as np

#: Query rows per pass: the result heaps (rows x want x 12 bytes) stay under ~400 MB at want = 2,048.
ROWS_PER_PASS = 16384
#: The lists of each query are scanned in passes by their rank in its probe order (nearest 2, next 6,
#: the rest): after the nearest lists the result heaps hold near-final candidates, so the far lists'
#: codes mostly fail the heap's first comparison instead of being inserted (with K x factor = 1,024-2,048
#: kept per query, heap insertions cost more than the distances; measured 1.6x fewer seconds in the heap
#: at k = 9, batch 20).
RANK_PASSES = (0, 2, 8)
#: Distance entries per dense block (m queries x n codes of one list).
BLOCK_ELEMENTS = 4_000_000


class ListScanner:
    """What a list-major scan of one IVF-SQ index needs, made once per loaded index: the transform
    chain, the IVF part, the list sizes and the coarse centroids."""

    def __init__(self, index: faiss.Index):
        # No reference to ``index`` itself: the scanner is kept in a weak-keyed map and must not keep the
        # index alive once the file's memory budget drops it (its parts here are views, not owners).
        self.chain = []
        inner = index
        if isinstance(index, faiss.IndexPreTransform):
            self.chain = [faiss.downcast_VectorTransform(index.chain.at(i)) for i in range(index.chain.size())]
            inner = faiss.downcast_index(index.index)
        self.ivf = faiss.downcast_index(inner)
        invlists = self.ivf.invlists
        self.sizes = np.array([invlists.list_size(i) for i in range(self.ivf.nlist)], dtype=np.int64)
        self.sq = self.ivf.sq
        self.by_residual = bool(self.ivf.by_residual)
        self.centroids = self.ivf.quantizer.reconstruct_n(0, self.ivf.nlist)
        self._range_counts: dict = {}

    @staticmethod
    def supports(index: faiss.Index) -> bool:
        """IVF with scalar-quantizer codes (under an optional transform chain), L2."""
        inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexPreTransform) else index
        return isinstance(inner, faiss.IndexIVFScalarQuantizer) and inner.metric_type == faiss.METRIC_L2

    def transform(self, x: np.ndarray) -> np.ndarray:
        for vt in self.chain:
            x = vt.apply(x)
        return np.ascontiguousarray(x, dtype=np.float32)

    def assign(self, xq: np.ndarray, nprobe: int) -> np.ndarray:
        """The nprobe nearest lists of each (transformed) query, nearest first, found exactly: one product
        with the centroids (16,384 x <= 64 floats), cheaper for a batch than walking FAISS's HNSW coarse
        quantizer (which finds them approximately) query by query."""
        _, lists = faiss.knn(xq, self.centroids, min(nprobe, self.ivf.nlist))
        return lists

    def list_ids(self, l: int) -> np.ndarray:
        """The ids (n,) of list ``l``."""
        return faiss.rev_swig_ptr(self.ivf.invlists.get_ids(l), self.ivf.invlists.list_size(l)).copy()

    def list_vectors(self, l: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids (n,), decoded vectors (n, d) float32) of list ``l``."""
        invlists = self.ivf.invlists
        n = invlists.list_size(l)
        ids = faiss.rev_swig_ptr(invlists.get_ids(l), n).copy()
        codes = faiss.rev_swig_ptr(invlists.get_codes(l), n * invlists.code_size).reshape(n, invlists.code_size)
        y = self.sq.decode(codes)
        if self.by_residual:
            y += self.centroids[l]
        return ids, y

    def search(self, queries: np.ndarray, k: int, nprobe: int = 0, max_codes: int = 0,
               id_range: tuple[int, int] | None = None, sort: bool = True,
               vectors: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (distances, ids) of ``queries`` (m, d) float32 (before the transform chain); ids -1
        where fewer were scanned (distances then float32 max). ``max_codes``: FAISS's cap (0: every
        probed list whole); ``id_range``: only ids in ``[lo, hi)``; ``sort`` False: each row's results in
        no particular order (saves sorting them when all are re-ranked anyway). ``vectors``: ids -> the
        stored vectors themselves (n, d) float32, before the transform chain: the lists are then scanned
        with exact distances to those instead of the decoded codes (the codes only choose the lists)."""
        nprobe = max(1, int(nprobe or self.ivf.nprobe))
        raw = np.ascontiguousarray(queries, dtype=np.float32)
        xq = self.transform(raw)
        dist = np.empty((len(xq), k), dtype=np.float32)
        ids = np.empty((len(xq), k), dtype=np.int64)
        for s in range(0, len(xq), ROWS_PER_PASS):
            dist[s : s + ROWS_PER_PASS], ids[s : s + ROWS_PER_PASS] = self._search(
                xq[s : s + ROWS_PER_PASS], raw[s : s + ROWS_PER_PASS], k, nprobe, max_codes, id_range, sort, vectors)
        return dist, ids

    def _in_range(self, id_range) -> np.ndarray:
        """Codes per list whose id is in ``[lo, hi)`` (kept per range: a class-conditional batch asks for
        the same few ranges at every step)."""
        counts = self._range_counts.get(id_range)
        if counts is None:
            invlists, lo, hi = self.ivf.invlists, id_range[0], id_range[1]
            counts = np.zeros(self.ivf.nlist, dtype=np.int64)
            for l in np.flatnonzero(self.sizes).tolist():
                ids = faiss.rev_swig_ptr(invlists.get_ids(l), int(self.sizes[l]))
                counts[l] = np.count_nonzero((ids >= lo) & (ids < hi))
            self._range_counts[id_range] = counts
        return counts

    def _search(self, xq, raw, k, nprobe, max_codes, id_range, sort, vectors):
        """:meth:`search` of transformed queries ``xq`` (``raw``: as given, for exact ``vectors``)."""
        lists = self.assign(xq, nprobe)
        if vectors is not None:  # distances to the stored vectors: the queries as given
            xq = raw
        counts = self.sizes if id_range is None else self._in_range(tuple(id_range))
        sizes = np.where(lists >= 0, counts[np.maximum(lists, 0)], 0)
        limits = sizes
        if max_codes:  # lists are scanned until max_codes codes (of the id range), the last one cut short
            before = np.cumsum(sizes, axis=1) - sizes
            limits = np.clip(max_codes - before, 0, sizes)
        rows, ranks = np.nonzero(limits > 0)
        heap = faiss.ResultHeap(len(xq), k)
        xq2 = xq * -2  # distances up to |q|^2 (the same for a row): |y|^2 - 2 q.y
        # Exact vectors: one pass (gathering them again per pass costs more than the heap saves; K is small).
        bounds = [0, nprobe] if vectors is not None else [r for r in RANK_PASSES if r < nprobe] + [nprobe]
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            sel = (ranks >= lo) & (ranks < hi)
            self._scan(heap, xq2, rows[sel], lists[rows[sel], ranks[sel]], limits[rows[sel], ranks[sel]], id_range,
                       vectors)
        if sort:
            heap.finalize()
        filled = heap.I >= 0  # unfilled slots (fewer than k scanned) keep id -1 and float32 max
        heap.D += np.where(filled, np.einsum("ij,ij->i", xq, xq)[:, None], 0)  # |q|^2, left out of the ranking
        return heap.D, heap.I

    def _scan(self, heap, xq2, rows, probed, limits, id_range, vectors=None) -> None:
        """Add to ``heap`` the codes of lists ``probed`` for query rows ``rows`` (pairs), each pair's
        first ``limits`` codes (of the id range), list by list (``vectors``: exact vectors of the ids)."""
        order = np.argsort(probed, kind="stable")
        rows, probed, limits = rows[order], probed[order], limits[order]
        starts = np.flatnonzero(np.r_[True, probed[1:] != probed[:-1]]) if len(probed) else np.zeros(0, np.int64)
        ends = np.r_[starts[1:], len(probed)]
        for a, b in zip(starts.tolist(), ends.tolist()):
            if vectors is None:
                list_ids, y = self.list_vectors(int(probed[a]))
            else:
                list_ids = self.list_ids(int(probed[a]))
                y = vectors(list_ids)
            y_sq = np.einsum("ij,ij->i", y, y)
            rank = np.arange(1, len(list_ids) + 1)  # a code's rank among the list's codes of the range
            if id_range is not None:  # ids outside the range are neither scanned nor counted
                outside = (list_ids < id_range[0]) | (list_ids >= id_range[1])
                y_sq[outside] = np.inf
                rank = np.cumsum(~outside)
            subset, limit = rows[a:b], limits[a:b]
            step = max(1, BLOCK_ELEMENTS // len(list_ids))
            for s in range(0, len(subset), step):
                d = xq2[subset[s : s + step]] @ y.T
                d += y_sq
                cut = np.flatnonzero(limit[s : s + step] < rank[-1])
                for r in cut.tolist():  # the list that crossed max_codes: only its first codes
                    d[r, rank > limit[s + r]] = np.inf
                heap.add_result_subset(subset[s : s + step], d, list_ids)


def cached_scanner(index: faiss.Index) -> ListScanner | None:
    """The :class:`ListScanner` of a loaded index (None when it cannot be scanned by list), made on first
    use and dropped with the index."""
    scanner = _SCANNERS.get(index)
    if scanner is None and ListScanner.supports(index):
        scanner = _SCANNERS[index] = ListScanner(index)
    return scanner


_SCANNERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
