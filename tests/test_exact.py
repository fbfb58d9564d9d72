"""The exact engine against the naive brute force of tests/brute.py, and properties it must have."""

import numpy as np
import pytest
import torch
from brute import brute_denoise

import patchdb
import patchdb.patches
from patchdb.denoisers.exact import ExactMachine
from patchdb.denoisers.kernels import candidate_pools
from patchdb.errors import PatchdbError

MACHINES = ["is", "ls", "els", "bbels"]


def random_case(seed, n=10, c=1, h=6, w=6, batch=2, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, c, h, w, generator=g, dtype=torch.float64) * 2 - 1
    x = torch.randn(batch, c, h, w, generator=g, dtype=torch.float64)
    labels = torch.arange(n) % 3
    return x.to(dtype), images.to(dtype), labels


@pytest.mark.parametrize("machine", MACHINES)
@pytest.mark.parametrize("shape,k", [((1, 6, 6), 1), ((1, 6, 6), 3), ((3, 6, 6), 5), ((1, 9, 9), 3),
                                     ((3, 9, 9), 5), ((1, 9, 7), 5), ((1, 6, 6), 7)])
@pytest.mark.parametrize("t", [0.3, 0.9])
def test_matches_brute_force_float64(machine, shape, k, t):
    c, h, w = shape
    x, images, _ = random_case(k * 100 + h + c, c=c, h=h, w=w)
    got = patchdb.denoise(x, t, k, images, machine)
    want = brute_denoise(x.numpy(), t, k, images.numpy(), machine)
    assert got.dtype == torch.float64
    assert np.abs(got.numpy() - want).max() < 1e-7


@pytest.mark.parametrize("machine", MACHINES)
@pytest.mark.parametrize("label", [0, 2])
def test_conditional_matches_brute_force(machine, label):
    x, images, labels = random_case(7, c=3, h=7, w=7)
    got = patchdb.denoise(x, 0.5, 3, images, machine, labels=labels, label=label)
    want = brute_denoise(x.numpy(), 0.5, 3, images.numpy(), machine, labels=labels.numpy(), label=label)
    assert np.abs(got.numpy() - want).max() < 1e-7


@pytest.mark.parametrize("machine", MACHINES)
@pytest.mark.parametrize("t", [0.1, 0.5, 1.0])
def test_float32_matches_brute_force(machine, t):
    x, images, _ = random_case(11, c=3, h=8, w=8)
    got = patchdb.denoise(x.float(), t, 5, images.float(), machine)
    want = brute_denoise(x.float().double().numpy(), t, 5, images.float().double().numpy(), machine)
    assert got.dtype == torch.float32
    assert np.abs(got.double().numpy() - want).max() < 2e-4


def sparse_case(seed, n=12, c=1, h=8, w=8):
    """8-bit images that are mostly background, so many candidate windows repeat."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 4, (n, c, h, w), generator=g) * 85
    codes[torch.rand(n, c, h, w, generator=g) < 0.6] = 0
    codes[:3] = codes[3]  # whole repeated images too
    images = codes.double() / 127.5 - 1
    x = torch.randn(3, c, h, w, generator=g, dtype=torch.float64)
    return x, images, torch.arange(n) % 2


@pytest.mark.parametrize("machine", ["ls", "els", "bbels"])
@pytest.mark.parametrize("c,k", [(1, 3), (1, 5), (3, 3)])
def test_deduplicated_candidates_match_brute_force(machine, c, k):
    x, images, labels = sparse_case(k + c, c=c)
    engine = ExactMachine(images, machine, labels=labels)
    pools = engine._pools_for(None, images, k)
    assert pools is not None
    distinct, total = sum(p.size for p in pools), sum(int(p.count.sum()) for p in pools)
    assert distinct < total  # the case really has repeated windows
    want = brute_denoise(x.numpy(), 0.6, k, images.numpy(), machine)
    got = engine.denoise(x, 0.6, k=k)
    assert np.abs(got.numpy() - want).max() < 1e-7
    plain = ExactMachine(images, machine, dedup=False).denoise(x, 0.6, k=k)
    assert torch.allclose(got, plain, atol=1e-12, rtol=0)
    want1 = brute_denoise(x.numpy(), 0.6, k, images.numpy(), machine, labels=labels.numpy(), label=1)
    got1 = engine.denoise(x, 0.6, k=k, labels=1)
    assert np.abs(got1.numpy() - want1).max() < 1e-7


def test_pool_counts_every_candidate_once():
    # The multiplicities of each group row add up to (training images) x (candidate positions).
    _, images, _ = sparse_case(1)
    for machine in ("ls", "els", "bbels"):
        geom = patchdb.patches.geometry(machine, 3, 8, 8)
        pools = candidate_pools(images, geom)
        for group, pool in zip(geom.groups, pools, strict=True):
            assert pool.count.sum(dim=1).tolist() == [images.shape[0] * group.cand_pos.shape[1]] * group.cand_pos.shape[0]


@pytest.mark.parametrize("machine", ["ls", "bbels"])
def test_pools_sorted_in_chunks_equal_one_sort(machine):
    # Chunks of a few images each, merged, give the same representatives and counts as one sort.
    _, images, _ = sparse_case(4, n=23)
    geom = patchdb.patches.geometry(machine, 3, 8, 8)
    whole = candidate_pools(images, geom, max_share=1.0)
    for chunk_bytes in (1, 9 * 64 * 3, 9 * 64 * 7):
        chunked = candidate_pools(images, geom, max_share=1.0, chunk_bytes=chunk_bytes)
        for a, b in zip(whole, chunked, strict=True):
            assert torch.equal(a.image, b.image) and torch.equal(a.pos, b.pos) and torch.equal(a.count, b.count)


def test_nearly_distinct_windows_skip_dedup():
    # 8-bit noise: almost every 3x3 window differs, so pools would not pay for their sort.
    images = torch.randint(0, 256, (40, 1, 8, 8), generator=torch.Generator().manual_seed(3)).double() / 127.5 - 1
    geom = patchdb.patches.geometry("bbels", 3, 8, 8)
    assert candidate_pools(images, geom) is None
    assert candidate_pools(images, geom, max_share=1.0) is not None
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    want = brute_denoise(x.numpy(), 0.5, 3, images.numpy(), "bbels")
    assert np.abs(ExactMachine(images, "bbels").denoise(x, 0.5, k=3).numpy() - want).max() < 1e-7


def test_continuous_images_skip_dedup():
    # 76,800 distinct pixel values: too many for integer codes, the plain scan is used.
    _, images, _ = random_case(2, n=1200, h=8, w=8)
    assert candidate_pools(images, patchdb.patches.geometry("bbels", 3, 8, 8)) is None


@pytest.mark.parametrize("machine", MACHINES)
def test_block_size_does_not_change_result(machine):
    x, images, _ = random_case(3, n=23, c=1, h=8, w=8, batch=3)
    _, sparse, _ = sparse_case(9, n=23)
    for train in (images, sparse):
        results = [ExactMachine(train, machine, block_bytes=b).denoise(x, 0.4, k=3) for b in (1, 5000, 2**30)]
        for r in results[1:]:
            assert torch.allclose(r, results[0], atol=1e-12, rtol=0)


@pytest.mark.parametrize("machine", ["ls", "els", "bbels"])
def test_low_noise_returns_nearest_candidate_centre(machine):
    # Query = a training image with a small perturbation: at tiny t each window's nearest candidate
    # is the same window of that image (for ELS: with wrap-around only where it is inside).
    _, images, _ = random_case(5, n=6, c=1, h=7, w=7, batch=1)
    clean = images[2:3] + 1e-3 * torch.randn(1, 1, 7, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = 1e-3
    a, _ = patchdb.alpha_sigma(t)
    got = patchdb.denoise(clean * a, t, 3, images, machine)
    want = brute_denoise((clean * a).numpy(), t, 3, images.numpy(), machine)
    # The brute force at the same t is an argmin here; compare to the training pixels directly too.
    assert np.abs(got.numpy() - want).max() < 1e-6
    if machine != "els":
        assert torch.allclose(got, images[2:3], atol=1e-6)


@pytest.mark.parametrize("machine", MACHINES)
def test_output_within_range_of_candidate_centres(machine):
    x, images, _ = random_case(9, n=12, c=2, h=8, w=8, batch=4)
    got = patchdb.denoise(x * 3, 0.7, 3, images, machine)
    lo = images.amin(dim=(0, 2, 3)).view(1, -1, 1, 1)
    hi = images.amax(dim=(0, 2, 3)).view(1, -1, 1, 1)
    assert (got >= lo - 1e-12).all() and (got <= hi + 1e-12).all()


def test_batch_rows_are_independent():
    x, images, _ = random_case(13, n=9, c=1, h=8, w=8, batch=4)
    both = patchdb.denoise(x, 0.5, 5, images, "bbels")
    one = patchdb.denoise(x[2:3], 0.5, 5, images, "bbels")
    assert torch.allclose(both[2:3], one, atol=1e-12)


@pytest.mark.parametrize("bad,match", [
    ({"k": 4}, "odd"),
    ({"k": 0}, "odd"),
    ({"machine": "foo"}, "unknown machine"),
    ({"t": 0.0}, "outside"),
    ({"label": 7}, "out of range"),
])
def test_bad_input_one_line_errors(bad, match):
    x, images, labels = random_case(1)
    args = {"x": x, "t": 0.5, "k": 3, "images": images, "machine": "els", "labels": labels, "label": None}
    args.update(bad)
    with pytest.raises(PatchdbError, match=match) as err:
        patchdb.denoise(**args)
    assert "\n" not in str(err.value)


def test_nan_and_shape_errors():
    x, images, _ = random_case(1)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(PatchdbError, match="NaN"):
        patchdb.denoise(x, 0.5, 3, images, "els")
    with pytest.raises(PatchdbError, match="shape"):
        patchdb.denoise(torch.zeros(1, 1, 5, 5, dtype=torch.float64), 0.5, 3, images, "els")


def test_prepare_builds_the_pool_once_and_changes_nothing():
    x, images, labels = sparse_case(11)
    engine = ExactMachine(images, "bbels", labels=labels)
    engine.prepare(3)
    engine.prepare(3, label=1)
    assert set(engine._pools) == {(None, 3), (1, 3)}
    want = ExactMachine(images, "bbels", labels=labels, dedup=False).denoise(x, 0.4, k=3)
    assert torch.allclose(engine.denoise(x, 0.4, k=3), want, atol=1e-12, rtol=0)
