"""The engine's kernels as one set: compiled by Numba, or their pure-Python twin.

On an empty Numba cache, compiling the decision kernel, the identity index and the eviction
sampler takes tens of seconds of CPU. A server must answer before that and must never
compile inside a request, so a guard whose kernels are not in the cache starts on the
*twin*: the same modules (`kernels`, `hashindex`, `eviction`) loaded a second time, under other
names, with ``numba.config.DISABLE_JIT`` set while they are executed, so that every
``@njit`` gives back the plain function. The twin runs the very same code as Python over
the very same state arrays: identical decisions and state, only slower per call (about a
millisecond instead of a microsecond). Meanwhile a daemon thread compiles (or loads) the
real kernels; when they are ready, the guard switches to them (`compile_in_background`).

Where Python and Numba read the same code differently, the twin replaces a few helpers
(`python_twin`): the kernels' zero-copy table views (a Numba intrinsic) become numpy views,
and the index's integer mixing, written for Numba's wrapping 64-bit integers, is spelled
out with Python ints. tests/test_cold_start.py checks that both sets give the same
decisions and the same state on a sequence of requests.

``DISABLE_JIT`` is a process-wide setting, read when ``@njit`` is applied: it is on only
while the twin's three modules execute (milliseconds, once per process), so a module that
another thread imports at that very moment would get plain functions too. abuseguard's own
modules are all imported before a guard is built.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numba
import numpy as np

from abuseguard.engine import eviction, hashindex, kernels
from abuseguard.engine.layout import KEY_WIDTH

log = logging.getLogger("abuseguard")


@dataclass(frozen=True, slots=True)
class KernelSet:
    """The functions the engine and its tables call, all from one implementation."""

    decide_with: Any
    claim_and_decide: Any
    claim_rows: Any
    find: Any
    claim: Any
    replace: Any
    pick_victim: Any
    record_outcome: Any
    charge: Any
    add_spend: Any
    compiled: bool


def _dispatchers() -> tuple[Any, ...]:
    return (
        kernels.decide_with,
        kernels.claim_and_decide,
        kernels.record_outcome,
        kernels.charge,
        kernels.add_spend,
        hashindex.claim_rows,
        hashindex.find,
        hashindex.claim,
        hashindex.replace,
        hashindex.remove,
        eviction.pick_victim,
    )


_compiled: KernelSet | None = None
_compile_lock = threading.Lock()


def compiled() -> KernelSet:
    """The Numba kernels, compiled now or loaded from Numba's on-disk cache (once)."""
    global _compiled
    with _compile_lock:
        if _compiled is None:
            kernels.warm_up()
            hashindex.warm_up()
            data = np.zeros((2, KEY_WIDTH))
            eviction.pick_victim(data, np.ones(1, dtype=np.uint64), 0.0)
            entry = hashindex.compiled_entry
            _compiled = KernelSet(
                decide_with=entry(kernels.decide_with),
                claim_and_decide=entry(kernels.claim_and_decide),
                claim_rows=entry(hashindex.claim_rows),
                find=entry(hashindex.find),
                claim=hashindex.claim,
                replace=hashindex.replace,
                pick_victim=eviction.pick_victim,
                record_outcome=kernels.record_outcome,
                charge=kernels.charge,
                add_spend=kernels.add_spend,
                compiled=True,
            )
        return _compiled


def ready() -> bool:
    """Whether the compiled kernels are loaded in this process."""
    return _compiled is not None


def cached() -> bool:
    """Whether `compiled` would only load (well under a second): every kernel is compiled
    in this process or Numba's on-disk cache holds it for this machine. Reads Numba's
    cache index through its internals; any surprise there answers False."""
    if _compiled is not None:
        return True
    try:
        for dispatcher in _dispatchers():
            signatures = _WARM_SIGNATURES.get(dispatcher.py_func.__name__)
            if signatures is None:
                return False
            cache = dispatcher._cache
            index = cache._cache_file._load_index()
            codegen = dispatcher.targetctx.codegen()
            if any(cache._index_key(sig, codegen) not in index for sig in signatures()):
                return False
    except Exception:  # numba internals changed: assume a compilation is needed
        return False
    return True


def _signature(dispatcher: Any, *args: Any) -> tuple[Any, ...]:
    return tuple(dispatcher.typeof_pyval(arg) for arg in args)


def _kernel_signatures(name: str) -> Callable[[], list[tuple[Any, ...]]]:
    """The argument types `kernels.warm_up`/`hashindex.warm_up` compile ``name`` for."""

    def signatures() -> list[tuple[Any, ...]]:
        state = kernels.new_state((2,) * 6)
        floats = np.zeros((2, 2))
        ints = np.zeros(4, dtype=np.int64)
        if name == "decide_with":
            from abuseguard.engine import layout as L

            inputs: list[Any] = [1 if vec == "iv" else 1.0 for _, vec, _ in L.KERNEL_INPUTS]
            inputs[-1] = True
            return [_signature(kernels.decide_with, state, *inputs)]
        if name == "claim_and_decide":
            from abuseguard.engine import layout as L

            inputs = [1 if vec == "iv" else 1.0 for _, vec, _ in L.KERNEL_INPUTS]
            inputs[-1] = True
            probe = kernels.claim_and_decide_probe(inputs)
            return [_signature(kernels.claim_and_decide, state, ints, *probe)]
        if name == "record_outcome":
            return [_signature(kernels.record_outcome, floats, 0, 1.0, 0.1)]
        if name == "charge":
            return [_signature(kernels.charge, floats, 0, 1.0, 1.0)]
        if name == "add_spend":
            return [_signature(kernels.add_spend, floats, floats, 0, 1.0, 1.0, state)]
        if name == "claim_rows":
            return [_signature(hashindex.claim_rows, ints, 63, 1, 2, 3, 4, 5)]
        if name == "replace":
            return [_signature(hashindex.replace, ints, 0, 0, 2)]
        if name in ("find", "claim", "remove"):
            return [_signature(getattr(hashindex, name), ints, 0, 1)]
        if name == "pick_victim":
            return [_signature(eviction.pick_victim, floats, np.ones(1, dtype=np.uint64), 0.0)]
        return []

    return signatures


_WARM_SIGNATURES: dict[str, Callable[[], list[tuple[Any, ...]]]] = {
    name: _kernel_signatures(name)
    for name in (
        "decide_with",
        "claim_and_decide",
        "record_outcome",
        "charge",
        "add_spend",
        "claim_rows",
        "find",
        "claim",
        "replace",
        "remove",
        "pick_victim",
    )
}


# ----------------------------------------------------------------------- the Python twin

_twin: KernelSet | None = None
_twin_lock = threading.Lock()
_MASK64 = (1 << 64) - 1


def _load_without_jit(module: ModuleType) -> Any:
    """A second copy of ``module``, executed with Numba's JIT off: its ``@njit`` functions
    are the plain Python functions. Not registered in ``sys.modules``."""
    name = f"abuseguard.engine._python_{module.__name__.rsplit('.', 1)[-1]}"
    spec = importlib.util.spec_from_file_location(name, module.__file__ or "")
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load a Python twin of {module.__name__}")
    twin = importlib.util.module_from_spec(spec)
    config: Any = numba.config
    previous = config.DISABLE_JIT
    config.DISABLE_JIT = True
    try:
        spec.loader.exec_module(twin)
    finally:
        config.DISABLE_JIT = previous
    return twin


def _mixed(h: int, salt: int) -> int:
    """`hashindex._mixed` with Python ints (numpy refuses a negative int as a uint64)."""
    x = (int(h) ^ int(salt)) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    x ^= x >> 31
    k = x - (1 << 64) if x >> 63 else x
    return k if k != 0 else 1


def _home(k: int, slots: int) -> int:
    return (((int(k) & _MASK64) >> 32) * int(slots)) >> 32


def _quiet(function: Any, result: Callable[[Any], Any] = lambda r: r) -> Any:
    """``function`` with numpy's overflow warnings off: Numba's 64-bit integers wrap
    silently, numpy's scalars wrap the same way but warn."""

    def call(*args: Any) -> Any:
        with np.errstate(over="ignore"):
            return result(function(*args))

    call.__name__ = getattr(function, "__name__", "kernel")
    return call


def python_twin() -> KernelSet:
    """The kernels as plain Python over the same arrays (loaded once)."""
    global _twin
    with _twin_lock:
        if _twin is None:
            h = _load_without_jit(hashindex)
            h._mixed = _mixed
            h._home = _home
            k = _load_without_jit(kernels)
            k.borrowed = k.region
            k.borrowed_vector = k.vector
            k.borrowed_ints = lambda state, index, size: k.vector(state, index, size).view(np.int64)
            k.hashindex = h  # claim_and_decide claims through the twin's index functions
            t = _load_without_jit(eviction)
            _twin = KernelSet(
                decide_with=_quiet(k.decide_with, bool),
                claim_and_decide=_quiet(k.claim_and_decide, int),
                claim_rows=_quiet(
                    h.claim_rows, lambda rows: (*(int(r) for r in rows[:6]), bool(rows[6]))
                ),
                find=_quiet(h.find, int),
                claim=_quiet(h.claim, int),
                replace=_quiet(h.replace, int),
                pick_victim=_quiet(t.pick_victim, int),
                record_outcome=_quiet(k.record_outcome),
                charge=_quiet(k.charge),
                add_spend=_quiet(k.add_spend),
                compiled=False,
            )
        return _twin


# ----------------------------------------------------------------------- the switch

_waiting: list[Callable[[KernelSet], None]] = []
_thread: threading.Thread | None = None
_failed = False


def compile_in_background(on_ready: Callable[[KernelSet], None]) -> None:
    """Compile the kernels in a daemon thread (one per process) and call ``on_ready`` with
    them from that thread once they are ready (at once when they already are)."""
    global _thread
    with _twin_lock:
        if _compiled is None and not _failed:
            _waiting.append(on_ready)
            if _thread is None:
                _thread = threading.Thread(
                    target=_compile_and_switch, name="abuseguard-kernels", daemon=True
                )
                _thread.start()
            return
    if _compiled is not None:
        on_ready(_compiled)


def _compile_and_switch() -> None:
    global _failed
    try:
        kernel_set = compiled()
    except Exception:  # keep serving on the twin: slower, same decisions
        _failed = True
        log.exception("abuseguard: compiling the kernels failed; staying on the Python twin")
        return
    with _twin_lock:
        callbacks = list(_waiting)
        _waiting.clear()
    for on_ready in callbacks:
        on_ready(kernel_set)


def wait_compiled(timeout: float | None = None) -> bool:
    """Wait for the background compilation (if any); True when the kernels are compiled."""
    thread = _thread
    if thread is not None:
        thread.join(timeout)
    return _compiled is not None


__all__ = ["KernelSet", "cached", "compile_in_background", "compiled", "python_twin", "ready"]
