"""What a run computes: the settings that decide every sample's bits, and the engine they build.

A :class:`RunSpec` is plain data (picklable, JSON-able) so that a local worker process or a Ray actor
can rebuild the same engine from it; :func:`resolve` loads what the driver must know before any
work starts (dataset or index fingerprint, image shape, classes) and :func:`build_engine` makes the
denoiser where the work runs.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ..errors import PatchdbError
from ..schedule import parse_schedule
from ..spec import Machine

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class RunSpec:
    """Every setting of a run.

    source : ``{"kind": "dataset", "dataset", "root", "split", "limit", "only_classes", "policy"}``
        (exact engine over a dataset) or ``{"kind": "index", "path", "exact"}`` (approximate engine over
        an index file, or the exact engine over the images it stores).
    retrieval : the :class:`patchdb.denoisers.retrieval.Retrieval` knobs (approximate engine only).
    batch_size : rows per denoiser call. Pinned: on the CPU a row's bits change with the batch size
        (exact bbELS: up to 9e-6 between a batch of 1 and of 2) and, for IS, with its row in the batch,
        so seed ``s`` is always computed at row ``s % batch_size`` of a full batch
        (:func:`patchdb.runs.work.sample_seeds`) and a sample's bits depend on the seed and the settings only.
    """

    source: dict
    machine: str = "bbels"
    schedule: str = "mnist-resnet-zeros"
    steps: int | None = None
    label: str | None = None
    dtype: str = "float32"
    device: str = "cpu"
    batch_size: int = 16
    block_mb: float = 4.0
    retrieval: dict | None = None

    def __post_init__(self) -> None:
        Machine.parse(self.machine)
        if self.dtype not in DTYPES:
            raise PatchdbError(f"dtype '{self.dtype}' is not one of {', '.join(DTYPES)}")
        if self.batch_size < 1:
            raise PatchdbError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.source.get("kind") not in ("dataset", "index"):
            raise PatchdbError("a run's source is a dataset or an index file")

    @property
    def engine(self) -> str:
        return "approx" if self.source["kind"] == "index" and not self.source.get("exact") else "exact"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RunSpec:
        return cls(**data)

    def with_absolute_paths(self, base: str | os.PathLike | None = None) -> RunSpec:
        """This spec with :func:`absolute_source` applied (paths resolved against ``base``, default the
        working directory): a run folder is read later from anywhere (``patchdb report``, a worker)."""
        return replace(self, source=absolute_source(self.source, base))


@dataclass
class Resolved:
    """What the driver learns from the data before starting: the fingerprinted settings of the manifest."""

    shape: tuple[int, int, int]
    num_classes: int | None
    sizes: list[int] | None  # the schedule's patch sizes (None for IS)
    schedule_name: str
    steps: int
    fingerprints: dict = field(default_factory=dict)
    describe: str = ""


def index_fingerprint(path: str | os.PathLike, meta: dict, attrs) -> dict:
    """What identifies an index file: the dataset fingerprint and build date it records, plus its size
    and modification time (a rebuilt or replaced file changes at least one)."""
    st = Path(path).stat()
    return {"fingerprint": meta.get("fingerprint"), "creation-date": str(attrs.get("creation-date", "")),
            "machine": meta.get("machine"), "sizes": list(meta.get("sizes", [])), "bytes": st.st_size,
            "mtime": int(st.st_mtime)}


def resolve(spec: RunSpec) -> Resolved:
    """Open the spec's data once on the driver: shape, classes, schedule and fingerprints."""
    sched = parse_schedule(spec.schedule, spec.steps)
    machine = Machine.parse(spec.machine)
    sizes = None if machine is Machine.IS else list(sched.sizes)
    if spec.source["kind"] == "dataset":
        data = load_source_dataset(spec.source)
        sched.check_fits(data.height, data.width)
        fp = {"dataset": data.fingerprint(), "dataset_name": data.name}
        return Resolved((data.channels, data.height, data.width), data.num_classes if data.labels is not None else None,
                        sizes, sched.name, sched.steps, fp,
                        f"exact {machine.value} over {len(data)} images of {data.name}")
    from ..indexing.reader import open_index

    path = spec.source["path"]
    with open_index(path) as f:
        fp = {"dataset": f.fingerprint, "dataset_name": f.meta["dataset"],
              "index": index_fingerprint(path, f.meta, f.h5.attrs)}
        shape = (f.channels, f.height, f.width)
        classes = len(f.meta["classes"]) if f.meta.get("classes") else None
        count = f.meta["count"]
    kind = "exact" if spec.source.get("exact") else f"approximate (top-{(spec.retrieval or {}).get('topk', '?')})"
    return Resolved(shape, classes, sizes, sched.name, sched.steps, fp, f"{kind} {machine.value} over {count} images from {path}")


def absolute_source(source: dict, base: str | os.PathLike | None = None) -> dict:
    """``source`` with its relative paths made absolute against ``base`` (default: the working directory):
    ``root``, a ``dataset`` given as a path (an .npz, a folder, a .zip) and an index ``path``. The paths as
    given are kept under ``"given"`` (provenance). None of them is among the settings a resumed run is
    compared on (the dataset and index fingerprints are), so the same command rerun from the same place,
    or from another place with paths that reach the same files, resumes the run."""
    base = Path(base) if base is not None else Path.cwd()
    out, given = dict(source), dict(source.get("given") or {})

    def absolute(key: str) -> None:
        value = out.get(key)
        if value in (None, "") or Path(str(value)).expanduser().is_absolute():
            return
        given.setdefault(key, value)
        out[key] = os.path.normpath(base / Path(str(value)).expanduser())

    if out.get("kind") == "index":
        absolute("path")
    else:
        absolute("root")
        name = out.get("dataset")
        if name not in (None, "embedded") and (base / Path(str(name)).expanduser()).exists():
            absolute("dataset")  # a path; a dataset name (mnist, ...) is no file here and stays a name
    if given:
        out["given"] = given
    return out


def relative_paths(source: dict) -> list[str]:
    """The relative paths a source records, as ``--option value`` (empty when none): run folders written
    before :func:`absolute_source` recorded them as given, relative to where the run was started."""
    from ..data import _canonical

    keys = ("path",) if source.get("kind") == "index" else ("root", "dataset")
    out = []
    for key in keys:
        value = source.get(key)
        if value in (None, "") or Path(str(value)).expanduser().is_absolute():
            continue
        if key == "dataset" and _canonical(str(value)) is not None:
            continue  # a dataset name (embedded, mnist, ...), not a path
        out.append(f"--{'index' if key == 'path' else key} {value}")
    return out


def load_source_dataset(source: dict):
    from ..data import load_dataset

    name = None if source.get("dataset") in (None, "embedded") else source["dataset"]
    classes = source.get("only_classes")
    return load_dataset(name, root=source.get("root"), split=source.get("split", "train"), limit=source.get("limit"),
                        classes=classes, policy=source.get("policy", "resize"), progress=False)


class Engine:
    """A loaded denoiser and what computing a shard needs besides it."""

    def __init__(self, spec: RunSpec):
        self.spec = spec
        self.dtype = DTYPES[spec.dtype]
        self._index = None
        sched = parse_schedule(spec.schedule, spec.steps)
        self.steps = sched.steps
        if spec.source["kind"] == "dataset":
            from ..denoisers.exact import ExactMachine

            data = load_source_dataset(spec.source)
            self.denoiser = ExactMachine(data.to_float(self.dtype), spec.machine, sched, labels=data.labels,
                                         device=spec.device, block_bytes=int(spec.block_mb * 2**20))
            self.device = spec.device
        else:
            from ..denoisers.factory import make_denoiser
            from ..denoisers.retrieval import Retrieval
            from ..indexing.reader import open_index

            self._index = open_index(spec.source["path"])
            exact = bool(spec.source.get("exact"))
            extra = ({"device": spec.device, "block_bytes": int(spec.block_mb * 2**20)} if exact
                     else {"retrieval": Retrieval.from_dict(spec.retrieval)})
            self.denoiser = make_denoiser(spec.machine, sched, index=self._index, exact=exact, dtype=self.dtype, **extra)
            self.device = spec.device if exact else "cpu"

    def close(self) -> None:
        if self._index is not None:
            self._index.close()


def set_threads(threads: int) -> None:
    """Give this process ``threads`` threads for torch and FAISS (a worker's share of the machine)."""
    threads = max(1, int(threads))
    torch.set_num_threads(threads)
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
    except ImportError:  # only index users need faiss
        pass


def environment() -> dict:
    """Library versions that can change a sample's bits (recorded and compared)."""
    import numpy as np

    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    try:
        import faiss

        out["faiss"] = getattr(faiss, "__version__", "unknown")
    except ImportError:
        pass
    return out
