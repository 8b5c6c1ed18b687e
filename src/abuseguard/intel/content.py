"""Prompt content fingerprints: template shape, template id and reasoning-elicitation markers.

Harvesters send many prompts built from a few templates ("Solve the following problem step
by step: {problem}"), often one template from hundreds of accounts, and ask for reasoning
traces. ``ContentFingerprinter.fingerprint`` turns one request body into ``ContentFacts``
that the scoring kernel keeps per account (a ring of recent SimHashes) and globally (a
Count-Min of template ids).

Pipeline, for at most ``max_bytes`` bytes of body:

1. **Extraction.** A body that looks like JSON (first non-blank byte ``{``, ``[`` or
   ``"`` after an optional byte order mark, or a JSON content type) is parsed and read as
   an LLM API request:

   - OpenAI chat completions and Anthropic messages: ``messages[].content`` (a string or a
     list of ``{"type": "text", "text": ...}`` blocks), system text from ``system``
     (Anthropic) or ``system``/``developer`` messages (OpenAI);
   - OpenAI responses: ``input`` (a string or a list of items with ``role`` and
     ``content``), system text from ``instructions``;
   - Gemini: ``contents[].parts[].text``, system text from ``systemInstruction``;
   - legacy completions: ``prompt`` (a string or a list of strings, the first being the
     template; token arrays carry no text).

   Other JSON contributes its string values in document order (walked without recursion).
   Anything else, and JSON that does not parse (a body cut by ``max_bytes``, or nested
   deeper than ``json`` recurses, included), is read as raw text, UTF-8 with invalid bytes
   replaced; a form-urlencoded body is unquoted first. Bytes that are mostly control
   characters or invalid UTF-8 are binary: no prompt.

2. **Which text is the prompt.** The template shape is taken from the *last user message*
   only. The concatenated user text would make every turn of a benign multi-turn chat
   repeat the previous one (the history is re-sent each time), which is exactly what the
   per-account repeat signal must not see; the last user turn is where a harvester's
   template and fill-in live. The system prompt and the other turns go into ``context_id``
   instead (digits normalised, so a date in a system prompt does not change it): a
   harvester that puts its instructions in a fixed system prompt or in few-shot turns
   sends the same ``context_id`` from every account, while a chat's context changes with
   every turn. Elicitation markers are searched in the system text, every user turn and a
   trailing assistant prefill (Anthropic), never in earlier assistant answers.

3. **Template shape** (a Numba scanner, ``_content_kernels.py``). The prompt is
   lower-cased and split into word tokens (punctuation and whitespace only separate; each
   CJK character is a token). Variable tokens become mask tokens: fenced code, URLs and
   e-mail addresses, quoted spans ("..." '...' `...` “...” «...»), runs of 25+ printable
   ASCII bytes (keys, hashes, base64) and numbers. Then the line structure is masked:

   - a *header* line ending in ``:`` keeps its words, and the lines after it up to a blank
     line become one VAR;
   - a *label* line ``label: value`` keeps the label, and the value with its continuation
     lines (up to a blank line or a line with a colon in its first 40 bytes) become VAR;
   - a header or label counts only when the last sentence before its colon holds an
     instruction word or one of ``FIELD_WORDS`` ("question", "text", "context",
     "review", ...) or has 4+ words, so "Solve for x:" inside a fill-in is not structure;
     a following line with at least 20% ``INSTRUCTION_WORDS`` ("please", "answer",
     "step", "format", ...) ends the masked block ("Answer in one sentence." stays);
   - when a header or label was found, plain paragraphs before the first one are a
     preamble and stay; later ones stay only with 20% instruction words, so a
     multi-paragraph fill-in is masked whole;
   - with neither, a prompt of several paragraphs, else lines, else sentences keeps only
     the one densest in instruction words ("{problem}\nPlease reason step by step...",
     "Let's think step by step. {problem}"); when none holds one, nothing tells the fixed
     part from the fill-in and nothing is masked.

   Consecutive VARs collapse into one. The structural masks are kept only when at least
   ``MIN_TEMPLATE_WORDS`` (4) literal words survive them, so "Question: {anything}" does not
   collapse every prompt with a colon into one template; otherwise only the token
   masks apply. ``template_skeleton`` shows the result as text.

   ``template_id`` is a 64-bit hash of the skeleton's token sequence: fill-ins of one
   template share it when the masks cover the fill-in. ``simhash`` is a SimHash over token
   ``shingle``-grams of the same skeleton, so near variants of a template (a word changed
   in a long instruction) stay within a few bits while unrelated prompts differ in about
   half of them. Both are 0 when the skeleton has fewer than ``MIN_TOKENS`` tokens ("hi",
   "thanks"): such prompts carry no template evidence and consumers should skip them.

4. **Elicitation.** ``ELICITATION_MARKERS`` lists phrases with weights, in English,
   Chinese, Japanese, Korean, Russian, Spanish, French, German and Portuguese, matched as
   token sequences (case-insensitive; any punctuation or whitespace between words, so
   "step-by-step", "step_by_step" and "let\u2019s" match; ``<tag>`` is one token; each CJK
   character or Hangul syllable is a token, so "一步一步" matches inside a sentence without
   spaces; Latin-1 accents are folded, so "etape par etape" matches "étape par étape").
   The strength is ``1 - prod(1 - weight)`` over the distinct phrases found; a phrase
   inside a longer one counts too ("think step by step" is 0.9 and 0.6, so 0.96).
   ``phrase`` names the heaviest phrase found. The background lane learns how common each
   phrase is among established accounts (`abuseguard.operations.popularity`) and hands
   the fingerprinter a discount per phrase (``discount_phrases``): the strength of a
   request is multiplied by 1 - the discount of its ``phrase``, so a phrase half of all
   honest accounts use says little about any one of them.

5. **Evaluation formats.** A body in the published prompt format of a public benchmark
   (`abuseguard.intel.benchmarks`: lm-evaluation-harness MMLU and GSM8K, simple-evals,
   few-shot Q/A blocks) gets ``evaluation``, its strength after the output-cap and
   reasoning-demand checks; the body is fingerprinted a second time with the formats' own
   phrases ("Let's think step by step") taken out, and whatever elicitation is left (a
   demand beyond the format, in any language the markers cover) takes its share off
   ``evaluation``. The elicitation strength is multiplied by 1 - ``evaluation``, and from
   ``EVALUATION_TEMPLATE_MIN`` on the template id is 0: a benchmark's format is shared by
   everyone who runs it, so it says nothing about coordination. Only bodies holding one of
   the formats' anchors ("Answer:", "A:", the HumanEval instruction) pay for more than
   three substring scans. ``ContentFingerprinter(evaluation_formats=False)``
   (``Scoring.evaluation_formats``) turns it off.

Known limits: a fill-in spliced into a sentence without delimiters ("Write a poem about
{topic} in the style of {poet}") changes the template id; so does a fill-in paragraph dense
in instruction words. A short template ("Q: {x}") leaves too few literal words to be
masked. A prompt beyond ``max_bytes`` is fingerprinted from the raw first bytes of the
body. Human prompts that share a long label or an instruction-like paragraph share a
skeleton. The fingerprinter is stateless: telling a template from its fill-ins by what
recurs across requests belongs to a background job, not to the request path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from itertools import repeat
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import unquote_plus

import numpy as np
import orjson

from abuseguard.intel._content_kernels import (
    F_INSTRUCTION,
    F_LABEL,
    MARKERS,
    MAX_SHINGLE,
    SKELETON,
    BodyKernel,
    MarkerSet,
    TextKernel,
    TextsKernel,
    body_context_start,
    body_kernel,
    compile_kernels,
    kernels_cached,
    kernels_ready,
    skeleton_text,
    text_kernel,
    texts_kernel,
    word_table,
    workspace_words,
)
from abuseguard.intel.benchmarks import FORMAT_PHRASES, may_be_evaluation, recognise

if TYPE_CHECKING:
    from abuseguard.identity import ClientAddress
    from abuseguard.request import RequestInfo

MIN_TOKENS = 3

# (phrase, weight). Strong: explicit requests for the reasoning itself; medium: classic
# step-by-step prompting; weak: phrases common in ordinary questions too.
ELICITATION_MARKERS: tuple[tuple[str, float], ...] = (
    ("chain of thought", 1.0),
    ("reasoning trace", 1.0),
    ("<thinking>", 1.0),
    ("<think>", 1.0),
    ("<reasoning>", 1.0),
    ("<scratchpad>", 1.0),
    ("internal monologue", 0.9),
    ("show your reasoning", 0.9),
    ("show your thinking", 0.9),
    ("show your thought process", 0.9),
    ("full reasoning", 0.8),
    ("complete reasoning", 0.8),
    ("think step by step", 0.9),
    ("reason step by step", 0.9),
    ("explain your reasoning", 0.7),
    ("explain your thinking", 0.7),
    ("detailed reasoning", 0.7),
    ("reasoning process", 0.7),
    ("reasoning steps", 0.7),
    ("intermediate steps", 0.7),
    ("thought process", 0.7),
    ("scratchpad", 0.7),
    ("step by step", 0.6),
    ("let's think", 0.6),
    ("think out loud", 0.6),
    ("think aloud", 0.6),
    ("show all work", 0.6),
    ("show all your work", 0.6),
    ("show your work", 0.6),
    ("show all steps", 0.6),
    ("show all the steps", 0.6),
    ("show your steps", 0.6),
    ("show each step", 0.6),
    ("explain each step", 0.5),
    ("reason through", 0.5),
    ("think carefully", 0.4),
    ("think through", 0.4),
    ("walk me through", 0.3),
    ("before answering", 0.3),
    ("before you answer", 0.3),
    ("full derivation", 0.7),
    ("complete derivation", 0.7),
    # Chinese (simplified and traditional): each character is a token, so a phrase matches
    # inside a sentence without spaces. "逐步" alone also means "gradually": only with a verb.
    ("一步一步", 0.6),
    ("一步步", 0.6),
    ("一步一步思考", 0.9),
    ("一步一步地思考", 0.9),
    ("逐步推理", 0.9),
    ("逐步思考", 0.9),
    ("逐步分析", 0.6),
    ("逐步解答", 0.6),
    ("分步骤", 0.6),
    ("思维链", 1.0),
    ("思維鏈", 1.0),
    ("推理过程", 0.7),
    ("推理過程", 0.7),
    ("思考过程", 0.7),
    ("思考過程", 0.7),
    ("推导过程", 0.7),
    ("完整推导", 0.8),
    ("详细推导", 0.7),
    ("解释你的推理", 0.7),
    ("展示你的推理", 0.9),
    ("仔细思考", 0.4),
    ("认真思考", 0.4),
    # Japanese (思考過程 and 推論過程 are shared with Chinese above).
    ("ステップバイステップ", 0.6),
    ("ステップ・バイ・ステップ", 0.6),
    ("段階的に考え", 0.9),
    ("段階的に説明", 0.6),
    ("段階を踏んで", 0.6),
    ("一歩ずつ", 0.6),
    ("順を追って", 0.6),
    ("推論過程", 0.7),
    ("思考の過程", 0.7),
    ("推論の過程", 0.7),
    ("思考の連鎖", 1.0),
    ("途中式", 0.6),
    ("導出過程", 0.7),
    ("よく考えて", 0.4),
    ("じっくり考えて", 0.4),
    # Korean (each syllable is a token; words are separated by spaces).
    ("단계별로", 0.6),
    ("단계적으로", 0.6),
    ("차근차근", 0.6),
    ("한 단계씩", 0.6),
    ("단계별로 생각", 0.9),
    ("차근차근 생각", 0.9),
    ("사고 과정", 0.7),
    ("추론 과정", 0.7),
    ("사고의 사슬", 1.0),
    ("생각의 사슬", 1.0),
    ("풀이 과정", 0.6),
    ("신중하게 생각", 0.4),
    ("꼼꼼히 생각", 0.4),
    # Russian (yo, U+0451, is read as ie, U+0435).
    ("шаг за шагом", 0.6),
    ("пошагово", 0.6),
    ("поэтапно", 0.6),
    ("подумай шаг за шагом", 0.9),
    ("подумайте шаг за шагом", 0.9),
    ("рассуждай шаг за шагом", 0.9),
    ("рассуждайте шаг за шагом", 0.9),
    ("цепочка рассуждений", 1.0),
    ("цепочку рассуждений", 1.0),
    ("цепочка мыслей", 1.0),
    ("ход рассуждений", 0.7),
    ("ход мыслей", 0.7),
    ("объясни свои рассуждения", 0.7),
    ("объясните свои рассуждения", 0.7),
    ("покажи все шаги", 0.6),
    ("покажите все шаги", 0.6),
    ("промежуточные шаги", 0.7),
    ("подумай внимательно", 0.4),
    ("тщательно подумай", 0.4),
    # Spanish (accents are folded: "razonamiento detallado" matches with or without them).
    ("paso a paso", 0.6),
    ("piensa paso a paso", 0.9),
    ("piense paso a paso", 0.9),
    ("pensemos paso a paso", 0.9),
    ("razona paso a paso", 0.9),
    ("cadena de pensamiento", 1.0),
    ("cadena de razonamiento", 1.0),
    ("muestra tu razonamiento", 0.9),
    ("muestra tu trabajo", 0.6),
    ("muestra todos los pasos", 0.6),
    ("explica tu razonamiento", 0.7),
    ("explique su razonamiento", 0.7),
    ("proceso de razonamiento", 0.7),
    ("proceso de pensamiento", 0.7),
    ("razonamiento detallado", 0.7),
    ("razonamiento completo", 0.8),
    ("derivación completa", 0.7),
    ("pasos intermedios", 0.7),
    ("piensa con cuidado", 0.4),
    ("piensa detenidamente", 0.4),
    # French.
    ("étape par étape", 0.6),
    ("pas à pas", 0.6),
    ("réfléchis étape par étape", 0.9),
    ("réfléchissez étape par étape", 0.9),
    ("réfléchissons étape par étape", 0.9),
    ("chaîne de pensée", 1.0),
    ("chaîne de raisonnement", 1.0),
    ("montre ton raisonnement", 0.9),
    ("montrez votre raisonnement", 0.9),
    ("montre toutes les étapes", 0.6),
    ("montrez toutes les étapes", 0.6),
    ("explique ton raisonnement", 0.7),
    ("expliquez votre raisonnement", 0.7),
    ("processus de réflexion", 0.7),
    ("processus de raisonnement", 0.7),
    ("raisonnement détaillé", 0.7),
    ("raisonnement complet", 0.8),
    ("démonstration complète", 0.7),
    ("étapes intermédiaires", 0.7),
    ("réfléchis bien", 0.4),
    ("réfléchissez bien", 0.4),
    # German ("ü" is read as "u"; "fuer" is how it is typed without umlauts).
    ("schritt für schritt", 0.6),
    ("schritt fuer schritt", 0.6),
    ("schrittweise", 0.6),
    ("denke schritt für schritt", 0.9),
    ("denk schritt für schritt", 0.9),
    ("denken sie schritt für schritt", 0.9),
    ("schritt für schritt denken", 0.9),
    ("gedankenkette", 1.0),
    ("gedankengang", 0.7),
    ("denkprozess", 0.7),
    ("rechenweg", 0.6),
    ("lösungsweg", 0.5),
    ("zwischenschritte", 0.7),
    ("erkläre deine überlegungen", 0.7),
    ("erklären sie ihre überlegungen", 0.7),
    ("vollständige herleitung", 0.7),
    ("ausführliche herleitung", 0.7),
    ("denke sorgfältig", 0.4),
    ("denke gründlich", 0.4),
    # Portuguese.
    ("passo a passo", 0.6),
    ("pense passo a passo", 0.9),
    ("pensemos passo a passo", 0.9),
    ("raciocine passo a passo", 0.9),
    ("vamos pensar passo a passo", 0.9),
    ("cadeia de pensamento", 1.0),
    ("cadeia de raciocínio", 1.0),
    ("mostre seu raciocínio", 0.9),
    ("mostre o seu raciocínio", 0.9),
    ("mostre seu trabalho", 0.6),
    ("mostre todos os passos", 0.6),
    ("explique seu raciocínio", 0.7),
    ("explique o seu raciocínio", 0.7),
    ("processo de raciocínio", 0.7),
    ("raciocínio detalhado", 0.7),
    ("raciocínio completo", 0.8),
    ("derivação completa", 0.7),
    ("passos intermediários", 0.7),
    ("pense com cuidado", 0.4),
    ("pense cuidadosamente", 0.4),
)

# Words that mark a paragraph as the instructions of a template rather than its fill-in
# (see "Template shape" above for how the skeleton uses them). Task verbs that
# problems themselves use ("find", "compute", "prove") and words common in any human message
# ("you", "your", "help", "code") are left out on purpose.
INSTRUCTION_WORDS: frozenset[str] = frozenset(
    """
    please answer answers answering respond response reply explain reason reasoning step
    steps think final format formatted output return rewrite translate translation summarize
    summarise summary classify following below above provide put include box boxed json
    markdown sentence sentences language question problem task instructions instruction
    passage bullet bullets concise detailed brief briefly carefully write show justify
    describe
    """.split()  # noqa: SIM905 (a word list reads better as text)
)

# Words that name the field a fill-in goes into ("Context: ...", "Review:\n..."). A "label:"
# or "header:" counts as template structure only when it holds one of these or an
# instruction word, or has 4+ words: "Solve for x: ..." inside a fill-in does not.
FIELD_WORDS: frozenset[str] = frozenset(
    """
    input text context article review document data story email essay query paragraph
    statement prompt content excerpt snippet transcript dialogue conversation message title
    topic abstract claim premise hypothesis source target example examples options choices
    code
    """.split()  # noqa: SIM905 (a word list reads better as text)
)

WORD_TABLE = word_table({F_INSTRUCTION: sorted(INSTRUCTION_WORDS), F_LABEL: sorted(FIELD_WORDS)})
_MARKER_SET = MarkerSet([phrase for phrase, _ in ELICITATION_MARKERS])
_MARKER_WEIGHTS = tuple(weight for _, weight in ELICITATION_MARKERS)

# Reasoning-trace coercion (GTIG, February 2026: prompts demanding the model's own thinking
# written out in full, in the language of the question, mostly not in English). Not a
# request for reasoning ("explain step by step", "show your work": ELICITATION_MARKERS)
# but for the model's *internal* or *hidden* thinking, *verbatim*, *omitting nothing*,
# *with its abandoned attempts*. Strong: the internal/hidden/raw thinking itself; medium:
# the demands that come with it, which ordinary prompts also make now and then. Read by
# the background lane (`coercion_strength`), not on the request path.
COERCION_MARKERS: tuple[tuple[str, float], ...] = (
    ("internal reasoning", 1.0),
    ("internal thinking", 1.0),
    ("internal thought", 1.0),
    ("internal thoughts", 1.0),
    ("internal monologue", 1.0),
    ("inner monologue", 1.0),
    ("hidden reasoning", 1.0),
    ("hidden thinking", 1.0),
    ("hidden thoughts", 1.0),
    ("raw reasoning", 1.0),
    ("raw thinking", 1.0),
    ("raw thoughts", 1.0),
    ("private reasoning", 1.0),
    ("thinking tokens", 1.0),
    ("reasoning trace", 1.0),
    ("thinking trace", 1.0),
    ("chain of thought verbatim", 1.0),
    ("everything you think", 0.8),
    ("everything you thought", 0.8),
    ("discarded attempts", 0.7),
    ("abandoned attempts", 0.7),
    ("failed attempts", 0.5),
    ("dead ends", 0.4),
    ("verbatim", 0.4),
    ("word for word", 0.4),
    ("without omitting anything", 0.5),
    ("omit nothing", 0.5),
    ("omitting nothing", 0.5),
    ("do not summarize", 0.5),
    ("don't summarize", 0.5),
    ("same language as the question", 0.5),
    ("same language as the user", 0.5),
    # Chinese (simplified and traditional).
    ("内部思考", 1.0),
    ("內部思考", 1.0),
    ("内部推理", 1.0),
    ("內部推理", 1.0),
    ("内心独白", 1.0),
    ("內心獨白", 1.0),
    ("隐藏的推理", 1.0),
    ("隐藏的思考", 1.0),
    ("原始思考", 1.0),
    ("思考的全部过程", 0.9),
    ("思考的全部過程", 0.9),
    ("完整的思考过程", 0.8),
    ("放弃的尝试", 0.7),
    ("放棄的嘗試", 0.7),
    ("原样", 0.4),
    ("原樣", 0.4),
    ("逐字", 0.4),
    ("一字不差", 0.5),
    ("不要省略", 0.5),
    ("不要遗漏", 0.5),
    ("毫无保留", 0.4),
    ("与问题相同的语言", 0.5),
    # Japanese.
    ("内部の思考", 1.0),
    ("内部の推論", 1.0),
    ("内なる独白", 1.0),
    ("隠れた推論", 1.0),
    ("思考過程をすべて", 0.8),
    ("諦めた試み", 0.7),
    ("放棄した試み", 0.7),
    ("そのまま出力", 0.5),
    ("省略せず", 0.5),
    ("一字一句", 0.5),
    ("質問と同じ言語", 0.5),
    # Korean.
    ("내부 사고", 1.0),
    ("내부 추론", 1.0),
    ("내면의 독백", 1.0),
    ("숨겨진 추론", 1.0),
    ("포기한 시도", 0.7),
    ("빠짐없이", 0.5),
    ("그대로 출력", 0.5),
    ("생략하지 말고", 0.5),
    ("질문과 같은 언어", 0.5),
    # Russian.
    ("внутренний ход рассуждений", 1.0),
    ("внутренние рассуждения", 1.0),
    ("внутренних рассуждений", 1.0),
    ("внутренние размышления", 1.0),
    ("внутренний монолог", 1.0),
    ("скрытые рассуждения", 1.0),
    ("отброшенные попытки", 0.7),
    ("ничего не опуская", 0.5),
    ("дословно", 0.4),
    ("слово в слово", 0.4),
    ("на том же языке", 0.4),
    # Spanish.
    ("pensamiento interno", 1.0),
    ("pensamientos internos", 1.0),
    ("razonamiento interno", 1.0),
    ("razonamiento oculto", 1.0),
    ("monologo interior", 1.0),
    ("intentos descartados", 0.7),
    ("sin omitir nada", 0.5),
    ("textualmente", 0.4),
    ("palabra por palabra", 0.4),
    ("mismo idioma que la pregunta", 0.5),
    # French.
    ("raisonnement interne", 1.0),
    ("reflexion interne", 1.0),
    ("pensee interne", 1.0),
    ("pensees internes", 1.0),
    ("monologue interieur", 1.0),
    ("raisonnement cache", 1.0),
    ("tentatives abandonnees", 0.7),
    ("sans rien omettre", 0.5),
    ("mot pour mot", 0.4),
    ("textuellement", 0.4),
    ("meme langue que la question", 0.5),
    # German.
    ("internen gedankengang", 1.0),
    ("interner gedankengang", 1.0),
    ("internen uberlegungen", 1.0),
    ("interne uberlegungen", 1.0),
    ("internes denken", 1.0),
    ("inneren monolog", 1.0),
    ("innerer monolog", 1.0),
    ("verworfene ansatze", 0.7),
    ("verworfenen versuche", 0.7),
    ("ohne etwas auszulassen", 0.5),
    ("wortwortlich", 0.4),
    ("gleichen sprache wie die frage", 0.5),
    # Portuguese.
    ("raciocinio interno", 1.0),
    ("pensamento interno", 1.0),
    ("pensamentos internos", 1.0),
    ("monologo interno", 1.0),
    ("raciocinio oculto", 1.0),
    ("tentativas descartadas", 0.7),
    ("sem omitir nada", 0.5),
    ("palavra por palavra", 0.4),
    ("mesmo idioma da pergunta", 0.5),
)
_COERCION_SET = MarkerSet([phrase for phrase, _ in COERCION_MARKERS])
_COERCION_WEIGHTS = tuple(weight for _, weight in COERCION_MARKERS)
# The text kernels of the marker strengths, made on first use: name -> kernel.
_strength_kernels: dict[str, TextKernel] = {}


def _marker_strength(text: str, name: str, markers: MarkerSet, weights: tuple[float, ...]) -> float:
    """``1 - prod(1 - weight)`` over the distinct ``markers`` found in ``text``."""
    kernel = _strength_kernels.get(name)
    if kernel is None:
        kernel = _strength_kernels[name] = text_kernel(WORD_TABLE, markers, weights, 1, MARKERS)
    return float(kernel(_lower_bytes(text), 0, 0)[4])


def coercion_strength(text: str) -> float:
    """``1 - prod(1 - weight)`` over the distinct ``COERCION_MARKERS`` found in ``text``:
    how plainly it demands the model's own internal reasoning, written out in full."""
    return _marker_strength(text, "coercion", _COERCION_SET, _COERCION_WEIGHTS)


_HAS_WORD = re.compile(r"[^\W_]")
_DIGITS = re.compile(r"\d+")

_BOM = b"\xef\xbb\xbf"
_JSON_STARTS = (b"{", b"[", b'"')
_JSON_START_CHARS = ("{", "[", '"')
_ASCII_SPACE = " \t\n\r\x0b\x0c"  # what bytes.lstrip() strips
_TEXT_BYTES = bytes([0x09, 0x0A, 0x0C, 0x0D, *range(0x20, 0x7F), *range(0x80, 0x100)])
_BINARY_SNIFF = 1024
_NOT_JSON = object()
# json.loads(text) for a str is this scanner between optional whitespace (the C scanner of
# json's default decoder), without the layers of Python calls around it.
# typeshed's JSONDecoder type hints leave out scan_once (set in __init__), and json.scanner's
# make_scanner is typed to take a make_scanner, not the decoder: either way needs an ignore.
_SCAN_JSON: Callable[[str, int], tuple[object, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]  # typeshed
_JSON_SPACE = re.compile(r"[ \t\n\r]*").match  # json.decoder.WHITESPACE: always matches
_JSON_WHITESPACE = " \t\n\r"


_ORJSON_LOADS = orjson.loads
_ORJSON_ERROR = orjson.JSONDecodeError


def _loads(text: str) -> object:
    """``json.loads(text)``, or ``_NOT_JSON`` where it raises ValueError or RecursionError.

    orjson parses strict JSON about twice as fast; what it refuses (NaN, 1e400, lone
    surrogates, deep nesting, bad JSON) goes to json's scanner, which decides as before.
    Where both parse, the strings, lists and objects the extractors read are the same
    (orjson reads integers beyond 64 bits as floats; no extractor reads numbers)."""
    try:
        return _ORJSON_LOADS(text)
    except _ORJSON_ERROR:
        pass
    start = 0
    if text[:1] in _JSON_WHITESPACE:  # (or empty) the whitespace scan only when it can match
        space = _JSON_SPACE(text, 0)
        start = space.end() if space is not None else 0
    try:
        doc, end = _SCAN_JSON(text, start)
    except (StopIteration, ValueError, RecursionError):
        return _NOT_JSON
    if end != len(text):
        space = _JSON_SPACE(text, end)
        if (space.end() if space is not None else end) != len(text):
            return _NOT_JSON  # extra data
    return doc


class ContentFacts(NamedTuple):
    """Fingerprint of one request body (immutable; a named tuple: four times cheaper to make
    than a frozen dataclass, and one is made per request).

    ``simhash``: 64-bit SimHash (signed int64) of the prompt's template skeleton; fill-ins of
    one template land within a few bits. ``template_id``: signed int64 hash of the skeleton's
    token sequence, equal for fill-ins of one template when the masks cover the fill-in.
    Both are 0 when there is no prompt or it is too short to carry a template.
    ``elicitation``: 0..1 strength of reasoning-elicitation markers. ``n_bytes``: bytes
    examined (after the cap). ``prompt_found``: False when no prompt text could be
    extracted. ``context_id``: signed int64 hash of the system prompt and the turns other
    than the last user message (digits normalised), 0 when there are none. ``phrase``:
    which marker weighs most in ``elicitation`` (1 + its index in
    ``ELICITATION_MARKERS``), 0 for none; the background lane learns how common each one
    is among established accounts, and ``elicitation`` is already discounted by it
    (``ContentFingerprinter.discount_phrases``). ``evaluation``: 0..1, how strongly the
    body reads as an item of a public benchmark in its published format
    (`abuseguard.intel.benchmarks`), after the checks for a reasoning demand beyond the
    format; ``elicitation`` is already discounted by it, and ``template_id`` is 0 when it
    reaches ``EVALUATION_TEMPLATE_MIN``.
    """

    simhash: int
    template_id: int
    elicitation: float
    n_bytes: int
    prompt_found: bool
    context_id: int = 0
    phrase: int = 0
    evaluation: float = 0.0


# ``ContentFacts(*values)`` without the keyword handling of its constructor: half the cost.
_new_tuple = tuple.__new__

# A request whose ``evaluation`` strength reaches this no longer counts its template: a
# public benchmark's format is shared by everyone who runs it.
EVALUATION_TEMPLATE_MIN = 0.5
_body_context_start = body_context_start
_BODY_PROMPT, _BODY_NO_PROMPT = 1, 2  # what ``_fingerprint_body`` answers (0: not read)

EMPTY_CONTENT = ContentFacts(
    simhash=0, template_id=0, elicitation=0.0, n_bytes=0, prompt_found=False
)


# The largest text the fingerprinter's own workspace is sized for: a longer one (a body cut
# at a larger ``max_bytes``, or invalid bytes each decoded to a 3-byte U+FFFD) makes its
# kernel call allocate a workspace of its own for that call.
_WORKSPACE_MAX_BYTES = 1 << 16

# ``prime`` runs the kernel on the texts prepared so far once they reach this many bytes:
# the packed buffer stays small, and its texts are still in the CPU's caches.
_PACKED_BYTES = 1 << 16

# What a body says: (pieces, template, context). The elicitation text is the pieces joined
# by newlines; pieces[template] is the prompt whose shape is hashed; context is the text
# hashed into ``context_id``.
_Prompt = tuple[list[str], int, str]


def _lower_bytes(text: str) -> np.ndarray:
    return np.frombuffer(text.lower().encode("utf-8", "surrogatepass"), dtype=np.uint8)


def template_skeleton(text: str) -> str:
    """The masked shape of ``text`` that ``template_id`` and ``simhash`` hash, as text.

    Tokens are joined by single spaces; masked spans show as VAR, NUM, QUOTE, CODE, URL or
    LONG. For documentation and tests: fingerprints never build this string.
    """
    return skeleton_text(text.lower().encode("utf-8", "surrogatepass"), WORD_TABLE)


def elicitation_strength(text: str) -> float:
    """``1 - prod(1 - weight)`` over the distinct ``ELICITATION_MARKERS`` found in ``text``."""
    return _marker_strength(text, "elicitation", _MARKER_SET, _MARKER_WEIGHTS)


def _stable_hash(text: str) -> int:
    return _stable_hash_bytes(text.encode("utf-8", "surrogatepass"))


def _stable_hash_bytes(data: bytes) -> int:
    digest = hashlib.blake2b(data, digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True) or 1


_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")


def _digits_normalised(text: str) -> bytes:
    r"""``_DIGITS.sub("0", text)`` as UTF-8: every run of digits becomes one "0".

    ASCII text (where ``\d`` is [0-9]) takes a path about five times faster than the regular
    expression: digits become "0", then runs of "0" are halved until single (a run of n
    digits takes log2(n) passes).
    """
    if not text.isascii():
        return _DIGITS.sub("0", text).encode("utf-8", "surrogatepass")
    data = text.encode("ascii").translate(_TO_ZERO)
    while b"00" in data:
        data = data.replace(b"00", b"0")
    return data


# context_id of recent short contexts: a fixed system prompt recurs on every request of an
# app (or a harvester), and hashing it costs more than the rest of the glue. Bounded: at
# most _CONTEXT_CACHE_SIZE entries of at most _CONTEXT_CACHE_CHARS characters; cleared when
# full. Races between threads only cost a recomputation.
_CONTEXT_CACHE_SIZE = 4096
_CONTEXT_CACHE_CHARS = 1024
_context_ids: dict[str, int] = {}


# context_id by the normalised context bytes the chat-body kernel gives (the same bounds).
_normalised_context_ids: dict[bytes, int] = {}


def _normalised_context_id(normalised: bytes) -> int:
    """``_context_id`` of a context given already normalised (as UTF-8 bytes)."""
    found = _normalised_context_ids.get(normalised)
    if found is None:
        found = _stable_hash_bytes(normalised)
        if len(normalised) <= _CONTEXT_CACHE_CHARS:
            if len(_normalised_context_ids) >= _CONTEXT_CACHE_SIZE:
                _normalised_context_ids.clear()
            _normalised_context_ids[normalised] = found
    return found


def _context_id(context: str) -> int:
    found = _context_ids.get(context)
    if found is None:
        found = _stable_hash_bytes(_digits_normalised(context))
        if len(context) <= _CONTEXT_CACHE_CHARS:
            if len(_context_ids) >= _CONTEXT_CACHE_SIZE:
                _context_ids.clear()
            _context_ids[context] = found
    return found


def _text_of(value: object, *, nested: bool = True) -> str:
    """Text of a message ``content``: a string, a block, or a list of strings and blocks.

    A block's ``parts`` (Gemini) are read one level deep only: no recursion on input.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        return ""
    parts: list[str] = []
    for block in value:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict):
            text = block.get("text")
            if not isinstance(text, str):
                text = block.get("content")
            if isinstance(text, str):
                parts.append(text)
            elif nested and isinstance(block.get("parts"), list):
                parts.append(_text_of(block["parts"], nested=False))
    return "\n".join(part for part in parts if part)


def _from_turns(system: str, items: list[object]) -> _Prompt:
    """Split a conversation into the last user turn, elicitation text and context.

    Messages are strings (user turns) or dicts with a ``role`` (``system`` and ``developer``
    join the system text, ``model`` is the assistant) and ``content`` or ``parts``; a dict
    with none of these is a bare responses-API input block. Empty texts are dropped.
    """
    system_text = [system] if system else []
    roles: list[str] = []
    texts: list[str] = []
    last_user = -1
    for item in items:
        if type(item) is dict:
            # The common message first: string role and content, no parts (what the general
            # branch below makes of it, in fewer steps).
            given = item.get("role")
            content = item.get("content")
            if type(given) is str and type(content) is str and "parts" not in item:
                if given == "system" or given == "developer":
                    if content:
                        system_text.append(content)
                    continue
                if content:
                    if given == "user":
                        last_user = len(texts)
                    roles.append("assistant" if given == "model" else given)
                    texts.append(content)
                continue
        if isinstance(item, str):
            role = "user"
            text = item
        elif isinstance(item, dict):
            given = item.get("role")
            if not isinstance(given, str):
                role = "user"
            elif given == "system" or given == "developer":
                role = "system"
            elif given == "model":
                role = "assistant"
            else:
                role = given
            if "parts" in item:
                content = item["parts"]
            elif "role" not in item and "content" not in item:
                content = item
            else:
                content = item.get("content")
            text = content if type(content) is str else _text_of(content)
            if role == "system":
                if text:
                    system_text.append(text)
                continue
        else:
            continue
        if text:
            if role == "user":
                last_user = len(texts)
            roles.append(role)
            texts.append(text)
    if last_user < 0:
        system_text.extend(texts)
        return system_text, len(system_text) - 1, ""
    if len(texts) == 1:
        return [*system_text, texts[0]], len(system_text), "\n".join(system_text)
    pieces = system_text.copy()
    template = 0
    for i, text in enumerate(texts):
        if i == last_user:
            template = len(pieces)
            pieces.append(text)
        elif i > last_user or roles[i] == "user":
            pieces.append(text)
    turns = [f"{roles[i]}: {texts[i]}" for i in range(len(texts)) if i != last_user]
    return pieces, template, "\n".join([*system_text, *turns])


def _as_list(value: object) -> list[object]:
    if isinstance(value, list):
        return value
    return [value] if isinstance(value, (dict, str)) else []


def _from_api(doc: dict[str, object]) -> _Prompt | None:
    """Read the LLM API request shapes; None when ``doc`` is none of them."""
    if "messages" in doc:  # OpenAI chat completions, Anthropic messages
        messages = doc["messages"]
        system = doc.get("system")
        return _from_turns(
            "" if system is None else _text_of(system),
            messages if isinstance(messages, list) else _as_list(messages),
        )
    if "contents" in doc:  # Gemini
        instruction = doc.get("systemInstruction", doc.get("system_instruction"))
        return _from_turns(_text_of(instruction), _as_list(doc["contents"]))
    if "input" in doc:  # OpenAI responses
        return _from_turns(_text_of(doc.get("instructions")), _as_list(doc["input"]))
    if "prompt" in doc:  # legacy completions
        prompts = [item for item in _as_list(doc["prompt"]) if isinstance(item, str) and item]
        return prompts, 0, ""
    return None


def _string_leaves(doc: object) -> str:
    """String values of any JSON document in document order, without recursion."""
    leaves: list[str] = []
    stack: list[object] = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            leaves.append(node)
        elif isinstance(node, dict):
            stack.extend(reversed(list(node.values())))
        elif isinstance(node, list):
            stack.extend(reversed(node))
    return "\n".join(leaves)


def _from_json(doc: object) -> _Prompt:
    if isinstance(doc, dict):
        prompt = _from_api(doc)
        if prompt is not None:
            return prompt
    return [_string_leaves(doc)], 0, ""


def _looks_binary(raw: bytes) -> bool:
    sample = raw[:_BINARY_SNIFF]
    control = len(sample.translate(None, _TEXT_BYTES))
    if control * 10 > len(sample):
        return True
    decoded = sample.decode("utf-8", "replace")
    return decoded.count("\ufffd") * 4 > len(decoded)


def _is_json_type(content_type: str | None) -> bool:
    return content_type is not None and "json" in content_type.lower()


# A body ready for the kernel: (lower-cased UTF-8 elicitation text, template start and end
# in it, bytes examined, context text).
_Prepared = tuple[bytes, int, int, int, str]


class ContentFingerprinter:
    """Turns request bodies into ``ContentFacts``; thread-safe, never raises on a body."""

    __slots__ = (
        "_body_bytes",
        "_body_lock",
        "_body_max",
        "_body_workspace",
        "_evaluation_formats",
        "_max_bytes",
        "_phrase_keep",
        "_primed",
        "_run",
        "_run_body",
        "_run_many",
        "_shingle",
        "_workspace",
    )

    def __init__(
        self,
        *,
        max_bytes: int = 16384,
        shingle: int = 3,
        background: bool = False,
        evaluation_formats: bool = True,
    ) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"max_bytes must be a positive integer, got {max_bytes!r}")
        if isinstance(shingle, bool) or not isinstance(shingle, int):
            raise ValueError(f"shingle must be an integer, got {shingle!r}")
        if not 1 <= shingle <= MAX_SHINGLE:
            raise ValueError(f"shingle must be in 1..{MAX_SHINGLE}, got {shingle}")
        if not isinstance(evaluation_formats, bool):
            raise ValueError(f"evaluation_formats must be a bool, got {evaluation_formats!r}")
        self._max_bytes = max_bytes
        self._shingle = shingle
        self._evaluation_formats = evaluation_formats
        # Per phrase number (ContentFacts.phrase): the share of a request's elicitation
        # strength kept, 1 - the popularity discount (``discount_phrases``).
        self._phrase_keep: list[float] = [1.0] * (len(ELICITATION_MARKERS) + 1)
        # Fingerprints computed ahead by ``prime``: id(body) -> (body, content type, facts).
        self._primed: dict[int, tuple[object, str | None, ContentFacts]] = {}
        # One workspace for both kernels and every thread: kernel calls hold the GIL.
        self._workspace = np.empty(
            workspace_words(min(max_bytes, _WORKSPACE_MAX_BYTES)), dtype=np.uint64
        )
        # The chat-body kernel's own workspace, read after its call (the context), so used
        # under a lock: one thread's call cannot overwrite another's context before it is read.
        self._body_max = min(max_bytes, _WORKSPACE_MAX_BYTES)
        self._body_workspace = np.empty(workspace_words(self._body_max), dtype=np.uint64)
        self._body_bytes = memoryview(self._body_workspace.view(np.uint8).data)
        self._body_lock = threading.Lock()
        self._run: TextKernel | None = None
        self._run_many: TextsKernel | None = None
        self._run_body: BodyKernel | None = None
        if not background or kernels_cached():
            self._bind_kernels()  # compiles here unless Numba's cache has the kernels

    @property
    def ready(self) -> bool:
        """Whether the kernels are compiled; until then ``fingerprint`` finds no prompt.

        Only a ``background`` fingerprinter is ever not ready. The first check starts the
        compilation in a background thread (``start_compiling``); the fingerprinter
        becomes ready at the first check after it has finished."""
        if self._run is None:
            if not kernels_ready():
                compile_in_background()
                return False
            self._bind_kernels()
        return True

    def start_compiling(self) -> None:
        """Start compiling the kernels in a background thread unless they are ready; a
        ``background`` fingerprinter's owner calls it once its own kernels are built (one
        Numba compilation runs at a time, so an earlier start would delay them)."""
        if self._run is None:
            compile_in_background()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the kernels are compiled (at most ``timeout`` seconds); for batch
        callers (replay) that must not decide without content. Returns ``ready``."""
        self.start_compiling()
        _KERNELS_COMPILED.wait(timeout)
        return self.ready

    def _bind_kernels(self) -> None:
        workspace = self._workspace
        what = SKELETON | MARKERS
        shingle = self._shingle
        run = text_kernel(WORD_TABLE, _MARKER_SET, _MARKER_WEIGHTS, shingle, what, workspace)
        run_many = texts_kernel(WORD_TABLE, _MARKER_SET, _MARKER_WEIGHTS, shingle, what, workspace)
        # Make sure the first request never pays for any set-up either.
        run(_lower_bytes("warm up: the kernels"), 0, 8)
        run_many(
            _lower_bytes("warm up: the kernels"),
            np.array([0, 0, 8, 20], dtype=np.int64),
            np.empty(5, dtype=np.int64),
            np.empty(1, dtype=np.float64),
        )
        run_body = body_kernel(
            WORD_TABLE, _MARKER_SET, _MARKER_WEIGHTS, shingle, what, self._body_workspace
        )
        run_body(b'{"messages": [{"role": "user", "content": "warm up"}]}')
        self._run_body = run_body
        self._run_many = run_many
        self._run = run
        _KERNELS_COMPILED.set()

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    def discount_phrases(self, discounts: Mapping[int, float]) -> None:
        """From now on, multiply the elicitation strength of a request whose heaviest phrase
        is p (``ContentFacts.phrase``) by 1 - ``discounts[p]`` (clamped to 0..1; phrases
        not given: no discount). The background lane's popularity baseline calls it with
        what it learned; each call replaces the previous discounts."""
        keep = [1.0] * (len(ELICITATION_MARKERS) + 1)
        for phrase, discount in discounts.items():
            if 1 <= phrase < len(keep):
                keep[phrase] = 1.0 - min(1.0, max(0.0, discount))
        self._phrase_keep = keep  # one reference swap: readers see the old or the new list

    @property
    def phrase_discounts(self) -> dict[int, float]:
        """The discounts in force (phrase number -> discount), only those above 0."""
        return {p: 1.0 - keep for p, keep in enumerate(self._phrase_keep) if keep < 1.0}

    @property
    def shingle(self) -> int:
        return self._shingle

    # The `abuseguard.intel.enricher.Enricher` interface.
    fills: tuple[str, ...] = ("simhash", "template_id", "elicitation", "has_content")

    def enrich(self, info: RequestInfo, address: ClientAddress) -> ContentFacts | None:
        """The fingerprint of the request's body; None when it has none."""
        if not info.body:
            return None
        return self.fingerprint(info.body, info.headers.get("content-type"))

    def fingerprint(
        self, body: bytes | str | None, content_type: str | None = None
    ) -> ContentFacts:
        """Fingerprint the first ``max_bytes`` bytes of ``body``; never raises. Before the
        kernels are ready (see ``ready``), every body has no prompt (``EMPTY_CONTENT``)."""
        if self._run is None and not self.ready:
            return EMPTY_CONTENT
        facts: ContentFacts | None = None
        if self._primed:
            hit = self._primed.pop(id(body), None)
            if hit is not None and hit[0] is body and hit[1] == content_type:
                facts = hit[2]
        if facts is None and type(body) is bytes and len(body) <= self._body_max:
            facts = self._fingerprint_chat(body)
        if facts is None:
            facts = self._fingerprint_safely(body, content_type)
        if (
            self._evaluation_formats
            and facts.prompt_found
            and (not isinstance(body, (bytes, str)) or may_be_evaluation(body))
        ):
            return self._judge_evaluation(body, content_type, facts)
        return facts

    def _judge_evaluation(
        self, body: object, content_type: str | None, facts: ContentFacts
    ) -> ContentFacts:
        """``facts`` with ``evaluation`` set and the elicitation and template discounted
        when the body is a public benchmark's item (`abuseguard.intel.benchmarks`)."""
        try:
            raw = body if type(body) is bytes else self._capped(body)
            if len(raw) > self._max_bytes:
                raw = raw[: self._max_bytes]
            strength = recognise(raw).strength
            if strength <= 0.0:
                return facts
            strength *= 1.0 - self._elicitation_beyond_format(raw, content_type, facts)
        except Exception:  # as in ``_fingerprint_safely``: never fail the request
            return facts
        if strength <= 0.0:
            return facts
        return facts._replace(
            elicitation=facts.elicitation * (1.0 - strength),
            template_id=0 if strength >= EVALUATION_TEMPLATE_MIN else facts.template_id,
            evaluation=strength,
        )

    def _elicitation_beyond_format(
        self, raw: bytes, content_type: str | None, facts: ContentFacts
    ) -> float:
        """The elicitation strength of the body once the benchmark formats' own phrases
        ("Let's think step by step") are taken out: a demand for reasoning beyond the
        format, in any language the markers cover. Fingerprints the body a second time,
        but only bodies in a benchmark format."""
        if facts.elicitation == 0.0:  # no marker at all (a multiple-choice item): none left
            return 0.0
        stripped = raw
        for phrase in FORMAT_PHRASES:
            stripped = stripped.replace(phrase, b"")
        if len(stripped) == len(raw):
            return facts.elicitation
        residual: ContentFacts | None = None
        if len(stripped) <= self._body_max:
            residual = self._fingerprint_chat(stripped)
        if residual is None:
            residual = self._fingerprint_safely(stripped, content_type)
        return residual.elicitation

    def _fingerprint_chat(self, body: bytes) -> ContentFacts | None:
        """A chat body read and fingerprinted in one kernel call (``_fingerprint_body``),
        the facts the Python extraction would give; None for a body that kernel leaves to
        the Python extraction (another shape, non-ASCII, invalid JSON)."""
        run_body = self._run_body
        if run_body is None or not body:
            return None
        try:
            with self._body_lock:
                status, simhash, template_id, n_tokens, phrase, context_length, strength = run_body(
                    body
                )
                if context_length:
                    start = _body_context_start(len(body))
                    context = self._body_bytes[start : start + context_length].tobytes()
        except Exception:  # as in ``_fingerprint_safely``: the Python extraction decides
            return None
        if status == _BODY_PROMPT:
            if n_tokens < MIN_TOKENS:
                simhash = template_id = 0
            context_id = _normalised_context_id(context) if context_length else 0
            return _new_tuple(
                ContentFacts,
                (
                    simhash,
                    template_id,
                    strength * self._phrase_keep[phrase],
                    len(body),
                    True,
                    context_id,
                    phrase,
                    0.0,
                ),
            )
        if status == _BODY_NO_PROMPT:
            return ContentFacts(0, 0, 0.0, len(body), False)
        return None

    def prime(self, items: Iterable[tuple[bytes | str | None, str | None]]) -> int:
        """Fingerprint a batch of bodies ahead of the requests that carry them.

        The batch entry point for replay: the prompts of all the bodies are extracted
        first, then their texts are packed into one buffer and fingerprinted by one kernel
        call (``_fingerprint_texts``), so the per-call costs are paid once a batch. The
        facts are those ``fingerprint`` computes one body at a time, bit for bit. The next
        ``fingerprint(body, content_type)`` with the very same body object (and content
        type) answers what was computed here, once. Priming replaces the fingerprints
        primed before and not yet asked for, so at most one batch is held. Returns how
        many bodies were fingerprinted.
        """
        self.wait_ready()
        prepare = self._prepare
        primed: dict[int, tuple[object, str | None, ContentFacts]] = {}
        # Bodies that need the kernel, and what ``_prepare`` made of them.
        asked: list[tuple[bytes | str | None, str | None]] = []
        waiting: list[_Prepared] = []
        packed = 0  # bytes of text waiting
        chat = self._fingerprint_chat
        body_max = self._body_max
        for item in items:
            body, content_type = item
            if type(body) is bytes and len(body) <= body_max:
                facts = chat(body)
                if facts is not None:
                    primed[id(body)] = (body, content_type, facts)
                    continue
            try:
                prepared = prepare(body, content_type)
            except Exception:  # as in ``_fingerprint_safely``
                prepared = EMPTY_CONTENT
            if isinstance(prepared, ContentFacts):
                primed[id(body)] = (body, content_type, prepared)
                continue
            asked.append(item)
            waiting.append(prepared)
            packed += len(prepared[0])
            if packed >= _PACKED_BYTES:  # the kernel reads texts still in the CPU's caches
                self._finish_safely(primed, asked, waiting)
                asked = []
                waiting = []
                packed = 0
        if waiting:
            self._finish_safely(primed, asked, waiting)
        self._primed = primed
        return len(primed)

    def _finish_safely(
        self,
        primed: dict[int, tuple[object, str | None, ContentFacts]],
        asked: list[tuple[bytes | str | None, str | None]],
        waiting: list[_Prepared],
    ) -> None:
        # On failure, those bodies are left to ``fingerprint``, one by one.
        with contextlib.suppress(Exception):
            self._finish(primed, asked, waiting)

    def _finish(
        self,
        primed: dict[int, tuple[object, str | None, ContentFacts]],
        asked: list[tuple[bytes | str | None, str | None]],
        waiting: list[_Prepared],
    ) -> None:
        """One batch kernel call on the texts of ``waiting``, packed into one buffer with
        their bounds; primes the ``asked`` (body, content type) pairs with the facts."""
        count = len(waiting)
        texts, starts, ends, n_bytes, contexts = zip(*waiting, strict=True)
        lengths = np.fromiter(map(len, texts), dtype=np.int64, count=count)
        offsets = np.cumsum(lengths) - lengths
        bounds = np.empty(3 * count + 1, dtype=np.int64)
        bounds[0:-1:3] = offsets
        bounds[1::3] = offsets + np.array(starts, dtype=np.int64)
        bounds[2::3] = offsets + np.array(ends, dtype=np.int64)
        bounds[-1] = offsets[-1] + lengths[-1]
        out = np.empty(5 * count, dtype=np.int64)
        strengths = np.empty(count, dtype=np.float64)
        assert self._run_many is not None  # prime() waited for the kernels
        self._run_many(np.frombuffer(b"".join(texts), dtype=np.uint8), bounds, out, strengths)
        columns = out.reshape(5, count)
        strengths *= np.array(self._phrase_keep)[columns[4]]
        hashes = columns[:2]
        hashes[:, columns[2] < MIN_TOKENS] = 0  # too short to carry a template
        simhashes, template_ids = hashes.tolist()
        context_ids = [_context_id(context) if context else 0 for context in contexts]
        facts = map(
            _new_tuple,
            repeat(ContentFacts),
            zip(
                simhashes,
                template_ids,
                strengths.tolist(),
                n_bytes,
                repeat(True),
                context_ids,
                columns[4].tolist(),
                repeat(0.0),
            ),
        )
        for (body, content_type), fact in zip(asked, facts, strict=True):
            primed[id(body)] = (body, content_type, fact)

    def _fingerprint_safely(self, body: object, content_type: str | None) -> ContentFacts:
        try:
            return self._fingerprint(body, content_type)
        except Exception:  # a fingerprint must never fail the request it describes
            return EMPTY_CONTENT

    def _capped(self, body: object) -> bytes:
        cap = self._max_bytes
        if type(body) is bytes:
            return body if len(body) <= cap else body[:cap]
        if isinstance(body, str):
            return body[:cap].encode("utf-8", "surrogatepass")[:cap]
        if isinstance(body, (bytes, bytearray, memoryview)):
            return bytes(memoryview(body)[:cap])
        return b""

    def _fingerprint(self, body: object, content_type: str | None) -> ContentFacts:
        prepared = self._prepare(body, content_type)
        if isinstance(prepared, ContentFacts):
            return prepared
        data, start, end, n_bytes, context = prepared
        assert self._run is not None  # fingerprint() checked ``ready``
        simhash, template_id, n_tokens, _, strength, phrase = self._run(
            np.frombuffer(data, dtype=np.uint8), start, end
        )
        if n_tokens < MIN_TOKENS:
            simhash = template_id = 0
        context_id = _context_id(context) if context else 0
        strength *= self._phrase_keep[phrase]
        return _new_tuple(
            ContentFacts,
            (simhash, template_id, strength, n_bytes, True, context_id, phrase, 0.0),
        )

    def _prepare(self, body: object, content_type: str | None) -> ContentFacts | _Prepared:
        """The facts of a body without a prompt, else what the kernel needs of it."""
        if type(body) is str and body.isascii() and len(body) <= self._max_bytes:
            if not body:
                return EMPTY_CONTENT
            n_bytes = len(body)
            prompt = self._extract_ascii(body, content_type)
        else:
            raw = self._capped(body)
            if not raw:
                return EMPTY_CONTENT
            n_bytes = len(raw)
            prompt = self._extract(raw, content_type)
        if prompt is None:
            return ContentFacts(0, 0, 0.0, n_bytes, False)
        pieces, template, context = prompt
        for piece in pieces:
            if _HAS_WORD.search(piece):
                break
        else:
            return ContentFacts(0, 0, 0.0, n_bytes, False)
        # Lower-casing is per character and a newline ends the context of a final sigma, so
        # the lowered pieces joined are the lowered elicitation text, holding the template.
        if len(pieces) == 1:
            data = pieces[0].lower().encode("utf-8", "surrogatepass")
            start, end = 0, len(data)
        elif (joined := "\n".join(pieces)).isascii():
            # ASCII lowers to ASCII of the same length: offsets are character offsets.
            data = joined.lower().encode("ascii")
            start = template
            for piece in pieces[:template]:
                start += len(piece)
            end = start + len(pieces[template])
        else:
            parts = [piece.lower().encode("utf-8", "surrogatepass") for piece in pieces]
            start = template
            for part in parts[:template]:
                start += len(part)
            end = start + len(parts[template])
            data = b"\n".join(parts)
        return data, start, end, n_bytes, context

    def _extract(self, raw: bytes, content_type: str | None) -> _Prompt | None:
        first = raw[:1]
        if first not in _JSON_STARTS:
            first = raw.removeprefix(_BOM).lstrip()[:1]
        if first in _JSON_STARTS or _is_json_type(content_type):
            doc = self._parse_json(raw)
            if doc is not _NOT_JSON:
                return _from_json(doc)
        if _looks_binary(raw):
            return None
        text = raw.decode("utf-8", "replace")
        if content_type is not None and "x-www-form-urlencoded" in content_type.lower():
            text = unquote_plus(text)
        return [text], 0, ""

    def _extract_ascii(self, text: str, content_type: str | None) -> _Prompt | None:
        """``_extract`` of an ASCII body given as text: ASCII is its own UTF-8, so the text
        is what decoding its bytes would give."""
        first = text[:1]
        if first not in _JSON_START_CHARS:
            first = text.lstrip(_ASCII_SPACE)[:1]
        if first in _JSON_START_CHARS or _is_json_type(content_type):
            doc = _loads(text)
            if doc is not _NOT_JSON:
                if type(doc) is dict:  # ``_from_json(doc)``, one call less
                    prompt = _from_api(doc)
                    if prompt is not None:
                        return prompt
                return [_string_leaves(doc)], 0, ""
        if _looks_binary(text.encode("ascii")):
            return None
        if content_type is not None and "x-www-form-urlencoded" in content_type.lower():
            text = unquote_plus(text)
        return [text], 0, ""

    @staticmethod
    def _parse_json(raw: bytes) -> object:
        try:
            # Valid UTF-8 without a byte order mark decodes the same strictly, faster.
            text = raw.decode("utf-8") if raw[:3] != _BOM else None
        except UnicodeDecodeError:
            text = None
        if text is None:
            text = raw.decode("utf-8-sig", "replace")
        return _loads(text)


_KERNELS_COMPILED = threading.Event()
_COMPILER_THREAD_LOCK = threading.Lock()
_compiler_thread: threading.Thread | None = None


def compile_in_background() -> threading.Thread | None:
    """Start compiling the content kernels in a daemon thread, once per process; returns
    that thread (None when the kernels are already compiled)."""
    global _compiler_thread
    if kernels_ready():
        _KERNELS_COMPILED.set()
        return None
    with _COMPILER_THREAD_LOCK:
        if _compiler_thread is None:
            _compiler_thread = threading.Thread(
                target=_compile_and_signal, name="abuseguard-content-compile", daemon=True
            )
            _compiler_thread.start()
        return _compiler_thread


def _compile_and_signal() -> None:
    try:
        compile_kernels()
    finally:  # a failed compilation must not leave ``wait_ready`` callers blocked
        _KERNELS_COMPILED.set()
