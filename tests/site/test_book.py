"""The book: its table of contents mirrors the source document, every notebook starts with
the same install cell, the site builds with Sphinx warnings treated as errors, and every
notebook page links to its notebook on Colab and Binder and for download.

The build itself runs once per test run (the ``book_build`` fixture in conftest.py);
tests/site/test_site_browser.py opens its pages in a real browser."""

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest
import yaml

from book_pages import NOTEBOOK_PAGES, SPECIAL_PAGES, TOC_PAGES, built_pages

ROOT = Path(__file__).resolve().parents[2]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
PAGES = [entry["file"] for part in TOC["parts"] for entry in part["chapters"]]
PARTS = {part["caption"]: [entry["file"] for entry in part["chapters"]] for part in TOC["parts"]}
NOTEBOOKS = sorted(ROOT.glob("book/**/*.ipynb"))

SEED_SECTIONS = [  # number, English title, the source document's Chinese title
    (1, "Background", "背景介绍"),
    (2, "Core concepts", "核心概念与联系"),
    (3, "Core algorithms", "核心算法原理"),
    (4, "Mathematical model", "数学模型和公式"),
    (5, "Project practice", "项目实践"),
    (6, "Applications", "实际应用场景"),
    (7, "Tools and resources", "工具和资源推荐"),
    (8, "Summary and outlook", "总结"),
    (9, "FAQ", "常见问题与解答"),
]


def install_cell() -> str:
    url = CONFIG["repository"]["url"]
    return ("# On Colab or Kaggle: install parcourse (keeps the preinstalled torch). "
            "Locally, `make book` already did.\n"
            "import importlib.util\n"
            'if importlib.util.find_spec("parcourse") is None:\n'
            f'    %pip install -q "parcourse @ git+{url}"')


def first_markdown_cell(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    return "".join(next(c for c in cells if c["cell_type"] == "markdown")["source"])


def title_of(path: Path) -> str:
    return first_markdown_cell(path).splitlines()[0]


def test_toc_has_the_preface_then_the_nine_chapters_in_order():
    assert PAGES[0] == "book/preface"
    chapters = PARTS["Chapters"]
    assert PAGES[1:10] == chapters and len(chapters) == 9
    for path, (number, english, chinese) in zip(chapters, SEED_SECTIONS):
        notebook = ROOT / f"{path}.ipynb"
        assert notebook.exists(), notebook
        title = title_of(notebook)
        assert title == f"# {number}. {english}", title  # short: one line in the sidebar
        subtitle = first_markdown_cell(notebook).splitlines()[2]  # the source's title
        assert subtitle.startswith("*") and chinese in subtitle, subtitle


APPENDIX_PAGES = ["book/appendix/errata", "book/appendix/glossary", "book/references"]
SHARED_CITATION_KEYS = [  # every chapter cites these works with exactly these keys
    "amdahl1967", "gustafson1988", "williams2009roofline", "thakur2005collectives",
    "patarasuk2009ring", "goyal2017accurate", "sergeev2018horovod", "huang2019gpipe",
    "narayanan2019pipedream", "shoeybi2019megatron", "rajbhandari2020zero", "li2020ddp",
    "tillet2019triton", "simonyan2014vgg",
]


def test_appendix_has_the_errata_the_glossary_and_the_references_after_the_chapters():
    appendix = PARTS["Appendix"]
    assert [page for page in appendix if page in APPENDIX_PAGES] == APPENDIX_PAGES
    assert PAGES.index(APPENDIX_PAGES[0]) > PAGES.index(PARTS["Chapters"][-1])
    for page in APPENDIX_PAGES:
        assert (ROOT / f"{page}.ipynb").exists() or (ROOT / f"{page}.md").exists(), page
    assert "```{glossary}" in (ROOT / "book/appendix/glossary.md").read_text()
    assert "```{bibliography}" in (ROOT / "book/references.md").read_text()


def test_bibliography_defines_every_shared_citation_key_once():
    assert CONFIG["bibtex_bibfiles"] == ["book/references.bib"]
    keys = re.findall(r"^@\w+\{([^,]+),", (ROOT / "book/references.bib").read_text(), re.M)
    assert len(keys) == len(set(keys)), "a key is defined twice"
    assert set(SHARED_CITATION_KEYS) <= set(keys)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_starts_with_the_install_cell_and_stores_no_outputs_and_ids(notebook):
    nb = json.loads(notebook.read_text())
    first = nb["cells"][0]
    assert first["cell_type"] == "code" and "".join(first["source"]) == install_cell()
    assert "remove-cell" in first["metadata"].get("tags", [])  # shown on Colab, not on the site
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None
    ids = [cell.get("id") for cell in nb["cells"]]  # nbformat 4.5: every cell has its own id
    assert None not in ids and len(set(ids)) == len(ids)


def test_requirements_never_pin_torch_exactly():
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    torch_line = next(line for line in lines if re.match(r"torch\b", line))
    assert ">=" in torch_line and "==" not in torch_line


def test_book_builds_with_warnings_as_errors(book_build):
    done = book_build
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
    # every page of _toc.yml is built, and nothing else (tests/site/test_site_browser.py opens
    # the pages of _toc.yml, so it sees the whole site)
    assert sorted(built_pages(ROOT / "_build/html")) == sorted(TOC_PAGES + SPECIAL_PAGES)
    chapter = (ROOT / "_build/html/book/03_algorithms/algorithms.html").read_text()
    assert "_static/mathjax/tex-mml-chtml.js" in chapter  # formulas render offline
    assert "cdn.jsdelivr.net/npm/mathjax" not in chapter
    assert (ROOT / "_build/html/_static/mathjax/tex-mml-chtml.js").is_file()
    index = (ROOT / "_build/html/book/intro.html").read_text()
    for path in PAGES:
        assert f'href="{Path(path).relative_to("book")}.html"' in index or \
               f'{Path(path).name}.html' in index, path


# --- launch and download buttons -------------------------------------------------------

class Buttons(HTMLParser):
    """The header's launch links (title "Launch on …") and download links."""

    def __init__(self):
        super().__init__()
        self.launch, self.download = {}, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        title = attrs.get("title") or ""
        if tag == "a" and title.startswith("Launch on "):
            self.launch[title.removeprefix("Launch on ")] = attrs["href"]
        elif tag == "a" and "download" in (attrs.get("class") or ""):
            self.download.append(attrs["href"])


def expected_launch_links(docname: str) -> dict[str, str]:
    """The launch link of each service configured in _config.yml, for one notebook page."""
    repo = urlsplit(CONFIG["repository"]["url"])
    assert repo.netloc == "github.com", "Colab and Binder links need a GitHub repository"
    org_repo = repo.path.strip("/")
    branch = CONFIG["repository"].get("branch", "main")
    launch = CONFIG["launch_buttons"]
    tree = {"classic": "tree", "jupyterlab": "lab/tree"}[launch.get("notebook_interface",
                                                                    "classic")]
    notebook = f"{docname}.ipynb"  # the repository root holds the book (no path_to_book)
    links = {}
    if launch.get("colab_url"):
        links["Colab"] = f"{launch['colab_url'].rstrip('/')}/github/{org_repo}/blob/{branch}/{notebook}"
    if launch.get("binderhub_url"):
        links["Binder"] = (f"{launch['binderhub_url'].rstrip('/')}/v2/gh/{org_repo}/{branch}"
                           f"?urlpath={tree}/{notebook}")
    if launch.get("jupyterhub_url"):  # nbgitpuller clones the repository into the hub
        query = urlencode({"repo": CONFIG["repository"]["url"],
                           "urlpath": f"{tree}/{org_repo.split('/')[1]}/{notebook}",
                           "branch": branch}, safe="/")
        links["JupyterHub"] = f"{launch['jupyterhub_url'].rstrip('/')}/hub/user-redirect/git-pull?{query}"
    return links


def test_colab_and_binder_are_configured_for_the_repository():
    launch = CONFIG["launch_buttons"]
    assert launch["colab_url"] == "https://colab.research.google.com"
    assert launch["binderhub_url"] == "https://mybinder.org"
    assert len(NOTEBOOK_PAGES) >= 10  # the nine chapters and the errors appendix at least


@pytest.mark.parametrize("docname", NOTEBOOK_PAGES)
def test_notebook_page_launches_and_downloads_its_own_notebook(built_html, docname):
    page = built_html / f"{docname}.html"
    buttons = Buttons()
    buttons.feed(page.read_text())
    assert buttons.launch == expected_launch_links(docname)
    assert (ROOT / f"{docname}.ipynb").is_file()  # what the launch links open
    # the download button serves the notebook itself, as stored in the repository
    notebooks = [href for href in buttons.download if href.endswith(".ipynb")]
    assert len(notebooks) == 1, buttons.download
    served = (page.parent / notebooks[0]).resolve()
    assert served == (built_html / "_sources" / f"{docname}.ipynb").resolve()
    assert json.loads(served.read_text()) == json.loads((ROOT / f"{docname}.ipynb").read_text())


def test_binder_installs_cpu_torch_and_the_package_with_its_lower_bounds():
    """Binder reads binder/: the requirements are requirements.txt's own (lower bounds),
    torch comes from PyTorch's CPU index, and postBuild installs the package itself."""
    lines = [line.split("#")[0].strip()
             for line in (ROOT / "binder/requirements.txt").read_text().splitlines()]
    lines = [line for line in lines if line]
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines
    assert "-r ../requirements.txt" in lines  # one list of requirements, not two
    assert (ROOT / "binder" / "../requirements.txt").resolve() == ROOT / "requirements.txt"
    assert not [line for line in lines if not line.startswith("-")], lines
    post_build = ROOT / "binder/postBuild"
    assert post_build.stat().st_mode & 0o111  # Binder runs it as a program
    assert "pip install --no-cache-dir --no-deps ." in post_build.read_text()


# --- what a reader sees: tables and flags ------------------------------------------------

class VisibleText(HTMLParser):
    """The text of a page outside code (<pre>, <code>, scripts and styles), and its tables."""

    SKIP = {"pre", "code", "script", "style"}

    def __init__(self):
        super().__init__()
        self.depth, self.text, self.tables = 0, [], 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.depth += 1
        self.tables += tag == "table"

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.depth -= 1

    def handle_data(self, data):
        if self.depth == 0:
            self.text.append(data)


def visible(page: Path) -> VisibleText:
    parser = VisibleText()
    parser.feed(page.read_text())
    return parser


@pytest.mark.parametrize("docname", TOC_PAGES)
def test_tables_from_code_render_as_tables_and_flags_keep_two_hyphens(built_html, docname):
    """A Markdown table that a cell outputs is a table, not a run of "|" (myst-nb parses
    outputs as CommonMark unless told otherwise), and "--flag" is not turned into an en
    dash by Sphinx's smart quotes."""
    text = "".join(visible(built_html / f"{docname}.html").text)
    assert not re.search(r"\|\s*(-{3,}|—+)\s*\|", text), "a table shown as text"
    flags = re.findall(r"(?<![\w-])–[a-z][a-z-]+", text)  # an en dash glued to a flag name
    assert not flags, f"flags shown with an en dash: {sorted(set(flags))[:5]}"


def test_the_errors_appendix_shows_its_messages_as_tables(built_html):
    page = visible(built_html / "book/appendix/errors.html")
    assert page.tables >= 3
    assert "--batch-size 10 cannot be split evenly over --workers 3" in "".join(page.text)


# --- what a reader sees: results, not the project's run history ----------------------------

# A chapter shows what was measured and where. The project's own targets, failed steps of
# a stored run and notes that something has not run yet belong in the README.
POST_MORTEM = [r"\bNOT met\b", r"\btargets? (?:is |are |were )?(?:not )?met\b", r"\bFAILED\b",
               r"ModuleNotFoundError", r"not (?:yet )?been run", r"stopped after \d+ ?s\b",
               r"Traceback \(most recent call last\)", r"\bbook.s target\b"]


class PageText(VisibleText):
    """All the text a reader can see, code and cell outputs included."""

    SKIP = {"script", "style"}


@pytest.mark.parametrize("docname", TOC_PAGES)
def test_pages_show_results_not_post_mortems(built_html, docname):
    parser = PageText()
    parser.feed((built_html / f"{docname}.html").read_text())
    text = " ".join("".join(parser.text).split())
    found = [m.group(0) for p in POST_MORTEM for m in re.finditer(p, text)]
    assert not found, f"run history on a reader's page: {found[:5]}"
