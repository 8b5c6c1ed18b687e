"""The memoryviews the Python side reads the engine's arrays through (engine/views.py)."""

from __future__ import annotations

import numpy as np
import pytest

from abuseguard.engine.views import float_view, int_view


def test_a_float_view_reads_and_writes_the_array_as_python_floats() -> None:
    table = np.zeros((3, 4), dtype=np.float64)
    view = float_view(table)
    table[1, 2] = 2.5
    assert view[1, 2] == 2.5 and type(view[1, 2]) is float
    view[2, 3] = 7.0
    assert table[2, 3] == 7.0


def test_an_int_view_reads_and_writes_the_array_as_python_ints() -> None:
    vector = np.zeros(5, dtype=np.int64)
    view = int_view(vector)
    vector[4] = -3
    assert view[4] == -3 and type(view[4]) is int
    view[0] = 2**40
    assert vector[0] == 2**40


def test_a_view_of_the_wrong_element_type_is_refused() -> None:
    ints: np.ndarray = np.zeros(3, dtype=np.int64)
    floats: np.ndarray = np.zeros(3, dtype=np.float32)
    with pytest.raises(TypeError, match="float64"):
        float_view(ints)
    with pytest.raises(TypeError, match="int64"):
        int_view(floats)
