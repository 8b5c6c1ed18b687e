"""Showing decisions to observers: sync ones are called now, async ones scheduled as tasks
on the running loop; an observer that fails is logged and never fails the request."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from abuseguard.decision import Decision
from abuseguard.request import RequestInfo

logger = logging.getLogger("abuseguard")

Observer = Callable[[RequestInfo, Decision], "Awaitable[None] | None"]

# Tasks of async observers, kept referenced until they finish.
_background: set[Any] = set()


def notify_observers(observers: Iterable[Observer], info: RequestInfo, decision: Decision) -> None:
    """Show ``decision`` to every observer."""
    for observer in observers:
        try:
            result = observer(info, decision)
            if inspect.isawaitable(result):
                _schedule(result)
        except Exception:
            logger.exception("abuseguard observer %r failed", observer)


def _schedule(awaitable: Awaitable[None]) -> None:
    import asyncio

    try:
        task = asyncio.ensure_future(awaitable)
    except RuntimeError:
        return
    _background.add(task)
    task.add_done_callback(_background.discard)


__all__ = ["Observer", "notify_observers"]
