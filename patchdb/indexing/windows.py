"""Windows cut from training images: gathered by id for re-ranking, streamed as vectors for building,
and the blank windows (all zero) that loading takes out of IVF lists and counts instead."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import PatchdbError
from ..patches import clipped_boxes
from . import faiss_ops as fx

#: Window elements gathered per block by PatchSource.window_terms: small enough that the block's
#: float64 copy stays in cache between the gather and the two products (measured, k = 9-17).
TERM_BLOCK_ELEMENTS = 1 << 20


class PatchSource:
    """Training images in [-1, 1], zero padded by ``pad``, from which windows are gathered by id.

    Parameters
    ----------
    images : (N, C, H, W) uint8.  pad : largest ``k // 2`` needed.  dtype : float dtype of windows.
    """

    def __init__(self, images: torch.Tensor, pad: int, dtype: torch.dtype = torch.float32):
        self.n, self.channels, self.height, self.width = images.shape
        self.pad = pad
        x = images.to(dtype).div_(127.5).sub_(1.0)  # same arithmetic as Dataset.to_float
        self.padded = F.pad(x, (pad, pad, pad, pad)).contiguous()
        self.hp, self.wp = self.height + 2 * pad, self.width + 2 * pad
        self._codes: torch.Tensor | None = None  # int16 codes for window_terms, made on first use
        self._buffers: dict[str, torch.Tensor] = {}  # window_terms' scratch, kept between calls

    def _base(self, image: torch.Tensor, pos: torch.Tensor, shift: int) -> torch.Tensor:
        y, x = pos // self.width, pos % self.width
        return image * (self.channels * self.hp * self.wp) + (y + shift) * self.wp + (x + shift)

    def windows(self, image: torch.Tensor, pos: torch.Tensor, k: int) -> torch.Tensor:
        """Zero-padded ``k x k`` windows centred at flat ``pos`` of images ``image``: (..., C*k*k).

        Features are ordered as :func:`patches.unfold_windows` orders them (channel, row, column).
        """
        shift = self.pad - k // 2
        y, x = pos // self.width + shift, pos % self.width + shift
        # A strided view of every k x k window (no copy): indexing it copies whole window rows, about
        # twice as fast as gathering each element by a flat offset.
        c, hp, wp = self.channels, self.hp, self.wp
        view = self.padded.as_strided((self.n, c, hp - k + 1, wp - k + 1, k, k), (c * hp * wp, hp * wp, wp, 1, wp, 1))
        return view[image, :, y, x].reshape(*torch.broadcast_shapes(image.shape, pos.shape), c * k * k)

    def window_terms(self, q: torch.Tensor, image: torch.Tensor, pos: torch.Tensor, k: int,
                     with_centres: bool = False) -> tuple[torch.Tensor, ...]:
        """``(q_r . phi_rj, |phi_rj|^2)`` (R, P) float64 for query rows ``q`` (R, C*k*k) and the windows
        at ``image``, ``pos`` (R, P): what the re-rank needs, without the (R, P, C*k*k) float windows.

        The windows are read from int16 codes ``2 w - 255`` of the uint8 pixels ``w`` (zero padding stays
        0; ``phi = code / 255`` exactly), a quarter of the bytes of the float64 images, so the gathers of
        a re-rank hit the cache instead of memory. Gathered and multiplied in row blocks of about
        :data:`TERM_BLOCK_ELEMENTS`. Both terms are exact up to float64 rounding of the dot products.

        The two per-block temporaries, the gathered codes and their float64 copy, live in buffers kept
        between blocks and calls: a fresh multi-MB tensor per block is fresh memory, and its page faults
        made the int16 -> float64 conversion the largest single cost of a re-rank (15 of 51 s in a k = 13
        profile; 14x slower than copying into an existing buffer, measured).

        ``with_centres``: also the windows' centre pixels (R, P, C) float64, read from the codes already
        gathered (one random read per candidate less than :meth:`centres`; the same values bit for bit).
        """
        r, p = image.shape
        c = self.channels
        d = c * k * k
        rows, row_off = self._code_rows(k)
        base = self._base(image, pos, self.pad - k // 2)  # (R, P) flat offset of each window's top-left pixel
        qd = q.double() / 255.0  # (R, d)
        dots = torch.empty(r, p, dtype=torch.float64)
        norms = torch.empty(r, p, dtype=torch.float64)
        if with_centres:
            centres = torch.empty(r, p, c, dtype=torch.float64)
            middle = torch.arange(c) * (k * k) + (k // 2) * (k + 1)  # feature index of each channel's centre
            pixel = self._pixel_values()
        step = max(1, TERM_BLOCK_ELEMENTS // max(1, p * d))
        gathered = self._scratch("codes", step * p * d, torch.int16)
        windows = self._scratch("windows", step * p * d, torch.float64)
        for s in range(0, r, step):
            n = min(step, r - s)
            offs = (base[s : s + n].unsqueeze(-1) + row_off).view(-1)
            g = torch.index_select(rows, 0, offs, out=gathered[: n * p * d].view(-1, k))
            w = windows[: n * p * d].view(n, p, d).copy_(g.view(n, p, d))  # codes, exact in float64
            # vecdot: 1.3-3x faster than bmm / einsum for these many short products (measured, d = 9-169);
            # the norms are sums of squared integer codes, exact in any order.
            torch.linalg.vecdot(w, qd[s : s + n].view(n, 1, d), out=dots[s : s + n])
            torch.linalg.vecdot(w, w, out=norms[s : s + n])
            if with_centres:
                centres[s : s + n] = pixel[g.view(n, p, d)[:, :, middle].long() + 255]
        if with_centres:
            return dots, norms.div_(255.0 * 255.0), centres
        return dots, norms.div_(255.0 * 255.0)

    def _code_rows(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The int16 codes as overlapping rows of ``k`` consecutive pixels (a view, no copy), and the row
        offsets (C*k,) of a window's rows from its top-left pixel: a window is ``C*k`` rows of this view."""
        codes = self._int16_codes()
        c, hp, wp = self.channels, self.hp, self.wp
        rows = codes.as_strided((codes.numel() - k + 1, k), (1, 1))
        return rows, (torch.arange(c).view(-1, 1) * (hp * wp) + torch.arange(k).view(1, -1) * wp).view(-1)

    def windows32(self, ids: torch.Tensor, cand_pos: torch.Tensor, k: int) -> torch.Tensor:
        """The windows of sub-index ids ``ids`` (n,) (image ``id // L``, position ``cand_pos[id % L]``) as
        float32 (n, C*k*k), gathered from the int16 codes (a quarter of the bytes of the float64 images;
        ``code / 255`` is the pixel value, rounded once to float32): the exact vectors a list-major search
        scans instead of decoded FAISS codes."""
        rows, row_off = self._code_rows(k)
        per_image = len(cand_pos)
        base = self._base(ids // per_image, cand_pos[ids % per_image], self.pad - k // 2)
        offs = (base.unsqueeze(-1) + row_off).view(-1)
        return torch.index_select(rows, 0, offs).view(len(ids), self.channels * k * k).float().div_(255.0)

    def _pixel_values(self) -> torch.Tensor:
        """Pixel value of each code ``2 w - 255`` (index ``code + 255``), as :meth:`centres` reads it from
        the images (``w / 127.5 - 1`` in their dtype); the padding's code 0 is not a pixel and maps to 0."""
        if "pixel" not in self._buffers:
            w = torch.arange(256, dtype=self.padded.dtype).div_(127.5).sub_(1.0)
            table = torch.zeros(511, dtype=torch.float64)
            table[torch.arange(256) * 2] = w.double()
            self._buffers["pixel"] = table
        return self._buffers["pixel"]

    def _scratch(self, name: str, numel: int, dtype: torch.dtype) -> torch.Tensor:
        """A scratch tensor of at least ``numel`` elements, kept between calls."""
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype:
            buf = self._buffers[name] = torch.empty(numel, dtype=dtype)
        return buf

    def _int16_codes(self) -> torch.Tensor:
        """Flat int16 ``2 w - 255`` of the padded images (padding 0), made on first use."""
        if self._codes is None:
            inner = self.padded[:, :, self.pad : self.pad + self.height, self.pad : self.pad + self.width]
            codes = torch.zeros(self.padded.shape, dtype=torch.int16)
            codes[:, :, self.pad : self.pad + self.height, self.pad : self.pad + self.width] = (inner.double() * 255.0).round_().to(torch.int16)
            self._codes = codes.view(-1)
        return self._codes

    def image_pixels(self, images) -> torch.Tensor:
        """The unpadded pixels (n, C, H, W) of ``images`` (a slice: a view; an index tensor: a copy)."""
        return self.padded[images, :, self.pad : self.pad + self.height, self.pad : self.pad + self.width]

    def centres(self, image: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Centre pixels (..., C)."""
        base = self._base(image, pos, self.pad)
        chan = torch.arange(self.channels) * (self.hp * self.wp)
        return self.padded.view(-1)[base.unsqueeze(-1) + chan]


def vector_chunks(images: torch.Tensor, k: int, cand_pos: torch.Tensor, chunk_images: int):
    """Float32 vectors of one sub-group, id order (image-major, then position): (n_chunk * L, C*k*k) arrays."""
    for start in range(0, images.shape[0], chunk_images):
        src = PatchSource(images[start : start + chunk_images], k // 2)
        n = src.n
        img = torch.arange(n).view(-1, 1).expand(n, len(cand_pos))
        yield src.windows(img, cand_pos.view(1, -1).expand(n, -1), k).reshape(n * len(cand_pos), -1).numpy()


def sample_vectors(images: torch.Tensor, k: int, cand_pos: torch.Tensor, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` vectors drawn uniformly over images, sub-groups and positions: (vectors, (g, id) pairs)."""
    g = torch.Generator().manual_seed(seed)
    groups, per_image = cand_pos.shape
    sub = torch.randint(groups, (count,), generator=g)
    img = torch.randint(images.shape[0], (count,), generator=g)
    j = torch.randint(per_image, (count,), generator=g)
    order = torch.argsort(img)  # touch images in order; gather only those used
    sub, img, j = sub[order], img[order], j[order]
    used, local = torch.unique(img, return_inverse=True)
    src = PatchSource(images[used], k // 2)
    vecs = src.windows(local, cand_pos[sub, j], k).numpy()
    return vecs, torch.stack([sub, img * per_image + j], 1).numpy()


@dataclass
class Blanks:
    """The blank windows of one sub-index (every in-image pixel 0, i.e. -1 after scaling: black background),
    kept out of its IVF lists when it is loaded and counted instead (all of them are one identical
    vector, so one logit and a multiplicity stand for them exactly).

    ``mask`` (N * L,) bool over ids; ``cumulative`` (N + 1,) int64 counts over images, so images
    ``[lo, hi)`` hold ``cumulative[hi] - cumulative[lo]`` of them; ``first`` the smallest blank id.
    """

    mask: torch.Tensor
    cumulative: torch.Tensor
    first: int

    def count(self, lo: int, hi: int) -> int:
        return int(self.cumulative[hi] - self.cumulative[lo])

    def ids(self, lo: int, hi: int, per_image: int, most: int) -> torch.Tensor:
        """Up to ``most`` blank ids of images ``[lo, hi)``, evenly spread over them (representatives)."""
        found = self.mask[lo * per_image : hi * per_image].nonzero().view(-1)
        if len(found) > most:
            found = found[torch.linspace(0, len(found) - 1, most).round().long()]
        return found + lo * per_image

    @property
    def nbytes(self) -> int:
        return self.mask.numel() + 8 * self.cumulative.numel()


def lit_integral(images: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Integral images of the non-zero pixel count (over channels) of uint8 ``images`` (N, C, H, W):
    (N, (H+1)(W+1)), int16 when the largest count fits, so any window's count is four reads."""
    n, c, h, w = images.shape
    dtype = torch.int16 if c * h * w < 2**15 else torch.int32
    out = torch.empty(n, (h + 1) * (w + 1), dtype=dtype)
    for start in range(0, n, chunk):
        lit = (images[start : start + chunk] != 0).sum(1, dtype=torch.int32)
        out[start : start + chunk] = F.pad(lit.cumsum(1).cumsum(2), (1, 0, 1, 0)).flatten(1).to(dtype)
    return out


def blank_mask(integral: torch.Tensor, height: int, width: int, k: int, cand_pos: torch.Tensor) -> torch.Tensor:
    """(N, L) bool: is the zero-padded ``k x k`` window at ``cand_pos`` (L,) all zero, read from
    :func:`lit_integral` (the window clipped to the image holds no lit pixel)."""
    y0, y1, x0, x1 = clipped_boxes(cand_pos, k // 2, height, width)

    def at(yy, xx):
        return integral[:, yy * (width + 1) + xx].int()

    return (at(y1, x1) - at(y0, x1) - at(y1, x0) + at(y0, x0)) == 0


def take_out_blanks(index, integral: torch.Tensor, height: int, width: int, k: int, cand_pos: torch.Tensor,
                    where: str = "index", found: tuple[Blanks | None] | None = None) -> Blanks | None:
    """Remove the blank windows (:func:`blank_mask`) from an IVF index over windows at ``cand_pos`` (L,);
    None for a Flat index (ids are positions, nothing is taken out) or when no window is blank.
    On black-background data blank windows are a large share of all windows (28% at k = 3 on
    Fashion-MNIST), all in one inverted list, which every query near black scans whole: taking them
    out halves the k = 3 search (see README). ``found``: ``(blanks,)`` as :func:`find_blanks` gave them
    at an earlier load of the same sub-index (they depend on the images only)."""
    if fx.as_ivf(index) is None:
        return None
    blanks = find_blanks(integral, height, width, k, cand_pos) if found is None else found[0]
    if blanks is None:
        return None
    removed = fx.remove_ids(index, blanks.mask.numpy())
    if removed != int(blanks.mask.sum()):
        raise PatchdbError(f"{where}: the index holds {removed} of its {int(blanks.mask.sum())} blank windows; "
                           "the file is inconsistent, rebuild it with patchdb build")
    return blanks


def find_blanks(integral: torch.Tensor, height: int, width: int, k: int, cand_pos: torch.Tensor) -> Blanks | None:
    """The :class:`Blanks` of the windows at ``cand_pos`` (L,), None when no window is blank: what
    :func:`take_out_blanks` takes out of an IVF index, found without one."""
    mask = blank_mask(integral, height, width, k, cand_pos)  # (N, L)
    if not bool(mask.any()):
        return None
    flat = mask.reshape(-1)
    cumulative = torch.cat([torch.zeros(1, dtype=torch.long), mask.sum(1).cumsum(0)])
    return Blanks(flat, cumulative, int(flat.nonzero()[0]))
