"""Bring your own network (patchdb.networks): schedules, time map, prediction targets, the three loaders,
and patchdb's own checkpoints wrapped each way giving the samples of loading them directly."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch

from patchdb.errors import PatchdbError
from patchdb.networks import (
    NetworkDenoiser,
    ddpm_linear,
    load_network_module,
    log_snr,
    network_denoiser,
    parse_net_schedule,
    receptive_field,
    weights_digest,
)
from patchdb.schedule import alpha_sigma

torch.set_num_threads(1)

SIZE = 8  # the diffusers network's images


# ------------------------------------------------------------------------------------------------
# fixtures: a patchdb checkpoint, its wrappers, a tiny trained diffusers UNet2DModel, tiny data
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wrappers(tiny_checkpoint, tmp_path_factory):
    """The checkpoint as ``file.py:function`` and as a TorchScript file."""
    from patchdb.baselines import load_checkpoint

    folder = tmp_path_factory.mktemp("wrap")
    py = folder / "wrap_ck.py"
    py.write_text("from patchdb.baselines import load_checkpoint\n\n\n"
                  f"def build():\n    return load_checkpoint({str(tiny_checkpoint)!r})[0]\n")
    net = load_checkpoint(tiny_checkpoint)[0]
    ts = folder / "net.pt"
    traced = torch.jit.trace(net, (torch.zeros(2, 1, 32, 32), torch.full((2,), 0.5)), check_trace=False)
    torch.jit.save(traced, str(ts))
    return {"module": f"{py}:build", "torchscript": str(ts)}


def tiny_images(n: int = 48) -> torch.Tensor:
    """(n, 1, 8, 8) in [-1, 1]: the embedded MNIST digits averaged down to 8x8, on a 1/127.5 grid."""
    from patchdb.data import load_dataset

    data = load_dataset(None, limit=n)
    x = torch.nn.functional.avg_pool2d(data.to_float(torch.float32), 4)
    return ((x + 1) * 127.5).round() / 127.5 - 1


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny8.npz"
    x = tiny_images()
    np.savez(path, images=((x + 1) * 127.5).round().to(torch.uint8).numpy()[:, 0], labels=np.zeros(len(x), np.int64))
    return path


@pytest.fixture(scope="module")
def diffusers_folder(tmp_path_factory):
    """A diffusers UNet2DModel without attention, trained for a few hundred steps on the tiny data
    (epsilon prediction, DDPM linear betas over 1000 timesteps), saved with save_pretrained."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=SIZE, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), add_attention=False, norm_num_groups=4)
    data, alphabar = tiny_images(), ddpm_linear().float()
    opt = torch.optim.Adam(unet.parameters(), lr=2e-3)
    first = last = None
    for step in range(300):
        x0 = data[torch.randint(0, len(data), (16,))]
        tau = torch.randint(0, 1000, (16,))
        eps = torch.randn_like(x0)
        ab = alphabar[tau].view(-1, 1, 1, 1)
        loss = ((unet(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, tau).sample - eps) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = float(loss) if first is None else first
        last = float(loss) if step >= 250 and last is None else last
    assert last < first  # it learned something
    out = tmp_path_factory.mktemp("unet") / "unet"
    unet.eval().save_pretrained(str(out))
    return out


def ddim(den, seeds, shape, steps=4):
    from patchdb.sampler import ddim_sample, initial_noise

    return ddim_sample(den, initial_noise(seeds, shape), steps).samples


# ------------------------------------------------------------------------------------------------
# noise schedules and the time map
# ------------------------------------------------------------------------------------------------


def test_ddpm_linear_is_the_cumulative_product():
    ab = ddpm_linear(1e-4, 0.02, 1000)
    betas = np.linspace(1e-4, 0.02, 1000)
    assert np.allclose(ab.numpy(), np.cumprod(1 - betas), rtol=1e-12)


@pytest.mark.parametrize("t", [0.05, 0.1, 0.37, 0.5, 0.8, 0.95, 1.0])
def test_nearest_timestep_minimises_log_snr_distance(t):
    sched = parse_net_schedule("ddpm-linear")
    a, b = alpha_sigma(t)
    target = math.log(a * a / (b * b))
    brute = int(torch.argmin((log_snr(sched.alphabar) - target).abs()))
    assert sched.net_time(t) == brute


@pytest.mark.parametrize("t", [0.05, 0.3, 0.66, 0.9])
def test_interpolated_timestep_matches_log_snr(t):
    sched = parse_net_schedule("ddpm-linear:0.0001,0.02,1000", time="interp")
    tau = sched.net_time(t)
    lo = math.floor(tau)
    snr = log_snr(sched.alphabar)
    between = float(snr[lo]) + (tau - lo) * float(snr[lo + 1] - snr[lo])
    a, b = alpha_sigma(t)
    assert between == pytest.approx(math.log(a * a / (b * b)), abs=1e-9)


def test_cosine_is_patchdb_time_and_table_file(tmp_path):
    assert parse_net_schedule("cosine").net_time(0.3) == 0.3
    table = tmp_path / "ab.txt"
    ab = ddpm_linear(1e-4, 0.02, 50)
    table.write_text("\n".join(repr(float(v)) for v in ab))
    sched = parse_net_schedule(str(table))
    assert torch.equal(sched.alphabar, ab)
    assert sched.net_time(0.5) == parse_net_schedule("ddpm-linear:0.0001,0.02,50").net_time(0.5)


@pytest.mark.parametrize("spec, expected", [
    ("ddpm-linear:0.02,0.0001,1000", "beta0 < beta1"),
    ("ddpm-linear:1e-4,0.02", "ddpm-linear:beta0,beta1,T"),
    ("sqrt", "unknown network schedule"),
])
def test_bad_schedules_one_line(spec, expected):
    with pytest.raises(PatchdbError, match=expected):
        parse_net_schedule(spec)


def test_non_monotone_table_refused(tmp_path):
    path = tmp_path / "ab.json"
    path.write_text("[0.9, 0.95, 0.5]")
    with pytest.raises(PatchdbError, match="decrease strictly"):
        parse_net_schedule(str(path))


# ------------------------------------------------------------------------------------------------
# what the network predicts: eps, x0 and v all give back x0 from an oracle
# ------------------------------------------------------------------------------------------------


class Oracle(torch.nn.Module):
    """Knows the clean image and the noise: returns the exact eps, x0 or v of x = a x0 + b eps (cosine time)."""

    def __init__(self, x0, eps, predict):
        super().__init__()
        self.x0, self.eps, self.predict = x0, eps, predict

    def forward(self, x, tau):
        a, b = alpha_sigma(float(tau[0]))
        return {"eps": self.eps, "x0": self.x0, "v": a * self.eps - b * self.x0}[self.predict]


@pytest.mark.parametrize("predict", ["eps", "x0", "v"])
def test_prediction_targets_recover_x0(predict):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.rand(2, 1, 6, 6, generator=g) * 2 - 1, torch.randn(2, 1, 6, 6, generator=g)
    for t in (0.1, 0.5, 0.9):
        a, b = alpha_sigma(t)
        den = NetworkDenoiser(Oracle(x0, eps, predict), predict, "cosine")
        assert torch.allclose(den(a * x0 + b * eps, t), x0, atol=1e-5)


def test_wrong_output_shape_and_bad_predict():
    den = NetworkDenoiser(lambda x, tau: x[:, :, :2], "eps", "cosine")
    with pytest.raises(PatchdbError, match="returned shape"):
        den(torch.zeros(1, 1, 4, 4), 0.5)
    with pytest.raises(PatchdbError, match="--predict"):
        NetworkDenoiser(lambda x, tau: x, "score", "cosine")


# ------------------------------------------------------------------------------------------------
# loaders; a patchdb checkpoint wrapped each way gives the samples of loading it directly
# ------------------------------------------------------------------------------------------------


def direct_denoiser(checkpoint):
    from patchdb.baselines import EpsDenoiser, load_checkpoint

    net, cfg, _ = load_checkpoint(checkpoint)
    return EpsDenoiser(net, conditional=cfg.conditional)


@pytest.mark.parametrize("kind", ["module", "torchscript"])
def test_wrapped_checkpoint_gives_the_same_samples(tiny_checkpoint, wrappers, kind):
    den, info = network_denoiser(wrappers[kind], "eps", "cosine")
    assert info["kind"] == kind
    ours = ddim(den, [0, 1, 2], (1, 32, 32))
    direct = ddim(direct_denoiser(tiny_checkpoint), [0, 1, 2], (1, 32, 32))
    assert (ours - direct).abs().max() <= 1e-6


def test_weights_digest_same_for_module_and_torchscript(wrappers):
    a = load_network_module(wrappers["module"]).module
    b = load_network_module(wrappers["torchscript"]).module
    assert weights_digest(a) == weights_digest(b)


def test_measured_receptive_field_matches_resnet_formula(wrappers, tiny_checkpoint):
    from patchdb.baselines import load_checkpoint
    from patchdb.baselines import receptive_field as formula

    den, _ = network_denoiser(wrappers["module"], "eps", "cosine")
    assert receptive_field(den, (1, 32, 32)) == formula(load_checkpoint(tiny_checkpoint)[1]) == 7


def test_loader_errors_one_line(tmp_path):
    pickled = tmp_path / "pickled.pt"
    torch.save({"w": torch.zeros(2)}, pickled)
    cases = [
        (str(pickled), "not a TorchScript file"),
        ("byo_nets:not_a_module", "not a torch.nn.Module"),
        ("byo_nets:missing", "has no function"),
        ("no_such_module_xyz:build", "cannot import module"),
        (str(tmp_path / "nothing.pt"), "neither an existing file"),
        (str(tmp_path), "no config.json"),
    ]
    for source, expected in cases:
        with pytest.raises(PatchdbError, match=expected) as err:
            load_network_module(source)
        assert "\n" not in str(err.value)


def test_plain_module_from_tests(tiny_npz):
    den, info = network_denoiser("byo_nets:tiny_conv", "x0", "ddpm-linear:0.0001,0.02,100")
    x = torch.randn(2, 1, SIZE, SIZE)
    out = den(x, 0.5)
    tau = parse_net_schedule("ddpm-linear:0.0001,0.02,100").net_time(0.5)
    assert torch.equal(out, den.net(x, torch.full((2,), tau)))
    assert receptive_field(den, (1, SIZE, SIZE)) == 5
    assert info["kind"] == "module" and len(info["weights"]) == 16


def test_diffusers_folder(diffusers_folder):
    from diffusers import UNet2DModel

    den, info = network_denoiser(str(diffusers_folder), "eps", "ddpm-linear")
    assert info["kind"] == "diffusers"
    unet = UNet2DModel.from_pretrained(str(diffusers_folder)).eval()
    x = torch.randn(3, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    t = 0.6
    tau = den.schedule.net_time(t)
    assert tau == int(tau)
    with torch.no_grad():
        eps = unet(x, torch.full((3,), tau)).sample
    a, b = alpha_sigma(t)
    assert torch.allclose(den(x, t), (x - b * eps) / a, atol=1e-6)


def test_missing_diffusers_one_line(diffusers_folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(PatchdbError, match=r'pip install "patchdb\[diffusers\]"'):
        load_network_module(str(diffusers_folder))


# ------------------------------------------------------------------------------------------------
# through the CLI: calibrate, compare (end-to-end and per-step), --index with --exact-check
# ------------------------------------------------------------------------------------------------


def cli(*args):
    from click.testing import CliRunner
    from patchdb.cli.main import main

    return CliRunner().invoke(main, [str(a) for a in args])


def tiny_data_args(npz):
    return ["--dataset", npz, "--policy", "none"]


@pytest.mark.parametrize("network", ["diffusers", "module"])
def test_cli_calibrate_and_compare_foreign_network(tmp_path, tiny_npz, diffusers_folder, network):
    if network == "diffusers":
        net = ["--network", diffusers_folder, "--predict", "eps", "--net-schedule", "ddpm-linear"]
    else:
        net = ["--network", "byo_nets:tiny_conv", "--predict", "x0", "--net-schedule", "ddpm-linear:0.0001,0.02,100",
               "--net-time", "interp"]
    common = [*tiny_data_args(tiny_npz), *net, "--steps", "4", "-n", "2", "-b", "2"]
    cal = tmp_path / "cal.json"
    res = cli("calibrate", *common, "--sizes", "3,5", "-o", cal)
    assert res.exit_code == 0, res.output
    saved = json.loads(cal.read_text())
    assert len(saved["sizes"]) == 4 and set(saved["sizes"]) <= {3, 5}
    assert saved["settings"]["model"]["kind"] == network and saved["settings"]["engine"] == "exact"
    res = cli("compare", *common, "-s", cal, "--out", tmp_path / "cmp")
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert set(out["per_seed_r"]) == {"bbels", "is"} and len(out["per_seed_r"]["bbels"]) == 2
    res = cli("compare", *common, "-s", cal, "--protocol", "per-step", "--out", tmp_path / "ps")
    assert res.exit_code == 0, res.output
    ps = json.loads((tmp_path / "ps" / "perstep.json").read_text())
    assert len(ps["per_step"]) == 4 and set(ps["summary"]) == {"bbels", "is"}


def test_cli_sizes_auto_uses_measured_receptive_field(tmp_path, tiny_npz):
    res = cli("calibrate", *tiny_data_args(tiny_npz), "--network", "byo_nets:tiny_conv", "--predict", "eps",
              "--net-schedule", "ddpm-linear", "--steps", "2", "-n", "1", "-o", tmp_path / "c.json")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "c.json").read_text())["candidates"] == [3, 5]


def test_cli_checkpoint_and_wrapped_give_same_comparison(tmp_path, tiny_checkpoint, wrappers):
    base = ["--limit", "6", "--steps", "3", "-n", "2", "-s", "3,5,7"]
    res = cli("compare", "-c", tiny_checkpoint, *base, "--out", tmp_path / "direct")
    assert res.exit_code == 0, res.output
    direct = json.loads((tmp_path / "direct" / "compare.json").read_text())["per_seed_r"]
    for kind in ("module", "torchscript"):
        res = cli("compare", "--network", wrappers[kind], "--predict", "eps", "--net-schedule", "cosine", *base,
                  "--out", tmp_path / kind)
        assert res.exit_code == 0, res.output
        wrapped = json.loads((tmp_path / kind / "compare.json").read_text())["per_seed_r"]
        for name in direct:
            assert np.allclose(wrapped[name], direct[name], atol=1e-6)


@pytest.mark.parametrize("args, expected", [
    (["--predict", "eps"], "give the network to follow"),
    (["--network", "byo_nets:tiny_conv"], "--predict"),
    (["--network", "byo_nets:tiny_conv", "--predict", "eps", "-c", "x"], "not both"),
    (["--network", "byo_nets:nope", "--predict", "eps", "--net-schedule", "cosine"], "has no function"),
])
def test_cli_network_bad_input_one_line(tmp_path, tiny_npz, args, expected):
    res = cli("compare", *tiny_data_args(tiny_npz), *args, "-s", "3,5", "--steps", "2", "-n", "1", "--out", tmp_path / "o")
    assert res.exit_code == 2, res.output
    assert len(res.output.strip().splitlines()) == 1 and expected in res.output, res.output


def test_cli_index_with_exact_check(tmp_path, tiny_npz):
    idx = tmp_path / "i.h5"
    res = cli("build", *tiny_data_args(tiny_npz), "--scales", "3,5", "--recall-k", "8", "--out", idx)
    assert res.exit_code == 0, res.output
    net = ["--network", "byo_nets:tiny_conv", "--predict", "x0", "--net-schedule", "ddpm-linear"]
    common = [*tiny_data_args(tiny_npz), *net, "--steps", "2", "-n", "3", "--index", idx, "--exact-check", "2"]
    # every candidate retrieved (top-K >= all windows of a Flat index): approx == exact up to rounding
    res = cli("compare", *common, "-s", "3,5", "--topk", "100000", "--out", tmp_path / "cmp")
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    check = out["exact_check"]["machines"]["bbels"]
    assert out["settings"]["engine"] == "approx" and out["exact_check"]["seeds"] == [0, 1]
    assert min(check["r2_approx_vs_exact"]) > 0.9999
    assert "approx-vs-exact" in res.output
    res = cli("calibrate", *common, "--sizes", "3,5", "--topk", "100000", "-o", tmp_path / "cal.json")
    assert res.exit_code == 0, res.output
    cal = json.loads((tmp_path / "cal.json").read_text())
    assert cal["exact_check"]["r2_approx_vs_exact"]["min"] > 0.9999 and cal["exact_check"]["same_best_size"] == 1.0
    res = cli("compare", *tiny_data_args(tiny_npz), *net, "-s", "3,5", "--steps", "2", "-n", "1", "--exact-check", "1",
              "--out", tmp_path / "x")
    assert res.exit_code == 2 and "--exact-check needs --index" in res.output
