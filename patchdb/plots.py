"""Pictures: image grids written atomically."""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid

from .store import atomic_write

#: Grey of the border between tiles (and of empty tiles).
BACKGROUND = 200


def grid_array(images: torch.Tensor, ncol: int | None = None, pad: int = 2, scale: int = 2) -> np.ndarray:
    """(B, C, H, W) images in [-1, 1] -> uint8 (rows, cols, 3) mosaic with a light separating border."""
    images = images.detach().cpu().float().clamp(-1, 1)
    b, c, h, w = images.shape
    ncol = ncol or math.ceil(math.sqrt(b))
    pix = ((images + 1) * 127.5).round().to(torch.uint8)[:, :3].expand(-1, 3, -1, -1)  # grey -> RGB
    if ncol > b:  # make_grid makes at most B columns; blank tiles keep the asked-for width
        pix = torch.cat([pix, torch.full((ncol - b, 3, h, w), BACKGROUND, dtype=torch.uint8)])
    if len(pix) == 1:  # make_grid returns a lone image as it is, without the border
        grid = torch.nn.functional.pad(pix[0], (pad, pad, pad, pad), value=BACKGROUND)
    else:
        grid = make_grid(pix, nrow=ncol, padding=pad, pad_value=BACKGROUND)
    out = grid.permute(1, 2, 0).numpy()
    return np.kron(out, np.ones((scale, scale, 1), np.uint8)) if scale > 1 else out


def save_grid(images: torch.Tensor, path: str | os.PathLike, ncol: int | None = None) -> None:
    with atomic_write(path) as tmp:
        Image.fromarray(grid_array(images, ncol)).save(tmp, format="PNG")
