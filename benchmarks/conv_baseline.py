"""A straightforward bbELS denoiser for comparison: conv2d with every training patch as a filter.

Independent of patchdb's engine (it shares only the noise schedule): candidate windows become
conv2d filters, streamed in blocks of training images; logits are accumulated with a plain running
log-sum-exp. This is how the score is usually written (and roughly how the paper's public code
computes it); benchmarks/exact.py measures patchdb against it in the same run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from patchdb.schedule import alpha_sigma


class RunningSoftmax:
    def __init__(self):
        self.lse = None
        self.num = None

    def add(self, logits: torch.Tensor, values: torch.Tensor) -> None:
        """logits (..., P), values (P, C) -> running log-sum-exp and weighted sum (..., C)."""
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)
        part = torch.softmax(logits, dim=-1) @ values
        if self.lse is None:
            self.lse, self.num = lse, part
            return
        new = torch.logaddexp(self.lse, lse)
        self.num = self.num * torch.exp(self.lse - new) + part * torch.exp(lse - new)
        self.lse = new


def conv_bbels(x: torch.Tensor, images: torch.Tensor, t: float, k: int, block: int = 64) -> torch.Tensor:
    """bbELS denoiser of x (B, C, H, W) over images (N, C, H, W), zero padding; k < min(H, W)."""
    a, b = alpha_sigma(t)
    bsz, c, h, w = x.shape
    r = k // 2
    out = torch.zeros_like(x)
    xpad = F.pad(x, (r, r, r, r))
    pad_imgs = F.pad(images, (r, r, r, r))
    # Interior queries: conv2d of the unpadded x gives exactly the (H-k+1)^2 interior positions.
    sm = RunningSoftmax()
    for s in range(0, len(images), block):
        patches = F.unfold(images[s : s + block], k).transpose(1, 2).reshape(-1, c, k, k)
        centres = patches[:, :, r, r]
        cross = F.conv2d(x, patches)  # (B, P, H-k+1, W-k+1)
        logits = (2 * a * cross - a * a * patches.square().sum((1, 2, 3)).view(1, -1, 1, 1)) / (2 * b * b)
        sm.add(logits.permute(0, 2, 3, 1), centres)
    out[:, :, r : h - r, r : w - r] = sm.num.permute(0, 3, 1, 2)
    # Edge rows/columns: windows in the same row (column), interior along the edge, zero padded.
    for y in [*range(r), *range(h - r, h)]:
        out[:, :, y, r : w - r] = _strip(xpad[:, :, y : y + k, :], pad_imgs[:, :, y : y + k, :], a, b, k, block)
    for x0 in [*range(r), *range(w - r, w)]:
        strip = _strip(xpad[:, :, :, x0 : x0 + k].transpose(2, 3), pad_imgs[:, :, :, x0 : x0 + k].transpose(2, 3), a, b, k, block)
        out[:, :, r : h - r, x0] = strip
    # Corners: the same position only.
    for y in [*range(r), *range(h - r, h)]:
        for x0 in [*range(r), *range(w - r, w)]:
            q = xpad[:, :, y : y + k, x0 : x0 + k].reshape(bsz, -1)
            p = pad_imgs[:, :, y : y + k, x0 : x0 + k].reshape(len(images), -1)
            logits = (2 * a * q @ p.T - a * a * p.square().sum(1)) / (2 * b * b)
            out[:, :, y, x0] = torch.softmax(logits, dim=-1) @ images[:, :, y, x0]
    return out


def _strip(xs: torch.Tensor, imgs: torch.Tensor, a: float, b: float, k: int, block: int) -> torch.Tensor:
    """Queries and candidates along one k-high strip (width W + 2r): (B, C, W - 2r)."""
    c = xs.shape[1]
    r = k // 2
    sm = RunningSoftmax()
    for s in range(0, len(imgs), block):
        sub = imgs[s : s + block]
        patches = F.unfold(sub, k)[:, :, r : sub.shape[-1] - 3 * r].transpose(1, 2).reshape(-1, c, k, k)
        cross = F.conv2d(xs, patches)[:, :, 0, r : xs.shape[-1] - 3 * r]  # (B, P, W - 2r)
        logits = (2 * a * cross - a * a * patches.square().sum((1, 2, 3)).view(1, -1, 1)) / (2 * b * b)
        sm.add(logits.transpose(1, 2), patches[:, :, r, r])
    return sm.num.transpose(1, 2)
