"""The built-in degrade: serve a risky client less instead of refusing it.

For OpenAI-style JSON APIs (chat completions, responses, legacy completions) the degrade
enforcer (:class:`abuseguard.Degrade`) applies :class:`DegradeOptions`:

* the **request** is rewritten before the app reads it: output tokens capped
  (``max_tokens``, ``max_completion_tokens``, ``max_output_tokens``; the endpoint's own
  field is added when the client sent none), ``logprobs``, ``top_logprobs`` and
  ``logit_bias`` dropped, ``n`` forced to 1, ``reasoning_effort`` (or the Responses API's
  ``reasoning.effort``) lowered; ``Content-Length`` is set to the new length;
* the **response** has its reasoning withheld (``reasoning_content``, ``reasoning``,
  ``reasoning_details``, ``thinking`` fields, reasoning output items and thinking content
  blocks), from JSON bodies and from Server-Sent Event streams event by event; items after
  a withheld one are renumbered so that SDKs that index by ``output_index`` or ``index``
  keep working;
* an optional :data:`DegradeStep` of the app's runs last on the parsed request body.

A body that is not a JSON object, is compressed, or is over ``max_body_bytes`` is passed
through untouched with a log line. A stream event that cannot be parsed while it mentions
reasoning, or is cut off when the stream ends, is withheld rather than sent half-filtered.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from abuseguard.cohorts import cohort_of
from abuseguard.config_check import check_fields
from abuseguard.decision import Decision
from abuseguard.errors import ConfigError
from abuseguard.metrics import record_degrade

logger = logging.getLogger("abuseguard.degrade")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Lowest first; an effort is lowered to the option's value, never raised.
REASONING_EFFORTS: tuple[str, ...] = ("none", "minimal", "low", "medium", "high", "xhigh")
_EFFORT_RANK = {name: rank for rank, name in enumerate(REASONING_EFFORTS)}

CHAT = "chat"
RESPONSES = "responses"
COMPLETIONS = "completions"
# The output-token field each endpoint gets when the client sent none.
_TOKEN_FIELD = {
    CHAT: "max_completion_tokens",
    RESPONSES: "max_output_tokens",
    COMPLETIONS: "max_tokens",
}
_TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_RESPONSES_LOGPROBS_INCLUDE = "message.output_text.logprobs"
# reasoning_details: OpenRouter's structured copy of the reasoning, beside "reasoning".
_REASONING_KEYS = frozenset({"reasoning_content", "reasoning", "reasoning_details", "thinking"})
# Likeliest first.
_REASONING_KEY_ORDER = ("reasoning_content", "reasoning", "thinking", "reasoning_details")
# A reasoning key and the quote that opens its text, compact or with a blank.
_QUOTED_KEY_TEXTS = tuple(
    b'"%b":%b"' % (key.encode(), blank) for key in _REASONING_KEYS for blank in (b"", b" ")
)
_REASONING_TYPES = frozenset({"reasoning", "thinking", "redacted_thinking"})
_THINKING_DELTAS = frozenset({"thinking_delta", "signature_delta"})
_DEFAULT_MAX_BODY = 1 << 20
_DEFAULT_MAX_RESPONSE = 8 << 20


def endpoint_of(path: str) -> str | None:
    """Which OpenAI-style endpoint ``path`` is (by its last segments), or None."""
    if path.endswith("/chat/completions"):
        return CHAT
    if path.endswith("/responses"):
        return RESPONSES
    if path.endswith("/completions"):
        return COMPLETIONS
    return None


@dataclass(frozen=True, slots=True)
class DegradeContext:
    """What a :data:`DegradeStep` has in hand besides the body.

    ``cohort`` is the id of the operation (cluster of accounts) the background lane last
    linked the client's account into (`abuseguard.cohorts`), or None.
    """

    decision: Decision
    path: str
    endpoint: str
    shadow: bool
    cohort: str | None = None

    @property
    def identity(self) -> str:
        return self.decision.identity


# An app's own degrade step: change the parsed JSON request body in place (route to a
# cheaper model, mark the system prompt for later attribution). Runs after the built-in
# rewrite; if it raises, the built-in rewrite alone is applied and the error is logged.
DegradeStep = Callable[[dict[str, Any], DegradeContext], None]


@dataclass(frozen=True)
class DegradeOptions:
    """What the built-in ``degrade`` action does (``Enforcement.degrade``).

    ``max_output_tokens``: cap on ``max_tokens`` / ``max_completion_tokens`` /
    ``max_output_tokens`` (None leaves them). ``drop_logprobs`` drops ``logprobs`` and
    ``top_logprobs``; ``drop_logit_bias`` drops ``logit_bias``; ``single_choice`` forces
    ``n`` to 1. ``reasoning_effort`` lowers a requested effort to this level (one of
    none, minimal, low, medium, high, xhigh; None leaves it; an absent effort stays
    absent). ``withhold_reasoning`` withholds reasoning from responses and streams.
    ``step`` is the app's own :data:`DegradeStep`. ``by_score``: (score, options) pairs with
    rising scores; the last one the decision's risk score reaches replaces these options
    (degrade harder as the risk grows). ``routes``: request path to the options
    of that route (None: that route is served undegraded), checked before ``by_score``.
    ``max_body_bytes``: larger request bodies pass untouched;
    ``max_response_bytes``: larger JSON responses pass unfiltered (both logged).
    """

    max_output_tokens: int | None = 1024
    drop_logprobs: bool = True
    drop_logit_bias: bool = True
    single_choice: bool = True
    reasoning_effort: str | None = None
    withhold_reasoning: bool = True
    step: DegradeStep | None = None
    by_score: tuple[tuple[float, DegradeOptions], ...] = ()
    routes: Mapping[str, DegradeOptions | None] = field(default_factory=dict)
    max_body_bytes: int = _DEFAULT_MAX_BODY
    max_response_bytes: int = _DEFAULT_MAX_RESPONSE

    def __post_init__(self) -> None:
        check_fields(self)
        if self.max_output_tokens is not None and self.max_output_tokens < 1:
            raise ConfigError("DegradeOptions.max_output_tokens", "must be >= 1 or None")
        if self.reasoning_effort is not None and self.reasoning_effort not in _EFFORT_RANK:
            raise ConfigError(
                "DegradeOptions.reasoning_effort",
                f"{self.reasoning_effort!r} is not one of {', '.join(REASONING_EFFORTS)}",
            )
        last = -1.0
        for i, (score, _options) in enumerate(self.by_score):
            if not 0.0 <= score <= 1.0 or score <= last:
                raise ConfigError(
                    f"DegradeOptions.by_score[{i}]", "scores must be within 0..1 and rise"
                )
            last = score
        object.__setattr__(self, "routes", dict(self.routes))

    def for_request(self, path: str, score: float) -> DegradeOptions | None:
        """The options that apply to a request on ``path`` whose decision scored ``score``;
        None when that route is served undegraded."""
        options = self
        if self.routes and path in self.routes:
            routed = self.routes[path]
            if routed is None:
                return None
            options = routed
        chosen = options
        for threshold, stricter in options.by_score:
            if score >= threshold:
                chosen = stricter
        return chosen

    @property
    def rewrites(self) -> bool:
        return (
            self.max_output_tokens is not None
            or self.drop_logprobs
            or self.drop_logit_bias
            or self.single_choice
            or self.reasoning_effort is not None
            or self.step is not None
        )


# -- request rewriting -----------------------------------------------------------------

# orjson parses and encodes; the standard library takes over where orjson would refuse
# or change what it reads: NaN and Infinity (orjson writes them as null), lone surrogates,
# numbers beyond a double's range, deep nesting, and integers beyond 64 bits, which orjson
# reads as floats (rounded). Such a float is written back with an exponent of at least
# 18 ("e+18"), so output without "e+" proves none was rounded; where it holds "e+", the
# value is read again by the standard library (a request body is checked before it is
# read, so that the app's step runs once).
_DIGITS = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))
_LONG_NUMBER = b"0" * 19  # 19 digits in a row: maybe beyond orjson's 64-bit integers
_std_decode = json.JSONDecoder().decode
_std_encoder = json.JSONEncoder(separators=(",", ":"), check_circular=False)


def _std_parse(raw: bytes) -> Any:
    try:
        return _std_decode(raw.decode())
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _parse(raw: bytes) -> tuple[Any, bool]:
    """``raw`` (UTF-8 JSON) parsed, and whether orjson read it (then orjson writes it
    back). Raises ValueError (UnicodeDecodeError included) when ``raw`` is not JSON."""
    try:
        return orjson.loads(raw), True
    except orjson.JSONDecodeError:
        return _std_parse(raw), False


def _dumps(value: Any, by_orjson: bool) -> bytes:
    """Compact JSON bytes (no blanks between tokens): by orjson when it read the value,
    else (or when orjson cannot write it) by the standard library, non-ASCII escaped."""
    if by_orjson:
        try:
            return orjson.dumps(value)
        except TypeError:  # orjson.JSONEncodeError: too deep, a big integer, a foreign type
            pass
    return _std_encoder.encode(value).encode()


def _maybe_rounded(encoded: bytes) -> bool:
    """True when orjson's output may hold an integer it read beyond 64 bits (see above)."""
    return encoded.find(b"e+") >= 0


def rewrite_body(body: dict[str, Any], options: DegradeOptions, endpoint: str) -> bool:
    """Apply the built-in rewrite to a parsed request body in place; True when changed."""
    changed = False
    cap = options.max_output_tokens
    if cap is not None:
        present = False
        for name in _TOKEN_FIELDS:
            value = body.get(name)
            if name in body and value is not None:
                present = True
                if not isinstance(value, int) or isinstance(value, bool) or value > cap:
                    body[name] = cap
                    changed = True
        if not present:
            body[_TOKEN_FIELD[endpoint]] = cap
            changed = True
    if options.drop_logprobs:
        for name in ("logprobs", "top_logprobs"):
            if name in body:
                del body[name]
                changed = True
        include = body.get("include")
        if isinstance(include, list) and _RESPONSES_LOGPROBS_INCLUDE in include:
            body["include"] = [item for item in include if item != _RESPONSES_LOGPROBS_INCLUDE]
            changed = True
    if options.drop_logit_bias and "logit_bias" in body:
        del body["logit_bias"]
        changed = True
    if options.single_choice and "n" in body and body["n"] != 1:
        body["n"] = 1
        changed = True
    target = options.reasoning_effort
    if target is not None:
        rank = _EFFORT_RANK[target]
        effort = body.get("reasoning_effort")
        if isinstance(effort, str) and _EFFORT_RANK.get(effort, len(REASONING_EFFORTS)) > rank:
            body["reasoning_effort"] = target
            changed = True
        reasoning = body.get("reasoning")
        if isinstance(reasoning, dict):
            effort = reasoning.get("effort")
            if isinstance(effort, str) and _EFFORT_RANK.get(effort, len(REASONING_EFFORTS)) > rank:
                body["reasoning"] = {**reasoning, "effort": target}
                changed = True
    return changed


def rewrite_request(
    raw: bytes, options: DegradeOptions, endpoint: str, context: DegradeContext
) -> bytes | None:
    """The degraded request body, or None when ``raw`` is left as it is (nothing to
    change, or not a JSON object: logged)."""
    try:
        if _LONG_NUMBER in raw.translate(_DIGITS):
            body, by_orjson = _std_parse(raw), False
        else:
            body, by_orjson = _parse(raw)
    except ValueError:
        logger.info("abuseguard degrade: %s body is not JSON; passed through", context.path)
        return None
    if not isinstance(body, dict):
        logger.info(
            "abuseguard degrade: %s body is not a JSON object; passed through", context.path
        )
        return None
    changed = rewrite_body(body, options, endpoint)
    step = options.step
    if step is not None:
        try:
            step(body, context)
            return _dumps(body, by_orjson)  # a value it cannot encode fails the step
        except Exception:
            logger.exception("abuseguard degrade: the degrade step failed; built-in rewrite only")
            body = _std_parse(raw) if not by_orjson else orjson.loads(raw)
            changed = rewrite_body(body, options, endpoint)
    if not changed:
        return None
    return _dumps(body, by_orjson)


# -- response filtering ----------------------------------------------------------------


def _is_reasoning_item(item: Any) -> bool:
    if type(item) is not dict:
        return False
    kind = item.get("type")
    return type(kind) is str and kind in _REASONING_TYPES


def strip_reasoning(value: Any) -> bool:
    """Remove reasoning keys and reasoning items from a parsed JSON value in place; True
    when anything was removed."""
    removed = False
    kind = type(value)
    if kind is dict:
        if not _REASONING_KEYS.isdisjoint(value):
            for key in _REASONING_KEYS.intersection(value):
                del value[key]
            removed = True
        for child in value.values():
            child_kind = type(child)
            if (child_kind is dict or child_kind is list) and strip_reasoning(child):
                removed = True
        return removed
    if kind is not list:
        return False
    drop = False
    for item in value:
        if _is_reasoning_item(item):
            drop = True
            continue
        child_kind = type(item)
        if (child_kind is dict or child_kind is list) and strip_reasoning(item):
            removed = True
    if drop:
        value[:] = [item for item in value if not _is_reasoning_item(item)]
        removed = True
    return removed


def _mentions_reasoning(data: bytes) -> bool:
    return b"reasoning" in data or b"thinking" in data


def filter_json_body(raw: bytes) -> bytes | None:
    """The JSON response without its reasoning, or None when ``raw`` stays as it is."""
    if not _mentions_reasoning(raw):
        return None
    try:
        body, by_orjson = _parse(raw)
    except ValueError:
        return None
    if not strip_reasoning(body):
        return None
    filtered = _dumps(body, by_orjson)
    if by_orjson and _maybe_rounded(filtered):
        body = _std_parse(raw)
        strip_reasoning(body)
        filtered = _dumps(body, False)
    return filtered


_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_LINE_END = re.compile(rb"\r\n|\n|\r")
_BLANKS = b" \t"
_NOT_AN_INTEGER_AFTER = frozenset(b".eE")
_ABSENT = -1  # _top_level_value: the key is not there
_UNSURE = -2  # _top_level_value: the bytes alone cannot tell; parse the event
# How many first bytes of two parsed events must be alike for the second to be learned from.
_LEARN_HEAD = 64
# What a template match returns when the event is not made of the template's bytes.
_UNMATCHED = b"\0unmatched"
# A string token, or a byte of JSON structure, in data known to hold no backslash.
_JSON_TOKEN = re.compile(rb'"[^"]*"|[{}\[\]:,]')
# Keys whose string value decides what the filter does with an event: never a template hole.
_DECISIVE_KEYS = frozenset({b"type", b"finish_reason", b"usage", b"logprobs", b"role"})
_REASONING_KEY_BYTES = frozenset(key.encode() for key in _REASONING_KEYS)
# What a kept event's varying text may not hold: then it is a valid JSON string as written
# (when valid UTF-8), so the event parses as the one learned from, with other texts.
_UNSAFE_KEPT_TEXT = re.compile(rb'["\\\x00-\x1f]')


def _template_holes(event: bytes) -> tuple[list[tuple[int, int]], int, int, int] | None:
    """Where a template of ``event`` (one event ending with its only \\n\\n, its data on its
    last line, no \\r and no backslash in it) lets the bytes vary: the spans of the string
    values that do not decide what the filter does (the reasoning text, the other string
    members of its object, the top-level string members after it: a per-chunk padding
    field), in order; which span is the reasoning text; and the span of that member with one
    comma beside it (what a kept event loses). None unless the event has exactly one
    reasoning key, and its value is a string.

    With no backslash, every quote opens or closes a string, so the tokens are exact."""
    size = len(event) - 2
    line = event.rfind(b"\n", 0, size) + 1
    if not event.startswith(b"data:", line) or event.find(b'"', 0, line) >= 0:
        return None
    if line and (event.startswith(b"data:") or event.find(b"\ndata:", 0, line) >= 0):
        return None  # two data lines
    containers: list[int] = []
    opened = 0
    values: list[tuple[int, int, bytes, int, int]] = []  # text start, end, key, object, depth
    reasoning = -1
    reasoning_keys = 0
    key = b""
    key_start = -1
    member_key_start = -1
    previous = 0
    for token in _JSON_TOKEN.finditer(event, line + 5, size):
        start = token.start()
        first = event[start]
        if first == 0x22:
            if previous == 0x3A and containers:
                if key in _REASONING_KEY_BYTES:
                    reasoning = len(values)
                    member_key_start = key_start
                values.append((start + 1, token.end() - 1, key, containers[-1], len(containers)))
            else:
                key = event[start + 1 : token.end() - 1]
                key_start = start
        elif first == 0x3A:
            if key in _REASONING_KEY_BYTES:
                reasoning_keys += 1
        elif first == 0x7B or first == 0x5B:
            opened += 1
            containers.append(opened)
        elif first == 0x7D or first == 0x5D:
            if not containers:
                return None
            containers.pop()
        previous = first
    if reasoning < 0 or reasoning_keys != 1:
        return None
    text_start, text_end, _, reasoning_object, _ = values[reasoning]
    holes: list[tuple[int, int]] = []
    hole = -1
    for index, (start, end, value_key, container, depth) in enumerate(values):
        if index == reasoning:
            hole = len(holes)
        elif (
            value_key in _DECISIVE_KEYS
            or value_key in _REASONING_KEY_BYTES
            or (container != reasoning_object and not (depth == 1 and start > text_end))
        ):
            continue
        holes.append((start, end))
    member_start, member_end = member_key_start, text_end + 1
    before = event[:member_start].rstrip(_BLANKS)
    if before.endswith(b","):
        member_start = len(before) - 1
    else:
        after = len(event) - len(event[member_end:].lstrip(_BLANKS))
        if event.startswith(b",", after):
            member_end = after + 1
    return holes, hole, text_start - member_start, member_end - text_end


def _shift(dropped: list[int], index: int) -> int:
    below = 0
    for withheld_index in dropped:
        if withheld_index < index:
            below += 1
    return index - below


def _top_level_value(event: bytes, key: bytes) -> int:
    """Where the value of the top-level JSON key ``key`` (written with its quotes and its
    colon) starts in ``event``, _ABSENT, or _UNSURE when the bytes alone cannot tell: its
    first occurrence may be nested or inside a string, or it is written with a blank before
    its colon. It is at the top level when the only ``{`` before it opens the event's
    object and no ``[`` but empty arrays precede it (a bracket inside a string makes it
    _UNSURE, never wrong)."""
    at = event.find(key)
    if at < 0:
        return _UNSURE if event.find(key[:-1]) >= 0 else _ABSENT
    if event[at - 1] == 0x5C or event.count(b"{", 0, at) != 1:
        return _UNSURE
    if event.find(b"[", 0, at) >= 0 and event.count(b"[", 0, at) != event.count(b"[]", 0, at):
        return _UNSURE
    at += len(key)
    size = len(event)
    while at < size and event[at] in _BLANKS:
        at += 1
    return at


def _digits_at(event: bytes, start: int) -> int:
    """The end of the non-negative integer that starts at ``start``, or ``start`` when
    none does (a string, null, a negative or fractional number)."""
    end = start
    size = len(event)
    while end < size and 0x30 <= event[end] <= 0x39:
        end += 1
    if end < size and event[end] in _NOT_AN_INTEGER_AFTER:
        return start
    return end


class StreamFilter:
    """Withholds reasoning from a Server-Sent Event stream, one complete event at a time.

    ``feed`` takes the next chunk of the app's body and returns the bytes to send now:
    complete events only, a partial event waits for its end. ``close`` returns what is
    left to send at the end of the stream (a cut-off event is withheld). Events that do not
    mention reasoning pass as they are, unparsed (unless an earlier output item was
    withheld: then their indexes are renumbered in place, or after a parse where the bytes
    alone cannot tell); so do events that mention it but carry none (a reasoning token
    count). ``withheld`` counts the bytes kept from the client.

    An event that mentions reasoning is parsed, which also proves it whole. One exception:
    once an event with one reasoning text was parsed, its bytes become a template whose
    holes are the texts that do not decide what becomes of it (_template_holes: the
    reasoning text, its sibling texts, a per-chunk padding field). The next events made
    of the same bytes around other texts (the usual run of reasoning deltas) go without a
    parse: withheld, when it was (the parse would withhold them too, whole or not, as
    long as no text can end its JSON string early: no quote, line end or final
    backslash), or, when it was kept, with its reasoning member cut from the bytes, as
    long as every text is a JSON string as written (_kept_text).
    """

    __slots__ = (
        "buffer",
        "drop_cut",
        "drop_middles",
        "drop_prefix",
        "drop_suffix",
        "drop_whole",
        "dropped_blocks",
        "dropped_outputs",
        "learn_backoff",
        "learn_head",
        "learn_wait",
        "moved_blocks",
        "moved_outputs",
        "moved_pairs",
        "withheld",
    )

    def __init__(self) -> None:
        self.buffer = b""
        self.withheld = 0
        # Indexes of withheld Responses output items and of withheld thinking blocks.
        self.dropped_outputs: list[int] = []
        self.dropped_blocks: list[int] = []
        # An index's digits -> its renumbered digits, or None: it belongs to a withheld item.
        self.moved_outputs: dict[bytes, bytes | None] = {}
        self.moved_pairs: dict[bytes, bytes | None] = {}  # see _renumber
        self.moved_blocks: dict[bytes, bytes | None] = {}
        # The last event learned from (see _learn_drop_template): its bytes before its
        # first hole, between its holes (each starting with the quote that ends the hole
        # before), after its last hole; for a kept event, which hole is its reasoning text
        # and how many bytes before and after that text its member spans (else -1).
        self.drop_prefix = b""
        self.drop_middles: tuple[bytes, ...] = ()
        self.drop_suffix = b""
        self.drop_cut: tuple[int, int, int] = (-1, 0, 0)
        self.drop_whole = False  # one hole, withheld: the usual run of reasoning deltas
        # Parsed withholdings to let pass before cutting the next one: a stream whose
        # envelope changes with every chunk never uses what is learned, so it learns ever
        # less often (at most every 256th); a match starts over. After the first, an event
        # is learned from only when it begins as the one tried before it: a stream whose
        # events begin with other bytes each (an id of their own) learns no more.
        self.learn_wait = 0
        self.learn_backoff = 0
        self.learn_head = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self.buffer + chunk if self.buffer else chunk
        if 13 in data:  # \r: events may end with \r\n\r\n or \r\r
            return self._feed_events(data, False)
        prefix = self.drop_prefix
        if prefix and data.startswith(prefix) and data.endswith(self.drop_suffix):
            if self.drop_whole:  # _by_template, inline for its usual case
                text = data[len(prefix) : len(data) - len(self.drop_suffix)]
                if (
                    len(prefix) + len(self.drop_suffix) <= len(data)
                    and 0x22 not in text
                    and 0x0A not in text
                    and text[-1:] != b"\\"
                ):
                    self.buffer = b""
                    self.withheld += len(data)
                    self.learn_backoff = 0
                    return b""
            else:
                kept = self._by_template(data)
                if kept is not _UNMATCHED:
                    self.buffer = b""
                    return b"" if kept is None else kept
        mentions = data.find(b"reasoning") >= 0 or data.find(b"thinking") >= 0
        if not (mentions or self.dropped_outputs or self.dropped_blocks):
            # The usual chunk: no event in it mentions reasoning and none needs
            # renumbering, so its complete events pass as they are, neither split nor copied.
            end = data.rfind(b"\n\n")
            if end < 0:
                self.buffer = data
                return b""
            end += 2
            if end == len(data):
                self.buffer = b""
                return data
            self.buffer = data[end:]
            return data[:end]
        # One whole event of one or two lines, as most chunks are: one search for \n\n
        # costs more than two for \n.
        last = len(data) - 2
        first = data.find(10)
        if data[-1:] == b"\n" and (
            first == last
            or (0 <= first < last and data[first + 1] != 10 and data.find(10, first + 1) == last)
        ):
            self.buffer = b""
            if mentions:
                kept = self._filter(data, True)
                return b"" if kept is None else kept
            kept = self._renumber(data)  # _renumbered, inline
            if kept is None:
                self.withheld += len(data)
                return b""
            self.withheld += len(data) - len(kept)
            return kept
        return self._feed_events(data, True)

    def _feed_events(self, data: bytes, plain: bool) -> bytes:
        """Filter the complete events in ``data``, keep the rest; ``plain``: no \\r in it."""
        out: list[bytes] = []
        start = 0
        while True:
            if plain:
                end = data.find(b"\n\n", start)
                if end < 0:
                    break
                end += 2
            else:
                match = _EVENT_END.search(data, start)
                if match is None:
                    break
                end = match.end()
            event = data[start:end]
            kept = self._by_template(event) if plain and self.drop_prefix else _UNMATCHED
            if kept is not _UNMATCHED:
                pass
            elif b"reasoning" in event or b"thinking" in event:
                kept = self._filter(event, plain)
            elif self.dropped_outputs or self.dropped_blocks:
                kept = self._renumbered(event)
            else:
                kept = event
            if kept is not None:
                out.append(kept)
            start = end
        self.buffer = data[start:]
        return b"".join(out) if len(out) != 1 else out[0]

    def close(self) -> bytes:
        if self.buffer.strip():
            logger.info("abuseguard degrade: withheld an event cut off at the end of a stream")
            self.withheld += len(self.buffer)
        self.buffer = b""
        return b""

    def filter_event(self, event: bytes) -> bytes | None:
        """The event to send (itself, or rewritten), or None to withhold it."""
        if _mentions_reasoning(event):
            return self._filter(event, False)
        if self.dropped_outputs or self.dropped_blocks:
            return self._renumbered(event)
        return event

    def _renumbered(self, event: bytes) -> bytes | None:
        """An event that does not mention reasoning, renumbered after withheld items."""
        kept = self._renumber(event)
        self.withheld += len(event) - (0 if kept is None else len(kept))
        return kept

    def _filter(self, event: bytes, plain: bool) -> bytes | None:
        """An event that mentions reasoning, filtered; ``plain``: it ends with its only
        \\n\\n and holds no \\r."""
        lines, payload = _split_event(event, plain)
        if payload is None:
            return event  # a comment or an event name that mentions reasoning: no data
        try:
            parsed, by_orjson = orjson.loads(payload), True  # _parse, inline
        except orjson.JSONDecodeError:
            try:
                parsed, by_orjson = _std_parse(payload), False
            except ValueError:
                logger.info("abuseguard degrade: withheld an unparsable stream event")
                self.withheld += len(event)
                return None
        if type(parsed) is not dict:
            self.withheld += len(event)
            return None
        if "type" in parsed and self._withhold(parsed):
            if plain:
                if self.learn_wait:  # _learn, inline while waiting
                    self.learn_wait -= 1
                else:
                    self._learn(event, None)
            self.withheld += len(event)
            return None
        renumbered = bool(self.dropped_outputs or self.dropped_blocks) and self._renumber_parsed(
            parsed
        )
        removed, empty = _strip_event(parsed, payload)
        if not (removed or renumbered):
            return event  # it mentions reasoning (a token count, a word) but carries none
        if empty is None:
            empty = removed and _empty_chat_chunk(parsed)
        if empty:
            if plain:
                if self.learn_wait:  # _learn, inline while waiting
                    self.learn_wait -= 1
                else:
                    self._learn(event, None)
            self.withheld += len(event)
            return None
        if plain and not (self.dropped_outputs or self.dropped_blocks):
            if self.learn_wait:
                self.learn_wait -= 1
            else:
                self._learn(event, parsed)
        encoded = _dumps(parsed, by_orjson)
        if by_orjson and _maybe_rounded(encoded):
            parsed = _std_parse(payload)
            self._renumber_parsed(parsed)
            strip_reasoning(parsed)
            encoded = _dumps(parsed, False)
        rebuilt = _rebuilt(event, lines, encoded)
        self.withheld += len(event) - len(rebuilt)
        return rebuilt

    def _by_template(self, event: bytes) -> bytes | None:
        """What becomes of ``event`` (one event, or a chunk that is one event if so; no \\r
        in it) when it is the last event learned from with other texts in its holes, texts
        that cannot end their JSON strings early: None (withheld), or, for a kept event,
        the event without its reasoning member. _UNMATCHED when it is not."""
        prefix, suffix = self.drop_prefix, self.drop_suffix
        if not (event.startswith(prefix) and event.endswith(suffix)):
            return _UNMATCHED
        reasoning_hole, lead, trail = self.drop_cut
        keep = reasoning_hole >= 0
        if keep and (self.dropped_outputs or self.dropped_blocks):
            return _UNMATCHED  # a parse would renumber it
        at = len(prefix)
        cut_start = cut_end = 0
        hole = 0
        for middle in self.drop_middles:
            end = event.find(b'"', at)
            if end < 0 or not event.startswith(middle, end):
                return _UNMATCHED
            if keep:
                if not _kept_text(event[at:end]):
                    return _UNMATCHED
                if hole == reasoning_hole:
                    cut_start, cut_end = at - lead, end + trail
            elif event.find(10, at, end) >= 0 or event[end - 1] == 0x5C:
                return _UNMATCHED
            hole += 1
            at = end + len(middle)
        end = len(event) - len(suffix)
        if end < at:
            return _UNMATCHED
        text = event[at:end]
        if keep:
            if not _kept_text(text):
                return _UNMATCHED
            if hole == reasoning_hole:
                cut_start, cut_end = at - lead, end + trail
            kept = event[:cut_start] + event[cut_end:]
            self.withheld += len(event) - len(kept)
            self.learn_backoff = 0
            return kept
        if 0x22 in text or 0x0A in text or text[-1:] == b"\\":
            return _UNMATCHED
        self.withheld += len(event)
        self.learn_backoff = 0
        return None

    def _learn(self, event: bytes, kept: dict[str, Any] | None) -> None:
        """_learn_drop_template for a parsed ``event``, unless waiting."""
        if self.learn_wait:
            self.learn_wait -= 1
            return
        self.learn_wait = self.learn_backoff
        self.learn_backoff = min(4 * self.learn_backoff + 3, 255)
        head = event[:_LEARN_HEAD]
        tried = self.learn_head
        self.learn_head = head
        if head == tried or not tried:
            self._learn_drop_template(event, kept)

    def _learn_drop_template(self, event: bytes, kept: dict[str, Any] | None) -> None:
        """Remember ``event`` (no \\r in it), withheld (``kept`` None) or kept as ``kept``
        (parsed, its reasoning removed, renumbered by nothing), cut around its holes
        (_template_holes), when it holds no escape: every quote in it opens or closes a
        string. Events made of the same bytes around other texts in the holes parse into
        the same structure with other strings where nothing reads them: a withheld one is
        withheld too (whether those texts are JSON or not: the withheld items only grow),
        a kept one loses the same member (its texts are proved valid JSON strings). A kept
        event is learned only when cutting that member from its bytes gives ``kept``."""
        if event.find(b"\\") >= 0:
            return
        found = _template_holes(event)
        if found is None:
            return
        holes, reasoning_hole, lead, trail = found
        cut = (-1, 0, 0)
        if kept is not None:
            text_start, text_end = holes[reasoning_hole]
            spliced = event[: text_start - lead] + event[text_end + trail :]
            _, payload = _split_event(spliced, False)
            try:
                if payload is None or orjson.loads(payload) != kept:
                    return
            except orjson.JSONDecodeError:
                return
            cut = (reasoning_hole, lead, trail)
        self.drop_prefix = event[: holes[0][0]]
        self.drop_middles = tuple(
            event[end : holes[i + 1][0]] for i, (_, end) in enumerate(holes[:-1])
        )
        self.drop_suffix = event[holes[-1][1] :]
        self.drop_cut = cut
        self.drop_whole = kept is None and len(holes) == 1

    def _withhold(self, event: dict[str, Any]) -> bool:
        kind = event.get("type")
        if not isinstance(kind, str):
            return False
        if kind.startswith("response.reasoning"):
            return True
        output_index = event.get("output_index")
        if type(output_index) is int:
            if output_index in self.dropped_outputs:
                return True
            item = event.get("item")
            if _is_reasoning_item(item):
                self.dropped_outputs.append(output_index)
                self.moved_outputs.clear()
                self.moved_pairs.clear()
                return True
        if kind.startswith("content_block_"):
            index = event.get("index")
            if type(index) is int:
                if index in self.dropped_blocks:
                    return True
                block = event.get("content_block")
                delta = event.get("delta")
                delta_kind = delta.get("type") if type(delta) is dict else None
                if _is_reasoning_item(block) or (
                    type(delta_kind) is str and delta_kind in _THINKING_DELTAS
                ):
                    self.dropped_blocks.append(index)
                    self.moved_blocks.clear()
                    return True
        return False

    def _renumber_parsed(self, event: dict[str, Any]) -> bool:
        """Renumber a parsed event after withheld items; True when an index changed."""
        changed = False
        index = event.get("output_index")
        if self.dropped_outputs and type(index) is int:
            shifted = _shift(self.dropped_outputs, index)
            if shifted != index:
                event["output_index"] = shifted
                changed = True
        kind = event.get("type")
        index = event.get("index")
        if (
            self.dropped_blocks
            and isinstance(kind, str)
            and kind.startswith("content_block_")
            and type(index) is int
        ):
            shifted = _shift(self.dropped_blocks, index)
            if shifted != index:
                event["index"] = shifted
                changed = True
        return changed

    def _renumber(self, event: bytes) -> bytes | None:
        """Renumber an event that does not mention reasoning, or None when it belongs to a
        withheld item (a content part's end, a block's stop). The indexes are rewritten in
        place; an event whose bytes leave a doubt (a nested or escaped key) is parsed."""
        if self.dropped_outputs:
            # _top_level_value and _digits_at, inline: this runs for every later event.
            start = event.find(b'"output_index":')
            if start < 0:
                if event.find(b'"output_index"') >= 0:
                    return self._renumber_by_parse(event)
            elif (
                event[start - 1] == 0x5C
                or event.count(b"{", 0, start) != 1
                or (
                    event.find(b"[", 0, start) >= 0
                    and event.count(b"[", 0, start) != event.count(b"[]", 0, start)
                )
            ):
                return self._renumber_by_parse(event)
            else:
                # A one-digit index and the byte after it, as read before: no reading again.
                start += 15
                pair = event[start : start + 2]
                moved_pair = self.moved_pairs.get(pair, pair)
                if moved_pair is None:
                    return None
                if moved_pair is not pair:
                    if moved_pair != pair:
                        event = event[:start] + moved_pair + event[start + 2 :]
                else:
                    moved_event = self._output_index_moved(event, start)
                    if moved_event is None:
                        return None
                    event = moved_event
        if self.dropped_blocks and event.find(b'"content_block_') >= 0:
            kind = _top_level_value(event, b'"type":')
            start = _top_level_value(event, b'"index":')
            if kind == _UNSURE or start == _UNSURE:
                return self._renumber_by_parse(event)
            if kind >= 0 and start >= 0 and event.startswith(b'"content_block_', kind):
                end = _digits_at(event, start)
                if end > start:
                    digits = event[start:end]
                    moved = self.moved_blocks.get(digits, digits)
                    if moved is digits:
                        moved = self._moved(digits, self.dropped_blocks, self.moved_blocks)
                    if moved is None:
                        return None
                    if moved != digits:
                        event = event[:start] + moved + event[end:]
        return event

    def _output_index_moved(self, event: bytes, start: int) -> bytes | None:
        """_renumber for the output index whose value starts at or after ``start``
        (blanks first): ``event`` renumbered, or None when the index is withheld."""
        size = len(event)
        while start < size and event[start] in _BLANKS:
            start += 1
        end = start
        while end < size and 0x30 <= event[end] <= 0x39:
            end += 1
        if end == start or (end < size and event[end] in _NOT_AN_INTEGER_AFTER):
            return event  # not a non-negative integer: a parse would leave it too
        digits = event[start:end]
        moved = self.moved_outputs.get(digits, digits)
        if moved is digits:
            moved = self._moved(digits, self.dropped_outputs, self.moved_outputs)
        if end - start == 1 and end < size and event[start - 1] == 0x3A:
            after = event[end : end + 1]
            self.moved_pairs[digits + after] = None if moved is None else moved + after
        if moved is None:
            return None
        if moved == digits:
            return event
        return event[:start] + moved + event[end:]

    @staticmethod
    def _moved(digits: bytes, dropped: list[int], moved: dict[bytes, bytes | None]) -> bytes | None:
        index = int(digits)
        found = None if index in dropped else b"%d" % _shift(dropped, index)
        moved[digits] = found
        return found

    def _renumber_by_parse(self, event: bytes) -> bytes | None:
        """_renumber for an event parsed (an unparsable one is sent as it came)."""
        lines, payload = _split_event(event, False)
        if payload is None:
            return event
        try:
            parsed, by_orjson = _parse(payload)
        except ValueError:
            return event
        if type(parsed) is not dict:
            return event
        index = parsed.get("output_index")
        if type(index) is int and index in self.dropped_outputs:
            return None
        kind = parsed.get("type")
        index = parsed.get("index")
        if (
            type(index) is int
            and index in self.dropped_blocks
            and type(kind) is str
            and kind.startswith("content_block_")
        ):
            return None
        if not self._renumber_parsed(parsed):
            return event
        encoded = _dumps(parsed, by_orjson)
        if by_orjson and _maybe_rounded(encoded):
            parsed = _std_parse(payload)
            self._renumber_parsed(parsed)
            encoded = _dumps(parsed, False)
        return _rebuilt(event, lines, encoded)


def _kept_text(text: bytes) -> bool:
    """True when ``text`` written between quotes is a JSON string as it is: no quote,
    backslash or control character, valid UTF-8."""
    if _UNSAFE_KEPT_TEXT.search(text) is not None:
        return False
    if text.isascii():
        return True
    try:
        text.decode()
    except UnicodeDecodeError:
        return False
    return True


def _split_event(event: bytes, plain: bool) -> tuple[list[bytes] | None, bytes | None]:
    """An event's lines (None when it is one data line) and its data (None when it has no
    data line); ``plain``: it ends with its only \\n\\n and holds no \\r."""
    if plain and event.find(10) == len(event) - 2 and event.startswith(b"data:"):
        return None, event[5:-2]  # one data line, the usual case (JSON ignores the blanks)
    if not plain and _one_data_line(event):
        return None, event.rstrip(b"\r\n")[5:]
    lines = _LINE_END.split(event)
    data_lines = [line for line in lines if line.startswith(b"data:")]
    if not data_lines:
        return lines, None
    return lines, b"\n".join(line[5:].removeprefix(b" ") for line in data_lines)


def _rebuilt(event: bytes, lines: list[bytes] | None, encoded: bytes) -> bytes:
    """``event`` with its data replaced by the one line ``encoded``, its other lines and
    line endings kept."""
    if 13 not in event:
        if lines is None:
            return b"data: %b\n\n" % encoded
        separator = b"\n"
    else:
        separator = b"\r\n" if event.find(b"\r\n") >= 0 else b"\n"
    data_line = b"data: " + encoded
    if lines is None:
        return data_line + separator + separator
    return separator.join(
        [line for line in lines if line and not line.startswith(b"data:")] + [data_line, b"", b""]
    )


def _one_data_line(event: bytes) -> bool:
    single = event.rstrip(b"\r\n")
    return single.startswith(b"data:") and b"\n" not in single and b"\r" not in single


def _strip_event(event: dict[str, Any], payload: bytes) -> tuple[bool, bool | None]:
    """strip_reasoning for a parsed stream event, and whether it is a chat chunk left
    empty (_empty_chat_chunk; None: not known yet). A chat chunk whose one mention of
    reasoning (in ``payload``, its text) is its delta's reasoning key, the usual reasoning
    chunk, loses that key without a walk of the whole event, and is known empty or not."""
    choices = event.get("choices")
    if (
        type(choices) is list
        and len(choices) == 1
        and payload.count(b"reasoning") + payload.count(b"thinking") == 1
    ):
        choice = choices[0]
        delta = choice.get("delta") if type(choice) is dict else None
        if type(delta) is dict:
            for key in _REASONING_KEY_ORDER:
                if key in delta:
                    del delta[key]
                    if (
                        "role" in delta
                        or event.get("usage")
                        or choice.get("finish_reason")
                        or choice.get("logprobs")
                    ):
                        return True, False
                    for left in delta.values():
                        if left is not None:
                            return True, False
                    return True, True
    return strip_reasoning(event), None


def _empty_chat_chunk(event: dict[str, Any]) -> bool:
    """True for a chat completion chunk left with nothing once its reasoning is gone."""
    choices = event.get("choices")
    if type(choices) is not list or not choices or event.get("usage"):
        return False
    for choice in choices:
        if type(choice) is not dict:
            return False
        delta = choice.get("delta")
        if type(delta) is not dict or choice.get("finish_reason") or choice.get("logprobs"):
            return False
        if "role" in delta:
            return False  # the first chunk announces the role
        for value in delta.values():
            if value is not None:
                return False  # what is left says something
    return True


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def is_json(content_type: bytes | None) -> bool:
    if content_type is None:
        return False
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or media.endswith(b"+json")


def is_event_stream(content_type: bytes | None) -> bool:
    if content_type is None:
        return False
    return content_type.split(b";", 1)[0].strip().lower() == b"text/event-stream"


# -- the exchange ----------------------------------------------------------------------

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


async def serve_degraded(
    scope: Scope,
    receive: Receive,
    send: Send,
    decision: Decision,
    app: Callable[[Scope, Receive, Send], Awaitable[None]],
    options: DegradeOptions,
    *,
    apply: bool = True,
) -> None:
    """Run ``app`` for a degraded request: its body rewritten, its response filtered.
    With ``apply`` False (shadow) both are computed and counted, and the client and the
    app see the original bytes."""
    path = scope.get("path", "")
    endpoint = endpoint_of(path)
    chosen = options.for_request(path, decision.score) if endpoint is not None else None
    if chosen is None or endpoint is None:
        await app(scope, receive, send)
        return
    if chosen.rewrites and scope.get("method") in _BODY_METHODS:
        context = DegradeContext(
            decision, path, endpoint, shadow=not apply, cohort=cohort_of(decision.identity)
        )
        receive = await _rewritten_receive(scope, receive, chosen, context, apply)
    if not chosen.withhold_reasoning:
        try:
            await app(scope, receive, send)
        finally:
            record_degrade(shadow=not apply, withheld_bytes=0)
        return
    filtering = _FilteringSend(send, apply, chosen.max_response_bytes, path)
    try:
        # The bound method, not the object: calling an object's __call__ costs more.
        await app(scope, receive, filtering.__call__)
    finally:
        record_degrade(
            shadow=not apply, withheld_bytes=filtering.withheld + filtering.stream.withheld
        )


async def _rewritten_receive(
    scope: Scope, receive: Receive, options: DegradeOptions, context: DegradeContext, apply: bool
) -> Receive:
    """Read the request body, rewrite it, and return a receive that hands it to the app
    (followed by whatever the client sends next)."""
    headers = list(scope.get("headers") or ())
    content_type = _header(headers, b"content-type")
    encoding = _header(headers, b"content-encoding")
    if not is_json(content_type) or encoding not in (None, b"identity"):
        return receive
    limit = options.max_body_bytes
    messages: list[Message] = []
    chunks: list[bytes] = []
    size = 0
    complete = False
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break  # the client went away: the app learns it from the replay
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            complete = True
            break
        if size > limit:
            logger.info(
                "abuseguard degrade: %s body over %d bytes; passed through", context.path, limit
            )
            break
    if complete and size <= limit:
        rewritten = rewrite_request(b"".join(chunks), options, context.endpoint, context)
        if rewritten is not None and apply:
            messages = [{"type": "http.request", "body": rewritten, "more_body": False}]
            length = str(len(rewritten)).encode()
            if _header(headers, b"content-length") is not None:
                scope["headers"] = [
                    (name, length if name.lower() == b"content-length" else value)
                    for name, value in headers
                ]
    pending = iter(messages)

    async def replaying_receive() -> Message:
        for message in pending:
            return message
        return await receive()

    return replaying_receive


class _FilteringSend:
    """The app's ``send``, withholding reasoning from JSON and event-stream responses.
    ``withheld`` counts the bytes kept from a JSON response, ``stream.withheld`` those
    kept from an event stream."""

    __slots__ = (
        "apply",
        "body",
        "held_start",
        "limit",
        "mode",
        "path",
        "send",
        "stream",
        "withheld",
    )

    def __init__(self, send: Send, apply: bool, limit: int, path: str) -> None:
        self.send = send
        self.apply = apply
        self.limit = limit
        self.path = path
        self.mode = ""  # "json", "sse" or "" (passed through)
        self.held_start: Message | None = None
        self.body: list[bytes] = []
        self.stream = StreamFilter()
        self.withheld = 0

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind != "http.response.body":
            if kind == "http.response.start":
                await self._start(message)
            else:
                await self.send(message)
        elif self.mode == "sse":  # the stream body, inline: called once per event
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            stream = self.stream
            out = stream.feed(chunk) if chunk else b""
            if not more:
                out += stream.close()
            if not self.apply or out is chunk:  # shadow, or the chunk passes as it came
                await self.send(message)
            elif out or not more:  # a chunk without a complete event sends nothing yet
                await self.send({"type": "http.response.body", "body": out, "more_body": more})
        elif self.mode == "json":
            await self._json_body(message)
        else:
            await self.send(message)

    async def _start(self, message: Message) -> None:
        headers = list(message.get("headers") or ())
        content_type = _header(headers, b"content-type")
        encoding = _header(headers, b"content-encoding")
        stream = is_event_stream(content_type)
        if (stream or is_json(content_type)) and encoding not in (None, b"identity"):
            logger.info("abuseguard degrade: %s response is compressed; not filtered", self.path)
        elif stream:
            self.mode = "sse"
            if self.apply:
                kept = [(k, v) for k, v in headers if k.lower() != b"content-length"]
                message = {**message, "headers": kept}
        elif is_json(content_type):
            self.mode = "json"
            if self.apply:
                self.held_start = message  # its Content-Length waits for the filtered body
                return
        await self.send(message)

    async def _json_body(self, message: Message) -> None:
        chunk = message.get("body", b"")
        more = message.get("more_body", False)
        self.body.append(chunk)
        size = sum(len(part) for part in self.body)
        if size > self.limit:
            logger.info(
                "abuseguard degrade: %s response over %d bytes; not filtered", self.path, self.limit
            )
            self.mode = ""
            if self.apply:
                await self._release_start(None)
                await self.send(
                    {"type": "http.response.body", "body": b"".join(self.body), "more_body": more}
                )
            else:
                await self.send(message)
            self.body = []
            return
        if more:
            if not self.apply:
                await self.send(message)
            return
        raw = b"".join(self.body)
        self.body = []
        filtered = filter_json_body(raw)
        if filtered is not None:
            self.withheld += len(raw) - len(filtered)
        if not self.apply:
            await self.send(message)
            return
        await self._release_start(None if filtered is None else len(filtered))
        await self.send(
            {
                "type": "http.response.body",
                "body": raw if filtered is None else filtered,
                "more_body": False,
            }
        )

    async def _release_start(self, length: int | None) -> None:
        start = self.held_start
        if start is None:
            return
        self.held_start = None
        if length is not None:
            value = str(length).encode()
            headers = [
                (k, value if k.lower() == b"content-length" else v)
                for k, v in start.get("headers") or ()
            ]
            start = {**start, "headers": headers}
        await self.send(start)


__all__ = [
    "REASONING_EFFORTS",
    "DegradeContext",
    "DegradeOptions",
    "DegradeStep",
    "StreamFilter",
    "endpoint_of",
    "filter_json_body",
    "rewrite_body",
    "rewrite_request",
    "serve_degraded",
    "strip_reasoning",
]
