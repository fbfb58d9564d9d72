"""patchdb: patch databases and the closed-form ELS machines of Kamb & Ganguli.

The names below load on first use (PEP 562), so ``import patchdb`` (and ``patchdb --help``) does not
import torch or FAISS.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: public name -> module that defines it
_EXPORTS = {
    "PatchdbError": "patchdb.errors",
    "PRESETS": "patchdb.schedule",
    "ScaleSchedule": "patchdb.schedule",
    "alpha_sigma": "patchdb.schedule",
    "parse_schedule": "patchdb.schedule",
    "Machine": "patchdb.spec",
    "Denoiser": "patchdb.denoisers.contract",
    "ExactMachine": "patchdb.denoisers.exact",
    "ApproxMachine": "patchdb.denoisers.approx",
    "Retrieval": "patchdb.denoisers.retrieval",
    "denoise": "patchdb.denoisers.factory",
    "make_denoiser": "patchdb.denoisers.factory",
    "open_index": "patchdb.indexing.reader",
    "IndexFile": "patchdb.indexing.reader",
    "generate": "patchdb.generate",  # a callable module (see patchdb._callable)
    "attribute": "patchdb.attribute",  # a callable module
    "attribute_file": "patchdb.attribute",
    "load_dataset": "patchdb.data",
    "Dataset": "patchdb.data",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'patchdb' has no attribute {name!r}")
    value = importlib.import_module(module)
    if module != f"patchdb.{name}":  # generate and attribute are modules that can be called
        value = getattr(value, name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

