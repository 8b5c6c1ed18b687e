"""The benchmark report's budget verdicts read the figures the benchmarks write: the memory
per API-key client comes from bench_scale.py's ``keys`` runs (it used to find no field and
report the budget as not measured)."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import budgets  # noqa: E402


def test_memory_per_api_key_client_is_read_from_the_largest_keys_run() -> None:
    scale = {
        "keys": [
            {"clients": 10_000, "bytes_per_client": 2510.0},
            {"clients": 100_000, "bytes_per_client": 1780.0},
        ]
    }
    found = budgets._api_key_bytes(scale)
    assert found is not None
    name, value = found
    assert value == 1780.0
    assert "100,000" in name


def test_no_keys_run_is_reported_as_not_measured() -> None:
    assert budgets._api_key_bytes({"keys": []}) is None
    assert budgets._api_key_bytes({}) is None
