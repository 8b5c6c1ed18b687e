"""The per-account harvest profile: what it reads from a request, the sequential test over
an account's requests, and its verdicts through the real lane and guard. The prompts are
written for these tests (not the simulator's phrasings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from abuseguard import Guard, Policy, RequestInfo, Scoring
from abuseguard.cli import main
from abuseguard.decision import Decision
from abuseguard.errors import ConfigError
from abuseguard.lane import BackgroundLane, LaneRecord
from abuseguard.operations.profile import (
    HarvestProfile,
    HarvestProfileConfig,
    language_of,
    read_request,
    subject_words,
)

HOUR = 3600.0
DAY = 86400.0

# Subjects of a taxonomy a harvester sweeps, one per request.
SUBJECTS = [
    "compound interest on a car loan",
    "the causes of the French revolution",
    "photosynthesis in desert plants",
    "the complexity of binary search",
    "the pigeonhole principle",
    "plate tectonics and earthquakes",
    "Bayes theorem with a medical test",
    "Ohm's law in a parallel circuit",
    "the Krebs cycle",
    "the prisoner's dilemma",
    "supply and demand after a tax",
    "the half-life of carbon dating",
    "Dijkstra's shortest path algorithm",
    "the Doppler effect of an ambulance",
    "the Monty Hall problem",
    "inflation and central bank rates",
]

# A frame per language, each asking for the reasoning in its own words.
HARVEST_FRAMES = [
    "Think step by step and explain {s} with every intermediate step.",
    "请一步一步地分析这个问题：{s}，写出完整的推理过程。",  # noqa: RUF001 (Chinese punctuation)
    "{s}について、段階的に説明してください。途中式も書いてください。",
    "{s}에 대해 단계별로 설명해 주세요.",
    "Объясни пошагово, как работает {s}, покажи все шаги.",
    "¿Puedes explicar paso a paso cómo funciona {s}? Es para una clase.",
    "Peux-tu m'expliquer étape par étape comment marche {s} ? C'est pour un cours.",
    "Kannst du mir Schritt für Schritt erklären, wie {s} funktioniert? Das ist für die Uni.",
]


def _chat(*turns: str, **params: object) -> str:
    messages = [
        {"role": "user" if n % 2 == 0 else "assistant", "content": text}
        for n, text in enumerate(turns)
    ]
    return json.dumps({"model": "atlas-1", "messages": messages, **params})


def harvester_prompts(count: int) -> list[str]:
    return [
        _chat(HARVEST_FRAMES[(3 * n) % len(HARVEST_FRAMES)].format(s=SUBJECTS[n % len(SUBJECTS)]))
        for n in range(count)
    ]


def researcher_prompts(count: int) -> list[str]:
    """Sessions of related questions on two subjects, in English, asking for reasoning in
    a habitual phrasing, with follow-ups."""
    questions = [
        "Explain step by step why the integral of x e^x is x e^x - e^x.",
        "Why does integration by parts work for the integral of x^2 e^x? Step by step please.",
        "Can integration by parts handle the integral of e^x sin x? Explain step by step.",
        "Is there a pattern in the integral of x^n e^x for larger n?",
        "Explain step by step how a Markov chain reaches its stationary distribution.",
        "What does a stationary distribution mean for a Markov chain with absorbing states?",
    ]
    prompts = []
    for n in range(count):
        question = questions[n % len(questions)]
        if n % 3 == 2:  # a follow-up in the same conversation
            prompts.append(_chat(questions[(n - 1) % len(questions)], "...", question))
        else:
            prompts.append(_chat(question))
    return prompts


def harness_prompts(count: int) -> list[str]:
    """A benchmark harness: one format, a new subject on every item, a short output cap."""
    return [
        _chat(
            f"Question: which statement about {SUBJECTS[n % len(SUBJECTS)]} is correct?\n"
            f"(A) option {n} (B) option {n + 1}\nLet's think step by step.",
            max_tokens=512,
        )
        for n in range(count)
    ]


def multilingual_person_prompts(count: int) -> list[str]:
    """A person writing in Spanish, with English terms, conversing about their project."""
    turns = [
        "¿Cómo puedo leer un archivo CSV con pandas y quitar las filas vacías?",
        "Gracias. ¿Y cómo agrupo las filas por la columna fecha con pandas?",
        "¿Por qué el groupby de pandas me devuelve un DataFrame con MultiIndex?",
        "Me sale un error con el MultiIndex, ¿es por el reset_index de pandas?",
    ]
    return [
        _chat(turns[0]) if n % 4 == 0 else _chat(turns[0], "...", turns[n % 4])
        for n in range(count)
    ]


def translation_backend_prompts(count: int) -> list[str]:
    """An app translating its users' messages, in whatever language they write."""
    messages = [
        "Hola, mi pedido número {n} llegó roto y quiero un reembolso.",
        "请问我的订单{n}什么时候发货？",  # noqa: RUF001 (Chinese punctuation)
        "Bonjour, je n'arrive pas à me connecter à mon compte depuis {n} jours.",
        "注文{n}の配送先住所を変更したいのですが、可能でしょうか。",
        "Здравствуйте, заказ {n} пришёл не того цвета.",
        "Hallo, ich möchte mein Abo {n} kündigen, wie geht das?",
        "주문 {n}번의 결제가 두 번 되었어요.",
    ]
    return [
        json.dumps(
            {
                "model": "atlas-1-mini",
                "system": "Translate the user's message into English.",
                "messages": [{"role": "user", "content": messages[n % len(messages)].format(n=n)}],
            }
        )
        for n in range(count)
    ]


def developer_loop_prompts(count: int) -> list[str]:
    """A developer looping on one prompt while tuning it."""
    return [
        _chat(
            "You are a support bot. Classify this ticket step by step: "
            f"'my invoice {n} was charged twice'",
            max_tokens=256,
        )
        for n in range(count)
    ]


def _record(identity: str, ts: float, body: str) -> LaneRecord:
    return LaneRecord(identity, ts, body, "application/json")


def _run(
    profile: HarvestProfile, identity: str, bodies: list[str], gap: float, start: float = 1000.0
) -> list[float]:
    """Feed ``bodies`` one per ``gap`` seconds from ``start``; the scores after each."""
    scores = []
    for n, body in enumerate(bodies):
        profile.analyze(identity, [_record(identity, start + n * gap, body)])
        scores.append(profile.accounts[identity].score)
    return scores


# -- what a request says ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("How do I reverse a linked list in place?", "en"),
        ("请帮我看看这段代码为什么报错，用的是pandas。", "zh"),  # noqa: RUF001 (Chinese punctuation)
        ("このエラーの原因を教えてください。Python 3.12です。", "ja"),
        ("이 함수가 왜 None을 반환하는지 알려 주세요.", "ko"),
        ("Почему этот запрос к базе такой медленный?", "cyrillic"),
        ("¿Puedes revisar por qué mi función de Python es tan lenta?", "es"),
        ("Você pode me ajudar com isto? Não entendo o erro do compilador.", "pt"),
        ("Pourquoi est-ce que ma requête SQL est si lente avec une jointure ?", "fr"),
        ("Warum ist die Schleife so langsam, und wie kann ich das ändern?", "de"),
        ("x^2 - 4x + 3 = 0", ""),
    ],
)
def test_the_language_of_a_prompt_is_read_from_its_script_and_function_words(
    text: str, language: str
) -> None:
    assert language_of(text) == language


def test_english_terms_inside_another_language_do_not_make_it_english() -> None:
    spanish = "Tengo un problema con el garbage collector de la JVM, es muy lento."
    assert language_of(spanish) == "es"
    assert language_of("我在学 operating systems，不太明白 page tables 的作用。") == "zh"  # noqa: RUF001


def test_subject_words_ignore_numbers_and_the_wording_of_the_request() -> None:
    first = subject_words("Explain step by step: a triangle with sides 3, 4 and 5.")
    second = subject_words("Please show your work for a triangle with sides 6, 8 and 10.")
    assert first == second == {"triangle", "sides"}
    assert subject_words("关于光合作用的问题") >= {"光合", "合作", "作用"}


def test_a_request_is_read_for_turns_reasoning_language_and_output_cap() -> None:
    facts = read_request(_chat("Think step by step about the Krebs cycle.", max_tokens=16000))
    assert facts.single_turn and facts.reasoning >= 0.5 and facts.language == "en"
    assert facts.output_cap == 16000 and "krebs" in facts.subjects
    follow_up = read_request(_chat("What is the Krebs cycle?", "It is ...", "And its yield?"))
    assert not follow_up.single_turn and follow_up.reasoning == 0.0
    assert read_request(b"not json").language == "" and read_request(None).subjects == set()


# -- the sequential test -------------------------------------------------------------------


def test_an_account_sweeping_subjects_in_many_languages_is_judged_within_a_dozen_requests() -> None:
    profile = HarvestProfile()
    scores = _run(profile, "k:pool-account", harvester_prompts(16), gap=20 * 60.0)
    crossed = next(n for n, s in enumerate(scores) if s >= profile.config.threshold)
    assert crossed < 12
    assert profile.take_judged() == {"k:pool-account": 1000.0 + crossed * 20 * 60.0}
    evidence = profile.explain("k:pool-account")
    assert evidence is not None and evidence["new_language"] > 0.5


@pytest.mark.parametrize(
    "prompts",
    [
        researcher_prompts,
        harness_prompts,
        multilingual_person_prompts,
        translation_backend_prompts,
        developer_loop_prompts,
    ],
)
def test_honest_streams_are_never_judged(prompts: object) -> None:
    profile = HarvestProfile()
    make = prompts  # a function of a count
    assert callable(make)
    scores = _run(profile, "k:honest", make(400), gap=60.0)
    assert max(scores) < profile.config.release
    assert profile.take_judged() == {}


def test_the_same_reasoning_phrase_every_time_is_a_format_not_evidence() -> None:
    """A harness asks "Let's think step by step" on every item: after the first, the phrase
    adds nothing, where a harvester's rotating phrasings each count."""
    profile = HarvestProfile()
    _run(profile, "k:harness", harness_prompts(40), gap=10.0)
    evidence = profile.explain("k:harness")
    assert evidence is not None and evidence["reasoning"] == 1.0
    assert evidence["same_format"] > 0.9 and evidence["peak"] < 2.0


def test_a_judged_account_is_forgiven_once_its_score_decays_below_release() -> None:
    profile = HarvestProfile()
    _run(profile, "k:pool-account", harvester_prompts(12), gap=20 * 60.0)
    assert profile.accounts["k:pool-account"].judged
    assert profile.analyze("k:pool-account", []) == 1.0  # the prior stands while judged
    # Back after a quiet week: the score has halved seven times, under ``release``.
    later = 1000.0 + 12 * 20 * 60.0 + 7 * DAY
    prior = profile.analyze("k:pool-account", [_record("k:pool-account", later, _chat("hi"))])
    assert prior == 0.0 and not profile.accounts["k:pool-account"].judged
    assert profile.analyze("k:pool-account", []) is None  # lifted once, then left alone


def test_honest_requests_bring_a_judged_account_back_under_release() -> None:
    profile = HarvestProfile()
    _run(profile, "k:pool-account", harvester_prompts(12), gap=20 * 60.0)
    follow_ups = [
        _chat("What is the Krebs cycle?", "It is ...", f"And what happens to pyruvate {n}?")
        for n in range(40)
    ]
    scores = _run(profile, "k:pool-account", follow_ups, gap=60.0, start=DAY)
    assert scores[-1] < profile.config.release
    assert not profile.accounts["k:pool-account"].judged


def test_forgiving_an_account_forgets_its_score() -> None:
    profile = HarvestProfile()
    _run(profile, "k:pool-account", harvester_prompts(12), gap=20 * 60.0)
    assert profile.forgive("k:pool-account") and not profile.forgive("k:pool-account")
    assert profile.take_judged() == {} and profile.explain("k:pool-account") is None
    again = _record("k:pool-account", 1000.0 + 12 * 20 * 60.0, _chat("hi"))
    assert profile.analyze("k:pool-account", [again]) is None


def test_requests_closer_than_read_every_are_not_read() -> None:
    profile = HarvestProfile(HarvestProfileConfig(read_every=30.0))
    _run(profile, "k:busy", harvester_prompts(10), gap=10.0)
    evidence = profile.explain("k:busy")
    assert evidence is not None and evidence["requests_read"] == 4  # at 0, 30, 60 and 90 s


def test_memory_is_bounded_by_max_accounts() -> None:
    profile = HarvestProfile(HarvestProfileConfig(max_accounts=3))
    for n in range(10):
        profile.analyze(f"k:{n}", [_record(f"k:{n}", 1000.0, harvester_prompts(1)[0])])
    assert list(profile.accounts) == ["k:7", "k:8", "k:9"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("threshold", 0.0),
        ("release", 9.0),
        ("half_life", 0.0),
        ("prior", 1.5),
        ("window", 0),
        ("max_accounts", 0),
        ("read_every", -1.0),
        ("hold", "yes"),
    ],
)
def test_bad_profile_config_is_refused(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"HarvestProfileConfig.{field}"):
        HarvestProfileConfig(**{field: value})  # type: ignore[arg-type]


# -- through the lane and the guard --------------------------------------------------------


def _guard() -> Guard:
    return Guard(Policy(scoring=Scoring(content=False), unverified_keys=None))


def _send(guard: Guard, lane: BackgroundLane, key: str, bodies: list[str], gap: float) -> list:
    decisions: list[Decision] = []
    for n, body in enumerate(bodies):
        info = RequestInfo(
            ip=f"203.0.113.{n % 200}",
            key=key,
            ts=1000.0 + n * gap,
            method="POST",
            path="/api/chat",
            ua="Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/132.0",
            headers={"content-type": "application/json"},
            body=body,
        )
        decision = guard.check(info)
        lane(info, decision)
        lane.flush()
        decisions.append(decision)
    return decisions


def test_the_lane_holds_a_harvesting_account_and_explains_why() -> None:
    guard = _guard()
    lane = BackgroundLane(guard, operations=None)
    decisions = _send(guard, lane, "pool-account", harvester_prompts(16), gap=20 * 60.0)
    assert "prior" not in decisions[0].reasons
    judged = next(n for n, d in enumerate(decisions) if "evidence" in d.reasons)
    assert judged < 13
    after = decisions[judged:]
    assert all(not d.action.serves_in_full for d in after)
    assert all(dict(d.contributions).get("prior", 0.0) > 0.0 for d in after)
    assert lane.accounts_held == 1
    assert lane.profile is not None
    evidence = lane.profile.explain(decisions[0].identity)
    assert evidence is not None and evidence["score"] >= lane.profile.config.threshold


def test_the_lane_never_holds_a_researcher() -> None:
    guard = _guard()
    lane = BackgroundLane(guard, operations=None)
    decisions = _send(guard, lane, "researcher", researcher_prompts(60), gap=5 * 60.0)
    assert all("evidence" not in d.reasons and "prior" not in d.reasons for d in decisions)


def test_the_profile_can_be_turned_off() -> None:
    guard = _guard()
    lane = BackgroundLane(guard, operations=None, profile=None)
    decisions = _send(guard, lane, "pool-account", harvester_prompts(16), gap=20 * 60.0)
    assert all("evidence" not in d.reasons for d in decisions)
    assert lane.profile is None and lane.accounts_held == 0


def test_without_hold_a_judged_account_only_gets_the_prior() -> None:
    guard = _guard()
    lane = BackgroundLane(guard, operations=None, profile=HarvestProfileConfig(hold=False))
    decisions = _send(guard, lane, "pool-account", harvester_prompts(16), gap=20 * 60.0)
    assert any("prior" in d.reasons for d in decisions)
    assert lane.accounts_held == 0


# -- through replay ------------------------------------------------------------------------


def _trace_line(actor: str, label: str, key: str, ts: float, body: str, ip: str) -> str:
    return json.dumps(
        {
            "ts": ts,
            "ip": ip,
            "key": key,
            "method": "POST",
            "path": "/api/chat",
            "ua": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/132.0",
            "headers": {"content-type": "application/json"},
            "body": body,
            "status": 200,
            "actor": actor,
            "label": label,
            "kind": actor.split("/")[0],
        }
    )


def test_replay_reports_the_accounts_the_profile_judged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = []
    for n, body in enumerate(harvester_prompts(16)):
        lines.append(
            (1000.0 + n * 1200.0, "pool/acct1", "abusive", "sk-pool1", body, f"203.0.113.{n}")
        )
    for n, body in enumerate(researcher_prompts(30)):
        lines.append((1010.0 + n * 600.0, "researcher/u1", "benign", "sk-res1", body, "192.0.2.8"))
    trace = tmp_path / "trace.jsonl"
    trace.write_text(
        "\n".join(_trace_line(a, lb, k, ts, b, ip) for ts, a, lb, k, b, ip in sorted(lines))
    )
    assert main(["replay", str(trace), "--format", "json", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    profile = report["operations"]["profile"]
    assert profile["judged_total"] == 1
    assert profile["judged"] == profile["standing"] == {"abusive": 1}
    (judged,) = profile["sample"]
    assert judged["actor"] == "pool/acct1" and judged["new_language"] > 0.5
    assert main(["replay", str(trace), "--format", "json", "--no-progress", "--no-lane"]) == 0
    without = json.loads(capsys.readouterr().out)["actors"]
    # The harvester is held from its crossing on; the researcher's outcome is its own
    # requests' (this trace's bare headers and even spacing), the profile adds nothing.
    assert report["actors"]["pool/acct1"]["held_at"] is not None
    assert report["actors"]["pool/acct1"]["mitigated"] > without["pool/acct1"]["mitigated"]
    assert report["actors"]["researcher/u1"] == without["researcher/u1"]
    assert main(["replay", str(trace), "--no-progress"]) == 0
    assert "harvest profile: accounts judged: abusive 1; standing at the end: abusive 1" in (
        capsys.readouterr().out
    )
