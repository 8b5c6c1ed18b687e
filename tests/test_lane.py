"""The background lane: batches per cohort, an analyzer, priors written back to the kernel."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

from abuseguard import Guard, Policy, RequestInfo, Scoring, TokenBucket
from abuseguard.lane import BackgroundLane, LaneRecord, TemplateCoverage

FREE = [
    "what should I cook tonight with leeks and potatoes",
    "can you explain how a heat pump works in winter",
    "write a birthday poem for my sister who loves hiking",
    "why is the sky blue but sunsets are red",
    "help me plan a three day trip to Lisbon on a budget",
    "what are good exercises for lower back pain",
    "translate 'where is the train station' into Portuguese",
    "summarize the causes of the first world war in a paragraph",
    "how do I fix a leaking kitchen tap",
    "recommend some science fiction books like Dune",
    "what is the difference between a virus and a bacterium",
    "give me a packing list for a camping weekend",
]


def body(text: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": text}]})


def harvest_prompt(rng: random.Random) -> str:
    return (
        f"Solve the following problem and explain every step: a train leaves at "
        f"{rng.randrange(1, 12)} pm at {rng.randrange(40, 200)} km/h; another leaves "
        f"{rng.randrange(1, 5)} hours later at {rng.randrange(40, 200)} km/h."
        " When does it catch up?"
    )


def test_template_coverage_separates_sweeps_from_people_and_fixed_prompts() -> None:
    rng = random.Random(1)
    analyzer = TemplateCoverage(min_prompts=12)

    def records(texts: list[str], who: str) -> list[LaneRecord]:
        return [LaneRecord(who, float(i), body(t), "application/json") for i, t in enumerate(texts)]

    harvester = analyzer.analyze("k:h", records([harvest_prompt(rng) for _ in range(60)], "k:h"))
    person = analyzer.analyze("k:p", records([rng.choice(FREE) for _ in range(60)], "k:p"))
    fixed = analyzer.analyze(
        "k:f", records(["Classify this support ticket as billing or tech."] * 60, "k:f")
    )
    assert harvester is not None and harvester > 0.8
    assert person is not None and person < 0.2
    assert fixed is not None and fixed < 0.2
    assert analyzer.analyze("k:x", records(["hi", "\x00\xff", ""], "k:x")) is None


def test_lane_writes_priors_the_kernel_reads() -> None:
    guard = Guard(
        Policy(bucket=TokenBucket("100/second", burst=100), scoring=Scoring(content=False))
    )
    # TemplateCoverage is opt-in: it flags SDK backends (templated prompts, fresh fill-ins).
    lane = BackgroundLane(guard, [TemplateCoverage()])
    guard.observers.append(lane)
    rng = random.Random(2)
    for i in range(60):
        guard.check(
            RequestInfo(
                ip="198.51.100.7",
                key="harvester",
                ts=float(i * 17 + rng.random()),
                method="POST",
                body=body(harvest_prompt(rng)),
                headers={"content-type": "application/json"},
            )
        )
        guard.check(
            RequestInfo(
                ip="198.51.100.8",
                key="person",
                ts=float(i * 17 + 5),
                method="POST",
                body=body(rng.choice(FREE)),
            )
        )
    assert len(lane.queue) == 120
    assert lane.flush() == 2 and not lane.queue
    after = guard.check(RequestInfo(ip="198.51.100.7", key="harvester", ts=2000.0))
    person = guard.check(RequestInfo(ip="198.51.100.8", key="person", ts=2000.0))
    from abuseguard.engine import layout

    guard.check(RequestInfo(ip="198.51.100.7", key="harvester", ts=2001.0))
    assert guard.engine.io[layout.O_CONTRIB + layout.S_PRIOR] > 2.0
    assert after.score > person.score


def test_lane_queue_is_bounded_and_skips_anonymous_and_bodiless() -> None:
    guard = Guard(Policy(scoring=Scoring(content=False)))
    lane = BackgroundLane(guard, max_queue=5)
    for i in range(10):
        d = guard.check(RequestInfo(ip="192.0.2.1", key=f"k{i}", ts=float(i), body="x"))
        lane(RequestInfo(ip="192.0.2.1", key=f"k{i}", body="x"), d)
    anon = guard.check(RequestInfo(ip="192.0.2.9", ts=1.0, body="x"))
    lane(RequestInfo(ip="192.0.2.9", body="x"), anon)
    bodiless = guard.check(RequestInfo(ip="192.0.2.1", key="k0", ts=20.0))
    lane(RequestInfo(ip="192.0.2.1", key="k0"), bodiless)
    assert len(lane.queue) == 5 and lane.dropped == 5


def test_lane_runs_in_the_event_loop_and_survives_a_broken_analyzer() -> None:
    class Broken:
        def analyze(self, identity: str, records: object) -> float | None:
            raise RuntimeError("bug")

    class Constant:
        def analyze(self, identity: str, records: object) -> float | None:
            return 0.9

    guard = Guard(Policy(scoring=Scoring(content=False)))
    lane = BackgroundLane(guard, [Broken(), Constant()], interval=0.01)
    d = guard.check(RequestInfo(ip="192.0.2.1", key="acct", ts=1.0, body="hello"))
    lane(RequestInfo(ip="192.0.2.1", key="acct", body="hello"), d)

    async def main() -> None:
        lane.start()
        for _ in range(200):
            if lane.priors_written:
                break
            await asyncio.sleep(0.01)
        await lane.stop()

    asyncio.run(main())
    assert lane.priors_written == 1


def test_the_lane_reads_the_creation_time_from_the_account_facts() -> None:
    from abuseguard import AccountFacts, Decision
    from abuseguard.decision import Action
    from abuseguard.operations.evidence import Observed

    guard = Guard(Policy(unverified_keys=None))
    lane = BackgroundLane(guard)
    seen: list[Observed] = []
    read_fields = lane.evidence.read_fields

    def spy(*fields: Any) -> object:
        seen.append(Observed(*fields))
        return read_fields(*fields)

    lane.evidence.read_fields = spy  # type: ignore[method-assign]
    info = RequestInfo(
        ip="192.0.2.8",
        ts=10 * 86400.0,
        key="sk-a",
        body=body("hello there"),
        headers={"content-type": "application/json"},
        account=AccountFacts(age_days=2.5),
    )
    lane(info, Decision(Action.ALLOW, identity="k:abc"))
    lane.flush()
    assert seen and seen[0].created == 7.5 * 86400.0
