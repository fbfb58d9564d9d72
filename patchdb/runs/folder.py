"""A run folder: ``manifest.json``, ``shards/shard-NNNNNN.h5`` and ``log.jsonl``.

The manifest (written atomically by the driver only) holds every setting that decides a sample's bits
and, per finished shard, its seeds and the SHA-256 of its file. A shard file is a ``patchdb-samples``
file (:func:`patchdb.store.write_samples`) written under a temporary name and renamed, so a killed
worker or a full disk never leaves a shard that looks finished. ``log.jsonl`` gets one line per shard
computed and per shard found missing or corrupt, so a test (or a user) can count recomputations.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import PatchdbError
from ..store import SAMPLES_FORMAT, atomic_write, generated_by, read_samples
from .seeds import format_seeds

RUN_FORMAT = "patchdb-run"
RUN_VERSION = 1
MANIFEST = "manifest.json"
LOG = "log.jsonl"
SHARDS = "shards"


def shard_name(i: int) -> str:
    return f"shard-{i:06d}.h5"


def split_shards(seeds: list[int], shard_size: int) -> list[list[int]]:
    """Shard ``i`` holds ``seeds[i * shard_size : (i + 1) * shard_size]``."""
    if shard_size < 1:
        raise PatchdbError(f"--shard-size must be at least 1, got {shard_size}")
    return [seeds[i : i + shard_size] for i in range(0, len(seeds), shard_size)]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def settings_id(settings: dict) -> str:
    """A short digest of the settings; every shard file carries it, so a shard of another run is never taken."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def flat(d: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (to name the one setting that differs)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _current_knobs(settings: dict) -> dict:
    """A manifest's settings with the retrieval knobs added since it was written at the value they stand
    for there (:meth:`Retrieval.from_dict`: off, the behaviour the run had). A run started before a knob
    that defaults to off resumes with the same command; before list-major search (``list_scan``, on by
    default) the refusal names it and ``--query-scan`` resumes it."""
    if not isinstance(settings.get("retrieval"), dict):
        return settings
    from ..denoisers.retrieval import Retrieval

    return {**settings, "retrieval": Retrieval.from_dict(settings["retrieval"]).to_dict()}


def differing(old: dict, new: dict) -> list[str]:
    a, b = flat(old), flat(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class Plan:
    """What a (re)started run has left to do."""

    todo: list[int]  # shard numbers to compute
    done: int  # shards already finished and verified
    notes: list[str]  # one line per shard found missing, corrupt or adopted


class RunFolder:
    """The files of one run folder; only the driver process creates one."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.manifest_path = self.path / MANIFEST
        self.shards_dir = self.path / SHARDS
        self.manifest: dict | None = None

    # -- opening and checking ------------------------------------------------------------

    def read_manifest(self) -> dict | None:
        if not self.manifest_path.exists():
            return None
        try:
            data = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError) as err:
            raise PatchdbError(f"{self.manifest_path} is unreadable ({err.__class__.__name__}); "
                               "delete the folder or pass --force to start the run over") from None
        if data.get("format") != RUN_FORMAT:
            raise PatchdbError(f"{self.manifest_path} is not a patchdb run manifest; choose another --out")
        if int(data.get("format-version", 0)) > RUN_VERSION:
            raise PatchdbError(f"{self.path} was written by a newer patchdb (run format {data['format-version']}); upgrade patchdb")
        return data

    def start(self, settings: dict, seeds: list[int], shard_size: int, extra: dict, force: bool) -> None:
        """Create the folder and its manifest, or reopen it for the same settings (refusing others)."""
        if self.path.exists() and not self.path.is_dir():
            raise PatchdbError(f"--out {self.path} is a file; give a folder name (or a .h5 name for one file)")
        old = self.read_manifest() if self.path.exists() else None
        if old is None and self.path.exists() and any(self.path.iterdir()) and not force:
            raise PatchdbError(f"--out {self.path} exists and is not a run folder; choose another --out or pass --force")
        if old is not None and force:
            self._wipe()
            old = None
        if old is not None:
            wanted = {"settings": settings, "seeds": format_seeds(seeds), "shard_size": shard_size}
            found = {"settings": _current_knobs(old["settings"]), "seeds": old["seeds"], "shard_size": old["shard_size"]}
            diff = differing(found, wanted)
            if diff:
                key = diff[0]
                was, now_ = flat(found).get(key), flat(wanted).get(key)
                more = f" (and {len(diff) - 1} more: {', '.join(diff[1:4])})" if len(diff) > 1 else ""
                raise PatchdbError(f"{self.path} holds a run with other settings: {key} is {was!r} there, {now_!r} here{more}; "
                                   "rerun with the folder's settings, choose another --out, or pass --force to start over")
            self.manifest = old
            return
        if not self.path.exists():
            if not self.path.parent.exists():
                raise PatchdbError(f"output folder {self.path.parent} does not exist; create it or choose another --out")
            self.path.mkdir()
        self.shards_dir.mkdir(exist_ok=True)
        self.manifest = {
            "format": RUN_FORMAT, "format-version": RUN_VERSION, "generated-by": generated_by(),
            "creation-date": now(), "settings": settings, "settings_id": settings_id(settings),
            "seeds": format_seeds(seeds), "count": len(seeds), "shard_size": shard_size,
            "shards": {}, **extra,
        }
        self.save()

    def _wipe(self) -> None:
        shutil.rmtree(self.shards_dir, ignore_errors=True)
        for name in (MANIFEST, LOG):
            (self.path / name).unlink(missing_ok=True)

    def save(self) -> None:
        with atomic_write(self.manifest_path) as tmp:
            tmp.write_text(json.dumps(self.manifest, indent=1, sort_keys=True))

    def log(self, **event) -> None:
        event = {"time": now(), **event}
        with open(self.path / LOG, "a") as f:
            f.write(json.dumps(event, sort_keys=True) + "\n")

    # -- shards -------------------------------------------------------------------------

    def shard_path(self, i: int) -> Path:
        return self.shards_dir / shard_name(i)

    def plan(self, shards: list[list[int]]) -> Plan:
        """Check every shard the manifest lists (file present, checksum) and adopt finished shard files it
        does not list yet (a driver killed between a worker's rename and the manifest update)."""
        self.shards_dir.mkdir(exist_ok=True)
        listed = self.manifest["shards"]
        todo, done, notes = [], 0, []
        for i, seeds in enumerate(shards):
            name, path = shard_name(i), self.shard_path(i)
            entry = listed.get(name)
            if entry is not None and not path.exists():
                notes.append(f"shard {name} (seeds {format_seeds(seeds)}) was deleted; recomputing it")
                self.log(event="missing", shard=name)
                del listed[name]
            elif entry is not None and sha256_file(path) != entry["sha256"]:
                notes.append(f"shard {name} (seeds {format_seeds(seeds)}) fails its SHA-256 checksum; recomputing it")
                self.log(event="corrupt", shard=name)
                path.unlink()
                del listed[name]
            elif entry is None and path.exists():
                if self._adoptable(path, seeds):
                    listed[name] = self.entry(i, seeds, path, seconds=None, worker="adopted")
                    notes.append(f"shard {name} was finished but not yet in the manifest; kept")
                else:
                    path.unlink()
            if name in listed:
                done += 1
            else:
                todo.append(i)
        self.save()
        return Plan(todo, done, notes)

    def _adoptable(self, path: Path, seeds: list[int]) -> bool:
        try:
            got = read_samples(path)
        except PatchdbError:
            return False
        return (got["metadata"].get("settings_id") == self.manifest["settings_id"]
                and got["seeds"].tolist() == list(seeds))

    @staticmethod
    def entry(i: int, seeds: list[int], path: Path, seconds: float | None, worker: str, cpu: float | None = None) -> dict:
        return {"index": i, "seeds": format_seeds(seeds), "count": len(seeds), "sha256": sha256_file(path),
                "bytes": path.stat().st_size, "seconds": seconds, "cpu_seconds": cpu, "worker": worker}

    def record(self, i: int, seeds: list[int], seconds: float, worker: str, cpu: float | None = None) -> None:
        """A worker finished shard ``i``: log it, checksum it, list it in the manifest. Logged first, so
        a driver killed in between leaves a shard that is logged or adopted on rerun, never neither."""
        path = self.shard_path(i)
        self.log(event="shard", shard=shard_name(i), seconds=round(seconds, 3), worker=worker)
        self.manifest["shards"][shard_name(i)] = self.entry(i, seeds, path, seconds, worker, cpu)
        self.save()


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class RunSet:
    """A run folder read as one set of samples, in the run's seed order."""

    samples: np.ndarray  # (N, C, H, W) float32 in [-1, 1]
    seeds: np.ndarray  # (N,) int64
    labels: np.ndarray | None  # (N,) int64, None when unconditional
    metadata: dict  # the manifest
    missing: list[int]  # seeds whose shard is not finished (empty for a complete run)

    def __len__(self) -> int:
        return len(self.seeds)


def open_run(folder: str | os.PathLike, partial: bool = False, verify: bool = True) -> RunSet:
    """Read a run folder as one set (``samples``, ``seeds``, ``labels``, ``metadata``).

    Refuses an unfinished run unless ``partial`` (then only finished shards are read and ``missing``
    lists the rest); ``verify`` checks every shard's SHA-256 against the manifest.
    """
    run = RunFolder(folder)
    if not run.path.is_dir():
        raise PatchdbError(f"{run.path} is not a run folder (patchdb sample --out FOLDER makes one); check the path")
    manifest = run.read_manifest()
    if manifest is None:
        raise PatchdbError(f"{run.path} has no {MANIFEST}; it is not a patchdb run folder")
    from .seeds import parse_seeds

    shards = split_shards(parse_seeds(manifest["seeds"]), manifest["shard_size"])
    parts, missing = [], []
    for i, seeds in enumerate(shards):
        entry, path = manifest["shards"].get(shard_name(i)), run.shard_path(i)
        if entry is None or not path.exists():
            missing.extend(seeds)
            continue
        if verify and sha256_file(path) != entry["sha256"]:
            raise PatchdbError(f"{path} fails its SHA-256 checksum; rerun the sample command to recompute it")
        parts.append(read_samples(path))
    if missing and not partial:
        raise PatchdbError(f"{run.path} is unfinished: {len(missing)} of {manifest['count']} samples missing; "
                           "rerun the same patchdb sample command to finish it")
    if not parts:
        raise PatchdbError(f"{run.path} has no finished shard yet")
    labels = np.concatenate([p["labels"] for p in parts])
    return RunSet(np.concatenate([p["samples"] for p in parts]), np.concatenate([p["seeds"] for p in parts]),
                  None if (labels < 0).all() else labels, manifest, missing)


__all__ = ["SAMPLES_FORMAT", "RunFolder", "RunSet", "open_run", "shard_name", "split_shards"]


def load_samples(path: str | os.PathLike, partial: bool = False) -> RunSet:
    """A run folder (:func:`open_run`) or a one-file ``.h5`` sample set, as a :class:`RunSet`."""
    path = Path(path)
    if path.is_dir():
        return open_run(path, partial=partial)
    got = read_samples(path)
    labels = got["labels"]
    return RunSet(got["samples"], got["seeds"], None if (labels < 0).all() else labels, got["metadata"], [])
