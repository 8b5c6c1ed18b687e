"""Memoryviews over the engine's numpy arrays: reading one element gives a Python number,
without the numpy scalar object an array read builds (~25 ns a read)."""

from __future__ import annotations

from typing import cast

import numpy as np
import numpy.typing as npt

# The buffer format of int64: "l" where a C long has 64 bits, "q" where it has 32 (Windows).
_INT64_FORMATS = ("l", "q")


def float_view(array: npt.NDArray[np.float64]) -> memoryview[float]:
    """``array``'s memory (any shape), read and written as Python floats."""
    view = array.data
    if view.format != "d":
        raise TypeError(f"float_view needs float64 memory, got format {view.format!r}")
    return cast("memoryview[float]", view)


def int_view(array: npt.NDArray[np.int64]) -> memoryview[int]:
    """``array``'s memory (any shape), read and written as Python ints."""
    view = array.data
    if view.format not in _INT64_FORMATS:
        raise TypeError(f"int_view needs int64 memory, got format {view.format!r}")
    return view
