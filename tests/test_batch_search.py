"""List-major search (patchdb.indexing.batch_search) against FAISS's own query-by-query search and an
independent brute-force scan of the same lists."""

import gc
import math
from types import SimpleNamespace

import faiss
import numpy as np
import pytest
import torch

from patchdb.denoisers.retrieval import Retrieval, search_ids
from patchdb.indexing import faiss_ops as fx
from patchdb.indexing import batch_search
from patchdb.indexing.batch_search import ListScanner, cached_scanner


def _data(seed=0, n=6000, d=9):
    """Clusters of very different sizes (as patch data: a pile near black and a spread of others)."""
    rng = np.random.default_rng(seed)
    pile = 0.02 * rng.standard_normal((n // 2, d))
    spread = rng.standard_normal((n - n // 2, d)) * rng.uniform(0.3, 2.0, (n - n // 2, 1))
    return np.concatenate([pile, spread]).astype(np.float32), rng


def _index(key, data):
    index = fx.train(key, data[::2])
    index.add(data)
    return index


def _brute(index, queries, k, nprobe, max_codes, id_range):
    """Reference written for the test: each query's nprobe nearest centroids by an explicit distance sort,
    lists nearest first until max_codes codes (of the id range) are scanned, the last list's first ones, every stored vector of
    those lists rebuilt by FAISS (``reconstruct_n`` through a direct map), the k nearest by a full sort."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexPreTransform) else index
    xq = queries
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            xq = faiss.downcast_VectorTransform(index.chain.at(i)).apply(xq)
    centroids = inner.quantizer.reconstruct_n(0, inner.nlist)
    inner.make_direct_map()
    stored = inner.reconstruct_n(0, inner.ntotal)  # by id: ids are the order of addition
    out_d, out_i = [], []
    for q in xq:
        order = np.argsort(((centroids - q) ** 2).sum(1), kind="stable")[:nprobe]
        cand_d, cand_i, scanned = [], [], 0
        for lst in order:
            size = inner.invlists.list_size(int(lst))
            ids = faiss.rev_swig_ptr(inner.invlists.get_ids(int(lst)), size).copy()
            if id_range is not None:  # only the range's codes are scanned and counted
                ids = ids[(ids >= id_range[0]) & (ids < id_range[1])]
            if max_codes:
                ids = ids[: max_codes - scanned]
            for vid in ids:
                cand_d.append(float(((q - stored[vid]) ** 2).sum()))
                cand_i.append(int(vid))
            scanned += len(ids)
            if max_codes and scanned >= max_codes:
                break
        top = np.argsort(cand_d, kind="stable")[:k]
        out_d.append(np.pad(np.array(cand_d)[top], (0, k - len(top)), constant_values=np.inf))
        out_i.append(np.pad(np.array(cand_i, dtype=np.int64)[top], (0, k - len(top)), constant_values=-1))
    return np.array(out_d), np.array(out_i)


@pytest.mark.parametrize("key", ["IVF32,SQ8", "PCAR8,IVF32,SQ8"])
@pytest.mark.parametrize("max_codes, id_range", [(0, None), (400, None), (400, (1000, 4500)), (0, (5990, 6000))])
def test_list_scan_equals_a_brute_force_scan_of_the_same_lists(key, max_codes, id_range):
    data, rng = _data(d=12 if key.startswith("PCA") else 9)
    index = _index(key, data)
    queries = np.concatenate([data[rng.integers(0, len(data), 40)] + 0.05 * rng.standard_normal((40, data.shape[1])),
                              rng.standard_normal((20, data.shape[1]))]).astype(np.float32)
    dist, ids = ListScanner(index).search(queries, 25, nprobe=4, max_codes=max_codes, id_range=id_range)
    ref_d, ref_i = _brute(index, queries, 25, 4, max_codes, id_range)
    assert np.array_equal(ids < 0, ref_i < 0)  # as many found (fewer than k where the lists hold fewer)
    found = ids >= 0
    assert np.allclose(dist[found], ref_d[found], rtol=1e-4, atol=1e-5)
    # The same ids wherever the k-th distance is not tied with the next (float rounding may swap ties).
    for a, b in zip(ids, ref_i):
        assert len(np.intersect1d(a[a >= 0], b[b >= 0])) >= (b >= 0).sum() - 1
    if id_range is not None:
        assert ((ids[found] >= id_range[0]) & (ids[found] < id_range[1])).all()


def test_list_scan_finds_what_faiss_finds_with_an_exact_coarse_quantizer():
    """FAISS's IVF search with a Flat coarse quantizer probes the same lists and honours the same cap:
    same ids, same distances to float rounding (with an id range FAISS counts the cap its own way)."""
    data, rng = _data(seed=3)
    index = _index("IVF64,SQ8", data)
    queries = (data[rng.integers(0, len(data), 300)] + 0.03 * rng.standard_normal((300, 9))).astype(np.float32)
    for max_codes, id_range in [(0, None), (300, None), (0, (2000, 5000))]:
        ref_d, ref_i = fx.search(index, queries, 50, nprobe=8, id_range=id_range, max_codes=max_codes)
        dist, ids = ListScanner(index).search(queries, 50, nprobe=8, max_codes=max_codes, id_range=id_range)
        assert np.allclose(dist, ref_d, rtol=1e-4, atol=1e-5)
        overlap = np.mean([len(np.intersect1d(a, b)) / len(b) for a, b in zip(ids, ref_i)])
        assert overlap > 0.995


def test_search_ids_scans_by_list_only_when_asked_and_the_index_allows_it():
    data, rng = _data(seed=5)
    queries = torch.from_numpy(data[:50] + 0.01)
    sq = _index("IVF32,SQ8", data)
    assert cached_scanner(sq) is cached_scanner(sq)  # made once per loaded index ...
    held = len(batch_search._SCANNERS)
    del sq
    gc.collect()
    assert len(batch_search._SCANNERS) == held - 1  # ... and dropped with it (the budget can free it)
    sq = _index("IVF32,SQ8", data)
    flat = _index("Flat", data)
    assert cached_scanner(flat) is None and cached_scanner(_index("IVF32,Flat", data)) is None
    by_list = search_ids(sq, queries, 20, 4, 0, None, 1.0, list_scan=True)
    by_query = search_ids(sq, queries, 20, 4, 0, None, 1.0, list_scan=False)
    overlap = np.mean([len(np.intersect1d(a, b)) / 20 for a, b in zip(by_list.numpy(), by_query.numpy())])
    assert overlap > 0.9  # FAISS's HNSW-free IVF32 quantizer is exact too: the same lists
    assert torch.equal(search_ids(flat, queries, 20, list_scan=True), search_ids(flat, queries, 20, list_scan=False))


def test_list_scan_is_recorded_and_older_records_replay_faiss_search():
    assert Retrieval().list_scan is True
    assert Retrieval.from_dict(Retrieval(list_scan=False).to_dict()).list_scan is False
    older = {k: v for k, v in Retrieval().to_dict().items() if k != "list_scan"}
    assert Retrieval.from_dict(older).list_scan is False  # drawn before list-major search existed
    assert Retrieval.from_dict(None).list_scan is True
    assert not math.isnan(Retrieval(list_scan=1).scan_cap) and Retrieval(list_scan=1).list_scan is True


@pytest.mark.parametrize("exact_scan", [0, 81])
def test_engine_with_list_scan_and_every_list_probed_equals_exact(tmp_path, exact_scan):
    """An IVF-SQ8 index, every list probed and K covering every candidate: the approximate engine scanning
    by list equals the exact engine (the codes only rank; every candidate is re-ranked exactly), with and
    without labels; at a partial nprobe, scanning codes by list gives FAISS's D, scanning exactly no worse."""
    from patchdb.data import Dataset
    from patchdb.denoisers.exact import ExactMachine
    from patchdb.denoisers.factory import make_denoiser
    from patchdb.indexing.builder import BuildConfig, build_index_file
    from patchdb.indexing.reader import IndexFile

    g = torch.Generator().manual_seed(4)
    images = torch.randint(0, 256, (40, 1, 10, 10), generator=g, dtype=torch.uint8)
    ds = Dataset(images, (torch.arange(40) // 20).long(), ("0", "1"), "r4", {"policy": "none"})
    path = tmp_path / "sq.h5"
    build_index_file(ds, path, BuildConfig("bbels", (3, 5), index_key="IVF4,SQ8"), progress=False)
    f = IndexFile(path)
    assert cached_scanner(f.index(3, 0, 0)) is not None
    exact = ExactMachine(ds.to_float(torch.float64), "bbels", labels=ds.labels)
    every = make_denoiser("bbels", None, index=f, topk=10_000, nprobe=4, k_factor=1, scan_cap=0, tail_correction=0,
                          dtype=torch.float64, exact_scan=exact_scan)
    assert every.retrieval.list_scan and every.retrieval.exact_scan == exact_scan
    x = torch.randn(3, 1, 10, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    lab = torch.tensor([0, 1, 1])
    for k, t in [(3, 0.3), (5, 0.7), (3, 0.05)]:
        assert (every.denoise(x, t, k=k) - exact.denoise(x, t, k=k)).abs().max() < 1e-10
        assert (every.denoise(x, t, k=k, labels=lab) - exact.denoise(x, t, k=k, labels=lab)).abs().max() < 1e-10
    by_list = make_denoiser("bbels", None, index=f, topk=8, nprobe=2, dtype=torch.float64, exact_scan=exact_scan)
    by_query = make_denoiser("bbels", None, index=f, topk=8, nprobe=2, dtype=torch.float64, list_scan=False)
    for k, t in [(3, 0.3), (5, 0.5)]:
        ours, faiss_d, want = by_list.denoise(x, t, k=k), by_query.denoise(x, t, k=k), exact.denoise(x, t, k=k)
        if not exact_scan:  # the same candidates as FAISS's search (to rounding): the same D
            assert (ours - faiss_d).abs().max() < 1e-6
        else:  # exactly ranked: the nearest windows of the same lists, D no further from exact
            assert (ours - want).abs().mean() <= (faiss_d - want).abs().mean() + 1e-3


def test_exact_scan_keeps_the_exact_nearest_of_the_scanned_lists():
    """With the stored vectors given, the lists the codes choose are scanned with exact distances: the
    result is the exact top-k of the same codes a brute-force scan visits (cap and id range included)."""
    data, rng = _data(seed=7, d=12)
    index = _index("PCAR8,IVF32,SQ8", data)
    queries = (data[rng.integers(0, len(data), 50)] + 0.05 * rng.standard_normal((50, 12))).astype(np.float32)
    for max_codes, id_range in [(0, None), (400, (1000, 4500))]:
        dist, ids = ListScanner(index).search(queries, 20, nprobe=4, max_codes=max_codes, id_range=id_range,
                                              vectors=lambda found: data[found])
        _, scanned = _brute(index, queries, 10**6, 4, max_codes, id_range)  # every visited id, by coded distance
        for q, row, got, got_d in zip(queries, scanned, ids, dist):
            visited = row[row >= 0]
            true = ((data[visited] - q) ** 2).sum(1)
            order = np.argsort(true, kind="stable")[:20]
            assert np.allclose(np.sort(got_d), true[order], rtol=1e-4, atol=1e-5)
            assert len(np.intersect1d(got, visited[order])) >= 19
    assert Retrieval.from_dict({"topk": 64}).exact_scan == 0 and Retrieval(exact_scan=81).exact_scan == 81


def test_calls_with_few_queries_per_list_use_faiss_search(monkeypatch):
    """Below LIST_SCAN_MIN_QUERIES_PER_LIST probing queries per list a call goes to FAISS's search (the
    visit of every list would cost more than it saves); above, to the list scan."""
    from patchdb.denoisers import retrieval

    data, _ = _data(seed=9)
    index = _index("IVF32,SQ8", data)
    scans = []
    search = ListScanner.search
    monkeypatch.setattr(ListScanner, "search", lambda self, *a, **kw: scans.append(len(a[0])) or search(self, *a, **kw))
    few = retrieval.LIST_SCAN_MIN_QUERIES_PER_LIST * 32 // 4 - 1  # nprobe 4 over 32 lists
    for rows in (few, few + 1):
        queries = torch.from_numpy(data[:rows] + 0.01)
        found = search_ids(index, queries, 10, 4, 0, None, 1.0, list_scan=True)
        assert found.shape == (rows, 10) and (found >= 0).all()
    assert scans == [few + 1]
    # An exactly ranked search keeps topk x 8; a call that goes to FAISS keeps the coded ranking's factor.
    entry = SimpleNamespace(info={"k_factor": 32})
    settings = Retrieval(topk=2, nprobe=4, exact_scan=81)
    for rows, width in ((few, 2 * 32), (few + 1, 2 * 8)):
        ids = settings.retrieve(index, torch.from_numpy(data[:rows] + 0.01), entry, len(data), None,
                                lambda found: torch.from_numpy(data[found.numpy()]))
        assert ids.shape == (rows, width)
