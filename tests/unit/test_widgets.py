"""Tests of parcourse.widgets (one function, two fronts) and the book's offline_js extension."""

import html
import itertools
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import matplotlib
import pytest

from parcourse import widgets

matplotlib.use("Agg")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "book" / "_ext"))
import offline_js  # noqa: E402  (the book's Sphinx extension)

GRID = {"K": [1, 2, 4], "B": [16, 64]}


def curves(K, B):
    """A small figure whose data tells which parameters produced it."""
    return {"time": ([1, 2, 3], [K * B, K + B, K / B]),
            "ideal": widgets.Series([1, 3], [K, K], mode="markers", dash="dot")}


@pytest.fixture
def shown(monkeypatch):
    """What explore displays, instead of sending it to a notebook frontend."""
    objects = []
    monkeypatch.setattr(widgets, "display", objects.append)
    return objects


def embedded_spec(page: str) -> dict:
    match = re.search(r'<script type="application/json" class="parcourse-explore-data">'
                      r'(.*?)</script>', page, re.S)
    return json.loads(match.group(1))


def test_static_figure_evaluates_every_grid_point_exactly_once(shown):
    calls = []
    widgets.explore(lambda **p: calls.append(p) or curves(**p), GRID, title="t",
                    x_label="x", y_label="y", static=True)
    expected = [{"K": k, "B": b} for k, b in itertools.product(GRID["K"], GRID["B"])]
    assert sorted(calls, key=lambda p: (p["K"], p["B"])) == expected
    assert len(calls) == 6


def test_static_figure_embeds_every_points_data_and_one_slider_per_parameter(shown):
    widgets.explore(curves, GRID, title="Time <per> step", x_label="K", y_label="s",
                    log_x=2, log_y=True, initial={"K": 2}, static=True)
    page = shown[0].data
    spec = embedded_spec(page)
    assert spec["params"] == ["K", "B"]
    assert spec["labels"] == {"K": ["1", "2", "4"], "B": ["16", "64"]}
    assert len(spec["points"]) == 6
    for (i, k), (j, b) in itertools.product(enumerate(GRID["K"]), enumerate(GRID["B"])):
        time, ideal = spec["points"][f"{i},{j}"]
        assert time == {"name": "time", "x": [1, 2, 3], "mode": "lines", "dash": "solid",
                        "width": 2.0, "y": pytest.approx([k * b, k + b, k / b], rel=1e-6)}
        assert ideal == {"name": "ideal", "x": [1, 3], "y": [k, k], "mode": "markers",
                         "dash": "dot", "width": 2.0}
    assert spec["layout"]["title"]["text"] == "Time <per> step"
    assert spec["layout"]["yaxis"]["type"] == "log" and "dtick" not in spec["layout"]["yaxis"]
    # y runs from 1/64 to 256 over the frames: more than three decades, a tick per power
    assert spec["layout"]["yaxis"]["tickvals"] == [0.1, 1, 10, 100]
    assert spec["layout"]["yaxis"]["ticktext"] == ["0.1", "1", "10", "100"]
    assert spec["layout"]["xaxis"]["dtick"] == pytest.approx(0.30103, rel=1e-5)  # log10 2
    sliders = re.findall(r'<input type="range" min="0" max="(\d+)" step="1" value="(\d+)" '
                         r'data-param="(\w+)"', page)
    assert sliders == [("2", "1", "K"), ("1", "0", "B")]  # K starts at 2, its index 1
    assert "Plotly.react" in page and page.count('id="parcourse-explore-') == 1


def test_static_figure_escapes_html_in_its_data(shown):
    widgets.explore(lambda n: {"</script><b>": ([n], [n])}, {"n": [1]}, title="t",
                    x_label="x", y_label="y", static=True)
    page = shown[0].data
    assert page.count("</script>") == 2  # the data block's and the script's own
    assert embedded_spec(page)["points"]["0"][0]["name"] == "</script><b>"


def test_non_finite_values_become_gaps():
    [trace] = widgets._curves({"s": ([1, 2, 3], [1.0, float("nan"), float("inf")])})
    assert trace["y"] == [1.0, None, None]


def test_a_grid_above_the_limit_raises_a_clear_error_before_any_evaluation(shown):
    calls = []
    big = {"K": list(range(1, 26)), "B": list(range(1, 26))}  # 625 points
    with pytest.raises(ValueError, match=r"625 points \(25 K × 25 B\), more than the 500"):
        widgets.explore(lambda **p: calls.append(p), big, title="t", x_label="x",
                        y_label="y", static=True)
    assert calls == [] and shown == []


@pytest.mark.parametrize("grid, initial, message", [
    ({}, None, "the grid is empty"),
    ({"K": []}, None, "parameter 'K' has no values"),
    ({"not a name": [1]}, None, "must be Python identifiers"),
    ({"K": [1, 2]}, {"K": 3}, "initial value 3 of 'K' is not one of"),
    ({"K": [1, 2]}, {"B": 1}, "not in the grid"),
])
def test_bad_grids_are_refused(grid, initial, message):
    with pytest.raises(ValueError, match=message):
        widgets.explore(curves, grid, initial=initial, title="t", x_label="x", y_label="y",
                        static=True)


def test_a_slider_that_does_not_change_the_figure_at_the_start_is_refused(shown):
    def only_interleaved_uses_chunks(schedule, chunks):
        return {"t": ([0, 1], [0, chunks if schedule == "interleaved" else 0])}

    grid = {"schedule": ["1f1b", "interleaved"], "chunks": [1, 2]}
    with pytest.raises(ValueError, match=r"^slider 'chunks' does not change the figure at the "
                       r"initial point \(schedule='1f1b', chunks=1\): drop it, or start where"):
        widgets.explore(only_interleaved_uses_chunks, grid, title="t", x_label="x",
                        y_label="y", static=True)
    assert shown == []
    widgets.explore(only_interleaved_uses_chunks, grid, initial={"schedule": "interleaved"},
                    title="t", x_label="x", y_label="y", static=True)
    assert len(shown) == 1  # from where both sliders matter, the figure is built


def test_bad_results_of_fn_are_refused(shown):
    for result, message in [({}, "non-empty dict"), ({"s": ([1, 2], [1])}, "2 x values"),
                            ({"s": widgets.Series([1], [1], mode="bars")}, "mode must be")]:
        with pytest.raises(ValueError, match=message):
            widgets.explore(lambda K: result, {"K": [1]}, title="t", x_label="x",
                            y_label="y", static=True)


def test_live_control_calls_fn_with_the_sliders_values(shown):
    calls = []
    widgets.explore(lambda **p: calls.append(p) or curves(**p), GRID, title="t",
                    x_label="x", y_label="y", log_x=2, initial={"B": 64}, static=False)
    first_plot, control = shown[:2]  # outside a kernel the plot is not captured by the Output
    assert calls == [{"K": 1, "B": 64}]  # drawn once at the initial values, not the grid
    sliders = {s.description: s for s in control.children[0].children}
    assert [(s.options, s.value) for s in sliders.values()] == [
        ((("1", 1), ("2", 2), ("4", 4)), 1), ((("16", 16), ("64", 64)), 64)]
    assert [line.get_label() for line in first_plot.axes[0].lines] == ["time", "ideal"]
    assert first_plot.axes[0].xaxis.get_transform().base == 2

    sliders["K"].value = 4
    sliders["B"].value = 16
    assert calls[1:] == [{"K": 4, "B": 64}, {"K": 4, "B": 16}]
    last_plot = shown[-1]
    assert list(last_plot.axes[0].lines[0].get_ydata()) == [64, 20, 0.25]
    assert last_plot.axes[0].lines[1].get_linestyle() == "None"  # markers only


def test_y_ticks_label_both_fronts_and_only_inside_the_data(shown):
    ticks = {0: "stage 0", -1: "stage 1", -2: "stage 2", -7: "stage 7"}
    two_stages = lambda n: {"bars": ([0, n], [0, -1])}  # noqa: E731
    widgets.explore(two_stages, {"n": [1, 2]}, title="t", x_label="x", y_label="y",
                    y_ticks=ticks, static=True)
    yaxis = embedded_spec(shown[0].data)["layout"]["yaxis"]
    assert (yaxis["tickmode"], yaxis["tickvals"], yaxis["ticktext"], yaxis["zeroline"]) == (
        "array", [0, -1, -2, -7], ["stage 0", "stage 1", "stage 2", "stage 7"], False)
    widgets.explore(two_stages, {"n": [1, 2]}, title="t", x_label="x", y_label="y",
                    y_ticks=ticks, static=False)
    ax = shown[1].axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["stage 0", "stage 1"]
    assert -1.2 < ax.get_ylim()[0] < -1 and 0 < ax.get_ylim()[1] < 0.2  # not widened to -7


def test_the_environment_variable_picks_the_front(shown, monkeypatch):
    monkeypatch.setenv(widgets.ENV_VAR, "static")
    widgets.explore(curves, GRID, title="t", x_label="x", y_label="y")
    monkeypatch.delenv(widgets.ENV_VAR)
    widgets.explore(curves, GRID, title="t", x_label="x", y_label="y")
    assert "parcourse-explore" in shown[0].data
    assert type(shown[-1]).__name__ == "VBox"


# --- the book's Sphinx extension -----------------------------------------------------

def test_extension_copies_plotly_js_from_the_installed_package(tmp_path):
    app = SimpleNamespace(builder=SimpleNamespace(format="html"), outdir=str(tmp_path))
    offline_js.copy_plotly_js(app)
    copied = tmp_path / "_static" / "plotly.min.js"
    assert copied.read_bytes() == offline_js.plotly_js().read_bytes()
    assert b"Plotly" in copied.read_bytes()[:2000]


def test_extension_loads_plotly_only_on_pages_with_a_figure():
    added = []
    app = SimpleNamespace(add_js_file=lambda name, **kw: added.append((name, kw)))
    offline_js.load_on_figure_pages(app, "plain", "page.html", {"body": "<p>text</p>"}, None)
    assert added == []
    offline_js.load_on_figure_pages(app, "fig", "page.html",
                                    {"body": '<div class="parcourse-explore" id="x">'}, None)
    assert [name for name, _ in added] == [None, "plotly.min.js", None]
    priorities = [kw["priority"] for _, kw in added]
    assert priorities == sorted(priorities) and priorities[1] < 500  # before require.js
    assert "define.amd" in added[0][1]["body"]


def test_extension_in_a_sphinx_build(tmp_path, monkeypatch):
    from sphinx.cmd.build import build_main

    monkeypatch.setenv(widgets.ENV_VAR, "live")  # and restored after the test
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / "conf.py").write_text('extensions = ["offline_js"]\n')
    (src / "index.rst").write_text("Figure\n======\n\n.. toctree::\n\n   plain\n\n"
                                   ".. raw:: html\n\n   <div class=\"parcourse-explore\"></div>\n")
    (src / "plain.rst").write_text("Plain\n=====\n\nNo figure.\n")
    assert build_main(["-q", "-W", "-b", "html", str(src), str(out)]) == 0
    assert (out / "_static" / "plotly.min.js").is_file()
    index, plain = (out / "index.html").read_text(), (out / "plain.html").read_text()
    hide, load = index.index("window.parcourseDefine = "), index.index("_static/plotly.min.js")
    assert hide < load < index.index("delete window.parcourseDefine")
    assert "plotly.min.js" not in plain
    assert widgets.os.environ[widgets.ENV_VAR] == "static"  # for the notebooks it executes
    assert html.unescape(index).count("parcourse-explore") >= 1


def test_a_choice_is_a_row_of_buttons_and_a_number_a_slider(shown):
    def timeline(schedule, M):
        return {"t": ([0, 1], [M, len(schedule) * M])}
    widgets.explore(timeline, {"schedule": ["gpipe", "1f1b", "zb-h1"], "M": [2, 4]},
                    title="t", x_label="x", y_label="y", initial={"schedule": "1f1b"},
                    static=True)
    page = shown[0].data
    assert re.findall(r'data-param="(\w+)"', page) == ["schedule", "M"]
    buttons = re.findall(r'<button type="button" data-index="(\d)" aria-pressed="(\w+)">'
                         r'([\w-]+)</button>', page)
    assert buttons == [("0", "false", "gpipe"), ("1", "true", "1f1b"), ("2", "false", "zb-h1")]
    assert page.count('<input type="range"') == 1                    # M only
    assert widgets.categorical(["a", 1]) and widgets.categorical([True, False])
    assert not widgets.categorical([1, 2.5])


def test_log_ticks_read_as_numbers_not_digits():
    """Plotly labels 0.5 on a short log axis "5"; the book's ticks say 0.5, and 10⁶."""
    from parcourse.figure_data import log_ticks, tick_label

    assert log_ticks(0.16, 2.3) == [0.2, 0.5, 1, 2]
    assert [tick_label(t) for t in log_ticks(0.3, 40)] == ["0.5", "1", "2", "5", "10", "20"]
    assert [tick_label(t) for t in log_ticks(1, 1e6)] == ["1", "10", "100", "1000", "10⁴",
                                                         "10⁵", "10⁶"]
    assert tick_label(2e6) == "2·10⁶" and tick_label(5e-4) == "5·10⁻⁴"
