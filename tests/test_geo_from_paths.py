"""GeoIntel.from_paths: the databases of a kind -> path mapping (`NetworkPolicy.databases`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from abuseguard.intel.geo import GeoIntel, IntelError

try:
    from tests import mmdb_fixtures as fx
except ModuleNotFoundError:  # tests/ run as plain directory (no __init__.py)
    import mmdb_fixtures as fx  # type: ignore[no-redef]


def test_from_paths_opens_what_the_keyword_arguments_open(tmp_path: Path) -> None:
    world = fx.build_world(tmp_path)
    given: dict[str, str | os.PathLike[str]] = {k: str(p) for k, p in world.items()}
    with (
        GeoIntel.from_paths(given, today=lambda: fx.FIXTURE_TODAY) as mapped,
        GeoIntel(**world, today=lambda: fx.FIXTURE_TODAY) as keywords,
    ):
        assert mapped.databases == keywords.databases
        for ip in fx.EXPECTED:
            assert mapped.lookup(ip) == keywords.lookup(ip)


def test_from_paths_refuses_an_unknown_kind(tmp_path: Path) -> None:
    with pytest.raises(IntelError, match="unknown database kind 'weather'"):
        GeoIntel.from_paths({"weather": tmp_path / "weather.mmdb"})
