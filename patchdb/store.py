"""HDF5 files patchdb writes: stamps, atomic writes, checked opening, and the sample file layout.

Every file carries ``format``, ``format-version``, ``generated-by``, ``creation-date`` and a JSON
``metadata`` attribute (cooler's habit). Files are written under a temporary name in the same
folder and renamed into place only when complete, so a killed writer never leaves a file that
looks valid under the final name.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path

import faiss
import h5py
import numpy as np
import torch

from . import __version__
from .errors import PatchdbError, PatchdbFileError

SAMPLES_FORMAT = "patchdb-samples"
SAMPLES_VERSION = 1


def generated_by() -> str:
    return f"patchdb {__version__}"


def library_versions() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "faiss": getattr(faiss, "__version__", "unknown"),
    }


def stamp(f: h5py.File, fmt: str, version: int, metadata: dict) -> None:
    """Write the identifying attributes every patchdb file carries."""
    f.attrs["format"] = fmt
    f.attrs["format-version"] = version
    f.attrs["generated-by"] = generated_by()
    f.attrs["creation-date"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    f.attrs["metadata"] = json.dumps(metadata, sort_keys=True, default=str)


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early, with one line, if ``path`` cannot be written (before any long computation)."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise PatchdbError(f"output path {path} is a folder; give a file name such as {path / 'out.h5'}")
    if not folder.exists():
        raise PatchdbError(f"output folder {folder} does not exist; create it or choose another --out")
    if not os.access(folder, os.W_OK):
        raise PatchdbError(f"output folder {folder} is not writable; choose another --out")
    return path


def temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


# --------------------------------------------------------------------------------------------
# The one overwrite rule, and one writer per path (issue 29)
# --------------------------------------------------------------------------------------------

#: Outputs this process holds (path -> its lock file), released by :func:`release_outputs`.
_CLAIMS: dict[Path, Path] = {}


def lock_path(path: Path) -> Path:
    """``.<name>.lock`` beside ``path``: it holds the pid of the run writing ``path``."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(lock: Path) -> int | None:
    """The live pid (not ours) holding ``lock``, or None when the lock is ours, stale or absent."""
    try:
        text = lock.read_text().strip()
        age = time.time() - lock.stat().st_mtime
    except OSError:
        return None
    if not text.isdigit():
        return -1 if age < 10 else None  # being written this very moment, or left empty by a killed run
    pid = int(text)
    return pid if pid != os.getpid() and pid_alive(pid) else None


def _busy(path: Path, pid: int, what: str) -> PatchdbError:
    who = "another patchdb run" + (f" (pid {pid})" if pid > 0 else "")
    return PatchdbError(f"{who} is writing {path}; wait for it to finish or choose another {what}")


def _lock(path: Path, what: str) -> None:
    """Take ``path``'s lock file by exclusive create; a lock whose run is gone is taken over."""
    if path in _CLAIMS:
        return
    lock = lock_path(path)
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pid = _holder(lock)
            if pid is not None:
                raise _busy(path, pid, what) from None
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()  # stale: its run was killed
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        _CLAIMS[path] = lock
        return
    raise _busy(path, -1, what)


def claim_output(path: str | os.PathLike, force: bool = False, what: str = "--out",
                 suffixes: tuple[str, ...] | None = None, folder: bool = False) -> Path:
    """The one overwrite rule of every command, checked before any work (issue 29).

    - ``path`` must end in one of ``suffixes`` (when given): a sample file is never written as ``x.txt``;
    - its parent folder must exist: without ``force`` a missing one is refused with a hint, with
      ``force`` it is created;
    - an existing output (a file; for ``folder`` outputs a folder that is not empty) is refused unless
      ``force``;
    - the path is locked (``.<name>.lock``, exclusive create, holding our pid) until
      :func:`release_outputs`, so two runs writing one path cannot both succeed.
    """
    path = Path(path)
    if not str(path).strip() or path.name in ("", ".", ".."):
        raise PatchdbError(f"{what} '{path}' names no {'folder' if folder else 'file'}; give a name such as "
                           f"{'out' if folder else 'out' + (suffixes[0] if suffixes else '.h5')}")
    if suffixes and path.suffix.lower() not in suffixes:
        raise PatchdbError(f"{what} {path} does not end in {' or '.join(suffixes)}; that is the file written there "
                           f"(e.g. {path.with_suffix(suffixes[0]).name})")
    if not folder and path.is_dir():
        raise PatchdbError(f"{what} {path} is a folder; give a file name such as {path / ('out' + (suffixes or ('.h5',))[0])}")
    if folder and path.exists() and not path.is_dir():
        raise PatchdbError(f"{what} {path} is a file; give a folder name")
    parent = path.parent
    if not parent.is_dir():
        if parent.exists() or not force:
            raise PatchdbError(f"{what}: folder {parent} does not exist; create it (mkdir -p {parent}), "
                               f"or pass --force to create it, or choose another {what}")
        parent.mkdir(parents=True, exist_ok=True)
    if not os.access(parent, os.W_OK):
        raise PatchdbError(f"{what}: folder {parent} is not writable; choose another {what}")
    _lock(path, what)
    full = path.exists() and (not folder or any(path.iterdir()))
    if full and not force:
        release_outputs(path)
        kind = "folder" if folder else "file"
        raise PatchdbError(f"{what} {path} already exists ({kind}); pass --force to replace it or choose another {what}")
    return path


def release_outputs(*paths: Path) -> None:
    """Drop the locks of ``paths`` (default: every output this process claimed)."""
    for path in [Path(p) for p in paths] if paths else list(_CLAIMS):
        lock = _CLAIMS.pop(path, None)
        if lock is not None:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()


@contextlib.contextmanager
def claimed(path: str | os.PathLike, force: bool = False, **kw) -> Iterator[Path]:
    """:func:`claim_output` for the length of a block (library callers); a claim held already is kept."""
    held = Path(path) in _CLAIMS
    out = claim_output(path, force, **kw)
    try:
        yield out
    finally:
        if not held:
            release_outputs(out)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` only if the block succeeds.

    On any exception, Ctrl-C included, the temporary file is removed and ``path`` is untouched.
    """
    path = check_writable(path)
    tmp = temp_path(path)
    try:
        yield tmp
        if path not in _CLAIMS and (pid := _holder(lock_path(path))) is not None:
            raise _busy(path, pid, "output")  # another run holds this path: do not replace its result
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_h5(path: str | os.PathLike, fmt: str, version: int, metadata: dict) -> Iterator[h5py.File]:
    """An HDF5 file opened for writing under a temporary name, stamped, renamed on success."""
    with atomic_write(path) as tmp, h5py.File(tmp, "w") as f:
        stamp(f, fmt, version, metadata)
        yield f


def open_checked(path: str | os.PathLike, fmt: str, max_version: int) -> h5py.File:
    """Open a patchdb file for reading; one-line errors for missing, corrupt, foreign or newer files."""
    path = Path(path)
    if not path.exists():
        raise PatchdbFileError(f"file {path} does not exist; check the path")
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise PatchdbError(f"{path} is not a readable HDF5 file (truncated or corrupted?); rebuild it") from None
    found = f.attrs.get("format")
    if found != fmt:
        f.close()
        what = f"a '{found}' file" if found else "not a patchdb file"
        raise PatchdbError(f"{path} is {what}, expected '{fmt}'; pass the right file")
    version = int(f.attrs.get("format-version", -1))
    if version > max_version:
        f.close()
        raise PatchdbError(
            f"{path} has format version {version}, newer than this patchdb reads ({max_version}); upgrade patchdb"
        )
    return f


def metadata(f: h5py.File) -> dict:
    return json.loads(f.attrs.get("metadata", "{}"))


def write_samples(
    path: str | os.PathLike,
    samples: torch.Tensor,
    seeds: list[int],
    labels: torch.Tensor | None,
    schedule: list[int] | None,
    settings: dict,
    trajectory: torch.Tensor | None = None,
) -> Path:
    """Write a sample file atomically.

    Layout: ``samples`` (B, C, H, W) float32 in [-1, 1]; ``seeds`` (B,) int64, the seed of each
    image's initial noise; ``labels`` (B,) int64, -1 where unconditional; ``schedule`` (S,) patch
    sizes, ``scales[0]`` first (absent for IS and networks); ``trajectory`` (S, B, C, H, W), the
    denoiser output of every step, step S (highest noise) first; attrs ``metadata``: every setting.
    """
    with atomic_h5(path, SAMPLES_FORMAT, SAMPLES_VERSION, settings) as f:
        put_array(f, "samples", samples.detach().cpu().float().numpy(), compression="gzip")
        put_array(f, "seeds", np.asarray(seeds, dtype=np.int64))
        lab = np.full(len(seeds), -1, np.int64) if labels is None else labels.cpu().numpy().astype(np.int64)
        put_array(f, "labels", lab)
        if schedule is not None:
            put_array(f, "schedule", np.asarray(schedule, dtype=np.int64))
        if trajectory is not None:
            put_array(f, "trajectory", trajectory.float().numpy(), compression="gzip")
    return Path(path)


def read_samples(path: str | os.PathLike) -> dict:
    """Everything in a sample file as numpy arrays plus ``metadata`` (arrays checked against their checksums)."""
    with open_checked(path, SAMPLES_FORMAT, SAMPLES_VERSION) as f:
        try:
            out = {name: get_array(f[name], path) for name in f}
        except (OSError, KeyError, TypeError) as err:
            raise PatchdbError(f"{path} cannot be read ({err.__class__.__name__}); it is damaged, recompute it") from None
        try:
            out["metadata"] = metadata(f)
        except (ValueError, TypeError):
            raise PatchdbError(f"{path}: its metadata is not valid JSON (damaged); recompute it") from None
        if not isinstance(out["metadata"], dict):
            raise PatchdbError(f"{path}: its metadata is not a JSON object (damaged); recompute it")
    return out


# --------------------------------------------------------------------------------------------
# Checksums of stored arrays (issue 29): SHA-256 of the array's bytes, an attribute of its dataset
# --------------------------------------------------------------------------------------------

CHECKSUM_ATTR = "sha256"


def digest(data) -> str:
    """SHA-256 hex digest of an array's bytes in C order (or of ``bytes``)."""
    if isinstance(data, np.ndarray):
        data = memoryview(np.ascontiguousarray(data)).cast("B")
    return hashlib.sha256(data).hexdigest()


def put_array(group: h5py.Group, name: str, data: np.ndarray, **kw) -> h5py.Dataset:
    """``create_dataset`` that records the array's checksum beside it."""
    ds = group.create_dataset(name, data=data, **kw)
    ds.attrs[CHECKSUM_ATTR] = digest(np.asarray(data))
    return ds


def get_array(ds: h5py.Dataset, where) -> np.ndarray:
    """A stored array, refused in one line when it does not match the checksum recorded beside it."""
    data = ds[()]
    want = ds.attrs.get(CHECKSUM_ATTR)
    if want is not None and isinstance(data, np.ndarray) and digest(data) != want:
        raise PatchdbError(f"{where}: {ds.name} is damaged (checksum mismatch); recompute or restore the file")
    return data


EXACT_CACHE_FORMAT = "patchdb-exact-samples"
EXACT_CACHE_VERSION = 1


def exact_key(fingerprint: str, machine: str, schedule, dtype: str, device: str, shape) -> dict:
    """The settings exact samples are valid for (an :class:`ExactSamples` file's key), as it reads back
    from the file's JSON metadata: the dataset's fingerprint, machine, schedule (sizes per step),
    compute dtype and device, image shape."""
    key = {"fingerprint": fingerprint, "machine": machine, "schedule": [int(k) for k in schedule], "dtype": dtype,
           "device": device, "shape": [int(v) for v in shape]}
    return json.loads(json.dumps(key, sort_keys=True, default=str))


def differing_keys(a: dict, b: dict) -> list[str]:
    """The names whose values differ between two settings dicts (absent counts as None), sorted."""
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


class ExactSamples:
    """Exact-engine samples kept between ``patchdb validate`` runs, so that each seed's exact sample (the
    expensive half: ~20 min per unconditional sample at N = 60,000 on one core) is computed once and
    later approximate settings are compared against it.

    One HDF5 file (``format = patchdb-exact-samples``): ``seeds`` (B,), ``labels`` (B,) (-1:
    unconditional), ``samples`` (B, C, H, W) and ``trajectory`` (S, B, C, H, W) in the dtype they were
    computed in, ``seconds`` (B,) each seed's share of its batch's exact time, and ``metadata`` = the
    ``key`` (index fingerprint, machine, schedule, dtype, device, ...) they are only valid for. Rewritten
    atomically after every batch, so a killed run keeps the batches it finished; the file is read again
    just before each rewrite, so runs side by side on one file keep each other's seeds (barring two
    rewrites within the same moment).
    """

    def __init__(self, path: str | os.PathLike, key: dict):
        self.path = check_writable(path)
        self.key = json.loads(json.dumps(key, sort_keys=True, default=str))  # as it reads back
        self.entries: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, float]] = {}
        if self.path.exists():
            self._load()

    @classmethod
    def read(cls, path: str | os.PathLike) -> ExactSamples:
        """An existing file, read only (its folder need not be writable), with the key it records."""
        out = cls.holding(path, None, {})
        out._load()
        return out

    @classmethod
    def holding(cls, path: str | os.PathLike, key: dict | None, entries: dict) -> ExactSamples:
        """``entries`` for ``key`` at ``path``, neither read from it nor yet written (:meth:`save`)."""
        out = cls.__new__(cls)
        out.path, out.key, out.entries = Path(path), key, dict(entries)
        return out

    def _load(self) -> None:
        """Read the file's samples; its key must be :attr:`key` (None: take the file's)."""
        with open_checked(self.path, EXACT_CACHE_FORMAT, EXACT_CACHE_VERSION) as f:
            found = metadata(f)
            if self.key is None:
                self.key = found
            if found != self.key:
                raise PatchdbError(f"{self.path} holds exact samples for other settings "
                                   f"({', '.join(differing_keys(found, self.key))} differ); pass another --exact-samples path")
            traj = torch.from_numpy(f["trajectory"][()])
            samples = torch.from_numpy(f["samples"][()])
            for j, (seed, label, sec) in enumerate(zip(f["seeds"][()], f["labels"][()], f["seconds"][()])):
                self.entries[(int(seed), int(label))] = (traj[:, j], samples[j], float(sec))

    @staticmethod
    def _keys(seeds, labels) -> list[tuple[int, int]]:
        labs = [-1] * len(seeds) if labels is None else [int(v) for v in labels]
        return [(int(s), lab) for s, lab in zip(seeds, labs)]

    def lookup(self, seeds, labels) -> tuple[torch.Tensor, torch.Tensor, float] | None:
        """(trajectory (S, b, ...), samples (b, ...), seconds) if every (seed, label) is stored, else None."""
        keys = self._keys(seeds, labels)
        if not all(k in self.entries for k in keys):
            return None
        got = [self.entries[k] for k in keys]
        return torch.stack([g[0] for g in got], 1), torch.stack([g[1] for g in got]), sum(g[2] for g in got)

    def store(self, seeds, labels, trajectory: torch.Tensor, samples: torch.Tensor, seconds: float) -> None:
        """Add a batch and rewrite the file, first merging what another run may have added since we read it."""
        if self.path.exists():
            self._load()
        keys = self._keys(seeds, labels)
        for j, k in enumerate(keys):
            self.entries[k] = (trajectory[:, j].detach().cpu(), samples[j].detach().cpu(), seconds / len(keys))
        self.save()

    def save(self) -> None:
        """Write :attr:`entries` to the file (atomically), as they are."""
        order = sorted(self.entries)
        with atomic_h5(self.path, EXACT_CACHE_FORMAT, EXACT_CACHE_VERSION, self.key) as f:
            f.create_dataset("seeds", data=np.array([k[0] for k in order], dtype=np.int64))
            f.create_dataset("labels", data=np.array([k[1] for k in order], dtype=np.int64))
            f.create_dataset("samples", data=torch.stack([self.entries[k][1] for k in order]).numpy())
            f.create_dataset("trajectory", data=torch.stack([self.entries[k][0] for k in order], 1).numpy())
            f.create_dataset("seconds", data=np.array([self.entries[k][2] for k in order]))


def read_exact_part(path: str | os.PathLike) -> tuple[dict, dict]:
    """``(key, entries)`` of a file holding exact samples with their trajectories, in the form of
    :class:`ExactSamples` (``entries``: (seed, label) -> (trajectory (S, C, H, W), sample, seconds)):
    an exact-samples cache, or a sample file that ``patchdb sample --save-trajectory`` wrote with the
    exact engine (its key made from its metadata, as ``patchdb validate`` makes it from an index file
    of the same dataset). Anything else is refused in one line."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            fmt = f.attrs.get("format")
    except OSError:
        raise PatchdbError(f"{path} is not an HDF5 file patchdb can read; pass exact-samples or sample files") from None
    if fmt == EXACT_CACHE_FORMAT:
        part = ExactSamples.read(path)
        return part.key, part.entries
    if fmt != SAMPLES_FORMAT:
        raise PatchdbError(f"{path} is a {fmt or 'non-patchdb'} file; pass exact-samples files (patchdb validate "
                           "--exact-samples) or sample files (patchdb sample --save-trajectory)")
    data = read_samples(path)
    meta = data["metadata"]
    if meta.get("engine") != "exact":
        raise PatchdbError(f"{path} holds samples of the {meta.get('engine', 'unknown')} engine; only exact samples "
                           "can serve as the reference (patchdb sample without --index, or with --exact)")
    if "trajectory" not in data:
        raise PatchdbError(f"{path} has no trajectory; sample again with --save-trajectory")
    schedule = [int(v) for v in data.get("schedule", [])]
    if data["trajectory"].shape[0] != len(schedule):
        raise PatchdbError(f"{path}: its trajectory has {data['trajectory'].shape[0]} steps and its schedule "
                           f"{len(schedule)}; sample again with --steps equal to the schedule's length")
    samples = torch.from_numpy(data["samples"])
    key = exact_key(meta.get("fingerprint"), meta.get("machine"), schedule, meta.get("dtype"), meta.get("device"),
                    samples.shape[1:])
    traj = torch.from_numpy(data["trajectory"])
    seconds = float(meta.get("seconds", 0.0)) / max(1, len(samples))
    entries = {(int(s), int(lab)): (traj[:, j], samples[j], seconds)
               for j, (s, lab) in enumerate(zip(data["seeds"], data["labels"]))}
    return key, entries
