"""One self-contained HTML page to explore an attribution file (issue 30).

The page opens from disk with no server and no network: the data travel inside it as one JSON
block whose large arrays are gzip-compressed, byte-shuffled little-endian binaries in base64,
decoded in the browser by ``DecompressionStream`` one sample at a time. Per sample and step it
holds, for every pixel, the stored contributors as the attribution file has them (training
image, window centre, weight, largest first; the weight to within 3e-8) and the denoiser output
``D`` quantised to 8 bits for display. Only the training images that appear among the stored
contributors are embedded (8-bit pixels, as the dataset stores them).

Layout of one sample's binary (all little-endian, ``S`` steps, ``P = H*W`` pixels, ``m`` slots):

============  ===========================  ======================================================
name          type, shape                  meaning
============  ===========================  ======================================================
denoised      uint8 (S, C, H, W)           ``D`` at each step, ``round((clip(D) + 1) * 127.5)``
inputs        uint8 (S, C, H, W)           ``x_t`` fed to the denoiser (only if ``has_inputs``)
image         int32 (S, P, m), shuffled    training image of each contributor, -1 = none
offset        uint16 (S, P, m), shuffled   ``(q - p) mod P``: window centre q relative to pixel p
weight        uint32 (S, P, m), shuffled   ``round(w * 2**24)``: the stored weight in fixed point
============  ===========================  ======================================================

"Shuffled" means the bytes of each element are stored plane by plane (all first bytes, then all
second bytes, ...), as HDF5's shuffle filter does; it lets gzip find the repeats. The offset
(rather than q) makes neighbouring pixels that copy neighbouring windows store equal numbers.
Weights are in [0, 1]; in fixed point with 24 fractional bits they are exact to 2**-25 (3e-8,
the issue asks 1e-6) and compress to about half the bytes of float32, whose low mantissa bytes
are noise (measured on real attributions: 1.4 against 2.7 bytes per weight after gzip).
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .attribute import GENERIC_WEIGHT, Attribution
from .errors import PatchdbError
from .schedule import alpha_sigma
from .store import atomic_write, check_writable

log = logging.getLogger(__name__)

PAGE_FORMAT = "patchdb-attribution-page"
PAGE_VERSION = 1
#: Default cap on the raw bytes of embedded training images; beyond it the images with the
#: smallest largest-weight are left out (the page says so where one of them is listed).
MAX_TRAIN_BYTES = 4 * 2**20
#: Fractional bits of the fixed-point weights (absolute error <= 2**-(WEIGHT_BITS + 1)).
WEIGHT_BITS = 24
#: Share of a pixel's weight the source list covers by default (the page lets a person change it).
DEFAULT_SHARE = 0.9


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


def shuffle_bytes(a: np.ndarray) -> bytes:
    """Little-endian bytes of ``a`` stored plane by plane (byte 0 of every element, then byte 1, ...)."""
    a = np.ascontiguousarray(a)
    le = a.astype(a.dtype.newbyteorder("<"), copy=False)
    return le.view(np.uint8).reshape(-1, a.dtype.itemsize).T.tobytes()


def unshuffle_bytes(raw: bytes, dtype: np.dtype, count: int) -> np.ndarray:
    """Inverse of :func:`shuffle_bytes` (used by tests; the page does the same in JavaScript)."""
    dt = np.dtype(dtype).newbyteorder("<")
    planes = np.frombuffer(raw, np.uint8, count * dt.itemsize).reshape(dt.itemsize, count)
    return planes.T.copy().view(dt).reshape(count)


def pack(parts: Sequence[bytes]) -> str:
    """gzip (fixed mtime, so equal inputs give equal pages) and base64 of the concatenated parts."""
    return base64.b64encode(gzip.compress(b"".join(parts), compresslevel=9, mtime=0)).decode("ascii")


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Images in [-1, 1] (values outside are clipped) as display bytes ``round((x + 1) * 127.5)``."""
    return np.round((np.clip(np.asarray(x, np.float64), -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def sample_blob(attr: Attribution, b: int, inputs: np.ndarray | None = None) -> str:
    """The packed binary of sample row ``b`` (layout in the module docstring)."""
    p = attr.ids.shape[2]
    ids = attr.ids[b].astype(np.int64)
    image = np.where(ids >= 0, ids // p, -1).astype(np.int32)
    pixel = np.arange(p).reshape(1, p, 1)
    offset = np.where(ids >= 0, (ids % p - pixel) % p, 0).astype(np.uint16)
    parts = [to_uint8(attr.denoised[:, b]).tobytes()]
    if inputs is not None:
        parts.append(to_uint8(inputs[:, b]).tobytes())
    parts += [shuffle_bytes(image), shuffle_bytes(offset), shuffle_bytes(fixed_weights(attr.weights[b]))]
    return pack(parts)


def fixed_weights(w: np.ndarray) -> np.ndarray:
    """Weights in [0, 1] as uint32 ``round(w * 2**WEIGHT_BITS)`` (the page divides back)."""
    w = np.asarray(w, np.float64)
    if w.size and (w.min() < 0 or w.max() > 1):
        raise PatchdbError("attribution weights must lie in [0, 1]; the attribution file is damaged")
    return np.round(w * 2.0**WEIGHT_BITS).astype(np.uint32)


def used_images(attr: Attribution) -> tuple[np.ndarray, np.ndarray]:
    """Training images among the stored contributors (sorted) and the largest weight each reaches."""
    img = attr.images_of(attr.ids).ravel()
    w = attr.weights.ravel()
    keep = img >= 0
    ids, inverse = np.unique(img[keep], return_inverse=True)
    best = np.zeros(ids.size, np.float64)
    np.maximum.at(best, inverse, w[keep].astype(np.float64))
    return ids, best


def choose_images(attr: Attribution, bytes_per_image: int, max_bytes: int) -> tuple[np.ndarray, int]:
    """Images to embed (sorted ids) within ``max_bytes``, preferring those with the larger top weight.

    Returns the ids and how many used images were left out.
    """
    ids, best = used_images(attr)
    room = max(1, max_bytes // max(bytes_per_image, 1))
    if ids.size <= room:
        return ids, 0
    keep = np.sort(ids[np.argsort(-best, kind="stable")[:room]])
    log.warning("%d training images appear among the contributors; embedding the %d with the largest "
                "weights (max_train_bytes=%d)", ids.size, keep.size, max_bytes)
    return keep, int(ids.size - keep.size)


# --------------------------------------------------------------------------------------------
# The data block
# --------------------------------------------------------------------------------------------


def page_data(
    attr: Attribution,
    train_images: np.ndarray,
    train_labels: np.ndarray | None = None,
    classes: Sequence[str] = (),
    inputs: np.ndarray | None = None,
    sample_labels: np.ndarray | None = None,
    title: str | None = None,
    max_train_bytes: int = MAX_TRAIN_BYTES,
) -> dict:
    """Everything the page shows, as one JSON-ready dict.

    Parameters
    ----------
    attr : the attribution (read with :func:`patchdb.attribute.read_attribution`).
    train_images : (N, C, H, W) training set, uint8 pixels or floats in [-1, 1]; the ids in
        ``attr`` index it.
    train_labels : (N,) class of each training image (shown beside each source).
    classes : class names, indexed by label.
    inputs : (S, B, C, H, W) optional ``x_t`` of each step (see :func:`rebuild_inputs`).
    sample_labels : (B,) class each sample was conditioned on (-1 = none).
    max_train_bytes : cap on the raw bytes of embedded training images.
    """
    b, s, _p, m = attr.ids.shape
    c, h, w = attr.shape
    train_images = np.asarray(train_images)
    if train_images.ndim != 4 or tuple(train_images.shape[1:]) != (c, h, w):
        raise PatchdbError(f"training images have shape {tuple(train_images.shape)} but the attribution is for "
                           f"{c}x{h}x{w} samples; pass the training set the samples were drawn from")
    top = int(attr.images_of(attr.ids).max(initial=-1))
    if top >= len(train_images):
        raise PatchdbError(f"the attribution names training image {top} but the training set has "
                           f"{len(train_images)} images; pass the training set the samples were drawn from")
    if inputs is not None and tuple(inputs.shape) != (s, b, c, h, w):
        raise PatchdbError(f"inputs have shape {tuple(inputs.shape)}, expected {(s, b, c, h, w)} (steps, samples, C, H, W)")
    pix = train_images if train_images.dtype == np.uint8 else to_uint8(train_images)
    embed, left_out = choose_images(attr, c * h * w, max_train_bytes)
    labels = None if train_labels is None else np.asarray(train_labels).astype(np.int64)
    ab = [alpha_sigma(float(t)) for t in attr.times]
    meta = attr.meta or {}
    data = {
        "format": PAGE_FORMAT, "version": PAGE_VERSION,
        "title": title or f"Attribution of {b} sample{'s' if b != 1 else ''}",
        "machine": attr.machine, "dataset": short_name(str(meta.get("dataset_name", ""))),
        "engine": str(meta.get("engine", "exact")), "mass": float(attr.mass),
        "C": c, "H": h, "W": w, "S": s, "B": b, "m": m,
        "steps": [int(v) for v in attr.steps], "times": [float(v) for v in attr.times],
        "sizes": [int(v) for v in attr.sizes],
        "alphabar": [a * a for a, _ in ab], "sigma": [sb for _, sb in ab],
        "generic": GENERIC_WEIGHT, "default_share": DEFAULT_SHARE, "weight_bits": WEIGHT_BITS,
        "classes": [str(v) for v in classes],
        "samples": [{
            "row": i, "index": int(attr.sample_index[i]),
            "label": None if sample_labels is None or int(sample_labels[i]) < 0 else int(sample_labels[i]),
            "final": base64.b64encode(to_uint8(attr.samples[i]).tobytes()).decode("ascii"),
            "blob": sample_blob(attr, i, inputs),
        } for i in range(b)],
        "has_inputs": inputs is not None,
        "train": {
            "count": len(train_images), "ids": [int(v) for v in embed], "left_out": left_out,
            "labels": None if labels is None else [int(labels[v]) for v in embed],
            "pixels": pack([pix[embed].tobytes()]),
        },
    }
    return data


def short_name(name: str) -> str:
    """A dataset name without the folders of its path (``zip:/a/b/c.zip`` -> ``c.zip``): pages get shared."""
    if "/" not in name and "\\" not in name:
        return name
    return Path(name.split(":", 1)[-1] if ":" in name.split("/", 1)[0] else name).name


def rebuild_inputs(attr: Attribution, noise: np.ndarray) -> np.ndarray:
    """(S, B, C, H, W) ``x_t`` of every step, from each sample's ``x_T`` and the stored ``D``.

    The DDIM recursion of docs/math.md "Sampler" (as :func:`patchdb.attribute._ddim_step`), in float32.
    ``noise`` is (B, C, H, W), the ``x_T`` of the sample rows in ``attr``.
    """
    steps = int(max(attr.steps))
    x = np.asarray(noise, np.float32)
    out = np.empty((len(attr.steps),) + x.shape, np.float32)
    for j, i in enumerate(int(v) for v in attr.steps):
        out[j] = x
        a, b = alpha_sigma(i / steps)
        d = attr.denoised[j].astype(np.float32)
        eps = (x - np.float32(a) * d) / np.float32(b)
        a2, b2 = alpha_sigma((i - 1) / steps)
        x = np.float32(a2) * d + np.float32(b2) * eps if i > 1 else d
    return out


# --------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------


def render_page(data: dict) -> str:
    """The HTML text of the page for a :func:`page_data` dict."""
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return (_TEMPLATE.replace("__TITLE__", html.escape(data["title"]))
            .replace("__CSS__", _CSS).replace("__JS__", _JS).replace("__DATA__", payload))


def write_page(
    path: str | os.PathLike,
    attr: Attribution,
    train_images: np.ndarray,
    train_labels: np.ndarray | None = None,
    classes: Sequence[str] = (),
    inputs: np.ndarray | None = None,
    sample_labels: np.ndarray | None = None,
    title: str | None = None,
    force: bool = False,
    max_train_bytes: int = MAX_TRAIN_BYTES,
) -> Path:
    """Write the page to ``path`` atomically; an existing file is refused unless ``force``."""
    path = check_page_path(path, force)
    text = render_page(page_data(attr, train_images, train_labels, classes, inputs, sample_labels, title,
                                 max_train_bytes))
    with atomic_write(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return path


def check_page_path(path: str | os.PathLike, force: bool = False) -> Path:
    """``path`` as a Path if a page may be written there (an existing file only with ``force``)."""
    path = Path(path)
    if path.is_dir():
        raise PatchdbError(f"{path} is a folder; pass a file name such as {path / 'page.html'}")
    if path.exists() and not force:
        raise PatchdbError(f"{path} already exists; pass --force to overwrite it or choose another --html")
    return check_writable(path)


def write_samples_page(path: str | os.PathLike, attr: Attribution, train, stored: dict, force: bool = False,
                       title: str | None = None) -> Path:
    """The page of an attribution of a sample file.

    ``train`` is the :class:`patchdb.data.Dataset` the samples were drawn from and ``stored`` the
    sample file as :func:`patchdb.store.read_samples` returns it; each step's ``x_t`` is rebuilt
    from the samples' seeds (:func:`rebuild_inputs`) so the page can show the noisy input too.
    """
    from .sampler import initial_noise

    rows = [int(r) for r in attr.sample_index]
    noise = initial_noise([int(v) for v in np.asarray(stored["seeds"])[rows]], attr.shape).numpy()
    labels = np.asarray(stored["labels"])[rows] if "labels" in stored else None
    name = Path(str(attr.meta.get("samples_file", "samples"))).name
    return write_page(path, attr, train.images.numpy(), train.labels.numpy(), train.classes,
                      inputs=rebuild_inputs(attr, noise), sample_labels=labels, force=force,
                      title=title or f"Where the samples of {name} came from")


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>__CSS__</style>
</head>
<body>
<header>
  <h1>__TITLE__</h1>
  <p id="summary" class="muted"></p>
</header>
<main>
  <nav id="left" aria-label="Samples and views">
    <h2>Samples</h2>
    <div id="grid" role="listbox" aria-label="Pick a sample"></div>
    <h2>Map</h2>
    <fieldset id="views">
      <legend class="sr">What the big image shows</legend>
      <label><input type="radio" name="view" value="denoised" checked> Estimate D at this step</label>
      <label id="view-input-label"><input type="radio" name="view" value="input"> Noisy input x<sub>t</sub></label>
      <label><input type="radio" name="view" value="mosaic"> Main source image (mosaic)</label>
      <label><input type="radio" name="view" value="copy"> Copy vs mosaic</label>
      <label><input type="radio" name="view" value="distinct"> Distinct sources</label>
    </fieldset>
    <div id="legend" aria-live="polite"></div>
  </nav>
  <section id="centre" aria-label="Sample">
    <div id="stepbox">
      <label for="step">Step</label>
      <span class="muted end">noise</span>
      <input id="step" type="range" min="0" max="0" value="0" step="1">
      <span class="muted end">clean</span>
      <output id="step-label" for="step"></output>
    </div>
    <div id="canvas-wrap">
      <canvas id="map" tabindex="0" aria-label="Sample pixels: arrow keys move the cursor"></canvas>
      <canvas id="overlay" aria-hidden="true"></canvas>
    </div>
    <p id="pixel-info" class="muted"></p>
    <p class="hint">Hover or click a pixel (click pins it); with the image focused, arrow keys move the
      cursor. Click a source image to light up every pixel it fed; Esc clears.</p>
  </section>
  <section id="right" aria-label="Sources of the pixel">
    <h2 id="sources-title">Sources</h2>
    <div id="controls">
      <label>Show until <input id="share" type="number" min="1" max="100" step="1" value="90"> % of the weight</label>
      <label>or at most <input id="maxn" type="number" min="1" step="1"> sources</label>
    </div>
    <ol id="sources"></ol>
    <p id="leftout"></p>
  </section>
</main>
<footer class="muted" id="footer"></footer>
<script id="page-data" type="application/json">__DATA__</script>
<script>__JS__</script>
</body>
</html>
"""

_CSS = """
:root { --fg:#1d1d1f; --muted:#5b5b66; --bg:#fafafa; --panel:#fff; --line:#d5d5dc; --accent:#0b62d6; }
* { box-sizing: border-box; }
body { margin:0; font: 15px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color:var(--fg); background:var(--bg); }
header { padding:10px 18px 4px; }
h1 { font-size:20px; margin:0 0 2px; }
h2 { font-size:15px; margin:12px 0 6px; }
.muted { color:var(--muted); }
.sr { position:absolute; left:-9999px; }
main { display:grid; grid-template-columns: 230px minmax(340px, 420px) minmax(380px, 1fr); gap:16px;
       padding:6px 18px 12px; align-items:start; }
nav, section { background:var(--panel); border:1px solid var(--line); border-radius:8px; padding:10px 12px; }
#grid { display:grid; grid-template-columns: repeat(4, 1fr); gap:5px; }
#grid button { padding:2px; border:2px solid transparent; background:#eee; border-radius:4px; cursor:pointer; }
#grid button[aria-selected="true"] { border-color:var(--accent); background:#dbe8fb; }
#grid canvas { width:100%; image-rendering:pixelated; display:block; }
fieldset { border:0; padding:0; margin:0; }
fieldset label { display:block; padding:3px 0; cursor:pointer; }
#legend { margin-top:8px; font-size:13px; }
#legend .bar { height:12px; border:1px solid var(--line); margin:4px 0 2px; }
#legend .ends { display:flex; justify-content:space-between; }
#legend ul { list-style:none; padding:0; margin:4px 0; }
#legend li { display:flex; align-items:center; gap:6px; margin:2px 0; }
#legend .sw { width:14px; height:14px; border:1px solid #0003; flex:none; }
#legend button { display:flex; align-items:center; gap:6px; background:none; border:1px solid transparent;
                 padding:1px 3px; cursor:pointer; font:inherit; color:inherit; border-radius:4px; width:100%; text-align:left; }
#legend button:hover, #legend button:focus { border-color:var(--accent); }
#legend canvas { width:24px; height:24px; image-rendering:pixelated; flex:none; }
#stepbox { display:flex; align-items:center; gap:10px; flex-wrap:wrap; margin-bottom:8px; }
#step { flex:1; min-width:140px; }
.end { font-size:13px; }
#step-label { font-variant-numeric: tabular-nums; width:100%; font-size:14px; }
#canvas-wrap { position:relative; width:100%; aspect-ratio:1/1; }
#canvas-wrap canvas { position:absolute; left:0; top:0; width:100%; height:100%; image-rendering:pixelated; }
#map { outline:none; cursor:crosshair; border-radius:2px; }
#map:focus-visible { box-shadow: 0 0 0 3px var(--accent); }
#overlay { pointer-events:none; }
.hint { font-size:13px; color:var(--muted); margin:6px 0 0; }
#pixel-info { margin:8px 0 0; font-variant-numeric: tabular-nums; }
#controls { display:flex; flex-wrap:wrap; gap:6px 14px; font-size:14px; margin-bottom:6px; }
#controls input { width:58px; font:inherit; }
#sources { list-style:none; padding:0; margin:0; }
#sources li { display:grid; grid-template-columns: 24px 68px 1fr; gap:10px; align-items:center;
              padding:3px 0; border-top:1px solid #eee; }
#sources li .rank { font-weight:600; text-align:right; color:var(--muted); }
#sources li button { padding:0; border:2px solid transparent; background:none; cursor:pointer; border-radius:3px; }
#sources li button:focus-visible, #sources li button:hover { border-color:var(--accent); }
#sources li button[aria-pressed="true"] { border-color:#e0218a; }
#sources li canvas { width:64px; height:64px; image-rendering:pixelated; display:block; }
#sources .what { font-size:14px; }
#sources .nums { font-variant-numeric: tabular-nums; }
.wbar { height:7px; background:#e6e6ea; border-radius:3px; margin-top:3px; position:relative; max-width:220px; }
.wbar span { position:absolute; left:0; top:0; bottom:0; border-radius:3px; }
.wbar .cum { background:#b8cdf0; } .wbar .own { background:var(--accent); }
#leftout { font-size:14px; margin:8px 0 0; padding-top:6px; border-top:1px solid var(--line); }
footer { padding:0 18px 12px; font-size:12px; }
@media (max-width: 1100px) { main { grid-template-columns: 220px 1fr; } #right { grid-column: 1 / -1; } }
"""

_JS = r"""
'use strict';
const DATA = JSON.parse(document.getElementById('page-data').textContent);
const H = DATA.H, W = DATA.W, C = DATA.C, S = DATA.S, M = DATA.m, P = H * W;
const PALETTE = ['#e6194b','#3cb44b','#4363d8','#f58231','#911eb4','#42d4f4','#f032e6','#bfef45',
                 '#9a6324','#469990','#dcbeff','#800000','#aaffc3','#808000','#ffd8b1','#000075'];
const state = { b: 0, step: S - 1, px: null, pinned: null, view: 'denoised', highlight: null,
                share: DATA.default_share, maxn: M };
const cache = new Map();
let train = null;

function b64bytes(s) {
  const bin = atob(s); const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}
async function inflate(s) {
  const stream = new Blob([b64bytes(s)]).stream().pipeThrough(new DecompressionStream('gzip'));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}
function unshuffle(bytes, offset, count, size) {
  const out = new Uint8Array(count * size);
  for (let k = 0; k < size; k++) {
    const base = offset + k * count;
    for (let i = 0; i < count; i++) out[i * size + k] = bytes[base + i];
  }
  return out.buffer;
}
async function loadTrain() {
  const pix = await inflate(DATA.train.pixels);
  const index = new Map(DATA.train.ids.map((id, j) => [id, j]));
  train = { pix, index, labels: DATA.train.labels };
}
async function loadSample(b) {
  if (cache.has(b)) return cache.get(b);
  const raw = await inflate(DATA.samples[b].blob);
  const img = S * C * P, n = S * P * M;
  let at = 0;
  const denoised = raw.subarray(at, at + img); at += img;
  let inputs = null;
  if (DATA.has_inputs) { inputs = raw.subarray(at, at + img); at += img; }
  const image = new Int32Array(unshuffle(raw, at, n, 4)); at += 4 * n;
  const offset = new Uint16Array(unshuffle(raw, at, n, 2)); at += 2 * n;
  const fixed = new Uint32Array(unshuffle(raw, at, n, 4)); at += 4 * n;
  const weight = new Float64Array(n); const unit = Math.pow(2, -DATA.weight_bits);
  for (let i = 0; i < n; i++) weight[i] = fixed[i] * unit;
  const s = { denoised, inputs, image, offset, weight, derived: new Map() };
  cache.set(b, s);
  return s;
}

// ---------- per-pixel quantities ----------
function entries(s, step, p) {
  const out = []; const base = (step * P + p) * M;
  for (let j = 0; j < M; j++) {
    const im = s.image[base + j];
    if (im < 0) continue;
    const q = (p + s.offset[base + j]) % P;
    out.push({ image: im, q, y: Math.floor(q / W), x: q % W, weight: s.weight[base + j], id: im * P + q });
  }
  return out;
}
function shownEntries(list) {
  const shown = []; let cum = 0;
  for (const e of list) {
    if (shown.length >= state.maxn || cum >= state.share - 1e-12) break;
    cum += e.weight; shown.push(Object.assign({ cum }, e));
  }
  return shown;
}
function derived(s, step) {
  const key = step + ':' + state.share + ':' + state.maxn;
  if (s.derived.has(key)) return s.derived.get(key);
  const dom = new Int32Array(P), domW = new Float64Array(P), distinct = new Uint8Array(P);
  const count = new Map();
  for (let p = 0; p < P; p++) {
    const list = entries(s, step, p); const per = new Map();
    for (const e of list) per.set(e.image, (per.get(e.image) || 0) + e.weight);
    let best = -1, bw = -1;
    for (const e of list) { const v = per.get(e.image); if (v > bw) { bw = v; best = e.image; } }
    dom[p] = best; domW[p] = bw;
    distinct[p] = new Set(shownEntries(list).map(e => e.image)).size;
    if (best >= 0 && bw >= DATA.generic) count.set(best, (count.get(best) || 0) + 1);
  }
  const ranked = [...count.entries()].sort((a, b) => b[1] - a[1] || a[0] - b[0]);
  const specific = ranked.reduce((t, r) => t + r[1], 0);
  const top = ranked.length ? ranked[0][0] : -1;
  const copy = new Float64Array(P);
  for (let p = 0; p < P; p++) for (const e of entries(s, step, p)) if (e.image === top) copy[p] += e.weight;
  const out = { dom, domW, distinct, ranked, specific, top, copy,
                share: specific ? ranked[0][1] / specific : 0 };
  s.derived.set(key, out);
  return out;
}

// ---------- drawing ----------
function rgbaOf(bytes, offset) {
  const px = new Uint8ClampedArray(P * 4);
  for (let p = 0; p < P; p++) {
    for (let c = 0; c < 3; c++) px[p * 4 + c] = bytes[offset + (C === 1 ? 0 : c) * P + p];
    px[p * 4 + 3] = 255;
  }
  return px;
}
function drawBytes(canvas, bytes, offset) {
  canvas.width = W; canvas.height = H;
  canvas.getContext('2d').putImageData(new ImageData(rgbaOf(bytes, offset), W, H), 0, 0);
}
function hex(c) { return [1, 3, 5].map(i => parseInt(c.slice(i, i + 2), 16)); }
const BLUES = [[247,251,255],[198,219,239],[107,174,214],[33,113,181],[8,48,107]];
const ORANGES = [[255,245,235],[253,208,162],[253,141,60],[217,72,1],[127,39,4]];
function ramp(v, stops) {  // 0..1 -> light to dark along a sequential colour ramp
  stops = stops || BLUES;
  const x = Math.min(Math.max(v, 0), 1) * (stops.length - 1); const i = Math.min(Math.floor(x), stops.length - 2);
  const f = x - i; return stops[i].map((a, k) => Math.round(a + f * (stops[i + 1][k] - a)));
}
function mosaicColour(d, rank) {
  return rank < PALETTE.length ? hex(PALETTE[rank]) : [150, 150, 150];
}
function greyOf(s, step, p) { return s.denoised[step * C * P + p] * 0.45 + 30; }
function drawMap() {
  const s = cache.get(state.b); if (!s) return;
  const canvas = document.getElementById('map');
  const step = state.step;
  if (state.highlight !== null) return drawHighlight(s, canvas);
  if (state.view === 'denoised') return drawBytes(canvas, s.denoised, step * C * P);
  if (state.view === 'input' && s.inputs) return drawBytes(canvas, s.inputs, step * C * P);
  const d = derived(s, step); const px = new Uint8ClampedArray(P * 4);
  const rank = new Map(d.ranked.map((r, i) => [r[0], i]));
  for (let p = 0; p < P; p++) {
    let col;
    if (state.view === 'mosaic') {
      col = d.dom[p] < 0 || d.domW[p] < DATA.generic ? [235, 235, 235] : mosaicColour(d, rank.get(d.dom[p]));
    } else if (state.view === 'copy') col = ramp(d.copy[p]);
    else col = ramp(M > 1 ? (d.distinct[p] - 1) / (M - 1) : 0, ORANGES);
    px.set([col[0], col[1], col[2], 255], p * 4);
  }
  canvas.width = W; canvas.height = H;
  canvas.getContext('2d').putImageData(new ImageData(px, W, H), 0, 0);
}
function drawHighlight(s, canvas) {
  state.fedCount = 0;
  const px = new Uint8ClampedArray(P * 4); const step = state.step;
  for (let p = 0; p < P; p++) {
    let w = 0, fed = false;
    for (const e of entries(s, step, p)) if (e.image === state.highlight) { w += e.weight; fed = true; }
    const g = greyOf(s, step, p);
    const a = fed ? Math.min(1, 0.65 + 0.35 * Math.sqrt(w)) : 0;
    if (fed) state.fedCount += 1;
    px.set([g * (1 - a) + 224 * a, g * (1 - a) + 33 * a, g * (1 - a) + 138 * a, 255], p * 4);
  }
  canvas.width = W; canvas.height = H;
  canvas.getContext('2d').putImageData(new ImageData(px, W, H), 0, 0);
}
function drawOverlay() {
  const o = document.getElementById('overlay'); const wrap = document.getElementById('canvas-wrap');
  const size = wrap.clientWidth; const dpr = window.devicePixelRatio || 1;
  o.width = Math.round(size * dpr); o.height = Math.round(size * dpr);
  const g = o.getContext('2d'); g.clearRect(0, 0, o.width, o.height);
  const p = state.px; if (p === null) return;
  const cell = o.width / W; const y = Math.floor(p / W), x = p % W;
  const k = DATA.sizes[state.step]; const r = k ? (k - 1) / 2 : 0;
  g.lineWidth = Math.max(1, dpr);
  if (k) {  // the query window of the pixel at this step
    g.setLineDash([4 * dpr, 3 * dpr]); g.strokeStyle = '#ffbf00';
    g.strokeRect((x - r) * cell, (y - r) * cell, k * cell, k * cell); g.setLineDash([]);
  }
  g.lineWidth = 2 * dpr; g.strokeStyle = '#000'; g.strokeRect(x * cell - dpr, y * cell - dpr, cell + 2 * dpr, cell + 2 * dpr);
  g.strokeStyle = state.pinned !== null ? '#ff2d2d' : '#fff'; g.strokeRect(x * cell + dpr, y * cell + dpr, cell - 2 * dpr, cell - 2 * dpr);
}
function drawTrain(canvas, image, q, k) {
  const j = train.index.get(image); const big = 80; canvas.width = big; canvas.height = big;
  const g = canvas.getContext('2d');
  if (j === undefined) {
    g.fillStyle = '#ddd'; g.fillRect(0, 0, big, big); g.fillStyle = '#555'; g.font = '11px sans-serif';
    g.fillText('not', 28, 36); g.fillText('embedded', 14, 50); return;
  }
  const small = document.createElement('canvas'); small.width = W; small.height = H;
  small.getContext('2d').putImageData(new ImageData(rgbaOf(train.pix, j * C * P), W, H), 0, 0);
  g.imageSmoothingEnabled = false; g.drawImage(small, 0, 0, big, big);
  if (q === null) return;
  const cell = big / W, y = Math.floor(q / W), x = q % W, r = k ? (k - 1) / 2 : (W - 1) / 2;
  const x0 = k ? x - r : 0, y0 = k ? y - r : 0, kk = k || W;
  if (k) {  // dim everything outside the window, so the window stands out on any image
    g.fillStyle = 'rgba(20, 30, 60, 0.55)';
    g.beginPath(); g.rect(0, 0, big, big); g.rect(x0 * cell, y0 * cell, kk * cell, kk * cell); g.fill('evenodd');
  }
  g.lineWidth = 3.5; g.strokeStyle = '#000'; g.strokeRect(x0 * cell, y0 * cell, kk * cell, kk * cell);
  g.lineWidth = 2; g.strokeStyle = '#ffd400'; g.strokeRect(x0 * cell, y0 * cell, kk * cell, kk * cell);
}

// ---------- text ----------
function fmt(v, d) { return Number(v).toFixed(d); }
function pct(v) {
  const x = 100 * v;
  if (x >= 99.95 && x < 100) return '>99.9 %';
  if (x >= 10) return x.toFixed(1) + ' %';
  if (x >= 0.1) return x.toFixed(2) + ' %';
  if (x >= 0.001) return x.toPrecision(2) + ' %';
  return x > 0 ? '<0.001 %' : '0 %';
}
function className(label) {
  const name = DATA.classes[label];
  return name === undefined || /^[0-9]+$/.test(name) ? 'class ' + label : name;
}
function nameOf(image) {
  const j = train && train.labels ? train.index.get(image) : undefined;
  return '#' + image + (j === undefined ? '' : ' · ' + className(train.labels[j]));
}
function stepText(i) {
  const k = DATA.sizes[i];
  return 'Step ' + DATA.steps[i] + ' of ' + S + ' · patch ' + (k ? k + '×' + k : 'whole image') +
    ' · t = ' + fmt(DATA.times[i], 3) + ' · ᾱ = ' + fmt(DATA.alphabar[i], 3) + ' · noise σ = ' + fmt(DATA.sigma[i], 3);
}
function renderStep() {
  const out = document.getElementById('step-label');
  out.textContent = stepText(state.step);
  out.dataset.step = DATA.steps[state.step]; out.dataset.row = state.step;
  document.getElementById('step').setAttribute('aria-valuetext', stepText(state.step));
}
function renderSummary() {
  const s = cache.get(state.b); const d = derived(s, state.step);
  const smp = DATA.samples[state.b];
  document.getElementById('summary').textContent =
    DATA.machine.toUpperCase() + ' machine (' + DATA.engine + '), ' + DATA.dataset + ' · ' + DATA.B + ' samples, ' + S +
    ' steps, up to ' + M + ' stored sources per pixel and step · showing sample ' + smp.index +
    (smp.label !== null && smp.label !== undefined ? ' (' + className(smp.label) + ')' : '');
  document.getElementById('footer').textContent = 'Embedded ' + DATA.train.ids.length + ' of ' + DATA.train.count +
    ' training images (those among the stored sources' + (DATA.train.left_out ? '; ' + DATA.train.left_out + ' left out for size' : '') +
    '). Weights are normalised over every candidate window of the pixel, so the stored top ' + M + ' may cover less than 100 %.';
}
function renderLegend() {
  const el = document.getElementById('legend'); el.innerHTML = '';
  const s = cache.get(state.b); if (!s) return;
  const d = derived(s, state.step);
  const add = (html) => { const div = document.createElement('div'); div.innerHTML = html; el.appendChild(div); return div; };
  if (state.highlight !== null) {
    add('<p>Pink: the ' + state.fedCount + ' pixel' + (state.fedCount === 1 ? '' : 's') + ' that <b>' + nameOf(state.highlight) +
        '</b> is a stored source of at this step (stronger = more weight); the rest is dimmed.</p>');
    const b = document.createElement('button'); b.textContent = 'Clear highlight (Esc)'; b.onclick = () => setHighlight(null);
    el.appendChild(b); return;
  }
  if (state.view === 'mosaic') {
    add('<p>Each pixel coloured by the training image with the most weight on it (its windows summed). ' +
        'Light grey: no image reaches ' + Math.round(100 * DATA.generic) + ' % of the weight (many near-identical windows share it, as on a blank background). ' +
        (d.ranked.length > PALETTE.length ? 'Mid grey: the ' + (d.ranked.length - PALETTE.length) + ' images after the ' + PALETTE.length + ' listed here.' : '') + '</p>');
    const ul = document.createElement('ul'); el.appendChild(ul);
    d.ranked.slice(0, PALETTE.length).forEach((r, i) => {
      const li = document.createElement('li'); const btn = document.createElement('button');
      btn.title = 'Highlight the pixels this image feeds';
      btn.innerHTML = '<span class="sw" style="background:' + PALETTE[i] + '"></span>';
      const cv = document.createElement('canvas'); drawTrain(cv, r[0], null, 0); btn.appendChild(cv);
      btn.appendChild(document.createTextNode(nameOf(r[0]) + ' · ' + r[1] + ' px'));
      btn.onclick = () => setHighlight(r[0]); li.appendChild(btn); ul.appendChild(li);
    });
  } else if (state.view === 'copy') {
    add('<p>Weight of the sample’s main source image <b>' + (d.top >= 0 ? nameOf(d.top) : 'none') +
        '</b> at each pixel. It is the main source of <b>' + pct(d.share) + '</b> of the ' + d.specific +
        ' pixels that have one: near 100 % = a copy of one image, low = a mosaic of many.</p>' +
        '<div class="bar" style="background:linear-gradient(90deg,' + [0, .25, .5, .75, 1].map(v => 'rgb(' + ramp(v) + ')').join(',') + ')"></div>' +
        '<div class="ends"><span>0</span><span>weight of ' + (d.top >= 0 ? '#' + d.top : '-') + '</span><span>1</span></div>');
  } else if (state.view === 'distinct') {
    add('<p>How many different training images the listed sources of each pixel come from (the list stops at ' +
        Math.round(100 * state.share) + ' % of the weight or ' + state.maxn + ' sources).</p>' +
        '<div class="bar" style="background:linear-gradient(90deg,' + [0, .25, .5, .75, 1].map(v => 'rgb(' + ramp(v, ORANGES) + ')').join(',') + ')"></div>' +
        '<div class="ends"><span>1 image</span><span>' + M + ' images</span></div>');
  } else {
    add('<p>' + (state.view === 'input' ? 'The noisy image x<sub>t</sub> the machine saw at this step.' :
        'The machine’s estimate D of the clean image at this step (the value the sources vote for).') + '</p>');
  }
}
function renderSources() {
  const list = document.getElementById('sources'); list.innerHTML = '';
  const title = document.getElementById('sources-title'); const lo = document.getElementById('leftout');
  const s = cache.get(state.b);
  if (state.px === null || !s) { title.textContent = 'Sources'; lo.textContent = 'Point at a pixel of the sample.'; return; }
  const p = state.px, y = Math.floor(p / W), x = p % W, step = state.step;
  const all = entries(s, step, p); const shown = shownEntries(all);
  const k = DATA.sizes[step];
  title.textContent = 'Sources of pixel (' + y + ', ' + x + ') at step ' + DATA.steps[step];
  list.dataset.pixel = p; list.dataset.y = y; list.dataset.x = x; list.dataset.step = DATA.steps[step]; list.dataset.sample = state.b;
  shown.forEach((e, i) => {
    const li = document.createElement('li');
    Object.assign(li.dataset, { image: e.image, y: e.y, x: e.x, id: e.id, weight: e.weight.toPrecision(9), cum: e.cum.toPrecision(9) });
    const rank = document.createElement('span'); rank.className = 'rank'; rank.textContent = (i + 1) + '.';
    const btn = document.createElement('button'); btn.setAttribute('aria-pressed', String(state.highlight === e.image));
    btn.title = 'Highlight every pixel of the sample that ' + nameOf(e.image) + ' feeds';
    btn.setAttribute('aria-label', 'training image ' + nameOf(e.image) + ', highlight the pixels it feeds');
    const cv = document.createElement('canvas'); drawTrain(cv, e.image, e.q, k); btn.appendChild(cv);
    btn.onclick = () => setHighlight(state.highlight === e.image ? null : e.image);
    const what = document.createElement('div'); what.className = 'what';
    what.innerHTML = '<div><b>' + nameOf(e.image) + '</b> window at (' + e.y + ', ' + e.x + ')</div>' +
      '<div class="nums">weight <b>' + pct(e.weight) + '</b> · cumulative ' + pct(e.cum) + '</div>' +
      '<div class="wbar"><span class="cum" style="width:' + (100 * e.cum) + '%"></span><span class="own" style="left:' +
      (100 * (e.cum - e.weight)) + '%;width:' + Math.max(0.5, 100 * e.weight) + '%"></span></div>';
    li.append(rank, btn, what); list.appendChild(li);
  });
  const shownW = shown.length ? shown[shown.length - 1].cum : 0;
  const storedW = all.reduce((t, e) => t + e.weight, 0);
  const why = shownW >= state.share - 1e-12 ? 'the list stops once it reaches the chosen ' + Math.round(100 * state.share) + ' %'
            : shown.length >= state.maxn && shown.length < all.length ? 'the list stops at ' + state.maxn + ' sources'
            : 'only the top ' + M + ' sources are stored';
  lo.innerHTML = (shown.length === 1 ? 'This source carries <b>' : 'These ' + shown.length + ' sources carry <b>') + pct(shownW) +
    '</b> of the weight (' + why + '). Left out: <b>' + pct(Math.max(0, 1 - shownW)) + '</b>' +
    (all.length > shown.length ? ' (' + pct(storedW - shownW) + ' in stored sources not listed, ' : ' (') +
    pct(Math.max(0, 1 - storedW)) + ' beyond the stored top ' + M + ').';
  lo.dataset.shown = shownW.toPrecision(9); lo.dataset.leftout = Math.max(0, 1 - shownW).toPrecision(9);
  const vals = []; for (let c = 0; c < C; c++) vals.push(fmt(s.denoised[(step * C + c) * P + p] / 127.5 - 1, 2));
  document.getElementById('pixel-info').textContent = 'Pixel (' + y + ', ' + x + ')' + (state.pinned !== null ? ' pinned' : '') +
    ': D = ' + (C > 1 ? '(' + vals.join(', ') + ')' : vals[0]) + ' at this step' +
    (k ? '; the dashed square is its ' + k + '×' + k + ' window' : '') + '.';
}
function renderAll() { renderStep(); renderSummary(); drawMap(); drawOverlay(); renderLegend(); renderSources(); }

// ---------- actions ----------
async function selectSample(b) {
  state.b = b; await loadSample(b);
  if (state.b !== b) return;  // another sample was picked while this one was decoding
  document.querySelectorAll('#grid button').forEach((el, i) => el.setAttribute('aria-selected', String(i === b)));
  renderAll();
  document.body.dataset.sample = b;
}
function setStep(i) { state.step = Math.min(Math.max(i, 0), S - 1); document.getElementById('step').value = state.step; renderAll(); }
function setPixel(p, pin) { state.px = p; if (pin) state.pinned = p; drawOverlay(); renderSources(); }
function setHighlight(image) { state.highlight = image; drawMap(); renderLegend(); renderSources(); }
function pixelAt(ev) {
  const r = document.getElementById('map').getBoundingClientRect();
  const x = Math.floor((ev.clientX - r.left) / r.width * W), y = Math.floor((ev.clientY - r.top) / r.height * H);
  return x >= 0 && x < W && y >= 0 && y < H ? y * W + x : null;
}
function buildGrid() {
  const grid = document.getElementById('grid');
  DATA.samples.forEach((smp, b) => {
    const btn = document.createElement('button'); btn.setAttribute('role', 'option');
    btn.setAttribute('aria-label', 'sample ' + smp.index); btn.title = 'sample ' + smp.index;
    const cv = document.createElement('canvas'); drawBytes(cv, b64bytes(smp.final), 0); btn.appendChild(cv);
    btn.onclick = () => selectSample(b); grid.appendChild(btn);
  });
}
function wire() {
  const slider = document.getElementById('step'); slider.max = S - 1; slider.value = S - 1;
  slider.addEventListener('input', () => setStep(Number(slider.value)));
  document.querySelectorAll('input[name=view]').forEach(r => r.addEventListener('change', () => {
    state.view = r.value; state.highlight = null; drawMap(); renderLegend(); renderSources(); }));
  if (!DATA.has_inputs) document.getElementById('view-input-label').style.display = 'none';
  const map = document.getElementById('map');
  map.addEventListener('mousemove', ev => { if (state.pinned === null) { const p = pixelAt(ev); if (p !== null && p !== state.px) setPixel(p, false); } });
  map.addEventListener('click', ev => { const p = pixelAt(ev); if (p === null) return;
    if (state.pinned === p) { state.pinned = null; setPixel(p, false); } else setPixel(p, true); });
  map.addEventListener('keydown', ev => {
    const moves = { ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0] };
    if (moves[ev.key]) {
      ev.preventDefault(); const p = state.px === null ? Math.floor(H / 2) * W + Math.floor(W / 2) : state.px;
      const y = Math.min(Math.max(Math.floor(p / W) + moves[ev.key][0], 0), H - 1);
      const x = Math.min(Math.max(p % W + moves[ev.key][1], 0), W - 1);
      setPixel(y * W + x, true);
    } else if (ev.key === 'PageUp' || ev.key === 'PageDown') { ev.preventDefault(); setStep(state.step + (ev.key === 'PageDown' ? 1 : -1)); }
  });
  map.addEventListener('focus', () => { if (state.px === null) setPixel(Math.floor(H / 2) * W + Math.floor(W / 2), true); });
  document.addEventListener('keydown', ev => { if (ev.key === 'Escape' && state.highlight !== null) setHighlight(null); });
  const share = document.getElementById('share'), maxn = document.getElementById('maxn');
  maxn.max = M; maxn.value = M;
  share.addEventListener('change', () => { const v = Math.min(Math.max(Number(share.value) || 90, 1), 100);
    share.value = v; state.share = v / 100; renderAll(); });
  maxn.addEventListener('change', () => { const v = Math.min(Math.max(Math.round(Number(maxn.value)) || M, 1), M);
    maxn.value = v; state.maxn = v; renderAll(); });
  window.addEventListener('resize', drawOverlay);
}
// A small API for tests and for people using the console.
window.patchdbPage = {
  data: DATA, state, selectSample, setStep, setPixel, setHighlight,
  sources: () => { const s = cache.get(state.b); return state.px === null ? [] : entries(s, state.step, state.px); },
  dominant: (step) => Array.from(derived(cache.get(state.b), step).dom),
};
(async function main() {
  const t0 = performance.now();
  wire(); buildGrid(); await loadTrain(); await selectSample(0);
  document.body.dataset.ready = '1';
  window.patchdbReadyMs = performance.now() - t0;
})().catch(err => { document.body.dataset.error = String(err); document.getElementById('summary').textContent = 'Error: ' + err; });
"""
