"""Public evaluation formats: is this request a benchmark item, as harnesses send them?

Evaluation harnesses send the items of public benchmarks in the benchmark's published
prompt format, with a small output cap and usually temperature 0. Their prompts share one
template across every organisation that runs the benchmark, and some formats ask the
model to "think step by step", so the ``elicitation`` and ``shared_template`` signals read
them as harvesting. What a harvester wants is the opposite: novel prompts and long
written-out reasoning. ``evaluation_strength`` tells the two apart from the raw body, as
JSON (newlines escaped as ``\\n``) or as plain text.

Formats recognised (written from the harnesses' public templates, matched by shape):

- **lm-evaluation-harness MMLU**: "The following are multiple choice questions (with
  answers) about {subject}." then the question, ``A.`` .. ``D.`` choice lines and a final
  "Answer:" (zero- or few-shot); MMLU-Pro's chain-of-thought variant (up to ten choices,
  "Answer: Let's think step by step.") too;
- **multiple-choice Q/A** (ARC, MMLU without its header, HellaSwag-style endings as
  choices): ``A.``/``(A)`` .. ``D.`` choice lines ending with "Answer:";
- **simple-evals multiple choice** (MMLU, GPQA): "Answer the following multiple choice
  question. The last line of your response should be of the following format: 'Answer:
  $LETTER'..." then the question and ``A)`` .. ``D)`` choices;
- **simple-evals MATH**: "Solve the following math problem step by step. The last line
  of your response should be of the form Answer: $ANSWER...";
- **simple-evals HumanEval**: "Read the following function signature and docstring, and
  fully implement the function described..." followed by the code;
- **Q/A cue** (GSM8K, ARC, TriviaQA, BIG-Bench Hard): "Question: ..." or "Q: ..."
  ending with "Answer:" or "A:" (optionally "Let's think step by step."); few-shot blocks
  (answered examples before the item) count more than a lone cue.

Bypass-awareness. The strength is the format's evidence times two factors:

- the **output cap** (``max_tokens``, ``max_completion_tokens``, ``max_output_tokens``,
  ``maxOutputTokens``, ``max_tokens_to_sample``, ``max_new_tokens``): an MC answer of a
  few tokens is worth nothing to a harvester; a cap of thousands is what harvesting asks
  for, so a benchmark format with it counts for a quarter; no cap counts for 0.6;
- the absence of a **free-form reasoning demand** (``REASONING_DEMAND``: "show your
  reasoning", "chain of thought", "in full detail", "at least 500 words", "don't skip
  any step"...): a benchmark header pasted on top of such a demand is not an evaluation.

A format counts only where its item closes the prompt (the answer cue or the last choice
ends the text or its JSON string): text after the item (a demand appended below it) leaves
only the header's weak evidence. The content fingerprinter also checks the elicitation
markers left once the formats' own phrases (``FORMAT_PHRASES``) are taken out, in every
language it knows (`abuseguard.intel.content`).

Cost: a few substring tests on bodies that hold none of the formats' anchors (almost all
of them); precompiled patterns with bounded repetition otherwise. Known limits: a
harvester that sends novel problems as "Question: {problem}\\nAnswer: Let's think step by
step." with a small cap passes as a GSM8K run, so it gets at most that cap's worth of
reasoning per request; the address, rate limits and the other signals still apply.
Log-likelihood requests (completions with ``echo``/``logprobs``) are not recognised.
"""

from __future__ import annotations

import re
from typing import NamedTuple

# One line break, raw or JSON-escaped; blanks and the end of the prompt (end of the text, or
# the unescaped quote closing its JSON string), after optional blanks.
_NL = rb"(?:\r?\n|\\r\\n|\\n)"
_BLANK = rb"(?:[ \t]|\\t|\r?\n|\\r\\n|\\n)*"
_END = _BLANK + rb'(?:(?<!\\)"|\Z)'
# Any part of one line (raw or JSON), bounded.
_LINE = rb"(?:[^\n\\]|\\[^nr]){0,600}?"

_MMLU_HEADER = b"The following are multiple choice questions (with answers) about"
_SIMPLE_MC = (
    b"Answer the following multiple choice question. The last line of your response "
    b"should be of the following format: "
)
_SIMPLE_MATH = (
    b"Solve the following math problem step by step. The last line of your response "
    b"should be of the form Answer: $ANSWER"
)
_HUMANEVAL = (
    b"Read the following function signature and docstring, and fully implement the "
    b"function described."
)

# Chain-of-thought trigger some formats put before or after the final answer cue.
_COT = rb"Let's think step by step\.?"
# Choice lines A..D (up to J: MMLU-Pro) closed by the answer cue at the end of the prompt.
# It starts at the "A" (not at the line break before it) so the scan skips to each "A".
_DOT_CHOICES_CUE = re.compile(
    rb"A[.)]\)? " + _LINE + _NL + rb"\(?B[.)]\)? " + _LINE
    + rb"(?:" + _NL + rb"\(?[C-J][.)]\)? " + _LINE + rb"){0,8}"
    + rb"(?:" + _NL + _COT + rb")?" + _NL + rb"Answer:(?: " + _COT + rb")?" + _END
)  # fmt: skip
# simple-evals: the choices "A) ..".."D) .." close the prompt.
_PAREN_CHOICES_END = re.compile(
    _NL + rb"A\) " + _LINE + _NL + rb"B\) " + _LINE + rb"(?:" + _NL + rb"[C-J]\) " + _LINE
    + rb"){1,8}" + _END
)  # fmt: skip
_MATH_REMINDER = re.compile(
    rb"Remember to put your answer on its own line after (?:\\?\"|')?Answer:(?:\\?\"|')?,"
    rb"(?:[^\n\\]|\\[^nr]){0,80}" + _END
)
_HUMANEVAL_CODE = re.compile(rb"(?:def |```)")
# "Question:"/"Q:" then, closing the prompt, "Answer:"/"A:" with optional CoT trigger.
_QA_CUE_END = re.compile(
    rb"(?:Answer|A):(?: " + _COT + rb")?" + _END
)  # fmt: skip
# Answer cues at a line start; in a few-shot prompt all but the last are answered examples.
_LINE_CUES = (b"\\nAnswer: ", b"\nAnswer: ", b"\\nA: ", b"\nA: ")

_CAP = re.compile(
    rb'"(?:max_tokens|max_completion_tokens|max_output_tokens|maxOutputTokens|'
    rb'max_tokens_to_sample|max_new_tokens)"\s*:\s*(\d{1,9})'
)

# Matched against the lower-cased body (a case-insensitive pattern is several times slower).
# Every branch starts with a literal, so the scan skips on the branches' first bytes.
_NOT_SKIPPING = rb" (?:skip|omit|leav|abbreviat|summari)"
REASONING_DEMAND = re.compile(
    rb"chain[ -]of[ -]thought|reasoning (?:trace|process)|<think|<reasoning>|<scratchpad>|"
    rb"internal (?:monologue|reasoning|thought)|"
    rb"show (?:me )?(?:all |every |each )?(?:of )?(?:your |the )?(?:work|reasoning|thinking|"
    rb"thoughts?|thought process|derivation)|explain (?:your|each|every|all)\b|"
    rb"in (?:full|great|complete|exhaustive|extensive) detail|"
    rb"don'?t" + _NOT_SKIPPING + rb"|do not" + _NOT_SKIPPING + rb"|never" + _NOT_SKIPPING
    + rb"|without" + _NOT_SKIPPING + rb"|"
    rb"every (?:single )?(?:intermediate )?step|at least \d+ (?:words|steps|paragraphs|tokens)|"
    rb"as (?:long|detailed|verbose) as (?:possible|you can)|"
    rb"full (?:derivation|reasoning|solution path)|verbatim"
)  # fmt: skip

# The formats' own phrases, which the fingerprinter takes out before it looks for a
# reasoning demand beyond the format (they are elicitation markers themselves).
FORMAT_PHRASES: tuple[bytes, ...] = (
    b"Let's think step by step",
    b"Think step by step before answering",
    b"Solve the following math problem step by step",
    b"Please reason step by step",
    b"Think step by step and then output the answer in the format of",  # MMLU-Pro
)

_HUMANEVAL_ANCHOR = _HUMANEVAL[:40]
_HUMANEVAL_TEXT_ANCHOR = _HUMANEVAL_ANCHOR.decode()


class Recognition(NamedTuple):
    """What ``recognise`` found: the format's name ("" for none), the evidence of the
    format alone (0..1) and the strength after the output cap and demand checks (0..1)."""

    format: str
    evidence: float
    strength: float


NOT_EVALUATION = Recognition("", 0.0, 0.0)


def cap_factor(body: bytes) -> float:
    """How much a benchmark format counts given the body's output cap: 1 for an answer of a
    few tokens, falling to 0.25 for the thousands harvesting asks for; 0.6 without a cap."""
    found = _CAP.search(body)
    if found is None:
        return 0.6
    cap = int(found.group(1))
    if cap <= 64:
        return 1.0
    if cap <= 1024:
        return 0.9
    if cap <= 2048:
        return 0.75
    if cap <= 4096:
        return 0.5
    return 0.25


def _format_of(body: bytes) -> tuple[str, float]:
    """The best-supported format in ``body`` and its evidence, before the cap and demand."""
    if _HUMANEVAL in body:
        code = _HUMANEVAL_CODE.search(body, body.find(_HUMANEVAL))
        return "simple_evals_humaneval", 1.0 if code is not None else 0.4
    if _SIMPLE_MATH in body:
        return "simple_evals_math", 1.0 if _MATH_REMINDER.search(body) else 0.7
    if _SIMPLE_MC in body:
        return "simple_evals_mc", 1.0 if _PAREN_CHOICES_END.search(body) else 0.3
    if b"Answer" not in body and b"A:" not in body:
        return "", 0.0
    choices = (b"A. " in body or b"(A) " in body) and _DOT_CHOICES_CUE.search(body) is not None
    if _MMLU_HEADER in body:
        return "mmlu", 1.0 if choices else 0.3
    if choices:
        return "multiple_choice", 0.8
    if (b"Question: " in body or b"Q: " in body) and _QA_CUE_END.search(body) is not None:
        # Answered examples (a chain-of-thought item's own cue counts too: one example).
        few_shot = sum(body.count(cue) for cue in _LINE_CUES) >= 2
        return "qa_cue", 0.85 if few_shot else 0.6
    return "", 0.0


def may_be_evaluation(body: bytes | str) -> bool:
    """False for a body (bytes or text) that holds none of the formats (almost every body):
    three substring scans, no allocation. ``recognise`` looks closer at the others. Every
    format ends its item with an answer cue ("Answer:", "A:") or names one in its
    instructions ("Answer: $LETTER"), or is HumanEval's; "Answer" alone is in countless
    system prompts ("Answer precisely.") and would send them all the long way."""
    if isinstance(body, str):
        return "Answer:" in body or "A:" in body or _HUMANEVAL_TEXT_ANCHOR in body
    return b"Answer:" in body or b"A:" in body or _HUMANEVAL_ANCHOR in body


def recognise(body: bytes) -> Recognition:
    """Which public evaluation format ``body`` (a request body, raw text or JSON) is in,
    and how strongly it reads as an evaluation rather than harvesting."""
    if not may_be_evaluation(body):
        return NOT_EVALUATION
    name, evidence = _format_of(body)
    if evidence == 0.0:
        return NOT_EVALUATION
    if REASONING_DEMAND.search(body.lower()) is not None:
        return Recognition(name, evidence, 0.0)
    return Recognition(name, evidence, evidence * cap_factor(body))


def evaluation_strength(body: bytes) -> float:
    """0..1: how strongly ``body`` reads as an item of a public benchmark in its published
    format, sent for evaluation (``recognise(body).strength``)."""
    return recognise(body).strength
