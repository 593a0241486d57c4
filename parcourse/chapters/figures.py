"""Diagrams drawn with matplotlib, so that the book needs no diagram service (chapter 2).

:data:`CONCEPT_GRAPH` is the source document's concept diagram (§2.2, a Mermaid
``graph TB``), node for node and edge for edge; :func:`draw_graph` draws such a graph
top to bottom, one row per level.
"""

from __future__ import annotations

from typing import Mapping, Sequence

# node id: (English label, the source's Chinese label, row, column)
CONCEPT_NODES = {
    "A": ("Parallel computing", "并行计算", 0, 1.5),
    "B": ("Data parallelism", "数据并行", 1, 0.0),
    "C": ("Task parallelism", "任务并行", 2, 2.5),
    "D": ("Hybrid parallelism", "混合并行", 3, 0.8),
    "E": ("Deep learning\nframeworks", "深度学习框架", 1, 3.0),
}
CONCEPT_EDGES = [("A", "B"), ("A", "C"), ("A", "D"), ("A", "E"),
                 ("B", "C"), ("B", "D"), ("C", "D")]


def draw_graph(nodes: Mapping[str, tuple], edges: Sequence[tuple[str, str]], ax=None,
               width: float = 1.65, height: float = 0.5):
    """Draw boxes at ``(row, column)`` (row 0 on top) and arrows between them.

    ``nodes`` maps an id to ``(label, subtitle, row, column)``; the subtitle may be empty.
    Returns the matplotlib axes.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    unknown = {a for edge in edges for a in edge} - set(nodes)
    if unknown:
        raise ValueError(f"edges name nodes that do not exist: {sorted(unknown)}")
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.5))
    centre = {key: (col, -row) for key, (_, _, row, col) in nodes.items()}
    for key, (label, subtitle, _, _) in nodes.items():
        x, y = centre[key]
        ax.add_patch(FancyBboxPatch((x - width / 2, y - height / 2), width, height,
                                    boxstyle="round,pad=0.04", facecolor="#e8f0fb",
                                    edgecolor="#1f77b4"))
        ax.text(x, y, f"{label}\n({key})" if not subtitle else f"{label}\n{subtitle}",
                ha="center", va="center", fontsize=10)
    for a, b in edges:
        (xa, ya), (xb, yb) = centre[a], centre[b]
        ax.annotate("", xy=(xb, yb + height / 2 + 0.05), xytext=(xa, ya - height / 2 - 0.05),
                    arrowprops=dict(arrowstyle="-|>", color="#444444", lw=1.2,
                                    shrinkA=0, shrinkB=0, connectionstyle="arc3,rad=0.0"))
    xs = [c[0] for c in centre.values()]
    ys = [c[1] for c in centre.values()]
    ax.set_xlim(min(xs) - width, max(xs) + width)
    ax.set_ylim(min(ys) - 0.6, max(ys) + 0.6)
    ax.set_axis_off()
    return ax


def concept_map(ax=None):
    """The source's §2.2 diagram, with English labels and the node letters of its code."""
    nodes = {key: (english, "", row, col)
             for key, (english, _, row, col) in CONCEPT_NODES.items()}
    return draw_graph(nodes, CONCEPT_EDGES, ax=ax)
