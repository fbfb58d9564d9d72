"""Window geometry: which candidate windows a query window may see (SPEC.md "The four machines").

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
    """ELS and bbELS fall back to LS when ``k >= min(H, W)`` (SPEC.md, as the paper's code does)."""
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
