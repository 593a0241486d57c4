"""The book's code listings (parcourse.chapters.listing): the source itself, highlighted,
titled with where it lives, folded when long."""

import inspect

from parcourse import perf
from parcourse.chapters import listing


def test_a_listing_is_the_source_with_where_it_lives():
    shown = listing.Listing(perf.thread_scaling)
    assert repr(shown) == inspect.getsource(perf.thread_scaling)
    page = shown._repr_html_()
    assert "<code>parcourse.perf.thread_scaling</code>" in page
    assert f"({shown.lines} lines)" in page and shown.lines == len(repr(shown).splitlines())
    assert "color:" in page  # highlighted with inline styles: no stylesheet needed
    assert "def</span>" in page  # the keyword is a highlighted token


def test_short_listings_are_open_and_long_ones_folded():
    short = listing.Listing(perf.thread_scaling, long=1000)._repr_html_()
    folded = listing.Listing(perf.thread_scaling, long=1)._repr_html_()
    assert short.startswith("<details class='parcourse-listing' open>")
    assert folded.startswith("<details class='parcourse-listing'><summary>")


def _tagged():
    return "<b>bold & loud</b>"


def test_html_in_the_source_is_escaped():
    shown = listing.Listing(_tagged)._repr_html_()
    assert "<b>bold" not in shown and "&lt;b&gt;bold &amp; loud&lt;/b&gt;" in shown
