"""parcourse: the companion package of *Parallel Computing in AI: from CPU to GPU*.

Every parallel strategy in the book is implemented here and tested against a
single-device reference; the book's notebooks only explain, call and plot.
"""

__version__ = "0.1.0"
