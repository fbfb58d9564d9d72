"""Approximate mode: FAISS top-K per query window, exact re-rank, ignored-mass bound (SPEC.md "Exact mode").

Per query window ``x_p`` of a family that has an index, the index returns the K nearest stored
windows to ``x_p / a_t`` (the same ranking as the weights at every ``t``); their exact log-weights are
recomputed from the stored images and the denoiser is normalised over them. Every ignored candidate
weighs at most the smallest retrieved weight ``w_K``, so the ignored share of the mass is at most
``B / (1 + B)`` with ``B = (n_total - K) w_K / sum_K w`` (rigorous when retrieval is exact, e.g. Flat).
Optional tail correction adds a uniform sample of all candidates, weighted ``n_total / m`` with the
retrieved ones masked out: a self-normalised importance-sampling estimate of the ignored mass.
Families with only N candidates per pixel (corners, the LS fallback) are evaluated exactly.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch

from .. import index as fx
from ..errors import PatchdbError
from ..indexfile import EXACT_FAMILIES, Entry, IndexFile
from ..patches import box_regions, box_sums, geometry, unfold_windows
from ..schedule import ScaleSchedule, alpha_sigma, check_patch_size, parse_schedule
from ..spec import Machine
from .softmax import SoftmaxAccumulator, with_ones

log = logging.getLogger(__name__)

DEFAULT_TOPK = 64
#: Rows x candidates x features per re-rank block (bounds memory, ~4 bytes each, x3 for indices).
RERANK_ELEMENTS = 8_000_000
#: x-independent corner / LS terms kept between calls, all sizes together (see
#: ApproxMachine._same_position_terms): every bbELS size of the Fashion-MNIST schedule at N = 60,000
#: takes ~0.8 GB.
SAME_POSITION_CACHE_BYTES = 1024 * 2**20
#: Default cap on the codes one query window scans, as a multiple of what its nprobe lists hold on
#: average (:func:`patchdb.index.nominal_codes`). Queries whose lists are balanced barely reach it; on
#: black-background data a few lists hold most near-dark windows and queries on background would scan
#: them all. Below 1 it also cuts balanced scans (faster, less accurate; see README "Scan cap").
DEFAULT_SCAN_CAP = 1.0


@dataclass
class StepReport:
    """What one denoiser call ignored: the bound on the ignored share of the weight mass, per query row."""

    t: float
    k: int
    rows: int
    bound_max: float  # max over rows of B / (1 + B)
    bound_median: float
    tail_median: float  # median tail share estimated by the uniform sample (nan when off)
    tail_used: bool
    seconds: float

    def line(self) -> str:
        tail = f", tail share est. median {self.tail_median:.2e}" if self.tail_used else ""
        return (f"t={self.t:.3f} k={self.k}: ignored-mass bound max {self.bound_max:.2e} "
                f"median {self.bound_median:.2e}{tail} ({self.seconds:.2f} s)")


class ApproxMachine:
    """Top-K denoiser of a local machine over an index file, same contract as :class:`ExactMachine`.

    Parameters
    ----------
    index : an open :class:`IndexFile`.
    machine : "els" or "bbels" (the file must hold its families).
    schedule : patch size per step; the size at time ``t`` is ``sizes[round(t * S) - 1]``.
    topk : K candidates retrieved per query window.
    nprobe, ef : IVF lists probed and HNSW efSearch (0: the tuned defaults stored in the file).
    k_factor : search ``topk * k_factor`` candidates by approximate distance and re-rank all of them
        exactly (0: the tuned default stored in the file; 1 with a Flat index).
    tail_samples : m > 0 turns on the tail correction with a uniform sample of m candidates.
    scan_cap : each query scans its lists nearest first and stops after ``scan_cap`` times the codes its
        nprobe lists hold on average (0: no cap, every probed list whole).
    dtype : compute dtype of the re-rank (float32 or float64).
    """

    def __init__(self, index: IndexFile, machine: str | Machine, schedule: ScaleSchedule | str | None = None,
                 topk: int = DEFAULT_TOPK, nprobe: int = 0, ef: int = 0, tail_samples: int = 0,
                 dtype: torch.dtype = torch.float32, seed: int = 0, k_factor: int = 0,
                 scan_cap: float = DEFAULT_SCAN_CAP):
        if not (scan_cap >= 0 and math.isfinite(scan_cap)):
            raise PatchdbError(f"--scan-cap must be 0 (no cap) or positive, got {scan_cap}")
        self.file = index
        self.machine = Machine.parse(machine)
        self.schedule = parse_schedule(schedule) if schedule is not None else None
        sizes = self.schedule.distinct() if self.schedule is not None else index.sizes
        index.check(self.machine, sizes)
        if topk < 1:
            raise PatchdbError(f"--topk must be at least 1, got {topk}")
        self.topk, self.nprobe, self.ef, self.tail = int(topk), int(nprobe), int(ef), int(tail_samples)
        self.k_factor = int(k_factor)
        self.scan_cap = float(scan_cap)
        self.dtype, self.seed = dtype, seed
        self.labels = index.labels()
        # Re-rank logits are computed in float64 whatever the dtype (see _denoise): the file's source is
        # float64 so gathered windows need no conversion (twice the memory of the images in float32).
        self.source = index.source()
        self.n_images = self.source.n
        self.reports: list[StepReport] = []
        self._same_pos_cache: dict = {}  # key -> (norms, centres) of _same_position_terms

    # -- the denoiser contract -------------------------------------------------------------

    def size_at(self, t: float) -> int:
        if self.schedule is None:
            raise PatchdbError("this machine has no scale schedule; pass schedule=... or call denoise(..., k=K)")
        return self.schedule.size_at_time(t)

    def __call__(self, x: torch.Tensor, t: float, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.denoise(x, t, k=self.size_at(float(t)), labels=labels)

    def denoise(self, x: torch.Tensor, t: float, k: int | None = None, labels=None) -> torch.Tensor:
        """``D(x, t)`` at patch size ``k``: (B, C, H, W) in the dtype and on the device of ``x``."""
        from . import check_tensor, check_time  # late: score/__init__ imports this module

        t = check_time(t)
        check_tensor(x, "x")
        if k is None:
            raise PatchdbError(f"the {self.machine.value} machine needs a patch size k")
        check_patch_size(k)
        if k not in self.file.sizes:
            self.file.check(self.machine, [k])
        if tuple(x.shape[1:]) != (self.source.channels, self.source.height, self.source.width):
            raise PatchdbError(f"x has images of shape {tuple(x.shape[1:])} but the index file holds "
                               f"{self.source.channels}x{self.source.height}x{self.source.width} images")
        start = time.perf_counter()
        ranges = self._ranges(labels, x.shape[0])
        xs = x.detach().cpu().to(self.dtype)
        out, stats = self._denoise(xs, t, k, ranges)
        bound, tail = torch.cat(stats[0]), torch.cat(stats[1]) if stats[1] else torch.empty(0)
        self.reports.append(StepReport(t, k, int(bound.numel()), _q(bound, 1.0), _q(bound, 0.5),
                                       _q(tail, 0.5) if tail.numel() else math.nan, self.tail > 0,
                                       time.perf_counter() - start))
        log.info(self.reports[-1].line())
        return out.to(device=x.device, dtype=x.dtype)

    def prepare(self, k: int, label: int | None = None) -> None:
        """Load the FAISS sub-indexes of size ``k`` now rather than in the first call that needs them
        (a one-time deserialization: seconds for the ~2-3 GB of one size at N = 60,000), and the
        x-independent terms of its exactly scanned families (corners) when they fit in the cache."""
        check_patch_size(k)
        self.file.check(self.machine, [k])
        src = self.source
        geom = geometry(self.machine, k, src.height, src.width)
        for grp, (i, entry) in zip(geom.groups, self.file.entries_for_groups(k, geom.groups, self.machine)):
            if entry.indexed and entry.family not in EXACT_FAMILIES:
                for g in range(grp.query_pos.shape[0]):
                    self.file.index(k, i, g)
            else:  # the x-independent terms of the exact scan, kept when they fit
                pos = grp.query_pos.view(-1)
                step = max(1, RERANK_ELEMENTS // (src.channels * src.height * src.width))
                self._same_position_terms(pos, k, box_regions(pos, k // 2, src.height, src.width), step)

    # -- internals -----------------------------------------------------------------------

    def _ranges(self, labels, batch: int) -> list[tuple[torch.Tensor, int, int]]:
        """(batch rows, first image, end image) per class asked for; the whole set when unconditional."""
        if labels is None:
            return [(torch.arange(batch), 0, self.n_images)]
        labels = torch.as_tensor(labels, dtype=torch.long).cpu().reshape(-1)
        if labels.numel() == 1:
            labels = labels.expand(batch)
        if labels.numel() != batch:
            raise PatchdbError(f"got {labels.numel()} labels for a batch of {batch} images; give one label per image")
        out = []
        for label in torch.unique(labels).tolist():
            lo = int(torch.searchsorted(self.labels, label, right=False))
            hi = int(torch.searchsorted(self.labels, label, right=True))
            if lo == hi:
                raise PatchdbError(f"label {label} has no training images in {self.file.path}; pick a class that exists")
            out.append(((labels == label).nonzero().view(-1), lo, hi))
        return out

    def _denoise(self, x: torch.Tensor, t: float, k: int, ranges) -> tuple[torch.Tensor, tuple[list, list]]:
        geom = geometry(self.machine, k, x.shape[-2], x.shape[-1])
        a, b = alpha_sigma(t)
        queries = unfold_windows(x, k, geom.query_padding)  # (B, d, HW)
        out = torch.empty(x.shape[0], x.shape[1], x.shape[-2] * x.shape[-1], dtype=x.dtype)
        bounds, tails = [], []
        for grp, (i, entry) in zip(geom.groups, self.file.entries_for_groups(k, geom.groups, self.machine)):
            if entry.family in EXACT_FAMILIES or not entry.indexed:
                for rows, lo, hi in ranges:
                    val = self._exact_same_position(x[rows], grp.query_pos.view(-1), k, a, b, lo, hi)  # (b, C, P)
                    out[rows.view(-1, 1), :, grp.query_pos.view(1, -1)] = val.permute(0, 2, 1).to(out.dtype)
                continue
            for g in range(grp.query_pos.shape[0]):
                qpos = grp.query_pos[g]
                for rows, lo, hi in ranges:
                    q = queries[rows][:, :, qpos].permute(0, 2, 1).reshape(-1, queries.shape[1])  # (b*m, d)
                    # Logits in float64 whatever the dtype: at t = 0.05 they reach ~1e3 and float32 would
                    # cost ~1e-5 in D; the re-rank is a small part of the time.
                    q = q.double()
                    val, bound, tail = self._approx(q, (k, i, g), entry, grp.cand_pos[g], a, b, lo, hi)
                    bounds.append(bound)
                    if tail is not None:
                        tails.append(tail)
                    out[rows.view(-1, 1), :, qpos.view(1, -1)] = val.view(len(rows), len(qpos), -1).to(out.dtype)
        return out.view_as(x), (bounds or [torch.zeros(0)], tails)

    def _exact_same_position(self, x: torch.Tensor, pos: torch.Tensor, k: int, a: float, b: float,
                             lo: int, hi: int) -> torch.Tensor:
        """LS-like families (corners, LS fallback): every image ``lo..hi`` at the query's own position.

        Window dot products are box sums of ``x * phi`` (zero padding = a box clipped to the image), read
        from integral images of only the pixels the boxes cover (four corner regions of side ``2r`` for
        bbELS corners, the whole image for the LS fallback), so the cost is O(B N * covered pixels).
        The x-independent terms (``|phi|^2`` per box, centres) are computed once per size.
        Returns (b, C, P) for the flat positions ``pos`` (P,).
        """
        src, r = self.source, k // 2
        xs = x.double()
        regions = box_regions(pos, r, src.height, src.width)
        acc = SoftmaxAccumulator((len(pos), x.shape[0]), src.channels, torch.float64, x.device)
        step = max(1, RERANK_ELEMENTS // max(1, x.shape[0] * x[0].numel()))
        terms = self._same_position_terms(pos, k, regions, step)
        for start in range(lo, hi, step):
            stop = min(hi, start + step)
            phi = self._phi(start, stop)  # (n, C, H, W) float64
            norms, centres = terms(start, stop)
            dots = box_sums(lambda rs, cs, phi=phi: torch.einsum("bchw,nchw->bnhw", xs[:, :, rs, cs], phi[:, :, rs, cs]),
                            regions, len(pos))  # (b, n, P)
            logits = (dots.mul_(2 * a).sub_((a * a) * norms)).mul_(0.5 / (b * b))
            acc.add(logits.permute(2, 0, 1).contiguous(), with_ones(centres))
        return acc.result().permute(1, 2, 0)  # (b, C, P)

    def _phi(self, start: int, stop: int) -> torch.Tensor:
        src = self.source
        return src.padded[start:stop, :, src.pad : src.pad + src.height, src.pad : src.pad + src.width]

    def _same_position_terms(self, pos, k, regions, step):
        """``terms(start, stop)`` -> ``|phi_n|^2`` over each position's clipped box (n, P) and the centres
        (P, n, C) of images start..stop.

        They do not depend on x: kept, for all images, for the sizes asked for most recently (each batch
        walks the whole schedule) while they take at most ``SAME_POSITION_CACHE_BYTES`` together; a size
        whose terms alone are larger is computed per chunk."""

        def compute(start, stop):
            phi = self._phi(start, stop)
            img = torch.arange(start, stop).view(1, -1)
            return (box_sums(lambda rs, cs: phi[:, :, rs, cs].square().sum(1), regions, len(pos)),
                    self.source.centres(img, pos.view(-1, 1)))

        n = self.n_images
        nbytes = n * len(pos) * (1 + self.source.channels) * 8  # norms (n, P) + centres (P, n, C), float64
        if nbytes > SAME_POSITION_CACHE_BYTES:
            return compute
        key = (k, tuple(pos.tolist()))  # all images, so that the class ranges of one batch share it
        if key not in self._same_pos_cache:
            # Every size of the schedule comes back once per batch: keep the most recent ones that fit.
            def held():
                return sum(a.nbytes + b.nbytes for a, b in self._same_pos_cache.values())

            while self._same_pos_cache and held() + nbytes > SAME_POSITION_CACHE_BYTES:
                self._same_pos_cache.pop(next(iter(self._same_pos_cache)))
            parts = [compute(s, min(n, s + step)) for s in range(0, n, step)]
            self._same_pos_cache[key] = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts], dim=1))
        norms, centres = self._same_pos_cache[key]
        return lambda start, stop: (norms[start:stop], centres[:, start:stop])

    def _approx(self, q: torch.Tensor, key: tuple[int, int, int], entry: Entry, cand_pos: torch.Tensor,
                a: float, b: float, lo: int, hi: int):
        """Top-K, exact re-rank, bound (and tail sample) for the query rows ``q`` (R, d)."""
        per_image = entry.per_image
        id_lo, id_hi = lo * per_image, hi * per_image
        whole = lo == 0 and hi == self.n_images
        index = self.file.index(*key)
        factor = self.k_factor or int(entry.info.get("k_factor", 1))
        want = min(self.topk * factor, id_hi - id_lo)  # never ask for more than exist
        ids = search_ids(index, q / a, want, self.nprobe, self.ef, None if whole else (id_lo, id_hi), self.scan_cap)
        n_total = id_hi - id_lo
        blank = self._blank(key, lo, hi, cand_pos, per_image)
        sample = self._tail_sample(key, id_lo, id_hi) if self.tail else None
        vals, bounds, tails = [], [], []
        step = max(1, RERANK_ELEMENTS // max(1, ids.shape[1] * q.shape[1]))
        for s in range(0, q.shape[0], step):
            v, bd, tl = self._rerank(q[s : s + step], ids[s : s + step], cand_pos, per_image, key[0], a, b, n_total,
                                     sample, blank)
            vals.append(v)
            bounds.append(bd)
            tails.append(tl)
        return torch.cat(vals), torch.cat(bounds), (torch.cat(tails) if sample is not None else None)

    def _blank(self, key, lo: int, hi: int, cand_pos: torch.Tensor, per_image: int):
        """The blank windows of images ``[lo, hi)`` that loading took out of sub-index ``key``, as one
        candidate: (window (d,), centre (C,), count, id mask); None when there are none."""
        blanks = self.file.blanks(*key)
        count = 0 if blanks is None else blanks.count(lo, hi)
        if not count:
            return None
        img, pos = torch.tensor([blanks.first // per_image]), cand_pos[[blanks.first % per_image]]
        return self.source.windows(img, pos, key[0])[0], self.source.centres(img, pos)[0], count, blanks.mask

    def _rerank(self, q, ids, cand_pos, per_image, k, a, b, n_total, sample, blank):
        valid = ids >= 0
        safe = ids.clamp(min=0)
        img, pos = safe // per_image, cand_pos[safe % per_image]
        dots, norms = self.source.window_terms(q, img, pos, k)
        logits = expanded_logits(q, dots, norms, a, b).masked_fill_(~valid, -math.inf)
        acc = SoftmaxAccumulator((q.shape[0], 1), self.source.channels, q.dtype, q.device)
        acc.add(logits.clone().unsqueeze(1), with_ones(self.source.centres(img, pos).double()))
        exact = valid.sum(1)  # candidates whose weight is computed exactly: retrieved ...
        if blank is not None:  # ... and the blank windows: one identical vector, `count` times
            window, centre, count, _ = blank
            log_w = window_logits(q, window.double().expand(q.shape[0], 1, -1).clone(), a, b) + math.log(count)
            acc.add(log_w.unsqueeze(1), with_ones(centre.double()).expand(q.shape[0], 1, -1))
            exact = exact + count
        log_z = acc.log_normaliser()[:, 0]
        # Every candidate outside the true top-K weighs at most the K-th weight; if the search found the
        # true top-K (recall 1, e.g. Flat), each ignored candidate is outside it.
        kept = valid.sum(1)
        ranked = logits.topk(min(self.topk, logits.shape[1]), dim=1).values  # descending
        kth = ranked.gather(1, (kept.clamp(min=1, max=ranked.shape[1]) - 1).view(-1, 1))[:, 0]
        log_bound = torch.log((n_total - exact).clamp(min=0).to(q.dtype)) + kth - log_z
        bound = torch.sigmoid(log_bound)  # B / (1 + B) with B = exp(log_bound)
        tail = None
        if sample is not None:
            tail = self._add_tail(acc, q, ids, sample, cand_pos, k, a, b, n_total, log_z,
                                  None if blank is None else blank[3])
        return acc.result()[:, 0], bound, tail

    def _tail_sample(self, key, id_lo: int, id_hi: int):
        gen = torch.Generator().manual_seed(hash((self.seed, *key, id_lo)) % 2**31)
        return torch.randint(id_lo, id_hi, (self.tail,), generator=gen)

    def _add_tail(self, acc, q, ids, sample, cand_pos, k, a, b, n_total, log_z, blank_mask) -> torch.Tensor:
        """Fold in the uniform sample, weighted n_total / m, minus retrieved and blank ids (both already
        counted exactly); returns the tail share."""
        img, pos = sample // len(cand_pos), cand_pos[sample % len(cand_pos)]
        w = self.source.windows(img, pos, k).double()  # (m, d)
        logits = _shared_logits(q, w, a, b)
        # A sampled id already among the retrieved ones is counted there: mask it (the estimator of the
        # ignored sum stays unbiased because the sample covers all n_total candidates uniformly).
        srt = ids.sort(1).values
        where = torch.searchsorted(srt, sample.view(1, -1).expand(len(srt), -1).contiguous()).clamp(max=srt.shape[1] - 1)
        hit = srt.gather(1, where) == sample.view(1, -1)
        if blank_mask is not None:
            hit |= blank_mask[sample].view(1, -1)
        logits.masked_fill_(hit, -math.inf).add_(math.log(n_total / len(sample)))
        log_tail = torch.logsumexp(logits, dim=1)
        values = with_ones(self.source.centres(img, pos).double()).unsqueeze(0).expand(q.shape[0], -1, -1)
        acc.add(logits.unsqueeze(1), values)
        return torch.sigmoid(log_tail - log_z)


def search_ids(index, queries: torch.Tensor, want: int, nprobe: int = 0, ef: int = 0,
               id_range: tuple[int, int] | None = None, scan_cap: float = DEFAULT_SCAN_CAP) -> torch.Tensor:
    """Ids (R, want) int64 of the ``want`` nearest stored vectors to ``queries`` (R, d) (already ``x / a``),
    -1 where fewer exist. Rows whose probed IVF lists held nothing (far-out queries at t ~ 1) are searched
    again with 8x more lists until they find candidates: a row without any would give 0/0. Each query
    stops scanning after the list that takes it past ``scan_cap`` times the codes its nprobe lists hold
    on average (0: no cap; never capped when every list is probed).

    The one retrieval rule of the approximate engine and of attribution through an index
    (:mod:`patchdb.score.contrib`), so that both see the same candidates.
    """
    q = queries.float().numpy()
    ivf = fx._ivf(index)
    probe = 0 if ivf is None else max(1, nprobe or int(ivf.nprobe))
    max_codes = 0
    if scan_cap and ivf is not None and probe < ivf.nlist:  # probing every list asks for an exhaustive scan
        max_codes = max(want, math.ceil(scan_cap * fx.nominal_codes(index, probe)))
    _, found = fx.search(index, q, want, probe, ef, id_range, max_codes)
    ids = torch.from_numpy(found).long()
    if ivf is None:
        return ids
    empty = (ids < 0).all(1).nonzero().view(-1)
    while empty.numel() and probe < ivf.nlist:
        probe = min(ivf.nlist, probe * 8)
        _, again = fx.search(index, q[empty.numpy()], want, probe, ef, id_range)  # uncapped: must find some
        ids[empty] = torch.from_numpy(again).long()
        empty = empty[(ids[empty] < 0).all(1)]
    return ids


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


def _shared_logits(q: torch.Tensor, w: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """-|q_r - a w_j|^2 / 2b^2 for every row r of ``q`` (R, d) and candidate j of ``w`` (P, d): (R, P)."""
    sq = q.square().sum(-1, keepdim=True) + (a * a) * w.square().sum(-1)
    return (q @ w.T).mul_(2 * a).sub_(sq).mul_(0.5 / (b * b))


def _median(v: torch.Tensor) -> float:
    """The median as statistics defines it (mean of the two middle values of an even count), as
    ``patchdb compare`` reports it; ``torch.median`` returns the lower one."""
    return float(torch.quantile(v.double().flatten(), 0.5))


def _q(v: torch.Tensor, quantile: float) -> float:
    if v.numel() == 0:
        return 0.0
    return float(torch.quantile(v.double().flatten()[:1_000_000], quantile))



def pearson_r2(a: torch.Tensor, b: torch.Tensor) -> float:
    """Squared Pearson correlation over all pixels and channels of two images (SPEC.md "Comparison")."""
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    denom = (a.norm() * b.norm()).item()
    return float((a @ b).item() / denom) ** 2 if denom > 0 else float("nan")


def validate_engines(exact, approx: ApproxMachine, seeds: list[int], shape: tuple[int, int, int], steps: int,
                     labels: torch.Tensor | None = None, batch_size: int = 16, progress: bool = False,
                     exact_samples=None) -> dict:
    """Sample with both engines from the same noise; per step the max |D_approx - D_exact| and the
    ignored-mass bound, per seed the r^2 between final samples, and the time of each engine.

    ``exact_samples`` (a :class:`patchdb.store.ExactSamples`): batches whose exact samples it holds are
    not recomputed (their stored exact time is counted), new ones are added to it.
    """
    from ..sample import SampleResult, ddim_sample, initial_noise

    diffs, bounds, tails, r2, seconds = [], [], [], [], {"exact": 0.0, "approx": 0.0}
    reused = 0
    for start in range(0, len(seeds), batch_size):
        chunk = seeds[start : start + batch_size]
        noise = initial_noise(chunk, shape, approx.dtype)
        lab = None if labels is None else labels[start : start + len(chunk)]
        runs = {}
        stored = None if exact_samples is None else exact_samples.lookup(chunk, lab)
        if stored is not None:
            runs["exact"] = SampleResult(stored[1], stored[0])
            seconds["exact"] += stored[2]
            reused += len(chunk)
        for name, engine in (("exact", exact), ("approx", approx)):
            if name in runs:
                continue
            t0 = time.perf_counter()
            runs[name] = ddim_sample(engine, noise, steps, lab, keep_trajectory=True, progress=progress)
            elapsed = time.perf_counter() - t0
            seconds[name] += elapsed
            if name == "exact" and exact_samples is not None:
                exact_samples.store(chunk, lab, runs[name].trajectory, runs[name].samples, elapsed)
        reports = approx.reports[-steps:]
        diffs.append((runs["approx"].trajectory - runs["exact"].trajectory).abs().flatten(2).amax(2))  # (S, b)
        bounds.append(torch.tensor([r.bound_max for r in reports]))
        tails.append(torch.tensor([r.tail_median for r in reports]))
        r2 += [pearson_r2(a, e) for a, e in zip(runs["approx"].samples, runs["exact"].samples)]
    diff = torch.cat(diffs, 1)  # (S, seeds), step S first
    per_step = [{"step": steps - i, "t": (steps - i) / steps, "k": approx.size_at((steps - i) / steps),
                 "max_abs_diff_median": _median(diff[i]), "max_abs_diff_max": float(diff[i].max()),
                 "bound_max_median": _median(torch.stack(bounds)[:, i]),
                 "tail_share_median": _median(torch.stack(tails)[:, i])} for i in range(steps)]
    r2_t = torch.tensor(r2)
    return {"seeds": list(seeds), "r2": r2, "r2_median": _median(r2_t), "r2_min": float(r2_t.min()),
            "steps": per_step, "seconds": seconds, "speedup": seconds["exact"] / max(seconds["approx"], 1e-9),
            "seconds_per_sample": {k: v / len(seeds) for k, v in seconds.items()}, "exact_reused": reused}
