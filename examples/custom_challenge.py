"""A custom challenge enforcer: a proof of work instead of the default 403.

When the guard decides ``challenge`` for a client (its risk score reached the challenge
step of the ladder, or a network rule says "challenge"), this enforcer answers
``401`` with a signed puzzle in the ``AbuseGuard-Challenge`` header and a problem+json
body. The client finds a nonce whose SHA-256 with the puzzle starts with ``bits`` zero
bits and repeats the request with ``AbuseGuard-Challenge`` (the puzzle) and
``AbuseGuard-Solution`` (the nonce); a valid solution lets the request through, and the
same solution keeps working for that identity until the puzzle expires.

The puzzle is stateless: ``identity|expiry|salt|hmac``, signed with a server secret and
bound to the guard's identity of the client (the hash of its API key, or its IP). Run::

    uvicorn custom_challenge:app --app-dir examples
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from abuseguard import AbuseGuard, Action, Decision, Enforcement, Policy, TokenBucket
from abuseguard.enforce import ASGIApp, Receive, Scope, Send

CHALLENGE_HEADER = "abuseguard-challenge"
SOLUTION_HEADER = "abuseguard-solution"


def leading_zero_bits(digest: bytes) -> int:
    bits = 0
    for byte in digest:
        if byte == 0:
            bits += 8
            continue
        return bits + 8 - byte.bit_length()
    return bits


def solve(puzzle: str, bits: int) -> str:
    """What a client runs: find a nonce that gives ``bits`` leading zero bits."""
    nonce = 0
    while leading_zero_bits(hashlib.sha256(f"{puzzle}:{nonce}".encode()).digest()) < bits:
        nonce += 1
    return str(nonce)


class ProofOfWorkChallenge:
    """An Enforcer for Action.CHALLENGE: solved requests pass, the rest get a puzzle."""

    def __init__(
        self,
        secret: bytes,
        *,
        bits: int = 16,
        ttl: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not secret:
            raise ValueError("secret must not be empty")
        if not 1 <= bits <= 32:
            raise ValueError(f"bits must be within 1..32, got {bits!r}")
        self.secret = secret
        self.bits = bits
        self.ttl = ttl
        self.clock = clock

    def issue(self, identity: str) -> str:
        expires = int(self.clock() + self.ttl)
        body = f"{identity}|{expires}|{secrets.token_hex(8)}"
        return f"{body}|{self._sign(body)}"

    def verify(self, identity: str, puzzle: str, solution: str) -> bool:
        parts = puzzle.split("|")
        if len(parts) != 4 or len(solution) > 20 or not solution.isdigit():
            return False
        body, signature = "|".join(parts[:3]), parts[3]
        if not hmac.compare_digest(signature, self._sign(body)):
            return False
        owner, expires, _ = parts[:3]
        if owner != identity or not expires.isdigit() or int(expires) < self.clock():
            return False
        digest = hashlib.sha256(f"{puzzle}:{solution}".encode()).digest()
        return leading_zero_bits(digest) >= self.bits

    def _sign(self, body: str) -> str:
        return hmac.new(self.secret, body.encode(), hashlib.sha256).hexdigest()[:32]

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, decision: Decision, call_next: ASGIApp
    ) -> None:
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in scope.get("headers") or ()
        }
        puzzle = headers.get(CHALLENGE_HEADER, "")
        solution = headers.get(SOLUTION_HEADER, "")
        if puzzle and solution and self.verify(decision.identity, puzzle, solution):
            await call_next(scope, receive, send)
            return
        puzzle = self.issue(decision.identity)
        # No risk reasons in the body: they would tell a bot which signal to change.
        body = json.dumps({
            "type": "about:blank",
            "title": "Proof of work required",
            "status": 401,
            "detail": f"Find a nonce so that sha256('<challenge>:<nonce>') starts with "
                      f"{self.bits} zero bits; resend with the {CHALLENGE_HEADER} and "
                      f"{SOLUTION_HEADER} headers.",
            "challenge": puzzle,
            "bits": self.bits,
        }).encode()  # fmt: skip
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/problem+json"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
            (CHALLENGE_HEADER.encode(), f'pow; bits={self.bits}; challenge="{puzzle}"'.encode()),
        ]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})


def challenge_policy() -> Policy:
    """Risky clients are challenged from a score of 0.6 and blocked from 0.9."""
    return Policy(
        bucket=TokenBucket("5/second", burst=20),
        enforcement=Enforcement(ladder=((0.5, Action.LOG), (0.6, Action.CHALLENGE),
                                        (0.9, Action.BLOCK))),
    )  # fmt: skip


async def home(request: Request) -> PlainTextResponse:
    return PlainTextResponse("the resource\n")


def create_app(
    policy: Policy | None = None,
    *,
    bits: int = 16,
    secret: bytes | None = None,
    **guard_options: Any,
) -> Starlette:
    secret = secret or os.environ.get("POW_SECRET", "").encode() or secrets.token_bytes(32)
    app = Starlette(routes=[Route("/", home)])
    app.add_middleware(
        AbuseGuard,
        policy=policy if policy is not None else challenge_policy(),
        enforcers={Action.CHALLENGE: ProofOfWorkChallenge(secret, bits=bits)},
        **guard_options,
    )
    return app


app = create_app()
