"""`kernels.claim_and_decide`, the request path's one kernel call, against the two calls it
folds (`hashindex.claim_rows`, Python's evictions, `kernels.decide_with`): the same answers,
state and index on a sequence that fills every table and evicts, compiled and as the Python
twin; and a full table is reported before anything is decided."""

from __future__ import annotations

import inspect
import random

import numpy as np
import pytest

from abuseguard.engine import hashindex, kernel_set
from abuseguard.engine import layout as L
from abuseguard.engine.engine import Engine
from abuseguard.policy import NetworkPolicy, Policy

_POLICY = Policy(max_identities=16, network=NetworkPolicy())
_WANT_ALL = 63


def _requests(count: int, seed: int) -> list[tuple[int, tuple[int, ...], list[float | int]]]:
    """(want, hashes, the decision inputs after the rows) per request: 60 keys over tables
    of 16 rows, so every table fills and evicts; some requests without an account."""
    rng = random.Random(seed)
    ts = 1.7e9
    sequence = []
    for _ in range(count):
        ts += rng.choice((0.0, 0.01, 0.5, 3.0))
        key = rng.randrange(60)
        hashes = (
            hash(f"k:{key}"),
            hash(f"ip:{key % 40}"),
            hash(f"pfx:{key % 25}"),
            hash(f"asn:{key % 23}"),
            hash(f"persona:{key % 19}"),
        )
        want = _WANT_ALL if key % 5 else (1 << L.KIND_IP) | (1 << L.KIND_PREFIX)
        decision = [
            rng.randrange(1, 200),  # country
            rng.getrandbits(63),  # simhash
            rng.randrange(1, 5),  # template id
            rng.randrange(0, 4),  # client class
            ts,
            rng.choice((1.0, 1.0, 5.0)),  # cost
            1.0,  # load
            rng.random() * 0.2,  # anonymity
            0.0,  # geo
            0.0,  # persona mismatch
            rng.random() * 0.3,  # elicitation
            rng.choice((0.0, 1.0)),  # has content
            0.0,  # distrust
            0.0,  # NAT
        ]
        sequence.append((want, hashes, decision))
    return sequence


def _evict(engine: Engine, full_bits: int, hashes: tuple[int, ...], ts: float) -> list[int]:
    """As `EngineRun` evicts: key, account, then the network tables; the rows taken."""
    rows = [-1] * 6
    if full_bits & 1:
        rows[0] = engine.tables[0].evict_for(hashes[0], ts)
    if full_bits & 32:
        rows[5] = engine.accounts.evict_for(hashes[0], ts)
    for kind in range(1, L.N_KINDS):
        if full_bits & (1 << kind):
            rows[kind] = engine.tables[kind].evict_for(hashes[kind], ts)
    return rows


def _in_two_calls(
    engine: Engine, want: int, hashes: tuple[int, ...], rest: list[float | int]
) -> int:
    """The request as the engine ran it before `claim_and_decide`: claim, evict, decide."""
    *rows, full = engine.claim_rows(engine.index_vector, want, *hashes)
    if full:
        full_bits = sum(1 << bit for bit, row in enumerate(rows) if row == hashindex.FULL)
        evicted = _evict(engine, full_bits, hashes, float(rest[4]))
        rows = [
            new if old == hashindex.FULL else old for old, new in zip(rows, evicted, strict=True)
        ]
    r_key, r_ip, r_pfx, r_asn, r_per, r_acc = rows
    plain = engine.decide_with(
        engine.state, r_key, r_ip, r_pfx, r_asn, r_per, *rest[:4], r_acc, *rest[4:], True
    )
    return 1 if plain else 0


def _in_one_call(
    engine: Engine, want: int, hashes: tuple[int, ...], rest: list[float | int]
) -> int:
    while True:
        decided = engine.claim_and_decide(
            engine.state, engine.index_vector, want, *hashes, *rest, True
        )
        if decided >= 0:
            return int(decided)
        _evict(engine, -decided, hashes, float(rest[4]))


@pytest.mark.parametrize("implementation", ["compiled", "twin"])
def test_one_call_decides_and_claims_as_the_two_calls_did(implementation: str) -> None:
    kernels = kernel_set.compiled() if implementation == "compiled" else kernel_set.python_twin()
    two_calls = Engine(_POLICY, implementation=kernels)
    one_call = Engine(_POLICY, implementation=kernels)
    # The index blocks' salts are drawn per engine: start both from the same words.
    np.copyto(one_call.index_vector, two_calls.index_vector)
    answers = set()
    for want, hashes, rest in _requests(800, seed=3):
        expected = _in_two_calls(two_calls, want, hashes, rest)
        assert _in_one_call(one_call, want, hashes, rest) == expected
        answers.add(expected)
    assert answers == {0, 1}  # plain allows and other decisions both
    assert [t.evictions > 0 for t in (*two_calls.tables, two_calls.accounts)] == [True] * 6
    assert np.array_equal(one_call.state, two_calls.state, equal_nan=True)
    assert np.array_equal(one_call.index_vector, two_calls.index_vector)


@pytest.mark.parametrize("implementation", ["compiled", "twin"])
def test_a_full_table_is_reported_before_anything_is_decided(implementation: str) -> None:
    kernels = kernel_set.compiled() if implementation == "compiled" else kernel_set.python_twin()
    engine = Engine(_POLICY, implementation=kernels)
    sequence = _requests(1, seed=1)
    _, _, rest = sequence[0]
    for key in range(16):  # fills the key and account tables, not the others
        hashes = (hash(f"k:{key}"), 1, 2, 3, 4)
        assert _in_one_call(engine, _WANT_ALL, hashes, rest) >= 0
    state = engine.state.copy()
    new_key = (hash("k:new"), 1, 2, 3, 4)
    decided = engine.claim_and_decide(
        engine.state, engine.index_vector, _WANT_ALL, *new_key, *rest, True
    )
    assert decided == -(1 | 32)  # the key table and the account table
    assert np.array_equal(engine.state, state, equal_nan=True)  # nothing decided
    assert engine.tables[0].evictions == 0


def test_its_decision_arguments_are_those_of_decide_with_without_the_rows() -> None:
    from abuseguard.engine import kernels

    rows = {"r_key", "r_ip", "r_pfx", "r_asn", "r_per", "r_acc"}
    parameters = list(inspect.signature(kernels.claim_and_decide.py_func).parameters)
    decision = [name for name, _, _ in L.KERNEL_INPUTS if name not in rows]
    assert parameters == [
        "state",
        "index",
        "want",
        "h_key",
        "h_ip",
        "h_prefix",
        "h_asn",
        "h_persona",
        *decision,
    ]
