"""Test kit: test your own app's limits without sleeping.

* :class:`ManualClock`: a clock that only moves when told (``advance``).
* :func:`fresh_guard`: a new :class:`~abuseguard.Guard` on an in-memory backend and a
  manual clock, for tests of the framework-free core.
* :func:`reset_guards`: finds every :class:`~abuseguard.AbuseGuard` inside an ASGI app
  (Starlette or FastAPI, middleware added with ``add_middleware`` or by wrapping) and gives
  it a fresh in-memory guard on your clock, so each test starts from empty buckets and
  the delay action advances the clock instead of sleeping.
* the ``guard_clock`` pytest fixture: a fresh :class:`ManualClock` per test. It is
  registered as a pytest plugin when abuseguard is installed; without the plugin, import
  it into your ``conftest.py`` (``from abuseguard.testing import guard_clock``).
* :func:`serve`: run an app under real uvicorn in a thread for end-to-end tests.

Example::

    from starlette.testclient import TestClient
    from abuseguard.testing import reset_guards
    from myapp import app

    def test_burst_then_refill(guard_clock):
        reset_guards(app, guard_clock)
        with TestClient(app) as client:
            codes = [client.get("/").status_code for _ in range(11)]
            assert codes[-1] == 429
            guard_clock.advance(1.0)
            assert client.get("/").status_code == 200
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from abuseguard.decision import Decision
from abuseguard.enforce import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from abuseguard.guard import Guard, Observer
    from abuseguard.middleware import AbuseGuard
    from abuseguard.policy import Policy

DEFAULT_START = 1_700_000_000.0  # a fixed epoch: runs are reproducible


class ManualClock:
    """A clock (seconds, like ``time.time``) that moves only by ``advance`` or ``set``.

    Pass it wherever abuseguard takes a ``clock``: ``Guard(clock=...)``,
    ``AbuseGuard(app, clock=...)``, :func:`fresh_guard`, :func:`reset_guards`.
    """

    __slots__ = ("_now",)

    def __init__(self, start: float = DEFAULT_START) -> None:
        self._now = _finite("start", start)

    def __call__(self) -> float:
        return self._now

    @property
    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds`` (>= 0) and return the new time."""
        seconds = _finite("seconds", seconds)
        if seconds < 0:
            raise ValueError(f"a clock cannot go back: advance({seconds!r})")
        self._now += seconds
        return self._now

    def set(self, ts: float) -> float:
        """Jump to ``ts``, which must not be earlier than now."""
        ts = _finite("ts", ts)
        if ts < self._now:
            raise ValueError(f"a clock cannot go back: set({ts!r}) before {self._now!r}")
        self._now = ts
        return self._now

    def __repr__(self) -> str:
        return f"ManualClock({self._now!r})"


def _finite(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def fresh_guard(
    policy: Policy | None = None,
    *,
    clock: ManualClock | None = None,
    observers: Iterable[Observer] = (),
) -> Guard:
    """A new Guard on a new in-memory backend and ``clock`` (a new ManualClock if None).

    The clock is ``guard.clock``; requests without ``ts`` are decided at its time.
    """
    from abuseguard.backends.memory import MemoryBackend
    from abuseguard.guard import Guard

    return Guard(policy, MemoryBackend(), clock=clock or ManualClock(), observers=observers)


class ClockDelay:
    """The delay action for tests: advances the manual clock instead of sleeping."""

    def __init__(self, clock: ManualClock, seconds: float) -> None:
        self.clock = clock
        self.seconds = seconds

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, decision: Decision, call_next: ASGIApp
    ) -> None:
        self.clock.advance(self.seconds)
        await call_next(scope, receive, send)


def find_guards(app: Any) -> list[AbuseGuard]:
    """Every AbuseGuard middleware inside ``app`` (building Starlette's stack if needed)."""
    from abuseguard.middleware import AbuseGuard

    found: list[AbuseGuard] = []
    seen: set[int] = set()
    pending: list[Any] = [app]
    while pending:
        node = pending.pop()
        if node is None or id(node) in seen or len(seen) > 10_000:
            continue
        seen.add(id(node))
        if isinstance(node, AbuseGuard):
            found.append(node)
        build = getattr(node, "build_middleware_stack", None)
        if callable(build) and getattr(node, "middleware_stack", "absent") is None:
            node.middleware_stack = build()  # what Starlette does on its first call
        for attribute in ("middleware_stack", "app", "router"):
            child = getattr(node, attribute, None)
            if child is not None and child is not node:
                pending.append(child)
        routes = getattr(node, "routes", None)
        if isinstance(routes, list | tuple):  # a router: mounted apps may hold guards too
            pending.extend(getattr(route, "app", None) for route in routes)
    return found


def reset_guards(app: Any, clock: ManualClock | None = None) -> list[AbuseGuard]:
    """Give every AbuseGuard in ``app`` a fresh in-memory guard on ``clock``.

    Policy, observers, enforcers and network intelligence stay as configured; the
    backend becomes a new MemoryBackend (so a Redis-backed app runs without Redis), all
    counters start empty, and the built-in delay action advances the clock instead of
    sleeping. Returns the middlewares found (raises LookupError when there is none).
    """
    from abuseguard.backends.memory import MemoryBackend
    from abuseguard.decision import Action
    from abuseguard.enforce import Delay
    from abuseguard.guard import Guard

    clock = clock or ManualClock()
    middlewares = find_guards(app)
    if not middlewares:
        raise LookupError(f"no AbuseGuard middleware found in {type(app).__name__}")
    for mw in middlewares:
        old = mw.guard
        mw.guard = Guard(
            mw.policy, MemoryBackend(), clock=clock, intel=old.intel, observers=old.observers
        )
        mw.started = False
        delay = mw.enforcers.get(Action.DELAY)
        if isinstance(delay, Delay | ClockDelay):
            mw.enforcers[Action.DELAY] = ClockDelay(clock, delay.seconds)
        if mw.websocket is not None:
            mw.websocket.reset()
    return middlewares


@contextmanager
def serve(
    app: Any, *, host: str = "127.0.0.1", timeout: float = 30.0, **options: Any
) -> Iterator[str]:
    """Run ``app`` under real uvicorn in a background thread; yield its base URL.

    The socket is bound before uvicorn starts (a free port on ``host``), so there is no
    race for the port. ``options`` go to ``uvicorn.Config`` (``ws``, ``http``,
    ``log_level``...). The server is stopped and its thread joined on exit. Needs uvicorn.
    """
    import socket
    import threading

    import uvicorn

    options.setdefault("log_level", "warning")
    options.setdefault("lifespan", "on")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, **options))
    exit_codes: list[object] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except SystemExit as exc:  # uvicorn exits when the app's lifespan startup fails
            exit_codes.append(exc.code)

    thread = threading.Thread(target=run, daemon=True, name=f"uvicorn-{port}")
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                detail = f" (exit code {exit_codes[0]})" if exit_codes else ""
                raise RuntimeError(f"uvicorn did not start on {host}:{port}{detail}")
            time.sleep(0.01)
        yield f"http://{host if family == socket.AF_INET else f'[{host}]'}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


try:
    import pytest
except ModuleNotFoundError:  # the kit works without pytest; only the fixture needs it
    pass
else:

    @pytest.fixture
    def guard_clock() -> ManualClock:
        """A fresh ManualClock for one test; pass it to reset_guards or fresh_guard."""
        return ManualClock()


__all__ = [
    "DEFAULT_START",
    "ClockDelay",
    "ManualClock",
    "find_guards",
    "fresh_guard",
    "reset_guards",
    "serve",
]
