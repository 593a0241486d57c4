"""Data parallelism's mechanisms (chapters 3–5): every worker holds the whole model and
the gradients are summed over the workers.

* :mod:`.gradient_sync` — one all-reduce after backward, or buckets all-reduced while
  backward runs, with the all-reduces of :mod:`parcourse.collectives`;
* :mod:`.horovod` — Horovod's DistributedOptimizer, broadcasts and sums.

The strategies that train with them are in :mod:`parcourse.training`.
"""
