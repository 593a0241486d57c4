"""Serve the JavaScript of the book's interactive figures from the site itself.

The static twin of every :func:`parcourse.widgets.explore` figure draws with plotly.js.
At build time this Sphinx extension copies ``plotly.min.js`` out of the installed
``plotly`` Python package into the site's ``_static/`` folder and loads it on each page
that holds such a figure, so the site works offline and no JavaScript file is kept in
git. It also sets ``PARCOURSE_FIGURES=static`` in the build's environment: the notebook
kernels that the build starts inherit it, and ``explore`` then emits the static twin
instead of live ipywidgets.

MathJax, which renders the book's formulas, is served the same way: its ES5 build and
fonts come from the ``django-static-mathjax`` package (MathJax 3 as plain static files,
no Django needed) and ``mathjax_path`` points at the local copy instead of a CDN.

Mermaid, which draws the book's diagrams (``{mermaid}`` blocks, through
sphinxcontrib-mermaid), is served the same way when that extension is loaded: its
ES-module build comes from the npm registry's ``mermaid`` package, which
``scripts/install-mermaid.sh`` unpacks into the virtual environment
(``share/parcourse/mermaid``; ``make book`` and ``make test`` run it), and
``mermaid_use_local`` points at the copy in ``_static/mermaid``. sphinxcontrib-mermaid's
optional add-ons (ELK layout, ZenUML, d3 zoom) would load from a CDN: they stay off.

plotly.js hides from an AMD loader (require.js, which myst-nb adds to pages with
ipywidgets state): some of its bundles register as an anonymous AMD module when
``define.amd`` exists, and then no global ``Plotly`` is defined. The two inline scripts
around it put ``define`` aside while it loads.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

from sphinx.errors import ExtensionError

PLOTLY_JS = "plotly.min.js"
FIGURE_MARKER = 'class="parcourse-explore"'  # what parcourse.widgets writes into a page
HIDE_AMD = ('if (typeof window.define === "function" && window.define.amd) '
            '{ window.parcourseDefine = window.define; window.define = undefined; }')
RESTORE_AMD = ('if (window.parcourseDefine) '
               '{ window.define = window.parcourseDefine; delete window.parcourseDefine; }')


def plotly_js() -> Path:
    """The ``plotly.min.js`` bundled with the installed ``plotly`` package."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or spec.origin is None:
        raise ExtensionError("the book's interactive figures need the plotly package: "
                             "pip install -r requirements-dev.txt")
    path = Path(spec.origin).parent / "package_data" / PLOTLY_JS
    if not path.is_file():
        raise ExtensionError(f"the plotly package has no {PLOTLY_JS} at {path}")
    return path


def copy_plotly_js(app) -> None:
    """Copy plotly.min.js into the HTML output's ``_static/`` folder."""
    if app.builder.format == "html":
        static = Path(app.outdir) / "_static"
        static.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(plotly_js(), static / PLOTLY_JS)


def load_on_figure_pages(app, pagename, templatename, context, doctree) -> None:
    """Load plotly.js (with AMD put aside) on each page that holds an interactive figure."""
    if FIGURE_MARKER in context.get("body", ""):
        app.add_js_file(None, body=HIDE_AMD, priority=190)
        app.add_js_file(PLOTLY_JS, priority=200)  # before myst-nb's require.js (500)
        app.add_js_file(None, body=RESTORE_AMD, priority=210)


MATHJAX_SCRIPT = "tex-mml-chtml.js"


def mathjax_es5() -> Path:
    """The folder of MathJax 3's ES5 build (script and fonts) in the installed package."""
    spec = importlib.util.find_spec("mathjax")
    folder = None
    if spec is not None and spec.submodule_search_locations:
        folder = Path(spec.submodule_search_locations[0]) / "static" / "mathjax" / "es5"
    if folder is None or not (folder / MATHJAX_SCRIPT).is_file():
        raise ExtensionError("the book's formulas need MathJax served locally: "
                             "pip install -r requirements-dev.txt (django-static-mathjax)")
    return folder


def use_local_mathjax(app, config) -> None:
    """Point Sphinx's MathJax at the copy in ``_static/mathjax`` instead of a CDN."""
    config.mathjax_path = f"mathjax/{MATHJAX_SCRIPT}"


def copy_mathjax(app) -> None:
    """Copy MathJax's ES5 build into the HTML output's ``_static/mathjax`` folder."""
    if app.builder.format == "html":
        shutil.copytree(mathjax_es5(), Path(app.outdir) / "_static" / "mathjax",
                        dirs_exist_ok=True)


MERMAID = "sphinxcontrib.mermaid"
MERMAID_MODULE = "mermaid.esm.min.mjs"


def mermaid_dist() -> Path:
    """The folder of Mermaid's ES-module build that scripts/install-mermaid.sh unpacked."""
    folder = Path(sys.prefix) / "share" / "parcourse" / "mermaid"
    if not (folder / MERMAID_MODULE).is_file():
        raise ExtensionError(f"the book's diagrams need Mermaid served locally, and {folder} "
                             f"has no {MERMAID_MODULE}: run scripts/install-mermaid.sh "
                             f"{sys.prefix} (make book runs it)")
    return folder


def use_local_mermaid(app, config) -> None:
    """Point sphinxcontrib-mermaid at the copy in ``_static/mermaid`` instead of a CDN."""
    if MERMAID in config.extensions:
        config.mermaid_use_local = f"mermaid/{MERMAID_MODULE}"  # relative to _static/


def copy_mermaid(app) -> None:
    """Copy Mermaid's ES-module build into the HTML output's ``_static/mermaid`` folder."""
    if app.builder.format == "html" and MERMAID in app.config.extensions:
        shutil.copytree(mermaid_dist(), Path(app.outdir) / "_static" / "mermaid",
                        dirs_exist_ok=True)


def setup(app):
    """Register the extension: static figures in executed notebooks; plotly.js, MathJax and
    Mermaid served locally."""
    os.environ["PARCOURSE_FIGURES"] = "static"
    plotly_js()  # fail at start, not after executing every notebook
    mathjax_es5()
    if MERMAID in app.config.extensions:
        mermaid_dist()
    app.connect("config-inited", use_local_mathjax)
    app.connect("config-inited", use_local_mermaid)
    app.connect("builder-inited", copy_plotly_js)
    app.connect("builder-inited", copy_mathjax)
    app.connect("builder-inited", copy_mermaid)
    app.connect("html-page-context", load_on_figure_pages)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
