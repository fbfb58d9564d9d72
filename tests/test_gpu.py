"""CUDA runs the same code as the CPU (skipped where no GPU is present)."""

import pytest
import torch

import patchdb

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("machine", ["is", "ls", "els", "bbels"])
def test_cuda_matches_cpu(machine):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(20, 3, 12, 12, generator=g, dtype=torch.float64) * 2 - 1
    x = torch.randn(4, 3, 12, 12, generator=g, dtype=torch.float64)
    cpu = patchdb.denoise(x, 0.4, 5, images, machine)
    gpu = patchdb.denoise(x.cuda(), 0.4, 5, images, machine, device="cuda")
    assert gpu.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-9)
