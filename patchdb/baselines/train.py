"""Training of the epsilon-networks and their checkpoints (docs/math.md "Images and noise").

Loss: ``|| net(a_t x0 + b_t eps, t) - eps ||^2`` with ``t`` uniform on {0, ..., 999}/1000 and the
legacy cosine schedule; AdamW, learning rate decaying exponentially from ``lr`` to ``lr_final`` over
the run (by step when an epoch count bounds it, by wall time when a time budget does), optional EMA.

A checkpoint is a folder:

* ``config.json``: the :class:`ModelConfig` plus training settings, dataset provenance and the loss reached;
* ``model.pt``: the ``state_dict`` to sample with (the EMA weights when EMA is on);
* ``train_state.pt``: raw weights, EMA, optimizer, RNG state, step, elapsed time, loss history (``--resume``);
* ``loss.png``: the loss curve.

Each file is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import PatchdbError, PatchdbFileError
from ..store import atomic_write, generated_by
from .models import ModelConfig, build_model, count_parameters, schedule_ab

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "patchdb-checkpoint"
# Version 2 only adds the model's ``predict`` field; networks predicting eps are still written as
# version 1, so that earlier patchdb versions keep reading them and refuse the ones they would misread.
CHECKPOINT_VERSION = 2


@dataclass(frozen=True)
class TrainConfig:
    epochs: float | None = 10.0  # None: bounded by ``minutes`` only
    minutes: float | None = None  # wall-time budget (None: bounded by ``epochs`` only)
    batch_size: int = 128
    lr: float = 1e-3
    lr_final: float = 1e-4
    weight_decay: float = 0.0
    ema: float = 0.999  # 0 turns EMA off
    seed: int = 0
    save_every: float = 300.0  # seconds between checkpoints

    def __post_init__(self) -> None:
        if self.epochs is None and self.minutes is None:
            raise PatchdbError("give --epochs or --minutes (or both) to bound training")
        if self.batch_size < 1 or self.lr <= 0 or self.lr_final <= 0:
            raise PatchdbError("batch size and learning rates must be positive")
        if not 0.0 <= self.ema < 1.0:
            raise PatchdbError(f"--ema {self.ema} must be in [0, 1); 0 turns EMA off")


def diffusion_loss(net: nn.Module, x0: torch.Tensor, labels: torch.Tensor | None, gen: torch.Generator) -> torch.Tensor:
    """Epsilon-prediction MSE for one batch; ``t`` uniform on {0, ..., 999}/1000."""
    b = x0.shape[0]
    t = torch.randint(0, 1000, (b,), generator=gen).float().div_(1000.0)
    eps = torch.randn(x0.shape, generator=gen)
    t, eps = t.to(x0.device), eps.to(x0.device)
    a_t, b_t = schedule_ab(t)
    xt = a_t.view(-1, 1, 1, 1) * x0 + b_t.view(-1, 1, 1, 1) * eps
    return torch.mean((net(xt, t, labels) - eps) ** 2)


# ------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------


#: Keys of ``train_state.pt`` (tensors, numbers, lists and dicts only: loaded with ``weights_only=True``).
STATE_KEYS = ("model_config", "net", "ema", "opt", "step", "epoch", "elapsed", "history", "perm_pos", "perm", "rng")


def load_tensors(path: Path, what: str):
    """``torch.load(path, weights_only=True)``: tensors, numbers, strings, lists and dicts, never code.

    A file that needs anything else (a crafted pickle), or is garbage or truncated, is one line.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 (UnpicklingError, RuntimeError from the zip reader, EOFError, ...)
        why = "it holds objects other than tensors" if "weights_only" in str(err).lower() else "damaged or truncated"
        raise PatchdbError(f"{path} cannot be read as {what} ({err.__class__.__name__}: {why}); patchdb loads tensors "
                           "only, never code: use a file written by 'patchdb train'") from None


def checkpoint_paths(folder: str | Path) -> dict[str, Path]:
    folder = Path(folder)
    return {name: folder / f"{name}" for name in ("config.json", "model.pt", "train_state.pt", "loss.png")}


def _folder_of(path: str | Path) -> Path:
    """A checkpoint folder from the folder itself or any file in it."""
    path = Path(path)
    if path.is_dir():
        return path
    if path.suffix in (".json", ".pt") and path.parent.is_dir() and path.exists():
        return path.parent
    raise PatchdbFileError(f"checkpoint {path} does not exist; give the folder that 'patchdb train --out' wrote")


def read_config(path: str | Path) -> dict:
    """The JSON config of a checkpoint folder, checked to be a patchdb checkpoint."""
    folder = _folder_of(path)
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        raise PatchdbFileError(f"{folder} holds no config.json; it is not a checkpoint written by 'patchdb train'")
    try:
        data = json.loads(cfg_path.read_text())
    except json.JSONDecodeError:
        raise PatchdbError(f"{cfg_path} is not valid JSON (truncated?); retrain or restore it") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        if not isinstance(data, dict):
            raise PatchdbError(f"{cfg_path} is not a patchdb checkpoint config (not a JSON object); retrain or restore it")
        raise PatchdbError(f"{cfg_path} is not a patchdb checkpoint config (format '{data.get('format')}')")
    version = data.get("format-version", 99)
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise PatchdbError(f"{cfg_path} has a newer checkpoint format than this patchdb reads; upgrade patchdb")
    return data


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", expect: ModelConfig | None = None):
    """Rebuild the network of a checkpoint folder.

    Returns ``(net, model_config, config_dict)``. ``expect`` (optional): a config the checkpoint must
    match in architecture, channels and image size.
    """
    data = read_config(path)
    cfg = model_config_of(data.get("model"), _folder_of(path) / "config.json")
    if expect is not None:
        check_same_model(cfg, expect, str(path))
    try:
        net = build_model(cfg)
    except (TypeError, ValueError, RuntimeError) as err:
        raise PatchdbError(f"{_folder_of(path) / 'config.json'} describes no network patchdb can build "
                           f"({err.__class__.__name__}); it is damaged or not written by 'patchdb train'") from None
    weights = _folder_of(path) / "model.pt"
    if not weights.exists():
        raise PatchdbFileError(f"{weights} is missing; the checkpoint folder is incomplete")
    state = load_tensors(weights, "network weights")
    _load_state(net, state, cfg, weights)
    return net.to(device).eval(), cfg, data


def weights_digest(path: str | Path) -> str:
    """Short SHA-256 of a checkpoint's ``model.pt``: names the exact weights a result was computed with."""
    import hashlib

    return hashlib.sha256((_folder_of(path) / "model.pt").read_bytes()).hexdigest()[:16]


def model_config_of(data, where) -> ModelConfig:
    """The :class:`ModelConfig` a checkpoint records; one line when it is missing or malformed."""
    try:
        if not isinstance(data, dict):
            raise TypeError("not a JSON object")
        return ModelConfig.from_dict(data)
    except (TypeError, ValueError, KeyError) as err:
        raise PatchdbError(f"{where} holds no usable model settings ({err.__class__.__name__}: {err}); "
                           "it is damaged or not written by 'patchdb train'") from None


def _load_state(net: nn.Module, state: dict, cfg: ModelConfig, where) -> None:
    try:
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise RuntimeError("not a state dict of tensors")
        net.load_state_dict(state)
    except (RuntimeError, TypeError, KeyError, ValueError):
        raise PatchdbError(
            f"{where} does not fit a {cfg.arch} of width {cfg.width}, depth {cfg.depth}, {cfg.channels} channel(s) "
            f"and {cfg.image_size}px: it belongs to another architecture or size; use the config saved with it"
        ) from None


def check_same_model(found: ModelConfig, wanted: ModelConfig, where: str) -> None:
    for name in ("arch", "channels", "image_size", "width", "depth", "padding", "num_classes", "predict"):
        a, b = getattr(found, name), getattr(wanted, name)
        if a != b:
            raise PatchdbError(f"checkpoint {where} has {name}={a} but {b} was asked for; drop the option or use another --out")


def check_data_fits(cfg: ModelConfig, channels: int, height: int, width: int, where: str = "the model") -> None:
    """One line if a dataset's images are not the size and channels a network was built for."""
    if channels != cfg.channels or height != cfg.image_size or width != cfg.image_size:
        raise PatchdbError(
            f"the dataset has {channels}x{height}x{width} images but {where} takes "
            f"{cfg.channels}x{cfg.image_size}x{cfg.image_size}; load the dataset it was trained on (same --policy)"
        )


def save_checkpoint(folder: Path, cfg: ModelConfig, net: nn.Module, ema: nn.Module | None, opt, state: dict,
                    info: dict) -> None:
    """Write train_state.pt, model.pt, config.json and loss.png, each atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = checkpoint_paths(folder)
    sample_net = ema if ema is not None else net
    with atomic_write(paths["train_state.pt"]) as tmp:
        torch.save({"model_config": cfg.to_dict(), "net": net.state_dict(),
                    "ema": None if ema is None else ema.state_dict(), "opt": opt.state_dict(), **state}, tmp)
    with atomic_write(paths["model.pt"]) as tmp:
        torch.save(sample_net.state_dict(), tmp)
    config = {"format": CHECKPOINT_FORMAT, "format-version": 1 if cfg.predict == "eps" else CHECKPOINT_VERSION, "generated-by": generated_by(),
              "model": cfg.to_dict(), "weights": "ema" if ema is not None else "raw", **info}
    with atomic_write(paths["config.json"]) as tmp:
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    if state.get("history"):
        save_loss_curve(state["history"], paths["loss.png"], cfg)


def save_loss_curve(history: list, path: Path, cfg: ModelConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h[0] for h in history]
    losses = [h[1] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses, lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("epsilon MSE (running mean)")
    ax.set_title(f"{cfg.arch} {cfg.padding} w{cfg.width} d{cfg.depth}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------
# Training loop
# ------------------------------------------------------------------------------------------------


def _update_ema(ema: nn.Module, net: nn.Module, decay: float) -> None:
    with torch.no_grad():
        ema_params, params = list(ema.parameters()), [p.detach() for p in net.parameters()]
        torch._foreach_mul_(ema_params, decay)
        torch._foreach_add_(ema_params, params, alpha=1 - decay)


def _lr_at(tc: TrainConfig, progress: float) -> float:
    return tc.lr * (tc.lr_final / tc.lr) ** min(max(progress, 0.0), 1.0)


def train(
    cfg: ModelConfig,
    tc: TrainConfig,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    out: str | Path,
    resume: bool = False,
    device: str | torch.device = "cpu",
    data_info: dict | None = None,
    progress: bool = False,
    max_steps: int | None = None,
) -> dict:
    """Train ``cfg``'s network on ``images`` (N, C, H, W) floats in [-1, 1]; returns the final config dict.

    ``labels`` (N,) int64 are used when ``cfg`` is conditional. ``resume`` continues from
    ``out/train_state.pt`` up to the same totals (epochs or minutes). ``max_steps`` caps the optimizer
    steps (for tests).
    """
    out = Path(out)
    check_data_fits(cfg, images.shape[1], images.shape[2], images.shape[3])
    if cfg.conditional and labels is None:
        raise PatchdbError("a conditional model needs the training labels")
    device = torch.device(device)
    torch.manual_seed(tc.seed)  # the initial weights depend on the seed alone
    # channels-last: a training step runs 1.12-1.18x faster on the CPU this way (benchmarks/train.py)
    net = build_model(cfg).to(device, memory_format=torch.channels_last)
    ema = copy.deepcopy(net) if tc.ema > 0 else None
    opt = torch.optim.AdamW(net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    gen = torch.Generator().manual_seed(tc.seed)
    state = {"step": 0, "epoch": 0, "elapsed": 0.0, "history": [], "perm_pos": 0, "perm": None}
    if resume:
        state = _resume(out, cfg, net, ema, opt, gen)
    n = images.shape[0]
    steps_per_epoch = math.ceil(n / tc.batch_size)
    total_steps = None if tc.epochs is None else max(1, round(tc.epochs * steps_per_epoch))
    budget = None if tc.minutes is None else tc.minutes * 60.0
    info_base = {"train": asdict(tc), "dataset": data_info or {}, "parameters": count_parameters(net),
                 "device": str(device), "threads": torch.get_num_threads()}
    images = images.to(device).contiguous(memory_format=torch.channels_last)
    labels_dev = labels.to(device) if (labels is not None and cfg.conditional) else None
    perm = state["perm"] if state["perm"] is not None else torch.randperm(n, generator=gen)
    pos = state["perm_pos"]
    running = None
    start = time.perf_counter() - state["elapsed"]
    last_save = time.perf_counter()
    bar = tqdm(total=total_steps, initial=state["step"], desc="training", unit="step", disable=not progress)

    def snapshot() -> None:
        state.update(elapsed=time.perf_counter() - start, perm=perm, perm_pos=pos, rng=gen.get_state())
        info = dict(info_base, steps=state["step"], epochs_done=state["step"] / steps_per_epoch,
                    seconds=round(state["elapsed"], 1),
                    final_loss=None if not state["history"] else state["history"][-1][1])
        save_checkpoint(out, cfg, net, ema, opt, state, info)

    try:
        net.train()
        while True:
            elapsed = time.perf_counter() - start
            if total_steps is not None and state["step"] >= total_steps:
                break
            if budget is not None and elapsed >= budget:
                break
            if max_steps is not None and state["step"] >= max_steps:
                break
            frac = [state["step"] / total_steps if total_steps else 0.0, elapsed / budget if budget else 0.0]
            for group in opt.param_groups:
                group["lr"] = _lr_at(tc, max(frac))
            if pos >= n:
                perm, pos = torch.randperm(n, generator=gen), 0
            idx = perm[pos : pos + tc.batch_size]
            pos += tc.batch_size
            loss = diffusion_loss(net, images[idx.to(device)], None if labels_dev is None else labels_dev[idx.to(device)], gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state["step"] += 1
            if ema is not None:
                _update_ema(ema, net, min(tc.ema, (1 + state["step"]) / (10 + state["step"])))
            value = float(loss.detach())
            if not math.isfinite(value):
                raise PatchdbError(f"the loss became {value} at step {state['step']}; lower --lr")
            running = value if running is None else 0.98 * running + 0.02 * value
            if state["step"] % 10 == 0:
                state["history"].append((state["step"], running))
                bar.set_postfix(loss=f"{running:.4f}", lr=f"{opt.param_groups[0]['lr']:.1e}")
            bar.update(1)
            if time.perf_counter() - last_save > tc.save_every:
                snapshot()
                last_save = time.perf_counter()
    finally:
        bar.close()
    if running is not None and (not state["history"] or state["history"][-1][0] != state["step"]):
        state["history"].append((state["step"], running))
    snapshot()
    return read_config(out)


def _resume(out: Path, cfg: ModelConfig, net, ema, opt, gen) -> dict:
    path = out / "train_state.pt"
    if not path.exists():
        raise PatchdbFileError(f"--resume: {path} does not exist; train without --resume first")
    saved = load_tensors(path, "a training state")  # weights_only: a crafted pickle cannot run code
    missing = [k for k in STATE_KEYS if not isinstance(saved, dict) or k not in saved]
    if missing:
        raise PatchdbError(f"{path} lacks {', '.join(missing)}; it is not a training state 'patchdb train' wrote, "
                           "train without --resume into a new --out")
    check_same_model(model_config_of(saved["model_config"], path), cfg, str(out))
    _load_state(net, saved["net"], cfg, path)
    if ema is not None:
        _load_state(ema, saved["ema"] if saved["ema"] is not None else net.state_dict(), cfg, path)
    try:
        opt.load_state_dict(saved["opt"])
        gen.set_state(saved["rng"])
        state = {k: saved[k] for k in ("step", "epoch", "elapsed", "history", "perm_pos", "perm")}
        state["step"], state["perm_pos"], state["elapsed"] = int(state["step"]), int(state["perm_pos"]), float(state["elapsed"])
        state["history"] = [(int(a), float(b)) for a, b in state["history"]]
        if state["perm"] is not None and not isinstance(state["perm"], torch.Tensor):
            raise TypeError("perm is not a tensor")
    except (RuntimeError, TypeError, ValueError, KeyError, IndexError) as err:
        raise PatchdbError(f"{path} holds a damaged optimizer or sampler state ({err.__class__.__name__}); "
                           "train without --resume into a new --out") from None
    log.info("resumed %s at step %d", out, state["step"])
    return state
