"""Cost of prompt content fingerprinting (a script, not a test).

Prints, first, the cost of ``ContentFingerprinter.fingerprint`` on 10,000 distinct
~400-byte OpenAI chat bodies (a system prompt and a user prompt; never one hot body), read
by the chat-body kernel (the request path) and, in the same run, by the Python extraction
that reads every other body (what every body took before the kernel); then, for
OpenAI-style JSON chat bodies of 1, 4 and 16 KiB and for a typical 300-byte prompt, the
median cost per call and per KiB of body, the same through ``prime`` (the batch path
replay takes: 256 bodies a call), and a breakdown of the stages.

    .venv/bin/python benchmarks/bench_content.py [--quick]

Medians over several repeats; these machines are shared and noisy, so compare figures taken
in one run rather than across runs.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
import timeit
from collections.abc import Callable

import numpy as np

from abuseguard.intel._content_kernels import skeleton_hashes
from abuseguard.intel.content import (
    WORD_TABLE,
    ContentFingerprinter,
    elicitation_strength,
)

WORDS = (  # noqa: SIM905 (a word list reads better as text)
    "the of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there been one all we their has would when "
    "what will more if no out so said can who about up them some could him into its then "
    "two time like only my do over also new any these may first people because way even "
    "function value error server request model train distance speed price market country "
    "history river mountain energy protein language theorem integral matrix probability"
).split()


def prose(rng: random.Random, n_bytes: int) -> str:
    """Human-looking text: sentences of common words, some numbers, paragraphs."""
    out: list[str] = []
    size = 0
    while size < n_bytes:
        sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 18)))
        if rng.random() < 0.3:
            sentence += f" {rng.randint(2, 9999)}"
        sentence = sentence.capitalize() + rng.choice(".?.!")
        sentence += "\n\n" if rng.random() < 0.15 else " "
        out.append(sentence)
        size += len(sentence)
    return "".join(out)


def chat_body(rng: random.Random, n_bytes: int) -> bytes:
    """An OpenAI chat completions body of about ``n_bytes`` bytes (never more)."""

    def build(user: str) -> bytes:
        return json.dumps(
            {
                "model": "gpt-4o",
                "messages": [
                    {"role": "system", "content": "You are a helpful assistant. Answer precisely."},
                    {
                        "role": "user",
                        "content": "Solve the following problem step by step: " + user,
                    },
                ],
            }
        ).encode()

    text = prose(rng, n_bytes)
    low, high = 0, len(text)
    while low < high:  # the longest prefix of the text whose body fits
        middle = (low + high + 1) // 2
        if len(build(text[:middle])) <= n_bytes:
            low = middle
        else:
            high = middle - 1
    return build(text[:low])


SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a helpful assistant. Answer precisely.",
    "You are a senior Python engineer. Reply with code only.",
    "You are a math tutor. Today is 2024-05-01.",
)
OPENERS = (
    "Solve the following problem step by step: ",
    "Summarize this text: ",
    "",
    "Can you help me with this? ",
    "Translate into French: ",
)


def distinct_chat_bodies(rng: random.Random, count: int, size: int = 400) -> list[bytes]:
    """``count`` distinct OpenAI chat bodies of about ``size`` bytes: a system prompt of a
    few, an opener of a few, then prose."""
    bodies = []
    for _ in range(count):
        system = rng.choice(SYSTEM_PROMPTS)
        user = rng.choice(OPENERS) + prose(rng, size)
        head = {"model": "gpt-4o", "temperature": 0.7}
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        body = json.dumps({**head, "messages": messages})
        excess = len(body) - size
        if excess > 0:
            messages[1]["content"] = user[: max(20, len(user) - excess)]
            body = json.dumps({**head, "messages": messages})
        bodies.append(body.encode())
    return bodies


def per_body_us(func: Callable[[bytes], object], bodies: list[bytes], repeat: int) -> list[float]:
    """CPU µs per body of ``func`` over all ``bodies`` (each once a pass), one per pass."""
    runs = []
    for _ in range(repeat):
        start = time.process_time()
        for body in bodies:
            func(body)
        runs.append((time.process_time() - start) / len(bodies) * 1e6)
    return runs


def median_us(func: Callable[[], object], number: int, repeat: int) -> float:
    # CPU time of this process: the machines are shared, wall time would count the others.
    runs = timeit.repeat(func, number=number, repeat=repeat, timer=time.process_time)
    return statistics.median(runs) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    repeat = 3 if args.quick else 7
    rng = random.Random(7)
    fingerprinter = ContentFingerprinter()

    bodies = distinct_chat_bodies(rng, 10_000)
    size = statistics.mean(map(len, bodies))
    assert all(fingerprinter._fingerprint_chat(body) is not None for body in bodies[:100])
    print(f"fingerprint() of {len(bodies):,} distinct chat bodies of {size:.0f} B on average")
    print("(CPU µs per body; passes alternate between the two paths, so both see the same load):")

    def python_path(body: bytes) -> object:
        return fingerprinter._fingerprint_safely(body, None)

    kernel_runs: list[float] = []
    python_runs: list[float] = []
    for _ in range(repeat):
        kernel_runs += per_body_us(fingerprinter.fingerprint, bodies, 1)
        python_runs += per_body_us(python_path, bodies, 1)
    kernel = statistics.median(kernel_runs)
    python = statistics.median(python_runs)
    print(
        f"  chat-body kernel (request path)  median {kernel:5.2f}  range "
        f"{min(kernel_runs):.2f}-{max(kernel_runs):.2f}"
    )
    print(
        f"  Python extraction (before)       median {python:5.2f}  range "
        f"{min(python_runs):.2f}-{max(python_runs):.2f}"
    )
    print(f"  ratio before / after: {python / kernel:.2f}")

    print("fingerprint() on OpenAI chat JSON bodies (median):")
    print(f"  {'body':>9} {'µs/call':>9} {'µs/KiB':>8}")
    sizes: list[float] = []
    costs: list[float] = []
    for kib in (1, 4, 16):
        body = chat_body(rng, kib * 1024 - 64)  # stays under the 16 KiB cap, parses as JSON
        assert fingerprinter.fingerprint(body).prompt_found
        number = max(20, 4000 // kib)
        cost = median_us(lambda b=body: fingerprinter.fingerprint(b), number, repeat)
        print(f"  {len(body):>7} B {cost:>9.1f} {cost / (len(body) / 1024):>8.1f}")
        sizes.append(len(body) / 1024)
        costs.append(cost)
    per_kib = (costs[-1] - costs[-2]) / (sizes[-1] - sizes[-2])
    print(f"  marginal cost: {per_kib:.1f} µs per KiB of body (between the 4 and 16 KiB bodies)")

    typical_text = "Solve the following problem step by step: " + prose(rng, 250)
    typical_text = typical_text[:300]
    typical_json = json.dumps(
        {"model": "gpt-4o", "messages": [{"role": "user", "content": typical_text}]}
    ).encode()
    print("typical 300-byte prompt (median):")
    for label, body in (("raw text", typical_text.encode()), ("chat JSON", typical_json)):
        cost = median_us(lambda b=body: fingerprinter.fingerprint(b), 5000, repeat)
        print(f"  {label:>9} ({len(body)} B): {cost:.1f} µs/call")

    batch = 256
    print(f"prime() of {batch} distinct bodies, per body (median):")
    print(f"  {'body':>9} {'µs/body':>9} {'µs/KiB':>8}")
    for target_kib in (0.3, 1.0, 4.0, 16.0):
        bodies: list[tuple[bytes, str | None]] = [
            (chat_body(rng, int(target_kib * 1024) - 64), None) for _ in range(batch)
        ]
        size = statistics.mean(len(body) for body, _ in bodies)
        number = max(2, int(40 // target_kib))

        def prime(bodies: list[tuple[bytes, str | None]] = bodies) -> int:
            return fingerprinter.prime(bodies)

        cost = median_us(prime, number, repeat) / batch
        print(f"  {size:>7.0f} B {cost:>9.1f} {cost / (size / 1024):>8.1f}")

    print("stages on the 16 KiB body (median µs):")
    body = chat_body(rng, 16 * 1024 - 64)
    text = json.loads(body)["messages"][1]["content"]
    lowered = np.frombuffer(text.lower().encode(), dtype=np.uint8)
    stages: dict[str, Callable[[], object]] = {
        "json.loads": lambda: json.loads(body),
        "lower + encode": lambda: text.lower().encode(),
        "skeleton + SimHash kernel": lambda: skeleton_hashes(lowered, 3, WORD_TABLE),
        "elicitation markers": lambda: elicitation_strength(text),
    }
    for name, func in stages.items():
        print(f"  {name:<26} {median_us(func, 200, repeat):>8.1f}")


if __name__ == "__main__":
    main()
