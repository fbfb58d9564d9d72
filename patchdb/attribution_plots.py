"""Pictures of an attribution: mosaic map, time strip, one pixel's sources, query neighbours.

Every figure is written atomically (temp name + rename) as a PNG; images in [-1, 1] are drawn
with a fixed grey/colour scale so that panels compare.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.patches import Patch, Rectangle

from .attribute import GENERIC_WEIGHT, Attribution, QueryResult, dominant_share, dominant_sources
from .store import atomic_write

OTHER = (0.6, 0.6, 0.6)
GENERIC = (1.0, 1.0, 1.0)
# tab10 without its grey (index 7), which "other sources" uses.
PALETTE = [matplotlib.colormaps["tab10"](i)[:3] for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)]


def _rgb(img: np.ndarray) -> np.ndarray:
    """(C, H, W) in [-1, 1] -> (H, W) grey or (H, W, 3) colour in [0, 1]."""
    img = np.clip((np.asarray(img, dtype=np.float64) + 1) / 2, 0, 1)
    return img[0] if img.shape[0] == 1 else img[:3].transpose(1, 2, 0)


def _show(ax, img: np.ndarray, title: str | None = None, fontsize: int = 8) -> None:
    ax.imshow(_rgb(img), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=fontsize)


def _frame(ax, colour, width: float = 4) -> None:
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(width)


def _outline(ax, y: int, x: int, k: int, colour="red", lw: float = 1.5) -> None:
    r = k // 2
    ax.add_patch(Rectangle((x - r - 0.5, y - r - 0.5), k, k, fill=False, edgecolor=colour, linewidth=lw))


def _fmt_w(w: float) -> str:
    return f"{w:.2f}" if w >= 0.01 else f"{w:.0e}"


def _save(fig, path: str | os.PathLike) -> Path:
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def source_colours(attr: Attribution, b: int, top: int = 8, step: int = 1):
    """Top sources by pixel share at ``step`` (specific pixels only), their shares of all pixels,
    the (HW,) dominant image map and the (HW,) mask of generic pixels (see ``dominant_share``)."""
    dom, dom_w = dominant_sources(attr, b, step=step)
    generic = dom_w < GENERIC_WEIGHT
    pool = dom[~generic] if (~generic).any() else dom
    used, counts = np.unique(pool, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:top]
    return [int(u) for u in used[order]], counts[order] / dom.size, dom, generic


def _muted(dom: np.ndarray) -> np.ndarray:
    """A pale colour per image id (fixed by the id), so a patchwork of many sources stays visible."""
    rng = np.random.default_rng(7)
    table = 0.55 + 0.4 * rng.random((1024, 3))
    return table[np.asarray(dom) % 1024]


def _colour_map(dom: np.ndarray, sources: list[int], shape: tuple[int, int], generic=None) -> np.ndarray:
    """(H, W, 3): each pixel in its dominant source's colour (top sources: bold palette; others: a pale
    colour of their own), white if generic."""
    out = _muted(dom)
    for j, s in enumerate(sources):
        out[dom == s] = PALETTE[j % len(PALETTE)]
    if generic is not None:
        out[generic] = GENERIC
    return out.reshape(*shape, 3)


def mosaic_map(attr: Attribution, train_images: np.ndarray, b: int, path, labels=None, classes=None,
               top: int = 8) -> Path:
    """The sample, its pixels coloured by dominant source image (final step), how dominant, and a
    legend of the top sources' thumbnails with their pixel shares."""
    _c, h, w = attr.shape
    sources, shares, dom, generic = source_colours(attr, b, top)
    _, dom_w = dominant_sources(attr, b, step=1)
    stats = dominant_share(attr, b, step=1)
    ncols = 4
    nrows_leg = int(np.ceil(len(sources) / ncols))
    fig = plt.figure(figsize=(13, max(4.2, 2.1 * nrows_leg + 0.6)))
    grid = fig.add_gridspec(max(2, nrows_leg), 4 + ncols, width_ratios=[2, 2, 2.3, 0.35] + [1] * ncols,
                            wspace=0.12)
    ax = fig.add_subplot(grid[:, 0])
    _show(ax, attr.samples[b], f"sample {int(attr.sample_index[b])}", 11)
    ax = fig.add_subplot(grid[:, 1])
    ax.imshow(_colour_map(dom, sources, (h, w), generic), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("dominant source image\nper pixel (final step)", fontsize=11)
    ax = fig.add_subplot(grid[:, 2])
    im = ax.imshow(dom_w.reshape(h, w), cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("weight of the\ndominant source", fontsize=11)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    for j, (s, share) in enumerate(zip(sources, shares)):
        ax = fig.add_subplot(grid[j // ncols, 4 + j % ncols])
        name = ""
        if labels is not None:
            lab = int(labels[s])
            name = f"\n{classes[lab] if classes is not None else lab}"
        _show(ax, train_images[s], f"#{s}{name}\n{round(share * dom.size)} px ({100 * share:.1f}%)", 8)
        _frame(ax, PALETTE[j % len(PALETTE)])
    gen = float(generic.mean())
    rest = 1 - float(np.sum(shares)) - gen
    handles = [Patch(facecolor=OTHER, edgecolor="k", label=f"other sources (pale colours): {100 * rest:.0f}% of pixels"),
               Patch(facecolor=GENERIC, edgecolor="k",
                     label=f"generic (no source above {100 * GENERIC_WEIGHT:.0f}% of the weight): {100 * gen:.0f}%")]
    fig.legend(handles=handles, loc="upper right", fontsize=9, frameon=False, bbox_to_anchor=(0.98, 0.08), ncol=2)
    n_dom = stats["dominant_images"]
    plural = "s" if n_dom != 1 else ""
    fig.suptitle(f"Where each pixel came from ({attr.machine.upper()}): dominant-source share "
                 f"{stats['dominant_share']:.2f} (copy = 1, mosaic near 0), {n_dom} dominant source image{plural}",
                 fontsize=13)
    return _save(fig, path)


def time_strip(attr: Attribution, b: int, path, top: int = 8, every: int = 1) -> Path:
    """Per step: the denoiser output D, the dominant source map, and the effective number of sources."""
    _c, h, w = attr.shape
    sources = source_colours(attr, b, top)[0]
    rows = list(range(0, len(attr.steps), every))
    ncol = len(rows)
    fig, axes = plt.subplots(3, ncol, figsize=(1.05 * ncol + 1.2, 4.2), squeeze=False,
                             gridspec_kw={"wspace": 0.05, "hspace": 0.12})
    eff = attr.effective[b]
    norm = LogNorm(vmin=1, vmax=max(2.0, float(eff.max())))
    for col, row in enumerate(rows):
        step, t, k = int(attr.steps[row]), float(attr.times[row]), int(attr.sizes[row])
        _show(axes[0, col], attr.denoised[row, b], f"t={t:.2f}" + (f"\nk={k}" if k else ""), 8)
        dom, dom_w = dominant_sources(attr, b, step=step)
        axes[1, col].imshow(_colour_map(dom, sources, (h, w), dom_w < GENERIC_WEIGHT), interpolation="nearest")
        im = axes[2, col].imshow(eff[row].reshape(h, w), cmap="magma", norm=norm, interpolation="nearest")
        for r in (1, 2):
            axes[r, col].set_xticks([])
            axes[r, col].set_yticks([])
    for r, name in enumerate(["D (denoised)", "dominant\nsource", "effective\n# sources"]):
        axes[r, 0].set_ylabel(name, fontsize=9)
    fig.colorbar(im, ax=axes[2, :].tolist(), fraction=0.02, pad=0.01, label="exp(entropy)")
    handles = [Patch(facecolor=PALETTE[j % len(PALETTE)], label=f"#{s}") for j, s in enumerate(sources)]
    handles.append(Patch(facecolor=OTHER, label="other (pale)"))
    handles.append(Patch(facecolor=GENERIC, edgecolor="k", label="generic"))
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.0), title="top sources of the final image (colours of the middle row)",
               title_fontsize=8)
    fig.suptitle(f"Sample {int(attr.sample_index[b])}: denoiser output and its sources per step "
                 f"(noise -> clean, left to right)", fontsize=11, y=1.02)
    return _save(fig, path)


def pixel_sources(attr: Attribution, train_images: np.ndarray, b: int, pixel: tuple[int, int], path,
                  n: int = 5, labels=None) -> Path:
    """For pixel (y, x), at each step, the top-n source windows outlined in their training images."""
    _c, h, w = attr.shape
    y, x = pixel
    p = y * w + x
    ncol = len(attr.steps)
    n = min(n, attr.ids.shape[-1])
    fig, axes = plt.subplots(n + 1, ncol, figsize=(1.05 * ncol, 1.2 * (n + 1) + 0.4), squeeze=False,
                             gridspec_kw={"wspace": 0.08, "hspace": 0.35})
    for col in range(ncol):
        k = int(attr.sizes[col]) or 1
        ax = axes[0, col]
        _show(ax, attr.denoised[col, b], f"t={attr.times[col]:.2f}" + (f" k={k}" if attr.sizes[col] else ""), 7)
        _outline(ax, y, x, k, "red")
        ax.plot([x], [y], marker="+", color="red", markersize=5)
        ids, ws = attr.ids[b, col, p], attr.weights[b, col, p]
        count = int(attr.count[b, col, p])
        reached = float(attr.covered[b, col, p]) >= attr.mass - 1e-6
        for r in range(n):
            ax = axes[r + 1, col]
            if ids[r] < 0:
                ax.axis("off")
                continue
            img, q = int(ids[r]) // (h * w), int(ids[r]) % (h * w)
            _show(ax, train_images[img], f"#{img} w={_fmt_w(ws[r])}", 6)
            _outline(ax, q // w, q % w, k, "lime" if r < count and reached else "orange")
    for r in range(n + 1):
        axes[r, 0].set_ylabel("D(x_t)" if r == 0 else f"rank {r}", fontsize=8)
    handles = [Patch(edgecolor="lime", facecolor="none", label=f"within {100 * attr.mass:.0f}% of the weight"),
               Patch(edgecolor="orange", facecolor="none", label="beyond it (or the kept ones do not reach it)"),
               Patch(edgecolor="red", facecolor="none", label="the pixel's window")]
    fig.legend(handles=handles, loc="upper center", ncol=3, fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0.0))
    fig.suptitle(f"Sample {int(attr.sample_index[b])}, pixel (y={y}, x={x}): top source windows per step "
                 "(weights normalised over all candidates)", fontsize=10)
    return _save(fig, path)


def _crop(img: np.ndarray, y: int, x: int, k: int, circular: bool = False) -> np.ndarray:
    """The k x k window of ``img`` (C, H, W) centred at (y, x); zeros (or wrap-around) outside."""
    r = k // 2
    mode = "wrap" if circular else "constant"
    padded = np.pad(img, ((0, 0), (r, r), (r, r)), mode=mode)
    return padded[:, y : y + k, x : x + k]


def query_figure(image: np.ndarray, res: QueryResult, train_images: np.ndarray, path, classes=None,
                 max_rows: int = 6) -> Path:
    """Each queried window beside its nearest training windows: the images with the windows outlined,
    and below them the windows themselves, enlarged."""
    rows = min(len(res.pixels), max_rows)
    n = res.image.shape[1]
    fig, axes = plt.subplots(2 * rows, n + 1, figsize=(1.5 * (n + 1), 3.1 * rows + 0.3), squeeze=False,
                             gridspec_kw={"wspace": 0.1, "hspace": 0.5})
    circular = res.machine == "els"
    for r in range(rows):
        top, low = axes[2 * r], axes[2 * r + 1]
        py, px = (int(v) for v in res.pixels[r])
        _show(top[0], image, f"query ({py},{px})\n{res.family[r]}", 8)
        _outline(top[0], py, px, res.k, "red")
        _frame(top[0], "red", 2)
        _show(low[0], _crop(image, py, px, res.k, circular), f"query {res.k}x{res.k} window", 7)
        _frame(low[0], "red", 2)
        for j in range(n):
            img = int(res.image[r, j])
            if img < 0:
                top[j + 1].axis("off")
                low[j + 1].axis("off")
                continue
            lab = int(res.label[r, j])
            name = classes[lab] if classes is not None and 0 <= lab < len(classes) else str(lab)
            y, x = int(res.y[r, j]), int(res.x[r, j])
            _show(top[j + 1], train_images[img], f"#{img} ({name})\nat ({y},{x})", 7)
            _outline(top[j + 1], y, x, res.k, "lime")
            _show(low[j + 1], _crop(train_images[img], y, x, res.k), f"rank {j + 1}: d={res.distance[r, j]:.2f}", 7)
            _frame(low[j + 1], "lime", 2)
    more = f" (first {rows} of {len(res.pixels)} pixels)" if len(res.pixels) > rows else ""
    fig.suptitle(f"Nearest {res.k}x{res.k} training windows ({res.machine} candidates, Euclidean distance){more}",
                 fontsize=10)
    return _save(fig, path)


def default_pixel(attr: Attribution, b: int) -> tuple[int, int]:
    """The pixel nearest the centre that has a specific source at the final step (else the centre)."""
    _, h, w = attr.shape
    _, dom_w = dominant_sources(attr, b, step=1)
    ys, xs = np.divmod(np.arange(h * w), w)
    dist = (ys - h // 2) ** 2 + (xs - w // 2) ** 2 + np.where(dom_w >= GENERIC_WEIGHT, 0, 10 * (h * h + w * w))
    p = int(np.argmin(dist))
    return p // w, p % w


def all_plots(attr: Attribution, train_images: np.ndarray, out_dir, pixel: tuple[int, int] | None = None,
              labels=None, classes=None, samples: list[int] | None = None) -> list[Path]:
    """Every attribution picture for each sample (or the given rows) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for b in samples if samples is not None else range(attr.ids.shape[0]):
        sid = int(attr.sample_index[b])
        py, px = pixel or default_pixel(attr, b)
        written.append(mosaic_map(attr, train_images, b, out_dir / f"sample{sid}_mosaic.png", labels, classes))
        written.append(time_strip(attr, b, out_dir / f"sample{sid}_steps.png"))
        written.append(pixel_sources(attr, train_images, b, (py, px), out_dir / f"sample{sid}_pixel{py}_{px}.png",
                                     labels=labels))
    return written
