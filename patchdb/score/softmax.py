"""Streaming softmax-weighted averages: the weights math of SPEC.md, written once.

Every machine computes, per query row, ``D = sum_j w_j v_j / sum_j w_j`` with
``w_j = exp(logit_j)``, over candidates that arrive in blocks. The accumulator keeps a running
maximum so that nothing overflows (a stable log-sum-exp) and normalises over *all* candidates
seen, whatever the block sizes (unlike a per-block mean).
"""

from __future__ import annotations

import torch

#: Log-weights this far below the running maximum are clamped before ``exp``. Their weight is at
#: most e^-80 ~ 2e-35 of the largest, far below float32/float64 resolution, and clamping keeps
#: ``exp`` out of the subnormal range, where it runs ~75x slower on a CPU (measured here).
LOG_FLOOR = 80.0


class SoftmaxAccumulator:
    """Running ``(max, sum w, sum w*v)`` for a ``(G, M)`` batch of query rows.

    Parameters
    ----------
    shape : (G, M) groups and rows of queries.
    value_dim : V, the length of each candidate's value vector.
    """

    def __init__(self, shape: tuple[int, int], value_dim: int, dtype: torch.dtype, device: torch.device):
        self.value_dim = value_dim
        self.max = torch.full(shape, float("-inf"), dtype=dtype, device=device)
        # Last column holds sum w; the others sum w * v.
        self.acc = torch.zeros((*shape, value_dim + 1), dtype=dtype, device=device)

    def add(self, logits: torch.Tensor, values: torch.Tensor) -> None:
        """Fold in a block: ``logits`` (G, M, P) is overwritten; ``values`` (G, P, V+1), last column ones."""
        new_max = torch.maximum(self.max, logits.amax(dim=-1))
        logits.sub_(new_max.unsqueeze(-1)).clamp_(min=-LOG_FLOOR).exp_()
        part = torch.bmm(logits, values)
        # exp(-inf - finite) = 0 wipes the empty initial state.
        self.acc.mul_(torch.exp(self.max - new_max).unsqueeze(-1)).add_(part)
        self.max = new_max

    def result(self) -> torch.Tensor:
        """Weighted averages, (G, M, V)."""
        return self.acc[..., : self.value_dim] / self.acc[..., self.value_dim :]

    def log_normaliser(self) -> torch.Tensor:
        """``log sum_j w_j`` per row, (G, M)."""
        return self.max + torch.log(self.acc[..., self.value_dim])


def with_ones(values: torch.Tensor) -> torch.Tensor:
    """Append the ones column the accumulator uses to sum the weights: (..., V) -> (..., V+1)."""
    return torch.cat([values, torch.ones_like(values[..., :1])], dim=-1)
