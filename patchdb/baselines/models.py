"""Convolutional epsilon-prediction networks of the paper's comparisons (docs/math.md "Calibration and comparison").

* :class:`ResNet`: convolution-only, 3x3 convolutions, residual blocks, a time (and optional class)
  embedding added before each convolution, no normalisation, ``zeros`` or ``circular`` padding and a
  3x3 output convolution. Its receptive field grows by 2 pixels per convolution, which is what makes
  it local (and, with zero padding, boundary-broken) like the bbELS machine.
* :class:`UNet`: convolution-only, 3 levels, max-pool down, transposed-convolution up, skip connections;
  ``attention=True`` adds one self-attention block at the lowest resolution (the paper's "attention" model).

Every network maps ``(x_t (B, C, H, W), t (B,) in [0, 1], labels (B,) or None) -> epsilon_hat (B, C, H, W)``.
With ``predict="eps"`` (the paper's networks, the default) the output convolution gives ``epsilon_hat``
itself; with ``predict="v"`` it gives ``v_hat`` (the "v" of Salimans & Ho 2022, ``v = a_t eps - b_t x_0``)
and the network returns ``epsilon_hat = b_t x_t + a_t v_hat``: the same loss and interface, but its
denoised image ``D = a_t x_t - b_t v_hat`` stays bounded at ``t = 1``, where an epsilon network's
``D = (x_t - b_t eps_hat) / a_t`` multiplies any error of ``eps_hat`` by ``b_t / a_t`` (about 80).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PatchdbError

ARCHS = ("resnet", "unet", "unet-attn")
PADDINGS = ("zeros", "circular")
PREDICTS = ("eps", "v")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a network; stored as JSON beside its ``state_dict``."""

    arch: str = "resnet"
    channels: int = 1  # image channels C
    image_size: int = 32  # H = W
    width: int = 64  # feature channels (UNet: of the top level; levels use width, 2 width, 2 width)
    depth: int = 6  # ResNet: residual blocks of one 3x3 conv each; UNet: residual blocks per level
    padding: str = "zeros"
    num_classes: int | None = None  # None: unconditional
    emb_dim: int = 128
    extra: dict = field(default_factory=dict)
    predict: str = "eps"  # what the output convolution predicts: "eps" (the paper) or "v" (module docstring)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise PatchdbError(f"unknown architecture '{self.arch}'; choose one of {', '.join(ARCHS)}")
        if self.padding not in PADDINGS:
            raise PatchdbError(f"unknown padding '{self.padding}'; choose zeros or circular")
        if self.predict not in PREDICTS:
            raise PatchdbError(f"unknown prediction target '{self.predict}'; choose eps or v")
        if self.width < 1 or self.depth < 1 or self.channels < 1:
            raise PatchdbError(f"width, depth and channels must be positive, got {self.width}, {self.depth}, {self.channels}")
        if self.arch != "resnet" and self.image_size % 4:
            raise PatchdbError(f"the 3-level UNet needs an image size divisible by 4, got {self.image_size}")

    @property
    def conditional(self) -> bool:
        return self.num_classes is not None

    def to_dict(self) -> dict:
        # An epsilon network's dict is the one written before ``predict`` existed, so the configs,
        # calibrations and comparisons of those networks keep comparing equal.
        out = asdict(self)
        if out["predict"] == "eps":
            del out["predict"]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def time_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of ``1000 t`` (B,) -> (B, dim), the usual DDPM time embedding."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = 1000.0 * t.float().view(-1, 1) * freqs.view(1, -1)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class Embedding(nn.Module):
    """Time (and class) embedding shared by all blocks; each block projects it to its own width."""

    def __init__(self, dim: int, num_classes: int | None):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.classes = nn.Embedding(num_classes, dim) if num_classes else None

    def forward(self, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        emb = self.mlp(time_features(t, self.dim))
        if self.classes is not None:
            if labels is None:
                raise PatchdbError("this network is class-conditional: give a label for each image (--label)")
            if int(labels.min()) < 0 or int(labels.max()) >= self.classes.num_embeddings:
                raise PatchdbError(
                    f"labels must be in 0..{self.classes.num_embeddings - 1} for this conditional network"
                )
            emb = emb + self.classes(labels.long())
        return emb


def schedule_ab(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Vectorised ``(a_t, b_t)`` of the legacy cosine schedule: ``a = cos(theta)``, ``b = sin(theta)``."""
    theta = (t / 1.008) * (math.pi / 2)
    return torch.cos(theta), torch.sin(theta)


def epsilon_from_head(cfg: ModelConfig, head: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The network's ``epsilon_hat`` from what its output convolution gave (module docstring)."""
    if cfg.predict == "eps":
        return head
    a, b = (v.to(head.dtype).view(-1, 1, 1, 1) for v in schedule_ab(t))
    return b * x.to(head.dtype) + a * head


def conv3(cin: int, cout: int, padding: str) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, padding_mode=padding)


class ResBlock(nn.Module):
    """``h + conv(act(h + proj(emb)))`` repeated ``convs`` times: the embedding enters before each conv."""

    def __init__(self, cin: int, cout: int, emb_dim: int, padding: str, convs: int = 1):
        super().__init__()
        self.projs = nn.ModuleList([nn.Linear(emb_dim, cin if i == 0 else cout) for i in range(convs)])
        self.convs = nn.ModuleList([conv3(cin if i == 0 else cout, cout, padding) for i in range(convs)])
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        out = h
        for proj, conv in zip(self.projs, self.convs):
            out = conv(F.silu(out + proj(emb)[:, :, None, None]))
        return self.skip(h) + out


class ResNet(nn.Module):
    """Convolution-only ResNet: 3x3 in-conv, ``depth`` residual blocks of one 3x3 conv, 3x3 out-conv.

    Receptive field: ``2 (depth + 2) + 1`` pixels. No normalisation layers (they would make it non-local).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.embed = Embedding(cfg.emb_dim, cfg.num_classes)
        self.inp = conv3(cfg.channels, w, cfg.padding)
        self.blocks = nn.ModuleList([ResBlock(w, w, cfg.emb_dim, cfg.padding) for _ in range(cfg.depth)])
        self.out = conv3(w, cfg.channels, cfg.padding)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.embed(t, labels)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return epsilon_from_head(self.cfg, self.out(F.silu(h)), x, t)


class SelfAttention(nn.Module):
    """Single-head self-attention over all positions of a feature map, residual."""

    def __init__(self, width: int):
        super().__init__()
        self.qkv = nn.Conv2d(width, 3 * width, 1)
        self.proj = nn.Conv2d(width, width, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = h.shape
        q, k, v = self.qkv(h).reshape(b, 3, c, hh * ww).unbind(1)
        att = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(c), dim=-1)  # (B, P, P)
        out = (v @ att.transpose(1, 2)).reshape(b, c, hh, ww)
        return h + self.proj(out)


class UNet(nn.Module):
    """Convolution-only 3-level UNet: max-pool down, transposed conv up, skip connections by concatenation."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        widths = (cfg.width, 2 * cfg.width, 2 * cfg.width)
        e, p = cfg.emb_dim, cfg.padding
        self.embed = Embedding(e, cfg.num_classes)
        self.inp = conv3(cfg.channels, widths[0], p)
        self.down = nn.ModuleList()
        cin = widths[0]
        for w in widths:
            self.down.append(nn.ModuleList([ResBlock(cin if i == 0 else w, w, e, p) for i in range(cfg.depth)]))
            cin = w
        self.attn = SelfAttention(widths[-1]) if cfg.arch == "unet-attn" else None
        self.ups = nn.ModuleList([nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(2)])
        self.up = nn.ModuleList(
            [nn.ModuleList([ResBlock(2 * widths[i] if j == 0 else widths[i], widths[i], e, p) for j in range(cfg.depth)])
             for i in range(2)]
        )
        self.out = conv3(widths[0], cfg.channels, p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.embed(t, labels)
        h = self.inp(x)
        skips = []
        for level, blocks in enumerate(self.down):
            if level > 0:
                h = F.max_pool2d(h, 2)
            for block in blocks:
                h = block(h, emb)
            skips.append(h)
        if self.attn is not None:
            h = self.attn(h)
        for level in (1, 0):
            h = torch.cat([self.ups[level](h), skips[level]], dim=1)
            for block in self.up[level]:
                h = block(h, emb)
        return epsilon_from_head(self.cfg, self.out(F.silu(h)), x, t)


def receptive_field(cfg: ModelConfig) -> int:
    """Side of the square of input pixels one output pixel can depend on, capped at the image size.

    ResNet: ``2 (depth + 2) + 1`` (``depth + 2`` 3x3 convolutions). UNet: the whole image; its two
    poolings let a 3x3 convolution at the lowest level see 12 pixels, so from ``depth`` 2 on the field
    already exceeds a 32x32 image (and ``unet-attn`` attends everywhere).
    """
    if cfg.arch == "resnet":
        return min(2 * (cfg.depth + 2) + 1, cfg.image_size)
    return cfg.image_size


def build_model(cfg: ModelConfig) -> nn.Module:
    """The network a config describes, freshly initialised."""
    return ResNet(cfg) if cfg.arch == "resnet" else UNet(cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
