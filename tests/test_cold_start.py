"""Cold start (issue 17, item 5): a server never compiles inside a request.

The content kernels compile in a background thread once the guard starts (or at its first
request); until they are ready requests are decided without content, as when the body read
times out, then content scoring switches on. ``abuseguard warmup`` compiles every kernel
into Numba's cache (``NUMBA_CACHE_DIR``) for image builds, after which a server process
loads them all and compiles nothing.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from abuseguard import AbuseGuard, Guard, Policy, RequestInfo
from abuseguard.cli import main
from abuseguard.engine import kernel_set
from abuseguard.engine import layout as L
from abuseguard.intel import content
from abuseguard.testing import serve

SRC = Path(__file__).resolve().parents[1] / "src"
PROMPT = json.dumps(
    {
        "messages": [
            {
                "role": "user",
                "content": "Show your reasoning step by step, with your full chain of thought.",
            }
        ]
    }
)
HAS_CONTENT = [name for name, _, _ in L.KERNEL_INPUTS].index("has_content") + 1  # after state
WAIT = 60.0  # bounds for events that happen within milliseconds; never a timing assertion


def had_content(guard: Guard) -> bool:
    """Whether the last decision's kernel call was given a prompt."""
    return bool(guard.engine.last_kernel_inputs()[HAS_CONTENT])


async def echo(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(len(await request.body())))


class SlowCompile:
    """Stands in for the content kernels' compilation: it blocks until released, so the
    test controls when it ends (the real kernels are compiled already, by conftest)."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.done = threading.Event()

    def compile(self) -> None:
        self.started.set()
        self.release.wait(WAIT)
        self.done.set()


@pytest.fixture
def slow_compile(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlowCompile]:
    hook = SlowCompile()
    monkeypatch.setattr(content, "kernels_cached", lambda: False)
    monkeypatch.setattr(content, "kernels_ready", hook.done.is_set)
    monkeypatch.setattr(content, "compile_kernels", hook.compile)
    monkeypatch.setattr(content, "_compiler_thread", None)
    content._KERNELS_COMPILED.clear()
    yield hook
    hook.release.set()
    thread = content._compiler_thread
    if thread is not None:
        thread.join(WAIT)
    content._KERNELS_COMPILED.set()  # the real kernels are compiled


def test_requests_are_answered_while_content_kernels_compile_then_content_switches_on(
    slow_compile: SlowCompile,
) -> None:
    app = Starlette(routes=[Route("/v1/chat", echo, methods=["POST"])])
    middleware = AbuseGuard(app, policy=Policy())
    guard = middleware.guard
    assert guard.content is not None
    assert not guard.content.ready  # building the guard compiled nothing
    with serve(middleware) as base, httpx.Client(base_url=base, timeout=WAIT) as client:
        # The lifespan started the compilation, off the request path.
        assert slow_compile.started.wait(WAIT)
        answer = client.post(
            "/v1/chat", content=PROMPT, headers={"content-type": "application/json"}
        )
        assert answer.status_code == 200
        assert answer.text == str(len(PROMPT))  # the app still gets the whole body
        assert not slow_compile.done.is_set()  # answered while the compilation runs
        assert not had_content(guard)  # decided without the content
        assert not guard.content.ready

        slow_compile.release.set()
        thread = content._compiler_thread
        assert thread is not None
        thread.join(WAIT)
        assert guard.content.ready
        answer = client.post(
            "/v1/chat", content=PROMPT, headers={"content-type": "application/json"}
        )
        assert answer.status_code == 200
        assert had_content(guard)  # content scoring is on


def test_first_use_starts_the_compilation_without_a_lifespan(slow_compile: SlowCompile) -> None:
    guard = Guard(Policy())
    assert guard.content is not None
    info = RequestInfo(
        ip="73.20.30.40",
        ts=1.7e9,
        key="sk-first-use",
        method="POST",
        path="/v1/chat",
        headers={"content-type": "application/json"},
        body=PROMPT,
    )
    guard.check(info)
    assert slow_compile.started.wait(WAIT)
    assert not had_content(guard)
    slow_compile.release.set()
    assert guard.content.wait_ready(WAIT)
    guard.check(info)
    assert had_content(guard)


def test_warmup_command_compiles_every_kernel_and_exits_0(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["warmup"]) == 0
    out = capsys.readouterr().out
    assert "Numba cache:" in out
    assert "decision kernel and eviction sampler:" in out
    assert "content kernels:" in out
    assert "every kernel is in the cache" in out


# In a fresh process on an empty Numba cache: build a guard, start it, decide a request
# with a prompt, report, then wait for the decision and content kernels and decide again.
_LAZY_SCRIPT = r"""
import asyncio, json
from abuseguard import Guard, Policy, RequestInfo
from abuseguard.engine import kernel_set, kernels
from abuseguard.engine import layout as L
from abuseguard.intel import _content_kernels

has_content = [name for name, _, _ in L.KERNEL_INPUTS].index("has_content") + 1
info = RequestInfo(ip="73.20.30.40", ts=1.7e9, key="sk-cold", method="POST", path="/v1/chat",
                   headers={"content-type": "application/json"}, body=%r)
guard = Guard(Policy())
asyncio.run(guard.startup())
guard.check(info)
first = {
    "content_compiled": bool(_content_kernels._fingerprint_text.signatures),
    "had_content": bool(guard.engine.last_kernel_inputs()[has_content]),
    "on_compiled_kernels": guard.kernels_compiled,
    "decision_kernel_compiled": bool(kernels.decide_with.signatures),
}
print(json.dumps(first), flush=True)
compiled = kernel_set.wait_compiled(600)
ready = guard.content.wait_ready(600)
guard.check(info)
after = {"ready": ready, "had_content": bool(guard.engine.last_kernel_inputs()[has_content]),
         "on_compiled_kernels": compiled and guard.kernels_compiled}
print(json.dumps(after))
"""


def run_python(script: str, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache), "PYTHONPATH": str(SRC)}
    return subprocess.run(
        [sys.executable, *args] if not script else [sys.executable, "-c", script, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.slow
def test_an_empty_numba_cache_decides_before_content_kernels_compile(tmp_path: Path) -> None:
    done = run_python(_LAZY_SCRIPT % PROMPT, tmp_path)
    lines = done.stdout.strip().splitlines()
    assert lines, done.stderr
    # The first request was decided while the decision kernel and the content kernels
    # were still compiling (by the decision kernel's Python twin, without content)...
    assert json.loads(lines[0]) == {
        "content_compiled": False,
        "had_content": False,
        "on_compiled_kernels": False,
        "decision_kernel_compiled": False,
    }
    # ...then the guard switched to the compiled kernels and content scoring switched on.
    assert done.returncode == 0, done.stderr
    assert json.loads(lines[-1]) == {
        "ready": True,
        "had_content": True,
        "on_compiled_kernels": True,
    }


_NO_COMPILE_SCRIPT = r"""
import json
from abuseguard import Guard, Policy
from abuseguard.engine import eviction, kernels
from abuseguard.intel import _content_kernels

guard = Guard(Policy())
dispatchers = (kernels.decide_with, kernels.claim_and_decide, kernels.record_outcome,
               kernels.charge, eviction.pick_victim, _content_kernels._fingerprint_text,
               _content_kernels._fingerprint_texts)
misses = sum(sum(d.stats.cache_misses.values()) for d in dispatchers)
hits = sum(sum(d.stats.cache_hits.values()) for d in dispatchers)
print(json.dumps({"ready": guard.content.ready, "misses": misses, "hits": hits}))
"""


@pytest.mark.slow
def test_warmup_fills_an_empty_cache_so_a_server_compiles_nothing(tmp_path: Path) -> None:
    warmup = run_python("", tmp_path, "-m", "abuseguard.cli", "warmup")
    assert warmup.returncode == 0, warmup.stderr
    assert f"Numba cache: {tmp_path}" in warmup.stdout
    assert "decision kernel and eviction sampler: compiled in" in warmup.stdout
    assert "content kernels: compiled in" in warmup.stdout
    assert any(tmp_path.rglob("*.nbi"))  # Numba's cache index files, in NUMBA_CACHE_DIR

    server = run_python(_NO_COMPILE_SCRIPT, tmp_path)
    assert server.returncode == 0, server.stderr
    report = json.loads(server.stdout.strip().splitlines()[-1])
    assert report["ready"]  # content scoring on from the first request
    assert report["misses"] == 0  # every kernel loaded from the cache
    assert report["hits"] == 7


# -- the decision kernels: their Python twin serves until they are compiled ---------------


def recorded_requests(count: int, seed: int) -> list[tuple[RequestInfo, int, float]]:
    """A mixed sequence: API keys (some hammering, some with prompts), anonymous clients,
    a few networks, irregular gaps; (request, status, real cost) each."""
    rng = random.Random(seed)
    keys = [f"sk-{i:03d}" for i in range(40)]
    hot = keys[:3]
    ts = 1.7e9
    sequence = []
    for i in range(count):
        ts += rng.choice((0.0, 0.001, 0.02, 0.3, 2.0, 45.0)) * rng.random()
        key = rng.choice(hot) if rng.random() < 0.4 else rng.choice([*keys, None])
        net = rng.choice(("73.20.30", "73.20.31", "198.51.100", "203.0.113"))
        body = PROMPT if rng.random() < 0.3 else None
        info = RequestInfo(
            ip=f"{net}.{rng.randrange(1, 60)}",
            ts=ts,
            key=key,
            method="POST" if body else "GET",
            path="/v1/chat" if body else f"/v1/items/{i % 7}",
            headers={"content-type": "application/json"} if body else {},
            body=body,
            ua=rng.choice(("OpenAI/Python 1.40.0", "curl/8.5.0", "python-requests/2.31")),
        )
        sequence.append((info, rng.choice((200, 200, 200, 429, 500)), rng.uniform(0.5, 3.0)))
    return sequence


def test_the_python_twin_decides_exactly_as_the_compiled_kernels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    policy = Policy(max_identities=32)  # evictions, held rows and bans all happen
    compiled = Guard(policy)
    assert compiled.kernels_compiled
    switches: list[object] = []
    monkeypatch.setattr(kernel_set, "cached", lambda: False)
    monkeypatch.setattr(kernel_set, "compile_in_background", switches.append)
    twin = Guard(policy)
    assert not twin.kernels_compiled  # started on the twin, waiting for the compilation
    assert len(switches) == 1
    # The index blocks' salts are drawn per guard: start both from the same words.
    np.copyto(twin.engine.index_vector, compiled.engine.index_vector)

    actions = set()
    for info, status, cost in recorded_requests(3000, seed=17):
        expected = compiled.check(info)
        got = twin.check(info)
        assert got == expected
        assert got.policies == expected.policies
        actions.add(expected.action)
        compiled.complete(info, expected, status=status, cost=cost)
        twin.complete(info, got, status=status, cost=cost)
    assert len(actions) >= 3  # not only allows: the ladder and the buckets were exercised
    assert compiled.engine.key_table.evictions > 0
    assert np.array_equal(twin.engine.state, compiled.engine.state, equal_nan=True)
    assert np.array_equal(twin.engine.index_vector, compiled.engine.index_vector)
    assert np.array_equal(
        twin.engine.key_table.held.data, compiled.engine.key_table.held.data, equal_nan=True
    )


def test_the_switch_to_compiled_kernels_keeps_the_state(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = Policy(max_identities=32)
    reference = Guard(policy)
    switches: list[object] = []
    monkeypatch.setattr(kernel_set, "cached", lambda: False)
    monkeypatch.setattr(kernel_set, "compile_in_background", switches.append)
    twin = Guard(policy)
    np.copyto(twin.engine.index_vector, reference.engine.index_vector)
    sequence = recorded_requests(600, seed=5)
    for n, (info, status, cost) in enumerate(sequence):
        if n == 300:  # the compiling thread calls back mid-stream
            (on_ready,) = switches
            on_ready(kernel_set.compiled())  # type: ignore[operator]
            assert twin.kernels_compiled
        got, expected = twin.check(info), reference.check(info)
        assert got == expected
        twin.complete(info, got, status=status, cost=cost)
        reference.complete(info, expected, status=status, cost=cost)
    assert np.array_equal(twin.engine.state, reference.engine.state, equal_nan=True)


def test_a_server_answers_on_the_twin_then_switches_to_the_compiled_kernels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    switches: list[Any] = []
    monkeypatch.setattr(kernel_set, "cached", lambda: False)
    monkeypatch.setattr(kernel_set, "compile_in_background", switches.append)
    app = Starlette(routes=[Route("/v1/chat", echo, methods=["POST"])])
    middleware = AbuseGuard(app, policy=Policy(), freeze_gc=False)
    guard = middleware.guard

    def seen() -> float:
        row = guard.engine.key_table.find("i:127.0.0.1")  # the anonymous client's identity
        assert row is not None
        return float(guard.engine.key_table.data[row, L.F_COUNT])

    with serve(middleware) as base, httpx.Client(base_url=base, timeout=WAIT) as client:
        answer = client.post(
            "/v1/chat", content=PROMPT, headers={"content-type": "application/json"}
        )
        assert answer.status_code == 200
        assert "ratelimit-policy" in answer.headers  # decided, by the twin
        assert not guard.kernels_compiled
        after_twin = seen()
        assert after_twin >= 1.0
        (on_ready,) = switches  # what the compiling thread calls once it is done
        on_ready(kernel_set.compiled())
        assert guard.kernels_compiled
        answer = client.post(
            "/v1/chat", content=PROMPT, headers={"content-type": "application/json"}
        )
        assert answer.status_code == 200
        assert "ratelimit-policy" in answer.headers
        assert seen() > after_twin  # the compiled kernel went on from the twin's state
