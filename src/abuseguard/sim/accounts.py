"""What the host app would know about each simulated account (the trace's ``account``).

Drawn from a random stream of its own per actor, so turning the facts on does not change
any other field of the trace. Honest accounts have ages spread over years, are mostly
verified, pay with their own card, and a share of evaluation harnesses declare their
benchmark runs. Accounts of one operation (the actors that share a group in their name,
``hydra/op0/...``) were created in batches, are verified through disposable phone
numbers about half the time, and pay, when they pay, with a few shared cards: what public
accounts of 2026 campaigns describe (fraudulent accounts made in bulk, paid for with a
handful of instruments).
"""

from __future__ import annotations

import hashlib
import math
import random
from typing import Any

# Benign kinds whose accounts belong to an organisation, and their plan names.
_ORG_KINDS = frozenset({"sdk_backend", "eval_harness", "corporate_vpn", "prompt_dev"})
_API_PLANS = ("tier-1", "tier-2", "tier-3", "tier-4")
_WEB_PLANS = ("free", "free", "free", "plus")


def _fingerprint(*parts: object) -> str:
    return hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).hexdigest()


def account_facts(seed: int, actor: str, label: str, kind: str) -> dict[str, Any]:
    """The facts of one simulated account, as a trace line's ``account`` object."""
    rng = random.Random(f"{seed}/account/{actor}")
    if label == "benign":
        return _benign(rng, seed, actor, kind)
    return _operation(seed, actor, kind, rng)


def _benign(rng: random.Random, seed: int, actor: str, kind: str) -> dict[str, Any]:
    age = max(0.01, rng.lognormvariate(math.log(220.0), 1.3))
    if rng.random() < 0.03:
        age = rng.uniform(0.01, 3.0)  # people sign up every day
    facts: dict[str, Any] = {
        "age_days": round(age, 3),
        "verified": rng.random() < (0.45 if age < 3.0 else 0.88),
    }
    api = kind in _ORG_KINDS or (kind == "researcher" and rng.random() < 0.4)
    plan = rng.choice(_API_PLANS if api else _WEB_PLANS)
    facts["plan"] = plan
    if plan != "free":
        facts["payment"] = _fingerprint(seed, "card", actor)
    if kind in _ORG_KINDS:
        facts["org"] = "org-" + _fingerprint(seed, "org", actor)[:8]
    tags: list[str] = []
    if kind == "eval_harness" and rng.random() < 0.5:
        tags.append("benchmark")
    if kind == "sdk_backend" and rng.random() < 0.15:
        tags.append("trusted")
    if tags:
        facts["tags"] = tags
    return facts


def _operation(seed: int, actor: str, kind: str, rng: random.Random) -> dict[str, Any]:
    group = actor.rsplit("/", 1)[0] if actor.count("/") >= 2 else kind
    op = random.Random(f"{seed}/operation/{group}")
    batches = [op.uniform(1.0, 45.0) for _ in range(op.randint(2, 6))]
    cards = op.randint(2, 8)
    paid_share = op.uniform(0.2, 0.7)
    age = max(0.01, rng.choice(batches) + rng.uniform(-0.4, 0.4))
    facts: dict[str, Any] = {
        "age_days": round(age, 3),
        "verified": rng.random() < op.uniform(0.3, 0.7),
    }
    if rng.random() < paid_share:
        facts["plan"] = rng.choice(_API_PLANS[:2])
        facts["payment"] = _fingerprint(seed, "card", group, rng.randrange(cards))
    else:
        facts["plan"] = "free"
    return facts
