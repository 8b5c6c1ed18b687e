"""mkdocs hooks: generated parts of pages, each in place of a marker.

``<!-- benchmark-results -->``: benchmarks/RESULTS.md (written by `make bench`). When the
file does not exist yet the page says how to produce it. Relative links and images of
RESULTS.md point into the repository, not into the site, so they become plain text (the
page names the file instead).

``<!-- cli-reference -->``: the help of the `abuseguard` command and of every subcommand,
from its argparse parser (``abuseguard.cli.build_parser``), so it cannot drift.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any

MARKER = "<!-- benchmark-results -->"
CLI_MARKER = "<!-- cli-reference -->"
CLI_WIDTH = 88
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


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps its subparsers only there
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_markdown() -> str:
    """One section per command: its help, as `abuseguard ... --help` prints it."""
    from abuseguard.cli import build_parser

    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(CLI_WIDTH)  # argparse wraps to the terminal: fix the width
    try:
        parser = build_parser()
        sections = [f"## abuseguard\n\n```text\n{parser.format_help().rstrip()}\n```\n"]
        for name, sub in _subcommands(parser).items():
            sections.append(f"## abuseguard {name}\n\n```text\n{sub.format_help().rstrip()}\n```\n")
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    return "\n".join(sections)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, results_markdown())
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_markdown())
    return markdown
