"""Behaviour links (`abuseguard.operations.linker`, step 3d): accounts sharing a tool's value
(a system prompt, a request shape, a pair of them or with the persona) are linked without
their creation batch only when they behave like harvesting. An operation on residential
exits with no account facts links in its first hour; honest crowds that share a value with
each other and behave like a tool's users (a coding agent's multi-turn users, a templated
SDK app on one domain, students pasting one assignment, researchers reasoning about one
subject, people chatting with the reasoning model on the web app) stay unlinked."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from abuseguard.errors import ConfigError
from abuseguard.operations import EvidenceReader, Observed, OperationLinker, OperationsConfig
from abuseguard.operations.evidence import question_words
from abuseguard.operations.linker import TOOL_KEYS, TOOL_TAG
from abuseguard.report import _operations_lines
from abuseguard.sim import multilingual
from tests.test_operations import (
    BROWSER_HEADERS,
    CHROME,
    CLOUD,
    FIREFOX,
    RESIDENTIAL,
    SAFARI,
    SDK_UA,
    TOPICS,
    chat_body,
    honest_world,
    run_linker,
    sdk_headers,
)

Body = Callable[[random.Random, int], str]

REASONING_WEB = {"model": "atlas-1-reasoning", "stream": True}
OPERATION_SYSTEM = (
    "You are an expert tutor who never skips steps.",
    "You are a meticulous expert. Reason carefully and completely before answering.",
)
OPERATION_LANGUAGES = ("en", "zh", "es", "fr", "de", "ja", "ko", "ru", "pt")


@dataclass
class Member:
    identity: str
    ua: str
    headers: dict[str, str]
    asns: list[int]
    body: Body  # (rng, request number) -> the request's JSON body
    gap: float  # mean seconds between its requests
    crowd: str


def _messages(system: str | None, user: str) -> list[dict[str, str]]:
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": user}]


def operation(
    rng: random.Random,
    members: int = 64,
    name: str = "k:op",
    sdk_version: str = "1.54.3",
    system_prompts: tuple[str, ...] = OPERATION_SYSTEM,
    max_tokens: int = 12000,
    sdk_exits: list[int] | None = None,
    browsers: bool = True,
) -> list[Member]:
    """A hydra-like operation with no account facts: 60% of its accounts on a pinned SDK
    persona with its request shape (streaming chosen per account), the rest on real
    browsers through the web app's reasoning-model shape; 40% of its requests carry one of
    its two system prompts; each request leaves through a residential exit; 90% single
    turn; every account sweeps its own stretch of a taxonomy of subjects in nine languages,
    asking for the reasoning."""
    pinned = sdk_headers(version=sdk_version)
    out: list[Member] = []
    for i in range(members):
        sdk = i % 5 < 3 or not browsers
        if sdk:
            ua, headers = f"OpenAI/Python {sdk_version}", pinned
            shape: dict[str, object] = {
                "model": "atlas-1-reasoning",
                "max_tokens": max_tokens,
                "temperature": 0.6,
                "stream": i % 2 == 0,
            }
        else:
            ua, headers = rng.choice([CHROME, FIREFOX, SAFARI]), dict(BROWSER_HEADERS)
            shape = dict(REASONING_WEB)
        offset = rng.randrange(len(multilingual.SUBJECTS))

        def body(
            r: random.Random, n: int, shape: dict[str, object] = shape, at: int = offset
        ) -> str:
            subject = multilingual.SUBJECTS[(at + n) % len(multilingual.SUBJECTS)]
            language = r.choice(OPERATION_LANGUAGES)
            text = multilingual.reasoning_question(r, language, subject)
            system = r.choice(system_prompts) if r.random() < 0.4 else None
            messages = _messages(system, text)
            if r.random() < 0.1:
                earlier = multilingual.question(r, language, subject)
                messages[-1:-1] = [
                    {"role": "user", "content": earlier},
                    {"role": "assistant", "content": "an answer"},
                ]
            return json.dumps({**shape, "messages": messages})

        asns = RESIDENTIAL + list(range(30000, 30400))
        if sdk and sdk_exits is not None:
            asns = sdk_exits
        out.append(Member(f"{name}{i}", ua, headers, asns, body, 900.0, "operation"))
    return out


def reasoning_web_people(rng: random.Random, members: int = 120) -> list[Member]:
    """People on the web app with the reasoning model: the operation's browser shape, real
    browsers, chats of one to three turns, asking for reasoning now and then."""
    out = []
    for i in range(members):

        def body(r: random.Random, n: int) -> str:
            text = chat_body(r, system=None, shape=REASONING_WEB)
            if r.random() < 0.3:
                request = json.loads(text)
                request["messages"][-1]["content"] += " Explain step by step."
                text = json.dumps(request)
            return text

        ua = rng.choice([CHROME, FIREFOX, SAFARI])
        asns = [rng.choice(RESIDENTIAL)]
        out.append(Member(f"k:web{i}", ua, dict(BROWSER_HEADERS), asns, body, 300.0, "web"))
    return out


AGENT_SYSTEM = (
    "You are Forge, a coding agent working in the user's repository. Before every tool "
    "call, think step by step inside <thinking> tags, then act."
)
AGENT_SHAPE = {"model": "atlas-1-reasoning", "max_tokens": 16384, "temperature": 0.0, "tools": []}
AGENT_HEADERS = {
    "accept": "application/json",
    "content-type": "application/json",
    "x-forge-client": "cli",
    "x-forge-version": "2.3.1",
}


def coding_agent_users(rng: random.Random, members: int = 40) -> list[Member]:
    """A coding agent's users: its headers, its system prompt (which asks for step-by-step
    thinking), its shape; each task a session whose every request after the first carries
    the history so far (the agent's loop)."""
    out = []
    for i in range(members):

        def body(r: random.Random, n: int) -> str:
            step = n % 6  # six calls a task
            task = TOPICS[(n // 6) * 7 % len(TOPICS)]
            messages = _messages(AGENT_SYSTEM, f"Fix the failing test in {task}")
            for turn in range(step):
                messages.append({"role": "assistant", "content": f"tool call {turn}"})
                messages.append({"role": "user", "content": f"tool result {turn}: ok"})
            return json.dumps({**AGENT_SHAPE, "messages": messages})

        asns = [rng.choice(RESIDENTIAL + CLOUD)]
        out.append(Member(f"k:agent{i}", "forge/2.3.1", AGENT_HEADERS, asns, body, 120.0, "agent"))
    return out


TUTOR_SYSTEM = "You are a patient math tutor. Explain your reasoning step by step."


def tutor_app_backends(rng: random.Random, members: int = 40) -> list[Member]:
    """One open-source homework app deployed by many with their own keys: the SDK's
    default headers, the app's template system prompt (asking for the reasoning), each
    deployment's own settings (its shape), single-turn requests, each the app's template
    around a user's equation."""
    out = []
    for i in range(members):
        shape = {
            "model": "atlas-1-reasoning",
            "max_tokens": rng.choice([512, 800, 1000, 1024, 1500, 2000, 2048, 4096]),
            "temperature": rng.choice([0.0, 0.1, 0.2, 0.5, 0.7]),
        }

        def body(r: random.Random, n: int, shape: dict[str, object] = shape) -> str:
            a, b, c = r.randint(2, 99), r.randint(2, 99), r.randint(2, 99)
            text = f"Solve the equation {a}x + {b} = {c} for x and check the solution."
            return json.dumps({**shape, "messages": _messages(TUTOR_SYSTEM, text)})

        asns = [rng.choice(CLOUD)]
        out.append(Member(f"k:tutor{i}", SDK_UA, sdk_headers(), asns, body, 200.0, "tutor"))
    return out


ASSIGNMENT = (
    "Problem set 4, question 2: a ball is thrown upward at 18 m/s from a 30 m cliff. "
    "Find the time it takes to hit the ground. Show your work."
)


def students(rng: random.Random, members: int = 40) -> list[Member]:
    """A class pasting one assignment into the web app (the reasoning model), a few times
    each, sometimes with a word of their own."""
    out = []
    for i in range(members):

        def body(r: random.Random, n: int) -> str:
            text = ASSIGNMENT if r.random() < 0.6 else f"{ASSIGNMENT} Please, I am stuck."
            return json.dumps({**REASONING_WEB, "messages": _messages(None, text)})

        ua = rng.choice([CHROME, FIREFOX, SAFARI])
        asns = [rng.choice(RESIDENTIAL)]
        out.append(Member(f"k:student{i}", ua, dict(BROWSER_HEADERS), asns, body, 600.0, "class"))
    return out


LAB_HEADERS = {
    "accept": "*/*",
    "accept-encoding": "gzip, deflate",
    "content-type": "application/json",
}
LAB_SHAPE = {"model": "atlas-1-reasoning", "max_tokens": 8192, "temperature": 0.0}


def researchers(rng: random.Random, members: int = 30) -> list[Member]:
    """Researchers on one subject through one harness (its HTTP client, its shape), from
    their homes and campuses, each asking single questions on chemistry in their own
    language with a demand for the reasoning."""
    out = []
    for i in range(members):
        language = rng.choice(("en", "de", "fr", "es"))

        def body(r: random.Random, n: int, language: str = language) -> str:
            text = multilingual.reasoning_question(r, language, "chemistry")
            return json.dumps({**LAB_SHAPE, "messages": _messages(None, text)})

        asns = [rng.choice(RESIDENTIAL + CLOUD)]
        ua = "python-httpx/0.27.0"
        out.append(Member(f"k:lab{i}", ua, LAB_HEADERS, asns, body, 600.0, "lab"))
    return out


def honest_members(rng: random.Random, accounts: int) -> list[Member]:
    """`honest_world`'s crowds (campus, SDK apps, a popular system prompt, people)."""
    out = []
    for identity, ua, headers, asns, system, shape, kind in honest_world(rng, accounts):

        def body(
            r: random.Random, n: int, system: str | None = system, shape: dict[str, object] = shape
        ) -> str:
            return chat_body(r, system=system, shape=shape)

        out.append(Member(identity, ua, headers, asns, body, 240.0, kind))
    return out


def requests(
    rng: random.Random, members: list[Member], hours: float
) -> list[tuple[float, str, Observed]]:
    out: list[tuple[float, str, Observed]] = []
    for member in members:
        ts = rng.uniform(0.0, member.gap)
        n = 0
        while ts < hours * 3600.0:
            body = member.body(rng, n)
            seen = Observed(ts, "", member.ua, member.headers, body, rng.choice(member.asns), 900.0)
            out.append((ts, member.identity, seen))
            n += 1
            ts += rng.expovariate(1.0 / member.gap)
    out.sort(key=lambda r: r[0])
    return out


TOOL_CROWDS = ("web", "agent", "tutor", "class", "lab")


def world(rng: random.Random) -> list[Member]:
    return (
        honest_members(rng, 1200)
        + reasoning_web_people(rng)
        + coding_agent_users(rng)
        + tutor_app_backends(rng)
        + students(rng)
        + researchers(rng)
        + operation(rng)
    )


@dataclass
class Run:
    members: list[Member]
    first_hour: dict[str, str | None]  # identity -> cluster after the first hour
    first_hour_requests: dict[str, int]
    linker: OperationLinker


@pytest.fixture(scope="module")
def behaviour_run() -> Run:
    rng = random.Random(41)
    members = world(rng)
    traffic = requests(rng, members, hours=3.0)
    linker = OperationLinker(OperationsConfig(recluster_every=60.0))
    first = [r for r in traffic if r[0] < 3600.0]
    run_linker(linker, first)
    first_hour = {m.identity: linker.cluster_of(m.identity) for m in members}
    asked = Counter(identity for _, identity, _ in first)
    run_linker(linker, [r for r in traffic if r[0] >= 3600.0])
    return Run(members, first_hour, asked, linker)


def test_an_operation_without_account_facts_links_by_behaviour_in_its_first_hour(
    behaviour_run: Run,
) -> None:
    run = behaviour_run
    ops = [m.identity for m in run.members if m.crowd == "operation"]
    linked = [m for m in ops if run.first_hour[m] is not None]
    # An account is judged from its third request: of those that sent three in the first
    # hour (four an hour on average), half or more are linked by its end: the rest sent a chat
    # or questions whose way of asking for reasoning the markers do not know.
    judged = [m for m in ops if run.first_hour_requests[m] >= 3]
    assert len(linked) >= 0.5 * len(judged) >= 16, (len(linked), len(judged))
    honest_first = [m.identity for m in run.members if m.crowd != "operation"]
    assert not [m for m in honest_first if run.first_hour[m] is not None]
    linker = run.linker
    later = [m for m in ops if linker.cluster_of(m) is not None]
    assert len(later) >= 0.8 * len(ops)
    assert all(m in linker.firm for m in later)
    clusters = {linker.cluster_of(m) for m in later}
    for cluster_id in clusters:
        assert cluster_id is not None
        cluster = linker.clusters[cluster_id]
        assert "behaviour" in cluster.linked_by and cluster.score >= 0.7
        summary = cluster.summary()
        figures = summary["behaviour"]
        assert isinstance(figures, dict)
        assert figures["link"] in {
            "system",
            "shape",
            "persona+system",
            "persona+shape",
            "system+shape",
        }
        assert figures["single_turn"] >= 0.8 and figures["reasoning"] >= 0.5  # type: ignore[operator]
        assert figures["members"] >= 8 and figures["topic_spread"] >= 0.5  # type: ignore[operator]


def test_honest_crowds_that_share_a_tools_value_stay_unlinked(behaviour_run: Run) -> None:
    """Each tool crowd shares a value (a system prompt, a shape, a pair) among at least
    ``min_size`` accounts, distinctive of it: what a link could stand on. Their behaviour
    is a tool's users': multi-turn histories (the agent), one template on one domain (the
    tutor app), one pasted assignment (the class), one subject (the lab), chats (the web).
    """
    run = behaviour_run
    linker = run.linker
    assert not [
        m.identity
        for m in run.members
        if m.crowd != "operation" and linker.cluster_of(m.identity) is not None
    ]
    for crowd in TOOL_CROWDS:
        accounts = [linker.accounts[m.identity] for m in run.members if m.crowd == crowd]
        shared = [
            key
            for key in {key for account in accounts for key in account.tool_keys}
            if sum(key in account.tool_keys for account in accounts) >= linker.config.min_size
        ]
        assert shared, f"{crowd} shares no value"
        assert not [account.identity for account in accounts if linker.harvests(account)], crowd


def test_each_behaviour_test_turns_a_tool_crowd_down(behaviour_run: Run) -> None:
    """Which per-member test turns each crowd down: chats and agent loops are not single
    turn, the tutor app's template and the lab's subject put one word in every question,
    the class asks one thing again and again."""
    run = behaviour_run
    linker = run.linker
    config = linker.config

    def members(crowd: str) -> list[str]:
        return [m.identity for m in run.members if m.crowd == crowd]

    for identity in members("agent") + members("web"):
        account = linker.accounts[identity]
        assert account.single < config.harvest_single_turn * account.requests
    for identity in members("tutor") + members("lab") + members("class"):
        account = linker.accounts[identity]
        assert account.single == account.requests
        assert max(account.words.values()) > config.max_word_share * account.worded
    for identity in members("tutor") + members("class"):
        account = linker.accounts[identity]
        assert account.reasoned == account.requests  # the template or the assignment asks
    for identity in members("class"):
        account = linker.accounts[identity]
        assert len(account.topics) <= 2 < account.requests


def test_without_behaviour_links_the_operation_is_not_linked() -> None:
    """The same first hour, the behaviour links off: with no account facts nothing links
    the operation (its accounts vary on a third kind: exits, streaming, system prompt)."""
    rng = random.Random(41)
    members = world(rng)
    traffic = [r for r in requests(rng, members, hours=3.0) if r[0] < 3600.0]
    linker = OperationLinker(OperationsConfig(recluster_every=60.0, behaviour_links=False))
    run_linker(linker, traffic)
    assert not [m.identity for m in members if linker.cluster_of(m.identity) is not None]


def test_behaviour_link_keys_are_counted_and_dropped(behaviour_run: Run) -> None:
    linker = behaviour_run.linker
    counts: dict[tuple[int, ...], int] = {}
    for account in linker.accounts.values():
        sigs = account.signatures
        for index, kinds in enumerate(TOOL_KEYS):
            if all(sigs[k] for k in kinds):
                key = (TOOL_TAG - index, *[sigs[k] for k in kinds])
                counts[key] = counts.get(key, 0) + 1
    assert linker.tool_count == counts
    for account in linker.accounts.values():
        assert account.top_word == max(account.words.values(), default=0)
    ways = {m: way for m, a in linker.accounts.items() if (way := linker.harvests(a))}
    assert linker.harvesting == ways
    assert +linker.harvest_ways == Counter(ways.values())
    small = OperationLinker(OperationsConfig(max_accounts=50))
    reader = EvidenceReader()
    rng = random.Random(2)
    for ts, identity, seen in requests(rng, operation(rng, 20), hours=1.0):
        small.observe(identity, [(ts, reader.read(seen))])
    assert small.tool_count
    for identity in list(small.accounts):
        small._drop(identity)
    assert small.tool_count == {} and small.harvesting == {}


def test_the_evidence_reads_reasoning_asks_and_the_words_of_the_question() -> None:
    reader = EvidenceReader()

    def read(system: str | None, user: str) -> tuple[float, tuple[int, ...]]:
        body = json.dumps({"model": "m", "messages": _messages(system, user)})
        evidence = reader.read(Observed(1.0, body=body))
        return evidence.reasoning, evidence.words

    asked, words = read(None, "In physics, how would you solve a pendulum? Explain step by step.")
    assert asked >= 0.5
    assert words == question_words("In physics, how would you solve a pendulum?")
    assert len(words) == 4  # physics, would, solve, pendulum: not "step", not "explain"
    system_asks, _ = read("Think step by step.", "What is a pendulum?")
    assert system_asks >= 0.5
    plain, plain_words = read(None, "What is a pendulum?")
    assert plain == 0.0 and len(plain_words) == 2
    # A conversation's later turn: read for what the behaviour links judge, it says nothing.
    history = [
        {"role": "user", "content": "What is a pendulum?"},
        {"role": "assistant", "content": "a weight on a string"},
        {"role": "user", "content": "Explain its period step by step."},
    ]
    later = reader.read(Observed(1.0, body=json.dumps({"model": "m", "messages": history})))
    assert not later.single_turn and later.reasoning == 0.0 and later.words == ()


def test_the_replay_report_names_the_behaviour_link_and_its_figures() -> None:
    figures = {
        "link": "shape",
        "way": "reasoning",
        "members": 108,
        "holders": 197,
        "single_turn": 0.91,
        "reasoning": 0.715,
        "turns": 0.0,
        "new_topics": 0.961,
        "word_share": 0.275,
        "topic_spread": 0.573,
        "harvesting_share": 0.235,
        "surprise": 44.8,
    }
    cluster = {
        "id": "op2",
        "size": 300,
        "score": 0.87,
        "linked_by": {"behaviour": 15, "shape": 19},
        "lift": 3.2,
        "single_turn_share": 0.91,
        "topic_spread": 0.57,
        "behaviour": figures,
        "members_sample": ["a"],
    }
    text = "\n".join(_operations_lines({"clusters": [cluster]}, top=5))
    assert "behaviour 15" in text
    assert "op2 behaviour: shape held by 197, 108 harvest by reasoning (single-turn 91%" in text
    assert "reasoning asked 72%, taking turns 0%, new topics 96%, top word 28%" in text


@pytest.mark.parametrize(
    ("field", "value"),
    [("harvest_min_requests", 0), ("harvest_reasoning", 1.5), ("max_word_share", -0.1)],
)
def test_bad_behaviour_config_is_refused(field: str, value: object) -> None:
    with pytest.raises(ConfigError):
        OperationsConfig(**{field: value})  # type: ignore[arg-type]


ASYNC_UA = "AsyncOpenAI/Python 1.58.1"
ASYNC_HEADERS = {**sdk_headers(version="1.58.1"), "x-stainless-async": "async:asyncio"}
DEFAULT_STREAM = {"model": "atlas-1-reasoning", "stream": True}


def varied_question(rng: random.Random) -> str:
    """A question on any subject in any of nine languages, without asking for reasoning."""
    subject = rng.choice(multilingual.SUBJECTS)
    return multilingual.question(rng, rng.choice(OPERATION_LANGUAGES), subject)


def pool_requests(
    rng: random.Random,
    accounts: int,
    hours: float,
    per_account_gap: float,
    reasoning_share: float = 0.0,
) -> list[tuple[float, str, Observed]]:
    """A reseller's pool: its customers' requests (varied single questions, no demand for
    reasoning) as one stream, each handed to the pool's least recently used account, all
    with the async SDK's headers and its defaults (streaming); each account keeps one
    residential exit."""
    exits = [rng.choice(RESIDENTIAL) for _ in range(accounts)]
    out: list[tuple[float, str, Observed]] = []
    ts = 0.0
    turn = 0
    while True:
        ts += rng.expovariate(accounts / per_account_gap)
        if ts >= hours * 3600.0:
            return out
        index = turn % accounts  # least recently used: each account in turn
        turn += 1
        question = varied_question(rng)
        if rng.random() < reasoning_share:
            question += " Explain step by step."
        body = json.dumps({**DEFAULT_STREAM, "messages": _messages(None, question)})
        seen = Observed(ts, "", ASYNC_UA, ASYNC_HEADERS, body, exits[index], 900.0)
        out.append((ts, f"k:pool{index}", seen))


def async_sdk_users(rng: random.Random, members: int = 40) -> list[Member]:
    """Developers on the async SDK at its defaults (the pool's persona and shape), asking
    varied single questions in sessions: their gaps are people's, uneven."""
    out = []
    for i in range(members):

        def body(r: random.Random, n: int) -> str:
            return json.dumps({**DEFAULT_STREAM, "messages": _messages(None, varied_question(r))})

        gap = rng.choice([60.0, 600.0, 1800.0])
        asns = [rng.choice(RESIDENTIAL + CLOUD)]
        out.append(Member(f"k:async{i}", ASYNC_UA, ASYNC_HEADERS, asns, body, gap, "async"))
    return out


def bursty_requests(
    rng: random.Random, members: list[Member], hours: float
) -> list[tuple[float, str, Observed]]:
    """`requests` in sessions: a few requests close together, then a long pause."""
    out: list[tuple[float, str, Observed]] = []
    for member in members:
        ts = rng.uniform(0.0, 1800.0)
        n = 0
        while ts < hours * 3600.0:
            for _ in range(rng.randint(2, 6)):
                body = member.body(rng, n)
                asn = rng.choice(member.asns)
                seen = Observed(ts, "", member.ua, member.headers, body, asn, 900.0)
                out.append((ts, member.identity, seen))
                n += 1
                ts += rng.expovariate(1.0 / member.gap)
            ts += rng.uniform(1200.0, 3600.0)
    return out


def test_a_pool_taking_turns_links_and_async_sdk_users_at_its_defaults_do_not() -> None:
    """A reseller's pool asks nothing of the reasoning and shares only what the SDK's
    users share (its headers, its defaults); what gives it away is that its accounts take
    turns: each one's gaps are even. Developers on the same SDK at the same defaults ask
    in sessions and stay unlinked, as do all others."""
    rng = random.Random(43)
    honest = honest_members(rng, 800) + async_sdk_users(rng)
    traffic = pool_requests(rng, 40, hours=2.0, per_account_gap=360.0)
    traffic += bursty_requests(rng, honest, hours=2.0)
    traffic.sort(key=lambda r: r[0])
    linker = OperationLinker(OperationsConfig(recluster_every=60.0))
    run_linker(linker, traffic)
    pool = [f"k:pool{i}" for i in range(40)]
    clusters = {linker.cluster_of(m) for m in pool}
    assert len(clusters) == 1 and None not in clusters, clusters
    (cluster_id,) = clusters
    assert cluster_id is not None
    cluster = linker.clusters[cluster_id]
    assert sorted(cluster.members) == sorted(pool)
    assert cluster.behaviour is not None and cluster.behaviour["way"] == "turns"
    assert all(linker.takes_turns(linker.accounts[m]) for m in pool)
    assert not [m.identity for m in honest if linker.cluster_of(m.identity) is not None]
    assert not [m.identity for m in honest if linker.takes_turns(linker.accounts[m.identity])]
    without = OperationLinker(OperationsConfig(recluster_every=60.0, behaviour_links=False))
    run_linker(without, traffic)
    assert without.clusters == {}


def test_a_prompt_two_operations_share_does_not_merge_them() -> None:
    """Two operations on the SDK, each from its own cloud with its own persona and shape
    (bands link each), both sending one leaked pair of system prompts: the prompts'
    behaviour links (their holders are both operations' accounts, who harvest) join at
    most one group the bands made. Each operation keeps its own cluster and score."""
    rng = random.Random(47)
    members = (
        honest_members(rng, 800)
        + operation(rng, sdk_exits=[14061], browsers=False)
        + operation(
            rng,
            name="k:opb",
            sdk_version="1.40.6",
            max_tokens=8192,
            sdk_exits=[24940],
            browsers=False,
        )
    )
    linker = OperationLinker(OperationsConfig(recluster_every=60.0))
    run_linker(linker, requests(rng, members, hours=3.0))
    first_ids = {linker.cluster_of(f"k:op{i}") for i in range(64)} - {None}
    second_ids = {linker.cluster_of(f"k:opb{i}") for i in range(64)} - {None}
    assert first_ids and second_ids and first_ids.isdisjoint(second_ids), (first_ids, second_ids)
    for ids in (first_ids, second_ids):
        assert any("network" in linker.clusters[c].linked_by for c in ids if c is not None)
    shared = [f for f in linker.behaviour.values() if f["link"] == "system" and f["holders"] >= 64]  # type: ignore[operator]
    assert shared, "the leaked prompts link"
    honest = [m.identity for m in members if m.crowd != "operation"]
    assert not [m for m in honest if linker.cluster_of(m) is not None]
