"""The review's mends on the request path: one computation where there were two."""

from __future__ import annotations

import pytest

from abuseguard.backends.memory import MemoryBackend


@pytest.mark.parametrize("strategy", ["fixed-window", "moving-window", "sliding-window-counter"])
def test_peek_quota_answers_what_hit_quota_would_without_counting(strategy: str) -> None:
    now = [1000.0]
    backend = MemoryBackend()
    backend.bind(lambda: now[0])
    for _ in range(3):
        peeked = backend.peek_quota("5/minute", strategy, "k:a", 1)
        # nothing counted (the sliding window counter's reset follows the wall clock)
        assert peeked[:2] == backend.peek_quota("5/minute", strategy, "k:a", 1)[:2]
        hit = backend.hit_quota("5/minute", strategy, "k:a", 1)
        assert peeked[0] == hit[0]
        assert hit[1] == peeked[1] - 1  # the same window, one hit later
        now[0] += 1.0
    assert backend.peek_quota("5/minute", strategy, "k:a", 3)[:2] == (
        False,
        backend.quota_state("5/minute", strategy, "k:a")[0],
    )
    assert backend.peek_quota("5/minute", strategy, "k:a", 0)[0]
