"""Exact mode: every candidate of SPEC.md's machines, streamed over the training set in blocks.

For a query window ``x_p`` and candidate window ``phi_q`` the log-weight is, up to a per-query
constant that cancels in the normalisation,

    logit = (a / b^2) <x_p, phi_q> - (a^2 / 2 b^2) |phi_q|^2,

so one matrix product of the query windows ``[x_p * a / b^2, 1]`` with the augmented candidate
windows ``[phi_q, -a^2 |phi_q|^2 / 2 b^2]`` gives every logit of a block at once. All query rows
of a batch (every pixel of every image) share one pass over the training set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..patches import Geometry, Group, geometry, unfold_windows
from ..schedule import alpha_sigma
from ..spec import Machine
from .softmax import SoftmaxAccumulator, with_ones

#: Default size of one block of logits. Blocks that stay in the CPU's caches run several times
#: faster than one huge product (measured in benchmarks/exact.py); the peak memory of a call is a
#: small multiple of this plus the training images.
DEFAULT_BLOCK_BYTES = 16 * 2**20


@dataclass(frozen=True)
class Coefficients:
    """Per-call constants: logit = scale * <x, phi> + bias_coef * |phi|^2."""

    scale: float
    bias_coef: float

    @classmethod
    def at(cls, t: float) -> "Coefficients":
        a, b = alpha_sigma(t)
        return cls(scale=a / b**2, bias_coef=-(a * a) / (2 * b**2))


def exact_local(
    x: torch.Tensor,
    images: torch.Tensor,
    t: float,
    k: int,
    machine: Machine,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> torch.Tensor:
    """Denoiser of a local machine (LS, ELS, bbELS) over all windows of ``images``.

    Parameters
    ----------
    x : (B, C, H, W) noisy images, float.
    images : (N, C, H, W) training images in [-1, 1], same dtype and device as ``x``.
    t : time in (0, 1].  k : odd patch size.

    Returns
    -------
    (B, C, H, W) tensor ``D``, in the dtype of ``x``.
    """
    geom = geometry(machine, k, x.shape[-2], x.shape[-1])
    coef = Coefficients.at(t)
    queries = unfold_windows(x, k, geom.query_padding) * coef.scale  # (B, K, HW)
    out = torch.empty(x.shape[0], x.shape[1], x.shape[-2] * x.shape[-1], dtype=x.dtype, device=x.device)
    for group in geom.groups:
        out[:, :, group.query_pos.reshape(-1)] = _group_denoise(queries, images, group, geom, coef, block_bytes)
    return out.view_as(x)


def _group_denoise(
    queries: torch.Tensor, images: torch.Tensor, group: Group, geom: Geometry, coef: Coefficients, block_bytes: int
) -> torch.Tensor:
    """Weighted centres for the queries of one group: (B, C, G * m)."""
    n_batch, n_feat, _ = queries.shape
    n_groups, m = group.query_pos.shape
    q = queries[:, :, group.query_pos.reshape(-1).to(queries.device)].view(n_batch, n_feat, n_groups, m)
    q = with_ones(q.permute(2, 0, 3, 1).reshape(n_groups, n_batch * m, n_feat))  # (G, B*m, K+1)
    channels = images.shape[1]
    acc = SoftmaxAccumulator((n_groups, n_batch * m), channels, x_dtype(q), q.device)
    cand_pos = group.cand_pos.to(images.device)
    per_image = n_groups * n_batch * m * cand_pos.shape[1] * q.element_size()
    step = max(1, block_bytes // max(per_image, 1))
    for start in range(0, images.shape[0], step):
        cands, values = _candidates(images[start : start + step], cand_pos, geom.k, coef)
        acc.add(torch.bmm(q, cands.transpose(1, 2)), values)
    res = acc.result()  # (G, B*m, C)
    return res.view(n_groups, n_batch, m, channels).permute(1, 3, 0, 2).reshape(n_batch, channels, n_groups * m)


def _candidates(block: torch.Tensor, cand_pos: torch.Tensor, k: int, coef: Coefficients):
    """Augmented candidate windows (G, n*mc, K+1) and their centres with ones (G, n*mc, C+1)."""
    n, channels = block.shape[:2]
    n_groups, mc = cand_pos.shape
    flat_pos = cand_pos.reshape(-1)
    windows = unfold_windows(block, k, "zeros")[:, :, flat_pos]  # (n, K, G*mc)
    windows = windows.view(n, -1, n_groups, mc).permute(2, 0, 3, 1).reshape(n_groups, n * mc, -1)
    bias = windows.square().sum(-1, keepdim=True).mul_(coef.bias_coef)
    centres = block.flatten(2)[:, :, flat_pos].view(n, channels, n_groups, mc)
    centres = centres.permute(2, 0, 3, 1).reshape(n_groups, n * mc, channels)
    return torch.cat([windows, bias], dim=-1), with_ones(centres)


def exact_is(x: torch.Tensor, images: torch.Tensor, t: float, block_bytes: int = DEFAULT_BLOCK_BYTES) -> torch.Tensor:
    """Ideal-score denoiser: softmax over whole training images (SPEC.md, IS)."""
    coef = Coefficients.at(t)
    q = with_ones(x.flatten(1) * coef.scale).unsqueeze(0)  # (1, B, D+1)
    acc = SoftmaxAccumulator((1, x.shape[0]), x[0].numel(), x_dtype(q), x.device)
    step = max(1, block_bytes // max(images[0].numel() * images.element_size(), 1))
    for start in range(0, images.shape[0], step):
        flat = images[start : start + step].flatten(1)
        bias = flat.square().sum(-1, keepdim=True) * coef.bias_coef
        cands = torch.cat([flat, bias], dim=-1).unsqueeze(0)
        acc.add(torch.bmm(q, cands.transpose(1, 2)), with_ones(flat).unsqueeze(0))
    return acc.result()[0].view_as(x)


def x_dtype(t: torch.Tensor) -> torch.dtype:
    return t.dtype


def peak_block_bytes(block_bytes: int) -> int:
    """A rough bound on the working memory of one call beyond the inputs (for documentation)."""
    return int(math.ceil(3 * block_bytes))
