"""abuseguard.testing: the manual clock, fresh guards, the pytest fixture, the server helper."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from abuseguard import (
    AbuseGuard,
    Action,
    Enforcement,
    Guard,
    MemoryBackend,
    Policy,
    RequestInfo,
    Scoring,
    TokenBucket,
)
from abuseguard.testing import (
    DEFAULT_START,
    ClockDelay,
    ManualClock,
    find_guards,
    fresh_guard,
    reset_guards,
    serve,
)

pytest_plugins = ["pytester"]


async def home(request: Any) -> PlainTextResponse:
    return PlainTextResponse("ok")


def snippet_app() -> Starlette:
    """The README snippet, verbatim apart from the route list."""
    app = Starlette(routes=[Route("/", home)])
    app.add_middleware(AbuseGuard, policy=Policy(bucket=TokenBucket(rate="5/second", burst=10)))
    return app


def get_codes(app: Any, n: int, path: str = "/") -> list[int]:
    transport = httpx.ASGITransport(app=app, client=("198.51.100.7", 40000))

    async def run() -> list[int]:
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return [(await client.get(path)).status_code for _ in range(n)]

    return asyncio.run(run())


# -- ManualClock ---------------------------------------------------------------------------


def test_manual_clock_moves_only_when_told() -> None:
    clock = ManualClock()
    assert clock() == clock.now == DEFAULT_START
    assert clock.advance(0.25) == DEFAULT_START + 0.25
    assert clock() == DEFAULT_START + 0.25
    assert clock.set(DEFAULT_START + 10) == DEFAULT_START + 10
    assert clock.advance(0) == DEFAULT_START + 10
    assert repr(clock) == f"ManualClock({DEFAULT_START + 10!r})"


@pytest.mark.parametrize("bad", [-0.001, math.nan, math.inf, True, "1", None])
def test_manual_clock_refuses_bad_steps(bad: Any) -> None:
    clock = ManualClock(5.0)
    with pytest.raises(ValueError):
        clock.advance(bad)
    assert clock() == 5.0


@pytest.mark.parametrize("bad", [4.0, math.nan, "6"])
def test_manual_clock_refuses_to_go_back_or_to_nonsense(bad: Any) -> None:
    clock = ManualClock(5.0)
    with pytest.raises(ValueError):
        clock.set(bad)
    assert clock() == 5.0


@pytest.mark.parametrize("bad", [math.nan, -math.inf, "now", None])
def test_manual_clock_start_must_be_finite(bad: Any) -> None:
    with pytest.raises(ValueError):
        ManualClock(bad)


# -- fresh_guard -----------------------------------------------------------------------------


def test_fresh_guard_runs_on_its_manual_clock() -> None:
    clock = ManualClock()
    guard = fresh_guard(Policy(bucket=TokenBucket("5/second", burst=10)), clock=clock)
    assert isinstance(guard.backend, MemoryBackend)
    info = RequestInfo(ip="203.0.113.9")
    actions = [guard.check(info).action for _ in range(11)]
    assert actions[:10] == [Action.ALLOW] * 10
    assert actions[10] == Action.THROTTLE
    clock.advance(0.2)  # one token at 5/second
    assert guard.check(info).action == Action.ALLOW
    assert guard.check(info).action == Action.THROTTLE


def test_fresh_guard_defaults_and_observers() -> None:
    seen: list[Any] = []
    guard = fresh_guard(observers=[lambda info, decision: seen.append(decision)])
    assert isinstance(guard.clock, ManualClock)
    guard.check(RequestInfo(ip="203.0.113.9"))
    assert len(seen) == 1
    assert fresh_guard().backend is not guard.backend


# -- reset_guards on apps --------------------------------------------------------------------


def test_readme_snippet_limits_without_sleeping(guard_clock: ManualClock) -> None:
    app = snippet_app()
    (mw,) = reset_guards(app, guard_clock)
    assert mw.guard.clock is guard_clock
    codes = get_codes(app, 11)
    assert codes == [200] * 10 + [429]
    guard_clock.advance(0.2)
    assert get_codes(app, 2) == [200, 429]


def test_reset_guards_starts_each_test_from_empty_buckets(guard_clock: ManualClock) -> None:
    app = snippet_app()
    reset_guards(app, guard_clock)
    assert get_codes(app, 11)[-1] == 429
    reset_guards(app, ManualClock())
    assert get_codes(app, 10) == [200] * 10


def test_reset_guards_swaps_a_redis_backend_for_memory(guard_clock: ManualClock) -> None:
    app = Starlette(routes=[Route("/", home)])
    app.add_middleware(
        AbuseGuard, policy=Policy(bucket=TokenBucket("1/minute", burst=2)), backend=MemoryBackend()
    )
    (mw,) = reset_guards(app, guard_clock)
    assert isinstance(mw.guard.backend, MemoryBackend)
    assert get_codes(app, 3) == [200, 200, 429]


def test_reset_guards_finds_fastapi_wrapped_and_mounted_guards() -> None:
    api = FastAPI()
    api.add_middleware(AbuseGuard, policy=Policy(bucket=TokenBucket("1/minute", burst=1)))
    inner = Starlette(routes=[Route("/", home)])
    inner.add_middleware(AbuseGuard, policy=Policy(bucket=TokenBucket("1/minute", burst=1)))
    outer = Starlette(routes=[Mount("/inner", app=inner)])
    wrapped = AbuseGuard(Starlette(routes=[Route("/", home)]), policy=Policy())
    assert len(find_guards(api)) == 1
    assert len(find_guards(outer)) == 1
    assert find_guards(wrapped) == [wrapped]
    clock = ManualClock()
    reset_guards(outer, clock)
    assert get_codes(outer, 2, "/inner/") == [200, 429]


def test_reset_guards_without_a_guard_raises() -> None:
    with pytest.raises(LookupError):
        reset_guards(Starlette(routes=[Route("/", home)]))


def test_find_guards_survives_odd_objects() -> None:
    class Loop:
        def __init__(self) -> None:
            self.app = self
            self.routes = "not a list"

    assert find_guards(Loop()) == []
    assert find_guards(None) == []


def test_delay_advances_the_clock_instead_of_sleeping() -> None:
    policy = Policy(
        scoring=Scoring(bias=0.0),  # every client scores >= 0.5: the ladder delays all
        enforcement=Enforcement(ladder=((0.4, Action.DELAY),), delay_seconds=30.0),
    )
    app = Starlette(routes=[Route("/", home)])
    app.add_middleware(AbuseGuard, policy=policy)
    clock = ManualClock()
    (mw,) = reset_guards(app, clock)
    assert isinstance(mw.enforcers[Action.DELAY], ClockDelay)
    start = clock()
    assert get_codes(app, 2) == [200, 200]
    assert clock() == start + 60.0


def test_guard_clock_fixture_comes_from_the_plugin(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from abuseguard.testing import ManualClock

        def test_fixture(guard_clock):
            assert isinstance(guard_clock, ManualClock)
            start = guard_clock()
            guard_clock.advance(3)
            assert guard_clock() == start + 3
        """
    )
    result = pytester.runpytest_inprocess("-q")  # the pytest11 entry point loads the kit
    result.assert_outcomes(passed=1)


# -- serve ---------------------------------------------------------------------------------


def test_serve_runs_real_uvicorn_and_stops_it() -> None:
    app = snippet_app()
    with serve(app) as base:
        assert base.startswith("http://127.0.0.1:")
        response = httpx.get(base + "/")
        assert response.status_code == 200
        assert response.headers["ratelimit-policy"] == '"default";q=10;w=2'
    with pytest.raises(httpx.ConnectError):
        httpx.get(base + "/", timeout=2)


def test_serve_reports_a_server_that_cannot_start() -> None:
    with pytest.raises(RuntimeError), serve(object(), lifespan="on", timeout=5):
        pass


def test_guard_type_is_exported() -> None:
    assert isinstance(fresh_guard(), Guard)
