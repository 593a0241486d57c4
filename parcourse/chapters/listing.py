"""Package code on the book's pages (every chapter): :func:`show` displays the source of a
function, class or method as a highlighted listing, titled with where it lives, and
folded behind that title when it is long. The same output works on the site (HTML) and in
a kernel on Colab; its plain-text form is the source itself.
"""

import html
import inspect

from IPython.display import display
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

LONG = 30  # lines: a longer listing starts folded


class Listing:
    """One object's source, with an HTML form (highlighted, inline styles: no stylesheet
    needed) and a plain-text form (the source)."""

    def __init__(self, obj, long: int = LONG):
        self.source = inspect.getsource(obj)
        self.where = f"{obj.__module__}.{obj.__qualname__}"
        self.lines = self.source.count("\n") + (not self.source.endswith("\n"))
        self.long = long

    def __repr__(self) -> str:
        return self.source

    def _repr_html_(self) -> str:
        code = highlight(self.source, PythonLexer(),
                         HtmlFormatter(noclasses=True, nobackground=True))
        title = (f"<code>{html.escape(self.where)}</code> "
                 f"<span style='opacity:0.7'>({self.lines} lines)</span>")
        folded = " open" if self.lines <= self.long else ""
        return (f"<details class='parcourse-listing'{folded}><summary>{title}</summary>"
                f"{code}</details>")


def show(obj, long: int = LONG) -> None:
    """Display ``obj``'s source as a :class:`Listing` (folded when over ``long`` lines)."""
    display(Listing(obj, long))
