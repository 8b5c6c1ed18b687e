"""The public stages the benchmarks time: `Guard.run_engine` then `Guard.decision_from_engine`
decide as `Guard.check_prepared` does, and `Engine.last_kernel_inputs` repeats the kernel call
the guard just made."""

from __future__ import annotations

import json

import numpy as np
import pytest

from abuseguard import Action, Guard, NetworkPolicy, Policy, Quota, RequestInfo, TokenBucket
from abuseguard.engine import kernels
from tests.conftest import RedisServer

SCRIPT_UA = "python-requests/2.31"
BROWSER_UA = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
ALLOWED_NETWORK = "203.0.113.0/24"
DENIED_NETWORK = "198.18.0.0/15"


def staged_policy(*, quota: bool = True) -> Policy:
    """Small limits, so that the stream below meets bucket refusals, the network rules and
    risk actions as well as plain allows; without a quota a plain allow takes the guard's
    short path, with one the quota is asked in the guard's clock."""
    return Policy(
        bucket=TokenBucket("2/second", burst=4),
        quotas=(Quota("30/minute"),) if quota else (),
        network=NetworkPolicy(
            per_ip=TokenBucket("5/second", burst=8),
            allow_cidrs=(ALLOWED_NETWORK,),
            deny_cidrs=(DENIED_NETWORK,),
        ),
        # The unverified-key gate runs before the stages timed here (keys never answered).
        unverified_keys=None,
    )


def request_stream() -> list[RequestInfo]:
    """Accounts and anonymous clients, some in bursts, one on an allow-listed network and
    one on a denied network, with prompts to fingerprint, in time order."""
    clients = [
        ("198.51.100.7", "sk-burst", SCRIPT_UA),
        ("198.51.100.8", "sk-steady", BROWSER_UA),
        ("192.0.2.44", None, SCRIPT_UA),
        ("203.0.113.9", "sk-allowed", SCRIPT_UA),
        ("198.18.0.5", "sk-denied", BROWSER_UA),
    ]
    out = []
    ts = 1_700_000_000.0
    for i in range(240):
        ip, key, ua = clients[0] if i % 3 == 0 else clients[i % len(clients)]
        ts += 0.05
        body = json.dumps(
            {"messages": [{"role": "user", "content": f"Explain step by step: what is {i} * 7?"}]}
        )
        out.append(
            RequestInfo(
                ip=ip,
                ts=ts,
                key=key,
                method="POST",
                path="/v1/chat/completions",
                ua=ua,
                headers={"user-agent": ua, "content-type": "application/json"},
                body=body,
            )
        )
    return out


@pytest.mark.parametrize("quota", [False, True], ids=["short-path", "quota"])
def test_run_engine_then_decision_from_engine_decides_as_check_prepared(quota: bool) -> None:
    whole, staged = Guard(staged_policy(quota=quota)), Guard(staged_policy(quota=quota))
    actions: set[Action] = set()
    for info in request_stream():
        expected = whole.check_prepared(info, whole.prepare(info))
        p = staged.prepare(info)
        staged.run_engine(p)
        decision = staged.decision_from_engine(info, p)
        assert decision == expected
        assert decision.policies == expected.policies
        assert decision.cost == expected.cost
        actions.add(decision.action)
    # The stream reaches the plain allow and the refusals, not only one of them.
    assert Action.ALLOW in actions
    assert len(actions) > 1


def test_decision_from_engine_refuses_a_shared_backend(redis_server: RedisServer) -> None:
    guard = Guard(staged_policy(), backend=redis_server.url)
    info = request_stream()[0]
    with pytest.raises(RuntimeError, match="memory backend"):
        guard.decision_from_engine(info, guard.prepare(info))


@pytest.mark.parametrize(
    ("ip", "key", "scored"),
    [
        ("198.51.100.7", "sk-account", True),
        ("192.0.2.44", None, True),
        ("203.0.113.9", "sk-allowed", False),
    ],
    ids=["account", "anonymous", "allow-listed"],
)
def test_last_kernel_inputs_repeat_the_guards_kernel_call(
    ip: str, key: str | None, scored: bool
) -> None:
    guard = Guard(staged_policy())
    requests = [
        RequestInfo(
            ip=ip,
            ts=1_700_000_000.0 + i * 0.3,
            key=key,
            method="POST",
            path="/v1/chat/completions",
            ua=SCRIPT_UA,
            headers={"user-agent": SCRIPT_UA, "content-type": "application/json"},
            body=json.dumps({"messages": [{"role": "user", "content": f"Hi number {i}"}]}),
        )
        for i in range(6)
    ]
    for info in requests[:-1]:  # the rows of this client exist before the measured call
        guard.check(info)
    p = guard.prepare(requests[-1])
    state = guard.engine.state
    before = state.copy()
    guard.run_engine(p)
    after = state.copy()

    inputs = guard.engine.last_kernel_inputs(scored=scored)

    assert inputs[0] is state
    assert all(type(value) in (int, float, bool) for value in inputs[1:])
    state[:] = before
    guard.engine.decide_with(*inputs)
    assert np.array_equal(state, after, equal_nan=True)
    state[:] = before
    kernels.decide_with(*inputs)  # the dispatcher takes the same arguments
    assert np.array_equal(state, after, equal_nan=True)
