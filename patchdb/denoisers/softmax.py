"""Streaming softmax-weighted averages: the weights math of docs/math.md, written once.

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

    def add(self, logits: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Fold in a block: ``logits`` (G, M, P) is overwritten; ``values`` (G, P, V+1), last column ones.
        Returns the block's ``log sum_j w_j`` per row (G, M) (a weight below e^-80 of the running
        maximum counts as e^-80 of it, as everywhere in the accumulator)."""
        new_max = torch.maximum(self.max, logits.amax(dim=-1))
        # A row with no finite logit yet (every candidate masked, e.g. a sub-index whose windows are all
        # blank) shifts by 0 instead of -inf, which would turn it into NaN; it stays -inf, so its tiny
        # clamped weights are wiped by the first finite block.
        shift = torch.where(torch.isinf(new_max), torch.zeros_like(new_max), new_max)
        logits.sub_(shift.unsqueeze(-1)).clamp_(min=-LOG_FLOOR).exp_()
        part = torch.bmm(logits, values)
        # exp(-inf - finite) = 0 wipes the empty initial state.
        self.acc.mul_(torch.exp(self.max - shift).unsqueeze(-1)).add_(part)
        self.max = new_max
        return part[..., -1].log().add_(shift)

    def result(self) -> torch.Tensor:
        """Weighted averages, (G, M, V)."""
        return self.acc[..., : self.value_dim] / self.acc[..., self.value_dim :]

    def log_normaliser(self) -> torch.Tensor:
        """``log sum_j w_j`` per row, (G, M)."""
        return self.max + torch.log(self.acc[..., self.value_dim])


def with_ones(values: torch.Tensor) -> torch.Tensor:
    """Append the ones column the accumulator uses to sum the weights: (..., V) -> (..., V+1)."""
    return torch.cat([values, torch.ones_like(values[..., :1])], dim=-1)


class ReferencedSoftmax:
    """The same running average, with the logits' matrix product folded in to save passes.

    Each query row carries a reference log-weight ``ref`` (its running log-normaliser, or the
    first block's maximum) as an extra column ``-ref`` of the query matrix, so one product gives
    ``logit - ref`` directly; no per-block maximum or subtraction pass is needed. A block whose
    weights would leave the safe range (a logit more than ~69 above ``ref``) is redone with an
    explicit shift; this is rare after the first block. ``ref`` never exceeds the log-normaliser,
    so the clamp at ``-LOG_FLOOR`` still only touches weights below e^-80 of the total.

    Parameters
    ----------
    queries : (G, M, K) query features, already scaled; candidates passed to :meth:`add` are
        (G, P, K + 1): their features and a per-candidate bias column.
    value_dim : V, the length of each candidate's value vector.
    """

    #: Largest per-row sum of weights a block may add before the row is re-referenced.
    SAFE_SUM = 1e30

    def __init__(self, queries: torch.Tensor, value_dim: int):
        g, m, _ = queries.shape
        ones = torch.ones((g, m, 1), dtype=queries.dtype, device=queries.device)
        self.q = torch.cat([queries, ones, torch.zeros_like(ones)], dim=-1)
        self.value_dim = value_dim
        self.ref: torch.Tensor | None = None
        self.acc = torch.zeros((g, m, value_dim + 1), dtype=queries.dtype, device=queries.device)

    def add(self, cands: torch.Tensor, values: torch.Tensor) -> None:
        """Fold in a block: ``cands`` (G, P, K+1) features + bias, ``values`` (G, P, V+1) with ones."""
        cands = with_ones(cands).transpose(1, 2)
        logits = torch.bmm(self.q, cands)
        if self.ref is None:
            self._set_ref(logits.amax(dim=-1))
            logits.sub_(self.ref.unsqueeze(-1))
        # Clamping above too keeps exp out of its slow overflow path; such rows are redone below.
        part = torch.bmm(logits.clamp_(-LOG_FLOOR, LOG_FLOOR).exp_(), values)
        bad = ~(part[..., -1] <= self.SAFE_SUM)
        if bool(bad.any()):
            self._redo_rows(bad, part, cands, values)
        self.acc.add_(part)
        self._renormalise()

    def _redo_rows(self, bad: torch.Tensor, part: torch.Tensor, cands: torch.Tensor, values: torch.Tensor) -> None:
        """Rows whose logits rose far above ``ref``: shift them, rescale what they had, redo their part."""
        for g in bad.any(dim=-1).nonzero().view(-1).tolist():
            rows = bad[g].nonzero().view(-1)
            logits = self.q[g, rows] @ cands[g]
            shift = logits.amax(dim=-1).clamp_(min=0.0)
            logits.sub_(shift.unsqueeze(-1))
            self.acc[g, rows] *= torch.exp(-shift).unsqueeze(-1)
            self.ref[g, rows] += shift
            self.q[g, rows, -1] = -self.ref[g, rows]
            part[g, rows] = logits.clamp_(min=-LOG_FLOOR).exp_() @ values[g]

    def _renormalise(self) -> None:
        """Move ``ref`` to the log-normaliser of rows whose sums grew large, keeping headroom."""
        sums = self.acc[..., -1]
        big = sums > 1e10
        if bool(big.any()):
            shift = torch.where(big, torch.log(sums), torch.zeros_like(sums))
            self.acc.mul_(torch.exp(-shift).unsqueeze(-1))
            self._set_ref(self.ref + shift)

    def _set_ref(self, ref: torch.Tensor) -> None:
        self.ref = ref
        self.q[..., -1] = -ref

    def result(self) -> torch.Tensor:
        """Weighted averages, (G, M, V)."""
        return self.acc[..., : self.value_dim] / self.acc[..., self.value_dim :]

    def log_normaliser(self) -> torch.Tensor:
        """``log sum_j w_j`` per row, (G, M)."""
        return self.ref + torch.log(self.acc[..., self.value_dim])
