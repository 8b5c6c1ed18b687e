"""Measures of issue 15 kept true as the code changes: the backends reach into no Guard
privates (item 1), and a ``# type: ignore`` in src/ is only one that a library's missing or
wrong stubs force, naming that library in a trailing comment (item 7)."""

from __future__ import annotations

import re
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
