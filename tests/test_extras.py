"""Installs that match the use: the memory backend needs neither redis nor hiredis, and each
optional part that is missing says which extra to install."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_without(module: str, code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter where importing ``module`` fails, as when its
    extra is not installed."""
    prelude = f"import sys; sys.modules[{module!r}] = None\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


def test_redis_is_an_extra_not_a_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(dep.startswith("redis") for dep in project["dependencies"])
    assert any(
        dep.startswith("redis[hiredis]") for dep in project["optional-dependencies"]["redis"]
    )
    assert any(dep.startswith("mmdb-writer") for dep in project["optional-dependencies"]["sim"])
    # An SPDX expression, not the table setuptools warns about at install.
    assert project["license"] == "Apache-2.0"


def test_the_memory_backend_decides_without_redis() -> None:
    result = run_without(
        "redis",
        "from abuseguard import Guard, Policy, RequestInfo\n"
        "guard = Guard(Policy())\n"
        "print(guard.check(RequestInfo(ip='192.0.2.1', ts=1.0)).action.value)\n"
        "print(any(name == 'redis' or name.startswith('redis.') for name in sys.modules"
        " if sys.modules[name] is not None))\n",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["allow", "False"]


def test_a_redis_uri_without_redis_names_the_extra() -> None:
    result = run_without(
        "redis",
        "from abuseguard.errors import ConfigError\n"
        "from abuseguard.backends.base import backend_from_uri\n"
        "try:\n"
        "    backend_from_uri('redis://127.0.0.1:6379/0')\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n",
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'abuseguard[redis]'" in result.stdout


def test_simulated_databases_without_the_writer_name_the_extra(tmp_path: Path) -> None:
    result = run_without(
        "mmdb_writer",
        "from abuseguard.cli import main\n"
        f"sys.exit(main(['simulate', '--hours', '0.01', '--mmdb-dir', {str(tmp_path)!r},"
        f" '-o', {str(tmp_path / 't.jsonl')!r}, '-q']))\n",
    )
    assert result.returncode == 2
    assert "pip install 'abuseguard[sim]'" in result.stderr
