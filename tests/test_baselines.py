"""CNN baselines: models, the epsilon -> denoiser adapter, training, checkpoints and `patchdb train`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from patchdb.cli.main import main
from patchdb.baselines import (
    EpsDenoiser,
    ModelConfig,
    TrainConfig,
    build_model,
    load_checkpoint,
    train,
)
from patchdb.baselines.train import check_data_fits, diffusion_loss, schedule_ab
from patchdb.errors import PatchdbError
from patchdb.sampler import ddim_sample, initial_noise
from patchdb.schedule import alpha_sigma

torch.set_num_threads(1)


def tiny_cfg(**kw) -> ModelConfig:
    base = {"arch": "resnet", "channels": 1, "image_size": 8, "width": 8, "depth": 2, "emb_dim": 16}
    base.update(kw)
    return ModelConfig(**base)


class PerfectEps(torch.nn.Module):
    """A 'network' that knows the clean image: eps_hat = (x - a_t x0) / b_t exactly."""

    def __init__(self, x0: torch.Tensor):
        super().__init__()
        self.x0 = x0

    def forward(self, x, t, labels=None):
        a, b = schedule_ab(t)
        return (x - a.view(-1, 1, 1, 1) * self.x0) / b.view(-1, 1, 1, 1)


def test_schedule_ab_matches_alpha_sigma():
    for t in (0.0, 0.05, 0.5, 0.999, 1.0):
        a, b = schedule_ab(torch.tensor([t], dtype=torch.float64))
        ea, eb = alpha_sigma(t)
        assert abs(float(a) - ea) < 1e-12 and abs(float(b) - eb) < 1e-12


def test_adapter_maps_perfect_epsilon_to_true_x0():
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 1, 8, 8, generator=g) * 2 - 1
    eps = torch.randn(3, 1, 8, 8, generator=g)
    den = EpsDenoiser(PerfectEps(x0))
    for t in (0.05, 0.5, 1.0):
        a, b = alpha_sigma(t)
        xt = a * x0 + b * eps
        assert torch.allclose(den(xt, t), x0, atol=1e-4 if t < 1 else 2e-3)
        assert torch.allclose(den.eps(xt, t), eps, atol=1e-4)


def test_ddim_over_adapter_returns_the_known_image():
    # With a perfect denoiser every DDIM step lands on x0's trajectory, so the sample is x0.
    x0 = torch.linspace(-1, 1, 64).view(1, 1, 8, 8)
    res = ddim_sample(EpsDenoiser(PerfectEps(x0)), initial_noise([7], (1, 8, 8)), steps=10)
    assert torch.allclose(res.samples, x0, atol=1e-3)


@pytest.mark.parametrize("arch", ["resnet", "unet", "unet-attn"])
@pytest.mark.parametrize("padding", ["zeros", "circular"])
def test_models_shapes(arch, padding):
    net = build_model(tiny_cfg(arch=arch, padding=padding, channels=3, num_classes=4))
    x = torch.randn(2, 3, 8, 8)
    out = net(x, torch.tensor([0.1, 0.9]), torch.tensor([0, 3]))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_circular_resnet_is_shift_equivariant_and_zero_padded_is_local():
    torch.manual_seed(0)
    circ = build_model(tiny_cfg(padding="circular")).eval()
    x, t = torch.randn(1, 1, 8, 8), torch.tensor([0.3])
    with torch.no_grad():
        assert torch.allclose(circ(torch.roll(x, (2, 3), (2, 3)), t), torch.roll(circ(x, t), (2, 3), (2, 3)), atol=1e-5)
    # Zero-padded ResNet with depth 2: 4 convolutions, receptive field 9x9, so radius 4 around a pixel.
    zero = build_model(tiny_cfg(image_size=16)).eval()
    x = torch.randn(1, 1, 16, 16, requires_grad=True)
    zero(x, t)[0, 0, 8, 8].backward()
    touched = (x.grad[0, 0] != 0).nonzero()
    assert touched[:, 0].min() >= 4 and touched[:, 0].max() <= 12 and touched[:, 1].min() >= 4


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_receptive_field_is_what_the_gradient_reaches(depth):
    from patchdb.baselines import receptive_field

    cfg = tiny_cfg(image_size=24, depth=depth)
    net = build_model(cfg).eval()
    for p in net.parameters():  # no zero-initialised layer may hide a dependence
        torch.nn.init.normal_(p, std=0.5)
    x = torch.randn(1, 1, 24, 24, requires_grad=True)
    net(x, torch.tensor([0.5]))[0, 0, 12, 12].backward()
    touched = (x.grad[0, 0] != 0).nonzero()
    side = int(touched[:, 0].max() - touched[:, 0].min()) + 1
    assert side == int(touched[:, 1].max() - touched[:, 1].min()) + 1 == receptive_field(cfg) == 2 * (depth + 2) + 1
    assert receptive_field(tiny_cfg(image_size=8, depth=6)) == 8  # capped at the image
    assert receptive_field(tiny_cfg(arch="unet", image_size=16)) == 16


def test_conditional_network_without_labels_fails_in_one_line():
    net = build_model(tiny_cfg(num_classes=3))
    with pytest.raises(PatchdbError, match="class-conditional"):
        EpsDenoiser(net, conditional=True)(torch.randn(1, 1, 8, 8), 0.5)
    with pytest.raises(PatchdbError, match="class-conditional"):
        net(torch.randn(1, 1, 8, 8), torch.tensor([0.5]))


def test_tiny_model_loss_decreases():
    torch.manual_seed(0)
    cfg = tiny_cfg(width=16)
    net = build_model(cfg)
    x0 = torch.zeros(16, 1, 8, 8)
    x0[:, :, 2:6, 2:6] = 1.0  # one simple image: the noise is easy to predict once it is learnt
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)

    def fixed_loss() -> float:
        with torch.no_grad():
            return float(diffusion_loss(net, x0, None, torch.Generator().manual_seed(123)))

    before = fixed_loss()
    g = torch.Generator().manual_seed(1)
    for _ in range(25):
        loss = diffusion_loss(net, x0, None, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert fixed_loss() < 0.7 * before


def small_images(n=24, size=8):
    g = torch.Generator().manual_seed(5)
    return torch.rand(n, 1, size, size, generator=g) * 2 - 1


def test_checkpoint_roundtrip_and_resume_equals_uninterrupted(tmp_path):
    cfg, images = tiny_cfg(), small_images()
    tc = TrainConfig(epochs=3, batch_size=8, ema=0.9, save_every=1e9)
    info = train(cfg, tc, images, None, tmp_path / "full")
    assert info["steps"] == 9 and info["format"] == "patchdb-checkpoint"
    assert (tmp_path / "full" / "loss.png").stat().st_size > 0
    train(cfg, tc, images, None, tmp_path / "half", max_steps=4)
    assert json.loads((tmp_path / "half" / "config.json").read_text())["steps"] == 4
    resumed = train(cfg, tc, images, None, tmp_path / "half", resume=True)
    assert resumed["steps"] == 9
    a, _, _ = load_checkpoint(tmp_path / "full")
    b, cfg_b, _ = load_checkpoint(tmp_path / "half" / "model.pt")
    assert cfg_b == cfg
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name


def test_bad_checkpoints_and_data(tmp_path):
    cfg, images = tiny_cfg(), small_images()
    train(cfg, TrainConfig(epochs=1, batch_size=8, ema=0), images, None, tmp_path / "ck")
    conf = json.loads((tmp_path / "ck" / "config.json").read_text())
    conf["model"]["arch"] = "unet"
    (tmp_path / "ck" / "config.json").write_text(json.dumps(conf))
    with pytest.raises(PatchdbError, match="another architecture"):
        load_checkpoint(tmp_path / "ck")
    with pytest.raises(PatchdbError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing")
    with pytest.raises(PatchdbError, match="1x8x8"):
        check_data_fits(cfg, 3, 8, 8)
    with pytest.raises(PatchdbError, match="takes 1x8x8"):
        train(cfg, TrainConfig(epochs=1), small_images(size=16), None, tmp_path / "other")
    with pytest.raises(PatchdbError, match="--resume"):
        train(cfg, TrainConfig(epochs=1), images, None, tmp_path / "fresh", resume=True)


class _Touch:
    """A pickle that would create a file when loaded (what a crafted checkpoint does to run code)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_checkpoints_load_tensors_only_and_bad_ones_are_one_line(tmp_path):
    """Issue 29: train_state.pt / model.pt never run code; garbage, truncated or wrong-keyed files are one line."""
    cfg, images = tiny_cfg(), small_images()
    tc = TrainConfig(epochs=1, batch_size=8, ema=0.5)
    train(cfg, tc, images, None, tmp_path / "ck")
    good = {name: (tmp_path / "ck" / name).read_bytes() for name in ("train_state.pt", "model.pt")}
    marker = tmp_path / "ran-code"
    bad = {"crafted": None, "garbage": b"garbage" * 50, "truncated": 500, "wrong keys": {"foo": torch.zeros(2)}}
    for name in ("train_state.pt", "model.pt"):
        for kind, content in bad.items():
            path = tmp_path / "ck" / name
            if kind == "crafted":
                torch.save({"net": _Touch(marker)}, path)
            elif kind == "wrong keys":
                torch.save(content, path)
            else:
                path.write_bytes(content if isinstance(content, bytes) else good[name][:content])
            with pytest.raises(PatchdbError) as err:
                if name == "model.pt":
                    load_checkpoint(tmp_path / "ck")
                else:
                    train(cfg, TrainConfig(epochs=2, batch_size=8, ema=0.5), images, None, tmp_path / "ck", resume=True)
            assert "\n" not in str(err.value) and name in str(err.value), (kind, str(err.value))
            assert not marker.exists(), f"{kind} {name} ran code"
            path.write_bytes(good[name])
    assert train(cfg, TrainConfig(epochs=2, batch_size=8, ema=0.5), images, None, tmp_path / "ck", resume=True)["steps"] == 6


def test_cli_train_writes_checkpoint_and_refuses_overwrite(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--limit", "16", "--width", "4", "--depth", "1", "--epochs", "1", "-b", "8", "--out", str(out)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.pt", "train_state.pt", "loss.png"}
    _, cfg, info = load_checkpoint(out)
    assert cfg.image_size == 32 and info["steps"] == 2 and info["dataset"]["count"] == 16
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and "--resume" in res.output
    res = CliRunner().invoke(main, args[:-4] + ["--epochs", "2", "-b", "8", "--resume", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "config.json").read_text())["steps"] == 4


def test_v_network_is_its_head_through_eps_hat_equals_b_x_plus_a_v():
    torch.manual_seed(3)
    eps_net = build_model(tiny_cfg()).eval()
    v_net = build_model(tiny_cfg(predict="v")).eval()
    v_net.load_state_dict(eps_net.state_dict())  # same weights: eps_net's output is v_net's head
    x = torch.randn(4, 1, 8, 8)
    times = [0.0, 0.3, 0.999, 1.0]
    with torch.no_grad():
        head = eps_net(x, torch.tensor(times))
        out = v_net(x, torch.tensor(times))
        for i, t in enumerate(times):
            a, b = alpha_sigma(t)
            assert torch.allclose(out[i], b * x[i] + a * head[i], atol=1e-6)
            # through the adapter, D = a x - b v_hat: no 1 / a_t at t = 1
            d = EpsDenoiser(v_net)(x[i : i + 1], t)
            if t > 0:
                assert torch.allclose(d[0], a * x[i] - b * head[i], atol=1e-4)


def test_v_checkpoints_say_so_and_eps_checkpoints_are_unchanged(tmp_path):
    images = small_images()
    tc = TrainConfig(epochs=1, batch_size=8, ema=0, save_every=1e9)
    train(tiny_cfg(predict="v"), tc, images, None, tmp_path / "v")
    train(tiny_cfg(), tc, images, None, tmp_path / "eps")
    conf_v = json.loads((tmp_path / "v" / "config.json").read_text())
    conf_e = json.loads((tmp_path / "eps" / "config.json").read_text())
    assert conf_v["model"]["predict"] == "v" and conf_v["format-version"] == 2
    assert "predict" not in conf_e["model"] and conf_e["format-version"] == 1  # as written before v existed
    assert load_checkpoint(tmp_path / "v")[1].predict == "v"
    assert load_checkpoint(tmp_path / "eps")[1].predict == "eps"
    with pytest.raises(PatchdbError, match="predict=eps but v was asked for"):
        train(tiny_cfg(predict="v"), tc, images, None, tmp_path / "eps", resume=True)
    with pytest.raises(PatchdbError, match="unknown prediction target"):
        tiny_cfg(predict="x0")


def test_cli_train_predict_v(tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", "--limit", "16", "--width", "4", "--depth", "1", "--epochs", "1", "-b", "8",
                                    "--predict", "v", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert load_checkpoint(out)[1].predict == "v"


COMMITTED = sorted(p.parent for p in (Path(__file__).resolve().parents[1] / "checkpoints").glob("*/config.json"))


@pytest.mark.parametrize("folder", COMMITTED, ids=[f.name for f in COMMITTED])
def test_committed_checkpoints_load_and_denoise(folder):
    # The README's results are rerun from these folders: each must still load with this code, and a
    # v network must be read as one (its head changes what the weights mean).
    from patchdb.baselines import EpsDenoiser, load_checkpoint

    net, cfg, info = load_checkpoint(folder)
    assert cfg.predict == ("v" if "-v-" in folder.name else "eps")
    assert info["format-version"] == (2 if cfg.predict == "v" else 1)
    x = initial_noise([0, 1], (cfg.channels, cfg.image_size, cfg.image_size))
    labels = torch.tensor([0, 1]) if cfg.conditional else None
    with torch.no_grad():
        d = EpsDenoiser(net, conditional=cfg.conditional)(x, 0.5, labels)
    assert d.shape == x.shape and torch.isfinite(d).all()
