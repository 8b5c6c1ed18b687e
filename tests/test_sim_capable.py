"""The capable mix: the 2026 adversary and the honest heavy users, as the public accounts
describe them (sim/capable.py, sim/multilingual.py)."""

from __future__ import annotations

import io
import json
import random
from collections import Counter, defaultdict
from typing import Any

import pytest

from abuseguard.sim import MIXES, multilingual, simulate
from abuseguard.sim.scenarios import CLASSIC


def _lines(**kwargs: Any) -> list[dict[str, Any]]:
    out = io.StringIO()
    simulate(out, **{"mix": "capable", "hours": 2.0, "scale": 0.25, "seed": 5, **kwargs})
    return [json.loads(line) for line in out.getvalue().splitlines()]


@pytest.fixture(scope="module")
def capable() -> list[dict[str, Any]]:
    return _lines()


def _by_kind(lines: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    rows = [d for d in lines if d["kind"] == kind]
    assert rows, f"no {kind} lines"
    return rows


def test_the_capable_mix_is_deterministic_and_leaves_default_alone() -> None:
    assert _lines(seed=9, hours=0.5) == _lines(seed=9, hours=0.5)
    assert set(MIXES["default"]) == set(CLASSIC)
    assert {"hydra", "trace_coercion", "reseller", "eval_harness", "researcher"} <= set(
        MIXES["capable"]
    )


def test_hydra_accounts_look_like_ordinary_users() -> None:
    rows = _by_kind(_lines(only=("hydra",), hours=24.0, scale=0.1), "hydra")
    by_actor: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for d in rows:
        by_actor[d["actor"]].append(d)
    assert len(by_actor) >= 12  # 320 at scale 1
    # most exits carry no anonymizer flag, and the few flags have low confidence
    flagged = [d for d in rows if d.get("anon")]
    assert len(flagged) < 0.2 * len(rows)
    # every account keeps one persona (User-Agent and header set) across its sessions
    for lines in by_actor.values():
        assert (
            len({(d.get("ua"), json.dumps(d.get("headers"), sort_keys=True)) for d in lines}) == 1
        )
    # and moves between addresses session by session
    moving = sum(len({d["ip"] for d in lines}) > 1 for lines in by_actor.values())
    assert moving > 0.3 * len(by_actor)
    # requests per account stay far below any per-account rate limit (10/s default)
    for lines in by_actor.values():
        ts = sorted(d["ts"] for d in lines)
        busiest = max((sum(1 for u in ts if t <= u < t + 60.0) for t in ts), default=0)
        assert busiest <= 30


def test_hydra_prompts_are_diverse_multilingual_and_ask_for_reasoning(
    capable: list[dict[str, Any]],
) -> None:
    bodies = [json.loads(d["body"]) for d in _by_kind(capable, "hydra")]
    prompts = [b["messages"][-1]["content"] for b in bodies]
    assert len(set(prompts)) > 0.95 * len(prompts)
    ascii_share = sum(p.isascii() for p in prompts) / len(prompts)
    assert 0.2 < ascii_share < 0.8  # a large non-English share
    asks = [a for phrases in multilingual.REASONING_ASKS.values() for a in phrases]
    assert sum(any(a in p for a in asks) for p in prompts) > 0.8 * len(prompts)
    # the operation's request shape: one model, few max_tokens values per operation
    assert Counter(b["model"] for b in bodies).most_common(1)[0][1] == len(bodies)


def test_honest_heavy_users_are_there(capable: list[dict[str, Any]]) -> None:
    harness = _by_kind(capable, "eval_harness")
    by_actor: dict[str, set[str]] = defaultdict(set)
    for d in harness:
        by_actor[d["actor"]].add(d["ip"])
    assert all(len(ips) == 1 for ips in by_actor.values())  # one cloud address each
    texts = [json.loads(d["body"])["messages"][-1]["content"] for d in harness if d.get("body")]
    # a public benchmark's fixed format: multiple choice, or chain-of-thought prompting
    assert texts
    assert all(t.endswith(("Answer:", "Let's think step by step.")) for t in texts)
    researchers = [
        json.loads(d["body"])["messages"][-1]["content"] for d in _by_kind(capable, "researcher")
    ]
    assert any(not t.isascii() for t in researchers)
    _by_kind(capable, "prompt_dev")
    _by_kind(capable, "multilingual_chat")


def test_trace_coercion_asks_for_the_models_own_thinking(capable: list[dict[str, Any]]) -> None:
    prompts = [
        json.loads(d["body"])["messages"][-1]["content"]
        for d in _by_kind(capable, "trace_coercion")
    ]
    coercions = [c for phrases in multilingual.TRACE_COERCION.values() for c in phrases]
    assert all(any(c in p for c in coercions) for p in prompts)
    assert sum(not p.isascii() for p in prompts) > 0.5 * len(prompts)


@pytest.mark.parametrize("language", multilingual.LANGUAGES)
def test_questions_in_every_language(language: str) -> None:
    rng = random.Random(language)
    for subject in multilingual.SUBJECTS:
        text = multilingual.reasoning_question(rng, language, subject)
        assert text.strip()
        assert any(a in text for a in multilingual.REASONING_ASKS[language])
        if language in ("zh", "ja", "ko", "ru"):
            assert not text.isascii()
