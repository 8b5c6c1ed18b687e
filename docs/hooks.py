"""mkdocs hook: put benchmarks/RESULTS.md (written by `make bench`) into the results page.

The page keeps a marker where the results go. When the file does not exist yet the page
says how to produce it. Relative links and images of RESULTS.md point into the repository,
not into the site, so they become plain text (the page names the file instead).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

MARKER = "<!-- benchmark-results -->"
RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "RESULTS.md"
_IMAGE = re.compile(r"!\[([^\]]*)\]\((?!https?://)[^)]*\)")
_LINK = re.compile(r"(?<!!)\[([^\]]*)\]\((?!https?://)[^)]*\)")


def results_markdown(path: Path = RESULTS) -> str:
    if not path.is_file():
        return (
            "No results yet: `benchmarks/RESULTS.md` does not exist in this checkout. "
            "Run `make bench` to measure on your machine and write it."
        )
    text = path.read_text(encoding="utf-8")
    text = _IMAGE.sub(lambda m: f"(figure: {m.group(1) or 'see benchmarks/'})", text)
    text = _LINK.sub(lambda m: m.group(1), text)
    # The page has its own title: demote the file's headings by one level.
    return re.sub(r"^(#{1,5}) ", r"#\1 ", text, flags=re.MULTILINE)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, results_markdown())
    return markdown
