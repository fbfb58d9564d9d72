"""Window geometry: which candidate windows a query window may see (docs/math.md "The four machines").

A machine at patch size ``k`` splits the query pixels into *groups*; all queries of a group share
the same candidate positions. Queries are ``k x k`` windows of the (padded) noisy image centred
at a pixel ``p``; candidates are windows of the zero-padded training images centred at ``q``.
Positions are flat indices ``y * W + x``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .schedule import check_patch_size
from .spec import Machine


@dataclass(frozen=True)
class Group:
    """Queries at ``query_pos[g]`` see candidates at ``cand_pos[g]`` (both ``(G, m)`` long tensors)."""

    family: str  # "interior", "edge", "corner" (bbELS), "els", "ls"
    query_pos: torch.Tensor
    cand_pos: torch.Tensor


@dataclass(frozen=True)
class Geometry:
    """How machine ``machine`` at patch size ``k`` pairs query and candidate windows on an H x W image."""

    machine: Machine
    k: int
    height: int
    width: int
    query_padding: str  # "circular" (ELS) or "zeros"
    groups: tuple[Group, ...]

    @property
    def r(self) -> int:
        return self.k // 2

    def candidates_per_image(self) -> int:
        """Number of candidate windows per training image, summed over groups (for cost estimates)."""
        return sum(g.cand_pos.shape[0] * g.cand_pos.shape[1] for g in self.groups)


def effective_machine(machine: Machine, k: int, height: int, width: int) -> Machine:
    """ELS and bbELS fall back to LS when ``k >= min(H, W)`` (docs/math.md, as the paper's code does)."""
    if machine in (Machine.ELS, Machine.BBELS) and k >= min(height, width):
        return Machine.LS
    return machine


def geometry(machine: Machine, k: int, height: int, width: int) -> Geometry:
    """Query/candidate pairing of a local machine; see the module docstring."""
    check_patch_size(k)
    machine = Machine.parse(machine)
    if machine is Machine.IS:
        raise ValueError("the IS machine compares whole images and has no window geometry")
    eff = effective_machine(machine, k, height, width)
    r = k // 2
    if eff is Machine.LS:
        every = torch.arange(height * width).view(-1, 1)
        return Geometry(machine, k, height, width, "zeros", (Group("ls", every, every),))
    inside = _flat(torch.arange(r, height - r), torch.arange(r, width - r), width).view(1, -1)
    if eff is Machine.ELS:
        every = torch.arange(height * width).view(1, -1)
        return Geometry(machine, k, height, width, "circular", (Group("els", every, inside),))
    return Geometry(machine, k, height, width, "zeros", _bbels_groups(k, height, width, inside))


def _bbels_groups(k: int, height: int, width: int, inside: torch.Tensor) -> tuple[Group, ...]:
    r = k // 2
    groups = [Group("interior", inside, inside)]
    if r == 0:
        return tuple(groups)
    mid_x, mid_y = torch.arange(r, width - r), torch.arange(r, height - r)
    edge_rows = [*range(r), *range(height - r, height)]
    edge_cols = [*range(r), *range(width - r, width)]
    # An edge pixel sees the same row (top/bottom) or column (left/right), interior along the edge.
    rows = torch.stack([_flat(torch.tensor([y]), mid_x, width) for y in edge_rows])
    cols = torch.stack([_flat(mid_y, torch.tensor([x]), width) for x in edge_cols])
    groups += [Group("edge", rows, rows), Group("edge", cols, cols)]
    # A corner pixel sees only its own position, as in LS.
    corners = _flat(torch.tensor(edge_rows), torch.tensor(edge_cols), width).view(-1, 1)
    groups.append(Group("corner", corners, corners))
    return tuple(groups)


def _flat(ys: torch.Tensor, xs: torch.Tensor, width: int) -> torch.Tensor:
    return (ys.view(-1, 1) * width + xs.view(1, -1)).reshape(-1)


def windows_at(images: torch.Tensor, k: int, positions: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    """The ``k x k`` windows of ``images`` (N, C, H, W) centred at flat ``positions`` (P,): (N, P, C*k*k).

    Only the asked-for windows are gathered (cheaper than unfolding all H*W of them); features are
    ordered as in :func:`unfold_windows`. Outside the image: zeros, or wrap-around for "circular".
    """
    n, c, _, w = images.shape
    r = k // 2
    if r:
        mode = "circular" if padding == "circular" else "constant"
        images = F.pad(images, (r, r, r, r), mode=mode)
    wp = w + 2 * r
    offsets = window_offsets(k, wp)
    top_left = (positions // w) * wp + positions % w
    index = (top_left.view(-1, 1) + offsets.view(1, -1)).reshape(-1).to(images.device)
    flat = images.reshape(n, c, -1)[:, :, index].view(n, c, positions.numel(), k * k)
    return flat.permute(0, 2, 1, 3).reshape(n, positions.numel(), c * k * k)


def window_offsets(k: int, padded_width: int) -> torch.Tensor:
    """Flat offsets (k*k,) of a ``k x k`` window's pixels from its top-left pixel, row-major, in an
    image ``padded_width`` pixels wide (the image padded by ``k // 2``)."""
    return (torch.arange(k).view(-1, 1) * padded_width + torch.arange(k).view(1, -1)).reshape(-1)


def unfold_windows(images: torch.Tensor, k: int, padding: str = "zeros") -> torch.Tensor:
    """All ``k x k`` windows of ``images`` (N, C, H, W), padded by ``k // 2``: (N, C*k*k, H*W).

    Window features are ordered channel-major, then row, then column (``F.unfold``'s order).
    """
    r = k // 2
    if r:
        mode = "circular" if padding == "circular" else "constant"
        images = F.pad(images, (r, r, r, r), mode=mode)
    return F.unfold(images, kernel_size=k)


# --------------------------------------------------------------------------------------------
# Box sums at positions (windows clipped to the image = zero padding), from integral images
# --------------------------------------------------------------------------------------------


def clipped_boxes(pos: torch.Tensor, r: int, h: int, w: int) -> tuple[torch.Tensor, ...]:
    """Row and column bounds ``[y0, y1) x [x0, x1)`` of the ``(2r+1)^2`` windows centred at flat ``pos``
    clipped to an ``h x w`` image: what a zero-padded window covers of the image."""
    y, x = pos // w, pos % w
    return (y - r).clamp(min=0), (y + r + 1).clamp(max=h), (x - r).clamp(min=0), (x + r + 1).clamp(max=w)


def box_regions(pos: torch.Tensor, r: int, h: int, w: int) -> list[tuple[torch.Tensor, tuple[slice, slice], tuple]]:
    """Split flat positions ``pos`` (P,) by image quadrant into regions covering their ``(2r+1)^2`` boxes
    clipped to the image: ``(indices into pos, (row slice, col slice), box bounds relative to the region)``.
    One region (the whole image) when the quadrants' regions would cover more than the image."""
    y0, y1, x0, x1 = clipped_boxes(pos, r, h, w)
    y, x = pos // w, pos % w
    quadrant = (2 * y >= h).long() * 2 + (2 * x >= w).long()
    parts = [(quadrant == q).nonzero().view(-1) for q in torch.unique(quadrant).tolist()]
    bounds = [(int(y0[i].min()), int(y1[i].max()), int(x0[i].min()), int(x1[i].max())) for i in parts]
    if sum((b1 - b0) * (c1 - c0) for b0, b1, c0, c1 in bounds) > h * w:
        parts, bounds = [torch.arange(len(pos))], [(0, h, 0, w)]
    out = []
    for i, (ry0, ry1, rx0, rx1) in zip(parts, bounds):
        box = (y0[i] - ry0, y1[i] - ry0, x0[i] - rx0, x1[i] - rx0, rx1 - rx0)
        out.append((i, (slice(ry0, ry1), slice(rx0, rx1)), box))
    return out


def box_sums(values_in, regions, npos: int) -> torch.Tensor:
    """Box sums at every position of :func:`box_regions`: ``values_in(row slice, col slice)`` gives the
    (..., h_r, w_r) values of one region; four reads of its integral image per box. Returns (..., P)."""
    out = None
    for idx, (rows, cols), (y0, y1, x0, x1, wr) in regions:
        integral = values_in(rows, cols).cumsum(-2).cumsum_(-1).flatten(-2)  # (..., h_r * w_r)
        if out is None:
            out = integral.new_zeros(*integral.shape[:-1], npos)

        # Boxes of a corner block start at the image's edges: most of the four reads are zero, skipped.
        total = _integral_at(integral, wr, y1, x1)
        for sign, (yy, xx) in ((-1, (y0, x1)), (-1, (y1, x0)), (1, (y0, x0))):
            term = _integral_at(integral, wr, yy, xx)
            if term is not None:
                total = total.add_(term, alpha=sign)
        out[..., idx] = total
    return out


def _integral_at(integral: torch.Tensor, wr: int, yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor | None:
    """Sums over ``[0, yy) x [0, xx)`` from a flat integral image (..., h_r * w_r); zero where either
    bound is 0, None when that holds for every box."""
    inside = (yy > 0) & (xx > 0)
    if not bool(inside.any()):
        return None
    at = (yy - 1).clamp(min=0) * wr + (xx - 1).clamp(min=0)
    # index_select on a 2-D view: the same values, 3-6x faster than integral[..., at] (measured).
    got = torch.index_select(integral.reshape(-1, integral.shape[-1]), 1, at).view(*integral.shape[:-1], -1)
    return got if bool(inside.all()) else got.mul_(inside.to(integral.dtype))


#: A region whose boxes are at most this many positions gets its dot products as one dense product of
#: box-masked queries with the images' region pixels (:func:`box_dots`) instead of integral images of the
#: elementwise product: the product does ``positions`` times more multiply-adds, at matrix-product speed,
#: while the integral images stream a (B, N, region) array through memory three times. Measured
#: (benchmarks/corners.py, one thread, float64, B = 64, N = 2,048, beside other jobs): 3.4-7.1x faster for
#: the corner families of k = 5-13, 2.2x at k = 17 (64 positions per corner region), about even at k = 3
#: (one position; 1.05-2.3x); the LS fallback (one region of every position) keeps integral images.
BOX_PRODUCT_MAX_POSITIONS = 64


def box_queries(x: torch.Tensor, regions) -> list:
    """What :func:`box_dots` needs of the queries ``x`` (B, C, H, W), made once for many image blocks: per
    region, the queries masked to each box, (B * p, C * h_r * w_r), or None (integral images there)."""
    out = []
    for idx, (rows, cols), (y0, y1, x0, x1, _) in regions:
        if len(idx) > BOX_PRODUCT_MAX_POSITIONS:
            out.append(None)
            continue
        xr = x[:, :, rows, cols]  # (B, C, hr, wr)
        hr, wr = xr.shape[-2:]
        ys, xs = torch.arange(hr).view(1, -1), torch.arange(wr).view(1, -1)
        in_y = (ys >= y0.view(-1, 1)) & (ys < y1.view(-1, 1))
        in_x = (xs >= x0.view(-1, 1)) & (xs < x1.view(-1, 1))
        mask = (in_y.unsqueeze(2) & in_x.unsqueeze(1)).to(x.dtype)  # (p, hr, wr)
        out.append((xr.unsqueeze(1) * mask.unsqueeze(0).unsqueeze(2)).reshape(-1, xr[0].numel()))
    return out


def box_dots(x: torch.Tensor, phi: torch.Tensor, regions, npos: int, queries: list | None = None) -> torch.Tensor:
    """``<x_b, phi_n>`` over each position's clipped box (:func:`box_regions`): (B, N, P) for ``x``
    (B, C, H, W) and ``phi`` (N, C, H, W) of one dtype; ``queries``: :func:`box_queries` of ``x``. A region
    of at most :data:`BOX_PRODUCT_MAX_POSITIONS` boxes is one dense product, a larger one integral images
    of the elementwise product (:func:`box_sums`)."""
    queries = box_queries(x, regions) if queries is None else queries
    out = x.new_empty(x.shape[0], phi.shape[0], npos)
    for (idx, (rows, cols), box), masked in zip(regions, queries):
        if masked is None:
            out[:, :, idx] = box_sums(lambda rs, cs: torch.einsum("bchw,nchw->bnhw", x[:, :, rs, cs], phi[:, :, rs, cs]),
                                      [(torch.arange(len(idx)), (rows, cols), box)], len(idx))
            continue
        dots = masked @ phi[:, :, rows, cols].reshape(phi.shape[0], -1).T  # (B p, N)
        out[:, :, idx] = dots.view(x.shape[0], len(idx), -1).transpose(1, 2)
    return out
