"""Exact mode: every candidate of the machines of docs/math.md, streamed over the training set in blocks.

For a query window ``x_p`` and candidate window ``phi_q`` the log-weight is, up to a per-query
constant that cancels in the normalisation,

    logit = (a / b^2) <x_p, phi_q> - (a^2 / 2 b^2) |phi_q|^2,

so one matrix product of the query windows ``[x_p * a / b^2, 1]`` with the augmented candidate
windows ``[phi_q, -a^2 |phi_q|^2 / 2 b^2]`` gives every logit of a block at once. All query rows
of a batch (every pixel of every image) share one pass over the training set.

Identical candidate windows (the empty background of MNIST repeats millions of times) can be
scanned once: :func:`candidate_pools` keeps one representative of each distinct window with its
multiplicity ``c``, and the accumulator weights it by ``c`` (``c * exp(logit)`` is exactly the sum
of the ``c`` identical terms). The result is the same softmax over every candidate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..patches import Geometry, Group, geometry, window_offsets, windows_at
from ..schedule import alpha_sigma
from ..spec import Machine
from .softmax import ReferencedSoftmax, with_ones

#: Default size of one block of logits. Blocks that stay in the CPU's caches run several times
#: faster than one huge product (measured in benchmarks/exact.py); the peak memory of a call is a
#: small multiple of this plus the training images.
DEFAULT_BLOCK_BYTES = 4 * 2**20


@dataclass(frozen=True)
class Coefficients:
    """Per-call constants: logit = scale * <x, phi> + bias_coef * |phi|^2."""

    scale: float
    bias_coef: float

    @classmethod
    def at(cls, t: float) -> Coefficients:
        a, b = alpha_sigma(t)
        return cls(scale=a / b**2, bias_coef=-(a * a) / (2 * b**2))


def exact_local(
    x: torch.Tensor,
    images: torch.Tensor,
    t: float,
    k: int,
    machine: Machine,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    pools: list[CandidatePool] | None = None,
) -> torch.Tensor:
    """Denoiser of a local machine (LS, ELS, bbELS) over all windows of ``images``.

    Parameters
    ----------
    x : (B, C, H, W) noisy images, float.
    images : (N, C, H, W) training images in [-1, 1], same dtype and device as ``x``.
    t : time in (0, 1].  k : odd patch size.
    block_bytes : size of one block of logits; each block of training images is unfolded once and
        shared by every query group.
    pools : the distinct candidates of ``images`` (:func:`candidate_pools` for the same machine and
        ``k``); when given, each distinct window is scanned once, weighted by its multiplicity.

    Returns
    -------
    (B, C, H, W) tensor ``D``, in the dtype of ``x``.
    """
    geom = geometry(machine, k, x.shape[-2], x.shape[-1])
    coef = Coefficients.at(t)
    plans = [_GroupPlan(x, group, geom, coef, block_bytes) for group in geom.groups]
    if pools is not None:
        _scan_pools(plans, pools, images, geom, coef, block_bytes)
        return _assemble(x, plans)
    per_image = sum(plan.bytes_per_image() for plan in plans)
    step = max(1, block_bytes // max(per_image, 1))
    for start in range(0, images.shape[0], step):
        block = images[start : start + step]
        for plan in plans:
            plan.add(block)
    return _assemble(x, plans)


def _assemble(x: torch.Tensor, plans: list[_GroupPlan]) -> torch.Tensor:
    out = torch.empty(x.shape[0], x.shape[1], x.shape[-2] * x.shape[-1], dtype=x.dtype, device=x.device)
    for plan in plans:
        out[:, :, plan.group.query_pos.reshape(-1).to(x.device)] = plan.result()
    return out.view_as(x)


class _GroupPlan:
    """The queries of one group (all images of the batch), split into row chunks of bounded size."""

    def __init__(self, x: torch.Tensor, group: Group, geom: Geometry, coef: Coefficients, block_bytes: int):
        self.group, self.k, self.coef = group, geom.k, coef
        self.batch, self.channels = x.shape[:2]
        n_groups, m = group.query_pos.shape
        q = windows_at(x, geom.k, group.query_pos.reshape(-1), geom.query_padding)  # (B, G*m, K)
        q = q.view(self.batch, n_groups, m, -1).transpose(0, 1).reshape(n_groups, self.batch * m, -1)
        self.cand_pos = group.cand_pos.reshape(-1)
        self.itemsize = x.element_size()
        rows = max(1, block_bytes // max(n_groups * group.cand_pos.shape[1] * self.itemsize, 1))
        self.chunks = [ReferencedSoftmax(c * coef.scale, self.channels) for c in q.split(rows, dim=1)]

    def bytes_per_image(self) -> int:
        return self.group.cand_pos.numel() * min(self.chunks[0].q.shape[1], self.batch * self.group.query_pos.shape[1]) * self.itemsize

    def add(self, block: torch.Tensor) -> None:
        """Fold in every candidate window of a block of training images."""
        self.fold(*_candidates(block, self.group.cand_pos, self.k, self.coef))

    def fold(self, cands: torch.Tensor, values: torch.Tensor) -> None:
        """Fold in candidates: (G, P, K+1) features + bias, (G, P, C+1) centres and ones (for distinct
        windows, centres and ones multiplied by each window's multiplicity)."""
        for chunk in self.chunks:
            chunk.add(cands, values)

    def result(self) -> torch.Tensor:
        """Weighted centres (B, C, G*m), in the order of ``query_pos``."""
        n_groups, m = self.group.query_pos.shape
        res = torch.cat([chunk.result() for chunk in self.chunks], dim=1)  # (G, B*m, C)
        return res.view(n_groups, self.batch, m, self.channels).permute(1, 3, 0, 2).reshape(self.batch, self.channels, -1)


def _candidates(block: torch.Tensor, cand_pos: torch.Tensor, k: int, coef: Coefficients):
    """Candidate windows with their bias column (G, n*mc, K+1), and centres with ones (G, n*mc, C+1)."""
    n, channels = block.shape[:2]
    n_groups, mc = cand_pos.shape
    flat_pos = cand_pos.reshape(-1)
    windows = windows_at(block, k, flat_pos)  # (n, G*mc, K)
    windows = windows.view(n, n_groups, mc, -1).transpose(0, 1).reshape(n_groups, n * mc, -1)
    bias = windows.square().sum(-1, keepdim=True).mul_(coef.bias_coef)
    centres = block.flatten(2)[:, :, flat_pos.to(block.device)].view(n, channels, n_groups, mc)
    centres = centres.permute(2, 0, 3, 1).reshape(n_groups, n * mc, channels)
    return torch.cat([windows, bias], dim=-1), with_ones(centres)


@dataclass(frozen=True)
class CandidatePool:
    """The distinct candidate windows of one query group: ``(G, M)`` representatives and counts.

    Row ``g`` lists, for the candidate positions ``cand_pos[g]`` of the group, one training image
    and position per distinct window (``image``, ``pos``: flat ``y * W + x``) and how many
    (image, position) pairs carry that window (``count``). Rows shorter than ``M`` are padded with
    copies of their first entry with count 0, which add nothing.
    """

    image: torch.Tensor
    pos: torch.Tensor
    count: torch.Tensor

    @property
    def size(self) -> int:
        return int((self.count > 0).sum())


#: Distinct pools are only built when a group's first chunk of windows is at most this share distinct:
#: above it the scan of distinct windows saves little (and its gather costs a little more per window).
MAX_DISTINCT_SHARE = 0.9
#: Windows are sorted for :func:`candidate_pools` in chunks of about this many bytes of codes, so the
#: peak memory is one chunk's sort plus the distinct windows kept so far, not a sort of every window.
POOL_CHUNK_BYTES = 256 * 2**20


def candidate_pools(images: torch.Tensor, geom: Geometry, max_share: float = MAX_DISTINCT_SHARE,
                    chunk_bytes: int = POOL_CHUNK_BYTES) -> list[CandidatePool] | None:
    """Distinct candidate windows of ``images`` per group of ``geom``, or None when not worth it.

    Windows are compared on integer codes of the pixel values (exact: equal codes, equal floats),
    so this only runs when the images hold at most 65,536 distinct values (8-bit sources have
    256, coded in one byte). Cost: one sort per chunk of windows and one merge of the chunks'
    distinct windows per group. None too when a group's first chunk is more than ``max_share``
    distinct (natural images: nearly every window differs), so the plain scan is used.
    """
    values, codes = torch.unique(images.detach().cpu(), return_inverse=True)
    if values.numel() > 2**16:
        return None
    # The zero padding around the images gets code 0, which may equal a pixel value's code: that
    # is harmless, because the candidates compared with each other (one row of a group) all have
    # their padding at the same offsets (interior windows have none).
    small = values.numel() <= 256
    codes = codes.to(torch.uint8 if small else torch.int32)
    dtype = np.uint8 if small else np.uint16
    pools = []
    for group in geom.groups:
        rows = []
        for cand_row in group.cand_pos:
            found = _distinct(codes, geom.k, cand_row, dtype, max_share, chunk_bytes)
            if found is None:
                return None
            rows.append(found)
        width = max(len(r[0]) for r in rows)
        image = torch.zeros((len(rows), width), dtype=torch.long)
        pos = torch.zeros((len(rows), width), dtype=torch.long)
        count = torch.zeros((len(rows), width), dtype=torch.long)
        for g, (img, p, c) in enumerate(rows):
            image[g], pos[g] = img[0], p[0]
            image[g, : len(img)], pos[g, : len(img)], count[g, : len(img)] = img, p, c
        pools.append(CandidatePool(image, pos, count))
    return pools


def _distinct(codes: torch.Tensor, k: int, cand_pos: torch.Tensor, dtype, max_share: float = 1.0,
              chunk_bytes: int = POOL_CHUNK_BYTES) -> tuple[torch.Tensor, ...] | None:
    """(image, pos, count) of the distinct windows of ``codes`` at ``cand_pos``, sorted by first
    occurrence (image, then position); None when the first chunk is more than ``max_share`` distinct."""
    n, positions = codes.shape[0], cand_pos.numel()
    row_bytes = codes.shape[1] * k * k * np.dtype(dtype).itemsize
    per_chunk = max(1, chunk_bytes // max(positions * row_bytes, 1))
    keys, firsts, counts = [], [], []
    for start in range(0, n, per_chunk):
        windows = windows_at(codes[start : start + per_chunk], k, cand_pos).reshape(-1, codes.shape[1] * k * k)
        windows = np.ascontiguousarray(windows.numpy().astype(dtype, copy=False))
        rows = windows.view(np.dtype((np.void, row_bytes))).ravel()
        key, first, count = np.unique(rows, return_index=True, return_counts=True)
        if start == 0 and len(key) > max_share * len(rows):
            return None
        keys.append(key)
        firsts.append(first + start * positions)
        counts.append(count)
    if len(keys) == 1:
        first, count = firsts[0], counts[0]
    else:  # merge: a window's count is the sum over chunks; its earliest copy is in the earliest chunk
        key, index, inverse = np.unique(np.concatenate(keys), return_index=True, return_inverse=True)
        first = np.concatenate(firsts)[index]
        count = np.bincount(inverse.ravel(), weights=np.concatenate(counts), minlength=len(key))
    order = np.argsort(first, kind="stable")
    first, count = torch.from_numpy(first[order]), torch.from_numpy(np.asarray(count[order], dtype=np.int64))
    return first // positions, cand_pos[first % positions], count


def _scan_pools(
    plans: list[_GroupPlan],
    pools: list[CandidatePool],
    images: torch.Tensor,
    geom: Geometry,
    coef: Coefficients,
    block_bytes: int,
) -> None:
    """Stream each group's distinct candidates through its plan, in blocks of ``block_bytes``."""
    k, r = geom.k, geom.k // 2
    n, channels, height, width = images.shape
    padded = F.pad(images, (r, r, r, r)) if r else images
    wp, plane = width + 2 * r, (height + 2 * r) * (width + 2 * r)
    offsets = window_offsets(k, wp)
    offsets = (torch.arange(channels).view(-1, 1) * plane + offsets.view(1, -1)).reshape(-1).to(images.device)
    flat_padded, flat_images = padded.reshape(-1), images.reshape(n, channels, -1)
    for plan, pool in zip(plans, pools, strict=True):
        n_groups, m = pool.count.shape
        rows = plan.chunks[0].q.shape[1]
        step = max(1, block_bytes // max(n_groups * rows * images.element_size(), 1))
        for start in range(0, m, step):
            img = pool.image[:, start : start + step].to(images.device)
            pos = pool.pos[:, start : start + step].to(images.device)
            count = pool.count[:, start : start + step].to(device=images.device, dtype=images.dtype)
            top_left = img * (channels * plane) + (pos // width) * wp + pos % width
            windows = flat_padded[top_left.unsqueeze(-1) + offsets]  # (G, P, C*k*k)
            bias = windows.square().sum(-1, keepdim=True).mul_(coef.bias_coef)
            centres = flat_images[img.unsqueeze(-1), torch.arange(channels, device=images.device), pos.unsqueeze(-1)]
            plan.fold(torch.cat([windows, bias], dim=-1), with_ones(centres).mul_(count.unsqueeze(-1)))


def exact_is(x: torch.Tensor, images: torch.Tensor, t: float, block_bytes: int = DEFAULT_BLOCK_BYTES) -> torch.Tensor:
    """Ideal-score denoiser: softmax over whole training images (docs/math.md, IS)."""
    coef = Coefficients.at(t)
    acc = ReferencedSoftmax(x.flatten(1).unsqueeze(0) * coef.scale, x[0].numel())
    step = max(1, block_bytes // max(images[0].numel() * images.element_size(), 1))
    for start in range(0, images.shape[0], step):
        flat = images[start : start + step].flatten(1)
        bias = flat.square().sum(-1, keepdim=True) * coef.bias_coef
        acc.add(torch.cat([flat, bias], dim=-1).unsqueeze(0), with_ones(flat).unsqueeze(0))
    return acc.result()[0].view_as(x)
