"""The built site documents every public name, the CLI and each Policy field, offline.

One `mkdocs build --strict` into a temporary directory (about 5 s) serves every check.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import abuseguard
from abuseguard import testing
from abuseguard.cli import build_parser

pytest.importorskip("mkdocstrings")

ROOT = Path(__file__).resolve().parents[1]


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "docs_gen_reference", ROOT / "docs" / "gen_reference.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
         "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    return out


def page(site: Path, name: str) -> str:
    return (site / name / "index.html").read_text(encoding="utf-8")


def test_every_policy_field_has_a_description() -> None:
    gen = generator()
    for cls in gen.policy_classes():
        descriptions = gen.field_descriptions(cls)
        assert [f.name for f in dataclasses.fields(cls) if f.init] == list(descriptions)
        missing = [name for name, text in descriptions.items() if not text]
        assert not missing, f"{cls.__name__}: no sentence of its docstring names {missing}"
    reference = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    assert "| field | type | default | description |" in reference


def test_every_public_name_is_in_the_api_or_configuration_reference(site: Path) -> None:
    api = page(site, "api")
    reference = page(site, "reference")
    for name in abuseguard.__all__:
        rendered = re.search(rf'id="abuseguard\.[\w.]*\.{name}"', api) is not None
        configured = f'id="{name.lower()}"' in reference
        assert rendered or configured, f"abuseguard.{name} is in neither page"
    for name in (*testing.__all__, "guard_clock"):
        if name[0].isupper() and name.upper() == name:
            continue  # constants (DEFAULT_START) are named in the module's docs
        assert f'id="abuseguard.testing.{name}"' in api, name
    for path in ("otel.OpenTelemetryObserver", "metrics.PrometheusObserver", "logs.LogObserver"):
        assert f'id="abuseguard.{path}"' in api
    # Arguments of the middleware come from its signature and docstring.
    assert "fail_open" in api and "observers" in api


def test_cli_page_is_generated_from_the_parser(site: Path) -> None:
    cli = page(site, "cli")
    parser = build_parser()
    commands = next(
        action.choices for action in parser._actions if action.choices and action.dest == "command"
    )
    assert commands
    for name, sub in commands.items():
        assert f'id="abuseguard-{name}"' in cli
        for action in sub._actions:
            for option in action.option_strings:
                assert option in cli, f"abuseguard {name} {option}"


def test_code_is_highlighted_at_build_time_without_a_cdn(site: Path) -> None:
    quickstart = page(site, "quickstart")
    assert '<div class="highlight">' in quickstart
    assert '<span class="kn">from</span>' in quickstart  # Pygments tokens, not plain text
    assert (site / "css" / "pygments.css").is_file()
    for html in site.rglob("*.html"):
        text = html.read_text(encoding="utf-8")
        assert not re.search(r'<script[^>]+src="(https?:)?//', text), html
        assert "highlight.js" not in text, html
