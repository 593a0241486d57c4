"""The book's pages, read from ``_toc.yml`` and found in the built site (for the tests)."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
SPECIAL_PAGES = ["genindex", "search"]  # pages Sphinx writes besides the book's own


def toc_docnames(entries) -> list[str]:
    """Every page of the table of contents (``file`` and ``glob`` entries, nested
    ``sections`` included), as Sphinx docnames (``book/preface``)."""
    names = []
    for entry in entries:
        if "file" in entry:
            names.append(Path(entry["file"]).with_suffix("").as_posix())
        for path in sorted(ROOT.glob(entry["glob"])) if "glob" in entry else []:
            names.append(path.relative_to(ROOT).with_suffix("").as_posix())
        names += toc_docnames(entry.get("sections", []))
        for part in entry.get("parts", []):
            names += toc_docnames(part.get("chapters", []))
    return names


# the root page first, then every page in the sidebar's order
TOC_PAGES = toc_docnames([{"file": TOC["root"], "parts": TOC.get("parts", []),
                           "sections": TOC.get("chapters", [])}])
NOTEBOOK_PAGES = [name for name in TOC_PAGES if (ROOT / f"{name}.ipynb").is_file()]


def built_pages(html: Path) -> list[str]:
    """The docname of every page in the built site: each ``*.html`` file outside the
    ``_static``-like folders, less ``index.html`` (a redirect to the root page)."""
    return sorted(path.relative_to(html).with_suffix("").as_posix()
                  for path in html.rglob("*.html")
                  if not any(part.startswith("_") for part in path.relative_to(html).parts)
                  and path.relative_to(html).as_posix() != "index.html")
