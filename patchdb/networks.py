"""Bring your own network: adapters from foreign denoising networks to patchdb's denoiser contract.

Every adapter lives in this one module (as k-diffusion's ``external.py``); the sampler, calibration and
comparison only ever see ``D(x, t, labels) = E[x_0 | x_t = x]`` at patchdb's time ``t`` (docs/math.md
"Images and noise"). Three sources of a network are read:

* ``module:function`` or ``path/to/file.py:function``: a Python callable that takes no arguments and
  returns a ``torch.nn.Module`` (import and call it: it runs the user's own code, as any import does);
* a TorchScript file (``torch.jit.save`` of ``torch.jit.trace``/``script``), read by ``torch.jit.load``.
  patchdb never unpickles a model file: TorchScript holds code for TorchScript's own interpreter and
  tensors, not arbitrary Python objects, so loading it is safer than ``torch.load`` of a pickled
  module, though a TorchScript file can still do anything its operators can (read it only from people
  you trust);
* a diffusers ``UNet2DModel`` folder (``save_pretrained``); needs the optional ``diffusers`` package
  (``pip install "patchdb[diffusers]"``), imported only when such a folder is given.

The user states what the network predicts (``eps``, ``x0`` or ``v = a eps - b x0``) and its noise
schedule: ``cosine`` (the legacy cosine of docs/math.md over a continuous time in [0, 1], the schedule of the
networks ``patchdb train`` writes), ``ddpm-linear[:beta0,beta1,T]`` (betas linear from beta0 to beta1 over
T discrete timesteps, ``alphabar[tau] = prod_{s <= tau} (1 - beta_s)``, diffusers' "linear"; default
1e-4, 0.02, 1000) or a file holding the network's alphabar table (entry ``tau`` = alphabar of timestep
``tau``). patchdb maps its time ``t`` to the network's time by matching alphabar: the continuous cosine
is patchdb's own, so ``tau = t``; a discrete schedule takes the timestep whose log-SNR
``log(alphabar / (1 - alphabar))`` is nearest to that of ``alpha_sigma(t)`` (``time="nearest"``), or
interpolates linearly in log-SNR between the two neighbouring timesteps and feeds the fractional
timestep (``time="interp"``). The network's output is turned into ``D`` with patchdb's ``a_t, b_t``,
the noise level ``x`` actually has: ``eps``: ``D = (x - b eps) / a``; ``x0``: ``D = out``;
``v``: ``D = a x - b v``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import PatchdbError, PatchdbFileError
from .schedule import alpha_sigma

log = logging.getLogger(__name__)

PREDICTIONS = ("eps", "x0", "v")
TIME_MAPS = ("nearest", "interp")
DDPM_LINEAR_DEFAULT = (1e-4, 0.02, 1000)


# ------------------------------------------------------------------------------------------------
# The network's noise schedule and the map from patchdb's time to the network's
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NetSchedule:
    """A network's own noise schedule: continuous cosine of docs/math.md, or a discrete alphabar table.

    ``alphabar`` (T,) float64, strictly decreasing in (0, 1), entry ``tau`` for timestep ``tau``;
    None for the continuous cosine (the network's time is patchdb's ``t``).
    """

    name: str
    alphabar: torch.Tensor | None = None
    time: str = "nearest"

    def __post_init__(self) -> None:
        if self.time not in TIME_MAPS:
            raise PatchdbError(f"unknown network time map '{self.time}'; use nearest or interp")
        if self.alphabar is not None:
            ab = self.alphabar
            if ab.ndim != 1 or len(ab) < 2:
                raise PatchdbError(f"schedule '{self.name}': the alphabar table needs at least 2 entries, got shape {tuple(ab.shape)}")
            if not bool(((ab > 0) & (ab < 1)).all()) or not bool((ab[1:] < ab[:-1]).all()):
                raise PatchdbError(f"schedule '{self.name}': alphabar must lie in (0, 1) and decrease strictly with the "
                                   "timestep (entry 0 = least noise)")

    @property
    def discrete(self) -> bool:
        return self.alphabar is not None

    def net_time(self, t: float) -> float:
        """The network's time input for patchdb's time ``t``: ``t`` itself for cosine, else a timestep."""
        if self.alphabar is None:
            return float(t)
        a, b = alpha_sigma(float(t))
        target = 2 * (math.log(a) - math.log(b)) if b > 0 else math.inf  # log-SNR of x at time t
        snr = log_snr(self.alphabar)  # decreasing in tau
        if target >= float(snr[0]) or target <= float(snr[-1]):
            end = 0 if target >= float(snr[0]) else len(snr) - 1
            if abs(target - float(snr[end])) > 0.05:
                log.warning("t=%.4f (log-SNR %.2f) lies beyond the network's schedule '%s' (log-SNR %.2f .. %.2f); "
                            "using its timestep %d", t, target, self.name, float(snr[-1]), float(snr[0]), end)
            return float(end)
        hi = int(torch.searchsorted(-snr, torch.tensor(-target, dtype=torch.float64)))  # first tau with snr <= target
        lo = hi - 1
        frac = (float(snr[lo]) - target) / (float(snr[lo]) - float(snr[hi]))
        if self.time == "nearest":
            return float(hi if frac >= 0.5 else lo)
        return lo + frac

    def to_dict(self) -> dict:
        return {"name": self.name, "time": self.time, "timesteps": None if self.alphabar is None else len(self.alphabar)}


def log_snr(alphabar: torch.Tensor) -> torch.Tensor:
    """``log(alphabar / (1 - alphabar))`` in float64."""
    ab = alphabar.double()
    return torch.log(ab) - torch.log1p(-ab)


def ddpm_linear(beta0: float = 1e-4, beta1: float = 0.02, timesteps: int = 1000) -> torch.Tensor:
    """alphabar (T,) of DDPM's linear betas (Ho et al. 2020; diffusers ``beta_schedule="linear"``)."""
    betas = torch.linspace(beta0, beta1, timesteps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def parse_net_schedule(spec: str | NetSchedule, time: str = "nearest") -> NetSchedule:
    """``cosine``, ``ddpm-linear[:beta0,beta1,T]`` or a file of alphabar values (JSON list, JSON
    ``{"alphabar": [...]}`` or numbers separated by whitespace/commas; entry 0 = least noise)."""
    if isinstance(spec, NetSchedule):
        return spec
    spec = str(spec).strip()
    if spec == "cosine":
        return NetSchedule("cosine", None, time)
    if spec == "ddpm-linear" or spec.startswith("ddpm-linear:"):
        return NetSchedule(spec, ddpm_linear(*_ddpm_args(spec)), time)
    path = Path(spec)
    if not path.is_file():
        raise PatchdbError(f"unknown network schedule '{spec}'; use cosine, ddpm-linear[:beta0,beta1,T] or a file of "
                           "alphabar values (one per timestep, least noise first)")
    return NetSchedule(path.name, _read_alphabar(path), time)


def _ddpm_args(spec: str) -> tuple[float, float, int]:
    if ":" not in spec:
        return DDPM_LINEAR_DEFAULT
    parts = spec.split(":", 1)[1].split(",")
    try:
        beta0, beta1, steps = float(parts[0]), float(parts[1]), int(parts[2])
        if len(parts) != 3 or not 0 < beta0 < beta1 < 1 or steps < 2:
            raise ValueError
    except (ValueError, IndexError):
        raise PatchdbError(f"'{spec}' is not ddpm-linear:beta0,beta1,T with 0 < beta0 < beta1 < 1 and T >= 2, "
                           "e.g. ddpm-linear:0.0001,0.02,1000") from None
    return beta0, beta1, steps


def _read_alphabar(path: Path) -> torch.Tensor:
    text = path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = text.replace(",", " ").split()
    if isinstance(data, dict):
        data = data.get("alphabar")
    try:
        return torch.tensor([float(v) for v in data], dtype=torch.float64)
    except (TypeError, ValueError):
        raise PatchdbError(f"{path} holds no list of alphabar numbers; write one number per timestep, least noise "
                           "first, or JSON {\"alphabar\": [...]}") from None


# ------------------------------------------------------------------------------------------------
# Loading a network: module:function, TorchScript file, diffusers folder
# ------------------------------------------------------------------------------------------------


@dataclass
class LoadedNetwork:
    """A foreign network as a plain ``module(x, tau (B,), labels or None) -> prediction``."""

    module: nn.Module
    kind: str  # "module", "torchscript" or "diffusers"
    source: str
    num_classes: int | None = None
    info: dict = field(default_factory=dict)


class DiffusersUNet(nn.Module):
    """A diffusers ``UNet2DModel`` called as ``net(x, tau, labels)``: its ``.sample``, class labels when it has them."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, tau: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.unet(x, tau, class_labels=labels).sample


def load_network_module(source: str, device: str | torch.device = "cpu") -> LoadedNetwork:
    """Read a network from ``module:function``, ``file.py:function``, a TorchScript file or a diffusers folder."""
    source = str(source)
    path = Path(source)
    if path.is_dir():
        return _load_diffusers(path, device)
    if path.is_file():
        return _load_torchscript(path, device)
    if ":" in source:
        return _load_callable(source, device)
    raise PatchdbFileError(f"network '{source}' is neither an existing file or folder nor module:function; give a "
                           "TorchScript file, a diffusers UNet2DModel folder or e.g. mypkg.nets:build")


def _load_callable(source: str, device) -> LoadedNetwork:
    where, _, name = source.rpartition(":")
    if not where or not name.isidentifier():
        raise PatchdbError(f"network '{source}' is not module:function (e.g. mypkg.nets:build or nets.py:build)")
    if where.endswith(".py"):
        file = Path(where)
        if not file.is_file():
            raise PatchdbFileError(f"network file {file} does not exist; give an existing .py file or a module name")
        spec = importlib.util.spec_from_file_location(f"patchdb_user_{file.stem}", file)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
    else:
        try:
            mod = importlib.import_module(where)
        except ModuleNotFoundError as err:
            raise PatchdbError(f"cannot import module '{where}' of network '{source}' ({err}); put it on PYTHONPATH "
                               "or give path/to/file.py:function") from None
    func = getattr(mod, name, None)
    if not callable(func):
        raise PatchdbError(f"module '{where}' has no function '{name}'; give module:function of a function returning "
                           "a torch.nn.Module")
    module = func()
    if not isinstance(module, nn.Module):
        raise PatchdbError(f"{source}() returned {type(module).__name__}, not a torch.nn.Module; return the network")
    num_classes = _num_classes_of(module)
    return LoadedNetwork(module.to(device).eval(), "module", source, num_classes)


def _load_torchscript(path: Path, device) -> LoadedNetwork:
    try:
        module = torch.jit.load(str(path), map_location=device)
    except (RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PatchdbError(f"{path} is not a TorchScript file ({first[:120]}); patchdb does not unpickle model files: "
                           "export with torch.jit.save(torch.jit.trace(net, (x, t)), ...) or give module:function") from None
    return LoadedNetwork(module.eval(), "torchscript", str(path), None)


def _load_diffusers(path: Path, device) -> LoadedNetwork:
    config = path / "config.json"
    if not config.is_file():
        raise PatchdbFileError(f"network folder {path} has no config.json; give a diffusers UNet2DModel folder "
                               "(save_pretrained), a TorchScript file or module:function")
    meta = json.loads(config.read_text())
    if meta.get("format") == "patchdb-checkpoint":
        raise PatchdbError(f"{path} is a patchdb checkpoint; give it with -c/--checkpoint instead of --network")
    if meta.get("_class_name") not in (None, "UNet2DModel"):
        raise PatchdbError(f"{path} holds a diffusers {meta.get('_class_name')}; only UNet2DModel folders are read")
    try:
        from diffusers import UNet2DModel
    except ImportError:
        raise PatchdbError(f"{path} is a diffusers model but diffusers is not installed; "
                           "pip install \"patchdb[diffusers]\"") from None
    unet = UNet2DModel.from_pretrained(str(path), low_cpu_mem_usage=False)  # without: a warning asking for accelerate
    num_classes = unet.config.get("num_class_embeds")
    return LoadedNetwork(DiffusersUNet(unet).to(device).eval(), "diffusers", str(path), num_classes,
                         {"sample_size": unet.config.get("sample_size"), "in_channels": unet.config.get("in_channels")})


def _num_classes_of(module: nn.Module) -> int | None:
    """Class count of a module that says it is conditional (``num_classes`` or a patchdb ``cfg``)."""
    n = getattr(module, "num_classes", None)
    if n is None and hasattr(module, "cfg"):
        n = getattr(module.cfg, "num_classes", None)
    return int(n) if isinstance(n, int) and n > 0 else None


def weights_digest(module: nn.Module) -> str:
    """Short SHA-256 over the module's parameters and buffers (names, shapes and bytes)."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------
# The adapter: a network's prediction as patchdb's denoiser
# ------------------------------------------------------------------------------------------------


class NetworkDenoiser:
    """Wrap ``net(x, tau (B,), labels) -> prediction`` as ``D(x, t, labels)`` (module docstring).

    Parameters
    ----------
    net : the network; called under ``torch.no_grad`` in float32 on ``device``.
    predict : what it outputs: ``eps``, ``x0`` or ``v``.
    schedule : its noise schedule (:func:`parse_net_schedule`), which maps patchdb's t to its time.
    num_classes : class count of a conditional network (labels are then required), else None.
    """

    def __init__(self, net: Callable, predict: str, schedule: NetSchedule | str = "cosine",
                 num_classes: int | None = None, device: str | torch.device = "cpu"):
        if predict not in PREDICTIONS:
            raise PatchdbError(f"unknown --predict '{predict}'; the network predicts one of {', '.join(PREDICTIONS)}")
        self.device = torch.device(device)
        self.net = net.to(self.device).eval() if isinstance(net, nn.Module) else net
        self.predict = predict
        self.schedule = parse_net_schedule(schedule)
        self.num_classes = num_classes
        self.conditional = num_classes is not None

    @torch.no_grad()
    def output(self, x: torch.Tensor, t: float, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The network's raw prediction at patchdb's time ``t`` (B, C, H, W), in the dtype and device of ``x``."""
        if self.conditional and labels is None:
            raise PatchdbError("this network is class-conditional: give labels (--label N or --label all)")
        tau = torch.full((x.shape[0],), self.schedule.net_time(t), device=self.device)
        args = (x.to(self.device, torch.float32), tau)
        if self.conditional:
            args += (torch.as_tensor(labels, device=self.device).long().reshape(-1).expand(x.shape[0]),)
        out = _first_tensor(self.net(*args))
        if out.shape != x.shape:
            raise PatchdbError(f"the network returned shape {tuple(out.shape)} for input {tuple(x.shape)}; it must "
                               "return one prediction per pixel (check --network and the dataset's size/channels)")
        return out.to(device=x.device, dtype=x.dtype)

    def __call__(self, x: torch.Tensor, t: float, labels: torch.Tensor | None = None) -> torch.Tensor:
        a, b = alpha_sigma(float(t))
        if a <= 0:
            raise PatchdbError(f"time t={t} has a_t = 0; the denoiser is undefined there")
        out = self.output(x, t, labels)
        if self.predict == "eps":
            return (x - b * out) / a
        if self.predict == "x0":
            return out
        return a * x - b * out

    def describe(self) -> dict:
        return {"predict": self.predict, "net_schedule": self.schedule.to_dict(), "num_classes": self.num_classes}


def _first_tensor(out) -> torch.Tensor:
    """The prediction of outputs shaped as a tensor, a tuple/list (first entry) or an object with ``.sample``."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "sample") and isinstance(out.sample, torch.Tensor):
        return out.sample
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if isinstance(out, dict) and isinstance(out.get("sample"), torch.Tensor):
        return out["sample"]
    raise PatchdbError(f"the network returned {type(out).__name__}; it must return a tensor (or .sample / a tuple)")


def network_denoiser(source: str, predict: str, schedule: str | NetSchedule = "cosine", time: str = "nearest",
                     device: str | torch.device = "cpu", num_classes: int | None = None) -> tuple[NetworkDenoiser, dict]:
    """Load a network (:func:`load_network_module`) and wrap it; returns ``(denoiser, settings dict)``.

    ``num_classes`` overrides what the network says about itself (diffusers ``num_class_embeds``, a
    module's ``num_classes`` or ``cfg.num_classes``).
    """
    loaded = load_network_module(source, device)
    sched = parse_net_schedule(schedule, time) if not isinstance(schedule, NetSchedule) else schedule
    classes = num_classes if num_classes is not None else loaded.num_classes
    den = NetworkDenoiser(loaded.module, predict, sched, classes, device)
    info = {"network": loaded.source, "kind": loaded.kind, **den.describe(), "weights": weights_digest(loaded.module),
            **loaded.info}
    return den, info


def receptive_field(denoiser: Callable, shape: tuple[int, int, int], t: float = 0.5, labels=None) -> int:
    """Measured receptive field of a denoiser: the side of the smallest odd square around the centre
    pixel outside which the input has no effect on that pixel's output (gradient exactly zero),
    capped at the image size (a network that sees the whole image gets ``min(H, W)``)."""
    c, h, w = shape
    x = torch.randn(1, c, h, w, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    net = getattr(denoiser, "net", None)
    with torch.enable_grad():
        if isinstance(denoiser, NetworkDenoiser):
            tau = torch.full((1,), denoiser.schedule.net_time(t))
            args = (x, tau) + ((torch.zeros(1, dtype=torch.long),) if denoiser.conditional else ())
            out = _first_tensor(net(*args))
        else:
            out = denoiser(x, t, labels)
        out[0, :, h // 2, w // 2].sum().backward()
    hit = (x.grad[0].abs().sum(0) > 0).nonzero()
    if hit.numel() == 0:
        return 1
    reach = int(max((hit[:, 0] - h // 2).abs().max(), (hit[:, 1] - w // 2).abs().max()))
    return min(2 * reach + 1, min(h, w) if min(h, w) % 2 else min(h, w) - 1)
