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
from ..indexfile import EXACT_FAMILIES, Entry, IndexFile, PatchSource
from ..patches import Group, geometry, unfold_windows
from ..schedule import ScaleSchedule, alpha_sigma, check_patch_size, parse_schedule
from ..spec import Machine
from .softmax import SoftmaxAccumulator, with_ones

log = logging.getLogger(__name__)

DEFAULT_TOPK = 64
#: Rows x candidates x features per re-rank block (bounds memory, ~4 bytes each, x3 for indices).
RERANK_ELEMENTS = 8_000_000


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
    dtype : compute dtype of the re-rank (float32 or float64).
    """

    def __init__(self, index: IndexFile, machine: str | Machine, schedule: ScaleSchedule | str | None = None,
                 topk: int = DEFAULT_TOPK, nprobe: int = 0, ef: int = 0, tail_samples: int = 0,
                 dtype: torch.dtype = torch.float32, seed: int = 0, k_factor: int = 0):
        self.file = index
        self.machine = Machine.parse(machine)
        self.schedule = parse_schedule(schedule) if schedule is not None else None
        sizes = self.schedule.distinct() if self.schedule is not None else index.sizes
        index.check(self.machine, sizes)
        if topk < 1:
            raise PatchdbError(f"--topk must be at least 1, got {topk}")
        self.topk, self.nprobe, self.ef, self.tail = int(topk), int(nprobe), int(ef), int(tail_samples)
        self.k_factor = int(k_factor)
        self.dtype, self.seed = dtype, seed
        self.labels = index.labels()
        self.source = PatchSource(index.images(), max(index.sizes) // 2, dtype)
        self.n_images = self.source.n
        self.reports: list[StepReport] = []
        self._entries: dict[int, list[Entry]] = {}

    # -- the denoiser contract -------------------------------------------------------------

    def size_at(self, t: float) -> int:
        if self.schedule is None:
            raise PatchdbError("this machine has no scale schedule; pass schedule=... or call denoise(..., k=K)")
        steps = self.schedule.steps
        step = round(t * steps)
        if step < 1 or abs(t * steps - step) > 1e-6:
            raise PatchdbError(f"time t={t} is not one of the {steps} sampler steps i/{steps} of the schedule")
        return self.schedule.size_at(step)

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

    def _entries_for(self, k: int, groups: tuple[Group, ...]) -> list[tuple[int, Entry]]:
        """Stored entry of each geometry group, matched by candidate positions (so a bbELS file serves ELS)."""
        if k not in self._entries:
            self._entries[k] = self.file.entries(k)
        stored = self._entries[k]
        found = []
        for grp in groups:
            match = [(i, e) for i, e in enumerate(stored) if e.cand_pos.shape == grp.cand_pos.shape
                     and torch.equal(e.cand_pos, grp.cand_pos)]
            if not match:
                raise PatchdbError(f"{self.file.path} has no {grp.family} candidates for k={k}; "
                                   f"it was built for machine {self.file.machine.value}, rebuild it for {self.machine.value}")
            found.append(match[0])
        return found

    def _denoise(self, x: torch.Tensor, t: float, k: int, ranges) -> tuple[torch.Tensor, tuple[list, list]]:
        geom = geometry(self.machine, k, x.shape[-2], x.shape[-1])
        a, b = alpha_sigma(t)
        queries = unfold_windows(x, k, geom.query_padding)  # (B, d, HW)
        out = torch.empty(x.shape[0], x.shape[1], x.shape[-2] * x.shape[-1], dtype=x.dtype)
        bounds, tails = [], []
        for grp, (i, entry) in zip(geom.groups, self._entries_for(k, geom.groups)):
            for g in range(grp.query_pos.shape[0]):
                qpos = grp.query_pos[g]
                for rows, lo, hi in ranges:
                    q = queries[rows][:, :, qpos].permute(0, 2, 1).reshape(-1, queries.shape[1])  # (b*m, d)
                    if entry.family in EXACT_FAMILIES or not entry.indexed:
                        val = self._exact(q, grp.cand_pos[g], k, a, b, lo, hi)
                    else:
                        val, bound, tail = self._approx(q, (k, i, g), entry, grp.cand_pos[g], a, b, lo, hi)
                        bounds.append(bound)
                        if tail is not None:
                            tails.append(tail)
                    out[rows.view(-1, 1), :, qpos.view(1, -1)] = val.view(len(rows), len(qpos), -1)
        return out.view_as(x), (bounds or [torch.zeros(0)], tails)

    def _exact(self, q: torch.Tensor, cand_pos: torch.Tensor, k: int, a: float, b: float, lo: int, hi: int) -> torch.Tensor:
        """Every candidate (images lo..hi at positions ``cand_pos``), in blocks of images."""
        per_image = len(cand_pos)
        acc = SoftmaxAccumulator((1, q.shape[0]), self.source.channels, q.dtype, q.device)
        step = max(1, RERANK_ELEMENTS // max(1, per_image * q.shape[1]))
        for start in range(lo, hi, step):
            img = torch.arange(start, min(hi, start + step)).view(-1, 1).expand(-1, per_image)
            pos = cand_pos.view(1, -1).expand_as(img)
            w = self.source.windows(img, pos, k).reshape(-1, q.shape[1])
            logits = (q @ w.T).mul_(a / b**2).add_(w.square().sum(-1).mul_(-(a * a) / (2 * b * b)))
            acc.add(logits.unsqueeze(0), with_ones(self.source.centres(img, pos).reshape(1, -1, self.source.channels)))
        return acc.result()[0]

    def _approx(self, q: torch.Tensor, key: tuple[int, int, int], entry: Entry, cand_pos: torch.Tensor,
                a: float, b: float, lo: int, hi: int):
        """Top-K, exact re-rank, bound (and tail sample) for the query rows ``q`` (R, d)."""
        per_image = entry.per_image
        id_lo, id_hi = lo * per_image, hi * per_image
        whole = lo == 0 and hi == self.n_images
        index = self.file.index(*key)
        factor = self.k_factor or int(entry.info.get("k_factor", 1))
        _, ids = fx.search(index, (q / a).float().numpy(), self.topk * factor, self.nprobe, self.ef,
                           None if whole else (id_lo, id_hi))
        ids = torch.from_numpy(ids)
        n_total = id_hi - id_lo
        sample = self._tail_sample(key, id_lo, id_hi) if self.tail else None
        vals, bounds, tails = [], [], []
        step = max(1, RERANK_ELEMENTS // max(1, ids.shape[1] * q.shape[1]))
        for s in range(0, q.shape[0], step):
            v, bd, tl = self._rerank(q[s : s + step], ids[s : s + step], cand_pos, per_image, key[0], a, b, n_total, sample)
            vals.append(v)
            bounds.append(bd)
            tails.append(tl)
        return torch.cat(vals), torch.cat(bounds), (torch.cat(tails) if sample is not None else None)

    def _rerank(self, q, ids, cand_pos, per_image, k, a, b, n_total, sample):
        valid = ids >= 0
        safe = ids.clamp(min=0)
        img, pos = safe // per_image, cand_pos[safe % per_image]
        w = self.source.windows(img, pos, k)  # (R, K, d)
        logits = torch.einsum("rd,rkd->rk", q, w).mul_(a / b**2).add_(w.square().sum(-1).mul_(-(a * a) / (2 * b * b)))
        logits.masked_fill_(~valid, -math.inf)
        acc = SoftmaxAccumulator((q.shape[0], 1), self.source.channels, q.dtype, q.device)
        acc.add(logits.clone().unsqueeze(1), with_ones(self.source.centres(img, pos)))
        log_z = acc.log_normaliser()[:, 0]
        # Every candidate outside the true top-K weighs at most the K-th weight; if the search found the
        # true top-K (recall 1, e.g. Flat), each ignored candidate is outside it.
        kept = valid.sum(1)
        ranked = logits.sort(1, descending=True).values
        kth = ranked.gather(1, (kept.clamp(min=1, max=self.topk) - 1).view(-1, 1))[:, 0]
        log_bound = torch.log((n_total - kept).clamp(min=0).to(q.dtype)) + kth - log_z
        bound = torch.sigmoid(log_bound)  # B / (1 + B) with B = exp(log_bound)
        tail = None
        if sample is not None:
            tail = self._add_tail(acc, q, ids, sample, cand_pos, k, a, b, n_total, log_z)
        return acc.result()[:, 0], bound, tail

    def _tail_sample(self, key, id_lo: int, id_hi: int):
        gen = torch.Generator().manual_seed(hash((self.seed, *key, id_lo)) % 2**31)
        return torch.randint(id_lo, id_hi, (self.tail,), generator=gen)

    def _add_tail(self, acc, q, ids, sample, cand_pos, k, a, b, n_total, log_z) -> torch.Tensor:
        """Fold in the uniform sample, weighted n_total / m, minus retrieved ids; returns the tail share."""
        img, pos = sample // len(cand_pos), cand_pos[sample % len(cand_pos)]
        w = self.source.windows(img, pos, k)  # (m, d)
        logits = (q @ w.T).mul_(a / b**2).add_(w.square().sum(-1).mul_(-(a * a) / (2 * b * b)))
        # A sampled id already among the retrieved ones is counted there: mask it (the estimator of the
        # ignored sum stays unbiased because the sample covers all n_total candidates uniformly).
        srt = ids.sort(1).values
        where = torch.searchsorted(srt, sample.view(1, -1).expand(len(srt), -1).contiguous()).clamp(max=srt.shape[1] - 1)
        hit = srt.gather(1, where) == sample.view(1, -1)
        logits.masked_fill_(hit, -math.inf).add_(math.log(n_total / len(sample)))
        log_tail = torch.logsumexp(logits, dim=1)
        values = with_ones(self.source.centres(img, pos)).unsqueeze(0).expand(q.shape[0], -1, -1)
        acc.add(logits.unsqueeze(1), values)
        return torch.sigmoid(log_tail - log_z)


def _q(v: torch.Tensor, quantile: float) -> float:
    if v.numel() == 0:
        return 0.0
    return float(torch.quantile(v.double().flatten()[:1_000_000], quantile))

