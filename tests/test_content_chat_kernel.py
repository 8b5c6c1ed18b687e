"""The chat-body kernel (``_fingerprint_body``) answers what the Python extraction answers.

``ContentFingerprinter.fingerprint`` reads a chat body (ASCII JSON with ``messages``) in one
kernel call and leaves every other body to the Python extraction. Wherever the kernel
answers, its facts must be the Python path's, bit for bit: checked on the golden corpora,
on generated chat bodies (hypothesis: roles, escapes, nesting, numbers, duplicates, system
prompts, cut and invalid JSON) and on hand-picked edge cases.
"""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from abuseguard.intel.content import ContentFacts, ContentFingerprinter
from tests.test_content_golden import content_test_bodies, random_bodies, simulator_bodies


@pytest.fixture(scope="module")
def fp() -> ContentFingerprinter:
    return ContentFingerprinter()


def python_facts(fp: ContentFingerprinter, body: bytes) -> ContentFacts:
    return fp._fingerprint_safely(body, None)


def check(fp: ContentFingerprinter, body: bytes) -> bool:
    """The kernel's answer equals the Python path's; True when the kernel answered."""
    fast = fp._fingerprint_chat(body)
    if fast is None:
        return False
    assert fast == python_facts(fp, body), body
    assert fp.fingerprint(body) == fast
    return True


def test_golden_corpora_agree_and_chats_take_the_kernel(fp: ContentFingerprinter) -> None:
    answered = 0
    total = 0
    for body, _ in simulator_bodies() + content_test_bodies() + random_bodies():
        if isinstance(body, bytes) and len(body) <= fp.max_bytes:
            total += 1
            answered += check(fp, body)
    assert answered > 300  # the ASCII chat bodies of the corpora
    assert total > answered  # and the others were left to Python


def test_the_common_chat_body_takes_the_kernel(fp: ContentFingerprinter) -> None:
    body = json.dumps(
        {
            "model": "gpt-4o",
            "temperature": 0.7,
            "max_tokens": 512,
            "stream": False,
            "stop": None,
            "messages": [
                {"role": "system", "content": "You are a helpful assistant. Today is 2024-05-01."},
                {"role": "user", "content": "Hi!\nWhat is 12 * 7? Think step by step."},
                {"role": "assistant", "content": "84"},
                {"role": "user", "content": 'Explain your reasoning: "why" \\ \t 84?'},
            ],
        }
    ).encode()
    assert check(fp, body)


EDGE_CASES = [
    b'{"messages": []}',
    b'{"messages": [], "system": "You are terse."}',
    b'{"system": "Be brief 123.", "messages": [{"role": "user", "content": "why 42?"}]}',
    b'{"messages": [{"role": "user", "content": "a"}], "system": null}',
    b'{"messages": [{"content": "no role, so a user turn"}, {"role": "model", "content": "x"},'
    b' {"role": "tool", "content": "t 1 2"}, {"role": "user", "content": "last one 77"}]}',
    b'{"messages": [{"role": "assistant", "content": "only an assistant"}]}',
    b'{"messages": [{"role": "developer", "content": "dev 1"}, {"role": "system", "content": ""},'
    b' {"role": "user", "content": null}, {"role": "user", "content": "u"}]}',
    b'{"messages": [{"role": "user", "content": "x"}], "messages": []}',  # duplicate key
    b'{"messages": [{"role": "user", "role": "system", "content": "x"}]}',
    b'{"messages": [{"role": "user", "content": "x", "parts": []}]}',
    b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "blocks"}]}]}',
    b'{"messages": [{"role": "user", "content": "caf\\u00e9"}]}',  # a non-ASCII escape
    b'{"messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}',
    b'{"messages": [{"role": "us\\u0065r", "content": "an escaped role"}]}',
    b'{"mess\\u0061ges": [{"role": "user", "content": "an escaped key"}]}',
    b'{"messages": [{"role": "user", "content": "cut',
    b'{"messages": [{"role": "user", "content": "x"}]} trailing',
    b'{"messages": [{"role": "user", "content": "x"}]}\n\t ',
    b' \r\n{"messages": [{"role": "user", "content": "leading space"}]}',
    b'\x0c{"messages": [{"role": "user", "content": "form feed first"}]}',
    b'{"messages": [{"role": "user", "content": "raw \x01 control"}]}',
    b'{"messages": [{"role": "user", "content": "x"}], "n": 01}',
    b'{"messages": [{"role": "user", "content": "x"}], "n": 1.}',
    b'{"messages": [{"role": "user", "content": "x"}], "n": -0.5e+10, "m": [true, false, {}]}',
    b'{"messages": [{"role": "user", "content": "x"}], "n": NaN}',
    b'{"messages": [{"role": "user", "content": "x"}], "deep": ' + b"[" * 70 + b"]" * 70 + b"}",
    b'{"messages": [{"role": "user", "content": "x"}], "deep": ' + b"[" * 30 + b"]" * 30 + b"}",
    b'{"messages": [{"role": "user", "content": "x"}], "o": {"a": [1, {"b": "c"}], "d": null}}',
    b'{"messages": [{"role": "user", "content": "x",}]}',
    b'{"messages": [{"role": "user", "content": "x"}],}',
    b'{"messages": {"role": "user", "content": "not a list"}}',
    b'{"messages": ["a bare string"]}',
    b'{"messages": [{}]}',
    b'{"messages": [{"type": "input_text"}]}',
    b'{"messages": [{"role": 3, "content": "x"}]}',
    b'{"messages": [{"role": "user", "content": "!!! ..."}]}',
    b'{"prompt": "legacy completions"}',
    b"[1, 2]",
    b"{}",
    b"not json at all",
    b'{"messages": [{"role": "user", "content": "' + b"word " * 600 + b'"}]}',
]


@pytest.mark.parametrize("body", EDGE_CASES)
def test_edge_cases_agree(fp: ContentFingerprinter, body: bytes) -> None:
    check(fp, body)


def test_the_kernel_leaves_what_it_does_not_read_to_python(fp: ContentFingerprinter) -> None:
    for body in (
        b'{"messages": [{"role": "user", "content": "caf\\u00e9"}]}',
        '{"messages": [{"role": "user", "content": "café"}]}'.encode(),
        b'{"messages": [{"role": "user", "content": "x"}], "messages": []}',
        b'{"messages": [{"role": "user", "content": "cut',
        b'{"contents": [{"parts": [{"text": "gemini"}]}]}',
        b'{"messages": [{"role": "user", "content": "x"}], "n": NaN}',
    ):
        assert fp._fingerprint_chat(body) is None


_TEXT = st.lists(
    st.sampled_from(
        [*"abcXYZ 0123456789 .,:;!?-'\n\t\"\\/{}[]", "step by step", "Question: ", "\x01", "é"]
    ),
    max_size=30,
).map("".join)
_ROLE = st.sampled_from(["user", "assistant", "system", "developer", "model", "tool", "", "User"])
_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-(10**20), 10**20), st.floats(), _TEXT)
_VALUE = st.recursive(
    _SCALAR,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_TEXT, inner, max_size=3)),
    max_leaves=6,
)


@st.composite
def chat_bodies(draw: st.DrawFn) -> bytes:
    messages = []
    for _ in range(draw(st.integers(0, 5))):
        message: dict[str, object] = {}
        message["role"] = draw(_ROLE)
        message["content"] = draw(st.one_of(_TEXT, st.none(), _TEXT))
        if draw(st.integers(0, 5)) == 0:
            message["name"] = draw(_VALUE)
        if draw(st.integers(0, 7)) == 0:
            del message["role"]
        messages.append(message)
    doc: dict[str, object] = {"model": "m", "messages": messages}
    if draw(st.booleans()):
        doc["system"] = draw(st.one_of(_TEXT, st.none()))
    if draw(st.booleans()):
        doc["extra"] = draw(_VALUE)
    keys = list(doc)
    random.Random(draw(st.integers(0, 100))).shuffle(keys)
    text = json.dumps(
        {key: doc[key] for key in keys},
        ensure_ascii=draw(st.booleans()),
        indent=draw(st.sampled_from([None, 0, 2])),
    )
    cut = draw(st.integers(0, 12))
    if cut == 0 and len(text) > 3:
        text = text[: draw(st.integers(1, len(text) - 1))]
    return text.encode("utf-8", "surrogatepass")


@settings(max_examples=400, deadline=None)
@given(chat_bodies())
def test_generated_chat_bodies_agree(body: bytes) -> None:
    fp = _SHARED
    check(fp, body)


_SHARED = ContentFingerprinter()
