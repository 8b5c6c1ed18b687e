"""Tests for public evaluation formats (abuseguard.intel.benchmarks) and how content scoring
and the guard read them (issue #16: undeclared evaluation harnesses held as harvesters)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from abuseguard.errors import ConfigError
from abuseguard.intel.benchmarks import (
    cap_factor,
    evaluation_strength,
    may_be_evaluation,
    recognise,
)
from abuseguard.intel.content import EVALUATION_TEMPLATE_MIN, ContentFingerprinter
from abuseguard.policy import Policy, Scoring

MMLU = (
    "The following are multiple choice questions (with answers) about college physics.\n\n"
    "A ball is dropped from rest. How far does it fall in 2 s (g = 10 m/s^2)?\n"
    "A. 5 m\nB. 10 m\nC. 20 m\nD. 40 m\nAnswer:"
)
MMLU_FEW_SHOT = (
    "The following are multiple choice questions (with answers) about anatomy.\n\n"
    "Which bone is the longest in the human body?\nA. Tibia\nB. Femur\nC. Humerus\n"
    "D. Fibula\nAnswer: B\n\n"
    "How many chambers has the human heart?\nA. 2\nB. 3\nC. 4\nD. 5\nAnswer: C\n\n"
    "Which organ produces insulin?\nA. Liver\nB. Kidney\nC. Pancreas\nD. Spleen\nAnswer:"
)
GSM8K_COT = (
    "Question: Natalia sold clips to 48 of her friends in April, and then she sold half as "
    "many clips in May. How many clips did Natalia sell altogether?\n"
    "Answer: Let's think step by step."
)
GSM8K_FEW_SHOT = (
    "Question: There are 15 trees in the grove. Workers plant trees until there are 21. "
    "How many trees did they plant?\nAnswer: 21 - 15 = 6. The answer is 6.\n\n"
    "Question: Leah had 32 chocolates and her sister had 42. They ate 35. How many are "
    "left?\nAnswer: 32 + 42 = 74; 74 - 35 = 39. The answer is 39.\n\n"
    "Question: Jason had 20 lollipops. He gave Denny some. Now he has 12. How many did he "
    "give?\nAnswer:"
)
SIMPLE_EVALS_MC = (
    "Answer the following multiple choice question. The last line of your response should "
    "be of the following format: 'Answer: $LETTER' (without quotes) where LETTER is one of "
    "ABCD. Think step by step before answering.\n\n"
    "Which gas makes up most of Earth's atmosphere?\n\nA) Oxygen\nB) Nitrogen\nC) Argon\n"
    "D) Carbon dioxide"
)
SIMPLE_EVALS_MATH = (
    "Solve the following math problem step by step. The last line of your response should "
    "be of the form Answer: $ANSWER (without quotes) where $ANSWER is the answer to the "
    "problem.\n\nFind all real x with x^2 - 5x + 6 = 0.\n\n"
    'Remember to put your answer on its own line after "Answer:", and you do not need to '
    "use a \\boxed command."
)
SIMPLE_EVALS_HUMANEVAL = (
    "Read the following function signature and docstring, and fully implement the function "
    "described. Your response should only contain the code for this function.\n"
    'def add(a: int, b: int) -> int:\n    """Return the sum of a and b."""\n'
)
MMLU_PRO_COT = (
    "The following are multiple choice questions (with answers) about law. Think step by "
    'step and then output the answer in the format of "The answer is (X)" at the end.\n\n'
    "Question:\nWhich court hears appeals first?\nOptions:\nA. trial court\nB. appellate "
    "court\nC. supreme court\nD. none\nE. small claims\nF. family court\n"
    "Answer: Let's think step by step."
)
MMLU_COT_FLAT = MMLU.replace("\nAnswer:", "\nLet's think step by step.\nAnswer:")
BBH_COT = (
    "Evaluate the result of a random Boolean expression.\n\n"
    "Q: not ( ( not not True ) ) is\nA: Let's think step by step. not not True is True; "
    "not True is False. So the answer is False.\n\n"
    "Q: True and False and not True and True is\nA: Let's think step by step. The answer "
    "is False.\n\n"
    "Q: not True or False or not False is\nA: Let's think step by step."
)
# What harvesters send: novel problems with a demand for long written-out reasoning.
DEMAND = (
    "Explain your reasoning in full detail, show every intermediate step and do not skip "
    "anything; write at least 1500 words."
)


def chat(text: str, **extra: Any) -> bytes:
    return json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": text}], **extra}
    ).encode()


@pytest.mark.parametrize(
    ("prompt", "name", "cap"),
    [
        (MMLU, "mmlu", 4),
        (MMLU_FEW_SHOT, "mmlu", 4),
        (MMLU_PRO_COT, "mmlu", 2048),
        (MMLU_COT_FLAT, "mmlu", 1024),
        (GSM8K_COT, "qa_cue", 512),
        (GSM8K_FEW_SHOT, "qa_cue", 256),
        (SIMPLE_EVALS_MC, "simple_evals_mc", 1024),
        (SIMPLE_EVALS_MATH, "simple_evals_math", 1024),
        (SIMPLE_EVALS_HUMANEVAL, "simple_evals_humaneval", 1024),
        (BBH_COT, "qa_cue", 512),
    ],
)
def test_published_formats_are_recognised_in_json_and_plain_text(
    prompt: str, name: str, cap: int
) -> None:
    found = recognise(chat(prompt, max_tokens=cap, temperature=0))
    assert found.format == name
    assert found.strength >= EVALUATION_TEMPLATE_MIN
    assert recognise(prompt.encode()).format == name  # a raw text body


def test_few_shot_blocks_count_more_than_a_lone_cue() -> None:
    lone = recognise(chat("Question: How many legs has a spider?\nAnswer:", max_tokens=16))
    few = recognise(chat(GSM8K_FEW_SHOT, max_tokens=16))
    assert 0.0 < lone.strength < few.strength


@pytest.mark.parametrize(
    "prompt",
    [
        "Write a short story about a lighthouse keeper who finds a message in a bottle.",
        "Solve for x: 3x + 5 = 20. Think step by step and show your work.",
        "What's the answer to this riddle: what has keys but can't open locks?",
        "Q: is this a question? I need an answer for my homework: what is 2+2",
        "Please format the answer as A: yes or B: no. Should I bring an umbrella today?",
    ],
)
def test_ordinary_prompts_are_not_evaluations(prompt: str) -> None:
    assert evaluation_strength(chat(prompt, max_tokens=4)) == 0.0


def test_bodies_without_the_anchors_are_dismissed_as_bytes_or_text() -> None:
    ordinary = chat("Summarise this article about tides in three sentences.")
    assert not may_be_evaluation(ordinary)
    assert not may_be_evaluation(ordinary.decode())
    for prompt in (MMLU, BBH_COT, SIMPLE_EVALS_HUMANEVAL):
        assert may_be_evaluation(chat(prompt)) and may_be_evaluation(prompt)


def test_a_system_prompt_saying_answer_is_dismissed_without_the_long_way() -> None:
    # "Answer" without a cue's colon is in countless system prompts; only "Answer:" or
    # "A:" (or HumanEval's instruction) sends a body to the format patterns.
    body = json.dumps(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "You are a helpful assistant. Answer precisely."},
                {"role": "user", "content": "Solve the following problem step by step: 3x=9"},
            ],
        }
    ).encode()
    assert not may_be_evaluation(body)
    assert not may_be_evaluation(body.decode())


def test_a_benchmark_header_on_a_reasoning_demand_is_not_an_evaluation() -> None:
    header = "The following are multiple choice questions (with answers) about philosophy.\n\n"
    pasted = chat(header + "Is free will compatible with determinism? " + DEMAND)
    assert evaluation_strength(pasted) == 0.0
    # The item intact but a demand below it: the format no longer closes the prompt.
    assert evaluation_strength(chat(MMLU + "\n\n" + DEMAND, max_tokens=4)) == 0.0
    # The demand inside a well-formed item.
    demanding_item = GSM8K_COT.replace("altogether?", "altogether? " + DEMAND)
    assert evaluation_strength(chat(demanding_item, max_tokens=512)) == 0.0
    # Or in a system prompt.
    body = json.dumps(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "Always show your full reasoning verbatim."},
                {"role": "user", "content": MMLU},
            ],
            "max_tokens": 4,
        }
    ).encode()
    assert evaluation_strength(body) == 0.0


@pytest.mark.parametrize(
    "demand",
    [
        "Put your Chain-of-Thought inside <think> tags.",
        "Don't skip anything.",
        "Write at least 800 words.",
        "Be as detailed as possible.",
        "Show me all of your work.",
        "Give the full derivation.",
        "Never abbreviate a step.",
    ],
)
def test_each_kind_of_reasoning_demand_voids_the_format(demand: str) -> None:
    item = GSM8K_COT.replace("altogether?", f"altogether? {demand}")
    assert evaluation_strength(chat(GSM8K_COT, max_tokens=512)) > 0.0
    assert evaluation_strength(chat(item, max_tokens=512)) == 0.0


def test_a_large_output_cap_is_weaker_evidence_than_a_small_one() -> None:
    strengths = [
        evaluation_strength(chat(GSM8K_COT, max_tokens=cap)) for cap in (4, 512, 2048, 16384)
    ]
    assert strengths == sorted(strengths, reverse=True)
    assert strengths[0] > strengths[-1] > 0.0
    assert strengths[-1] < EVALUATION_TEMPLATE_MIN
    assert cap_factor(b'{"max_completion_tokens": 4}') == 1.0
    assert cap_factor(b'{"generationConfig": {"maxOutputTokens": 8192}}') == 0.25
    assert 0.25 < cap_factor(b'{"model": "m"}') < 1.0  # no cap: in between


@pytest.fixture(scope="module")
def fingerprinter() -> ContentFingerprinter:
    return ContentFingerprinter()


def test_content_facts_carry_the_evaluation_and_discount_elicitation_and_template(
    fingerprinter: ContentFingerprinter,
) -> None:
    plain = ContentFingerprinter(evaluation_formats=False)
    body = chat(GSM8K_COT, max_tokens=512, temperature=0)
    before = plain.fingerprint(body)
    after = fingerprinter.fingerprint(body)
    assert before.evaluation == 0.0 and before.elicitation > 0.9 and before.template_id != 0
    assert after.evaluation >= EVALUATION_TEMPLATE_MIN
    assert after.elicitation == pytest.approx(before.elicitation * (1.0 - after.evaluation))
    assert after.template_id == 0  # a public format says nothing about coordination
    assert after.simhash == before.simhash and after.context_id == before.context_id
    # The same through the batch entry point, and for a body given as text.
    fingerprinter.prime([(body, "application/json")])
    assert fingerprinter.fingerprint(body, "application/json") == after
    assert fingerprinter.fingerprint(body.decode()) == after._replace(n_bytes=len(body))


def test_the_formats_own_step_by_step_phrases_are_not_a_demand(
    fingerprinter: ContentFingerprinter,
) -> None:
    for prompt in (GSM8K_COT, SIMPLE_EVALS_MC, SIMPLE_EVALS_MATH, MMLU_PRO_COT, BBH_COT):
        facts = fingerprinter.fingerprint(chat(prompt, max_tokens=1024))
        assert facts.evaluation >= EVALUATION_TEMPLATE_MIN, prompt[:40]


def test_a_demand_in_another_language_keeps_the_elicitation(
    fingerprinter: ContentFingerprinter,
) -> None:
    # "Show the complete reasoning process, step by step" in Chinese, inside a GSM8K item,
    # with the body's non-ASCII escaped as JSON does by default.
    item = GSM8K_COT.replace("altogether?", "altogether? 请给出完整的推理过程和思维链。")
    facts = fingerprinter.fingerprint(chat(item, max_tokens=512))
    assert facts.evaluation == 0.0
    assert facts.elicitation > 0.9


def test_the_switch_is_a_checked_scoring_option() -> None:
    assert Scoring().evaluation_formats is True
    assert Policy(scoring=Scoring(evaluation_formats=False)).scoring is not None
    with pytest.raises(ConfigError, match=r"Scoring\.evaluation_formats"):
        Scoring(evaluation_formats="off")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="evaluation_formats"):
        ContentFingerprinter(evaluation_formats=1)  # type: ignore[arg-type]


# --- replays: a harness is not held, a harvester in a benchmark costume still is ----------

_SUBJECTS = ("anatomy", "college physics", "econometrics", "world religions")


def _mmlu_item(rng: random.Random) -> str:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    options = "\n".join(f"{letter}. {rng.randint(1, 999)}" for letter in "ABCD")
    return (
        f"The following are multiple choice questions (with answers) about "
        f"{rng.choice(_SUBJECTS)}.\n\nWhat is {a} times {b}, rounded to a multiple of "
        f"{rng.randint(2, 9)}?\n{options}\nAnswer:"
    )


def _gsm_item(rng: random.Random) -> str:
    a, b, c = rng.randint(2, 90), rng.randint(2, 90), rng.randint(2, 9)
    return (
        f"Question: A shop sells {a} apples on Monday and {b} on Tuesday, in bags of {c}. "
        f"How many bags does it sell?\nAnswer: Let's think step by step."
    )


def _harvest_item(rng: random.Random) -> str:
    a, b = rng.randint(2, 90), rng.randint(2, 90)
    topic = rng.choice(("thermodynamics", "game theory", "protein folding", "compilers"))
    return (
        f"The following are multiple choice questions (with answers) about {topic}.\n\n"
        f"Question: derive from first principles why a system of {a} parts and {b} links "
        f"behaves as it does in {topic}. Show your complete chain of thought, every "
        f"intermediate step in full detail.\nAnswer: Let's think step by step."
    )


def _records(item: Any, cap: int, seed: int) -> list[Any]:
    """One client on a cloud address with a handful of workers, about 3 requests a second
    for 40 minutes, each request a prompt from ``item`` with output cap ``cap``."""
    from abuseguard.traces import parse_line

    rng = random.Random(seed)
    key = f"sk-{rng.getrandbits(128):032x}"
    lines: list[Any] = []
    t = 1_773_151_200.0
    for n in range(7200):
        t += rng.uniform(0.2, 0.45)
        body = json.dumps(
            {
                "model": "atlas-1",
                "messages": [{"role": "user", "content": item(rng)}],
                "temperature": 0.0,
                "max_tokens": cap,
            }
        )
        line = {
            "ts": round(t, 3),
            "ip": "34.106.197.7",
            "asn": 396982,
            "as_org": "Google LLC",
            "country": "US",
            "anon": ["hosting"],
            "key": key,
            "method": "POST",
            "path": "/v1/chat/completions",
            "ua": "OpenAI/Python 1.58.1",
            "headers": {"content-type": "application/json", "x-stainless-lang": "python"},
            "body": body,
            "status": 200,
            "cost": min(cap, 300),
            "duration": 0.5 if cap <= 16 else 6.0,
            "actor": "client",
            "label": "benign",
            "kind": "test",
        }
        lines.append(parse_line(json.dumps(line), n + 1))
    return lines


def _mitigated(records: list[Any], *, evaluation_formats: bool) -> int:
    from abuseguard.guard import Guard
    from abuseguard.replay import run_replay
    from abuseguard.report import ReportBuilder

    guard = Guard(Policy(scoring=Scoring(evaluation_formats=evaluation_formats)))
    builder = ReportBuilder()
    run_replay(records, guard, builder)
    report = builder.build()
    mitigated: int = report["actors"]["client"]["mitigated"]
    return mitigated


def _harness_item(rng: random.Random) -> str:
    return _gsm_item(rng) if rng.random() < 0.5 else _mmlu_item(rng)


def test_an_undeclared_evaluation_harness_is_not_held() -> None:
    records = _records(_harness_item, 512, seed=1)
    assert _mitigated(records, evaluation_formats=False) > len(records) // 2  # as before
    assert _mitigated(records, evaluation_formats=True) == 0


@pytest.mark.parametrize(
    ("item", "cap"),
    [
        (_harvest_item, 12000),  # a benchmark header on a free-form reasoning demand
        (_gsm_item, 16384),  # a GSM8K-shaped item asking for thousands of tokens
    ],
)
def test_a_harvester_in_a_benchmark_costume_is_still_held(item: Any, cap: int) -> None:
    records = _records(item, cap, seed=2)
    held_plain = _mitigated(records, evaluation_formats=False)
    assert held_plain > len(records) // 2
    # Held as before: the demand voids the format; a large cap leaves a quarter of it, which
    # discounts the elicitation a little and keeps the template.
    assert _mitigated(records, evaluation_formats=True) >= held_plain - len(records) // 100
