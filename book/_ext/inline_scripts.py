"""Write each inline script into the site's pages once.

Sphinx 7.4 writes an inline script (``app.add_js_file(None, body=...)``) twice into every
page when an extension registers it after the HTML builder has started:
``Sphinx.add_js_file`` hands the script to the builder with the file name ``None``, and
just before writing, ``StandaloneHTMLBuilder.prepare_writing`` adds every registered
script again with the file name ``''``. The two copies compare unequal, so both stay.

sphinx-thebe, which Jupyter Book always loads, registers its settings that way when the
environment starts reading (``env-before-read-docs``), and the second copy of
``const THEBE_JS_URL = ...`` stops with "Identifier 'THEBE_JS_URL' has already been
declared" in the browser's console; sphinx-togglebutton's selector (``var``) was written
twice too, harmlessly.

When writing starts (``write-started``, Sphinx >= 7.3), after every extension has
registered its scripts, this extension rebuilds the builder's list of scripts from the
registry with ``init_js_files``, which names every inline script ``''``: the re-adding in
``prepare_writing`` then finds each of them already there. ``tests/site/test_site_browser.py``
opens every page of the built book and fails on any console error.
"""

from __future__ import annotations


def register_scripts_once(app, builder) -> None:
    """Rebuild the HTML builder's script list from the registry, one entry per script."""
    if hasattr(builder, "init_js_files"):  # HTML builders only
        builder.init_js_files()


def setup(app):
    """Register the extension: one copy of each inline script per page."""
    app.connect("write-started", register_scripts_once, priority=900)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
