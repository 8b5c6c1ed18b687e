"""``abuseguard warmup``: compile every kernel into Numba's on-disk cache.

Meant for container image builds (``RUN abuseguard warmup`` with the ``NUMBA_CACHE_DIR``
the servers will use), so that no server process compiles: a warm cache loads in well
under a second, an empty one costs tens of seconds of CPU.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "warmup",
        help="compile every kernel into Numba's cache (for container image builds)",
        description=(
            "Compile the guard's kernels (the decision kernel, the eviction sampler and the "
            "content kernels) into Numba's on-disk cache, NUMBA_CACHE_DIR if set, else next "
            "to the installed sources; print what was compiled or loaded and how long it "
            "took. Run it where the image is built, with the NUMBA_CACHE_DIR the servers "
            "use: they then load the kernels instead of compiling them."
        ),
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numba

    configured: str = getattr(numba.config, "CACHE_DIR", "")  # NUMBA_CACHE_DIR, read by Numba
    cache_dir = configured or "next to the installed sources (__pycache__)"
    print(f"Numba cache: {cache_dir}", flush=True)
    started = time.perf_counter()
    for name, step in _steps():
        step_started = time.perf_counter()
        how = step()
        print(f"{name}: {how} in {time.perf_counter() - step_started:.1f} s", flush=True)
    print(f"warm: every kernel is in the cache ({time.perf_counter() - started:.1f} s)")
    return 0


def _steps() -> list[tuple[str, Callable[[], str]]]:
    return [
        ("decision kernel and eviction sampler", _engine),
        ("content kernels", _content),
    ]


def _engine() -> str:
    from abuseguard.engine import eviction, hashindex, kernels
    from abuseguard.engine.engine import Engine
    from abuseguard.policy import Policy

    Engine(Policy())  # compiles (or loads) the decision kernel, its helpers and pick_victim
    dispatchers = (
        kernels.decide_with,
        kernels.claim_and_decide,
        kernels.record_outcome,
        kernels.charge,
        kernels.add_spend,
        hashindex.claim_rows,
        eviction.pick_victim,
    )
    return _compiled_or_loaded(dispatchers)


def _content() -> str:
    from abuseguard.intel import _content_kernels

    _content_kernels.compile_kernels()
    dispatchers = (
        _content_kernels._fingerprint_text,
        _content_kernels._fingerprint_texts,
        _content_kernels._fingerprint_body,
    )
    return _compiled_or_loaded(dispatchers)


def _compiled_or_loaded(dispatchers: tuple[Any, ...]) -> str:
    misses = sum(sum(dispatcher.stats.cache_misses.values()) for dispatcher in dispatchers)
    return "compiled" if misses else "loaded from the cache"
