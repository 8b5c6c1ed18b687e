"""Policies for `abuseguard replay --policy benchmarks/replay_policies.py:NAME` in bench_scale."""

from __future__ import annotations

from abuseguard import Policy, Scoring


def content_policy() -> Policy:
    """The default policy with prompt content fingerprinting on."""
    return Policy(scoring=Scoring(content=True))
