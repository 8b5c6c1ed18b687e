"""A guard's start-up freezes the process's objects out of the garbage collector's reach
(`abuseguard.heap`), once, unless told not to. ``gc.freeze()`` is process-wide, so each case
runs in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

_SCRIPT = r"""
import asyncio, gc, json, sys
from abuseguard import AbuseGuard, Guard, Policy
from abuseguard.testing import serve
import httpx
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

async def hello(request):
    return PlainTextResponse("hi")

app = Starlette(routes=[Route("/", hello)])
middleware = AbuseGuard(app, policy=Policy(), freeze_gc=sys.argv[1] == "on")
before = gc.get_freeze_count()
with serve(middleware) as base:
    status = httpx.get(base + "/").status_code
    frozen = gc.get_freeze_count()
    tracked = len(gc.get_objects())
asyncio.run(Guard(Policy()).startup())  # a second guard: the process is frozen once
print(json.dumps({"status": status, "before": before, "frozen": frozen, "tracked": tracked,
                  "frozen_later": gc.get_freeze_count()}))
"""


def run(setting: str) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, setting],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, int] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def test_the_lifespan_freezes_the_start_up_objects_once() -> None:
    report = run("on")
    assert report["status"] == 200
    assert report["before"] == 0
    # Numba, llvmlite, numpy, the app and the guard: tens of thousands of objects that
    # full collections no longer walk, far more than what is still tracked.
    assert report["frozen"] > 20_000
    assert report["tracked"] < report["frozen"] // 2
    # Another guard starting in the same process freezes nothing more (frozen objects
    # freed since leave the count): only the first start-up collects and freezes (each
    # start-up would cost a full collection).
    assert report["frozen_later"] <= report["frozen"]


def test_freeze_gc_false_leaves_the_collector_alone() -> None:
    report = run("off")
    assert report["status"] == 200
    assert report["frozen"] == 0
    assert report["frozen_later"] > 0  # the second guard has the default
