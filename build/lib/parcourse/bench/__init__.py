"""Benchmarks behind ``python -m parcourse bench``: they print tables and ratios measured
side by side in one run, and assert nothing (chapters 3 and 5).

* :mod:`.allreduce` — bus bandwidth of each all-reduce; ping-pong fit of α and β;
* :mod:`.training` — throughput of the data-parallel strategies against DDP;
* :mod:`.pipeline` — step time and bubble of the naive split, GPipe and 1F1B.

The kernel benchmark is :mod:`parcourse.kernels.bench`.
"""
