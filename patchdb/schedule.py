"""Noise schedule and scale (patch-size) schedules, docs/math.md "Images and noise" and "Sampler"."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from .errors import PatchdbError

#: The paper's calibrated schedules, ``scales[0]`` first (the lowest noise, step i = 1).
PRESETS: dict[str, tuple[int, ...]] = {
    "mnist-resnet-zeros": (3, 3, 5, 5, 5, 7, 7, 7, 9, 9, 11, 11, 11, 11, 13, 15, 15, 15, 15, 15),
    "mnist-unet-zeros": (3, 3, 3, 5, 5, 7, 7, 7, 9, 9, 9, 11, 13, 15, 17, 21, 23, 23, 25, 27),
    "mnist-resnet-circular": (3, 3, 5, 5, 5, 7, 7, 9, 9, 9, 11, 11, 11, 11, 9, 9, 7, 7, 3, 3),
    "fashion-mnist-resnet-zeros": (3, 3, 5, 5, 7, 7, 9, 9, 9, 11, 11, 11, 13, 13, 13, 15, 15, 15, 17, 17),
    "fashion-mnist-unet-zeros": (3, 3, 5, 5, 7, 7, 7, 9, 11, 11, 11, 13, 15, 15, 21, 23, 25, 25, 25, 25),
    "cifar10-resnet-zeros": (3, 3, 3, 3, 5, 5, 5, 7, 7, 7, 7, 9, 9, 11, 11, 13, 15, 17, 17, 17),
    "cifar10-resnet-circular": (3, 3, 3, 3, 5, 5, 5, 5, 7, 7, 7, 9, 9, 11, 11, 13, 13, 15, 15, 15),
    "cifar10-unet-zeros": (3, 3, 3, 3, 5, 5, 5, 5, 7, 7, 7, 7, 9, 9, 11, 13, 13, 15, 17, 25),
    "celeba-resnet-zeros": (3, 3, 3, 5, 5, 5, 5, 5, 7, 7, 9, 9, 9, 11, 11, 11, 13, 15, 19, 19),
    "celeba-unet-zeros": (3, 3, 3, 3, 3, 3, 3, 5, 5, 5, 5, 5, 7, 7, 9, 9, 9, 13, 19, 27),
}


def alpha_sigma(t: float) -> tuple[float, float]:
    """``(a_t, b_t)`` of the paper's legacy cosine schedule (docs/math.md "Images and noise")."""
    if not 0.0 <= t <= 1.0 or math.isnan(t):
        raise PatchdbError(f"time t={t} is outside [0, 1]; diffusion time runs from 0 (clean) to 1 (noise)")
    beta = 1.0 - math.cos((t / 1.008) * math.pi / 2) ** 2
    return math.sqrt(1.0 - beta), math.sqrt(beta)


def check_patch_size(k: int) -> int:
    """Return ``k`` if it is a positive odd integer, else raise a one-line error."""
    if isinstance(k, bool) or int(k) != k or k <= 0 or k % 2 == 0:
        raise PatchdbError(f"patch size {k} is not a positive odd integer; use 1, 3, 5, ...")
    return int(k)


def sample_only(t: float, sample_above: float) -> bool:
    """Whether the step at time ``t`` estimates D from a uniform sample alone, searching no index
    (``Retrieval.sample_above``; 0: never). ``t = i / S`` in float, hence the tolerance."""
    return bool(sample_above) and t >= sample_above - 1e-9


@dataclass(frozen=True)
class ScaleSchedule:
    """One odd patch size per sampler step; ``sizes[i-1]`` is used at step i, time i/S (docs/math.md)."""

    sizes: tuple[int, ...]
    name: str = "custom"

    def __post_init__(self) -> None:
        if not self.sizes:
            raise PatchdbError("a scale schedule needs at least one patch size")
        for k in self.sizes:
            check_patch_size(k)

    @property
    def steps(self) -> int:
        return len(self.sizes)

    def size_at(self, step: int) -> int:
        """Patch size of step ``step`` in 1..S."""
        return self.sizes[step - 1]

    def size_at_time(self, t: float) -> int:
        """Patch size the sampler uses at time ``t``, which must be one of its step times i/S."""
        step = round(t * self.steps)
        if step < 1 or abs(t * self.steps - step) > 1e-6:
            raise PatchdbError(f"time t={t} is not one of the {self.steps} sampler steps i/{self.steps} of the schedule")
        return self.size_at(step)

    def distinct(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.sizes)))

    def searched(self, sample_above: float = 0.0) -> tuple[int, ...]:
        """Distinct sizes of the steps that search an index when the steps at ``t >= sample_above`` are
        sample-only (:func:`sample_only`; 0: every step searches): the sizes an index file must hold."""
        return tuple(sorted({k for i, k in enumerate(self.sizes, 1) if not sample_only(i / self.steps, sample_above)}))

    def check_steps(self, steps: int) -> ScaleSchedule:
        if steps != self.steps:
            raise PatchdbError(
                f"scale schedule '{self.name}' has {self.steps} sizes but the sampler runs {steps} steps; "
                f"give one size per step or use --steps {self.steps}"
            )
        return self

    def check_fits(self, height: int, width: int) -> ScaleSchedule:
        """Sizes up to the image size are fine (k >= min(H, W) falls back to LS, docs/math.md)."""
        too_big = [k for k in self.distinct() if k > 2 * max(height, width) - 1]
        if too_big:
            raise PatchdbError(f"patch sizes {too_big} are larger than twice the {height}x{width} image; use smaller sizes")
        return self

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "sizes": list(self.sizes)})


def parse_schedule(spec: str | ScaleSchedule | list | tuple, steps: int | None = None) -> ScaleSchedule:
    """Schedule from a preset name, ``constant:K``, a comma list ``3,5,7``, or a JSON/text file.

    ``constant:K`` needs ``steps`` (default 20). A file holds either JSON (a list, or an object with
    ``sizes``) or whitespace/comma separated integers, ``scales[0]`` (lowest noise) first.
    """
    if isinstance(spec, ScaleSchedule):
        sched = spec
    elif isinstance(spec, (list, tuple)):
        sched = ScaleSchedule(tuple(int(k) for k in spec))
    else:
        sched = _parse_schedule_text(str(spec).strip(), steps)
    return sched.check_steps(steps) if steps is not None else sched


def _parse_schedule_text(spec: str, steps: int | None) -> ScaleSchedule:
    if spec in PRESETS:
        return ScaleSchedule(PRESETS[spec], name=spec)
    if spec.startswith("constant:"):
        k = _to_int(spec.split(":", 1)[1], spec)
        return ScaleSchedule((check_patch_size(k),) * (steps or 20), name=spec)
    path = Path(spec)
    if path.suffix in (".json", ".txt") or path.exists():
        return _read_schedule_file(path)
    if all(part.strip().lstrip("-").isdigit() for part in spec.split(",")):
        return ScaleSchedule(tuple(_to_int(p, spec) for p in spec.split(",")), name="custom")
    raise PatchdbError(
        f"unknown scale schedule '{spec}'; use a preset ({', '.join(PRESETS)}), constant:K, "
        "a comma list like 3,5,7 or a .json/.txt file"
    )


def _read_schedule_file(path: Path) -> ScaleSchedule:
    if not path.exists():
        raise PatchdbError(f"schedule file {path} does not exist; give a preset name or an existing file")
    text = path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = text.replace(",", " ").split()
    name = path.stem
    if isinstance(data, dict):
        name = str(data.get("name", name))
        data = data.get("sizes")
    if not isinstance(data, list):
        raise PatchdbError(f"schedule file {path} holds no list of sizes; write e.g. [3, 3, 5, ...] or {{\"sizes\": [...]}}")
    return ScaleSchedule(tuple(_to_int(k, str(path)) for k in data), name=name)


def _to_int(value, where: str) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise PatchdbError(f"'{value}' in schedule '{where}' is not an integer patch size") from None
