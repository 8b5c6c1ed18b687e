"""Measures of issue 15 kept true as the code changes: the backends reach into no Guard
privates (item 1), and a ``# type: ignore`` in src/ is only one that a library's missing or
wrong stubs force, naming that library in a trailing comment (item 7)."""

from __future__ import annotations

import gc
import re
import types
from pathlib import Path

import abuseguard

PACKAGE_DIR = Path(abuseguard.__file__).parent
# Libraries whose stubs force an ignore today: numba (unannotated) and typeshed's json.
STUB_LIBRARIES = frozenset({"numba", "typeshed"})
_IGNORE = re.compile(r"#\s*type:\s*ignore\b(?P<codes>\[[^\]]*\])?(?P<rest>.*)$")
_NAMED = re.compile(r"\s+#\s*(?P<library>[\w.-]+)")


def _lines(folder: Path) -> list[tuple[str, int, str]]:
    return [
        (str(path.relative_to(PACKAGE_DIR.parent)), number, line)
        for path in sorted(folder.rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
    ]


def unexcused_ignores(lines: list[tuple[str, int, str]]) -> list[str]:
    """The ignores without an error code or without the stub library that forces them."""
    found = []
    for where, number, line in lines:
        ignore = _IGNORE.search(line)
        if ignore is None:
            continue
        named = _NAMED.match(ignore["rest"])
        if ignore["codes"] is None or named is None or named["library"] not in STUB_LIBRARIES:
            found.append(f"{where}:{number}: {line.strip()}")
    return found


def test_the_ignore_reader_tells_excused_from_unexcused() -> None:
    lines = [
        ("m.py", 1, "x = f()  # type: ignore[no-untyped-call]  # numba"),
        ("m.py", 2, "y = g()  # type: ignore[arg-type]"),
        ("m.py", 3, "z = h()  # type: ignore  # numba"),
        ("m.py", 4, "w = k()  # type: ignore[misc]  # the reader always sets it"),
        ("m.py", 5, "v = 1  # an ordinary comment"),
    ]
    assert [line.split(":")[1] for line in unexcused_ignores(lines)] == ["2", "3", "4"]


def test_every_type_ignore_in_src_is_forced_by_a_named_stub_library() -> None:
    assert unexcused_ignores(_lines(PACKAGE_DIR)) == []


def test_the_backends_touch_no_guard_privates() -> None:
    touching = [
        f"{where}:{number}: {line.strip()}"
        for where, number, line in _lines(PACKAGE_DIR / "backends")
        if re.search(r"guard\._", line)
    ]
    assert touching == []


def test_no_module_reads_the_guards_privates() -> None:
    """Stages, the middleware and the WebSocket guard use the Guard's public attributes
    (``exempt_paths``, ``request_time``), never its private ones."""
    touching = [
        f"{where}:{number}: {line.strip()}"
        for where, number, line in _lines(PACKAGE_DIR)
        if re.search(r"\bguard\._", line) and where != "abuseguard/guard.py"
    ]
    assert touching == []


def _reachable(roots: list[object], skip: tuple[type, ...]) -> list[object]:
    """Every object reachable from ``roots`` through references, not entering ``skip``'s
    instances, modules or classes."""
    seen: dict[int, object] = {}
    todo = list(roots)
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, (*skip, type, types.ModuleType)):
            continue
        seen[id(obj)] = obj
        todo.extend(gc.get_referents(obj))
    return list(seen.values())


def test_no_stage_and_no_backend_port_holds_the_guard() -> None:
    """Data flows one way: the stages get the parts they read, never the Guard, and a
    round-trip backend's port (`GuardStages`) reaches nothing of it; nor does the memory
    backend (its clock is the guard's `RequestTime`, not a method of the Guard)."""
    from abuseguard import Guard, Limits, Policy, TokenBucket
    from abuseguard.backends.base import Backend

    policy = Policy(
        bucket=TokenBucket("10/second", burst=10),
        routes={"/chat": Limits(bucket=TokenBucket("5/second", burst=5))},
    )
    memory_guard = Guard(policy, observers=[lambda info, decision: None])
    stages = [
        memory_guard.reader,
        memory_guard.engine_run,
        memory_guard.decider,
        memory_guard.settlement,
        memory_guard.route_limits,
    ]
    assert not any(obj is memory_guard for obj in _reachable(stages, (Backend,)))
    assert not any(obj is memory_guard for obj in _reachable([memory_guard.backend], ()))
    redis_guard = Guard(policy, "redis://127.0.0.1:1/0")  # attached, never connected
    port = getattr(redis_guard.backend, "stages", None)
    assert port is not None
    assert not any(obj is redis_guard for obj in _reachable([port], (Backend,)))
