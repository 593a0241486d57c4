"""Chapter 4's planner figure draws exactly the planner's ranking (parcourse.chapters.planner_figure)."""

from parcourse.chapters import planner_figure as pf
from parcourse.planner import plan
from parcourse.planner.hardware import GIB


def test_the_bars_are_the_planners_five_best_fitting_configurations():
    hw = pf.cluster(64, 40, 400)
    best = [c for c in plan(pf.model_shape("13 B"), hw, pf.BATCH) if c.fits][:pf.SHOWN]
    memory = pf.best_configurations("13 B", 64, 40, 400, pf.SHOW[0])
    time = pf.best_configurations("13 B", 64, 40, 400, pf.SHOW[1])
    bars = [name for name in memory if not name.startswith("device memory")]
    assert bars == list(time) and len(bars) == pf.SHOWN
    for i, (name, c) in enumerate(zip(bars, best)):
        assert name.startswith(f"{i + 1}. {c.config.label()}: ")
        assert memory[name].x == [0, c.memory["total"] / GIB] and memory[name].y == [-i, -i]
        assert time[name].x == [0, c.time["step"]]
        assert c.memory["total"] <= 40 * GIB
    assert memory["device memory (40 GiB)"].x == [40, 40]


def test_the_network_and_the_memory_reach_the_planner():
    hw = pf.cluster(64, 40, 100)
    assert hw.memory == 40 * GIB and hw.inter_beta == 8 / 100e9 and hw.devices == 64
    slow, fast = (pf.best_configurations("13 B", 64, 80, net, pf.SHOW[1]) for net in (100, 800))
    assert max(s.x[1] for s in fast.values()) < max(s.x[1] for s in slow.values())


def test_where_nothing_fits_the_figure_says_how_much_the_smallest_needs():
    result = pf.best_configurations("70 B", 8, 16, 400, pf.SHOW[0])
    assert list(result) == ["nothing fits: the smallest needs 155 GiB per device"]
