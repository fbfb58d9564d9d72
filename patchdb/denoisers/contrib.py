"""Top contributors of one denoiser call: which training candidates carry each pixel's weight.

For every output pixel ``p`` of ``D(x, t)`` the machines of docs/math.md form a softmax over candidate
windows ``(n, q)``. This module streams the training set in blocks (as the exact engine does) and
keeps, per pixel, a running top-``m`` of the log-weights together with the running log-sum-exp,
the weight entropy and ``D`` itself, so one pass gives the normalised weights of the ``m`` largest
candidates, how many of them cover a mass share, the effective number of sources
(``exp(entropy)``) and the denoiser output (a check against the engine).

Candidates are named by one integer, ``id = image * H * W + q`` (``q`` the flat centre position
``y * W + x``); the family of a candidate (interior/edge/corner for bbELS, els, ls, is) is that of
the query pixel's group and is returned per pixel. For IS a "candidate" is a whole training image;
pixel ``p`` then takes ``phi^n_p``, so its id is ``n * H * W + p``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import PatchdbError
from ..patches import Group, geometry, unfold_windows
from ..schedule import alpha_sigma, check_patch_size
from ..spec import Machine
from .kernels import Coefficients
from .retrieval import Retrieval, expanded_logits, tail_hits
from .softmax import LOG_FLOOR, with_ones

#: Family codes stored per pixel; index = code.
FAMILIES = ("interior", "edge", "corner", "els", "ls", "is")
FAMILY_CODE = {name: code for code, name in enumerate(FAMILIES)}

#: Size of one block of logits (larger than the exact engine's: the top-m merge favours fewer, bigger blocks).
DEFAULT_BLOCK_BYTES = 16 * 2**20


class Logits(Coefficients):
    """The exact engine's weights (``logit = scale * <x, phi> + bias_coef * |phi|^2``), plus plain distance."""

    @classmethod
    def distance(cls) -> Logits:
        """``-|x - phi|^2 / 2`` up to ``-|x|^2 / 2``: ranks candidates by plain window distance."""
        return cls(scale=1.0, bias_coef=-0.5)


@dataclass
class Contributors:
    """Per-pixel top contributors of one denoiser call for a batch of B images of H x W pixels.

    Attributes
    ----------
    ids : (B, HW, m) int64, candidate ids ``image * H * W + q``, largest weight first; -1 pads.
    weights : (B, HW, m) float, weights normalised over *all* candidates (not only the m kept).
    logits : (B, HW, m) float, the raw logits of the kept candidates (``Logits`` convention).
    count : (B, HW) int64, how many of the kept candidates cover ``mass`` (at most m).
    covered : (B, HW) float, the weight of those ``count`` candidates.
    entropy : (B, HW) float, entropy (nats) of the full weight distribution of each pixel.
    log_norm : (B, HW) float, ``log sum_j exp(logit_j)`` over all candidates.
    family : (HW,) uint8, family code of each pixel's candidates (see ``FAMILIES``).
    denoised : (B, C, H, W), the weighted centres, i.e. ``D(x, t)``.
    """

    ids: torch.Tensor
    weights: torch.Tensor
    logits: torch.Tensor
    count: torch.Tensor
    covered: torch.Tensor
    entropy: torch.Tensor
    log_norm: torch.Tensor
    family: torch.Tensor
    denoised: torch.Tensor

    @property
    def effective_sources(self) -> torch.Tensor:
        """``exp(entropy)`` per pixel, (B, HW): 1 for a single source, N for N equal ones."""
        return self.entropy.exp()


class TopAccumulator:
    """Running top-m logits, log-sum-exp, entropy and weighted values of (G, M) query rows.

    The entropy needs ``sum_j e_j l_j`` with ``e_j = exp(l_j - max)``. For small windows it rides
    along in the values' matrix product: ``l_j = <q, c_j>`` is linear in the augmented candidate
    ``c_j``, so the sum is ``<q, sum_j e_j c_j>``. For large windows (where that product would cost
    as much as the logits) it is a per-row dot product of ``e`` with the shifted logits instead.
    With ``S = sum_j e_j``: ``H = max + log S - sum_j e_j l_j / S``.
    """

    #: Above this many augmented features the entropy is summed elementwise (see the class doc).
    VIA_PRODUCT_MAX = 32

    def __init__(self, queries: torch.Tensor, m: int, value_dim: int):
        self.q = queries  # (G, M, K+1)
        shape = queries.shape[:2]
        dtype, device = queries.dtype, queries.device
        self.m, self.value_dim = m, value_dim
        self.via_product = queries.shape[-1] <= self.VIA_PRODUCT_MAX
        self.top = torch.full((*shape, m), float("-inf"), dtype=dtype, device=device)
        self.top_ids = torch.full((*shape, m), -1, dtype=torch.long, device=device)
        self.max: torch.Tensor | None = None
        extra = queries.shape[-1] if self.via_product else 0
        # sum e*v (V), sum e (1), then sum e*c (K+1) or nothing
        self.acc = torch.zeros((*shape, value_dim + 1 + extra), dtype=dtype, device=device)
        self.e_rel = torch.zeros(shape, dtype=dtype, device=device)  # sum e * (l - max), elementwise mode

    def add(self, logits: torch.Tensor, ids: torch.Tensor, values: torch.Tensor, cands: torch.Tensor) -> None:
        """Fold in a block: ``logits`` (G, M, P) (overwritten), ``ids`` (G, P), ``values`` (G, P, V+1)
        with a ones column last, ``cands`` (G, P, K+1) the augmented candidates behind ``logits``."""
        block_max = logits.amax(dim=-1)
        self._merge_top(logits, ids, block_max)
        new_max = block_max if self.max is None else torch.maximum(self.max, block_max)
        if self.max is not None:
            shift = self.max - new_max  # <= 0
            if not self.via_product:
                self.e_rel.add_(shift * self.acc[..., self.value_dim])
                self.e_rel.mul_(shift.exp())
            self.acc.mul_(shift.exp().unsqueeze(-1))
        self.max = new_max
        rel = logits.sub_(new_max.unsqueeze(-1)).clamp_(min=-LOG_FLOOR)
        if self.via_product:
            self.acc.add_(torch.bmm(rel.exp_(), torch.cat([values, cands], dim=-1)))
            return
        e = rel.exp()
        self.e_rel.add_(torch.linalg.vecdot(e, rel))
        self.acc.add_(torch.bmm(e, values))

    def _merge_top(self, logits: torch.Tensor, ids: torch.Tensor, block_max: torch.Tensor) -> None:
        """Merge the block's best into the running top-m, only for rows the block can change."""
        g, rows, p = logits.shape
        hit = (block_max > self.top[..., -1]).view(-1).nonzero().view(-1)
        if hit.numel() == 0:
            return
        m = min(self.m, p)
        vals, idx = logits.view(g * rows, p)[hit].topk(m, dim=-1)
        block_ids = ids[hit // rows].gather(1, idx)
        top, top_ids = self.top.view(g * rows, -1), self.top_ids.view(g * rows, -1)
        both = torch.cat([top[hit], vals], dim=-1)
        both_ids = torch.cat([top_ids[hit], block_ids], dim=-1)
        best, pick = both.topk(self.m, dim=-1)
        top[hit] = best
        top_ids[hit] = both_ids.gather(1, pick)

    def _sum_e(self) -> torch.Tensor:
        return self.acc[..., self.value_dim]

    def log_norm(self) -> torch.Tensor:
        return self.max + self._sum_e().log()

    def entropy(self) -> torch.Tensor:
        s = self._sum_e()
        if self.via_product:
            e_l = (self.acc[..., self.value_dim + 1 :] * self.q).sum(-1)
            return (self.max + s.log() - e_l / s).clamp_(min=0.0)
        return (s.log() - self.e_rel / s).clamp_(min=0.0)

    def values(self) -> torch.Tensor:
        return self.acc[..., : self.value_dim] / self.acc[..., self.value_dim : self.value_dim + 1]


def cover(weights: torch.Tensor, mass: float) -> tuple[torch.Tensor, torch.Tensor]:
    """How many of the sorted ``weights`` (..., m) reach ``mass``, and the weight they carry.

    Counts stop at m when the kept candidates carry less than ``mass``.
    """
    cum = weights.cumsum(-1)
    count = (cum < mass).sum(-1).add_(1).clamp_(max=weights.shape[-1])
    covered = torch.gather(cum, -1, (count - 1).unsqueeze(-1)).squeeze(-1)
    return count, covered


def check_mass(mass: float, m: int) -> None:
    if not 0.0 < mass <= 1.0:
        raise PatchdbError(f"mass share {mass} is outside (0, 1]; use e.g. 0.9 for 90% of the weight")
    if isinstance(m, bool) or int(m) != m or m < 1:
        raise PatchdbError(f"max contributors {m} must be a positive integer, e.g. 16")


def local_contributors(
    x: torch.Tensor,
    images: torch.Tensor,
    t: float | None,
    k: int,
    machine: Machine | str,
    m: int = 16,
    mass: float = 0.9,
    image_ids: torch.Tensor | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    logits: Logits | None = None,
) -> Contributors:
    """Top-``m`` contributors of every pixel of a local machine (LS, ELS, bbELS), docs/math.md weights.

    Parameters
    ----------
    x : (B, C, H, W) float, the noisy images at time ``t``.
    images : (N, C, H, W) float training images in [-1, 1], same dtype as ``x``.
    t : time in (0, 1] (ignored when ``logits`` is given).  k : odd patch size.
    image_ids : (N,) global ids of ``images`` (default ``arange(N)``), for class subsets.
    logits : override the weights (``Logits.distance()`` ranks by window distance).
    """
    check_patch_size(k)
    check_mass(mass, m)
    b, c, h, w = x.shape
    geom = geometry(Machine.parse(machine), k, h, w)
    coef = logits or Logits.at(t)
    ids_of = _image_ids(image_ids, images)
    queries = unfold_windows(x, k, geom.query_padding) * coef.scale  # (B, K, HW)
    out = _empty_result(b, c, h, w, m, x.dtype)
    accs = [_group_queries(queries, group, m, images.shape[1]) for group in geom.groups]
    step = block_images(block_bytes, accs, geom.groups, images.shape[1], k, h, w, queries.element_size())
    for start in range(0, images.shape[0], step):
        block = images[start : start + step]
        padded = _Windows(block, k)  # one unfold per block, shared by the groups
        for acc, group in zip(accs, geom.groups):
            cands, values = _candidates(padded, block, group.cand_pos, coef)
            ids = (ids_of[start : start + step].view(1, -1, 1) * (h * w) + group.cand_pos.unsqueeze(1)).reshape(
                group.cand_pos.shape[0], -1)
            acc.add(torch.bmm(acc.q, cands.transpose(1, 2)), ids, values, cands)
    for acc, group in zip(accs, geom.groups):
        _scatter_group(out, acc, group, b, mass)
    out.denoised = out.denoised.view(b, c, h, w)
    return out


def block_images(block_bytes: int, accs, groups, channels: int, k: int, h: int, w: int, itemsize: int) -> int:
    """Training images per block so that one block's arrays take about ``block_bytes`` (at least one image).

    Per image a block holds the logits of every query row against its candidates, the image's windows
    (cut once per block: every position, and the fully inside ones) and, per group, the gathered candidate
    windows with their bias column, which a reshape and a concatenation copy once more. At large ``k``
    the windows dominate: counting only the logits made ``query --size 31`` on the embedded 2,000 images
    one block of all of them, a 7.9 GB unfold (issue 29).
    """
    feat = channels * k * k
    r = k // 2
    logits = sum(acc.q.shape[0] * acc.q.shape[1] * g.cand_pos.shape[1] for acc, g in zip(accs, groups))
    windows = feat * (h * w + max(h - 2 * r, 0) * max(w - 2 * r, 0))
    cands = sum(2 * g.cand_pos.numel() * (feat + 1) + g.cand_pos.numel() * (channels + 1) for g in groups)
    return max(1, int(block_bytes) // max((logits + windows + cands) * itemsize, 1))


def _image_ids(image_ids: torch.Tensor | None, images: torch.Tensor) -> torch.Tensor:
    if image_ids is None:
        return torch.arange(images.shape[0])
    return torch.as_tensor(image_ids, dtype=torch.long).cpu()


def _group_queries(queries: torch.Tensor, group: Group, m: int, channels: int) -> TopAccumulator:
    """An accumulator over the augmented queries of one group, (G, B*mq, K+1)."""
    n_batch, n_feat, _ = queries.shape
    n_groups, mq = group.query_pos.shape
    q = queries[:, :, group.query_pos.reshape(-1)].view(n_batch, n_feat, n_groups, mq)
    q = with_ones(q.permute(2, 0, 3, 1).reshape(n_groups, n_batch * mq, n_feat))
    return TopAccumulator(q, m, channels)


class _Windows:
    """Windows of one block of training images, cut at most once per block (lazily)."""

    def __init__(self, block: torch.Tensor, k: int):
        self.block, self.k = block, k
        self._all: torch.Tensor | None = None
        self._inside: torch.Tensor | None = None

    def at(self, flat_pos: torch.Tensor) -> torch.Tensor:
        """(n, K, P) windows centred at ``flat_pos``, zero padded."""
        h, w = self.block.shape[-2:]
        r = self.k // 2
        if r > 0 and flat_pos.numel() == (h - 2 * r) * (w - 2 * r):
            ys, xs = torch.arange(r, h - r), torch.arange(r, w - r)
            if torch.equal(flat_pos, (ys.view(-1, 1) * w + xs.view(1, -1)).reshape(-1)):
                # The windows lying fully inside, in row-major order: an unpadded unfold, no gather.
                if self._inside is None:
                    self._inside = torch.nn.functional.unfold(self.block, kernel_size=self.k)
                return self._inside
        if self._all is None:
            self._all = unfold_windows(self.block, self.k, "zeros")
        return self._all[:, :, flat_pos]


def _candidates(windows: _Windows, block: torch.Tensor, cand_pos: torch.Tensor, coef: Logits):
    """Augmented candidate windows (G, n*mc, K+1) and centres with ones (G, n*mc, C+1), n-major."""
    n, channels = block.shape[:2]
    n_groups, mc = cand_pos.shape
    flat_pos = cand_pos.reshape(-1)
    win = windows.at(flat_pos)
    win = win.view(n, -1, n_groups, mc).permute(2, 0, 3, 1).reshape(n_groups, n * mc, -1)
    bias = win.square().sum(-1, keepdim=True).mul_(coef.bias_coef)
    centres = block.flatten(2)[:, :, flat_pos].view(n, channels, n_groups, mc)
    centres = centres.permute(2, 0, 3, 1).reshape(n_groups, n * mc, channels)
    return torch.cat([win, bias], dim=-1), with_ones(centres)


def _empty_result(b: int, c: int, h: int, w: int, m: int, dtype: torch.dtype) -> Contributors:
    hw = h * w
    return Contributors(
        ids=torch.full((b, hw, m), -1, dtype=torch.long),
        weights=torch.zeros((b, hw, m), dtype=dtype),
        logits=torch.full((b, hw, m), float("-inf"), dtype=dtype),
        count=torch.zeros((b, hw), dtype=torch.long),
        covered=torch.zeros((b, hw), dtype=dtype),
        entropy=torch.zeros((b, hw), dtype=dtype),
        log_norm=torch.zeros((b, hw), dtype=dtype),
        family=torch.zeros(hw, dtype=torch.uint8),
        denoised=torch.zeros((b, c, hw), dtype=dtype),
    )


def _scatter_group(out: Contributors, acc: TopAccumulator, group: Group, b: int, mass: float) -> None:
    """Write one group's rows (G, B*mq) back to per-image, per-pixel arrays."""
    n_groups, mq = group.query_pos.shape
    pos = group.query_pos.reshape(-1)

    def per_pixel(t: torch.Tensor) -> torch.Tensor:  # (G, B*mq, ...) -> (B, G*mq, ...)
        rest = t.shape[2:]
        return t.reshape(n_groups, b, mq, *rest).transpose(0, 1).reshape(b, n_groups * mq, *rest)

    log_norm = acc.log_norm()
    weights = (acc.top - log_norm.unsqueeze(-1)).exp()
    valid = acc.top_ids >= 0
    weights = torch.where(valid, weights, torch.zeros_like(weights))
    count, covered = cover(weights, mass)
    out.ids[:, pos] = per_pixel(acc.top_ids).cpu()
    out.weights[:, pos] = per_pixel(weights).cpu()
    out.logits[:, pos] = per_pixel(acc.top).cpu()
    out.count[:, pos] = per_pixel(count).cpu()
    out.covered[:, pos] = per_pixel(covered).cpu()
    out.entropy[:, pos] = per_pixel(acc.entropy()).cpu()
    out.log_norm[:, pos] = per_pixel(log_norm).cpu()
    out.family[pos] = FAMILY_CODE[group.family]
    out.denoised[:, :, pos] = per_pixel(acc.values()).permute(0, 2, 1).cpu()


def is_contributors(
    x: torch.Tensor,
    images: torch.Tensor,
    t: float,
    m: int = 16,
    mass: float = 0.9,
    image_ids: torch.Tensor | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> Contributors:
    """Top-``m`` training images of the IS machine; every pixel shares its image's weights."""
    check_mass(mass, m)
    b, c, h, w = x.shape
    hw = h * w
    coef = Logits.at(t)
    ids_of = _image_ids(image_ids, images)
    q = with_ones(x.flatten(1) * coef.scale).unsqueeze(0)  # (1, B, D+1)
    acc = TopAccumulator(q, m, c * hw)
    step = max(1, block_bytes // max(images[0].numel() * images.element_size(), 1))
    for start in range(0, images.shape[0], step):
        flat = images[start : start + step].flatten(1)
        bias = flat.square().sum(-1, keepdim=True) * coef.bias_coef
        cands = torch.cat([flat, bias], dim=-1).unsqueeze(0)
        ids = ids_of[start : start + step].view(1, -1)
        acc.add(torch.bmm(q, cands.transpose(1, 2)), ids, with_ones(flat).unsqueeze(0), cands)
    log_norm = acc.log_norm()[0]  # (B,)
    weights = (acc.top[0] - log_norm.unsqueeze(-1)).exp()
    weights = torch.where(acc.top_ids[0] >= 0, weights, torch.zeros_like(weights))
    count, covered = cover(weights, mass)
    pix = torch.arange(hw)
    ids = torch.where(acc.top_ids[0] >= 0, acc.top_ids[0], -1).unsqueeze(1) * hw + pix.view(1, -1, 1)
    ids = torch.where(acc.top_ids[0].unsqueeze(1) >= 0, ids, torch.full_like(ids, -1))

    def spread(v: torch.Tensor) -> torch.Tensor:  # (B, ...) -> (B, HW, ...)
        return v.unsqueeze(1).expand(b, hw, *v.shape[1:]).clone()

    return Contributors(
        ids=ids.cpu(), weights=spread(weights).cpu(), logits=spread(acc.top[0]).cpu(),
        count=spread(count).cpu(), covered=spread(covered).cpu(), entropy=spread(acc.entropy()[0]).cpu(),
        log_norm=spread(log_norm).cpu(), family=torch.full((hw,), FAMILY_CODE["is"], dtype=torch.uint8),
        denoised=acc.values()[0].view(b, c, h, w).cpu(),
    )


def contributors(
    x: torch.Tensor,
    images: torch.Tensor,
    t: float,
    k: int | None,
    machine: Machine | str,
    m: int = 16,
    mass: float = 0.9,
    labels: torch.Tensor | None = None,
    train_labels: torch.Tensor | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> Contributors:
    """Top contributors of ``D(x, t)`` for any machine, class-conditional when ``labels`` is given.

    Parameters
    ----------
    x : (B, C, H, W) float noisy images.  images : (N, C, H, W) float training set (same dtype).
    k : patch size (ignored by IS).  labels : (B,) class of each image, or None.
    train_labels : (N,) class of each training image (needed with ``labels``).
    Candidate ids always refer to rows of ``images`` (global ids), whatever the class subset.
    """
    machine = Machine.parse(machine)
    if labels is None:
        return _one_call(x, images, t, k, machine, m, mass, None, block_bytes)
    if train_labels is None:
        raise PatchdbError("class-conditional attribution needs the training labels (train_labels=)")
    labels = torch.as_tensor(labels).long().view(-1).cpu()
    train_labels = torch.as_tensor(train_labels).long().cpu()
    parts: dict[int, tuple[torch.Tensor, Contributors]] = {}
    for label in torch.unique(labels).tolist():
        rows = (labels == label).nonzero().view(-1)
        if label < 0:  # an unconditional sample in a mixed batch
            parts[label] = (rows, _one_call(x[rows], images, t, k, machine, m, mass, None, block_bytes))
            continue
        ids = (train_labels == label).nonzero().view(-1)
        if ids.numel() == 0:
            raise PatchdbError(f"label {label} has no training images in this data; load the dataset the samples used")
        sub = images[ids.to(images.device)]
        parts[label] = (rows, _one_call(x[rows], sub, t, k, machine, m, mass, ids, block_bytes))
    return stitch(parts, x.shape[0])


def _one_call(x, images, t, k, machine, m, mass, image_ids, block_bytes) -> Contributors:
    if machine is Machine.IS:
        return is_contributors(x, images, t, m, mass, image_ids, block_bytes)
    if k is None:
        raise PatchdbError(f"the {machine.value} machine needs a patch size k")
    return local_contributors(x, images, t, k, machine, m, mass, image_ids, block_bytes)


def stitch(parts: dict, batch: int) -> Contributors:
    """One :class:`Contributors` of a batch from per-class parts ``{label: (rows, Contributors)}``."""
    first = next(iter(parts.values()))[1]
    fields = {}
    for name in ("ids", "weights", "logits", "count", "covered", "entropy", "log_norm", "denoised"):
        ref = getattr(first, name)
        full = torch.empty((batch, *ref.shape[1:]), dtype=ref.dtype)
        for rows, part in parts.values():
            full[rows] = getattr(part, name)
        fields[name] = full
    return Contributors(family=first.family, **fields)


def nearest_patches(
    x: torch.Tensor,
    images: torch.Tensor,
    k: int,
    machine: Machine | str = Machine.BBELS,
    n: int = 5,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``n`` training windows nearest to every window of ``x`` among the machine's candidates.

    Returns ``ids`` (B, HW, n) candidate ids, ``dist`` (B, HW, n) Euclidean window distances
    (ascending) and ``family`` (HW,) codes. The ranking is the machine's weight ranking as t -> 0
    (docs/math.md "Approximate mode": the nearest windows carry the weight).
    """
    machine = Machine.parse(machine)
    if machine is Machine.IS:
        raise PatchdbError("the IS machine has no windows; query with --machine ls, els or bbels")
    res = local_contributors(x, images, None, k, machine, m=n, mass=1.0, block_bytes=block_bytes, logits=Logits.distance())
    geom = geometry(machine, k, x.shape[-2], x.shape[-1])
    x_sq = unfold_windows(x, k, geom.query_padding).square().sum(1)  # (B, HW)
    dist = (x_sq.unsqueeze(-1) - 2 * res.logits).clamp_(min=0).sqrt()
    return res.ids, dist, res.family


# --------------------------------------------------------------------------------------------
# Through a FAISS index file (patchdb.indexing): retrieved candidates, exactly re-ranked
# --------------------------------------------------------------------------------------------


def _retrieve(index, src, k: int, entry_i: int, entry, g: int, cand_pos: torch.Tensor, q: torch.Tensor,
              retrieval: Retrieval, lo: int, hi: int, a: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Candidates of query rows ``q`` (R, d): image (R, P), flat position (R, P), valid (R, P), and the
    log of how many candidates each stands for (P,).

    Indexed families: what the approximate engine retrieves with the same ``retrieval`` settings, the
    FAISS top-K of ``q / a`` within images ``[lo, hi)``; the others (corners, LS fallback: one candidate
    per image) every image of the range. Blank windows, which the file takes out of its IVF lists
    (:class:`patchdb.indexing.windows.Blanks`) and the engine counts as one candidate of multiplicity M,
    appear as ``min(M, topk)`` of them spread over the range, each standing for ``M / min(M, topk)``:
    the same weights and D as the engine, credited to real windows. The tail sample (when on) is the
    engine's, each sampled id standing for ``n_total / m`` candidates, minus those counted already.
    """
    per_image = entry.per_image
    if not entry.indexed:
        img = torch.arange(lo, hi).view(1, -1).expand(q.shape[0], -1)
        pos = cand_pos[0].expand_as(img)
        return img, pos, torch.ones_like(img, dtype=torch.bool), torch.zeros(img.shape[1], dtype=torch.float64)
    whole = lo == 0 and hi == src.n
    id_lo, id_hi = lo * per_image, hi * per_image
    key = (k, entry_i, g)
    ids = retrieval.retrieve(index.index(*key), q / a, entry, id_hi - id_lo, None if whole else (id_lo, id_hi),
                             lambda found: src.windows32(found, cand_pos, k))
    mult = torch.zeros(ids.shape[1], dtype=torch.float64)
    blanks = index.blanks(*key)
    count = 0 if blanks is None else blanks.count(lo, hi)
    sample = retrieval.tail_sample(key, id_lo, id_hi)
    if sample is not None:
        hit = tail_hits(ids, sample, None if not count else blanks.mask)
        tail = torch.where(hit, torch.full_like(hit, -1, dtype=torch.long), sample.view(1, -1))
        tail_mult = torch.full((len(sample),), math.log((id_hi - id_lo) / len(sample)), dtype=torch.float64)
    if count:
        reps = blanks.ids(lo, hi, per_image, min(count, retrieval.topk))
        ids = torch.cat([ids, reps.view(1, -1).expand(ids.shape[0], -1)], dim=1)
        mult = torch.cat([mult, torch.full((len(reps),), math.log(count / len(reps)), dtype=torch.float64)])
    if sample is not None:
        ids = torch.cat([ids, tail], dim=1)
        mult = torch.cat([mult, tail_mult])
    valid = ids >= 0
    safe = ids.clamp(min=0)
    return safe // per_image, cand_pos[safe % per_image], valid, mult


def index_contributors(
    x: torch.Tensor,
    index,
    t: float | None,
    k: int,
    machine: Machine | str,
    m: int = 16,
    mass: float = 0.9,
    topk: int | None = None,
    image_range: tuple[int, int] | None = None,
    distance: bool = False,
    retrieval: Retrieval | None = None,
) -> Contributors:
    """Top contributors through an index file: the approximate engine's candidates, exactly re-ranked.

    ``retrieval`` (default: :class:`Retrieval`'s defaults, as the engine's) picks the candidates as the
    approximate engine does with the same settings, tail sample included, so ``denoised`` is the
    engine's D; ``topk`` overrides its K. Weights are normalised over those candidates (docs/math.md
    "Approximate mode"); the families the file does not index are scanned exactly. With
    ``distance=True`` the logits are ``-|x - phi|^2 / 2`` and no tail is sampled (for
    :func:`nearest_patches_index`).
    """
    retrieval = (retrieval or Retrieval()).with_options(topk=topk)
    if distance:
        retrieval = retrieval.with_options(tail_correction=0)

    check_mass(mass, m)
    machine = Machine.parse(machine)
    b, c, h, w = x.shape
    geom = geometry(machine, k, h, w)
    a, bb = (1.0, 1.0) if distance else alpha_sigma(t)
    src = index.source()  # float64, shared with an approximate engine on the same file
    lo, hi = image_range or (0, src.n)
    queries = unfold_windows(x, k, geom.query_padding)  # (B, d, HW)
    out = _empty_result(b, c, h, w, m, x.dtype)
    for grp, (entry_i, entry) in zip(geom.groups, index.entries_for_groups(k, geom.groups, machine)):
        for g in range(grp.query_pos.shape[0]):
            qpos = grp.query_pos[g]
            q = queries[:, :, qpos].permute(0, 2, 1).reshape(-1, queries.shape[1]).double()  # (B*mq, d)
            img, pos, valid, mult = _retrieve(index, src, k, entry_i, entry, g, grp.cand_pos[g], q, retrieval, lo, hi, a)
            # Logits and their normalisation in float64 whatever x.dtype, as the engine does: at t ~ 1 the
            # query x / a is ~80 in size and float32 logits moved D by up to 2e-3 against the engine's.
            dots, norms, centres = src.window_terms(q, img, pos, k, with_centres=True)  # the engine's re-rank terms
            if distance:
                logits = dots.sub_(norms.mul_(0.5))
            else:
                logits = expanded_logits(q, dots, norms, a, bb).add_(mult)  # distances stay per window
            logits.masked_fill_(~valid, float("-inf"))
            ids = torch.where(valid, img * (h * w) + pos, torch.full_like(img, -1))
            _fill_rows(out, logits, ids, centres, qpos, b, m, mass, FAMILY_CODE[grp.family])
    out.denoised = out.denoised.view(b, c, h, w)
    return out


def _fill_rows(out: Contributors, logits, ids, centres, qpos, b: int, m: int, mass: float, family: int) -> None:
    """Normalise rows (R = B * len(qpos), P) over their candidates and write them to pixels ``qpos``."""
    log_norm = torch.logsumexp(logits, dim=-1)
    wts = (logits - log_norm.unsqueeze(-1)).exp()
    ent = -(wts * torch.where(wts > 0, logits - log_norm.unsqueeze(-1), torch.zeros_like(wts))).sum(-1)
    mm = min(m, logits.shape[-1])
    top, pick = logits.topk(mm, dim=-1)
    top_w = (top - log_norm.unsqueeze(-1)).exp()
    top_ids = ids.gather(1, pick)
    count, covered = cover(top_w, mass)
    shape = (b, len(qpos))
    out.ids[:, qpos, :mm] = top_ids.view(*shape, mm)
    out.weights[:, qpos, :mm] = top_w.view(*shape, mm).to(out.weights.dtype)
    out.logits[:, qpos, :mm] = top.view(*shape, mm).to(out.logits.dtype)
    out.count[:, qpos] = count.view(shape)
    out.covered[:, qpos] = covered.view(shape).to(out.covered.dtype)
    out.entropy[:, qpos] = ent.view(shape).clamp(min=0).to(out.entropy.dtype)
    out.log_norm[:, qpos] = log_norm.view(shape).to(out.log_norm.dtype)
    out.family[qpos] = family
    out.denoised[:, :, qpos] = torch.einsum("rp,rpc->rc", wts, centres).view(*shape, -1).permute(0, 2, 1).to(out.denoised.dtype)


def nearest_patches_index(x: torch.Tensor, index, k: int, machine: Machine | str = Machine.BBELS, n: int = 5,
                          image_range: tuple[int, int] | None = None, topk: int | None = None,
                          retrieval: Retrieval | None = None):
    """:func:`nearest_patches` through an index file (FAISS retrieval with ``retrieval``'s search settings,
    exact distances); ``topk`` candidates per window (default: ``retrieval``'s K, else max(32, 4n))."""
    machine = Machine.parse(machine)
    if machine is Machine.IS:
        raise PatchdbError("the IS machine has no windows; query with --machine ls, els or bbels")
    index.check(machine, [k])
    topk = topk or (retrieval.topk if retrieval is not None else max(32, 4 * n))
    res = index_contributors(x, index, None, k, machine, m=n, mass=1.0, topk=topk, image_range=image_range,
                             distance=True, retrieval=retrieval)
    geom = geometry(machine, k, x.shape[-2], x.shape[-1])
    x_sq = unfold_windows(x, k, geom.query_padding).square().sum(1)
    dist = (x_sq.unsqueeze(-1) - 2 * res.logits).clamp_(min=0).sqrt()
    return res.ids, dist, res.family
