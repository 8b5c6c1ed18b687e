"""Shared helpers for the benchmark scripts: percentiles, a throwaway redis-server, the
machine description, the small MaxMind world and a population of benign clients.

Nothing here is timed itself; it only keeps the scripts short and consistent.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent

PACKAGES = (
    "abuseguard",
    "starlette",
    "fastapi",
    "slowapi",
    "limits",
    "throttled-py",
    "orjson",
    "fastapi-limiter",
    "pyrate-limiter",
    "uvicorn",
    "uvloop",
    "httptools",
    "numba",
    "numpy",
    "redis",
    "hiredis",
    "maxminddb",
    "ua-parser",
)


# ----------------------------------------------------------------------------- statistics


def warm_kernels() -> None:
    """Compile (or load from Numba's cache) the decision and content kernels now, as
    `abuseguard warmup` does for a server image: the guards built after this run on the
    compiled kernels from their first request. Without it, on an empty cache, a benchmark
    would time the kernels' pure-Python twin and requests without content scoring."""
    from abuseguard.engine import kernel_set
    from abuseguard.intel import _content_kernels

    kernel_set.compiled()
    _content_kernels.compile_kernels()


def percentiles(samples_ns: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/p99.9 and mean of nanosecond samples, in microseconds."""
    if not samples_ns:
        return {"n": 0}
    ordered = sorted(samples_ns)
    n = len(ordered)

    def at(q: float) -> float:
        return ordered[min(n - 1, int(n * q))] / 1000.0

    return {
        "n": n,
        "p50_us": at(0.50),
        "p90_us": at(0.90),
        "p99_us": at(0.99),
        "p999_us": at(0.999),
        "mean_us": sum(ordered) / n / 1000.0,
    }


def timer_overhead_ns(rounds: int = 20000) -> float:
    """Median cost of two back-to-back perf_counter_ns calls (what each sample carries)."""
    clock = time.perf_counter_ns
    samples = []
    for _ in range(rounds):
        t0 = clock()
        samples.append(clock() - t0)
    samples.sort()
    return float(samples[len(samples) // 2])


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    if not n:
        return float("nan")
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def nested_get(results: Any, *path: str) -> Any:
    """``results[path[0]][path[1]]...``, or None when a key is missing or a level is not a dict
    (a part that failed or was skipped leaves its keys out)."""
    for key in path:
        if not isinstance(results, dict) or key not in results:
            return None
        results = results[key]
    return results


# ----------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@contextlib.contextmanager
def redis_server() -> Iterator[str | None]:
    """A redis-server on a free loopback port for the block; yields its URL (None if absent)."""
    exe = shutil.which("redis-server")
    if exe is None:
        yield None
        return
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="abuseguard-bench-redis-") as tmp:
        process = subprocess.Popen(
            [
                exe,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                tmp,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(port)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def rss_parts() -> dict[str, int]:
    """RssAnon (heap, tables, Python objects) and RssFile (pages of mapped files: shared
    libraries such as LLVM's) of this process in bytes, from /proc ({} where missing). How
    much of a library becomes resident depends on the kernel (large folios), not on us."""
    parts: dict[str, int] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("RssAnon:", "RssFile:")):
                    parts[line.split(":")[0]] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return parts


def rss_bytes() -> int:
    """Resident set size of this process, from /proc (0 where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# ----------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version_of(command: list[str]) -> str | None:
    if shutil.which(command[0]) is None:
        return None
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else None


def machine_info() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    try:
        load = os.getloadavg()
    except OSError:
        load = (0.0, 0.0, 0.0)
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in load],
        "packages": versions,
        "redis_server": _version_of(["redis-server", "--version"]),
        "wrk": _version_of(["wrk", "--version"]),
    }


# ----------------------------------------------------------------------------- intel world


def build_mmdb_world(directory: Path) -> dict[str, Path] | None:
    """The tests' small MaxMind world (tests/mmdb_fixtures.py), or None when unavailable."""
    tests_dir = str(REPO / "tests")
    if tests_dir not in sys.path:
        sys.path.insert(0, tests_dir)
    try:
        import mmdb_fixtures  # type: ignore[import-not-found]
    except ImportError:
        return None
    paths: dict[str, Path] = mmdb_fixtures.build_world(directory)
    return paths


def open_world(directory: Path) -> Any:
    """A GeoIntel over the world's databases in ``directory``; None if there are none."""
    from abuseguard.intel.geo import GeoIntel

    tests_dir = str(REPO / "tests")
    if tests_dir not in sys.path:
        sys.path.insert(0, tests_dir)
    try:
        import mmdb_fixtures
    except ImportError:
        return None
    paths: dict[str, Any] = {
        kind: directory / f"{db_type}-Test.mmdb"
        for kind, db_type in mmdb_fixtures.DATABASE_TYPES.items()
        if (directory / f"{db_type}-Test.mmdb").exists()
    }
    if not paths:
        return None
    return GeoIntel(**paths, today=lambda: mmdb_fixtures.FIXTURE_TODAY)


# ----------------------------------------------------------------------------- clients

UAS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15",
    "OpenAI/Python 1.40.0",
    "python-httpx/0.27.0",
)


WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "this",
    "are",
    "or",
    "from",
    "at",
    "which",
    "but",
    "have",
    "an",
    "they",
    "you",
    "were",
    "her",
    "she",
    "there",
    "been",
    "one",
    "all",
    "we",
    "their",
    "has",
    "would",
    "when",
    "what",
    "will",
    "more",
    "if",
    "no",
    "out",
    "so",
    "can",
    "who",
    "about",
    "up",
    "them",
    "some",
    "could",
    "into",
    "its",
    "then",
    "two",
    "time",
    "like",
    "only",
    "my",
    "do",
    "over",
    "also",
    "new",
    "any",
    "these",
    "may",
    "first",
    "people",
    "because",
    "way",
    "even",
    "function",
    "value",
    "error",
    "server",
    "request",
    "model",
    "train",
    "distance",
    "speed",
    "price",
    "market",
    "country",
    "history",
    "river",
    "mountain",
    "energy",
    "protein",
    "language",
    "theorem",
    "integral",
    "matrix",
    "probability",
    "recipe",
    "garden",
    "letter",
    "invoice",
    "budget",
    "meeting",
    "schedule",
    "poem",
    "story",
    "summary",
    "email",
    "resume",
    "cover",
    "travel",
    "weather",
    "flight",
    "hotel",
    "review",
]


def benign_prompt(rng: random.Random) -> str:
    """A prompt of one to three sentences of ordinary words: every one has its own shape."""
    sentences = []
    for _ in range(rng.randint(1, 3)):
        words = [rng.choice(WORDS) for _ in range(rng.randint(5, 24))]
        sentences.append(" ".join(words).capitalize() + rng.choice(".?."))
    return " ".join(sentences)


@dataclass(frozen=True, slots=True)
class Client:
    ip: str
    key: str
    ua: str


def chat_body(rng: random.Random, size: int = 400) -> bytes:
    """An OpenAI-style chat request of about ``size`` bytes whose user prompt is ordinary
    sentences, a different one for every call."""
    room = size - 166  # what the rest of the body takes
    prompt = benign_prompt(rng)
    while len(prompt) < room:
        prompt += " " + benign_prompt(rng)
    prompt = prompt[:room].rsplit(" ", 1)[0] + "?"
    body = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": prompt},
        ],
        "max_tokens": 512,
        "temperature": 0.7,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def benign_clients(n: int, *, seed: int = 7) -> list[Client]:
    """``n`` accounts, each on its own address (no two share one) in an ordinary network of
    the MaxMind world (a cable ISP, a mobile carrier, a campus, a GB range, IPv6 cable,
    unlisted space) and with one User-Agent, as real users and apps keep."""
    rng = random.Random(seed)

    def address() -> str:
        pick = rng.random()
        if pick < 0.45:
            return f"73.{rng.randrange(16, 32)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        if pick < 0.6:
            return f"172.{rng.randrange(56, 64)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        if pick < 0.7:
            return f"128.32.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        if pick < 0.75:
            return f"81.2.69.{rng.randrange(1, 255)}"
        if pick < 0.85:
            return f"2001:558:2:{rng.randrange(65536):x}::{rng.randrange(1, 65536):x}"
        octets = (rng.randrange(11, 40), rng.randrange(256), rng.randrange(256))
        return ".".join(map(str, octets)) + f".{rng.randrange(1, 255)}"

    seen: set[str] = set()

    def fresh_address() -> str:
        while True:
            ip = address()
            if ip not in seen:
                seen.add(ip)
                return ip

    return [Client(fresh_address(), f"sk-bench-{i:06d}", rng.choice(UAS)) for i in range(n)]
