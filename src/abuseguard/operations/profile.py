"""Per-account harvest profile: a sequential test over what each request asks.

Distillation through account pools spreads a harvest thin: each account sends a few
requests an hour, from a fresh residential exit, through a real browser or a forged SDK,
so nothing about a single request stands out. What stands out is the stream of an account
over hours: it asks one question at a time, nearly every question demands the reasoning
written out, each one is on the next subject of a taxonomy, and the language is chosen
per request (public accounts of distillation campaigns, such as GTIG's of February 2026
cited in `abuseguard.intel.content`). People and honest
apps differ on most of these at once: people converse (follow-up turns), ask for reasoning
now and then, stay on one or two subjects through a session of related questions, and
write in their own language or two; a benchmark harness sweeps subjects in one language
and one prompt format, and a developer loops on one prompt. Apps that pass on their users'
text (translation, moderation, support) send new languages and subjects all day, but
seldom demand reasoning: novelty counts only in a request that does.

`HarvestProfile` reads each queued request of an account (`read_request`: single-turn, a
demand for written-out reasoning from `abuseguard.intel.content`'s multilingual
elicitation and coercion markers, the language from Unicode scripts and a few stopwords,
the subject words, the output-token cap) and adds the log-likelihood ratio of what it saw
to the account's score, a CUSUM: ``score = max(0, score * decay + llr)``, where ``decay``
halves the score every ``half_life`` seconds of the requests' time. The per-feature
likelihoods (`FEATURE_LLR`) are set from those public descriptions, not fitted to any
trace. A score at ``threshold`` judges the account: the lane writes ``prior`` for it (the
kernel's ``prior`` signal), and, with ``hold``, holds it at the first accumulated-evidence
step, as for a reasoning-coercion verdict. Forgiveness: once the decayed score falls below
``release`` (quiet accounts decay; honest requests subtract), the prior is lifted (0).

Memory: at most ``max_accounts`` accounts (the oldest dropped first), each a fixed-size
state: the subject words and languages of its last ``window`` requests demanding
reasoning, the template ids of its last ``window`` requests, its last ``window`` reasoning
phrases, and a few counters.
"""

from __future__ import annotations

import math
import re
import zlib
from array import array
from bisect import bisect_right
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import orjson

from abuseguard.config_check import check_fields
from abuseguard.errors import ConfigError
from abuseguard.intel.content import coercion_strength
from abuseguard.operations.evidence import read_conversation

if TYPE_CHECKING:
    from abuseguard.intel.content import ContentFingerprinter
    from abuseguard.lane import LaneRecord

_TEXT_CHARS = 2048  # of the last user message (and of the system text) read per request
_TOKEN_CAPS = ("max_tokens", "max_completion_tokens", "max_output_tokens")

# Unicode blocks of scripts that name a language (or a script few languages share) on
# their own: (first, last, name), sorted.
_SCRIPT_BLOCKS: tuple[tuple[int, int, str], ...] = tuple(
    sorted(
        [
            (0x3040, 0x30FF, "ja"),  # kana: Japanese mixes it with kanji
            (0x31F0, 0x31FF, "ja"),
            (0xFF66, 0xFF9F, "ja"),
            (0xAC00, 0xD7AF, "ko"),
            (0x1100, 0x11FF, "ko"),
            (0x3130, 0x318F, "ko"),
            (0x4E00, 0x9FFF, "zh"),
            (0x3400, 0x4DBF, "zh"),
            (0xF900, 0xFAFF, "zh"),
            (0x0400, 0x04FF, "cyrillic"),
            (0x0600, 0x06FF, "arabic"),
            (0x0750, 0x077F, "arabic"),
            (0x0590, 0x05FF, "hebrew"),
            (0x0370, 0x03FF, "greek"),
            (0x0900, 0x097F, "devanagari"),
            (0x0E00, 0x0E7F, "thai"),
        ]
    )
)
_BLOCK_STARTS = [first for first, _, _ in _SCRIPT_BLOCKS]
# Kana before Han: a Japanese text holds both.
_SCRIPT_ORDER = ("ja", "ko", "zh", "cyrillic", "arabic", "hebrew", "greek", "devanagari", "thai")
_CJK = frozenset({"ja", "ko", "zh"})


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_NON_ASCII_LETTERS = re.compile("[^\\x00-\\x7f\\W\\d_]")
_LETTER = re.compile(r"[^\W\d_]")
# Function words frequent in one Latin-script language and rare in the others (words two
# of them share, such as "de", "a", "como", "que", are left out).
_STOPWORDS: Mapping[str, frozenset[str]] = {
    "en": _words("the is are was you your what how why this that with and for can does it's i'm"),
    "es": _words("el los las es por con una esto qué cómo puedes ayudas del muy"),
    "pt": _words("um uma isto você não com tenho pode ajudar do da em é"),
    "fr": _words("le les est une pour avec ce cette je vous comment quoi du des et par"),
    "de": _words("der die das ist ich ein eine und mit wie nicht für auf zu"),
    "it": _words("il gli è sono per una questo questa come non della"),
}
_LANGUAGES_OF_WORD: Mapping[str, tuple[str, ...]] = {
    word: tuple(language for language, words in _STOPWORDS.items() if word in words)
    for word in frozenset().union(*_STOPWORDS.values())
}
_LATIN_WORD = re.compile(r"[a-zà-ÿ']+")
# Subject words: runs of 4+ letters (no digits, so "a triangle with sides 3, 4, 5" and
# "... 6, 8, 10" share a subject), and pairs of characters in scripts without spaces.
_WORD = re.compile("[^\\W\\d_\u3040-\u30ff\u4e00-\u9fff\uac00-\ud7af]{4,}")
_CJK_RUN = re.compile("[\u3040-\u30ff\u4e00-\u9fff\uac00-\ud7af]{2,}")
_GENERIC_WORDS = frozenset(
    """
    this that what with from have about your there their would could should which when where
    they them then than into just like some more most also only over such very much many
    help please answer explain step steps reason reasoning think thinking show work through
    problem question questions task solve solution understand detail detailed details
    carefully write give full each every before after answering result derivation
    """.split()  # noqa: SIM905 (a word list reads better as text)
)


class RequestFacts(NamedTuple):
    """What one request says about how its account uses the model."""

    single_turn: bool
    reasoning: float  # 0..1: how plainly it demands written-out reasoning
    language: str  # "" when the text says too little
    subjects: frozenset[str]  # the subject words of the last user message
    output_cap: int | None  # the output-token cap, when given
    template: int  # the prompt's template id (`abuseguard.intel.content`), 0 when none
    phrase: int  # the heaviest elicitation phrase found (its number), 0 when none
    prompt: bool = True  # False: not an LLM request with a user message (no evidence)


_NO_FACTS = RequestFacts(False, 0.0, "", frozenset(), None, 0, 0, False)


def language_of(text: str) -> str:
    """The language (or script) ``text`` is written in, cheaply: a script that names a
    language (kana: ja, Hangul: ko, Han: zh, Cyrillic, ...) when it makes a fifth of the
    letters (a CJK character counting as four: it is a word), else the Latin-script
    language whose function words it uses clearly most (twice at least), else English when
    it uses an English function word (English terms inside another language are common,
    so English wins only when no other language shows). "" when it cannot tell."""
    letters = len(_LETTER.findall(text))
    if letters == 0:
        return ""
    counts: dict[str, int] = {}
    for ch in _NON_ASCII_LETTERS.findall(text):
        code = ord(ch)
        block = _SCRIPT_BLOCKS[bisect_right(_BLOCK_STARTS, code) - 1]
        if block[0] <= code <= block[1]:
            counts[block[2]] = counts.get(block[2], 0) + 1
    for name in _SCRIPT_ORDER:
        found = counts.get(name, 0)
        if found and found * (4 if name in _CJK else 1) >= letters / 5:
            return name
    votes = dict.fromkeys(_STOPWORDS, 0)
    for word in _LATIN_WORD.findall(text.lower()):
        for language in _LANGUAGES_OF_WORD.get(word, ()):
            votes[language] += 1
    english = votes.pop("en")
    ranked = sorted(votes.values())
    if ranked[-1] >= 2 and ranked[-2] * 2 < ranked[-1]:
        return max(votes, key=votes.__getitem__)
    return "en" if english else ""


def subject_words(text: str) -> frozenset[str]:
    """The words of ``text`` that name what it is about: letters only, generic request
    words ("explain", "step", "problem", ...) left out, and pairs of characters of the
    scripts written without spaces."""
    lowered = text.lower()
    words = {w for w in _WORD.findall(lowered) if w not in _GENERIC_WORDS}
    for run in _CJK_RUN.findall(lowered):
        words.update(run[i : i + 2] for i in range(len(run) - 1))
    return frozenset(words)


def read_request(
    body: bytes | str | None, fingerprinter: ContentFingerprinter | None = None
) -> RequestFacts:
    """The `RequestFacts` of an LLM API request body (chat completions, messages,
    responses, Gemini, legacy completions); empty facts for anything else. Never raises.
    The demand for reasoning is the larger of the fingerprint's elicitation strength and
    the coercion strength of the system text and last user message; the language and the
    subject words are read only from a request demanding reasoning (elsewhere they count
    for nothing)."""
    if not body:
        return _NO_FACTS
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _NO_FACTS
    if not isinstance(request, dict):
        return _NO_FACTS
    system_text, users, answers, last_user = read_conversation(request)
    if not users:
        return _NO_FACTS
    if fingerprinter is None:
        from abuseguard.intel.content import ContentFingerprinter

        fingerprinter = ContentFingerprinter()
    facts = fingerprinter.fingerprint(body, "application/json")
    asked = last_user[:_TEXT_CHARS]
    system_text = system_text[:_TEXT_CHARS]
    demand = f"{system_text}\n{asked}" if system_text else asked
    coercion = coercion_strength(demand) if demand else 0.0
    reasoning = max(facts.elicitation, coercion)
    cap = next((request[k] for k in _TOKEN_CAPS if k in request), None)
    # Language and subjects are read only where they count (`request_llr`).
    return RequestFacts(
        users == 1 and answers == 0,
        reasoning,
        language_of(asked) if reasoning > 0.0 else "",
        subject_words(asked) if reasoning > 0.0 else frozenset(),
        cap if isinstance(cap, int) and not isinstance(cap, bool) else None,
        int(facts.template_id),
        facts.phrase,
    )


# The log-likelihood ratio (nats) of each observation, harvesting against honest use,
# from public accounts of both (not fitted to any trace):
# - single-turn: harvesters ask one question per request (~0.9); people converse and send
#   follow-ups (about half of chat requests carry earlier turns), SDK backends are
#   single-turn too, so a single-turn request says little and a follow-up says much;
# - a demand for written-out reasoning: most harvesting requests (~0.7 plain, more with
#   a weaker phrasing); a minority of honest requests (~0.2). Asked in the phrasing of a
#   recent request, it is a format (a harness's "Let's think step by step", a person's
#   habit), not evidence: harvesters rotate their phrasings;
# - in a request demanding reasoning, a language the account has not used recently: a
#   harvester picks the language of each question (a new one on ~a third of its requests),
#   to have the reasoning written in it; a person writes in their own language or two (a
#   new one on ~1 request in 40);
# - in a request demanding reasoning, a subject sharing no word with the account's last
#   requests: a sweep of a taxonomy moves on every request (~0.75); a person asks related
#   questions in a session (~0.35 start a new subject). Without a demand for reasoning,
#   novelty is what an app serving many users sends (`request_llr`);
# - the prompt format (template id) of a recent request: a benchmark harness, an app, a
#   student's template and a developer's loop repeat their format; harvesters rotate
#   phrasings to look varied;
# - the output-token cap: harvesters want whole reasoning traces (caps of 8k and more);
#   apps and harnesses cap what they need.
FEATURE_LLR: Mapping[str, float] = {
    "single_turn": 0.4,
    "follow_up": -1.5,
    "reasoning": 1.2,  # strength >= 0.5
    "some_reasoning": 0.4,  # 0 < strength < 0.5
    "no_reasoning": -0.8,
    "repeated_reasoning": 0.0,  # asked in a phrasing of a recent request: a format
    "new_language": 2.5,
    "known_language": -0.3,
    "new_subject": 0.7,
    "same_subject": -1.2,
    "same_format": -0.7,
    "long_output": 0.5,  # output cap >= 8192
    "short_output": -0.5,  # output cap <= 1024
}
_EXPLAINED = ("single_turn", "reasoning", "new_language", "new_subject", "same_format")


@dataclass(frozen=True)
class HarvestProfileConfig:
    """The per-account harvest profile (`HarvestProfile`) of the background lane.

    ``threshold``: the accumulated log-likelihood ratio (nats) that judges an account
    harvesting. ``release``: the score under which a judged account's prior is lifted
    (forgiveness; below ``threshold``). ``half_life``: seconds of the requests' time in
    which the score halves. ``prior``: the prior written for a judged account (0..1).
    ``hold``: also hold a judged account at the first accumulated-evidence step, once,
    when it is judged. ``read_every``: read at most one request per account per this
    many seconds (a busy account's stream costs no more than a slow one's; evidence needs
    requests spread over time). ``window``: how many recent requests' subjects, languages
    and formats an account remembers. ``max_accounts``: accounts kept (oldest dropped).
    """

    threshold: float = 6.0
    release: float = 3.0
    half_life: float = 86400.0
    prior: float = 1.0
    hold: bool = True
    read_every: float = 5.0
    window: int = 4
    max_accounts: int = 50_000

    def __post_init__(self) -> None:
        check_fields(self)
        if self.threshold <= 0.0:
            raise ConfigError("HarvestProfileConfig.threshold", "must be > 0")
        if not self.release < self.threshold:
            raise ConfigError("HarvestProfileConfig.release", "must be below threshold")
        if self.half_life <= 0.0:
            raise ConfigError("HarvestProfileConfig.half_life", "must be > 0 seconds")
        if not 0.0 < self.prior <= 1.0:
            raise ConfigError("HarvestProfileConfig.prior", "must be in (0, 1]")
        for name in ("window", "max_accounts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"HarvestProfileConfig.{name}", "must be >= 1")


class AccountProfile:
    """One account's state: its score, what its recent requests were about, and counts of
    what was seen (for explanations)."""

    __slots__ = (
        "counts", "judged", "languages", "peak", "phrases", "read_ts", "score", "subjects",
        "templates", "ts",
    )  # fmt: skip

    def __init__(self) -> None:
        self.score = 0.0
        self.peak = 0.0
        self.ts: float | None = None
        self.read_ts: float | None = None
        self.judged = False
        # The last few of each, oldest first (tuples: an account costs about a kilobyte).
        self.languages: tuple[str, ...] = ()
        self.subjects: tuple[bytes, ...] = ()  # `_packed` subject words of each request
        self.templates: tuple[int, ...] = ()
        self.phrases: tuple[int, ...] = ()
        # requests read, then how many of them showed each of _EXPLAINED
        self.counts = [0] * (1 + len(_EXPLAINED))

    def evidence(self) -> dict[str, float]:
        """The score and the share of read requests showing each harvesting feature."""
        n = self.counts[0]
        out: dict[str, float] = {"score": round(self.score, 2), "peak": round(self.peak, 2)}
        out["requests_read"] = n
        for name, count in zip(_EXPLAINED, self.counts[1:], strict=True):
            out[name] = round(count / n, 3) if n else 0.0
        return out


_MAX_SUBJECT_WORDS = 16


def _packed(words: frozenset[str]) -> bytes:
    """32-bit hashes of at most ``_MAX_SUBJECT_WORDS`` of ``words`` (the smallest hashes:
    two requests keep the same sample of the words they share), packed."""
    hashes = sorted({zlib.crc32(word.encode("utf-8", "surrogatepass")) for word in words})
    return array("I", hashes[:_MAX_SUBJECT_WORDS]).tobytes()


def request_llr(facts: RequestFacts, account: AccountProfile) -> tuple[float, list[bool]]:
    """The log-likelihood ratio of one request given the account's recent requests, and
    which of the explained features (`_EXPLAINED`) it showed."""
    llr = FEATURE_LLR["single_turn"] if facts.single_turn else FEATURE_LLR["follow_up"]
    if facts.reasoning > 0.0 and facts.phrase != 0 and facts.phrase in account.phrases:
        llr += FEATURE_LLR["repeated_reasoning"]
    elif facts.reasoning >= 0.5:
        llr += FEATURE_LLR["reasoning"]
    elif facts.reasoning > 0.0:
        llr += FEATURE_LLR["some_reasoning"]
    else:
        llr += FEATURE_LLR["no_reasoning"]
    # Novelty (a new language, a new subject) is evidence of harvesting only in a request
    # that demands reasoning: without one it is what an app serving many users sends
    # (translation, moderation, support backends pass on their users' text as it comes).
    asks_reasoning = facts.reasoning > 0.0
    new_language = False
    if facts.language and account.languages:
        new_language = facts.language not in account.languages
        if asks_reasoning:
            llr += FEATURE_LLR["new_language" if new_language else "known_language"]
    new_subject = False
    if facts.subjects and account.subjects:
        mine = set(array("I", _packed(facts.subjects)))
        new_subject = all(mine.isdisjoint(array("I", earlier)) for earlier in account.subjects)
        if asks_reasoning:
            llr += FEATURE_LLR["new_subject" if new_subject else "same_subject"]
    same_format = facts.template != 0 and facts.template in account.templates
    if same_format:
        llr += FEATURE_LLR["same_format"]
    if facts.output_cap is not None:
        if facts.output_cap >= 8192:
            llr += FEATURE_LLR["long_output"]
        elif facts.output_cap <= 1024:
            llr += FEATURE_LLR["short_output"]
    shown = [facts.single_turn, facts.reasoning >= 0.5, new_language, new_subject, same_format]
    return llr, shown


@dataclass
class HarvestProfile:
    """The lane analyzer that keeps a `AccountProfile` per account (see the module).

    ``analyze`` returns ``config.prior`` while an account stands judged, 0.0 once when it
    is released, else None (the prior others wrote stays). ``take_judged()`` hands the
    lane the accounts judged since it was last called, with the time of the request that
    crossed, to hold.
    """

    config: HarvestProfileConfig = field(default_factory=HarvestProfileConfig)
    accounts: dict[str, AccountProfile] = field(default_factory=dict)
    judged_total: int = 0
    _judged: dict[str, float] = field(default_factory=dict)
    _fingerprinter: ContentFingerprinter | None = None

    def analyze(self, identity: str, records: Sequence[LaneRecord]) -> float | None:
        config = self.config
        account = self.accounts.get(identity)
        if account is None:
            if len(self.accounts) >= config.max_accounts:
                del self.accounts[next(iter(self.accounts))]
            account = self.accounts[identity] = AccountProfile()
        was_judged = account.judged
        for record in records:
            if account.read_ts is not None and record.ts - account.read_ts < config.read_every:
                continue
            account.read_ts = record.ts
            self.observe(identity, account, record.ts, self._read(record.body))
        if account.judged:
            return config.prior
        return 0.0 if was_judged else None

    def observe(
        self, identity: str, account: AccountProfile, ts: float, facts: RequestFacts
    ) -> None:
        """Decay the account's score to ``ts``, add one request's evidence, and judge or
        release the account. A request that is not a prompt (or says nothing) only decays."""
        config = self.config
        if account.ts is not None and ts > account.ts:
            account.score *= math.exp2(-(ts - account.ts) / config.half_life)
        account.ts = ts if account.ts is None else max(ts, account.ts)
        if facts.prompt:
            self._add(account, facts)
        if not account.judged and account.score >= config.threshold:
            account.judged = True
            self.judged_total += 1
            self._judged[identity] = ts
        elif account.judged and account.score < config.release:
            account.judged = False
            self._judged.pop(identity, None)

    def _add(self, account: AccountProfile, facts: RequestFacts) -> None:
        llr, shown = request_llr(facts, account)
        account.score = max(0.0, account.score + llr)
        account.peak = max(account.peak, account.score)
        counts = account.counts
        counts[0] += 1
        for i, seen in enumerate(shown, 1):
            counts[i] += seen
        keep = -self.config.window
        if facts.language:
            others = tuple(x for x in account.languages if x != facts.language)
            account.languages = (*others, facts.language)[keep:]
        if facts.subjects:
            account.subjects = (*account.subjects, _packed(facts.subjects))[keep:]
        if facts.template:
            account.templates = (*account.templates, facts.template)[keep:]
        if facts.phrase:
            account.phrases = (*account.phrases, facts.phrase)[keep:]

    def forgive(self, identity: str) -> bool:
        """Forget what the account's requests built up (call it with `Guard.forgive`, which
        clears the prior and hold the guard keeps, not this score). False when unknown."""
        self._judged.pop(identity, None)
        return self.accounts.pop(identity, None) is not None

    def take_judged(self) -> dict[str, float]:
        """The accounts judged since the last call (identity -> time), to hold."""
        judged, self._judged = self._judged, {}
        return judged

    def explain(self, identity: str) -> dict[str, float] | None:
        """The account's score and feature shares, or None when it is not profiled."""
        account = self.accounts.get(identity)
        return account.evidence() if account is not None else None

    def judged(self) -> Iterator[tuple[str, AccountProfile]]:
        """The accounts that stand judged now."""
        return ((i, a) for i, a in self.accounts.items() if a.judged)

    def _read(self, body: bytes | str | None) -> RequestFacts:
        if self._fingerprinter is None:
            from abuseguard.intel.content import ContentFingerprinter

            self._fingerprinter = ContentFingerprinter()
        return read_request(body, self._fingerprinter)
