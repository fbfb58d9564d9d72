"""Seed lists written as EDM's ``--seeds``: ``0-49999,60-70,7`` (ranges inclusive, in the order given)."""

from __future__ import annotations

import re

from ..errors import PatchdbError

_PART = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_seeds(text: str) -> list[int]:
    """The seeds of a comma list of ``a`` or ``a-b`` (inclusive), in order; duplicates are refused
    (a seed names one sample, so a run holds it once)."""
    seeds: list[int] = []
    for part in str(text).split(","):
        m = _PART.match(part)
        if m is None:
            raise PatchdbError(f"--seeds '{text}': '{part.strip()}' is not a seed or a range a-b; write e.g. 0-49999,60-70")
        first, last = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
        if last < first:
            raise PatchdbError(f"--seeds '{text}': range {first}-{last} runs backwards; write {last}-{first}")
        seeds.extend(range(first, last + 1))
    if len(set(seeds)) != len(seeds):
        raise PatchdbError(f"--seeds '{text}' names some seeds twice; list each seed once")
    return seeds


def format_seeds(seeds: list[int]) -> str:
    """The shortest ``a-b,c`` text of a seed list (inverse of :func:`parse_seeds`, order kept)."""
    parts, i = [], 0
    while i < len(seeds):
        j = i
        while j + 1 < len(seeds) and seeds[j + 1] == seeds[j] + 1:
            j += 1
        parts.append(str(seeds[i]) if i == j else f"{seeds[i]}-{seeds[j]}")
        i = j + 1
    return ",".join(parts)


def seeds_option(seeds: str | None, num: int | None, first: int = 0) -> list[int]:
    """The CLI's ``--seeds`` / ``--num`` (short for ``--seeds first-(first+num-1)``, ``first`` = ``--seed``,
    default 0; ``num`` defaults to 16); ``--seeds`` excludes the other two."""
    if seeds is not None and (num is not None or first != 0):
        raise PatchdbError("--seeds with --num or --seed: --num N is short for --seeds SEED-(SEED+N-1), pass one of them")
    if seeds is not None:
        return parse_seeds(seeds)
    return list(range(first, first + (num if num is not None else 16)))
