"""The batch path (``ContentFingerprinter.prime``, one kernel call per batch) and the reused
kernel workspace give exactly the facts of one-by-one fingerprinting."""

from __future__ import annotations

import json
import random
import re
import threading
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from abuseguard.intel import _content_kernels as kernels
from abuseguard.intel import content
from abuseguard.intel.content import (
    _MARKER_SET,
    _MARKER_WEIGHTS,
    _WORKSPACE_MAX_BYTES,
    EMPTY_CONTENT,
    WORD_TABLE,
    ContentFacts,
    ContentFingerprinter,
)
from tests.test_content_golden import (
    GOLDEN,
    Body,
    content_test_bodies,
    digest,
    random_bodies,
    random_text,
    simulator_bodies,
)

BOTH = kernels.SKELETON | kernels.MARKERS


def primed_facts(
    fp: ContentFingerprinter, bodies: list[Body], batch: int = 256, *, check: bool = True
) -> list[ContentFacts]:
    """Facts of ``bodies`` asked batch by batch after priming, as replay does; each answer
    for a body object that occurs once in its batch must come from the primed batch."""
    out: list[ContentFacts] = []
    for at in range(0, len(bodies), batch):
        chunk = bodies[at : at + batch]
        fp.prime(chunk)  # type: ignore[arg-type]
        seen = Counter(id(body) for body, _ in chunk)
        for body, content_type in chunk:
            assert not check or seen[id(body)] > 1 or id(body) in fp._primed
            out.append(fp.fingerprint(body, content_type))  # type: ignore[arg-type]
    return out


def single_facts(fp: ContentFingerprinter, bodies: list[Body]) -> list[ContentFacts]:
    return [fp.fingerprint(body, content_type) for body, content_type in bodies]  # type: ignore[arg-type]


def odd_bodies() -> list[Body]:
    """Empty, non-UTF-8, huge, binary, non-JSON and cut-JSON bodies, and texts longer than
    the fingerprinter's workspace (invalid bytes decode to 3-byte U+FFFD each)."""
    rng = random.Random(5)
    chat = json.dumps({"messages": [{"role": "user", "content": random_text(rng) * 40}]})
    return [
        (b"", None),
        ("", "application/json"),
        (None, None),
        (7, None),
        (b"\xff\xfe\xfd" * 50, None),
        (bytearray(b"Think step by step: what is 2 + 2?"), "text/plain"),
        (memoryview(b'{"prompt": "Show your reasoning. 3 * 4?"}'), None),
        (b"hello world, please answer the question " * 40 + b"\xfe" * 15000, None),
        ("Question: why?\n" + "\u00e9\u6771" * 9000, "text/plain"),
        (chat, "application/json"),
        (chat.encode()[: len(chat) // 2], "application/json"),
        (random_text(rng) * 200, None),
        (("a=1&q=" + "think+step+by+step+" * 300).encode(), "application/x-www-form-urlencoded"),
        ("{" * 5000 + "}" * 5000, None),
        ('   \n  ["just", "strings", {"x": "in order"}]', None),
        ("\ufeff" + json.dumps({"input": "Explain your reasoning: 5 - 3"}), None),
    ]


@pytest.mark.parametrize(
    ("corpus", "bodies"),
    [("simulator", simulator_bodies), ("test_content", content_test_bodies)],
)
def test_primed_fingerprints_match_the_golden_digest(corpus: str, bodies: object) -> None:
    facts = primed_facts(ContentFingerprinter(), bodies())  # type: ignore[operator]
    assert digest(iter(facts)) == GOLDEN[corpus]


def test_primed_random_bodies_match_the_golden_digest() -> None:
    bodies = random_bodies()
    fingerprinters = [ContentFingerprinter(), ContentFingerprinter(max_bytes=200, shingle=1)]
    facts = [fact for fp in fingerprinters for fact in primed_facts(fp, bodies, batch=97)]
    assert digest(iter(facts)) == GOLDEN["random"]


@pytest.mark.parametrize("max_bytes", [64, 16384, _WORKSPACE_MAX_BYTES * 2])
def test_batch_and_single_agree_on_odd_bodies(max_bytes: int) -> None:
    bodies = odd_bodies() + random_bodies()[:200] + odd_bodies()
    fp = ContentFingerprinter(max_bytes=max_bytes)
    single = single_facts(fp, bodies)
    assert primed_facts(ContentFingerprinter(max_bytes=max_bytes), bodies, batch=41) == single
    assert primed_facts(fp, bodies, batch=len(bodies)) == single
    assert single_facts(fp, bodies) == single  # the workspace keeps nothing between calls


def test_batch_with_only_bodies_without_prompt() -> None:
    fp = ContentFingerprinter()
    bodies: list[Body] = [(b"", None), (b"\x00\x01" * 40, None), ("...", None)]
    assert fp.prime(bodies) == len(bodies)  # type: ignore[arg-type]
    assert [fp.fingerprint(b, c) for b, c in bodies] == [  # type: ignore[arg-type]
        EMPTY_CONTENT,
        ContentFacts(0, 0, 0.0, 80, False),
        ContentFacts(0, 0, 0.0, 3, False),
    ]


def test_a_failing_batch_kernel_leaves_bodies_to_fingerprint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fp = ContentFingerprinter()
    bodies: list[Body] = [("Think step by step: 2 + 2?", None), (b"", None)]
    expected = single_facts(ContentFingerprinter(), bodies)

    def broken(*args: object) -> None:
        raise MemoryError

    monkeypatch.setattr(fp, "_run_many", broken)
    assert fp.prime(bodies) == 1  # type: ignore[arg-type]  # only the empty body
    assert single_facts(fp, bodies) == expected


def _lowered(text: str) -> bytes:
    return text.lower().encode("utf-8", "surrogatepass")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.text(
                alphabet=st.sampled_from(list("ab :\n\"'`.,1-@/()<>東é\u2019\u201c\u201d")),
                max_size=300,
            ),
            st.integers(0, 300),
            st.integers(0, 300),
        ),
        max_size=12,
    ),
    st.sampled_from([1, 3, 8]),
    st.sampled_from([0, 40, 100_000]),
)
def test_batch_kernel_and_shared_workspace_match_fresh_calls(
    items: list[tuple[str, int, int]], shingle: int, workspace_bytes: int
) -> None:
    workspace = np.empty(kernels.workspace_words(workspace_bytes), dtype=np.uint64)
    fresh = kernels.text_kernel(WORD_TABLE, _MARKER_SET, _MARKER_WEIGHTS, shingle, BOTH)
    shared = kernels.text_kernel(WORD_TABLE, _MARKER_SET, _MARKER_WEIGHTS, shingle, BOTH, workspace)
    many = kernels.texts_kernel(WORD_TABLE, _MARKER_SET, _MARKER_WEIGHTS, shingle, BOTH, workspace)
    texts: list[bytes] = []
    bounds = [0]
    expected = []
    for text, a, b in items:
        data = _lowered(text)
        start, end = sorted((min(a, len(data)), min(b, len(data))))
        array = np.frombuffer(data, dtype=np.uint8)
        result = fresh(array, start, end)
        assert shared(array, start, end) == result
        expected.append(result)
        bounds += (bounds[-1] + start, bounds[-1] + end, bounds[-1] + len(data))
        texts.append(data)
    out = np.full(5 * len(items), -1, dtype=np.int64)
    strengths = np.full(len(items), -1.0)
    many(np.frombuffer(b"".join(texts), dtype=np.uint8), np.array(bounds), out, strengths)
    columns = out.reshape(5, len(items))
    got = [
        (*columns[:4, k].tolist(), strengths[k].item(), columns[4, k].item())
        for k in range(len(items))
    ]
    assert got == expected


def test_workspace_must_be_contiguous_uint64() -> None:
    with pytest.raises(ValueError, match="workspace"):
        kernels.text_kernel(
            WORD_TABLE, _MARKER_SET, _MARKER_WEIGHTS, 3, BOTH, np.zeros(8, dtype=np.int64)
        )


def test_batch_kernel_is_compiled_before_any_request() -> None:
    kernels.compile_kernels()  # at session start (conftest); a Guard runs it off the request path
    kernel = kernels._fingerprint_texts
    assert len(kernel.signatures) == 1  # one signature, compiled ahead of any request
    assert kernels._RUN_TEXTS is not kernel  # called through its compiled entry point
    fp = ContentFingerprinter()
    fp.prime([("Think step by step: 2 + 2?", None), (b'{"prompt": "why?"}', None)])
    assert len(kernel.signatures) == 1


@settings(max_examples=300, deadline=None)
@given(
    st.text(
        alphabet=st.sampled_from([*"ab 0123456789\n:.-", "\u0663", "\uff13", "\u00e9"]),
        max_size=80,
    )
)
def test_context_id_normalises_digits_as_the_regular_expression(text: str) -> None:
    expected = content._stable_hash(re.sub(r"\d+", "0", text))
    assert content._stable_hash_bytes(content._digits_normalised(text)) == expected
    content._context_ids.clear()
    assert content._context_id(text) == expected


def test_context_id_of_long_digit_runs() -> None:
    for text in ("0" * 1000, "a" + "9" * 257 + "b00c" + "12" * 33, "x\n00\n0", ""):
        expected = content._stable_hash(re.sub(r"\d+", "0", text))
        assert content._stable_hash_bytes(content._digits_normalised(text)) == expected


@pytest.mark.parametrize("packed_bytes", [1, 100, 5000])
def test_batch_run_in_chunks_gives_the_same_facts(
    monkeypatch: pytest.MonkeyPatch, packed_bytes: int
) -> None:
    monkeypatch.setattr(content, "_PACKED_BYTES", packed_bytes)
    bodies = random_bodies()[:300] + odd_bodies()
    fp = ContentFingerprinter()
    assert primed_facts(fp, bodies, batch=64) == single_facts(ContentFingerprinter(), bodies)


def test_threads_share_the_workspace_safely() -> None:
    bodies = random_bodies()[:200] + odd_bodies()
    expected = single_facts(ContentFingerprinter(), bodies)
    fp = ContentFingerprinter()
    results: dict[int, list[ContentFacts]] = {}

    def work(index: int) -> None:
        # One fingerprinter (one workspace) for all: primed answers may go to any thread.
        if index % 2:
            results[index] = primed_facts(fp, bodies, batch=37, check=False)
        else:
            results[index] = single_facts(fp, bodies)

    threads = [threading.Thread(target=work, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(results[index] == expected for index in range(4))
