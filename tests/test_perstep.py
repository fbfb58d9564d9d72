"""Per-step protocol: r and MSE of D on the network's own trajectory, against an independent recomputation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from patchdb.errors import PatchdbError
from patchdb.evaluation.perstep import format_per_step, per_step, write_per_step
from patchdb.sampler import ddim_sample, initial_noise

torch.set_num_threads(1)


def net(x, t, labels=None):
    return torch.tanh(0.8 * x) * (1 - 0.3 * t)


def machine(x, t, labels=None):
    return torch.tanh(x) * 0.5 + 0.1 * t


def test_per_step_matches_brute_force(tmp_path):
    seeds, steps, shape = [3, 4, 5], 5, (1, 6, 6)
    ps = per_step(net, {"m": machine, "self": net}, shape, seeds, steps, batch_size=2)
    # the network's trajectory recomputed, one seed at a time, with numpy's correlation
    for j, seed in enumerate(seeds):
        xs = []

        def follow(x, t, labels=None, xs=xs):
            xs.append((x.clone(), t))
            return net(x, t)

        ddim_sample(follow, initial_noise([seed], shape), steps)
        for x, t in xs:
            i = round(t * steps)
            a, b = net(x, t).double().numpy().ravel(), machine(x, t).double().numpy().ravel()
            assert float(ps.r["m"][i - 1, j]) == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-9)
            assert float(ps.mse["m"][i - 1, j]) == pytest.approx(np.mean((a - b) ** 2), rel=1e-9)
    assert torch.allclose(ps.r["self"], torch.ones(steps, len(seeds), dtype=torch.float64))
    assert float(ps.mse["self"].abs().max()) == 0.0
    rows = ps.rows()
    assert [row["step"] for row in rows] == [5, 4, 3, 2, 1]
    assert rows[0]["m"]["median_r2"] == pytest.approx(float(np.median(ps.r["m"][4].numpy() ** 2)))
    paths = write_per_step(ps, tmp_path / "out")
    data = json.loads(paths["perstep.json"].read_text())
    assert data["protocol"] == "per-step" and len(data["per_step"]) == steps
    assert paths["perstep.png"].stat().st_size > 0
    assert "mean over steps" in format_per_step(ps)


def test_per_step_bad_input():
    with pytest.raises(PatchdbError, match="at least one seed"):
        per_step(net, {"m": machine}, (1, 4, 4), [])
    with pytest.raises(PatchdbError, match="one label per seed"):
        per_step(net, {"m": machine}, (1, 4, 4), [0, 1], labels=torch.tensor([0]))


def test_per_step_at_some_steps_only():
    full = per_step(net, {"m": machine}, (1, 6, 6), [0, 1], 5)
    part = per_step(net, {"m": machine}, (1, 6, 6), [0, 1], 5, at_steps=[5, 2])
    for i in (5, 2):
        assert torch.equal(part.r["m"][i - 1], full.r["m"][i - 1])
    assert bool(torch.isnan(part.r["m"][[0, 2, 3]]).all())
    assert [row["step"] for row in part.rows()] == [5, 2]
    assert part.to_dict()["per_seed_r"]["m"][0] == [None, None]
    with pytest.raises(PatchdbError, match="sampler steps 1..5"):
        per_step(net, {"m": machine}, (1, 6, 6), [0], 5, at_steps=[6])
