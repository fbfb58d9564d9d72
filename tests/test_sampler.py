"""The DDIM sampler and batch generation: properties that must hold for any denoiser."""

import math

import pytest
import torch

from patchdb import alpha_sigma
from patchdb.denoisers.exact import ExactMachine
from patchdb.errors import PatchdbError
from patchdb.generate import generate, sample_labels
from patchdb.sampler import ddim_sample, initial_noise, times
from patchdb.schedule import PRESETS, parse_schedule


def test_schedule_endpoints_follow_spec():
    a0, b0 = alpha_sigma(0.0)
    assert (a0, b0) == (1.0, 0.0)
    a1, b1 = alpha_sigma(1.0)
    assert math.isclose(a1**2 + b1**2, 1.0) and a1 < 0.02
    t = 0.37
    beta = 1 - math.cos(t / 1.008 * math.pi / 2) ** 2
    assert math.isclose(alpha_sigma(t)[1], math.sqrt(beta))


def test_constant_denoiser_returns_its_output():
    target = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    res = ddim_sample(lambda x, t, labels=None: target, initial_noise([0, 1], (1, 4, 4), torch.float64), 7)
    assert torch.equal(res.samples, target)


def test_sampler_visits_times_in_order_and_keeps_trajectory():
    seen = []

    def d(x, t, labels=None):
        seen.append(t)
        return torch.full_like(x, t)

    res = ddim_sample(d, torch.zeros(1, 1, 2, 2), 4, keep_trajectory=True)
    assert seen == [1.0, 0.75, 0.5, 0.25] == times(4)
    assert res.trajectory.shape == (4, 1, 1, 2, 2)
    assert torch.equal(res.trajectory[:, 0, 0, 0, 0], torch.tensor(seen))


def test_ddim_update_matches_hand_computation():
    x_t = torch.randn(1, 1, 3, 3, dtype=torch.float64)
    d = torch.randn(1, 1, 3, 3, dtype=torch.float64)
    calls = []

    def den(x, t, labels=None):
        calls.append(x.clone())
        return d

    ddim_sample(den, x_t, 2)
    a, b = alpha_sigma(1.0)
    a2, b2 = alpha_sigma(0.5)
    want = a2 * d + b2 * (x_t - a * d) / b
    assert torch.allclose(calls[1], want, atol=1e-12)


def test_noise_depends_only_on_seed():
    both = initial_noise([5, 6], (1, 4, 4))
    assert torch.equal(both[1], initial_noise([6], (1, 4, 4))[0])
    assert not torch.equal(both[0], both[1])


def small_engine(machine="bbels"):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(12, 1, 8, 8, generator=g) * 2 - 1
    return ExactMachine(images, machine, parse_schedule("3,3,5"), labels=torch.arange(12) % 3)


@pytest.mark.parametrize("machine", ["is", "ls", "els", "bbels"])
def test_same_seed_same_samples_bit_for_bit(machine):
    runs = [generate(small_engine(machine), (1, 8, 8), 3, seed=4, batch_size=2, steps=3).samples for _ in range(2)]
    assert torch.equal(runs[0], runs[1])


def test_seed_offsets_are_batch_independent():
    one = generate(small_engine(), (1, 8, 8), 3, seed=10, batch_size=3, steps=3).samples
    split = generate(small_engine(), (1, 8, 8), 3, seed=10, batch_size=1, steps=3).samples
    assert torch.allclose(one, split, atol=1e-5)


def test_conditional_samples_use_their_class():
    eng = small_engine("is")
    labels = sample_labels(3, "all", 3)
    res = generate(eng, (1, 8, 8), 3, seed=0, steps=3, labels=labels)
    # IS at the end of sampling returns (almost exactly) a training image of the asked class.
    for j in range(3):
        dist = (eng.images - res.samples[j]).flatten(1).norm(dim=1)
        assert int(eng.labels[dist.argmin()]) == int(labels[j])


def test_cycled_labels_follow_the_seed_not_the_position_in_the_run():
    whole = sample_labels(25, "all", 10, first_seed=3)
    assert whole.tolist() == [(3 + j) % 10 for j in range(25)]
    # the same seeds split over two runs get the same labels
    parts = torch.cat([sample_labels(9, "all", 10, first_seed=3), sample_labels(16, "all", 10, first_seed=12)])
    assert torch.equal(whole, parts)


def test_labels_and_schedule_errors():
    with pytest.raises(PatchdbError, match="out of range"):
        sample_labels(2, 11, 10)
    with pytest.raises(PatchdbError, match="20 sizes but the sampler runs 10"):
        parse_schedule("mnist-resnet-zeros", 10)
    with pytest.raises(PatchdbError, match="odd"):
        parse_schedule("3,4,5")
    with pytest.raises(PatchdbError, match="unknown scale schedule"):
        parse_schedule("nonsense")
    assert parse_schedule("constant:5", 7).sizes == (5,) * 7
    assert len(PRESETS) == 10 and all(len(v) == 20 for v in PRESETS.values())


def test_resuming_part_way_gives_the_same_samples():
    images = torch.rand(5, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    machine = ExactMachine(images, "els")
    den = lambda x, t, labels=None: machine.denoise(x, t, k=3)
    noise = initial_noise([0, 1], (1, 6, 6), torch.float64)
    states = {}
    full = ddim_sample(den, noise.clone(), 6, callback=lambda info: states.__setitem__(info["step"], info["x"].clone())).samples
    for start in (5, 3, 1):  # the state after step start + 1, resumed at step start
        assert torch.equal(ddim_sample(den, states[start + 1], 6, first_step=start).samples, full)
    assert torch.equal(ddim_sample(den, full, 6, first_step=0).samples, full)
    with pytest.raises(PatchdbError, match="outside 0..6"):
        ddim_sample(den, noise, 6, first_step=7)
