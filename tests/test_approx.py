"""The approximate engine against the exact one: equal when K covers everything, bounded otherwise."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patchdb.data import Dataset
from patchdb.denoisers.approx import ApproxMachine
from patchdb.denoisers.exact import ExactMachine
from patchdb.denoisers.factory import make_denoiser
from patchdb.errors import PatchdbError
from patchdb.schedule import parse_schedule
from patchdb.evaluation.validate import validate_engines
from patchdb.indexing.builder import BuildConfig, build_index_file
from patchdb.indexing.reader import IndexFile
from patchdb.spec import Machine


def random_dataset(n, c, h, w, seed, classes=2) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
    labels = (torch.arange(n) * classes // n).long()
    return Dataset(images, labels, tuple(str(i) for i in range(classes)), f"r{seed}", {"policy": "none"})


def engines(tmp_path, ds, machine, sizes, name="i.h5", **options):
    path = tmp_path / name
    if not path.exists():
        build_index_file(ds, path, BuildConfig(machine, tuple(sizes)), progress=False)
    f = IndexFile(path)
    approx = make_denoiser(machine, None, index=f, **options)
    exact = ExactMachine(ds.to_float(options.get("dtype", torch.float32)), machine, labels=ds.labels)
    return approx, exact


@pytest.mark.parametrize("machine", ["els", "bbels"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_topk_all_flat_equals_exact(tmp_path, machine, dtype):
    """Flat index and K >= every candidate: approx == exact to 1e-5 (float64 exact reference).

    In float32 the exact engine itself sits ~2e-5 from the float64 answer at t = 0.05 (logits ~1e3),
    so both engines are held to the float64 reference rather than to each other.
    """
    ds = random_dataset(8, 2, 9, 8, seed=1)
    approx, _ = engines(tmp_path, ds, machine, (1, 3, 5, 9), topk=10_000, dtype=dtype)
    exact = ExactMachine(ds.to_float(torch.float64), machine, labels=ds.labels)
    x = torch.randn(3, 2, 9, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).to(dtype).double()
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    for k, t in [(1, 0.5), (3, 0.2), (5, 0.7), (9, 1.0), (3, 0.05)]:
        got, want = approx.denoise(x.to(dtype), t, k=k), exact.denoise(x, t, k=k)
        assert got.dtype == dtype
        assert (got.double() - want).abs().max() < tol
        assert approx.reports[-1].bound_max == 0.0
        lab = torch.tensor([0, 1, 1])
        got = approx.denoise(x.to(dtype), t, k=k, labels=lab)
        assert (got.double() - exact.denoise(x, t, k=k, labels=lab)).abs().max() < tol


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), k=st.sampled_from([3, 5]), t=st.floats(0.05, 1.0),
       topk=st.integers(1, 40), label=st.sampled_from([None, 0, 1]), machine=st.sampled_from(["els", "bbels"]))
def test_property_error_within_ignored_mass_bound(tmp_path_factory, seed, k, t, topk, label, machine):
    """|approx - exact| <= ignored share bound x value range (Flat: exact retrieval, so the bound is rigorous)."""
    tmp = tmp_path_factory.mktemp("p")
    ds = random_dataset(6, 1, 7, 7, seed=seed)
    # The bound is the untailed estimate's: tail correction off (the default is on, as in the CLI).
    approx, exact = engines(tmp, ds, machine, (3, 5), topk=topk, dtype=torch.float64, tail_samples=0)
    x = torch.randn(2, 1, 7, 7, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    labels = None if label is None else torch.full((2,), label)
    got, want = approx.denoise(x, t, k=k, labels=labels), exact.denoise(x, t, k=k, labels=labels)
    values = ds.to_float(torch.float64)
    spread = float(values.max() - values.min())
    assert (got - want).abs().max() <= approx.reports[-1].bound_max * spread + 1e-9
    if topk >= 6 * 49:
        assert (got - want).abs().max() < 1e-9


def test_tail_correction_reduces_error_at_high_noise(tmp_path):
    ds = random_dataset(30, 1, 8, 8, seed=3)
    plain, exact = engines(tmp_path, ds, "bbels", (5,), topk=4, tail_samples=0)
    tailed, _ = engines(tmp_path, ds, "bbels", (5,), topk=4, tail_samples=2000)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    want = exact.denoise(x, 1.0, k=5)
    err_plain = (plain.denoise(x, 1.0, k=5) - want).abs().max()
    err_tail = (tailed.denoise(x, 1.0, k=5) - want).abs().max()
    assert err_tail < 0.5 * err_plain
    assert tailed.reports[-1].tail_used and tailed.reports[-1].tail_median > 0.5
    assert math.isnan(plain.reports[-1].tail_median)


def test_denoiser_contract_and_errors(tmp_path):
    ds = random_dataset(8, 1, 8, 8, seed=4)
    path = tmp_path / "c.h5"
    build_index_file(ds, path, BuildConfig("bbels", (3, 5)), progress=False)
    f = IndexFile(path)
    approx = ApproxMachine(f, "bbels", "3,5,5", topk=10_000)
    exact = ExactMachine(ds.to_float(), "bbels", "3,5,5")
    x = torch.randn(2, 1, 8, 8)
    for t in (1.0, 2 / 3, 1 / 3):
        assert (approx(x, t) - exact(x, t)).abs().max() < 1e-5
    assert [r.k for r in approx.reports] == [5, 5, 3]
    with pytest.raises(PatchdbError, match="sampler steps"):
        approx(x, 0.5)
    with pytest.raises(PatchdbError, match=r"patch sizes \[7\].*--scales 7 --add"):
        ApproxMachine(f, "bbels", "3,7")
    with pytest.raises(PatchdbError, match="no training images"):
        approx.denoise(x, 0.5, k=3, labels=torch.tensor([5, 5]))
    with pytest.raises(PatchdbError, match="shape"):
        approx.denoise(torch.randn(1, 3, 8, 8), 0.5, k=3)
    with pytest.raises(PatchdbError, match="outside"):
        approx.denoise(x, 0.0, k=3)
    els = ApproxMachine(f, "els", "3", topk=10_000)  # a bbELS file also serves ELS (same interior index)
    assert (els(x, 1.0) - ExactMachine(ds.to_float(), "els", "3")(x, 1.0)).abs().max() < 1e-5


def test_validate_engines_identical_when_exact(tmp_path):
    ds = random_dataset(6, 1, 8, 8, seed=6)
    path = tmp_path / "v.h5"
    build_index_file(ds, path, BuildConfig("bbels", (3, 5)), progress=False)
    f = IndexFile(path)
    approx = make_denoiser("bbels", "3,5", index=f, topk=10_000)
    exact = make_denoiser("bbels", "3,5", index=f, exact=True)
    rep = validate_engines(exact, approx, [0, 1, 2], (1, 8, 8), 2, torch.tensor([0, 1, 0]), batch_size=2)
    assert rep["r2_median"] > 1 - 1e-8 and len(rep["steps"]) == 2
    assert all(s["max_abs_diff_max"] < 1e-5 for s in rep["steps"])


def test_box_sums_at_positions_match_a_clipped_window_sum():
    # Corner / LS families read window dot products from integral images of the regions their boxes
    # cover: check against plain sums, for corner blocks (regions per quadrant) and all positions (one region).
    from patchdb.patches import box_regions, box_sums, geometry

    v = torch.randn(2, 3, 7, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    h, w = 7, 9
    sets = [torch.tensor([0, 8, 30, 62, 54, 33]), torch.arange(h * w)]
    for k in (3, 5, 7):
        corner = [g for g in geometry(Machine.BBELS, k, h, w).groups if g.family in ("corner", "ls")]
        sets.append(corner[0].query_pos.view(-1))
    for pos in sets:
        for r in (0, 1, 2, 3, 6):
            want = torch.stack([v[..., max(0, p // w - r) : p // w + r + 1, max(0, p % w - r) : p % w + r + 1].sum((-1, -2))
                                for p in pos.tolist()], dim=-1)
            got = box_sums(lambda rs, cs: v[..., rs, cs], box_regions(pos, r, h, w), len(pos))
            assert torch.allclose(got, want, atol=1e-12, rtol=0), (pos.tolist(), r)


def test_box_dots_match_clipped_window_dot_products_on_both_paths(monkeypatch):
    # The exactly scanned families' dot products <x, phi> over each clipped box: dense products per region
    # (few boxes) and integral images of the product (many) must both equal plain sums.
    from patchdb import patches
    from patchdb.patches import box_dots, box_regions, geometry

    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 2, 7, 9, generator=g, dtype=torch.float64)
    phi = torch.randn(5, 2, 7, 9, generator=g, dtype=torch.float64)
    h, w = 7, 9
    sets = [torch.tensor([0, 8, 30, 62, 54, 33]), torch.arange(h * w)]
    for k in (3, 5, 7):
        sets.append(next(g for g in geometry(Machine.BBELS, k, h, w).groups if g.family in ("corner", "ls")).query_pos.view(-1))
    for most in (0, 4, 10**6):  # every region by integral images; mixed; every region dense
        monkeypatch.setattr(patches, "BOX_PRODUCT_MAX_POSITIONS", most)
        for pos in sets:
            for r in (0, 1, 3, 6):
                want = torch.stack([torch.einsum("bchw,nchw->bn", x[..., max(0, p // w - r) : p // w + r + 1, max(0, p % w - r) : p % w + r + 1],
                                                 phi[..., max(0, p // w - r) : p // w + r + 1, max(0, p % w - r) : p % w + r + 1])
                                    for p in pos.tolist()], dim=-1)
                got = box_dots(x, phi, box_regions(pos, r, h, w), len(pos))
                assert torch.allclose(got, want, atol=1e-12, rtol=0), (most, pos.tolist(), r)


def test_index_memory_budget_unloads_sizes_and_keeps_results(tmp_path, monkeypatch):
    """A budget below two sizes keeps one size loaded at a time, reloads on return, and changes no output."""
    ds = random_dataset(12, 1, 10, 10, seed=5)
    path = tmp_path / "budget.h5"
    build_index_file(ds, path, BuildConfig("bbels", (3, 5, 7)), progress=False)
    x = torch.randn(2, 1, 10, 10, generator=torch.Generator().manual_seed(6))
    calls = [(3, 0.9), (5, 0.6), (7, 0.3), (3, 0.2)]

    def run(cache_bytes):
        f = IndexFile(path, cache_bytes=cache_bytes)
        approx = ApproxMachine(f, "bbels", topk=64)
        outs = [approx.denoise(x, t, k=k) for k, t in calls]
        return f, outs

    unlimited, want = run(None)
    assert unlimited.loaded_sizes() == [5, 7, 3]  # least recently used first
    tight, got = run(0)
    assert tight.loaded_sizes() == [3]
    assert tight.loads > unlimited.loads  # size 3 was loaded twice
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
    monkeypatch.setenv("PATCHDB_INDEX_MEMORY", "12MiB")
    assert IndexFile(path).cache_bytes == 12 * 2**20
    monkeypatch.setenv("PATCHDB_INDEX_MEMORY", "lots")
    with pytest.raises(PatchdbError, match="PATCHDB_INDEX_MEMORY 'lots' is not a size"):
        IndexFile(path)


def test_validate_median_of_even_count_is_the_mean_of_the_middle_two():
    from patchdb.evaluation.metrics import median as _median

    assert _median(torch.tensor([0.9, 0.99, 0.98, 0.5])) == pytest.approx(0.94)
    assert _median(torch.tensor([3.0, 1.0, 2.0])) == 2.0


def test_prepare_loads_every_sub_index_of_the_size_once(tmp_path):
    ds = random_dataset(12, 1, 10, 10, seed=7)
    approx, _ = engines(tmp_path, ds, "bbels", (3, 5))
    approx.prepare(5)
    loaded = approx.file.loads
    assert loaded > 1 and approx.file.loaded_sizes() == [5]
    approx.denoise(torch.zeros(1, 1, 10, 10), 0.5, k=5)
    assert approx.file.loads == loaded  # the call found everything loaded
    with pytest.raises(PatchdbError, match="even|odd"):
        approx.prepare(4)


def test_corner_terms_kept_for_every_size_and_prepare_changes_nothing(tmp_path):
    """bbELS corners are scanned exactly from x-independent terms: prepare() makes them ahead, every
    size's stay cached together, and the output is bit for bit what a cold engine gives."""
    ds = random_dataset(12, 1, 10, 10, seed=8)
    warm, _ = engines(tmp_path, ds, "bbels", (3, 5, 7))
    cold, _ = engines(tmp_path, ds, "bbels", (3, 5, 7))
    for k in (7, 5, 3):
        warm.prepare(k)
    assert len(warm._same_pos_cache) == 3
    x = torch.randn(2, 1, 10, 10, generator=torch.Generator().manual_seed(1))
    for k, t in [(7, 0.9), (5, 0.5), (3, 0.1), (7, 0.8)]:
        assert torch.equal(warm.denoise(x, t, k=k), cold.denoise(x, t, k=k))
    assert len(cold._same_pos_cache) == 3


def black_background_dataset(n: int, seed: int) -> Dataset:
    """Strokes on black: most small windows are all zero (uint8), as on MNIST / Fashion-MNIST."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 1, 10, 10, dtype=torch.uint8)
    for i in range(n):
        y, x = torch.randint(0, 7, (2,), generator=g).tolist()
        images[i, 0, y : y + 4, x : x + 3] = torch.randint(1, 256, (4, 3), generator=g, dtype=torch.uint8)
    labels = (torch.arange(n) * 2 // n).long()
    return Dataset(images, labels, ("0", "1"), f"b{seed}", {"policy": "none"})


def test_blank_windows_are_taken_out_of_ivf_and_counted_exactly(tmp_path):
    """On black-background data the file takes all-zero windows out of its IVF lists when loading and the
    engine counts them as one candidate of multiplicity M: with every list probed and K covering the
    rest, approx == exact (float64), and the counts match a brute-force scan of the images."""
    from patchdb.patches import windows_at

    ds = black_background_dataset(40, seed=3)
    path = tmp_path / "blank.h5"
    build_index_file(ds, path, BuildConfig("bbels", (3, 5), index_key="IVF4,Flat"), progress=False)
    f = IndexFile(path)
    taken = 0
    for k in (3, 5):
        for i, entry in enumerate(f.entries(k)):
            if not entry.indexed:
                continue
            for g in range(entry.cand_pos.shape[0]):
                pos = entry.cand_pos[g]
                wins = windows_at(ds.images.double(), k, pos)  # brute force: (N, L, C*k*k) zero-padded
                zero = (wins == 0).all(-1).reshape(-1)
                blanks = f.blanks(k, i, g)
                assert blanks is not None and blanks.count(0, 40) == int(zero.sum())
                assert torch.equal(blanks.mask, zero)
                assert f.index(k, i, g).ntotal == zero.numel() - int(zero.sum())
                taken += int(zero.sum())
    assert taken > 1000  # the data is mostly background
    approx = make_denoiser("bbels", None, index=f, topk=10_000, nprobe=4, dtype=torch.float64)
    exact = ExactMachine(ds.to_float(torch.float64), "bbels", labels=ds.labels)
    x = torch.randn(3, 1, 10, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 0.3 - 0.6
    for k, t in [(3, 0.05), (3, 0.5), (5, 0.3), (5, 1.0)]:
        for lab in (None, torch.tensor([0, 1, 1])):
            got, want = approx.denoise(x, t, k=k, labels=lab), exact.denoise(x, t, k=k, labels=lab)
            assert (got - want).abs().max() < 1e-10
            assert approx.reports[-1].bound_max == 0.0
    # The tail sample never counts a blank twice: with K covering everything the tail adds nothing.
    tailed = make_denoiser("bbels", None, index=f, topk=10_000, nprobe=4, dtype=torch.float64, tail_samples=256)
    assert (tailed.denoise(x, 0.7, k=3) - exact.denoise(x, 0.7, k=3)).abs().max() < 1e-10


def test_attribution_through_an_index_credits_blank_windows_as_the_engine_weighs_them(tmp_path):
    from patchdb.denoisers.contrib import index_contributors
    from patchdb.schedule import alpha_sigma

    ds = black_background_dataset(40, seed=5)
    path = tmp_path / "blank.h5"
    build_index_file(ds, path, BuildConfig("bbels", (3,), index_key="IVF4,Flat"), progress=False)
    f = IndexFile(path)
    engine = make_denoiser("bbels", "constant:3", index=f, topk=8)
    g = torch.Generator().manual_seed(6)
    for t in (0.1, 0.5, 1.0):
        a, b = alpha_sigma(t)
        x = (a * ds.to_float()[:3] + b * torch.randn(3, 1, 10, 10, generator=g)).float()
        res = index_contributors(x, f, t, 3, "bbels", m=4, topk=8)
        assert (res.denoised - engine(x, t)).abs().max() < 1e-5
    # At low noise a background pixel's top contributors are blank windows of real images.
    a, b = alpha_sigma(0.05)
    x = torch.full((1, 1, 10, 10), -a)
    res = index_contributors(x, f, 0.05, 3, "bbels", m=4, topk=8)
    ids = res.ids[0, 5 * 10 + 5]
    img, pos = ids // 100, ids % 100
    assert bool((ids >= 0).all())
    assert all(bool((ds.images[n, 0, p // 10 - 1 : p // 10 + 2, p % 10 - 1 : p % 10 + 2] == 0).all())
               for n, p in zip(img.tolist(), pos.tolist()))


def test_scan_cap_stops_a_query_after_its_budget_of_codes():
    """Unbalanced lists (most vectors piled near one point, as near-black windows are): with the cap a query
    scans lists nearest first and stops once it has scanned ``scan_cap * nominal_codes`` codes; probing
    every list asks for an exhaustive scan, which no cap shortens."""
    import faiss
    import numpy as np

    from patchdb.denoisers.retrieval import search_ids
    from patchdb.indexing import faiss_ops as fx

    rng = np.random.default_rng(0)
    data = np.concatenate([0.01 * rng.standard_normal((3000, 4)), 3 * rng.standard_normal((1000, 4))]).astype(np.float32)
    index = fx.train("IVF16,Flat", data)
    index.add(data)
    ivf = fx.as_ivf(index)
    sizes = np.array([ivf.invlists.list_size(i) for i in range(ivf.nlist)])
    assert sizes.max() > 4 * ivf.ntotal / ivf.nlist  # one pile
    queries = torch.from_numpy(0.01 * rng.standard_normal((20, 4))).float()  # on the pile

    def scanned(nprobe, cap):
        faiss.cvar.indexIVF_stats.reset()
        ids = search_ids(index, queries, 10, nprobe, 0, None, cap)
        return ids, faiss.cvar.indexIVF_stats.ndis / len(queries)

    budget = fx.nominal_codes(index, 8)
    assert budget == math.ceil(8 * ivf.ntotal / ivf.nlist)
    _, full = scanned(8, 0)
    capped_ids, capped = scanned(8, 1.0)
    assert capped < full  # the pile's neighbours are big lists: the cap cuts the scan ...
    assert capped <= budget  # ... once it has scanned its budget (the last list cut short)
    assert (capped_ids >= 0).all()
    # Every list probed: exhaustive whatever the cap.
    all_ids, _ = scanned(ivf.nlist, 0)
    all_capped, n = scanned(ivf.nlist, 0.25)
    assert torch.equal(all_ids, all_capped) and n == ivf.ntotal
    with pytest.raises(PatchdbError, match="scan-cap"):
        ApproxMachine(IndexFile.__new__(IndexFile), "bbels", scan_cap=-1)


# -- step-to-step reuse (issue 27) ---------------------------------------------------------------


def _count_searches(monkeypatch):
    from patchdb.denoisers.retrieval import Retrieval

    calls = []
    search = Retrieval.search

    def counted(self, *args, **kwargs):
        calls.append(args[1].shape[0])
        return search(self, *args, **kwargs)

    monkeypatch.setattr(Retrieval, "search", counted)
    return calls


def test_reuse_with_every_candidate_kept_equals_brute_force(tmp_path, monkeypatch):
    """Flat index, K covering every candidate: the second call of a size re-ranks the carried candidates
    without searching, and both calls equal the independent brute force (tests/brute.py) to 1e-9."""
    from brute import brute_denoise

    ds = random_dataset(5, 1, 7, 7, seed=11)
    approx, _ = engines(tmp_path, ds, "bbels", (3, 5), topk=10_000, reuse=1, dtype=torch.float64)
    calls = _count_searches(monkeypatch)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 1, 7, 7, generator=g, dtype=torch.float64)
    images = ds.to_float(torch.float64).numpy()
    for t, searched in ((0.6, True), (0.55, False)):
        x = x + 0.05 * torch.randn(x.shape, generator=g, dtype=torch.float64)  # the next step: x moves a little
        before = len(calls)
        got = approx.denoise(x, t, k=5)
        assert (len(calls) > before) == searched
        assert (got.numpy() - brute_denoise(x.numpy(), t, 5, images, "bbels")).__abs__().max() < 1e-9


def test_reuse_first_call_and_unrelated_batches_equal_the_engine_without_reuse(tmp_path, monkeypatch):
    """The new path equals the old where it must: the first call of a size, a size change and a batch
    unrelated to the previous one all search the index, bit for bit as with reuse off."""
    ds = random_dataset(40, 1, 9, 9, seed=12)
    on, _ = engines(tmp_path, ds, "bbels", (3, 5), topk=3, reuse=2, tail_samples=50)
    off, _ = engines(tmp_path, ds, "bbels", (3, 5), topk=3, reuse=0, tail_samples=50)
    calls = _count_searches(monkeypatch)
    g = torch.Generator().manual_seed(5)
    for t, k in ((0.7, 5), (0.6, 3), (0.5, 3)):
        x = torch.randn(3, 1, 9, 9, generator=g)  # independent each time: correlation ~0, never reused
        start = len(calls)
        got = on.denoise(x, t, k=k)
        middle = len(calls)
        assert torch.equal(got, off.denoise(x, t, k=k))
        assert middle - start == len(calls) - middle > 0  # both engines searched every sub-index


def test_reuse_along_a_trajectory_stays_close_and_searches_less(tmp_path, monkeypatch):
    """Along a DDIM trajectory with IVF-like loss (small K), reuse skips the search at repeated sizes and
    the final samples stay close to those of the engine that searches at every step."""
    from patchdb.sampler import ddim_sample, initial_noise

    ds = random_dataset(30, 1, 8, 8, seed=13)
    on, exact = engines(tmp_path, ds, "bbels", (3, 5), topk=8, reuse=4, dtype=torch.float64)
    off, _ = engines(tmp_path, ds, "bbels", (3, 5), topk=8, reuse=0, dtype=torch.float64)
    on.schedule = off.schedule = exact.schedule = parse_schedule("3,3,3,5,5,5")  # steps 6-4: k = 5
    calls = _count_searches(monkeypatch)
    noise = initial_noise([0, 1], (1, 8, 8), torch.float64)
    a = ddim_sample(on, noise, 6, None).samples
    searched_on = len(calls)
    b = ddim_sample(off, noise, 6, None).samples
    assert searched_on * 3 == (len(calls) - searched_on)  # 2 of 6 steps searched, against 6 of 6
    want = ddim_sample(exact, noise, 6, None).samples
    # Random images are the hard case (no structure carries a window's neighbours from step to step):
    # measured 0.16 from exact with reuse against 0.10 without, 0.16 between the two.
    assert (a - want).abs().max() < 2 * (b - want).abs().max()
    assert (a - b).abs().max() < 0.2


def test_reuse_across_sizes_with_every_candidate_kept_equals_brute_force(tmp_path, monkeypatch):
    """``across``: at a size change the carried windows (same image and position, the new size) are
    re-ranked without a search. Going up in size every candidate position of the new size was one of
    the old size's, so with K covering everything both calls equal the brute force."""
    from brute import brute_denoise

    ds = random_dataset(5, 1, 7, 7, seed=14)
    approx, _ = engines(tmp_path, ds, "bbels", (3, 5), topk=10_000, reuse=1, across=True, dtype=torch.float64)
    calls = _count_searches(monkeypatch)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 1, 7, 7, generator=g, dtype=torch.float64)
    images = ds.to_float(torch.float64).numpy()
    for t, k, searched in ((0.6, 3, True), (0.55, 5, False)):
        x = x + 0.05 * torch.randn(x.shape, generator=g, dtype=torch.float64)
        before = len(calls)
        got = approx.denoise(x, t, k=k)
        assert (len(calls) > before) == searched
        assert (got.numpy() - brute_denoise(x.numpy(), t, k, images, "bbels")).__abs__().max() < 1e-9


def test_refresh_adds_searched_candidates_without_counting_any_twice(tmp_path, monkeypatch):
    """Going down in size the carried windows miss positions the new size has; ``refresh`` searches for
    more and merges them with the carried ones. With a Flat index finding every candidate the union is
    all of them, each once: D equals the brute force (a window counted twice would not)."""
    from brute import brute_denoise

    ds = random_dataset(5, 1, 7, 7, seed=15)
    kw = dict(topk=10_000, reuse=1, across=True, dtype=torch.float64)
    approx, _ = engines(tmp_path, ds, "bbels", (3, 5), refresh=1.0, **kw)
    lazy, _ = engines(tmp_path, ds, "bbels", (3, 5), refresh=0.0, **kw)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 1, 7, 7, generator=g, dtype=torch.float64)
    images = ds.to_float(torch.float64).numpy()
    for t, k in ((0.6, 5), (0.55, 3)):
        x = x + 0.05 * torch.randn(x.shape, generator=g, dtype=torch.float64)
        got, partial = approx.denoise(x, t, k=k), lazy.denoise(x, t, k=k)
        want = brute_denoise(x.numpy(), t, k, images, "bbels")
        assert (got.numpy() - want).__abs__().max() < 1e-9
    assert (partial.numpy() - want).__abs__().max() > 1e-6  # without refresh the k = 3 call misses windows


def test_across_searches_only_the_first_step_of_a_trajectory(tmp_path, monkeypatch):
    """Along a DDIM trajectory with ``across`` only the first call searches (and, later, pixels that had
    no candidates kept). On random images (no structure carries a good window to the next size) that
    alone drifts far from exact; ``refresh`` (a search for K more at every reused step) brings the
    samples back as close to exact as the engine that searches at every step."""
    from patchdb.sampler import ddim_sample, initial_noise

    ds = random_dataset(30, 1, 8, 8, seed=13)
    _, exact = engines(tmp_path, ds, "bbels", (3, 5), topk=8, dtype=torch.float64)
    made = {name: engines(tmp_path, ds, "bbels", (3, 5), topk=8, dtype=torch.float64, **kw)[0]
            for name, kw in (("off", dict(reuse=0)), ("across", dict(reuse=4, across=True)),
                             ("refresh", dict(reuse=4, across=True, refresh=1.0)))}
    schedule = parse_schedule("3,3,3,5,5,5")  # steps 6-4: k = 5, then k = 3
    exact.schedule = schedule
    noise = initial_noise([0, 1, 2, 3], (1, 8, 8), torch.float64)
    want = ddim_sample(exact, noise, 6, None).samples
    calls = _count_searches(monkeypatch)
    mse = {}
    for name, engine in made.items():
        engine.schedule = schedule
        del calls[:]
        mse[name] = float((ddim_sample(engine, noise, 6, None).samples - want).square().mean())
        if name == "across":
            # k = 5 has 9 indexed sub-indexes (interior, 4 edge rows, 4 edge columns): the first call
            # searches all of them. Later only pixels without carried windows are searched: at the change
            # to k = 3 the 12 pixels that were k = 5 corners (exactly scanned, nothing kept) and are edge
            # or interior pixels at k = 3, in 5 sub-indexes, for 4 samples.
            assert len(calls) == 9 + 5 and sum(calls[9:]) == 12 * 4
        if name == "off":
            assert len(calls) == 3 * 9 + 3 * 5  # every step searches every sub-index
    # measured: MSE to exact 7.0e-4 (off), 1.8e-2 (across), 5.8e-4 (refresh)
    assert mse["refresh"] < 1.5 * mse["off"] < mse["across"]


# -- sample-only steps at high noise (Retrieval.sample_above) -------------------------------------


def test_sample_above_skips_the_index_and_its_estimate_converges_to_exact(tmp_path, monkeypatch):
    """Steps at t >= sample_above search nothing and re-rank nothing: D is the uniform sample's
    estimate (blank windows counted exactly beside it), which a large sample brings to the exact D
    (black-background data, so a wrong weighting of blanks against the sample would show); steps
    below the threshold are bit for bit those of the engine without it."""
    ds = black_background_dataset(12, seed=5)
    on, exact = engines(tmp_path, ds, "bbels", (3, 5), topk=4, dtype=torch.float64, tail_samples=40_000,
                        sample_above=0.8)
    off, _ = engines(tmp_path, ds, "bbels", (3, 5), topk=4, dtype=torch.float64, tail_samples=40_000)
    calls = _count_searches(monkeypatch)
    x = torch.randn(2, 1, 10, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(6)) * 0.5 - 0.5
    for t, k in ((1.0, 5), (0.8, 3)):
        loads = on.file.loads
        got, want = on.denoise(x, t, k=k), exact.denoise(x, t, k=k)
        assert not calls and on.file.loads == loads  # blanks found from the images, no index loaded
        assert (got - want).abs().max() < 0.02, (t, k)
        assert on.reports[-1].bound_max == 1.0 and on.reports[-1].tail_median > 0.5
        on.prepare(k)  # the blanks the loaded indexes took out: the same, so the same bits
        assert on.file.loads > loads and torch.equal(on.denoise(x, t, k=k), got)
    few, _ = engines(tmp_path, ds, "bbels", (3, 5), topk=4, dtype=torch.float64, tail_samples=4, sample_above=0.8)
    assert (few.denoise(x, 1.0, k=5) - exact.denoise(x, 1.0, k=5)).abs().max() > 0.02  # the check can fail
    got = on.denoise(x, 0.5, k=3)
    assert calls and torch.equal(got, off.denoise(x, 0.5, k=3))
    with pytest.raises(PatchdbError, match="--sample-above needs"):
        engines(tmp_path, ds, "bbels", (3, 5), tail_samples=0, sample_above=0.8)


def test_sample_size_is_the_sample_of_sample_only_steps_only(tmp_path):
    """--sample-size sets the uniform sample of the sample-only steps (a large one brings D to the exact
    D there, where the small tail sample does not) and leaves every other step bit for bit as it was."""
    ds = black_background_dataset(12, seed=5)
    big, exact = engines(tmp_path, ds, "bbels", (3, 5), topk=4, dtype=torch.float64, tail_samples=4,
                         sample_above=0.8, sample_size=40_000)
    small, _ = engines(tmp_path, ds, "bbels", (3, 5), topk=4, dtype=torch.float64, tail_samples=4, sample_above=0.8)
    x = torch.randn(2, 1, 10, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(6)) * 0.5 - 0.5
    want = exact.denoise(x, 1.0, k=5)
    assert (big.denoise(x, 1.0, k=5) - want).abs().max() < 0.02
    assert (small.denoise(x, 1.0, k=5) - want).abs().max() > 0.02
    assert torch.equal(big.denoise(x, 0.5, k=3), small.denoise(x, 0.5, k=3))
    assert big.retrieval.sample_count(True) == 40_000 and big.retrieval.sample_count(False) == 4
    with pytest.raises(PatchdbError, match="--sample-size is the sample of --sample-above steps"):
        engines(tmp_path, ds, "bbels", (3, 5), sample_size=100)


def test_sample_above_with_reuse_searches_the_first_step_below_it(tmp_path, monkeypatch):
    """A sample-only step carries no candidates: the next step of the same size searches as usual."""
    ds = random_dataset(20, 1, 8, 8, seed=14)
    on, _ = engines(tmp_path, ds, "bbels", (3, 5), topk=4, reuse=2, sample_above=0.7)
    calls = _count_searches(monkeypatch)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 1, 8, 8, generator=g)
    searched = []
    for t in (0.8, 0.7, 0.6, 0.5):
        x = x + 0.02 * torch.randn(x.shape, generator=g)
        before = len(calls)
        on.denoise(x, t, k=5)
        searched.append(len(calls) > before)
    assert searched == [False, False, True, False]


def test_file_without_the_sizes_of_sample_only_steps_samples_bit_for_bit_as_the_whole_file(tmp_path):
    """``build --sample-above T`` leaves out the sizes used only at steps t >= T. Sampled with
    ``--sample-above T`` (or lower) such a file gives the same bits as the file with every size at every
    step (those steps never read an index; their blank windows are found from the images, as an IVF
    sub-index's are); sampled otherwise it is refused in one line that names the setting."""
    from patchdb.schedule import ScaleSchedule

    ds = black_background_dataset(16, seed=8)
    sched = ScaleSchedule((3, 3, 5, 5), "four")  # t = 0.25, 0.5 at k = 3; t = 0.75, 1 at k = 5
    assert sched.searched(0.75) == (3,) and sched.searched(0.5) == (3,) and sched.searched(0) == (3, 5)
    whole, part = tmp_path / "whole.h5", tmp_path / "part.h5"
    build_index_file(ds, whole, BuildConfig("bbels", (3, 5), index_key="IVF4,Flat"), progress=False)
    build_index_file(ds, part, BuildConfig("bbels", sched.searched(0.75), index_key="IVF4,Flat",
                                           schedule=sched.sizes, schedule_name=sched.name, sample_above=0.75),
                     progress=False)
    with IndexFile(part) as f:
        assert f.sizes == (3,) and f.recorded_schedule().sizes == sched.sizes
    for above in (0.75, 0.5):
        a = make_denoiser("bbels", sched, index=IndexFile(whole), topk=6, dtype=torch.float64, sample_above=above,
                          sample_size=64, reuse=2, nprobe=2, k_factor=2)
        b = make_denoiser("bbels", sched, index=IndexFile(part), topk=6, dtype=torch.float64, sample_above=above,
                          sample_size=64, reuse=2, nprobe=2, k_factor=2)
        g = torch.Generator().manual_seed(9)  # (search knobs pinned: the tuner's defaults depend on timings)
        x = torch.randn(3, 1, 10, 10, dtype=torch.float64, generator=g)
        for step in range(4, 0, -1):
            t = step / 4
            da, db = a(x, t, labels=torch.tensor([0, 1, 1])), b(x, t, labels=torch.tensor([0, 1, 1]))
            assert torch.equal(da, db), (above, t)
            x = 0.9 * da + 0.3 * torch.randn(x.shape, dtype=torch.float64, generator=g)
        assert b.file.loads and all(k == 3 for k in b.file.loaded_sizes())
    for above in (0.0, 1.0):  # k = 5 would be searched at t = 0.75 or at every step
        with pytest.raises(PatchdbError, match=r"no index for patch sizes \[5\].*built with --sample-above 0.75: "
                                               r"sample with --sample-above 0.75"):
            make_denoiser("bbels", sched, index=IndexFile(part), sample_above=above)
