"""Tests of parcourse.chapters.figures: the source's concept diagram, drawn without a diagram service."""

import matplotlib
import pytest

matplotlib.use("Agg")

from parcourse.chapters import figures  # noqa: E402


def test_concept_map_draws_every_node_and_edge_of_the_source_diagram():
    ax = figures.concept_map()
    assert len(ax.patches) == 5                       # A … E
    assert len(ax.texts) == 5 + 7                     # five labels, seven arrows
    labels = {t.get_text().splitlines()[-1] for t in ax.texts if t.get_text()}
    assert labels == {"(A)", "(B)", "(C)", "(D)", "(E)"}
    assert sorted(figures.CONCEPT_EDGES) == [("A", "B"), ("A", "C"), ("A", "D"), ("A", "E"),
                                             ("B", "C"), ("B", "D"), ("C", "D")]


def test_draw_graph_refuses_edges_to_missing_nodes():
    with pytest.raises(ValueError, match=r"edges name nodes that do not exist: \['Z'\]"):
        figures.draw_graph({"A": ("a", "", 0, 0)}, [("A", "Z")])
