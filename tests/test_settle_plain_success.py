"""`Settlement.complete` with nothing to record: a served success without a cost, of a
key whose error share is zero, does not even look up the key's row; once a key had an
error, its successes are recorded again (they lower its error share), as before."""

from __future__ import annotations

from typing import Any

from abuseguard import Guard, Policy, RequestInfo
from abuseguard.engine import layout as L


class CountingIndex:
    """The key table's index, counting its lookups."""

    def __init__(self, index: Any) -> None:
        self.index = index
        self.lookups = 0

    def get(self, key: object, default: Any = None) -> Any:
        self.lookups += 1
        return self.index.get(key, default)


def _guard_counting_lookups() -> tuple[Guard, CountingIndex]:
    guard = Guard(Policy(secret="s"))
    counting = CountingIndex(guard.settlement.key_index)
    guard.settlement.key_index = counting  # type: ignore[assignment]
    return guard, counting


def _error_share(guard: Guard, info: RequestInfo) -> float:
    table = guard.engine.tables[L.KIND_KEY]
    row = table.find(guard.identity_of(info)[0])
    assert row is not None
    return float(table.data[row, L.F_ERR])


def test_a_plain_success_of_a_clean_key_looks_up_nothing() -> None:
    guard, counting = _guard_counting_lookups()
    for i in range(50):
        info = RequestInfo(ip=f"198.51.100.{i}", key=f"sk-{i}", ts=100.0 + i)
        guard.complete(info, guard.check(info), status=200)
        guard.complete(info, guard.check(info), status=201)
    assert counting.lookups == 0


def test_an_error_a_cost_or_a_usage_is_still_recorded() -> None:
    guard, counting = _guard_counting_lookups()
    info = RequestInfo(ip="198.51.100.7", key="sk-costly", ts=100.0)
    guard.complete(info, guard.check(info), status=200, cost=3.0)
    guard.complete(info, guard.check(info), status=200, usage=40.0)
    assert counting.lookups == 2


def test_the_successes_of_a_key_that_had_an_error_lower_its_error_share() -> None:
    guard, counting = _guard_counting_lookups()
    info = RequestInfo(ip="198.51.100.7", key="sk-flaky", ts=100.0)
    guard.complete(info, guard.check(info), status=500)
    after_error = _error_share(guard, info)
    assert after_error > 0.0
    for i in range(1, 4):
        info = RequestInfo(ip="198.51.100.7", key="sk-flaky", ts=100.0 + i)
        guard.complete(info, guard.check(info), status=200)
    assert 0.0 < _error_share(guard, info) < after_error
    assert counting.lookups == 4
    # Another key's plain success still looks up nothing.
    other = RequestInfo(ip="198.51.100.8", key="sk-steady", ts=110.0)
    guard.complete(other, guard.check(other), status=200)
    assert counting.lookups == 4
