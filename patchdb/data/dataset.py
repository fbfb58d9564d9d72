"""The dataset type: uint8 images ``(N, C, H, W)`` ordered by class, labels, class names, provenance."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import PatchdbError


@dataclass(frozen=True, eq=False)
class Dataset:
    """Training images ordered by class.

    Attributes
    ----------
    images : torch.Tensor
        uint8 ``(N, C, H, W)``, contiguous, stably sorted by label so each class is a
        contiguous range of ids.
    labels : torch.Tensor
        int64 ``(N,)``, non-decreasing, each in ``[0, len(classes))``.
    classes : tuple of str
        Class names; index = label. Classes filtered out at load time keep their name.
    name : str
        ``"embedded"``, ``"mnist"``, ``"fashion-mnist"``, ``"cifar10"``, or ``"<kind>:<path>"``
        with kind ``folder``, ``zip``, ``idx`` or ``npz``.
    meta : dict
        JSON-serialisable provenance: source, format, split, policy, original/final size,
        limit, class filter, count, fingerprint.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    name: str
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        x, y = self.images, self.labels
        if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.dim() != 4:
            raise PatchdbError(
                f"Dataset images must be a uint8 tensor (N, C, H, W), got "
                f"{_describe(x)}: convert pixels to uint8 0..255 first"
            )
        if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.shape != (len(x),):
            raise PatchdbError(
                f"Dataset labels must be an int64 tensor of shape ({len(x)},), got "
                f"{_describe(y)}: pass one integer label per image"
            )
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        object.__setattr__(self, "images", x.contiguous())
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(self.classes)):
            raise PatchdbError(
                f"Dataset labels span {int(y.min())}..{int(y.max())} but there are "
                f"{len(self.classes)} classes: pass a class name for every label"
            )
        if len(y) > 1 and not bool((y[1:] >= y[:-1]).all()):
            raise PatchdbError(
                "Dataset labels are not sorted: order images by class "
                "(stable sort by label), as load_dataset does"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of class names (including classes filtered out at load time)."""
        return len(self.classes)

    @property
    def channels(self) -> int:
        """Number of channels ``C`` (1 for grayscale, 3 for RGB)."""
        return int(self.images.shape[1])

    @property
    def height(self) -> int:
        """Image height ``H`` in pixels."""
        return int(self.images.shape[2])

    @property
    def width(self) -> int:
        """Image width ``W`` in pixels."""
        return int(self.images.shape[3])

    def to_float(
        self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Pixels as floats ``pixel / 127.5 - 1`` in ``[-1, 1]``, shape ``(N, C, H, W)``.

        Parameters
        ----------
        dtype : torch.dtype
            A floating dtype.
        device : torch.device or str, optional
            Target device; the conversion runs there (the uint8 tensor is moved first).
        """
        if not dtype.is_floating_point:
            raise PatchdbError(f"to_float needs a floating dtype, got {dtype}: use torch.float32")
        x = self.images.to(device=device).to(dtype)
        return x.div_(127.5).sub_(1.0)

    def fingerprint(self) -> str:
        """SHA-256 hex digest of the shape, uint8 pixels and int64 labels (stable across runs)."""
        key = (self.images._version, self.labels._version)
        cached = self.__dict__.get("_fingerprint")
        if cached is not None and cached[0] == key:
            return cached[1]
        digest = _fingerprint(self.images, self.labels)
        self.__dict__["_fingerprint"] = (key, digest)
        return digest

    def class_range(self, label: int) -> tuple[int, int]:
        """Ids ``[start, stop)`` of the images of class ``label``.

        Raises
        ------
        PatchdbError
            If ``label`` is out of range or the dataset holds no image of that class.
        """
        label = as_label(label, "class_range label")
        if not 0 <= label < self.num_classes:
            raise PatchdbError(
                f"label {label} is out of range 0..{self.num_classes - 1} for {self.name}: "
                f"pass a label between 0 and {self.num_classes - 1}"
            )
        y = self.labels.cpu()
        start = int(torch.searchsorted(y, label, right=False))
        stop = int(torch.searchsorted(y, label, right=True))
        if start == stop:
            present = sorted(set(y.unique().tolist()))
            raise PatchdbError(
                f"class {label} ({self.classes[label]}) has no images in {self.name} "
                f"(present: {present}): load it without a class filter that drops it"
            )
        return start, stop


def _fingerprint(images: torch.Tensor, labels: torch.Tensor) -> str:
    h = hashlib.sha256()
    h.update(f"patchdb-dataset-v1 {tuple(images.shape)}\n".encode())
    h.update(np.ascontiguousarray(images.detach().cpu().numpy()))
    h.update(np.ascontiguousarray(labels.detach().cpu().numpy().astype("<i8")))
    return h.hexdigest()


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


def as_label(value: object, what: str) -> int:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise PatchdbError(f"{what} must be an integer class label, got {value!r}")
    return int(value)


def check_images(x: torch.Tensor, what: str = "images", *, tol: float = 1e-2) -> None:
    """Check that ``x`` is a finite float ``(N, C, H, W)`` tensor with values in ``[-1, 1]``.

    Parameters
    ----------
    x : torch.Tensor
        Images scaled as ``pixel / 127.5 - 1``.
    what : str
        Name used in the error message.
    tol : float
        Values within ``tol`` outside ``[-1, 1]`` are accepted.

    Raises
    ------
    PatchdbError
        On a non-tensor, non-float dtype, a shape that is not 4-D, NaN/inf, or values outside
        ``[-1 - tol, 1 + tol]``.
    """
    if not isinstance(x, torch.Tensor):
        raise PatchdbError(f"{what} must be a torch tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise PatchdbError(
            f"{what} has dtype {x.dtype}, not float: scale uint8 pixels with "
            "pixel/127.5 - 1 (Dataset.to_float)"
        )
    if x.dim() != 4:
        raise PatchdbError(
            f"{what} has shape {tuple(x.shape)}, expected 4-D (N, C, H, W): "
            "add a batch dimension with x[None]"
        )
    if x.numel() == 0:
        return
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise PatchdbError(f"{what} contains {bad} NaN or infinite values: check how it was made")
    lo, hi = (float(v) for v in torch.aminmax(x))
    if lo < -1.0 - tol or hi > 1.0 + tol:
        raise PatchdbError(
            f"{what} has values in [{lo:.4g}, {hi:.4g}], outside [-1, 1]: "
            "scale pixels with pixel/127.5 - 1 (Dataset.to_float)"
        )
