"""Golden digests of ``ContentFingerprinter.fingerprint``: optimisations must not change a bit.

Three corpora, each with its own digest so a failure says which one moved:

- ``simulator``: the request bodies of a small fixed-seed simulator run (they change when
  the simulator's prompts change; then regenerate, after checking that the fingerprinter
  did not change too);
- ``test_content``: prompts built from the corpora and templates of tests/test_content.py,
  wrapped in every API shape;
- ``random``: seeded random bodies (API shapes, unicode, punctuation, binary, cut JSON,
  form bodies, odd content types) and a few non-default settings.

The digest is sha256 over the repr of every (simhash, template_id, round(elicitation, 6),
n_bytes, prompt_found, context_id). When a change to the fingerprints is intended, print
the new digests with ``.venv/bin/python tests/test_content_golden.py`` and update them.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from collections.abc import Callable, Iterator

import pytest

from abuseguard.intel.content import ELICITATION_MARKERS, ContentFacts, ContentFingerprinter
from abuseguard.sim import simulate
from tests.test_content import FREE_PROMPTS, TEMPLATES, random_passage, random_problem

Body = tuple[object, str | None]

GOLDEN = {
    "simulator": "82375aba2a8d455fa09866726c236eaedfc9063adfac274b7f936c2818911fc2",
    "test_content": "eb978618578390652f1f5ae0506848635f3429ff7752e01990f625e05b7d9c9a",
    "random": "045d87d5aa0540ccd373559597a72dd331dcbbf69e136cc92e8e68ae1e36ad87",
}


def digest(facts: Iterator[ContentFacts]) -> str:
    sha = hashlib.sha256()
    for f in facts:
        row = (f.simhash, f.template_id, round(f.elicitation, 6), f.n_bytes, f.prompt_found)
        sha.update(repr((*row, f.context_id)).encode())
    return sha.hexdigest()


def simulator_bodies() -> list[Body]:
    out = io.StringIO()
    simulate(out, seed=3, hours=0.1, scale=0.2)
    bodies: list[Body] = []
    for line in out.getvalue().splitlines():
        record = json.loads(line)
        if record.get("body"):
            bodies.append((record["body"].encode(), record["headers"].get("content-type")))
    return bodies[:900]


def _shapes(system: str, user: str, history: list[tuple[str, str]]) -> list[Body]:
    """One prompt in every API shape the fingerprinter reads."""
    turns = [{"role": role, "content": text} for role, text in history]
    chat = {"model": "m", "messages": [{"role": "system", "content": system}, *turns]}
    chat["messages"].append({"role": "user", "content": user})
    parts = {
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": system}]},
            {"role": "user", "content": [{"type": "text", "text": user}, {"type": "image"}]},
        ]
    }
    anthropic = {
        "system": [{"type": "text", "text": system}],
        "messages": [
            *turns,
            {"role": "user", "content": user},
            {"role": "assistant", "content": "<think>"},
        ],
    }
    gemini = {
        "systemInstruction": {"parts": [{"text": system}]},
        "contents": [
            *(
                {"role": "model" if r == "assistant" else r, "parts": [{"text": t}]}
                for r, t in history
            ),
            {"role": "user", "parts": [{"text": user}]},
        ],
    }
    responses = {"instructions": system, "input": [*turns, {"role": "user", "content": user}]}
    legacy = {"prompt": [user, system]}
    other = {"query": user, "meta": {"system": [system, 3, None]}}
    return [
        (json.dumps(chat).encode(), "application/json"),
        (json.dumps(parts), None),
        (json.dumps(anthropic, ensure_ascii=False).encode("utf-8", "surrogatepass"), None),
        (json.dumps(gemini).encode(), "application/json; charset=utf-8"),
        (json.dumps(responses).encode(), None),
        (json.dumps({"input": user}).encode(), None),
        (json.dumps(legacy).encode(), None),
        (json.dumps(other).encode(), None),
        (user, None),
        (user.encode("utf-8", "surrogatepass"), "text/plain"),
    ]


def content_test_bodies() -> list[Body]:
    rng = random.Random(11)
    bodies: list[Body] = []
    prompts = list(FREE_PROMPTS)
    for family in sorted(TEMPLATES):
        prompts.extend(TEMPLATES[family](rng) for _ in range(6))
    for index, prompt in enumerate(prompts):
        history = [("user", rng.choice(FREE_PROMPTS)), ("assistant", random_passage(rng))]
        system = f"You are assistant #{index}. Today is 2024-05-{index % 28 + 1:02d}."
        shapes = _shapes(system, prompt, history[: index % 3])
        bodies.extend(shapes[index % 2 :: 2] if index % 5 else shapes)
    return bodies


_ALPHABET = (
    list("abcdefghij klmnop qrstuvwxyz ABCDEF 0123456789 \n\n\t .,;:!?-_'\"`()[]{}<>@/#*=+\\")
    + list(
        "éüßçñøåœ東京都中文字日本語한국어русскийΩπ€“”«»…—・。、"
        "\u2018\u2019\uff01\uff1f\uff1a\uff08\uff09"
    )
    + ["\u2028", "\ufeff", "\x00", "\x7f", "😀", "👍🏽", "\ud800"]
)
_WORDS = [
    # The markers of the corpus as it was written (the list has grown since).
    *(phrase for phrase, _ in ELICITATION_MARKERS[:40]),
    "please",
    "answer",
    "question:",
    "context:\n",
    "Review:",
    "step",
    "```python\nx = 1\n```",
    "https://example.com/a?b=c",
    "user@example.org",
    "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6",
    "12,345.67",
    "2024-05-01",
    "\n\n",
    "Solve for x:",
    "Translate the following text into French:",
]


def random_text(rng: random.Random) -> str:
    pieces: list[str] = []
    for _ in range(rng.randint(0, 40)):
        roll = rng.random()
        if roll < 0.35:
            pieces.append(rng.choice(_WORDS))
        elif roll < 0.6:
            pieces.append("".join(rng.choice(_ALPHABET) for _ in range(rng.randint(1, 12))))
        elif roll < 0.8:
            pieces.append(random_problem(rng))
        else:
            pieces.append(rng.choice(FREE_PROMPTS))
    return rng.choice([" ", "\n", "", ". ", ":\n"]).join(pieces)


def _random_json(rng: random.Random, depth: int = 0) -> object:
    roll = rng.random()
    if depth > 3 or roll < 0.3:
        return rng.choice([None, True, 7, 2.5, random_text(rng), "", [1, 2]])
    keys = ["messages", "content", "role", "text", "parts", "input", "prompt", "system"]
    keys += ["contents", "instructions", "type", "x", "systemInstruction"]
    if roll < 0.6:
        return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    roles = ["user", "assistant", "system", "developer", "model", "tool", 3]
    if roll < 0.75:
        return {"role": rng.choice(roles), "content": _random_json(rng, depth + 1)}
    return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def random_bodies() -> list[Body]:
    rng = random.Random(20240501)
    types = [None, None, "application/json", "text/plain", "application/x-www-form-urlencoded"]
    types += ["APPLICATION/JSON", "application/octet-stream"]
    bodies: list[Body] = []
    for index in range(700):
        kind = index % 7
        content_type = rng.choice(types)
        if kind == 0:
            history = [(rng.choice(["user", "assistant"]), random_text(rng)) for _ in range(3)]
            shapes = _shapes(random_text(rng), random_text(rng), history[: rng.randint(0, 3)])
            body, _ = rng.choice(shapes)
            bodies.append((body, content_type))
        elif kind == 1:
            bodies.append(
                (json.dumps(_random_json(rng), ensure_ascii=rng.random() < 0.5), content_type)
            )
        elif kind == 2:
            bodies.append((random_text(rng), content_type))
        elif kind == 3:
            data = random_text(rng).encode("utf-8", "surrogatepass")
            cut = rng.randint(0, len(data))
            bodies.append((data[:cut] + rng.randbytes(rng.randint(0, 8)), content_type))
        elif kind == 4:
            body = json.dumps({"messages": [{"role": "user", "content": random_text(rng)}]})
            bodies.append((body[: rng.randint(0, len(body))].encode(), content_type))
        elif kind == 5:
            prefix = rng.choice([b"", b"\xef\xbb\xbf", b"  \n", b"\xef\xbb\xbf "])
            body = json.dumps({"prompt": random_text(rng)}).encode()
            bodies.append((prefix + body, content_type))
        else:
            raw = rng.randbytes(rng.randint(0, 300))
            bodies.append((rng.choice([raw, bytearray(raw), memoryview(raw)]), content_type))
    bodies.extend([(None, None), (b"", None), ("", "application/json"), (12345, None)])
    return bodies


def _facts(
    fingerprinters: list[ContentFingerprinter], bodies: list[Body]
) -> Iterator[ContentFacts]:
    for fingerprinter in fingerprinters:
        for body, content_type in bodies:
            yield fingerprinter.fingerprint(body, content_type)  # type: ignore[arg-type]


CORPORA: dict[str, Callable[[], Iterator[ContentFacts]]] = {
    "simulator": lambda: _facts([ContentFingerprinter()], simulator_bodies()),
    "test_content": lambda: _facts([ContentFingerprinter()], content_test_bodies()),
    "random": lambda: _facts(
        [ContentFingerprinter(), ContentFingerprinter(max_bytes=200, shingle=1)], random_bodies()
    ),
}


@pytest.mark.parametrize("corpus", sorted(CORPORA))
def test_fingerprints_match_the_golden_digest(corpus: str) -> None:
    assert digest(CORPORA[corpus]()) == GOLDEN[corpus]


if __name__ == "__main__":
    for name, facts in CORPORA.items():
        print(f'    "{name}": "{digest(facts())}",')
