"""A trained epsilon-network as a denoiser of the machines' contract (docs/math.md "Images and noise").

``D(x, t) = (x - b_t eps_hat(x, t)) / a_t``, so the sampler's ``eps = (x - a_t D) / b_t`` gives back
the network's ``eps_hat`` exactly and DDIM over the adapter is the network's own DDIM.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import PatchdbError
from ..schedule import alpha_sigma


class EpsDenoiser:
    """Wrap an epsilon-prediction network ``net(x, t (B,), labels) -> eps_hat`` as ``D(x, t, labels)``.

    Parameters
    ----------
    net : the network (put in eval mode; gradients are off in calls).
    conditional : whether ``net`` needs class labels; calls without labels then fail with one line.
    device : where the network runs; inputs are moved there and outputs moved back.
    """

    def __init__(self, net: nn.Module, conditional: bool = False, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.conditional = conditional

    @torch.no_grad()
    def eps(self, x: torch.Tensor, t: float, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The network's noise estimate ``eps_hat(x, t)`` (B, C, H, W), in the dtype and device of ``x``."""
        if self.conditional and labels is None:
            raise PatchdbError("this network is class-conditional: give labels (--label N or --label all)")
        if not self.conditional:
            labels = None
        tt = torch.full((x.shape[0],), float(t), device=self.device)
        lab = None if labels is None else torch.as_tensor(labels, device=self.device).long().reshape(-1).expand(x.shape[0])
        out = self.net(x.to(self.device, torch.float32), tt, lab)
        return out.to(device=x.device, dtype=x.dtype)

    def __call__(self, x: torch.Tensor, t: float, labels: torch.Tensor | None = None) -> torch.Tensor:
        a, b = alpha_sigma(float(t))
        if a <= 0:
            raise PatchdbError(f"time t={t} has a_t = 0; the denoiser is undefined there")
        return (x - b * self.eps(x, t, labels)) / a


def eps_from_denoiser(denoised: torch.Tensor, x: torch.Tensor, t: float) -> torch.Tensor:
    """``eps_hat = (x - a_t D) / b_t`` (docs/math.md): the noise estimate of any denoiser."""
    a, b = alpha_sigma(float(t))
    return (x - a * denoised) / b


def score_from_denoiser(denoised: torch.Tensor, x: torch.Tensor, t: float) -> torch.Tensor:
    """``s = -(x - a_t D) / b_t^2`` (docs/math.md)."""
    a, b = alpha_sigma(float(t))
    return -(x - a * denoised) / (b * b)
