"""What one request says about the software, network and habits behind its account.

`EvidenceReader.read` turns one queued request into an `Evidence`: one item (a stable
64-bit number) per kind of evidence, or 0 when the request does not carry that kind.

============ =======================================================================
kind         item
============ =======================================================================
persona      the header persona for linking: `abuseguard.intel.persona.persona_hash`
             (header names in order, SDK fingerprint values, User-Agent class and
             family) of the headers with every dotted version in a fingerprint value
             cut to major.minor (``3.11.7`` -> ``3.11``, ``v20.18.1`` -> ``v20.18``;
             `linking_headers`): an operation's hosts drift in the runtime's and SDK's
             patch release, which says nothing about who runs them (the hot path's
             persona keeps them)
network      the ASN (given with the request or looked up), else the /24 (IPv4) or /48
             (IPv6) prefix
system       the system prompt (system / developer messages, Anthropic ``system``,
             responses ``instructions``, Gemini ``systemInstruction``), digits
             normalised; 0 when there is none
shape        the request's shape: model, the output-token cap, the set of top-level
             parameter names and ``stream``
timing       the activity slot: ``ts // slot_seconds``
created      the account's creation day from the host app (``created_of``), when
             given: ``created // 86400`` (UTC days, midnight to midnight)
created_noon the same creation day on the grid offset by half a day: ``(created +
             43200) // 86400`` (noon to noon UTC). A burst of sign-ups shorter than
             half a day, at any hour, lies whole in one day of one of the two grids;
             the linker tests each grid on its own (`abuseguard.operations.linker`,
             step 3b) and never puts both in one band (`BAND_KINDS`)
============ =======================================================================

Besides the items: whether the request is single-turn (one user message, no earlier
answers), a topic (the first words of the last user message), the tokens it cost, how
plainly it demands the model's own internal reasoning written out
(`abuseguard.intel.content.coercion_strength` of the system text and the last user
message) and, for a single-turn request only (the linker's behaviour links judge
accounts that ask one question at a time: `abuseguard.operations.linker`, step 3d), how
plainly it asks for reasoning at all (``reasoning``:
`abuseguard.intel.content.elicitation_strength` of the same text) and the words of its
question (``words``: hashes of the distinct words of at least four letters of the last
user message's first ``WORD_CHARS`` characters, at most ``MAX_WORDS``, without the words
of the elicitation and coercion phrases, which say how it asks, not what about).
Reading never raises: a body that is not an LLM request in JSON has no system, shape
or topic.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from abuseguard.intel.agents import AgentClassifier
from abuseguard.intel.content import (
    COERCION_MARKERS,
    ELICITATION_MARKERS,
    coercion_strength,
    elicitation_strength,
)
from abuseguard.intel.persona import FINGERPRINT_VALUE_HEADERS, persona_hash
from abuseguard.operations.sketches import stable_hash

KINDS: tuple[str, ...] = (
    "persona", "network", "system", "shape", "timing", "created", "created_noon"
)  # fmt: skip
PERSONA, NETWORK, SYSTEM, SHAPE, TIMING, CREATED, CREATED_NOON = range(len(KINDS))
N_KINDS = len(KINDS)
# The kinds an LSH band may combine (`abuseguard.operations.linker`): all but the second
# creation grid, which only pairs (two grids of one fact in one band would count it twice).
BAND_KINDS: tuple[int, ...] = (PERSONA, NETWORK, SYSTEM, SHAPE, TIMING, CREATED)
DAY = 86400.0

# The parameters that carry the conversation, not its shape.
_CONTENT_KEYS = frozenset(
    {"messages", "input", "contents", "prompt", "system", "instructions", "systemInstruction"}
)
_TOKEN_CAPS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_DIGITS = re.compile(r"\d+")
# A dotted version with a patch part (and any pre-release or build suffix after it).
_PATCH_VERSION = re.compile(r"(\d+\.\d+)\.\d[0-9A-Za-z.+-]*")
TOPIC_WORDS = 6
_MAX_AGENTS = 4096
_COERCION_CHARS = 4096  # of the last user message and of the system text each
WORD_CHARS = 240
MAX_WORDS = 16
_WORD = re.compile(r"[^\W\d_]{4,}")
# How a prompt asks for reasoning ("show", "step", "reasoning"), not what it asks about.
_ASKING_WORDS = frozenset(
    word
    for phrase, _ in (*ELICITATION_MARKERS, *COERCION_MARKERS)
    for word in _WORD.findall(phrase.lower())
)


def item(kind: int, value: int) -> int:
    """The item of ``value`` in ``kind``: a hash of integers, the same in every process."""
    return hash((kind, value)) or 1


class Evidence(NamedTuple):
    """One request's evidence: ``items[kind]`` (0 = absent), and its behaviour (a named
    tuple: the lane makes one per request it reads, and a frozen dataclass costs several
    times more to build)."""

    items: tuple[int, ...]
    single_turn: bool
    topic: int
    tokens: float
    coercion: float = 0.0
    reasoning: float = 0.0
    words: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Observed:
    """The raw facts of one request the reader needs (what the lane queued)."""

    ts: float
    ip: str = ""
    ua: str | None = None
    headers: Mapping[str, str] | None = None
    body: bytes | str | None = None
    asn: int | None = None
    tokens: float = 0.0
    created: float | None = None


class EvidenceReader:
    """Reads `Evidence` from `Observed` requests; its caches are bounded.

    ``asn_of(ip)`` looks an ASN up when the request did not carry one (None: use the
    prefix). ``slot_seconds`` is the width of a timing slot.
    """

    def __init__(
        self,
        *,
        asn_of: Callable[[str], int | None] | None = None,
        slot_seconds: float = 1800.0,
        agents: AgentClassifier | None = None,
    ) -> None:
        self.asn_of = asn_of
        self.slot_seconds = slot_seconds
        self.agents = agents if agents is not None else AgentClassifier()
        self._personas: dict[tuple[object, ...], int] = {}
        self._prefixes: dict[str, int] = {}

    def read(self, seen: Observed) -> Evidence:
        return self.read_fields(
            seen.ts, seen.ip, seen.ua, seen.headers, seen.body, seen.asn, seen.tokens, seen.created
        )

    def read_fields(
        self,
        ts: float,
        ip: str,
        ua: str | None,
        headers: Mapping[str, str] | None,
        body: bytes | str | None,
        asn: int | None,
        tokens: float,
        created: float | None,
    ) -> Evidence:
        """`read` of the fields of an `Observed`, without building one (the lane's path)."""
        persona = self._persona(ua, headers or {})
        network = self._network(ip, asn)
        system = shape = topic = 0
        single = False
        coercion = reasoning = 0.0
        words: tuple[int, ...] = ()
        try:
            request = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            request = None
        if isinstance(request, dict):
            system, shape, topic, single, coercion, reasoning, words = _read_request(request)
        timing = item(TIMING, int(ts // self.slot_seconds))
        if created is not None:
            created_item = item(CREATED, int(created // DAY))
            noon_item = item(CREATED_NOON, int((created + DAY / 2) // DAY))
        else:
            created_item = noon_item = 0
        return Evidence(
            (persona, network, system, shape, timing, created_item, noon_item),
            single,
            topic,
            tokens,
            coercion,
            reasoning,
            words,
        )

    def _persona(self, ua: str | None, headers: Mapping[str, str]) -> int:
        names = tuple(headers)
        key = (ua, names, *headers.values())
        found = self._personas.get(key)
        if found is None:
            if len(self._personas) >= _MAX_AGENTS:
                self._personas.clear()
            found = self._personas[key] = item(
                PERSONA, persona_hash(names, linking_headers(headers), self.agents.classify(ua))
            )
        return found

    def _network(self, ip: str, asn: int | None) -> int:
        if asn is None and self.asn_of is not None:
            try:
                asn = self.asn_of(ip)
            except Exception:
                asn = None
        if asn:
            return item(NETWORK, asn)
        if not ip:
            return 0
        prefix = ":".join(ip.split(":")[:3]) if ":" in ip else ip.rpartition(".")[0]
        found = self._prefixes.get(prefix)
        if found is None:
            if len(self._prefixes) >= _MAX_AGENTS:
                self._prefixes.clear()
            found = self._prefixes[prefix] = item(NETWORK, stable_hash("prefix:" + prefix))
        return found


def linking_headers(headers: Mapping[str, str]) -> Mapping[str, str]:
    """``headers`` with every dotted version in an SDK fingerprint value cut to its major
    and minor parts (``3.11.7`` -> ``3.11``, ``gl-python/3.11.4 grpc/1.60.0`` ->
    ``gl-python/3.11 grpc/1.60``), for the linking persona: the patch release of a runtime
    or an SDK rotates with an operation's hosts and images, the rest of the persona is its
    software. Names, their order and every other value are kept."""
    cut: dict[str, str] | None = None
    for name in FINGERPRINT_VALUE_HEADERS.intersection(headers):
        value = headers[name]
        short = _PATCH_VERSION.sub(r"\1", value)
        if short != value:
            if cut is None:
                cut = dict(headers)
            cut[name] = short
    return headers if cut is None else cut


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict):
                text = block.get("text")
                if isinstance(text, str):
                    parts.append(text)
                elif isinstance(block.get("parts"), list):
                    parts.append(_text(block["parts"]))
        return "\n".join(parts)
    if isinstance(content, dict):
        return _text([content])
    return ""


_MAX_CACHED = 4096
_system_items: dict[str, int] = {}
_shape_items: dict[tuple[object, ...], int] = {}


def _system_item(text: str) -> int:
    found = _system_items.get(text)
    if found is None:
        found = item(SYSTEM, stable_hash(_DIGITS.sub("0", text)))
        if len(text) <= 2048:
            if len(_system_items) >= _MAX_CACHED:
                _system_items.clear()
            _system_items[text] = found
    return found


def _shape_item(key: tuple[object, ...]) -> int:
    found = _shape_items.get(key)
    if found is None:
        found = item(SHAPE, stable_hash("\x00".join(map(str, key))))
        if len(_shape_items) >= _MAX_CACHED:
            _shape_items.clear()
        _shape_items[key] = found
    return found


class Conversation(NamedTuple):
    """What an LLM API request says of its conversation: the system text (system and
    developer messages, Anthropic ``system``, responses ``instructions``, Gemini
    ``systemInstruction``, joined), how many user turns and earlier answers it carries, and
    the last user message."""

    system_text: str
    users: int
    answers: int
    last_user: str


def read_conversation(request: Mapping[str, Any]) -> Conversation:
    """The `Conversation` of a parsed request body (chat completions, messages, responses,
    Gemini, legacy completions)."""
    system_parts: list[str] = []
    for name in ("system", "instructions", "systemInstruction"):
        if name in request:
            system_parts.append(_text(request[name]))
    turns = request.get("messages")
    if turns is None:
        turns = request.get("contents")
    if turns is None:
        turns = request.get("input")
    if turns is None and "prompt" in request:
        prompt = request["prompt"]
        turns = prompt if isinstance(prompt, list) else [prompt]
    if isinstance(turns, str):
        turns = [turns]
    users = 0
    answers = 0
    last_user = ""
    if isinstance(turns, list):
        for turn in turns:
            if isinstance(turn, str):
                users += 1
                last_user = turn
                continue
            if not isinstance(turn, dict):
                continue
            role = turn.get("role", "user")
            content = turn.get("content", turn.get("parts"))
            if role in ("system", "developer"):
                system_parts.append(_text(content))
            elif role in ("assistant", "model"):
                answers += 1
            else:
                users += 1
                last_user = _text(content)
    return Conversation("\n".join(part for part in system_parts if part), users, answers, last_user)


def _read_request(
    request: dict[str, Any],
) -> tuple[int, int, int, bool, float, float, tuple[int, ...]]:
    """(system, shape, topic, single_turn, coercion, reasoning, words) of a parsed LLM API
    request body."""
    system_text, users, answers, last_user = read_conversation(request)
    system = _system_item(system_text) if system_text else 0
    cap = next((request[k] for k in _TOKEN_CAPS if k in request), None)
    names = sorted(str(k) for k in request if k not in _CONTENT_KEYS)
    shape = _shape_item((str(request.get("model")), str(cap), str(request.get("stream")), *names))
    words = last_user[:200].lower().split()[:TOPIC_WORDS]
    topic = stable_hash(" ".join(words)) if words else 0
    asked = last_user[:_COERCION_CHARS]
    if system_text:
        asked = system_text[:_COERCION_CHARS] + "\n" + asked
    single = users == 1 and answers == 0
    coercion = reasoning = 0.0
    question: tuple[int, ...] = ()
    if asked:
        coercion = coercion_strength(asked)
        if single:  # a conversation's later turns say nothing of harvesting
            reasoning = elicitation_strength(asked)
    if single:
        question = question_words(last_user)
    return system, shape, topic, single, coercion, reasoning, question


def question_words(text: str) -> tuple[int, ...]:
    """The ``words`` of a question (see the module): what it is about."""
    found: dict[int, None] = {}
    for word in _WORD.findall(text[:WORD_CHARS].lower()):
        if word not in _ASKING_WORDS:
            found[zlib.crc32(word.encode("utf-8", "surrogatepass")) or 1] = None
            if len(found) >= MAX_WORDS:
                break
    return tuple(found)
