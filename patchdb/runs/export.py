"""Export a sample set to what FID / precision-recall tools and image viewers read."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from ..store import atomic_write, claimed


def to_uint8(samples: np.ndarray) -> np.ndarray:
    """(N, C, H, W) floats in [-1, 1] -> (N, H, W, C) uint8 (pixel = round((x + 1) * 127.5), clipped)."""
    return np.clip(np.rint((samples + 1.0) * 127.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def png_path(folder: Path, seed: int) -> Path:
    """EDM's layout: sub-folders of 1,000 seeds named by their first seed, one ``{seed:06d}.png`` each."""
    return folder / f"{seed - seed % 1000:05d}" / f"{seed:06d}.png"


def export_png(samples: np.ndarray, seeds: np.ndarray, folder: str | os.PathLike, force: bool = False) -> int:
    """One PNG per seed (grey or RGB) under ``folder``; written into a temporary folder renamed at the end."""
    from PIL import Image

    with claimed(folder, force, what="--png", folder=True) as folder:  # the one overwrite rule
        tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            for img, seed in zip(to_uint8(samples), seeds):
                path = png_path(tmp, int(seed))
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(path)
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return len(seeds)


def export_npz(samples: np.ndarray, seeds: np.ndarray, labels: np.ndarray | None, path: str | os.PathLike,
               force: bool = False) -> None:
    """``arr_0`` (N, H, W, C) uint8 (the layout of OpenAI's guided-diffusion evaluator), ``seeds`` and
    ``labels`` (-1: unconditional), written atomically."""
    lab = np.full(len(seeds), -1, np.int64) if labels is None else np.asarray(labels, np.int64)
    with claimed(path, force, what="--npz") as path, atomic_write(path) as tmp, open(tmp, "wb") as f:
        # a file object: np.savez adds no suffix
        np.savez(f, arr_0=to_uint8(samples), seeds=np.asarray(seeds, np.int64), labels=lab)
