"""Image grids (patchdb.plots) against a plain loop that places every tile."""

import math

import numpy as np
import pytest
import torch

from patchdb.plots import grid_array


def loop_grid(images, ncol=None, pad=2, scale=2):
    images = images.float().clamp(-1, 1)
    b, c, h, w = images.shape
    ncol = ncol or math.ceil(math.sqrt(b))
    nrow = math.ceil(b / ncol)
    pix = ((images + 1) * 127.5).round().to(torch.uint8).numpy()
    if c == 1:
        pix = np.repeat(pix, 3, axis=1)
    out = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, 3), 200, np.uint8)
    for j in range(b):
        y, x = divmod(j, ncol)
        top, left = pad + y * (h + pad), pad + x * (w + pad)
        out[top : top + h, left : left + w] = pix[j, :3].transpose(1, 2, 0)
    return np.kron(out, np.ones((scale, scale, 1), np.uint8)) if scale > 1 else out


@pytest.mark.parametrize("b,c,ncol", [(1, 1, None), (5, 1, None), (16, 3, None), (7, 3, 3), (2, 1, 4), (6, 1, 6)])
def test_grid_is_bit_identical_to_placing_tiles(b, c, ncol):
    x = torch.rand(b, c, 6, 5, generator=torch.Generator().manual_seed(b)) * 2.2 - 1.1
    got = grid_array(x, ncol)
    assert got.dtype == np.uint8 and np.array_equal(got, loop_grid(x, ncol))
