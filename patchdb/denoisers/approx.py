"""Approximate mode: FAISS top-K per query window, exact re-rank, ignored-mass bound (docs/math.md "Exact mode").

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

from ..errors import PatchdbError
from ..indexing.format import EXACT_FAMILIES, Entry
from ..indexing.reader import IndexFile
from ..patches import box_dots, box_queries, box_regions, box_sums, geometry, unfold_windows
from ..schedule import ScaleSchedule, alpha_sigma, check_patch_size, parse_schedule
from ..spec import Machine
from .contract import batch_labels, check_shape, check_size, check_tensor, check_time, size_at
from .retrieval import Retrieval, expanded_logits, mask_tail_hits, prepare_tail, window_logits
from .softmax import SoftmaxAccumulator, with_ones

log = logging.getLogger(__name__)

#: Rows x candidates x features per block of the same-position scans (bounds memory, ~4 bytes each,
#: x3 for indices).
RERANK_ELEMENTS = 8_000_000
#: Float64 values per block of query rows in the re-rank (``ApproxMachine._approx``): per row, the
#: logits, dot products, norms and centres of its P candidates and the logits of the m sampled ones (their
#: product and its exponential; the windows themselves are gathered in smaller blocks by
#: ``PatchSource.window_terms``).
#: Bounding rows by ``P * window length`` instead made the tail sample's product one to four rows at a
#: time for CIFAR-10's 9 x 9 to 17 x 17 windows (m = 8,192): matrix-vector products that re-read the
#: 8,192 sampled windows per row, 52% of a batch-16 sample's time (benchmarks/profile_sample.py).
ROW_BLOCK_VALUES = 16_000_000
#: x-independent corner / LS terms kept between calls, all sizes together (see
#: ApproxMachine._same_position_terms): every bbELS size of the Fashion-MNIST schedule at N = 60,000
#: takes ~0.8 GB.
SAME_POSITION_CACHE_BYTES = 1024 * 2**20
#: Step-to-step reuse (``Retrieval.reuse``) needs every image of a call to correlate at least this much
#: with the same row of the previous call: consecutive steps of one DDIM trajectory do (x moves little per
#: step), an unrelated batch of the same shape does not, and then the index is searched as usual.
REUSE_MIN_CORRELATION = 0.9


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
    retrieval : the :class:`Retrieval` settings (default: the CLI's defaults); ``options`` change single
        knobs of it (topk, nprobe, ef, k_factor, scan_cap, tail_correction; ``tail_samples`` is the
        older name of tail_correction, ``seed`` of tail_seed).
    dtype : compute dtype of the re-rank (float32 or float64).
    """

    def __init__(self, index: IndexFile, machine: str | Machine, schedule: ScaleSchedule | str | None = None,
                 retrieval: Retrieval | None = None, dtype: torch.dtype = torch.float32, **options):
        renamed = {"tail_samples": "tail_correction", "seed": "tail_seed"}
        options = {renamed.get(key, key): value for key, value in options.items()}
        self.retrieval = (retrieval or Retrieval()).with_options(**options)
        self.file = index
        self.machine = Machine.parse(machine)
        self.schedule = parse_schedule(schedule) if schedule is not None else None
        # The sizes of sample-only steps (Retrieval.sample_above) need no index (build --sample-above).
        sizes = self.schedule.searched(self.retrieval.sample_above) if self.schedule is not None else index.sizes
        index.check(self.machine, sizes)
        self.dtype = dtype
        self.labels = index.labels()
        # Re-rank logits are computed in float64 whatever the dtype (see _denoise): the file's source is
        # float64 so gathered windows need no conversion (twice the memory of the images in float32).
        self.source = index.source(max(self.schedule.sizes) if self.schedule is not None else 0)
        self.n_images = self.source.n
        self.reports: list[StepReport] = []
        self._same_pos_cache: dict = {}  # key -> (norms, centres) of _same_position_terms
        # Step-to-step reuse: the previous call (size, x, class ranges) and, per class range, each query
        # pixel's best-ranked candidates there as (image * H*W + position), -1 for none: (rows, H*W, M).
        self._previous: tuple | None = None
        self._best: dict = {}

    # -- the denoiser contract -------------------------------------------------------------

    @property
    def topk(self) -> int:
        return self.retrieval.topk

    @property
    def tail(self) -> int:
        return self.retrieval.tail_correction

    def size_at(self, t: float) -> int:
        return size_at(self.schedule, t)

    def __call__(self, x: torch.Tensor, t: float, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.denoise(x, t, k=self.size_at(float(t)), labels=labels)

    def denoise(self, x: torch.Tensor, t: float, k: int | None = None, labels=None) -> torch.Tensor:
        """``D(x, t)`` at patch size ``k``: (B, C, H, W) in the dtype and on the device of ``x``."""
        t = check_time(t)
        check_tensor(x, "x")
        check_patch_size(check_size(self.machine.value, k))
        if k not in self.file.sizes and not self.retrieval.sample_only(t):
            self.file.check(self.machine, [k])
        if k // 2 > self.source.pad:  # a sample-only size the file and the schedule do not hold
            self.source = self.file.source(k)
        check_shape(x, (self.source.channels, self.source.height, self.source.width), "the index file")
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
        sampled_only = self.schedule is not None and k not in self.schedule.searched(self.retrieval.sample_above)
        if k not in self.file.sizes and not sampled_only:
            self.file.check(self.machine, [k])
        src = self.source
        geom = geometry(self.machine, k, src.height, src.width)
        for grp, (i, entry) in zip(geom.groups, self.file.entries_for_groups(k, geom.groups, self.machine)):
            if entry.indexed and entry.family not in EXACT_FAMILIES:
                if k in self.file.sizes:  # a sample-only size the file has no index for loads nothing
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
        labels = batch_labels(labels, batch)
        out = []
        for label in torch.unique(labels).tolist():
            lo = int(torch.searchsorted(self.labels, label, right=False))
            hi = int(torch.searchsorted(self.labels, label, right=True))
            if lo == hi:
                raise PatchdbError(f"label {label} has no training images in {self.file.path}; pick a class that exists")
            out.append(((labels == label).nonzero().view(-1), lo, hi))
        return out

    def _reusable(self, x: torch.Tensor, k: int, ranges) -> bool:
        """Whether this call continues the previous one's trajectory (``Retrieval.reuse``): same size (any
        size with ``Retrieval.across``), batch and class ranges, and every image correlated
        >= REUSE_MIN_CORRELATION with the previous call's same row."""
        if not self.retrieval.reuse or self._previous is None:
            return False
        k0, x0, key0 = self._previous
        if (k0 != k and not self.retrieval.across) or x0.shape != x.shape or key0 != _ranges_key(ranges):
            return False
        u, v = x.flatten(1).double(), x0.flatten(1).double()
        u, v = u - u.mean(1, keepdim=True), v - v.mean(1, keepdim=True)
        r = (u * v).sum(1) / (u.norm(dim=1) * v.norm(dim=1)).clamp(min=1e-300)
        return bool((r >= REUSE_MIN_CORRELATION).all())

    def _denoise(self, x: torch.Tensor, t: float, k: int, ranges) -> tuple[torch.Tensor, tuple[list, list]]:
        carried = self._best if self._reusable(x, k, ranges) else {}
        self._best = {}
        out = self._denoise_with(x, t, k, ranges, carried)
        self._previous = (k, x.clone(), _ranges_key(ranges)) if self.retrieval.reuse else None
        return out

    def _denoise_with(self, x: torch.Tensor, t: float, k: int, ranges, carried: dict) -> tuple[torch.Tensor, tuple[list, list]]:
        geom = geometry(self.machine, k, x.shape[-2], x.shape[-1])
        a, b = alpha_sigma(t)
        queries = unfold_windows(x, k, geom.query_padding)  # (B, d, HW)
        hw = x.shape[-2] * x.shape[-1]
        out = torch.empty(x.shape[0], x.shape[1], hw, dtype=x.dtype)
        keep = self.topk * self.retrieval.reuse
        if keep:
            self._best = {(lo, hi): torch.full((len(rows), hw, keep), -1, dtype=torch.long) for rows, lo, hi in ranges}
        bounds, tails = [], []
        sample_only = self.retrieval.sample_only(t)
        for grp, (i, entry) in zip(geom.groups, self.file.entries_for_groups(k, geom.groups, self.machine)):
            if entry.family in EXACT_FAMILIES or not entry.indexed:
                for rows, lo, hi in ranges:
                    # A sample-only step estimates these families from a uniform sample of images too.
                    sample = self._image_sample(k, lo, hi) if sample_only else None
                    val = self._exact_same_position(x[rows], grp.query_pos.view(-1), k, a, b, lo, hi, sample)  # (b, C, P)
                    out[rows.view(-1, 1), :, grp.query_pos.view(1, -1)] = val.permute(0, 2, 1).to(out.dtype)
                continue
            for g in range(grp.query_pos.shape[0]):
                qpos, cand_pos = grp.query_pos[g], grp.cand_pos[g]
                for rows, lo, hi in ranges:
                    q = queries[rows][:, :, qpos].permute(0, 2, 1).reshape(-1, queries.shape[1])  # (b*m, d)
                    # Logits in float64 whatever the dtype: at t = 0.05 they reach ~1e3 and float32 would
                    # cost ~1e-5 in D; the re-rank is a small part of the time.
                    q = q.double()
                    memory = carried.get((lo, hi))
                    ids = None if memory is None else _carried_ids(memory[:, qpos], cand_pos, entry.per_image, hw)
                    val, bound, tail, best = self._approx(q, (k, i, g), entry, cand_pos, a, b, lo, hi, ids,
                                                          sample_only=sample_only)
                    bounds.append(bound)
                    if tail is not None:
                        tails.append(tail)
                    if best is not None:  # (b*m, M) ids -> (image * H*W + position) per query pixel
                        enc = (best // entry.per_image) * hw + cand_pos[best.clamp(min=0) % entry.per_image]
                        self._best[(lo, hi)][:, qpos, : best.shape[1]] = enc.masked_fill_(best < 0, -1).view(len(rows), len(qpos), -1)
                    out[rows.view(-1, 1), :, qpos.view(1, -1)] = val.view(len(rows), len(qpos), -1).to(out.dtype)
        return out.view_as(x), (bounds or [torch.zeros(0)], tails)

    def _image_sample(self, k: int, lo: int, hi: int) -> torch.Tensor:
        """``sample_count(sample_only=True)`` images drawn uniformly (with replacement) from ``[lo, hi)``, seeded by the
        size and the range like the tail sample: the candidates of a sample-only step's exactly scanned
        families. Equal weights, so they cancel in the weighted average."""
        gen = torch.Generator().manual_seed(hash((self.retrieval.tail_seed, -1, k, lo, hi)) % 2**31)
        return torch.randint(lo, hi, (self.retrieval.sample_count(sample_only=True),), generator=gen)

    def _exact_same_position(self, x: torch.Tensor, pos: torch.Tensor, k: int, a: float, b: float,
                             lo: int, hi: int, images: torch.Tensor | None = None) -> torch.Tensor:
        """LS-like families (corners, LS fallback): every image ``lo..hi`` at the query's own position
        (or only ``images``, a sample-only step's uniform sample of them).

        Window dot products are sums of ``x * phi`` over each box (zero padding = a box clipped to the
        image), region by region (four corner regions of side ``2r`` for bbELS corners, the whole image for
        the LS fallback): a dense product of box-masked queries with the images' region pixels for the few
        boxes of a corner region, integral images of the product for the LS fallback's many
        (:func:`patchdb.patches.box_dots`). The x-independent terms (``|phi|^2`` per box, centres) are
        computed once per size.
        Returns (b, C, P) for the flat positions ``pos`` (P,).
        """
        src, r = self.source, k // 2
        xs = x.double()
        regions = box_regions(pos, r, src.height, src.width)
        queries = box_queries(xs, regions)
        acc = SoftmaxAccumulator((len(pos), x.shape[0]), src.channels, torch.float64, x.device)
        # Per image a block holds its (B, P) dots, and (B, region) products where integral images are used.
        per_image = len(pos) if all(q is not None for q in queries) else x[0].numel()
        step = max(1, RERANK_ELEMENTS // max(1, x.shape[0] * per_image))
        if images is None:
            terms = self._same_position_terms(pos, k, regions, step)
            blocks = ((self._phi(start, min(hi, start + step)), *terms(start, min(hi, start + step)))
                      for start in range(lo, hi, step))
        else:
            blocks = ((phi, *_box_terms(src, phi, chunk, pos, regions))
                      for chunk in images.split(step) for phi in [src.image_pixels(chunk)])
        for phi, norms, centres in blocks:  # phi (n, C, H, W) float64, norms (n, P), centres (P, n, C)
            dots = box_dots(xs, phi, regions, len(pos), queries)  # (b, n, P)
            logits = (dots.mul_(2 * a).sub_((a * a) * norms)).mul_(0.5 / (b * b))
            acc.add(logits.permute(2, 0, 1).contiguous(), with_ones(centres))
        return acc.result().permute(1, 2, 0)  # (b, C, P)

    def _phi(self, start: int, stop: int) -> torch.Tensor:
        return self.source.image_pixels(slice(start, stop))

    def _same_position_terms(self, pos, k, regions, step):
        """``terms(start, stop)`` -> ``|phi_n|^2`` over each position's clipped box (n, P) and the centres
        (P, n, C) of images start..stop.

        They do not depend on x: kept, for all images, for the sizes asked for most recently (each batch
        walks the whole schedule) while they take at most ``SAME_POSITION_CACHE_BYTES`` together; a size
        whose terms alone are larger is computed per chunk."""

        def compute(start, stop):
            return _box_terms(self.source, self._phi(start, stop), torch.arange(start, stop), pos, regions)

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
                a: float, b: float, lo: int, hi: int, carried: torch.Tensor | None = None,
                sample_only: bool = False):
        """Top-K, exact re-rank, bound (and tail sample) for the query rows ``q`` (R, d); ``carried``
        (R, P): the candidates the previous step ranked best (step-to-step reuse), searched for when None;
        ``sample_only`` (``Retrieval.sample_above``): no candidates, the tail sample estimates all of D."""
        per_image = entry.per_image
        id_lo, id_hi = lo * per_image, hi * per_image
        id_range = None if lo == 0 and hi == self.n_images else (id_lo, id_hi)
        if sample_only:
            ids = torch.empty((q.shape[0], 0), dtype=torch.long)
        elif carried is not None and carried.shape[0] == q.shape[0]:
            ids = self._with_fresh(carried, q / a, key, entry, id_range, id_hi - id_lo)
        else:
            ids = self.retrieval.retrieve(self.file.index(*key), q / a, entry, id_hi - id_lo, id_range,
                                          lambda found: self.source.windows32(found, cand_pos, key[0]))
        n_total = id_hi - id_lo
        blank = self._blank(key, lo, hi, cand_pos, per_image, load=not sample_only)
        sample = self.retrieval.tail_sample(key, id_lo, id_hi, sample_only)
        tail = None if sample is None else self._tail_terms(sample, cand_pos, key[0], blank, a, b, n_total, sample_only)
        vals, bounds, tails, best = [], [], [], []
        per_row = ids.shape[1] * (self.source.channels + 4) + (0 if sample is None else 2 * len(sample))
        step = max(1, ROW_BLOCK_VALUES // max(1, per_row))
        for s in range(0, q.shape[0], step):
            v, bd, tl, bs = self._rerank(q[s : s + step], ids[s : s + step], cand_pos, per_image, key[0], a, b,
                                         n_total, tail, blank)
            vals.append(v)
            bounds.append(bd)
            tails.append(tl)
            best.append(bs)
        best = torch.cat(best) if self.retrieval.reuse else None
        return torch.cat(vals), torch.cat(bounds), (torch.cat(tails) if sample is not None else None), best

    def _with_fresh(self, carried: torch.Tensor, q: torch.Tensor, key, entry: Entry, id_range, available: int) -> torch.Tensor:
        """The carried candidates (R, M) of a reused step, plus (``Retrieval.refresh``) ``topk`` found by a
        light search, duplicates dropped; rows left without any carried candidate (a pixel that had none
        at this size's positions) are searched as usual."""
        ids = carried
        if self.retrieval.refresh:
            found = self.retrieval.search(self.file.index(*key), q, min(self.topk, available), id_range,
                                          scan=self.retrieval.refresh)
            ids = _unique_rows(torch.cat([carried, found], 1))
        empty = (ids < 0).all(1).nonzero().view(-1)
        if empty.numel():
            found = self.retrieval.search(self.file.index(*key), q[empty], self.retrieval.wanted(entry, available), id_range)
            width = max(ids.shape[1], found.shape[1])
            ids = torch.nn.functional.pad(ids, (0, width - ids.shape[1]), value=-1)
            ids[empty] = torch.nn.functional.pad(found, (0, width - found.shape[1]), value=-1)
        return ids

    def _blank(self, key, lo: int, hi: int, cand_pos: torch.Tensor, per_image: int, load: bool = True):
        """The blank windows of images ``[lo, hi)`` that loading took out of sub-index ``key``, as one
        candidate: (window (d,), centre (C,), count, id mask); None when there are none. ``load`` False:
        found without loading the sub-index (a sample-only step)."""
        blanks = self.file.blanks(*key, load=load)
        count = 0 if blanks is None else blanks.count(lo, hi)
        if not count:
            return None
        img, pos = torch.tensor([blanks.first // per_image]), cand_pos[[blanks.first % per_image]]
        return self.source.windows(img, pos, key[0])[0], self.source.centres(img, pos)[0], count, blanks.mask

    def _rerank(self, q, ids, cand_pos, per_image, k, a, b, n_total, tail_terms, blank):
        valid = ids >= 0
        acc = SoftmaxAccumulator((q.shape[0], 1), self.source.channels, q.dtype, q.device)
        if ids.shape[1]:
            safe = ids.clamp(min=0)
            img, pos = safe // per_image, cand_pos[safe % per_image]
            dots, norms, centres = self.source.window_terms(q, img, pos, k, with_centres=True)
            logits = expanded_logits(q, dots, norms, a, b).masked_fill_(~valid, -math.inf)
            acc.add(logits.clone().unsqueeze(1), with_ones(centres))
        exact = valid.sum(1)  # candidates whose weight is computed exactly: retrieved ...
        if blank is not None:  # ... and the blank windows: one identical vector, `count` times
            window, centre, count, _ = blank
            log_w = window_logits(q, window.double().expand(q.shape[0], 1, -1).clone(), a, b) + math.log(count)
            acc.add(log_w.unsqueeze(1), with_ones(centre.double()).expand(q.shape[0], 1, -1))
            exact = exact + count
        log_z = acc.log_normaliser()[:, 0]
        if not ids.shape[1]:  # a sample-only step: every non-blank candidate is the sample's to estimate
            tail = None if tail_terms is None else self._add_tail(acc, q, ids, tail_terms, a, b, n_total, log_z)
            return acc.result()[:, 0], torch.ones(q.shape[0], dtype=q.dtype), tail, (ids if self.retrieval.reuse else None)
        # Every candidate outside the true top-K weighs at most the K-th weight; if the search found the
        # true top-K (recall 1, e.g. Flat), each ignored candidate is outside it.
        kept = valid.sum(1)
        top = logits.topk(min(self.topk * max(1, self.retrieval.reuse), logits.shape[1]), dim=1)  # descending
        ranked = top.values[:, : self.topk]
        # The ids kept for the next step (step-to-step reuse), -1 where fewer were valid.
        best = ids.gather(1, top.indices).masked_fill_(top.values == -math.inf, -1) if self.retrieval.reuse else None
        kth = ranked.gather(1, (kept.clamp(min=1, max=ranked.shape[1]) - 1).view(-1, 1))[:, 0]
        log_bound = torch.log((n_total - exact).clamp(min=0).to(q.dtype)) + kth - log_z
        bound = torch.sigmoid(log_bound)  # B / (1 + B) with B = exp(log_bound)
        tail = None
        if tail_terms is not None:
            tail = self._add_tail(acc, q, ids, tail_terms, a, b, n_total, log_z)
        return acc.result()[:, 0], bound, tail, best

    def _tail_terms(self, sample: torch.Tensor, cand_pos: torch.Tensor, k: int, blank, a: float, b: float,
                    n_total: int, single: bool = False) -> tuple:
        """The uniform tail sample's terms at this call's ``a, b``, made once per sub-index and call (not per
        block of query rows): :func:`prepare_tail`, the sampled windows as the right factor of the logits'
        product (m, d+1): ``[a/b^2 w_j, log(n_total/m) - a^2 |w_j|^2 / 2b^2]`` (float32 when ``single``: a
        sample-only step), and the centres with ones (m, C+1)."""
        img, pos = sample // len(cand_pos), cand_pos[sample % len(cand_pos)]
        w = self.source.windows(img, pos, k).double()
        bias = w.square().sum(-1, keepdim=True).mul_(-(a * a) * 0.5 / (b * b)).add_(math.log(n_total / len(sample)))
        right = torch.cat([w.mul_(a / (b * b)), bias], 1)
        return (prepare_tail(sample, None if blank is None else blank[3]), right.float() if single else right,
                with_ones(self.source.centres(img, pos).double()))

    def _add_tail(self, acc, q, ids, tail_terms, a, b, n_total, log_z) -> torch.Tensor:
        """Fold in the uniform sample, weighted n_total / m, minus retrieved and blank ids (both already
        counted exactly); returns the tail share.

        The logits ``-|q - a w_j|^2 / 2b^2 + log(n_total / m)`` are one product ``[q, 1] . right_j``
        (:meth:`_tail_terms`) minus ``|q|^2 / 2b^2`` per row. At a sample-only step the product is float32
        (half the time of the step's one large product): there ``a / b^2 <= 0.74`` (t >= 0.65), so its
        rounding moves a logit by ~1e-4 at most, far inside the sample's own error."""
        prepared, right, values = tail_terms
        left = with_ones(q)
        prod = (left.float() @ right.T).double() if right.dtype == torch.float32 else left @ right.T
        logits = prod.sub_(q.square().sum(-1, keepdim=True).mul_(0.5 / (b * b)))
        # A sampled id already among the retrieved ones (or blank) is counted there: mask it.
        mask_tail_hits(logits, ids, prepared)
        log_tail = acc.add(logits.unsqueeze(1), values.unsqueeze(0).expand(q.shape[0], -1, -1))[:, 0]
        return torch.sigmoid(log_tail - log_z)


def _box_terms(source, phi: torch.Tensor, images: torch.Tensor, pos: torch.Tensor, regions) -> tuple:
    """The x-independent terms of the same-position scan for the images ``images`` (n,) whose pixels are
    ``phi`` (n, C, H, W): ``|phi_n|^2`` over each position's clipped box (n, P) and the centres (P, n, C)."""
    norms = box_sums(lambda rs, cs: phi[:, :, rs, cs].square().sum(1), regions, len(pos))
    return norms, source.centres(images.view(1, -1), pos.view(-1, 1))


def _carried_ids(memory: torch.Tensor, cand_pos: torch.Tensor, per_image: int, hw: int) -> torch.Tensor:
    """Candidate ids of a sub-index for query pixels whose best windows were (image * H*W + position)
    ``memory`` (b, m, M): the same image and position in this sub-index, -1 where the position is none
    of its candidate positions (another size's geometry) or there was none. (b*m, M)."""
    column = torch.full((hw,), -1, dtype=torch.long)
    column[cand_pos] = torch.arange(len(cand_pos))
    enc = memory.reshape(-1, memory.shape[-1])
    j = column[enc.clamp(min=0) % hw]
    ok = (enc >= 0) & (j >= 0)
    return torch.where(ok, (enc // hw) * per_image + j, torch.full_like(enc, -1))


def _unique_rows(ids: torch.Tensor) -> torch.Tensor:
    """Each row's ids with repeats set to -1 (a candidate counted twice would weigh twice)."""
    order = ids.sort(1).values
    repeat = torch.zeros_like(order, dtype=torch.bool)
    repeat[:, 1:] = (order[:, 1:] == order[:, :-1]) & (order[:, 1:] >= 0)
    return order.masked_fill_(repeat, -1)


def _ranges_key(ranges) -> tuple:
    return tuple((tuple(rows.tolist()), lo, hi) for rows, lo, hi in ranges)


def _q(v: torch.Tensor, quantile: float) -> float:
    if v.numel() == 0:
        return 0.0
    return float(torch.quantile(v.double().flatten()[:1_000_000], quantile))
