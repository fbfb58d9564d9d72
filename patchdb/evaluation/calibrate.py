"""Scale calibration of a machine against a trained network (docs/math.md "Calibration and comparison").

Run the network's DDIM sampler from each seed; at every step ``i`` (time ``t = i/S``) compare, at the
``x`` the sampler holds, the network's score ``-eps_net / b_t`` with the machine's score
``-(x - a_t D_k) / b_t^2`` for every candidate size ``k`` by cosine similarity over all pixels and
channels. A seed's best size at step ``i`` maximises the cosine; the schedule is the per-step median
over seeds.

A second criterion, ``rollout`` (a documented extension of docs/math.md), asks what the choice does to the
*final image*: at step ``i`` take one DDIM step with the machine's ``D_k`` instead of the network's, let
the network sample the remaining steps, and score size ``k`` by the Pearson ``r`` of that final image
with the network's own. It needs the same machine evaluations as the cosine (the expensive part) plus
``K`` batched network rollouts per step (3-17% more wall time measured on the CPU), so a rollout run keeps both tables
and a cosine run only its own. With an even number of seeds both middle values are medians: the one
whose criterion averaged over the seeds is higher is taken (:func:`median_size`), so the choice is
always a candidate and does not lean towards the smaller size.

The machine comes from a *factory* ``make(schedule) -> denoiser``, so the exact engine and the
approximate (index) engine plug in the same way; only ``D(x, t, labels)`` is ever called.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import PatchdbError
from ..sampler import Denoiser, ddim_sample, ddim_step
from ..schedule import ScaleSchedule, alpha_sigma, check_patch_size
from ..store import atomic_write
from .batches import seed_batches
from .metrics import pearson

log = logging.getLogger(__name__)

MachineFactory = Callable[[ScaleSchedule], Denoiser]

CRITERIA = {
    "cosine": "cosine(network score, machine score)",
    "rollout": "Pearson r of the final image, machine at this step only",
}


def check_criterion(criterion: str) -> str:
    if criterion not in CRITERIA:
        raise PatchdbError(f"unknown calibration criterion '{criterion}'; use one of {', '.join(CRITERIA)}")
    return criterion


def criterion_table(cosine: torch.Tensor, rollout: torch.Tensor | None, criterion: str) -> torch.Tensor:
    """The (S, K, M) table that ``criterion`` chooses by (higher is better); one line if it was not computed."""
    if check_criterion(criterion) == "cosine":
        return cosine
    if rollout is None:
        raise PatchdbError("criterion 'rollout' needs a rollout table, which this calibration (or one of the merged "
                           "parts) lacks; calibrate with --criterion rollout")
    return rollout


@dataclass
class Calibration:
    sizes: tuple[int, ...]  # candidate patch sizes
    seeds: list[int]
    cosine: torch.Tensor  # (S, K, M): cosine of step i (row i-1), size k, seed m
    schedule: ScaleSchedule  # chosen sizes, scales[0] (step 1, lowest noise) first
    settings: dict = field(default_factory=dict)
    rollout: torch.Tensor | None = None  # (S, K, M): final-image r with size k at step i only (None: not computed)
    criterion: str = "cosine"  # which table chose the schedule
    exact_check: dict | None = None  # run through an index: the exact engine on the first seeds (evaluation.exactcheck)

    @property
    def steps(self) -> int:
        return self.cosine.shape[0]

    @property
    def table(self) -> torch.Tensor:
        """The (S, K, M) table of the criterion (higher is better)."""
        return criterion_table(self.cosine, self.rollout, self.criterion)

    def best_per_seed(self) -> torch.Tensor:
        """(S, M) the best size of each step and seed, by the criterion."""
        return torch.as_tensor(self.sizes)[self.table.argmax(dim=1)]

    def choose(self, criterion: str) -> Calibration:
        """The same tables with the schedule the other criterion picks."""
        chosen = median_size(criterion_table(self.cosine, self.rollout, criterion), self.sizes)
        return Calibration(self.sizes, list(self.seeds), self.cosine, ScaleSchedule(tuple(int(k) for k in chosen),
                           name=self.schedule.name), dict(self.settings), self.rollout, criterion)

    def to_dict(self) -> dict:
        return {
            "name": self.settings.get("name", "calibrated"),
            "sizes": list(self.schedule.sizes),
            "candidates": list(self.sizes),
            "seeds": list(self.seeds),
            "mean_cosine": [[round(float(v), 6) for v in row] for row in self.cosine.mean(dim=2)],
            "best_per_seed": self.best_per_seed().tolist(),
            # full precision, so that calibrations run apart (other seeds, other processes) merge exactly
            "cosine": self.cosine.tolist(),
            "criterion": self.criterion,
            **({} if self.rollout is None else {"mean_rollout_r": [[round(float(v), 6) for v in row] for row in self.rollout.mean(dim=2)],
                                                "rollout": self.rollout.tolist()}),
            "settings": self.settings,
            **({} if self.exact_check is None else {"exact_check": self.exact_check}),
            "note": "sizes[i-1] is the patch size of sampler step i (time i/S), lowest noise first (docs/math.md)",
        }


def check_sizes(sizes, height: int, width: int) -> tuple[int, ...]:
    """Candidate sizes: odd, positive and no larger than the image."""
    sizes = tuple(sorted({check_patch_size(int(k)) for k in sizes}))
    if not sizes:
        raise PatchdbError("give at least one candidate patch size, e.g. --sizes 3,5,7,9")
    too_big = [k for k in sizes if k > min(height, width)]
    if too_big:
        raise PatchdbError(f"candidate sizes {too_big} are larger than the {height}x{width} image; use sizes up to {min(height, width)}")
    return sizes


def cosine(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Per-image cosine similarity of (B, ...) tensors, computed in float64."""
    u, v = u.flatten(1).double(), v.flatten(1).double()
    return (u * v).sum(1) / (u.norm(dim=1) * v.norm(dim=1)).clamp_min(1e-300)


def median_size(cosine_table: torch.Tensor, sizes) -> torch.Tensor:
    """Per-step median over seeds of the best size, from an (S, K, M) cosine table: (S,) sizes.

    For an even M the two middle values are both medians; the one whose cosine averaged over the
    seeds is higher wins (the lower one on a tie).
    """
    sizes = torch.as_tensor(sizes)
    best = cosine_table.argmax(dim=1).sort(dim=-1).values  # (S, M) candidate positions, ascending
    m = best.shape[-1]
    low, high = best[:, (m - 1) // 2], best[:, m // 2]
    mean = cosine_table.mean(dim=2)  # (S, K)
    pick_high = mean.gather(1, high.view(-1, 1))[:, 0] > mean.gather(1, low.view(-1, 1))[:, 0]
    return sizes[torch.where(pick_high, high, low)]


def calibrate(
    net: Denoiser,
    make_machine: MachineFactory,
    shape: tuple[int, int, int],
    seeds: list[int],
    sizes: tuple[int, ...],
    steps: int = 20,
    labels: torch.Tensor | None = None,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    criterion: str = "cosine",
) -> Calibration:
    """Calibrate a scale schedule for ``make_machine`` against the network denoiser ``net``.

    Parameters
    ----------
    net : denoiser ``D(x, t, labels)`` of the trained network (e.g. :class:`EpsDenoiser`).
    make_machine : factory ``schedule -> denoiser``; called once per candidate size with ``constant:k``.
    shape : (C, H, W) of the images. seeds : one noise seed per sampled image (M of them).
    sizes : candidate odd patch sizes (K). labels : (M,) class labels when conditional.
    criterion : ``cosine`` (docs/math.md) or ``rollout`` (final-image r; computes the cosine table too).

    Returns
    -------
    :class:`Calibration` with the (S, K, M) cosine table (and rollout table) and the chosen schedule.
    """
    if not seeds:
        raise PatchdbError("calibration needs at least one seed")
    check_criterion(criterion)
    sizes = check_sizes(sizes, shape[1], shape[2])
    machines = [make_machine(ScaleSchedule((k,) * steps, name=f"constant:{k}")) for k in sizes]
    table = torch.zeros(steps, len(sizes), len(seeds), dtype=torch.float64)
    rollout = torch.zeros_like(table) if criterion == "rollout" else None
    bar = tqdm(total=len(seeds) * steps * (1 + len(sizes)), desc="calibrating", unit="step", disable=not progress)
    try:
        for cols, lab, noise in seed_batches(seeds, labels, batch_size, shape, dtype, device):
            n = len(noise)
            # The network's own trajectory first: the x_t every machine is asked about (a machine's answer
            # does not feed back into it).
            states: list[tuple | None] = [None] * steps  # step i-1 -> (x_t, t, ref)

            def probe(x: torch.Tensor, t: float, lab_: torch.Tensor | None = None, n=n, states=states) -> torch.Tensor:
                a, _ = alpha_sigma(t)
                d_net = net(x, t, lab_)
                states[round(t * steps) - 1] = (x.clone(), t, x - a * d_net)  # ref: proportional to -score
                bar.update(n)
                return d_net

            own = ddim_sample(probe, noise, steps, lab).samples.cpu()
            # Then one candidate size at a time over all steps, in the sampler's order (t = 1 first): each
            # machine sees the same calls as when the sizes took turns within a step, and a machine through
            # an index keeps one size's sub-indexes loaded instead of cycling all of them at every step.
            d_k = [[None] * len(machines) for _ in range(steps)] if rollout is not None else None
            for j, machine in enumerate(machines):
                for i in range(steps, 0, -1):
                    x, t, ref = states[i - 1]
                    a, _ = alpha_sigma(t)
                    d = machine(x, t, lab)
                    table[i - 1, j, cols] = cosine(ref, x - a * d).cpu()
                    if d_k is not None:
                        d_k[i - 1][j] = d
                    bar.update(n)
            if rollout is not None:
                for i in range(steps, 0, -1):
                    # the machine at this step only, then the network to the end: all K sizes in one batch
                    x = states[i - 1][0]
                    x_next = ddim_step(x.repeat(len(machines), 1, 1, 1), torch.cat(d_k[i - 1]), i, steps)
                    lab_k = None if lab is None else lab.repeat(len(machines))
                    final = ddim_sample(net, x_next, steps, lab_k, first_step=i - 1).samples
                    final = final.view(len(machines), n, *final.shape[1:]).cpu()
                    for j in range(len(sizes)):
                        rollout[i - 1, j, cols] = pearson(final[j], own)
    finally:
        bar.close()
    chosen = median_size(criterion_table(table, rollout, criterion), sizes)
    return Calibration(sizes, list(seeds), table, ScaleSchedule(tuple(int(k) for k in chosen), name="calibrated"),
                       rollout=rollout, criterion=criterion)


def read_calibration(data: dict, source: str = "calibration") -> Calibration:
    """A :class:`Calibration` back from the JSON :meth:`Calibration.to_dict` wrote (it needs the full table)."""
    if "cosine" not in data:
        raise PatchdbError(f"{source} has no per-seed cosine table (written before it was kept); rerun 'patchdb calibrate' to merge it")
    table = torch.tensor(data["cosine"], dtype=torch.float64)
    sizes, seeds = tuple(int(k) for k in data["candidates"]), [int(m) for m in data["seeds"]]
    if table.dim() != 3 or table.shape[1:] != (len(sizes), len(seeds)):
        raise PatchdbError(f"{source}: cosine table of shape {tuple(table.shape)} does not match {len(sizes)} sizes x {len(seeds)} seeds")
    rollout = None
    if "rollout" in data:
        rollout = torch.tensor(data["rollout"], dtype=torch.float64)
        if rollout.shape != table.shape:
            raise PatchdbError(f"{source}: rollout table of shape {tuple(rollout.shape)} does not match the cosine table {tuple(table.shape)}")
    criterion = check_criterion(data.get("criterion", "cosine"))
    if criterion == "rollout" and rollout is None:
        raise PatchdbError(f"{source} says criterion 'rollout' but has no rollout table; rerun 'patchdb calibrate'")
    schedule = ScaleSchedule(tuple(int(k) for k in data["sizes"]), name=data.get("name", "calibrated"))
    return Calibration(sizes, seeds, table, schedule, dict(data.get("settings", {})), rollout, criterion)


# settings that must agree for two calibrations to describe the same experiment
_SAME = ("weights", "model", "machine", "steps", "engine", "fingerprint", "dtype")


def merge_calibrations(parts: list[Calibration], criterion: str | None = None) -> Calibration:
    """One calibration from runs of the same network, machine and steps.

    Two ways to combine, chosen by what the parts hold:

    - **more seeds**: the parts share the candidate sizes and have disjoint seeds; the tables are
      joined along the seeds;
    - **more sizes**: the parts share the seeds (same order) and differ in sizes; the tables are
      joined along the sizes. The network's trajectory does not depend on the candidates, so a size
      two parts both computed must agree (checked, to 1e-9), and is kept once.

    Either way the schedule is recomputed with :func:`median_size` over the joined table of
    ``criterion`` (default: the first part's), i.e. what one calibration over all seeds and sizes would
    choose. Rollout tables are joined alike when every part has one.
    """
    if not parts:
        raise PatchdbError("give at least one calibration to merge")
    first = parts[0]
    for part in parts[1:]:
        if part.steps != first.steps:
            raise PatchdbError(f"cannot merge calibrations of {part.steps} and {first.steps} steps; calibrate with the same --steps")
        for key in _SAME:
            if part.settings.get(key) != first.settings.get(key):
                raise PatchdbError(f"cannot merge: the calibrations differ in '{key}' ({first.settings.get(key)!r} vs "
                                   f"{part.settings.get(key)!r}); merge only runs of one network, machine and engine")
    seconds = sum(float(p.settings.get("seconds", 0.0)) for p in parts)
    with_rollout = all(part.rollout is not None for part in parts)
    if all(part.seeds == first.seeds for part in parts) and len(parts) > 1:
        columns: dict[int, torch.Tensor] = {}
        rollout_columns: dict[int, torch.Tensor] = {}
        for part in parts:
            for j, k in enumerate(part.sizes):
                col = part.cosine[:, j, :]
                if k in columns and not torch.allclose(columns[k], col, rtol=0, atol=1e-9):
                    raise PatchdbError(f"size {k} has different cosines in two of the calibrations over the same seeds; "
                                       "they did not follow the same network trajectory (other weights, device or dtype?)")
                columns.setdefault(k, col)
                if with_rollout:
                    rollout_columns.setdefault(k, part.rollout[:, j, :])
        sizes = tuple(sorted(columns))
        table = torch.stack([columns[k] for k in sizes], dim=1)
        rollout = torch.stack([rollout_columns[k] for k in sizes], dim=1) if with_rollout else None
        seeds = list(first.seeds)
    else:
        seeds = [m for part in parts for m in part.seeds]
        if len(set(seeds)) != len(seeds):
            raise PatchdbError(f"the calibrations share some seeds {sorted({m for m in seeds if seeds.count(m) > 1})} but not all; "
                               "merge disjoint seed sets (same sizes), or the same seeds (other sizes)")
        for part in parts[1:]:
            if part.sizes != first.sizes:
                raise PatchdbError(f"cannot merge calibrations of sizes {list(part.sizes)} and {list(first.sizes)} over different "
                                   "seeds; calibrate with the same --sizes")
        sizes = first.sizes
        table = torch.cat([part.cosine for part in parts], dim=2)
        rollout = torch.cat([part.rollout for part in parts], dim=2) if with_rollout else None
    criterion = first.criterion if criterion is None else criterion
    chosen = median_size(criterion_table(table, rollout, criterion), sizes)
    settings = dict(first.settings, num=len(seeds), seconds=seconds, merged_from=len(parts))
    schedule = ScaleSchedule(tuple(int(k) for k in chosen), name=first.schedule.name)
    return Calibration(sizes, seeds, table, schedule, settings, rollout, criterion)


def write_calibration(cal: Calibration, path: str | Path) -> tuple[Path, Path]:
    """Write the schedule JSON (readable by ``parse_schedule`` / ``sample --schedule``) and its heat map PNG."""
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(cal.to_dict(), indent=1))
    png = path.with_suffix(".png")
    save_heatmap(cal, png)
    return path, png


def save_heatmap(cal: Calibration, path: Path) -> None:
    """Heat map (step x size) of each criterion's seed mean, with the chosen size of each step marked.

    Colours are scaled per step (row): within a step the values often differ only in the fifth
    decimal, which one colour scale over all steps would hide. One panel per table kept.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = [("cosine", cal.cosine)] + ([("rollout", cal.rollout)] if cal.rollout is not None else [])
    fig, axes = plt.subplots(1, len(tables), figsize=(len(tables) * (1.9 + 0.45 * len(cal.sizes)), 1.7 + 0.25 * cal.steps),
                             squeeze=False)
    pos = [cal.sizes.index(k) for k in cal.schedule.sizes]
    for ax, (name, table) in zip(axes[0], tables):
        mean = table.mean(dim=2)
        low, high = mean.min(dim=1, keepdim=True).values, mean.max(dim=1, keepdim=True).values
        scaled = ((mean - low) / (high - low).clamp_min(1e-300)).numpy()
        im = ax.imshow(scaled, aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(len(cal.sizes)), [str(k) for k in cal.sizes])
        ax.set_yticks(range(cal.steps), [str(i + 1) for i in range(cal.steps)])
        ax.set_xlabel("patch size k")
        ax.set_ylabel("sampler step i (time i/S)")
        ax.plot(mean.argmax(dim=1).numpy(), range(cal.steps), "x", color="black", ms=5, label="best seed mean")
        ax.plot(pos, range(cal.steps), "o", mfc="none", color="red", ms=7, label=f"chosen (by {cal.criterion})")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=7, ncol=2)
        fig.colorbar(im, ax=ax, label="per step: worst 0 .. best 1")
        ax.set_title(f"{CRITERIA[name]}\n{len(cal.seeds)} seeds", fontsize=8)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
