"""Denoisers of the machines of docs/math.md behind one contract (:mod:`.contract`).

The exact engine (:mod:`.exact`, kernels in :mod:`.kernels`), the approximate engine over an index
file (:mod:`.approx`, with the retrieval settings of :mod:`.retrieval`), top contributors for
attribution (:mod:`.contrib`) and the factory (:mod:`.factory`). Nothing here imports the sampler,
evaluation or the CLI.
"""
