"""The book: its table of contents mirrors the source document, every notebook starts with
the same install cell, and the site builds with Sphinx warnings treated as errors."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
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


def title_of(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    first_markdown = next(c for c in cells if c["cell_type"] == "markdown")
    return "".join(first_markdown["source"]).splitlines()[0]


def test_toc_has_the_preface_then_the_nine_chapters_in_order():
    assert PAGES[0] == "book/preface"
    chapters = PARTS["Chapters"]
    assert PAGES[1:10] == chapters and len(chapters) == 9
    for path, (number, english, chinese) in zip(chapters, SEED_SECTIONS):
        notebook = ROOT / f"{path}.ipynb"
        assert notebook.exists(), notebook
        title = title_of(notebook)
        assert title.startswith(f"# {number}. {english} · "), title
        assert chinese in title, title


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
def test_notebook_starts_with_the_install_cell_and_stores_no_outputs(notebook):
    nb = json.loads(notebook.read_text())
    first = nb["cells"][0]
    assert first["cell_type"] == "code" and "".join(first["source"]) == install_cell()
    assert "remove-cell" in first["metadata"].get("tags", [])  # shown on Colab, not on the site
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None


def test_requirements_never_pin_torch_exactly():
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    torch_line = next(line for line in lines if re.match(r"torch\b", line))
    assert ">=" in torch_line and "==" not in torch_line


def test_book_builds_with_warnings_as_errors():
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    done = subprocess.run([str(jupyter_book), "build", str(ROOT), "--warningiserror",
                           "--nitpick", "--keep-going"],
                          capture_output=True, text=True, timeout=1800, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
    chapter = (ROOT / "_build/html/book/03_algorithms/algorithms.html").read_text()
    assert "_static/mathjax/tex-mml-chtml.js" in chapter  # formulas render offline
    assert "cdn.jsdelivr.net/npm/mathjax" not in chapter
    assert (ROOT / "_build/html/_static/mathjax/tex-mml-chtml.js").is_file()
    index = (ROOT / "_build/html/book/intro.html").read_text()
    for path in PAGES:
        assert f'href="{Path(path).relative_to("book")}.html"' in index or \
               f'{Path(path).name}.html' in index, path
