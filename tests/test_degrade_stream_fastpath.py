"""Issue 20: the stream filter's byte-level shortcuts give what a full parse gives.

Two shortcuts keep a stream event within the 2 µs budget: an event made of the bytes of
the last one parsed with other texts in the holes of its template
(`StreamFilter.drop_prefix`/`drop_middles`/`drop_suffix`: the reasoning text, its sibling
texts, a per-chunk padding field) is withheld, or loses its reasoning member in place,
without a parse; and an index after a withheld item is rewritten in place
(`StreamFilter._renumber`). `FullParse` is the same filter with both turned off;
generated streams (escapes, unicode, nested objects, keys inside string values, padding
fields, decisive keys that vary, raw bytes a JSON string may not hold, malformed events,
any chunking) must come out of both the same: byte for byte, or the same JSON where one
of them wrote an event again or cut it.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from abuseguard.degrade import StreamFilter


class FullParse(StreamFilter):
    """StreamFilter without its byte-level shortcuts: every event that mentions reasoning
    or needs renumbering is parsed."""

    def _learn_drop_template(self, event: bytes, kept: Any) -> None:
        pass

    def _renumber(self, event: bytes) -> bytes | None:
        return self._renumber_by_parse(event)


def run(flt: StreamFilter, stream: bytes, cuts: list[int]) -> bytes:
    out = []
    last = 0
    for cut in [*sorted(set(cuts)), len(stream)]:
        out.append(flt.feed(stream[last:cut]))
        last = cut
    out.append(flt.close())
    return b"".join(out)


def run_by_event(flt: StreamFilter, stream: bytes) -> bytes:
    """One event a chunk, as most apps send them."""
    out = [flt.feed(event + b"\n\n") for event in stream.split(b"\n\n")[:-1]]
    return b"".join(out) + flt.close()


def events_of(stream: bytes) -> list[bytes]:
    return [event for event in stream.split(b"\n\n") if event]


def same_events(fast: bytes, full: bytes) -> None:
    """Byte for byte, or the same lines with the same JSON in their data."""
    fast_events, full_events = events_of(fast), events_of(full)
    assert len(fast_events) == len(full_events), (fast, full)
    for mine, theirs in zip(fast_events, full_events, strict=True):
        if mine == theirs:
            continue
        mine_lines, their_lines = mine.split(b"\n"), theirs.split(b"\n")
        assert [x for x in mine_lines if not x.startswith(b"data:")] == [
            x for x in their_lines if not x.startswith(b"data:")
        ]
        mine_data = b"\n".join(x[5:] for x in mine_lines if x.startswith(b"data:"))
        their_data = b"\n".join(x[5:] for x in their_lines if x.startswith(b"data:"))
        assert json.loads(mine_data) == json.loads(their_data), (mine, theirs)


def encode(value: Any, compact: bool, ascii_only: bool) -> bytes:
    separators = (",", ":") if compact else (", ", ": ")
    return json.dumps(value, separators=separators, ensure_ascii=ascii_only).encode()


# Text with what trips byte-level code: quotes, backslashes, line ends, braces, brackets,
# non-ASCII, and the very keys the filter looks for.
TRICKY = st.sampled_from([
    '"', "\\", "\n", "\r", "{", "}", "[", "]", "[]", ":", ",", "é", "☕", "\U0001f600",
    '"output_index":', '"output_index": 0', '"index":', '"reasoning_content":"x"',
    "reasoning", "thinking", '"type":"content_block_delta"', "\\u0022", "\u2028",
])  # fmt: skip
TEXT = st.lists(st.one_of(TRICKY, st.text(max_size=4)), max_size=5).map("".join)
PLAIN_OR_TRICKY = st.one_of(st.text(alphabet="ab é☕", max_size=6), TEXT)
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), TEXT)
NESTED = st.recursive(
    SCALAR,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["a", "output_index", "index", "type", "b"]), inner,
                        max_size=3),
    ),
    max_leaves=6,
)  # fmt: skip
EXTRA = st.dictionaries(st.sampled_from(["id", "model", "note", "meta", "x"]), NESTED, max_size=3)
FORMAT = st.tuples(st.booleans(), st.booleans())  # compact, ASCII only


def chat_chunk(
    envelope: dict[str, Any],
    delta: dict[str, Any],
    finish: Any = None,
    after: dict[str, Any] | None = None,
) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {**envelope, "object": "chat.completion.chunk", "choices": [choice], **(after or {})}


# A per-chunk padding field (OpenAI's "obfuscation"), and keys whose string value decides
# what the filter does, varying from chunk to chunk after the choices (or before them).
PAD = st.one_of(st.text(alphabet="aZ09+/", max_size=12), TEXT)
AFTER = st.dictionaries(
    st.sampled_from(["obfuscation", "obfuscation", "usage", "type", "note"]),
    st.one_of(PAD, st.sampled_from(["", "stop", "response.reasoning.delta"]), st.none()),
    max_size=2,
)


# Raw bytes a JSON string may not hold as they are (quotes, backslashes, control
# characters, invalid UTF-8); no line end: that would split the event.
RAW = st.binary(max_size=6).filter(lambda b: b"\n" not in b and b"\r" not in b)


@st.composite
def mixed_run(
    draw: st.DrawFn, envelope: dict[str, Any], key: str, compact: bool, ascii_only: bool
) -> list[bytes]:
    """Chunks of one shape (content and reasoning, a padding field, in one order) with
    other texts and pads: what the filter cuts the reasoning from in place once learned;
    some with an escape or raw bytes in one text."""
    reasoning_first = draw(st.booleans())
    pad_key = draw(st.sampled_from([None, "obfuscation", "usage", "type"]))
    finish = draw(st.sampled_from([None, "stop"]))
    events = []
    for _ in range(draw(st.integers(2, 5))):
        content, text = draw(PLAIN_OR_TRICKY), draw(PLAIN_OR_TRICKY)
        delta = (
            {key: text, "content": content} if reasoning_first else {"content": content, key: text}
        )
        after = {} if pad_key is None else {pad_key: draw(PAD)}
        whole = encode(chat_chunk(envelope, delta, finish, after), compact, ascii_only)
        if draw(st.integers(0, 4)) == 0:
            target = draw(st.sampled_from([content, text, after.get(pad_key, text)]))
            quoted = encode(target, compact, ascii_only)
            if whole.count(quoted) == 1:
                whole = whole.replace(quoted, b'"' + draw(RAW) + b'"')
        events.append(b"data: " + whole + b"\n\n")
    return events


@st.composite
def chat_streams(draw: st.DrawFn) -> bytes:
    """A chat stream with runs of reasoning-only chunks sharing one envelope, with or
    without a padding field of their own, mixed chunks (content and reasoning, in either
    order, alone or in runs of one shape), content chunks, and events cut or spliced so
    that they are no longer JSON (or carry raw bytes a JSON string may not hold)."""
    envelope = draw(EXTRA)
    compact, ascii_only = draw(FORMAT)
    key = draw(st.sampled_from(["reasoning_content", "reasoning", "thinking"]))
    parts: list[bytes] = []
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["reasoning", "reasoning", "null content", "mixed",
                                     "content", "role", "finish", "other envelope", "spliced",
                                     "cut", "padded", "padded", "padded mixed",
                                     "reasoning first", "mixed run", "mixed run"]))  # fmt: skip
        text = draw(PLAIN_OR_TRICKY)
        if kind == "mixed run":
            parts += draw(mixed_run(envelope, key, compact, ascii_only))
            continue
        if kind == "reasoning":
            chunk = chat_chunk(envelope, {key: text})
        elif kind == "null content":
            chunk = chat_chunk(envelope, {"content": None, key: text})
        elif kind == "mixed":
            chunk = chat_chunk(envelope, {"content": draw(PLAIN_OR_TRICKY), key: text})
        elif kind == "padded":
            chunk = chat_chunk(envelope, {key: text}, after=draw(AFTER))
        elif kind == "padded mixed":
            content = draw(PLAIN_OR_TRICKY)
            chunk = chat_chunk(envelope, {"content": content, key: text}, after=draw(AFTER))
            if draw(st.booleans()):
                chunk = {"pad": draw(PAD), **chunk}  # a varying field before the choices
        elif kind == "reasoning first":
            delta = {key: text, "content": draw(PLAIN_OR_TRICKY)}
            if draw(st.booleans()):
                delta["refusal"] = draw(st.one_of(st.none(), PAD))
            chunk = chat_chunk(envelope, delta, finish=draw(st.sampled_from([None, "", "stop"])))
        elif kind == "content":
            chunk = chat_chunk(envelope, {"content": text})
        elif kind == "role":
            chunk = chat_chunk(envelope, {"role": "assistant", key: text})
        elif kind == "finish":
            chunk = chat_chunk(envelope, {key: text}, finish="stop")
        elif kind == "other envelope":
            chunk = chat_chunk(draw(EXTRA), {key: text})
        else:
            # A reasoning-only chunk whose text is replaced by raw bytes (quotes, backslashes,
            # control characters, invalid UTF-8), or cut short: no longer (the same) JSON.
            delta = {key: "PLACEHOLDER"}
            if draw(st.booleans()):
                delta = {"content": "PLACEHOLDER2", key: "PLACEHOLDER"}
            after = {"obfuscation": "PLACEHOLDER3"} if draw(st.booleans()) else {}
            whole = encode(chat_chunk(envelope, delta, after=after), compact, ascii_only)
            if kind == "spliced":
                raw = draw(RAW)
                target = draw(st.sampled_from([b"PLACEHOLDER", b"PLACEHOLDER2", b"PLACEHOLDER3"]))
                whole = whole.replace(target + b'"', raw + b'"')
            else:
                whole = whole[: draw(st.integers(1, len(whole) - 1))]
            parts.append(b"data: " + whole + b"\n\n")
            continue
        parts.append(b"data: " + encode(chunk, compact, ascii_only) + b"\n\n")
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts)


RESPONSES_EVENTS = [
    "response.output_text.delta",
    "response.output_item.added",
    "response.content_part.done",
    "response.completed",
]


@st.composite
def responses_streams(draw: st.DrawFn) -> bytes:
    """A Responses API stream whose first output item is reasoning (withheld), then events
    of later items in either key order, with blanks, nested objects holding the same keys,
    arrays before the index, and indexes that are not plain integers."""
    compact, ascii_only = draw(FORMAT)
    parts = [
        b"event: response.output_item.added\ndata: "
        + encode({"type": "response.output_item.added", "output_index": 0,
                  "item": {"type": "reasoning", "id": "rs_1", "summary": []}},
                 compact, ascii_only)
        + b"\n\n"
    ]  # fmt: skip
    for sequence in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(RESPONSES_EVENTS))
        members: list[tuple[str, Any]] = [("type", kind), ("sequence_number", sequence)]
        index = draw(st.one_of(st.integers(0, 12), st.sampled_from([1.5, -1, None, "2", True])))
        if kind != "response.completed":
            members.append(("output_index", index))
        members += [("item_id", "msg_1"), ("delta", draw(TEXT)), ("logprobs", [])]
        members += list(draw(EXTRA).items())
        if draw(st.booleans()):
            members.sort()  # the SDK's order: the index after arrays and nested objects
        if draw(st.booleans()):
            members.insert(draw(st.integers(0, len(members))), ("nested", draw(NESTED)))
        data = encode(dict(members), compact, ascii_only)
        if draw(st.booleans()):
            data = data.replace(b'"output_index":', b'"output_index" :', 1)
        parts.append(b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n")
    return b"".join(parts)


@st.composite
def anthropic_streams(draw: st.DrawFn) -> bytes:
    """An Anthropic messages stream whose first content block is thinking (withheld), with
    runs of thinking deltas that share their other members."""
    compact, ascii_only = draw(FORMAT)
    shared = draw(EXTRA)
    events: list[dict[str, Any]] = [
        {"type": "content_block_start", "index": 0,
         "content_block": {"type": "thinking", "thinking": ""}},
    ]  # fmt: skip
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["content_block_start", "content_block_delta",
                                     "content_block_stop", "message_delta", "thinking_delta",
                                     "thinking_delta"]))  # fmt: skip
        event: dict[str, Any] = {"type": kind, "index": draw(st.integers(0, 4))}
        if kind == "thinking_delta":
            thinking = {"type": "thinking_delta", "thinking": draw(PLAIN_OR_TRICKY)}
            index = draw(st.sampled_from([0, 0, 1]))
            event = {"type": "content_block_delta", "index": index, "delta": thinking, **shared}
        else:
            if kind == "content_block_delta":
                event["delta"] = {"type": "text_delta", "text": draw(TEXT)}
            event.update(draw(EXTRA))
            if draw(st.booleans()):
                event = dict(sorted(event.items()))
        events.append(event)
    return b"".join(
        b"event: " + e["type"].encode() + b"\ndata: " + encode(e, compact, ascii_only) + b"\n\n"
        for e in events
    )


CUTS = st.lists(st.integers(min_value=0, max_value=4000), max_size=10)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(chat_streams(), CUTS)
def test_reasoning_only_chunks_withheld_unparsed_as_a_parse_would(
    stream: bytes, cuts: list[int]
) -> None:
    full = run(FullParse(), stream, [])
    same_events(run(StreamFilter(), stream, []), full)
    same_events(run_by_event(StreamFilter(), stream), full)
    same_events(run(StreamFilter(), stream, [c for c in cuts if c < len(stream)]), full)


@SETTINGS
@given(responses_streams(), CUTS)
def test_output_indexes_renumbered_in_place_as_a_parse_would(
    stream: bytes, cuts: list[int]
) -> None:
    full = run(FullParse(), stream, [])
    same_events(run(StreamFilter(), stream, []), full)
    same_events(run_by_event(StreamFilter(), stream), full)
    same_events(run(StreamFilter(), stream, [c for c in cuts if c < len(stream)]), full)


@SETTINGS
@given(anthropic_streams(), CUTS)
def test_block_indexes_renumbered_in_place_as_a_parse_would(stream: bytes, cuts: list[int]) -> None:
    full = run(FullParse(), stream, [])
    same_events(run(StreamFilter(), stream, []), full)
    same_events(run_by_event(StreamFilter(), stream), full)
    same_events(run(StreamFilter(), stream, [c for c in cuts if c < len(stream)]), full)


def test_a_run_of_reasoning_chunks_is_withheld_without_a_parse_and_counted() -> None:
    def chunk(delta: dict[str, Any]) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
        body = {"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": [choice]}
        return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"

    flt = StreamFilter()
    first = chunk({"reasoning_content": "Let me think"})
    assert flt.feed(first) == b""
    assert flt.drop_prefix.endswith(b'"reasoning_content":"') and flt.drop_suffix.startswith(b'"}')
    run_of = [chunk({"reasoning_content": text}) for text in (" about", " it é", "")]
    for event in run_of:
        assert flt.feed(event) == b""
    content = chunk({"content": "Answer"})
    assert flt.feed(content) == content
    assert flt.withheld == len(first) + sum(len(e) for e in run_of)
    # A text that would end the JSON string early is parsed: its content is kept.
    sneaky = first.replace(b"Let me think", b'x","content":"kept')
    assert json.loads(flt.feed(sneaky)[6:])["choices"][0]["delta"] == {"content": "kept"}


# -- what the old in-place renumbering got wrong (each fails on the code before) --------


def _after_withheld_item(event: dict[str, Any] | bytes) -> bytes:
    flt = StreamFilter()
    withheld = {"type": "response.output_item.added", "output_index": 0,
                "item": {"type": "reasoning", "summary": []}}  # fmt: skip
    assert flt.feed(b"data: " + json.dumps(withheld).encode() + b"\n\n") == b""
    data = event if isinstance(event, bytes) else json.dumps(event).encode()
    return flt.feed(b"data: " + data + b"\n\n")


def _data(event: bytes) -> Any:
    return json.loads(event.removeprefix(b"data: "))


def test_an_output_index_nested_before_the_events_own_is_left_alone() -> None:
    event = {"type": "response.output_text.delta", "meta": {"output_index": 7}, "output_index": 2}
    assert _data(_after_withheld_item(event)) == {**event, "output_index": 1}


def test_an_output_index_written_with_a_blank_before_its_colon_is_renumbered() -> None:
    raw = b'{"type": "response.output_text.delta", "output_index" : 2, "delta": "a"}'
    assert _data(_after_withheld_item(raw))["output_index"] == 1


def test_an_output_index_that_is_not_an_integer_is_left_alone() -> None:
    raw = b'{"type": "response.output_text.delta", "output_index": 1.5, "delta": "a"}'
    assert _data(_after_withheld_item(raw))["output_index"] == 1.5


# -- templates with holes: a padding field of its own, a kept chunk's reasoning cut out --


class CountingParses(StreamFilter):
    """StreamFilter that counts the events it parses."""

    def __init__(self) -> None:
        super().__init__()
        self.parses = 0

    def _filter(self, event: bytes, plain: bool) -> bytes | None:
        self.parses += 1
        return super()._filter(event, plain)


def openai_chunk(delta: dict[str, Any], **after: Any) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
    body = {"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": [choice]}
    data = json.dumps({**body, **after}, separators=(",", ":"), ensure_ascii=False)
    return b"data: " + data.encode() + b"\n\n"


def test_reasoning_chunks_each_with_its_own_pad_are_withheld_after_one_parse() -> None:
    flt = CountingParses()
    pads = ["Xy3", "", "a9Zq/+", "é☕", "long" * 20]
    for i, pad in enumerate(pads):
        assert flt.feed(openai_chunk({"reasoning_content": f"step {i}"}, obfuscation=pad)) == b""
    assert flt.parses == 1
    content = openai_chunk({"content": "Answer"}, obfuscation="q")
    assert flt.feed(content) == content


def test_a_pad_that_would_end_its_string_early_is_parsed() -> None:
    flt = CountingParses()
    assert flt.feed(openai_chunk({"reasoning_content": "a"}, obfuscation="p")) == b""
    sneaky = openai_chunk({"reasoning_content": "b"}, obfuscation="PAD").replace(
        b"PAD", b'x","usage":{"total_tokens":3},"n":"'
    )
    kept = flt.feed(sneaky)
    assert flt.parses == 2
    assert _data(kept)["usage"] == {"total_tokens": 3}  # a parse keeps it: it says something


def test_a_key_whose_value_decides_is_never_a_hole() -> None:
    flt = CountingParses()
    assert flt.feed(openai_chunk({"reasoning_content": "a"}, usage="")) == b""
    # A truthy usage keeps the chunk (it says something): the template must not withhold it.
    chunk = openai_chunk({"reasoning_content": "b"}, usage="x")
    assert _data(flt.feed(chunk)) == {**_data(chunk), "choices": [
        {"index": 0, "delta": {}, "logprobs": None, "finish_reason": None}]}  # fmt: skip
    assert flt.parses == 2


def test_mixed_chunks_lose_their_reasoning_in_place_after_one_parse() -> None:
    flt = CountingParses()
    for i, (content, pad) in enumerate([("Hi", "p1"), (" there é", ""), ("", "zz")]):
        chunk = openai_chunk({"content": content, "reasoning_content": f"r{i}"}, obfuscation=pad)
        kept = flt.feed(chunk)
        expected = json.loads(chunk[6:])
        del expected["choices"][0]["delta"]["reasoning_content"]
        assert _data(kept) == expected
        if i:
            # Cut from the bytes as they came: no parse, no re-encoding.
            assert kept == chunk.replace(b',"reasoning_content":"r%d"' % i, b"")
    assert flt.parses == 1
    assert flt.withheld == 3 * len(b',"reasoning_content":"r0"')


def test_a_mixed_chunk_whose_text_is_not_a_plain_json_string_is_parsed() -> None:
    flt = CountingParses()
    flt.feed(openai_chunk({"content": "a", "reasoning_content": "b"}))
    escaped = openai_chunk({"content": 'say "hi"\n', "reasoning_content": "c"})
    assert _data(flt.feed(escaped))["choices"][0]["delta"] == {"content": 'say "hi"\n'}
    raw = openai_chunk({"content": "TEXT", "reasoning_content": "c"})
    for bad in (b"\x01", b"\xff\xfe", b"tab\there"):  # not JSON: withheld, not sent as it is
        assert flt.feed(raw.replace(b"TEXT", bad)) == b""
    assert flt.parses == 5


def test_two_events_in_one_chunk_are_not_taken_for_one_made_of_the_template() -> None:
    flt = CountingParses()
    assert flt.feed(openai_chunk({"reasoning_content": "a"}, obfuscation="p")) == b""
    # The first begins as the template, the second ends as it: each is filtered alone.
    content = openai_chunk({"content": "kept"}, obfuscation="q")
    two = openai_chunk({"reasoning_content": "b"}, obfuscation="r") + content
    assert flt.feed(two) == content
    flt = CountingParses()
    flt.feed(openai_chunk({"content": "x", "reasoning_content": "a"}, obfuscation="p"))
    two = openai_chunk({"content": "y", "reasoning_content": "b"}, obfuscation="r") + content
    assert [_data(e + b"\n\n") for e in events_of(flt.feed(two))] == [
        _data(openai_chunk({"content": "y"}, obfuscation="r")),
        _data(content),
    ]
