"""Retrieval through an index file: the settings, the search and the logits of retrieved candidates.

One :class:`Retrieval` decides which candidates a query window sees (docs/math.md "Approximate mode"):
the approximate engine (:mod:`.approx`) and attribution through an index (:mod:`.contrib`) both take
it and both call the helpers below, so attributing a sample sees the candidates that made it. The
sampler records it in every sample file (:meth:`Retrieval.to_dict`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace

import torch

from ..errors import PatchdbError
from ..indexing import faiss_ops as fx
from ..indexing.batch_search import cached_scanner
from ..schedule import sample_only

#: Candidates kept per query window.
DEFAULT_TOPK = 64
#: Default cap on the codes one query window scans, as a multiple of what its nprobe lists hold on
#: average (:func:`patchdb.indexing.faiss_ops.nominal_codes`). Queries whose lists are balanced barely
#: reach it; on black-background data a few lists hold most near-dark windows and queries on background
#: would scan them all. Below 1 it also cuts balanced scans (faster, less accurate).
DEFAULT_SCAN_CAP = 1.0
#: Uniform sample size of the tail correction (0: off). Measured: needed at high noise, where the
#: top-K hold a small share of the weight.
DEFAULT_TAIL_CORRECTION = 1024
#: Step-to-step reuse (0: off): at a step whose patch size is the previous step's, each query window
#: re-ranks the ``reuse * topk`` candidates that ranked best at the previous step instead of searching
#: the index again (see :class:`patchdb.denoisers.approx.ApproxMachine`).
DEFAULT_REUSE = 0
#: A list-major search visits every probed list once per call (a Python step, a decode, a small product):
#: below this many probing queries per list on average (queries x nprobe / nlist) FAISS's own search is
#: used instead. Measured at N = 60,000: a class-conditional batch of 20 searches class by class, ~2,000
#: queries x 128 probes over 16,384 lists (16 per list), and ran 1.3x slower by list than by query.
LIST_SCAN_MIN_QUERIES_PER_LIST = 32
#: Largest window (C k^2 values) a list-major search scans with exact distances (0: none). Off by default:
#: at N = 60,000 (Fashion-MNIST, batch 64) ``--exact-scan 81`` (3 x 3 to 9 x 9 windows) sampled at the same
#: speed as the decoded codes (18.9 against 18.1 CPU s per sample; gathering every list's windows costs what
#: the smaller re-rank saves), slower at batch 20, with the same r^2 against exact samples and 1.3 GB less
#: peak memory (docs/results/throughput).
DEFAULT_EXACT_SCAN = 0
#: Re-rank factor cap of an exactly ranked search: it keeps the topk x 8 nearest, whose weights the
#: re-rank computes in float64 (the tail sample estimates the rest, as for every search).
EXACT_SCAN_FACTOR = 8


@dataclass(frozen=True)
class Retrieval:
    """Every knob of retrieval through an index file; the defaults are the CLI's.

    Attributes
    ----------
    topk : K candidates kept per query window.
    nprobe, ef : IVF lists probed and HNSW efSearch (0: the tuned defaults stored in the file).
    k_factor : search ``topk * k_factor`` candidates by approximate distance and re-rank all of them
        exactly (0: the tuned default stored in the file; 1 with a Flat index).
    scan_cap : each query scans its lists nearest first and stops after ``scan_cap`` times the codes
        its nprobe lists hold on average (0: no cap, every probed list whole).
    tail_correction : m > 0 adds a uniform sample of m candidates, weighted ``n_total / m`` with the
        retrieved ones masked out (an estimate of the ignored mass); 0 turns it off.
    tail_seed : seed of that sample.
    reuse : step-to-step coherence. R > 0: at a step of the same patch size as the previous call on the
        same batch (same labels, every image correlated >= 0.9 with the previous call's), a query window
        skips the index and re-ranks the ``R * topk`` candidates that had the best exact weights at the
        previous step (12 of the 20 steps of the Fashion-MNIST schedules); 0: search at every step.
    across : with ``reuse``, carry the candidates across patch-size changes too: a query pixel re-ranks
        the windows (same training image, same position, the new size) that ranked best for it at the
        previous step, so only the first step of a trajectory searches the index.
    refresh : with ``reuse``, a step that re-ranks carried candidates also searches the index for
        ``topk`` more, scanning ``refresh`` times the codes of a normal search (its scan cap scaled),
        nearest lists first; 0: no search at those steps.
    sample_above : T > 0: at steps whose time ``t`` is T or more, skip the index: no search and no
        re-rank, D is the uniform tail sample's estimate over every candidate (plus the blank windows,
        counted exactly). At high noise the weights are nearly flat and the retrieved top-K hold a few
        percent of the mass at most, so the sample carries D anyway (docs/math.md "Approximate mode").
        Needs ``tail_correction``; 0: off.
    sample_size : the uniform sample's size at those sample-only steps (0: ``tail_correction``). There it
        carries all of D, and it is one dense product per sub-index (no index, no gathers), so a larger
        sample there costs little beside a search step.
    list_scan : search IVF scalar-quantizer indexes list by list (:mod:`patchdb.indexing.batch_search`):
        each probed list decoded once for all the queries of a call that probe it, distances one dense
        product; the same candidates as FAISS's query-by-query search up to float rounding, the nearest
        lists found exactly (``ef`` unused). False: FAISS's own search (files that do not record this
        knob were drawn that way).
    exact_scan : with ``list_scan``, windows of at most this many values (C k^2) are scanned (outside class
        ranges: unconditional batches) with their exact distances, gathered from the stored images,
        instead of the decoded codes, which then only choose the lists: the search ranks exactly, so it
        keeps ``topk x min(k_factor, 8)`` candidates (:data:`EXACT_SCAN_FACTOR`) instead of the
        ``topk x k_factor`` a coded ranking needs. 0: off (the default; files that do not record it).
    """

    topk: int = DEFAULT_TOPK
    nprobe: int = 0
    ef: int = 0
    k_factor: int = 0
    scan_cap: float = DEFAULT_SCAN_CAP
    tail_correction: int = DEFAULT_TAIL_CORRECTION
    tail_seed: int = 0
    reuse: int = DEFAULT_REUSE
    across: bool = False
    refresh: float = 0.0
    sample_above: float = 0.0
    sample_size: int = 0
    list_scan: bool = True
    exact_scan: int = DEFAULT_EXACT_SCAN

    def __post_init__(self) -> None:
        if int(self.topk) < 1:
            raise PatchdbError(f"--topk must be at least 1, got {self.topk}")
        for name in ("scan_cap", "refresh", "sample_above"):
            if not (getattr(self, name) >= 0 and math.isfinite(getattr(self, name))):
                raise PatchdbError(f"--{name.replace('_', '-')} must be 0 (off) or positive, got {getattr(self, name)}")
        for name in ("nprobe", "ef", "k_factor", "tail_correction", "reuse", "exact_scan", "sample_size"):
            if int(getattr(self, name)) < 0:
                raise PatchdbError(f"--{name.replace('_', '-')} must be 0 or positive, got {getattr(self, name)}")
        for f in fields(self):  # normalise types so that equal settings compare and record equal
            kind = (float if f.name in ("scan_cap", "refresh", "sample_above")
                    else bool if f.name in ("across", "list_scan") else int)
            object.__setattr__(self, f.name, kind(getattr(self, f.name)))

        if self.sample_above and not self.tail_correction:
            raise PatchdbError("--sample-above needs the uniform sample that replaces the index at those steps: "
                               "give --tail-correction > 0 (default 1024) or leave --sample-above at 0")
        if self.sample_size and not self.sample_above:
            raise PatchdbError("--sample-size is the sample of --sample-above steps: give --sample-above T "
                               "(e.g. 0.9) or leave --sample-size at 0")

    def sample_only(self, t: float) -> bool:
        """Whether a step at time ``t`` skips the index (``sample_above``)."""
        return sample_only(t, self.sample_above)

    def with_options(self, **options) -> Retrieval:
        """A copy with some knobs changed (None leaves a knob as it is)."""
        return replace(self, **{k: v for k, v in options.items() if v is not None})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> Retrieval:
        """The settings a file records (knobs it lacks take the defaults; unknown keys are ignored)."""
        known = {f.name for f in fields(cls)}
        if data and "list_scan" not in data:  # recorded before list-major search existed: FAISS's search
            data = {**data, "list_scan": False}
        if data and "exact_scan" not in data:  # ... and before exact scans
            data = {**data, "exact_scan": 0}
        return cls(**{k: v for k, v in (data or {}).items() if k in known and v is not None})

    def factor(self, entry) -> int:
        """The re-rank factor of a stored entry: ours, else the tuned one the file stores."""
        return self.k_factor or int(entry.info.get("k_factor", 1))

    def wanted(self, entry, available: int, exact: bool = False) -> int:
        """How many candidates to search for: K times the re-rank factor (at most
        :data:`EXACT_SCAN_FACTOR` for an exactly ranked scan), never more than exist."""
        factor = min(self.factor(entry), EXACT_SCAN_FACTOR) if exact else self.factor(entry)
        return min(self.topk * factor, available)

    def retrieve(self, index, queries: torch.Tensor, entry, available: int, id_range: tuple[int, int] | None,
                 windows: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The candidates (R, P) of a search step: :meth:`search` for :meth:`wanted` of them, scanning
        exactly (``windows``: ids -> (n, C k^2) float32 stored windows) where :attr:`exact_scan` allows."""
        # Not within a class range: a conditional batch searches class by class, each list would be
        # gathered again for every class (the codes are decoded again instead, ~20x cheaper).
        exact = (self.list_scan and id_range is None and 0 < queries.shape[1] <= self.exact_scan
                 and list_scanner(index, queries.shape[0], self.nprobe) is not None)
        want = self.wanted(entry, available, exact)
        vectors = (lambda ids: windows(torch.from_numpy(ids)).numpy()) if exact else None
        return self.search(index, queries, want, id_range, vectors=vectors)

    def search(self, index, queries: torch.Tensor, want: int, id_range: tuple[int, int] | None,
               scan: float = 1.0, vectors=None) -> torch.Tensor:
        """:func:`search_ids` with these settings; ``scan`` scales the scan cap (a lighter search)."""
        cap = self.scan_cap * scan if self.scan_cap else scan if scan < 1 else 0.0
        return search_ids(index, queries, want, self.nprobe, self.ef, id_range, cap, self.list_scan, vectors)

    def sample_count(self, sample_only: bool = False) -> int:
        """m, the uniform sample's size: :attr:`sample_size` at a sample-only step when set, else
        :attr:`tail_correction` (0: no sample)."""
        return (self.sample_size or self.tail_correction) if sample_only else self.tail_correction

    def tail_sample(self, key: tuple[int, int, int], id_lo: int, id_hi: int,
                    sample_only: bool = False) -> torch.Tensor | None:
        """The uniform tail sample (m,) of ids ``[id_lo, id_hi)`` of sub-index ``key`` (m:
        :meth:`sample_count`); None when off. Seeded by the sub-index and the range, so every call on the
        same range draws the same ids."""
        m = self.sample_count(sample_only)
        if not m:
            return None
        gen = torch.Generator().manual_seed(hash((self.tail_seed, *key, id_lo)) % 2**31)
        return torch.randint(id_lo, id_hi, (m,), generator=gen)


def list_scanner(index, rows: int, nprobe: int = 0):
    """The :class:`patchdb.indexing.batch_search.ListScanner` that searches ``rows`` queries of ``index``
    at ``nprobe`` (0: its own), or None: the index cannot be scanned by list, or the call has fewer than
    :data:`LIST_SCAN_MIN_QUERIES_PER_LIST` probing queries per list (FAISS's search is then cheaper)."""
    scanner = cached_scanner(index)
    if scanner is None:
        return None
    ivf = scanner.ivf
    probe = max(1, nprobe or int(ivf.nprobe))
    return scanner if rows * min(probe, ivf.nlist) >= LIST_SCAN_MIN_QUERIES_PER_LIST * ivf.nlist else None


def search_ids(index, queries: torch.Tensor, want: int, nprobe: int = 0, ef: int = 0,
               id_range: tuple[int, int] | None = None, scan_cap: float = DEFAULT_SCAN_CAP,
               list_scan: bool = False, vectors=None) -> torch.Tensor:
    """Ids (R, want) int64 of the ``want`` nearest stored vectors to ``queries`` (R, d) (already ``x / a``),
    -1 where fewer exist. Rows whose probed IVF lists held nothing (far-out queries at t ~ 1) are searched
    again with 8x more lists until they find candidates: a row without any would give 0/0. Each query
    stops scanning once it has scanned ``scan_cap`` times the codes its nprobe lists hold on average, the
    last list cut short (0: no cap; never capped when every list is probed). ``list_scan``: list by list
    (:class:`patchdb.indexing.batch_search.ListScanner`) where the index allows it and the call has at
    least :data:`LIST_SCAN_MIN_QUERIES_PER_LIST` queries per list; ``vectors`` (with it): ids -> stored
    vectors, to scan with exact distances.
    """
    q = queries.float().numpy()
    ivf = fx.as_ivf(index)
    probe = 0 if ivf is None else max(1, nprobe or int(ivf.nprobe))
    max_codes = 0
    if scan_cap and ivf is not None and probe < ivf.nlist:  # probing every list asks for an exhaustive scan
        max_codes = max(want, math.ceil(scan_cap * fx.nominal_codes(index, probe)))
    scanner = list_scanner(index, len(q), nprobe) if list_scan else None
    if scanner is not None:
        _, found = scanner.search(q, want, probe, max_codes, id_range, sort=False, vectors=vectors)  # all re-ranked
    else:
        _, found = fx.search(index, q, want, probe, ef, id_range, max_codes)
    ids = torch.from_numpy(found).long()
    if ivf is None:
        return ids
    empty = (ids < 0).all(1).nonzero().view(-1)
    while empty.numel() and probe < ivf.nlist:
        probe = min(ivf.nlist, probe * 8)
        if scanner is not None:  # uncapped: must find some
            _, again = scanner.search(q[empty.numpy()], want, probe, 0, id_range, sort=False, vectors=vectors)
        else:
            _, again = fx.search(index, q[empty.numpy()], want, probe, ef, id_range)
        ids[empty] = torch.from_numpy(again).long()
        empty = empty[(ids[empty] < 0).all(1)]
    return ids


def tail_hits(ids: torch.Tensor, sample: torch.Tensor, blank_mask: torch.Tensor | None,
              prepared: tuple | None = None) -> torch.Tensor:
    """(R, m) bool: sampled ids already counted exactly (among a row's retrieved ``ids`` (R, P), -1 for
    none, or blank). Masking them keeps the estimate of the ignored sum unbiased (the sample covers all
    ids). ``prepared``: :func:`prepare_tail` of ``sample`` and ``blank_mask``, when called for many row
    blocks of one sample. The hits are those :func:`mark_tail_hits` marks."""
    hit = torch.zeros(ids.shape[0], len(sample), dtype=torch.bool)
    return mark_tail_hits(hit, ids, prepared or prepare_tail(sample, blank_mask), True)


def prepare_tail(sample: torch.Tensor, blank_mask: torch.Tensor | None) -> tuple:
    """What :func:`mark_tail_hits` needs of a sample, made once: its sorted distinct ids, which sampled ids
    are blank (None when ``blank_mask`` is None), and the sample positions grouped by distinct id
    (positions in id order, each distinct id's first one and count)."""
    uniq, inverse, counts = torch.unique(sample, return_inverse=True, return_counts=True)
    order = torch.argsort(inverse, stable=True)
    first = torch.cumsum(counts, 0) - counts
    return uniq, None if blank_mask is None else blank_mask[sample], order, first, counts


def mark_tail_hits(out: torch.Tensor, ids: torch.Tensor, prepared: tuple, value) -> torch.Tensor:
    """Set ``out`` (R, m) to ``value``, in place, at the sampled ids a row already counts exactly (among its
    retrieved ``ids`` (R, P), -1 for none, or blank). Each retrieved id is looked up in the sorted distinct
    sample (no per-row sort) and only the hits are written: a row's retrieved ids rarely fall in the sample
    (P m / n_total of them, under one at CIFAR-10's k = 9 with P = 1,024 and m = 8,192)."""
    uniq, blank, order, first, counts = prepared
    if ids.shape[1]:
        pos = torch.searchsorted(uniq, ids).clamp_(max=len(uniq) - 1)
        rows, cols = (uniq[pos] == ids).nonzero(as_tuple=True)
        u = pos[rows, cols]
        for j in range(int(counts[u].max()) if len(u) else 0):  # a value drawn j + 1 times: each place
            more = counts[u] > j
            out[rows[more], order[first[u[more]] + j]] = value
    if blank is not None:
        out[:, blank] = value
    return out


def mask_tail_hits(logits: torch.Tensor, ids: torch.Tensor, prepared: tuple) -> torch.Tensor:
    """``logits`` (R, m) of the sampled ids with :func:`tail_hits` set to -inf, in place, without the (R, m)
    mask (:func:`mark_tail_hits`)."""
    return mark_tail_hits(logits, ids, prepared, -math.inf)


def window_logits(q: torch.Tensor, windows: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """``-|q_r - a phi_rj|^2 / 2b^2`` for query rows ``q`` (R, d) and their candidates ``windows`` (R, P, d),
    in float64 whatever the inputs: written as a difference (no cancellation of large terms), so at
    t = 0.05, where logits reach ~1e3, D stays ~1e-6 exact. Overwrites a float64 ``windows``."""
    return windows.double().mul_(-a).add_(q.double().unsqueeze(1)).square_().sum(-1).mul_(-0.5 / (b * b))


def expanded_logits(q: torch.Tensor, dots: torch.Tensor, norms: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """``-|q_r - a phi_rj|^2 / 2b^2`` (R, P) float64 from ``dots = q_r . phi_rj`` and ``norms = |phi_rj|^2``
    (:meth:`PatchSource.window_terms`). Expanded, so large terms cancel; in float64 that costs
    ~1e-16 * |q|^2 / 2b^2, about 1e-11 at t = 0.05 (b = 0.078) for 17 x 17 windows, where logits reach 1e3."""
    sq = q.double().square().sum(-1, keepdim=True)
    return dots.mul(2 * a).sub_(norms * (a * a)).sub_(sq).mul_(0.5 / (b * b))

