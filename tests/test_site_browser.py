"""A static figure of parcourse.widgets in a real browser, offline.

A one-page book (myst-nb, the book's theme and its offline_js extension) holds the
precomputed figure; headless Chromium opens it with every request outside the local
server blocked, and moving a slider must redraw the plot without a console error.
Needs Chromium at /usr/bin/chromium (Debian: ``apt-get install chromium``).
"""

import http.server
import threading
from functools import partial
from pathlib import Path

import nbformat
import numpy as np
import pytest

from parcourse import perf, widgets

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]
FAKE_AMD_LOADER = ("window.define = function () { window.amdDefines = (window.amdDefines || 0)"
                   " + 1; }; window.define.amd = {};")  # what require.js puts on a page

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)")


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PLOTTED = "document.querySelector('.parcourse-explore-plot').data"  # Plotly's traces


def speedups(p, k_max):
    K = np.arange(1, k_max + 1)
    return {"Amdahl": (K, perf.amdahl_speedup(p, K)),
            "Gustafson": (K, perf.gustafson_speedup(p, K))}


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Build the one-page book and serve it on 127.0.0.1; yields its URL."""
    from sphinx.cmd.build import build_main

    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("html")
    shown = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(widgets, "display", shown.append)
        widgets.explore(speedups, {"p": [0.5, 0.9, 0.99], "k_max": [4, 16, 64]},
                        title="Speedup", x_label="K", y_label="S", static=True)
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Figure"),
        nbformat.v4.new_code_cell("explore(...)", outputs=[nbformat.v4.new_output(
            "display_data", data={"text/html": shown[0].data, "text/plain": "figure"})])],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}, "language_info": {"name": "python"}})
    nbformat.write(nb, src / "index.ipynb")
    (src / "conf.py").write_text(f"import sys\nsys.path.insert(0, {str(ROOT / 'book/_ext')!r})\n"
                                 'extensions = ["myst_nb", "offline_js"]\n'
                                 'html_theme = "sphinx_book_theme"\n'
                                 # without a mode the theme logs a console error itself
                                 'html_context = {"default_mode": "light"}\n'
                                 'nb_execution_mode = "off"\n')
    assert build_main(["-q", "-W", "-b", "html", str(src), str(out)]) == 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(out)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


@pytest.mark.parametrize("amd", [False, True], ids=["plain page", "page with an AMD loader"])
def test_slider_redraws_the_precomputed_figure_offline(site, amd, tmp_path):
    from playwright.sync_api import sync_playwright

    errors, outside = [], []

    def local_only(route):
        if route.request.url.startswith(site):
            return route.continue_()
        outside.append(route.request.url)
        return route.abort()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.route("**/*", local_only)
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            page.on("pageerror", lambda e: errors.append(str(e)))
            if amd:
                page.add_init_script(FAKE_AMD_LOADER)
            page.goto(site + "index.html", wait_until="load")
            page.wait_for_function(f"{PLOTTED} !== undefined")
            before = page.evaluate(f"{PLOTTED}.map(t => t.y)")
            page.locator("input[data-param=p]").focus()
            page.keyboard.press("ArrowRight")  # p: 0.5 → 0.9
            page.wait_for_function(f"{PLOTTED}[0].y[3] !== {before[0][3]}")
            after = page.evaluate(f"{PLOTTED}.map(t => t.y)")
            label = page.locator("input[data-param=p] + output").text_content()
            page.screenshot(path=str(tmp_path / "figure.png"))
            amd_defines = page.evaluate("window.amdDefines || 0")
        finally:
            browser.close()
    assert errors == [] and outside == []
    assert label == "0.9"
    assert after[0] == pytest.approx(list(perf.amdahl_speedup(0.9, np.arange(1, 5))), rel=1e-5)
    assert after[1] == pytest.approx(list(perf.gustafson_speedup(0.9, np.arange(1, 5))), rel=1e-5)
    assert after != before and amd_defines == 0
