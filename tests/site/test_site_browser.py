"""The site in a real browser, offline.

First a one-page book (myst-nb, the book's theme and its offline_js extension) holding
one precomputed figure of parcourse.widgets: moving a slider must redraw the plot, with
and without an AMD loader on the page. Then the real book, as built by the tests'
``book_build`` fixture (once per test run): every page of ``_toc.yml``, and the search
and index pages, opens in headless Chromium with every request outside the local server
blocked, and must show no console error and no failed request, a sidebar that lists
every page of ``_toc.yml``, formulas without MathJax errors, Mermaid diagrams drawn as
SVG, interactive figures whose every slider changes the plotted data, and nothing wider
than its column at 1280 and 390 px: no output block, table or table container scrolls
sideways (a table wider than the column is shown as cards, and at 1280 px none may need
to be). Screenshots of every page at both widths, and of the tops of chapters 3, 5 and 6,
go to ``_build/screenshots/``.

Needs Chromium at /usr/bin/chromium (Debian: ``apt-get install chromium``, which
``make test`` runs where it can); never a browser downloaded by Playwright.
"""

import http.server
import json
import threading
from functools import partial
from pathlib import Path

import nbformat
import numpy as np
import pytest

from book_pages import SPECIAL_PAGES, TOC, TOC_PAGES
from parcourse import perf, widgets

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
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


def serve(folder: Path):
    """An HTTP server for ``folder`` on 127.0.0.1 (a free port), in a daemon thread."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


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
    server, url = serve(out)
    yield url
    server.shutdown()
    server.server_close()


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


# --- the real book ---------------------------------------------------------------------

WAIT_MS = 30_000  # the longest any single wait in the browser may take
SCREENSHOTS = ROOT / "_build" / "screenshots"
CHAPTERS = [Path(entry["file"]).with_suffix("").as_posix() for part in TOC["parts"]
            if part["caption"] == "Chapters" for entry in part["chapters"]]
SCREENSHOT_PAGES = {CHAPTERS[n - 1]: f"chapter-{n}" for n in (3, 5, 6) if n <= len(CHAPTERS)}
SIDEBAR_LINKS = """Array.from(document.querySelectorAll('.bd-sidebar-primary nav.bd-docs-nav a[href]'))
                   .map(a => a.href.split('#')[0])"""
MATH_DONE = """() => {  // MathJax has typeset the page (or the page loads no MathJax)
    if (!document.querySelector('script[src*="mathjax/"]')) return true;
    const mathjax = window.MathJax;  // the configuration object until MathJax has loaded
    if (!mathjax || !mathjax.startup || !mathjax.startup.promise) return false;
    const latest = mathjax.startup.promise;  // a later typeset chains a new promise here
    if (window.parcourseMathWatched !== latest) {
        window.parcourseMathWatched = latest;
        window.parcourseMathDone = false;
        latest.then(() => { if (window.parcourseMathWatched === latest)
                                window.parcourseMathDone = true; },
                    (error) => { window.parcourseMathError = String(error);
                                 window.parcourseMathDone = true; });
    }
    return window.parcourseMathDone === true;
}"""
MATH_ERROR = "() => window.parcourseMathError || null"  # a typeset that failed, if any
PLOT_DATA = "el => JSON.stringify(el.data.map(t => [t.name, t.x, t.y]))"  # what Plotly draws
WIDTHS = (1280, 390)  # a laptop's window and a phone's
OVERFLOW = """() => {  // what a reader would have to scroll sideways for, or could not see
    const boxes = '.cell_output pre, .output pre, article table, .pst-scrollable-table-container';
    const wide = Array.from(document.querySelectorAll(boxes))
        .filter(e => e.scrollWidth > e.clientWidth + 1)
        .map(e => (e.innerText || '').trim().split('\\n')[0].slice(0, 80));
    const page = document.documentElement.scrollWidth;
    if (page > window.innerWidth + 1) wide.push(`the page itself: ${page} px`);
    return wide;
}"""

# A figure drawn wider than the column is shown shrunk, and its text with it: at 100 dpi a
# figure of at most 7.2 in keeps matplotlib's 10 pt text at 10 pt or more on the page
# (tests/unit/test_figure_style.py checks the code asks for no smaller text).
# _static/parcourse-tables.js shows a table wider than its column as cards; it marks the
# column's width it last fitted the tables to, and a laptop's window must need no cards.
FITTED = """() => document.documentElement.dataset.parcourseTablesFitted
                 === String((document.querySelector('article') || document.body).clientWidth)"""
CARDS = "() => Array.from(document.querySelectorAll('table.parcourse-cards'))" \
        ".map(t => (t.innerText || '').trim().split('\\n')[0].slice(0, 80))"
SHRUNK = """() => Array.from(document.querySelectorAll('.cell_output img'))
    .filter(img => img.complete && img.naturalWidth > 0
            && img.clientWidth < 0.96 * img.naturalWidth)
    .map(img => `${img.naturalWidth} px shown at ${img.clientWidth} px`)"""


@pytest.fixture(scope="module")
def book_site(built_html):
    """The built book (the book_build fixture), served on 127.0.0.1; yields its URL."""
    server, url = serve(built_html)
    yield url
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def chromium():
    """Debian's Chromium under Playwright, closed (with its driver) after the module."""
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    browser = None
    try:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                             timeout=WAIT_MS)
        yield browser
    finally:
        if browser is not None:
            browser.close()
        playwright.stop()


def open_offline(browser, url: str, site: str):
    """Open ``url`` in a fresh tab that may reach ``site`` only; returns the tab and the
    lists that collect console errors, blocked requests and failed requests."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(WAIT_MS)
    errors, outside, failed = [], [], []

    def local_only(route):
        if route.request.url.startswith(site):
            return route.continue_()
        outside.append(route.request.url)
        return route.abort()

    page.route("**/*", local_only)
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("requestfailed", lambda r: r.url.startswith(site) and failed.append(
        f"{r.url}: {r.failure}"))
    page.on("response", lambda r: r.status >= 400 and failed.append(f"{r.url}: {r.status}"))
    page.goto(url, wait_until="load", timeout=WAIT_MS)
    page.wait_for_load_state("networkidle", timeout=WAIT_MS)
    return page, errors, outside, failed


def check_figure(page, figure) -> int:
    """Move every slider of one static figure one step, and press another button of every
    choice, each from the figure's initial point (where the build checked that every
    control changes the figure) and back; each must redraw the plot with other data and
    show the new value (a slider's label, the pressed button). Returns the number of
    controls."""
    plot = figure.locator(".parcourse-explore-plot")
    plot.wait_for(state="attached")
    figure.scroll_into_view_if_needed()
    page.wait_for_function("el => Array.isArray(el.data) && el.data.length > 0",
                           arg=plot.element_handle(), timeout=WAIT_MS)
    spec = json.loads(figure.locator("script.parcourse-explore-data").text_content())

    def redrawn(before, back: bool = False):
        """Wait until the plot shows other data than ``before`` (``back``: the same)."""
        op = "===" if back else "!=="
        page.wait_for_function(f"el => ({PLOT_DATA})(el) {op} {json.dumps(before)}",
                               arg=plot.element_handle(), timeout=WAIT_MS)

    sliders = figure.locator("input[type=range]")
    for i in range(sliders.count()):
        slider = sliders.nth(i)
        name = slider.get_attribute("data-param")
        before = plot.evaluate(PLOT_DATA)
        at, top = int(slider.input_value()), int(slider.get_attribute("max"))
        slider.focus()
        page.keyboard.press("ArrowLeft" if at == top else "ArrowRight")
        moved = at - 1 if at == top else at + 1
        assert int(slider.input_value()) == moved, name
        redrawn(before)
        assert figure.locator(f"input[data-param='{name}'] + output").text_content() \
            == spec["labels"][name][moved]
        page.keyboard.press("ArrowRight" if at == top else "ArrowLeft")  # back to the start
        redrawn(before, back=True)
    choices = figure.locator(".parcourse-explore-choice")
    for i in range(choices.count()):
        group = choices.nth(i)
        name = group.get_attribute("data-param")
        buttons = group.locator("button")
        pressed = [buttons.nth(j).get_attribute("aria-pressed") for j in range(buttons.count())]
        assert pressed.count("true") == 1, name
        at = pressed.index("true")
        moved = at - 1 if at == buttons.count() - 1 else at + 1
        before = plot.evaluate(PLOT_DATA)
        buttons.nth(moved).click()
        redrawn(before)
        assert buttons.nth(moved).get_attribute("aria-pressed") == "true", name
        assert buttons.nth(at).get_attribute("aria-pressed") == "false", name
        assert buttons.nth(moved).text_content() == spec["labels"][name][moved]
        buttons.nth(at).click()                # back to the start, where the build checked
        redrawn(before, back=True)
    return sliders.count() + choices.count()


@pytest.mark.parametrize("docname", TOC_PAGES + SPECIAL_PAGES)
def test_page_works_offline_in_a_real_browser(chromium, book_site, docname):
    page, errors, outside, failed = open_offline(chromium, f"{book_site}{docname}.html",
                                                 book_site)
    try:
        page.wait_for_function(MATH_DONE, timeout=WAIT_MS)
        assert page.evaluate(MATH_ERROR) is None  # MathJax's typeset settled without error
        assert page.locator("mjx-merror").count() == 0  # every formula parsed
        shot = SCREENSHOT_PAGES.get(docname)
        if shot:  # the top of the page, as a reader first sees it
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / f"{shot}.png"))
        sidebar = set(page.evaluate(SIDEBAR_LINKS))
        missing = [name for name in TOC_PAGES if f"{book_site}{name}.html" not in sidebar]
        assert missing == [], f"the sidebar lacks {missing}"

        diagrams = page.locator("pre.mermaid")
        for i in range(diagrams.count()):
            diagrams.nth(i).scroll_into_view_if_needed()
            svg = diagrams.nth(i).locator("svg").first
            svg.wait_for(state="visible", timeout=WAIT_MS)
            # Mermaid draws a syntax error as an SVG too, with this role
            assert svg.get_attribute("aria-roledescription") != "error"
        figures = page.locator(".parcourse-explore")
        sliders = [check_figure(page, figures.nth(i)) for i in range(figures.count())]
        assert all(n > 0 for n in sliders)

        if shot and figures.count():  # the first figure after its sliders moved
            figures.first.screenshot(path=str(SCREENSHOTS / f"{shot}-figure.png"))
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.wait_for_function("() => Array.from(document.images).every(i => i.complete)",
                               timeout=WAIT_MS)
        for width in WIDTHS:  # nothing wider than its column; the top of the page, saved
            page.set_viewport_size({"width": width, "height": 900})
            page.evaluate("window.scrollTo(0, 0)")
            page.wait_for_function(FITTED, timeout=WAIT_MS)
            assert page.evaluate(OVERFLOW) == [], f"wider than its column at {width} px"
            if width == WIDTHS[0]:
                assert page.evaluate(CARDS) == [], "tables that fit a laptop's column as cards"
                assert page.evaluate(SHRUNK) == [], "figures drawn wider than the column"
            page.screenshot(path=str(SCREENSHOTS / f"{docname.replace('/', '-')}-{width}.png"))
        page.wait_for_load_state("networkidle", timeout=WAIT_MS)
    except Exception as failure:  # a wait that timed out often has a console error behind it
        raise AssertionError(f"{failure}\nconsole errors: {errors}\nrequests that left the "
                             f"site: {outside}\nfailed requests: {failed}") from failure
    finally:
        page.context.close()
    assert errors == [], errors
    assert outside == [], f"requests that left the site: {outside}"
    assert failed == [], failed


def test_the_site_has_diagrams_and_interactive_figures(built_html):
    """The checks above are not vacuous: the preface draws a Mermaid diagram, and at least
    one chapter holds an interactive figure."""
    pages = {name: (built_html / f"{name}.html").read_text() for name in TOC_PAGES}
    assert 'class="mermaid"' in pages["book/preface"]
    assert any('class="parcourse-explore"' in html for html in pages.values())
