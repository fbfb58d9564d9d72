"""The tail sample's helpers against brute force: which sampled ids a row already counts, and the
accumulator's per-block log-sum."""

import math

import torch

from patchdb.denoisers.retrieval import mask_tail_hits, prepare_tail, tail_hits
from patchdb.denoisers.softmax import SoftmaxAccumulator


def _brute_hits(ids, sample, blank_mask):
    hit = torch.zeros(ids.shape[0], len(sample), dtype=torch.bool)
    for r in range(ids.shape[0]):
        found = {int(v) for v in ids[r] if v >= 0}
        for j, s in enumerate(sample.tolist()):
            hit[r, j] = s in found or (blank_mask is not None and bool(blank_mask[s]))
    return hit


def test_mask_tail_hits_masks_exactly_the_brute_force_hits():
    g = torch.Generator().manual_seed(3)
    n_ids = 60  # a small id range: values drawn two and three times, and many hits per row
    sample = torch.randint(n_ids, (40,), generator=g)
    assert len(torch.unique(sample)) < len(sample)
    ids = torch.randint(-1, n_ids, (25, 12), generator=g)
    ids[3] = -1  # a row with no retrieved candidate
    for blank_mask in (None, torch.rand(n_ids, generator=g) < 0.2):
        prepared = prepare_tail(sample, blank_mask)
        want = _brute_hits(ids, sample, blank_mask)
        assert torch.equal(tail_hits(ids, sample, blank_mask), want)
        logits = torch.randn(25, 40, generator=g, dtype=torch.float64)
        got = mask_tail_hits(logits.clone(), ids, prepared)
        assert torch.equal(got, logits.masked_fill(want, -math.inf))
        # no retrieved candidates at all (a sample-only step): only the blank ones
        got = mask_tail_hits(logits.clone(), ids[:, :0], prepared)
        blank = torch.zeros(40, dtype=torch.bool) if blank_mask is None else blank_mask[sample]
        assert torch.equal(got, logits.masked_fill(blank.expand(25, -1), -math.inf))


def test_accumulator_returns_each_blocks_log_sum():
    g = torch.Generator().manual_seed(1)
    acc = SoftmaxAccumulator((2, 3), 4, torch.float64, torch.device("cpu"))
    for scale in (1.0, 8.0, 0.5):  # the second block moves the running maximum up (none below the e^-80 floor)
        logits = torch.randn(2, 3, 50, generator=g, dtype=torch.float64) * scale
        values = torch.cat([torch.randn(2, 50, 4, generator=g, dtype=torch.float64),
                            torch.ones(2, 50, 1, dtype=torch.float64)], -1)
        want = torch.logsumexp(logits, -1)
        got = acc.add(logits.clone(), values)
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
