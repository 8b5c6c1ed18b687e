"""Keep the garbage collector off the objects a server builds once at start-up.

Importing Numba, llvmlite and numpy and loading the kernels leaves about a hundred thousand
container objects that live as long as the process; every full collection walks them all
(hundreds of milliseconds on a loaded machine), pausing every request in flight.
``gc.freeze()`` moves every object tracked so far into a permanent generation that
collections skip. It is process-wide: the first guard to finish its start-up does it, once,
after a full collection, so that only live objects are frozen (they are never collected even if
they become garbage later, which start-up objects do not). ``Guard(freeze_gc=False)``
(or ``AbuseGuard(freeze_gc=False)``) leaves the collector alone.
"""

from __future__ import annotations

import gc
import threading

_lock = threading.Lock()
_done: set[str] = set()


def freeze_startup_objects(stage: str = "startup") -> bool:
    """Collect, then freeze every object tracked now, once per process and ``stage``
    ("startup": a guard's start-up is over; "kernels": compiled kernels took over from
    their Python twin). False when that stage was frozen already."""
    with _lock:
        if stage in _done:
            return False
        _done.add(stage)
        gc.collect()
        gc.freeze()
        return True


__all__ = ["freeze_startup_objects"]
