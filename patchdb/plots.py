"""Pictures: image grids written atomically."""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from PIL import Image

from .store import atomic_write


def grid_array(images: torch.Tensor, ncol: int | None = None, pad: int = 2, scale: int = 2) -> np.ndarray:
    """(B, C, H, W) images in [-1, 1] -> uint8 (rows, cols, 3) mosaic with a light separating border."""
    images = images.detach().cpu().float().clamp(-1, 1)
    b, c, h, w = images.shape
    ncol = ncol or math.ceil(math.sqrt(b))
    nrow = math.ceil(b / ncol)
    pix = ((images + 1) * 127.5).round().to(torch.uint8).numpy()
    if c == 1:
        pix = np.repeat(pix, 3, axis=1)
    out = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, 3), 200, np.uint8)
    for j in range(b):
        y, x = divmod(j, ncol)
        out[pad + y * (h + pad) : pad + y * (h + pad) + h, pad + x * (w + pad) : pad + x * (w + pad) + w] = pix[j, :3].transpose(1, 2, 0)
    return np.kron(out, np.ones((scale, scale, 1), np.uint8)) if scale > 1 else out


def save_grid(images: torch.Tensor, path: str | os.PathLike, ncol: int | None = None) -> None:
    with atomic_write(path) as tmp:
        Image.fromarray(grid_array(images, ncol)).save(tmp, format="PNG")
