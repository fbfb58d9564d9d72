"""A deliberately naive reference of the machines of docs/math.md: loops and float64, for tests only.

Written from docs/math.md without looking at the engine: every candidate window is cut out and
compared with the query window one at a time.
"""

from __future__ import annotations

import math

import numpy as np


def schedule_ab(t: float) -> tuple[float, float]:
    beta = 1.0 - math.cos((t / 1.008) * math.pi / 2) ** 2
    return math.sqrt(1.0 - beta), math.sqrt(beta)


def window(img: np.ndarray, y: int, x: int, k: int, circular: bool) -> np.ndarray:
    """k x k window of img (C, H, W) centred at (y, x); circular wrap or zeros outside."""
    c, h, w = img.shape
    r = k // 2
    out = np.zeros((c, k, k))
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            yy, xx = y + dy, x + dx
            if circular:
                out[:, dy + r, dx + r] = img[:, yy % h, xx % w]
            elif 0 <= yy < h and 0 <= xx < w:
                out[:, dy + r, dx + r] = img[:, yy, xx]
    return out


def candidates(machine: str, y: int, x: int, h: int, w: int, k: int) -> list[tuple[int, int]]:
    """Candidate centres q for query pixel p = (y, x), as docs/math.md's table says."""
    r = k // 2
    inside = [(qy, qx) for qy in range(r, h - r) for qx in range(r, w - r)]
    if machine in ("els", "bbels") and k >= min(h, w):
        machine = "ls"
    if machine == "ls":
        return [(y, x)]
    if machine == "els":
        return inside
    near_y = y < r or y >= h - r
    near_x = x < r or x >= w - r
    if near_y and near_x:
        return [(y, x)]
    if near_y:
        return [(y, qx) for qx in range(r, w - r)]
    if near_x:
        return [(qy, x) for qy in range(r, h - r)]
    return inside


def softmax_average(logw: list[float], values: list[np.ndarray]) -> np.ndarray:
    m = max(logw)
    ws = [math.exp(lw - m) for lw in logw]
    total = sum(ws)
    return sum(wi * v for wi, v in zip(ws, values)) / total


def brute_denoise(x, t, k, images, machine, labels=None, label=None) -> np.ndarray:
    """D(x, t) for x (B, C, H, W) and images (N, C, H, W), numpy float64."""
    x = np.asarray(x, dtype=np.float64)
    images = np.asarray(images, dtype=np.float64)
    if label is not None:
        images = images[np.asarray(labels) == label]
    a, b = schedule_ab(t)
    out = np.zeros_like(x)
    for i, img in enumerate(x):
        if machine == "is":
            logw = [-np.sum((img - a * phi) ** 2) / (2 * b * b) for phi in images]
            out[i] = softmax_average(logw, list(images))
            continue
        _, h, w = img.shape
        circular = machine == "els" and k < min(h, w)
        for y in range(h):
            for xx in range(w):
                query = window(img, y, xx, k, circular)
                logw, vals = [], []
                for phi in images:
                    for qy, qx in candidates(machine, y, xx, h, w, k):
                        cand = window(phi, qy, qx, k, circular=False)
                        logw.append(-np.sum((query - a * cand) ** 2) / (2 * b * b))
                        vals.append(phi[:, qy, qx])
                out[i, :, y, xx] = softmax_average(logw, vals)
    return out
