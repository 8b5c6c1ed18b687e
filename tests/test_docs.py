"""The documentation: generated reference up to date, mkdocs --strict, snippets, claims."""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import inspect
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
SNIPPET = """\
from starlette.applications import Starlette
from abuseguard import AbuseGuard, Policy, TokenBucket

app = Starlette(routes=[...])
app.add_middleware(AbuseGuard, policy=Policy(bucket=TokenBucket(rate="5/second", burst=10)))
"""


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"docs_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.DOTALL)


def test_reference_is_generated_from_the_current_code() -> None:
    generator = load(DOCS / "gen_reference.py")
    expected = generator.render()
    current = (DOCS / "reference.md").read_text(encoding="utf-8")
    assert current == expected, (
        "docs/reference.md is out of date with the dataclasses: run "
        "`.venv/bin/python docs/gen_reference.py` and commit docs/reference.md"
    )


def test_reference_covers_every_policy_dataclass_and_field() -> None:
    import dataclasses

    from abuseguard import policy

    text = (DOCS / "reference.md").read_text(encoding="utf-8")
    classes = [obj for obj in vars(policy).values()
               if isinstance(obj, type) and dataclasses.is_dataclass(obj)
               and obj.__module__ == policy.__name__]  # fmt: skip
    assert len(classes) >= 9
    for cls in classes:
        assert f"## {cls.__name__}\n" in text
        for field in dataclasses.fields(cls):
            if field.init:  # a field(init=False) is derived, not a setting
                assert f"| `{field.name}` |" in text


@pytest.mark.skipif(
    shutil.which("mkdocs") is None and importlib.util.find_spec("mkdocs") is None,
    reason="mkdocs is not installed (pip install -e '.[dev]')",
)
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
         "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    reference = (tmp_path / "site" / "reference" / "index.html").read_text(encoding="utf-8")
    assert "TokenBucket | None" in reference  # escaped pipes survive the tables
    assert not (tmp_path / "site" / "gen_reference.py").exists()


def test_results_hook_without_results(tmp_path: Path) -> None:
    hooks = load(DOCS / "hooks.py")
    text = hooks.results_markdown(tmp_path / "RESULTS.md")
    assert "make bench" in text
    page = hooks.on_page_markdown(f"# B\n\n{hooks.MARKER}\n", page=None)
    assert hooks.MARKER not in page


def test_results_hook_includes_the_file_without_repository_links(tmp_path: Path) -> None:
    hooks = load(DOCS / "hooks.py")
    results = tmp_path / "RESULTS.md"
    results.write_text(
        "# Results\n\n## Decision\n\n| p50 | p99 |\n| --- | --- |\n| 1 | 2 |\n\n"
        "![latency](plots/latency.png) see [the json](results.json) and "
        "[limits](https://limits.readthedocs.io/).\n",
        encoding="utf-8",
    )
    text = hooks.results_markdown(results)
    assert text.startswith("## Results\n\n### Decision")
    assert "| 1 | 2 |" in text
    assert "(figure: latency)" in text and "plots/latency.png" not in text
    assert "see the json and" in text
    assert "[limits](https://limits.readthedocs.io/)" in text


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_python_snippets_compile(path: Path) -> None:
    for block in python_blocks(path):
        ast.parse(block)


def test_readme_snippet_is_verbatim_and_works() -> None:
    assert SNIPPET in python_blocks(README)
    assert SNIPPET in python_blocks(DOCS / "index.md")
    assert SNIPPET in python_blocks(DOCS / "quickstart.md")
    namespace: dict[str, Any] = {}
    exec(compile(SNIPPET, "README.md", "exec"), namespace)
    app = namespace["app"]

    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from abuseguard.testing import ManualClock, reset_guards

    async def home(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app.router.routes[:] = [Route("/", home)]  # the `[...]` of the snippet
    clock = ManualClock()
    reset_guards(app, clock)

    async def run(n: int) -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return [await client.get("/") for _ in range(n)]

    responses = asyncio.run(run(11))
    assert [r.status_code for r in responses] == [200] * 10 + [429]
    refused = responses[-1]
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["ratelimit-policy"] == '"default";q=10;w=2'
    assert refused.headers["ratelimit"] == '"default";r=0;t=2'
    clock.advance(0.2)
    assert asyncio.run(run(1))[0].status_code == 200


def test_readme_links_resolve() -> None:
    text = README.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), f"README links to missing {target}"


# -- numbers in the prose are configured defaults: they are checked here ---------------


def _doc(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def test_claimed_defaults_identity_and_network() -> None:
    from abuseguard import NetworkPolicy, Policy
    from abuseguard.intel.geo import GeoIntel

    assert Policy().ipv6_prefix == 64 and "(/64 by default)" in _doc("concepts/identity.md")
    network = NetworkPolicy()
    assert (network.ipv4_prefix, network.ipv6_prefix) == (24, 48)
    assert "the IP's /24 (IPv4) or /48 (IPv6) by default" in _doc("concepts/identity.md")
    defaults = inspect.signature(GeoIntel).parameters
    assert defaults["reload_interval"].default == 10.0
    assert defaults["recency_half_life_days"].default == 30.0
    text = _doc("concepts/network.md")
    assert "at most every 10 seconds by default" in text and "halves every 30 days" in text


def test_claimed_defaults_websocket_and_metrics() -> None:
    from abuseguard import TokenBucket
    from abuseguard.metrics import MAX_LABEL_VALUES, NEAR_LIMIT_SHARE
    from abuseguard.policy import WebSocketPolicy

    ws = WebSocketPolicy()
    assert ws.connect == TokenBucket("30/minute", burst=10, name="ws-connect")
    assert ws.messages == TokenBucket("20/second", burst=40, name="ws-messages")
    assert (ws.max_connections, ws.max_message_bytes, ws.message_close_code) == (None, None, 1008)
    assert 'TokenBucket("30/minute", burst=10, name="ws-connect")' in _doc("websockets.md")
    assert NEAR_LIMIT_SHARE == 0.1 and MAX_LABEL_VALUES == 64
    text = _doc("observability.md")
    assert "(0.1 by default)" in text and "beyond 64 distinct" in text


def test_claimed_defaults_load_and_uvicorn(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    from abuseguard import Policy
    from abuseguard.testing import fresh_guard

    guard = fresh_guard(Policy(load_target=10))
    guard.inflight = 1000
    assert guard.engine_run.load_factor() == 0.1  # "never below a tenth"
    assert "never below a tenth" in _doc("concepts/limits.md")
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    config = uvicorn.Config(app=None)
    assert config.proxy_headers is True
    assert config.forwarded_allow_ips == "127.0.0.1,::1"
    assert "the loopback addresses `127.0.0.1,::1`" in _doc("deployment.md")
