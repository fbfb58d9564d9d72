"""Modules that can be called as their main function.

``patchdb.generate`` and ``patchdb.attribute`` name both a module and the function it holds; importing
the module sets the package attribute to the module, so the module itself forwards calls to the
function: ``patchdb.generate(...)`` works whichever was imported first.
"""

from __future__ import annotations

import sys
import types


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return getattr(self, self.__name__.rsplit(".", 1)[1])(*args, **kwargs)


def make_callable(module_name: str) -> None:
    """Let the module ``module_name`` be called as its function of the same (last) name."""
    sys.modules[module_name].__class__ = _CallableModule
