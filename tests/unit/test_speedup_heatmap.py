"""parcourse.chapters.speedup_heatmap: chapter 3's speed-up map drawn, on a synthetic map."""

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402

from parcourse.chapters import scaling, speedup_heatmap  # noqa: E402

HIDDENS, BATCHES = [64, 256, 1024], [64, 512, 4096]
C = 1e-10  # s per sample and parameter


def synthetic_map(comm: float = 1e-3) -> scaling.SpeedupMap:
    """Exactly the model: one process c·B·P, a worker's share twice that, K = 2 workers
    c·B·P (each with half the batch at twice c) plus ``comm`` seconds of all-reduce."""
    cells = [(h, b) for h in HIDDENS for b in BATCHES]
    one = {(h, b): C * b * scaling.parameter_count(h) for h, b in cells}
    return scaling.SpeedupMap(HIDDENS, BATCHES, 2, machine=one, worker={k: 2 * t for k, t in one.items()},
                              parallel={k: t + comm for k, t in one.items()}, compute=dict(one), seconds=1.0)


def test_cell_edges_are_halfway_between_points_on_a_log_axis():
    assert speedup_heatmap.cell_edges([1, 100]) == pytest.approx([0.1, 10, 1000])
    assert speedup_heatmap.cell_edges(HIDDENS) == pytest.approx([32, 128, 512, 2048])
    with pytest.raises(ValueError, match="at least two"):
        speedup_heatmap.cell_edges([64])


def test_panels_hold_the_two_baselines():
    speedups = synthetic_map()
    machine, worker = speedup_heatmap.panels(speedups, 2, C, 2 * C)
    assert machine["title"] == "2 workers vs one process\nwith all 2 cores"
    assert (machine["c_single"], machine["c_worker"]) == (C, 2 * C) == (worker["c_worker"] / 2, worker["c_single"])
    assert np.all(machine["measured"] < 1)  # the same compute, plus the all-reduce
    assert worker["measured"] == pytest.approx(2 * machine["measured"])
    assert worker["measured"].shape == (len(BATCHES), len(HIDDENS))


def test_colour_span_stays_between_2_and_8():
    assert speedup_heatmap.colour_span([np.array([[1.1, 0.9]])]) == 2.0
    assert speedup_heatmap.colour_span([np.array([[3.0, 0.5]])]) == 3.0
    assert speedup_heatmap.colour_span([np.array([[0.01]])]) == 8.0


def test_the_figure_shows_every_cell_its_value_and_the_model_boundary():
    speedups = synthetic_map()
    fig = speedup_heatmap.speedup_figure(speedups, c_machine=C, c_device=2 * C, alpha=1e-4, beta=1e-9,
                                         cores=2, title="this machine")
    assert isinstance(fig, Figure)
    left, right, bar = fig.axes
    for ax, baseline in ((left, "machine"), (right, "worker")):
        cells = [t for t in ax.texts if tuple(t.get_position()) != (0.5, 0.02)]
        values = speedups.speedup(baseline)
        assert [t.get_text() for t in cells[:9]] == [f"{v:.2f}" for v in values.ravel()]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["64", "256", "1024"]
        np.testing.assert_allclose(np.asarray(ax.collections[0].get_array()).reshape(3, 3), values)
    assert left.get_ylabel() == "global batch B" and right.get_title().startswith("2 workers vs one worker")
    # against one process with all the cores the workers never win: no S = 1 line, a note
    assert any(t.get_text() == "model: S below 1 everywhere here" for t in left.texts)
    # against one worker alone the model crosses S = 1 in this map: a contour and its legend
    assert right.get_legend() is not None and len(right.collections) == 2
    assert bar.get_ylabel().startswith("measured speedup") and fig._suptitle.get_text() == "this machine"
    assert [t.get_text() for t in bar.get_yticklabels()] == ["0.5", "1", "2"]
