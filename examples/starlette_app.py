"""A plain Starlette app with abuseguard: the README example, plus a look at the decision.

Run it with ``uvicorn starlette_app:app --app-dir examples`` and send a burst::

    for i in $(seq 12); do curl -s -o /dev/null -w '%{http_code}\\n' localhost:8000/; done

Ten requests pass at once (the burst), the eleventh gets 429 with ``Retry-After``,
``RateLimit`` and ``RateLimit-Policy``; five more are admitted each second after that.
``/healthz`` is exempt from the guard.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from abuseguard import AbuseGuard, Policy, TokenBucket, current_decision


async def home(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello\n")


async def whoami(request: Request) -> JSONResponse:
    """What the guard decided for this very request (reasons, score, what is left)."""
    decision = current_decision(request)
    if decision is None:
        return JSONResponse({"guarded": False})
    return JSONResponse({
        "guarded": True,
        "action": decision.action.value,
        "reasons": list(decision.reasons),
        "score": round(decision.score, 3),
        "remaining": decision.remaining,
        "identity": decision.identity,  # a keyed hash of the API key, or the client IP
    })  # fmt: skip


async def healthz(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok\n")


app = Starlette(
    routes=[Route("/", home), Route("/whoami", whoami), Route("/healthz", healthz)],
)
app.add_middleware(
    AbuseGuard,
    policy=Policy(bucket=TokenBucket(rate="5/second", burst=10), exempt_paths=("/healthz",)),
)
