"""The engine's layout is allocated from declared field lists (issue 15 item 3): no two
fields overlap, every constant is the offset of the field of its name, every region fits
its table or vector, and the signals, their ramps and the kernel's inputs are declared
once and read from there."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import pytest

from abuseguard import Guard, NetworkPolicy, Policy, RequestInfo, Scoring
from abuseguard.decision import RISK_REASONS
from abuseguard.engine import kernels, signals
from abuseguard.engine import layout as L
from abuseguard.engine.params import build_params
from abuseguard.policy import DEFAULT_WEAK_SIGNALS, DEFAULT_WEIGHTS

# Which declared regions share one table or vector, and its size.
TABLES: dict[str, tuple[tuple[str, ...], int]] = {
    "key table": (("row", "key"), L.KEY_FIELDS),
    "network tables": (("row", "net"), L.NET_FIELDS),
    "account table": (("acc",), L.ACC_FIELDS),
    "int inputs": (("int_inputs",), L.N_INT_INPUTS),
    "io vector": (("io",), L.IO_SIZE),
    "parameters": (("params",), L.N_PARAMS),
    "fan-out sketches": (("fan_out_sketches",), L.KEY_SKETCHES),
    "state header": (("regions",), L.N_REGIONS),
    "reason bits": (("reason_bits",), L.N_REASON_BITS),
    "count-min bookkeeping row": (("cms_book",), L.CMS_BOOK_FIELDS),
    "count-min bookkeeping row with the common-template table": (
        ("cms_book", "cms_common"),
        L.CMS_WIDTH,
    ),
    "plan allowance slot": (("plan_allowance",), L.PLAN_ALLOWANCE_WIDTH),
    "fan-in pool block": (("net_block",), L.NET_BLOCK_WIDTH),
    "pool header (in the smaller, fan-out, pool's row 0)": (("pool_header",), L.ACC_BLOCK_WIDTH),
}
PREFIXES = (
    *("F_", "A_", "I_", "X_", "O_", "P_", "R_", "SK_", "REGION_", "CB_", "PA_"),
    *("POOL_", "PH_"),
)


def _words(regions: tuple[str, ...]) -> list[tuple[str, int, int]]:
    return [field for region in regions for field in L.DECLARED[region]]


@pytest.mark.parametrize("table", sorted(TABLES))
def test_no_two_fields_overlap_and_all_fit(table: str) -> None:
    regions, size = TABLES[table]
    owner: dict[int, str] = {}
    for name, offset, width in _words(regions):
        assert width >= 1, name
        for word in range(offset, offset + width):
            assert 0 <= word < size, f"{name} word {word} outside the {table} ({size})"
            assert word not in owner, f"{name} overlaps {owner[word]} in the {table}"
            owner[word] = name


def test_every_region_is_checked() -> None:
    checked = {region for regions, _ in TABLES.values() for region in regions}
    assert checked == set(L.DECLARED)


def test_each_constant_is_the_offset_of_its_field() -> None:
    for fields in L.DECLARED.values():
        for name, offset, _ in fields:
            assert getattr(L, name) == offset, name


def test_no_offset_is_typed_in_by_hand() -> None:
    """Every offset constant of the layout comes out of `allocate` (or is a signal slot,
    a ramp parameter, or the start of the ramps), never a literal."""
    declared = {name for fields in L.DECLARED.values() for name, _, _ in fields}
    for name in dir(L):
        value = getattr(L, name)
        if not name.startswith(PREFIXES) or not isinstance(value, int):
            continue
        assert name in declared or name == "P_RAMPS", name


def test_table_widths_hold_their_sketches() -> None:
    """Rows hold their sketches as cells (one word each), the pools' blocks an owner
    word and one sketch's registers."""
    assert L.KEY_WIDTH == L.KEY_FIELDS
    assert L.NET_WIDTH == L.NET_FIELDS and L.NET_SKETCHES == 1
    assert L.ACC_WIDTH == L.ACC_FIELDS
    assert L.A_CELL + L.KEY_SKETCHES <= L.A_RING
    assert L.A_EST + L.KEY_SKETCHES <= L.A_CELL
    assert L.POOL_REGS + L.sketch_words(1, L.NET_SKETCH_M) == L.NET_BLOCK_WIDTH
    assert L.POOL_REGS + L.sketch_words(1, L.KEY_SKETCH_M) == L.ACC_BLOCK_WIDTH
    # A cell holds an index and two ranks (each < 64) exactly in a float64.
    assert L.CELL_INDEX * 63 < L.CELL_RANK0 and L.CELL_RANK0 * 64 == L.CELL_RANK1


def test_reason_bits_leave_room_for_every_signal() -> None:
    assert L.N_SIGNALS <= L.MAX_SIGNALS <= L.R_RATE < L.R_BANNED
    assert L.N_REASON_BITS <= 53  # the reasons travel as a float64 in the io vector
    assert L.O_CONTRIB + L.N_SIGNALS <= L.IO_SIZE


def test_the_state_vector_holds_every_region_without_overlap() -> None:
    rows = (7, 5, 4, 3, 3, 6)
    regions, size = kernels.state_layout(rows)
    widths = (L.KEY_WIDTH, *(L.NET_WIDTH,) * (L.N_KINDS - 1), L.ACC_WIDTH)
    extents = [n * w for n, w in zip(rows, widths, strict=True)]
    extents += [L.CMS_ROWS * L.CMS_WIDTH, L.N_INT_INPUTS, L.IO_SIZE, L.N_PARAMS]
    extents += [
        L.pool_blocks(sum(rows[1:5]), L.NET_POOL_SHARE) * L.NET_BLOCK_WIDTH,
        L.pool_blocks(rows[5], L.ACC_POOL_SHARE) * L.ACC_BLOCK_WIDTH,
    ]
    assert len(regions) == L.N_REGIONS
    end = L.HEADER_SIZE
    for (offset, _), extent in zip(regions, extents, strict=True):
        assert offset >= end
        end = offset + extent
    assert end <= size


# -- the signals, declared once ----------------------------------------------------------


def test_signal_declarations_feed_the_names_weights_weak_set_and_reasons() -> None:
    names = tuple(s.name for s in signals.SIGNALS)
    assert names == L.SIGNAL_NAMES
    assert len(names) == L.N_SIGNALS
    assert dict(DEFAULT_WEIGHTS) == {s.name: s.weight for s in signals.SIGNALS}
    assert {s.name for s in signals.SIGNALS if s.weak} == DEFAULT_WEAK_SIGNALS
    assert RISK_REASONS[: len(names)] == names
    slots = {getattr(L, n) for n in dir(L) if n.startswith("S_") and n != "SIGNAL_NAMES"}
    assert slots == set(range(L.N_SIGNALS))


def test_weights_and_weak_signals_are_validated_against_the_declarations() -> None:
    with pytest.raises(ValueError):
        Scoring(weights={"no_such_signal": 1.0})
    with pytest.raises(ValueError):
        Scoring(weak_signals={"no_such_signal"})
    scoring = Scoring(weights={"fan_in": 0.5}, weak_signals={"fan_in"})
    prm = build_params(Policy(scoring=scoring))
    fan_in = signals.signal_index("fan_in")
    assert prm[L.P_WEIGHTS + fan_in] == 0.5
    assert int(prm[L.P_WEAK_MASK]) == 1 << fan_in


def test_every_ramp_parameter_comes_from_its_declared_policy_field() -> None:
    scoring = Scoring(
        volume_rate=(0.11, 0.12),
        burst_ratio=(0.21, 0.22),
        cadence_spread=(0.31, 0.32),
        error_share=(0.41, 0.42),
        impatience_share=(0.51, 0.52),
        template_share=(0.61, 0.62),
        shared_template_accounts=(7.1, 7.2),
        spend_share=(12.1, 12.2),
        spend_cohort=(13.1, 13.2),
    )
    network = NetworkPolicy(
        fan_in=(8.1, 8.2),
        fan_out_asns=(9.1, 9.2),
        fan_out_countries=(10.1, 10.2),
        fan_out_prefixes=(11.1, 11.2),
    )
    prm = build_params(Policy(scoring=scoring, network=network))
    sections: dict[str, Any] = {"scoring": scoring, "network": network}
    assert len(L.RAMP_PARAMS) == len(signals.RAMPS)
    for ramp in signals.RAMPS:
        lo, hi = L.RAMP_PARAMS[ramp.param]
        assert (lo, hi) == (
            getattr(L, f"P_{ramp.param.upper()}_LO"),
            getattr(L, f"P_{ramp.param.upper()}_HI"),
        )
        assert (prm[lo], prm[hi]) == getattr(sections[ramp.section], ramp.field), ramp
    # Without a network policy the network ramps are out of reach.
    prm = build_params(Policy(scoring=scoring, network=None))
    for ramp in signals.RAMPS:
        if ramp.section == "network":
            lo, hi = L.RAMP_PARAMS[ramp.param]
            assert (prm[lo], prm[hi]) == ramp.absent
    # A ramp field set to None (Scoring.spend_cohort by default) is out of reach too.
    prm = build_params(Policy())
    (cohort,) = [r for r in signals.RAMPS if r.field == "spend_cohort"]
    lo, hi = L.RAMP_PARAMS[cohort.param]
    assert (prm[lo], prm[hi]) == cohort.absent


# -- the kernel's inputs, declared once --------------------------------------------------


def test_kernel_inputs_are_the_arguments_of_decide_with() -> None:
    parameters = list(inspect.signature(kernels.decide_with.py_func).parameters)
    assert parameters == ["state", *(name for name, _, _ in L.KERNEL_INPUTS)]
    assert L.KERNEL_INPUTS[-1][1] == "flag"  # warm_up sets the flag last
    for name, vector, offset in L.KERNEL_INPUTS[:-1]:
        size = L.N_INT_INPUTS if vector == "iv" else L.N_FLOAT_INPUTS
        assert 0 <= offset < size, name


def test_decide_with_writes_each_input_where_it_is_declared() -> None:
    guard = Guard(Policy(network=NetworkPolicy()))
    guard.check(RequestInfo(ip="192.0.2.7", ts=1000.0, key="sk-layout"))
    engine = guard.engine
    # Distinct values per input (valid rows: the ones the request above used).
    inputs = list(engine.last_kernel_inputs())
    values: dict[str, Any] = {}
    for i, (name, vector, _) in enumerate(L.KERNEL_INPUTS):
        value = inputs[i + 1]
        if vector == "iv" and not name.startswith("r_"):
            value = 100 + i
        elif vector == "io" and name not in ("ts", "cost", "load"):
            value = 0.01 * i
        inputs[i + 1] = value
        values[name] = value
    engine.decide_with(*inputs)
    iv = kernels.vector(engine.state, L.REGION_IV, L.N_INT_INPUTS).view(np.int64)
    for name, vector, offset in L.KERNEL_INPUTS[:-1]:
        stored = iv[offset] if vector == "iv" else engine.io[offset]
        assert stored == values[name], name
    assert engine.last_kernel_inputs()[1:-1] == tuple(inputs[1:-1])


def test_the_kernel_cache_is_keyed_by_the_layout_signals_and_bucket_rules() -> None:
    """Numba freezes layout offsets, signal slots and the bucket rules into the compiled
    kernels; its on-disk cache must not hand back a kernel built from older ones."""
    kernels.warm_up()
    dispatcher: Any = kernels.decide_with
    key = dispatcher._cache._index_key(dispatcher.signatures[0], dispatcher.targetctx.codegen())
    assert kernels.ENGINE_SOURCES_HASH in key
    for dispatcher in (kernels.record_outcome, kernels.charge, kernels.decide):
        assert isinstance(dispatcher._cache, kernels._EngineCache)
