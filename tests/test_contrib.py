"""Top contributors of a denoiser call (patchdb.denoisers.contrib) against a loop-by-loop brute force."""

import math

import numpy as np
import pytest
import torch
from brute import candidates, schedule_ab, window
from hypothesis import given, settings
from hypothesis import strategies as st

from patchdb.denoisers.contrib import (
    FAMILIES,
    _group_queries,
    block_images,
    contributors,
    cover,
    nearest_patches,
)
from patchdb.denoisers.factory import denoise
from patchdb.errors import PatchdbError
from patchdb.patches import geometry, unfold_windows
from patchdb.spec import Machine

MACHINES = ["is", "ls", "els", "bbels"]


def case(seed, n=6, c=1, h=8, w=8, batch=2):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, c, h, w, generator=g, dtype=torch.float64) * 2 - 1
    x = torch.randn(batch, c, h, w, generator=g, dtype=torch.float64)
    return x, images


def brute_weights(img, t, k, images, machine):
    """Every candidate's normalised weight for every pixel: {(y, x): {id: weight}} (float64 loops)."""
    a, b = schedule_ab(t)
    _, h, w = img.shape
    out = {}
    if machine == "is":
        logw = [-np.sum((img - a * phi) ** 2) / (2 * b * b) for phi in images]
        top = max(logw)
        z = sum(math.exp(v - top) for v in logw)
        per_image = {n: math.exp(v - top) / z for n, v in enumerate(logw)}
        for y in range(h):
            for x in range(w):
                out[(y, x)] = {n * h * w + y * w + x: wt for n, wt in per_image.items()}
        return out
    circular = machine == "els" and k < min(h, w)
    for y in range(h):
        for x in range(w):
            query = window(img, y, x, k, circular)
            logw = {}
            for n, phi in enumerate(images):
                for qy, qx in candidates(machine, y, x, h, w, k):
                    cand = window(phi, qy, qx, k, circular=False)
                    logw[n * h * w + qy * w + qx] = -np.sum((query - a * cand) ** 2) / (2 * b * b)
            top = max(logw.values())
            z = sum(math.exp(v - top) for v in logw.values())
            out[(y, x)] = {i: math.exp(v - top) / z for i, v in logw.items()}
    return out


@pytest.mark.parametrize("machine", MACHINES)
@pytest.mark.parametrize("t,k", [(0.15, 3), (0.7, 5)])
def test_top_contributors_match_brute_force(machine, t, k):
    x, images = case(k * 10 + int(t * 100))
    m = 6
    res = contributors(x, images, t, k, machine, m=m, mass=0.9)
    _h, w = x.shape[-2:]
    for bi in range(x.shape[0]):
        want = brute_weights(x[bi].numpy(), t, k, images.numpy(), machine)
        for (y, xx), weights in want.items():
            p = y * w + xx
            ranked = sorted(weights.items(), key=lambda kv: -kv[1])[:m]
            got_ids = res.ids[bi, p].tolist()
            got_w = res.weights[bi, p].numpy()
            assert got_ids == [i for i, _ in ranked[: len(got_ids)]] or np.allclose(
                sorted(got_w, reverse=True), [v for _, v in ranked], atol=1e-12)  # ties may swap ids
            np.testing.assert_allclose(got_w, [weights[i] for i in got_ids], atol=1e-10)
            ent = -sum(v * math.log(v) for v in weights.values() if v > 0)
            assert abs(res.entropy[bi, p].item() - ent) < 1e-8
            cum = np.cumsum([v for _, v in ranked])
            assert res.count[bi, p].item() == min(m, int((cum < 0.9).sum()) + 1)


@pytest.mark.parametrize("machine", MACHINES)
def test_denoised_equals_exact_engine(machine):
    x, images = case(3, n=9, c=3, h=7, w=7)
    res = contributors(x, images, 0.4, 3, machine, m=4)
    want = denoise(x, 0.4, 3, images, machine)
    assert torch.allclose(res.denoised, want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("machine", ["els", "bbels", "is"])
def test_block_size_does_not_change_result(machine):
    x, images = case(5, n=7, h=6, w=6, batch=1)
    runs = [contributors(x, images, 0.5, 3, machine, m=5, block_bytes=bb) for bb in (1, 3000, 2**30)]
    for r in runs[1:]:
        assert torch.equal(r.ids, runs[0].ids)
        assert torch.allclose(r.weights, runs[0].weights, atol=1e-12)
        assert torch.allclose(r.entropy, runs[0].entropy, atol=1e-9)


def test_families_follow_the_geometry():
    x, images = case(1)
    res = contributors(x, images, 0.5, 3, "bbels", m=2)
    fam = [FAMILIES[int(v)] for v in res.family]
    assert fam[0] == "corner" and fam[1] == "edge" and fam[9] == "interior"
    assert {FAMILIES[int(v)] for v in contributors(x, images, 0.5, 3, "els", m=2).family} == {"els"}


def test_class_conditional_ids_are_global():
    x, images = case(2, n=8)
    train_labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1])
    res = contributors(x, images, 0.3, 3, "bbels", m=4, labels=torch.tensor([1, 0]), train_labels=train_labels)
    hw = 64
    img = res.ids // hw
    assert bool((img[0][res.ids[0] >= 0] >= 3).all()) and bool((img[1][res.ids[1] >= 0] < 3).all())
    want = denoise(x[:1], 0.3, 3, images, "bbels", labels=train_labels, label=1)
    assert torch.allclose(res.denoised[:1], want, atol=1e-12)


def test_nearest_patches_are_nearest_windows():
    x, images = case(4, n=5, batch=1)
    ids, dist, _fam = nearest_patches(x, images, 3, "bbels", n=3)
    img = x[0].numpy()
    for y, xx in [(0, 0), (0, 4), (4, 4), (7, 2)]:
        query = window(img, y, xx, 3, False)
        d = sorted(
            (float(np.sqrt(np.sum((query - window(phi, qy, qx, 3, False)) ** 2))), n * 64 + qy * 8 + qx)
            for n, phi in enumerate(images.numpy())
            for qy, qx in candidates("bbels", y, xx, 8, 8, 3)
        )[:3]
        p = y * 8 + xx
        np.testing.assert_allclose(dist[0, p].numpy(), [v for v, _ in d], atol=1e-9)
        assert ids[0, p].tolist() == [i for _, i in d]


@pytest.mark.parametrize("machine,k", [("bbels", 7), ("ls", 5), ("els", 7)])
def test_nearest_patches_blocked_equal_one_block_and_brute_force(machine, k):
    """Large windows (the size of the image, where the windows, not the logits, fill a block): one image
    per block, a few, or all in one block give the same neighbours, those of a loop over every candidate."""
    x, images = case(11 + k, n=6, batch=1)
    runs = [nearest_patches(x, images, k, machine, n=4, block_bytes=bb) for bb in (1, 200_000, 2**40)]
    for ids, dist, fam in runs[1:]:
        assert torch.equal(ids, runs[0][0]) and torch.equal(fam, runs[0][2])
        assert torch.allclose(dist, runs[0][1], atol=1e-12, rtol=0)
    ids, dist, _ = runs[0]
    img = x[0].numpy()
    for y in range(8):
        for xx in range(8):
            query = window(img, y, xx, k, machine == "els")  # ELS queries wrap around (docs/math.md)
            d = sorted(
                (float(np.sqrt(np.sum((query - window(phi, qy, qx, k, False)) ** 2))), n * 64 + qy * 8 + qx)
                for n, phi in enumerate(images.numpy())
                for qy, qx in candidates(machine, y, xx, 8, 8, k)
            )[:4]
            np.testing.assert_allclose(dist[0, y * 8 + xx].numpy(), [v for v, _ in d], atol=1e-9)
            assert ids[0, y * 8 + xx].tolist() == [i for _, i in d]


def test_a_block_of_large_windows_stays_within_its_budget():
    """query --size 31 on 32x32 images: a block takes about block_bytes, not the whole training set's
    windows (issue 29: one block of 2,000 images was a 7.9 GB unfold)."""
    geom = geometry(Machine.BBELS, 31, 32, 32)
    queries = unfold_windows(torch.zeros(1, 1, 32, 32), 31, geom.query_padding)
    accs = [_group_queries(queries, g, 5, 1) for g in geom.groups]
    budget = 16 * 2**20
    step = block_images(budget, accs, geom.groups, 1, 31, 32, 32, 4)
    assert 1 <= step <= 2
    assert step * (31 * 31 * 32 * 32 * 4) <= budget  # the unfold of one block's windows
    assert block_images(1, accs, geom.groups, 1, 31, 32, 32, 4) == 1
    small = geometry(Machine.BBELS, 3, 32, 32)
    q3 = unfold_windows(torch.zeros(1, 1, 32, 32), 3, small.query_padding)
    assert block_images(budget, [_group_queries(q3, g, 5, 1) for g in small.groups], small.groups, 1, 3, 32, 32, 4) >= 4


def test_bad_arguments():
    x, images = case(1)
    with pytest.raises(PatchdbError, match="mass share"):
        contributors(x, images, 0.5, 3, "els", mass=1.5)
    with pytest.raises(PatchdbError, match="patch size"):
        contributors(x, images, 0.5, None, "els")
    with pytest.raises(PatchdbError, match="IS machine"):
        nearest_patches(x, images, 3, "is")


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(0, 1, allow_nan=False), min_size=1, max_size=10), st.floats(0.05, 1.0))
def test_cover_is_the_smallest_prefix_reaching_the_mass(raw, mass):
    w = torch.tensor(sorted(raw, reverse=True), dtype=torch.float64)
    w = w / max(1.0, float(w.sum()))
    count, covered = cover(w, mass)
    cum = torch.cumsum(w, 0)
    n = int(count)
    assert 1 <= n <= len(w)
    assert abs(float(covered) - float(cum[n - 1])) < 1e-12
    if n < len(w):
        assert float(cum[n - 1]) >= mass and (n == 1 or float(cum[n - 2]) < mass)


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(["ls", "els", "bbels"]), st.floats(0.05, 1.0))
def test_weights_are_sorted_and_sum_to_at_most_one(seed, machine, t):
    x, images = case(seed, n=4, h=6, w=6, batch=1)
    res = contributors(x, images, t, 3, machine, m=5)
    w = res.weights[0]
    assert bool((w[:, :-1] >= w[:, 1:] - 1e-15).all())
    assert bool((w.sum(-1) <= 1 + 1e-9).all())
    assert bool((res.effective_sources[0] >= 1 - 1e-9).all())


def test_index_contributors_recompute_the_engine_denoiser_with_ivf(tmp_path):
    # Attribution through an IVF index retrieves and weighs as the approximate engine does, so its
    # denoiser equals the engine's, also in float32 at t ~ 1 (query x / a ~ 80: float32 logits or a
    # float32 division before the search moved it by ~2e-3).
    from patchdb.data import Dataset
    from patchdb.denoisers.contrib import index_contributors
    from patchdb.denoisers.factory import make_denoiser
    from patchdb.indexing.builder import BuildConfig, build_index_file
    from patchdb.indexing.reader import IndexFile
    from patchdb.schedule import alpha_sigma

    g = torch.Generator().manual_seed(0)
    images = (torch.randint(0, 4, (400, 1, 8, 8), generator=g) * 85).to(torch.uint8)  # 4 levels: many near-ties
    ds = Dataset(images, torch.zeros(400, dtype=torch.long), ("0",), "r", {"policy": "none"})
    path = tmp_path / "ivf.h5"
    build_index_file(ds, path, BuildConfig("bbels", (3,), index_key="IVF64,Flat"), progress=False)
    f = IndexFile(path)
    engine = make_denoiser("bbels", "constant:3", index=f, topk=8)
    for t in (0.1, 0.7, 0.95, 1.0):
        a, b = alpha_sigma(t)
        x = (a * ds.to_float()[:4] + b * torch.randn(4, 1, 8, 8, generator=g)).float()
        got = index_contributors(x, f, t, 3, "bbels", m=4, topk=8).denoised
        assert (got - engine(x, t)).abs().max() < 1e-5
