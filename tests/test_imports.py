"""No import circles inside the package (issue 15 item 7), and every module imports.

The cycle check reads the import statements of every module of src/abuseguard with ``ast``:
module-level and function-level imports count (a function-level import is how a circle is
usually hidden), imports under ``if TYPE_CHECKING:`` do not (they never run).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import abuseguard

PACKAGE_DIR = Path(abuseguard.__file__).parent

KNOWN_CIRCLES: frozenset[frozenset[str]] = frozenset()


def module_files() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules that ``module`` imports when it runs (TYPE_CHECKING aside)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for statement in child.orelse:
                    visit_statement(statement)
            else:
                visit_statement(child)

    def visit_statement(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in modules:
                    found.add(submodule)
                elif base in modules:
                    found.add(base)
        else:
            visit(node)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    found.discard(module)
    return found


def import_circles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[frozenset[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph[successor]))))
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        circles.append(frozenset(component))
    return circles


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: runtime_imports(name, path, modules) for name, path in modules.items()}


def test_the_cycle_check_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert import_circles(graph) == [frozenset({"a", "b", "c"})]


def test_the_import_reader_skips_type_checking_and_sees_function_imports(
    tmp_path: Path,
) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "import pkg.a\n"
        "if TYPE_CHECKING:\n"
        "    from pkg.b import B\n"
        "def f():\n"
        "    from pkg import c\n"
        "    from .d import D\n"
    )
    modules = {name: source for name in ("pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.d", "pkg.m")}
    assert runtime_imports("pkg.m", source, modules) == {"pkg.a", "pkg.c", "pkg.d"}


def test_no_import_circles_in_the_package() -> None:
    graph = import_graph()
    assert "abuseguard.middleware" in graph and "abuseguard.backends.memory" in graph
    unexpected = [sorted(c) for c in import_circles(graph) if c not in KNOWN_CIRCLES]
    assert unexpected == []


def test_websocket_does_not_know_the_middleware_even_for_types() -> None:
    source = (PACKAGE_DIR / "websocket.py").read_text(encoding="utf-8")
    imported = {
        node.module
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert "abuseguard.middleware" not in imported


def test_every_module_imports_and_exports_what_it_lists() -> None:
    modules = sorted(module_files())
    script = (
        "import importlib, sys\n"
        "bad = []\n"
        f"for name in {modules!r}:\n"
        "    module = importlib.import_module(name)\n"
        "    listed = getattr(module, '__all__', ())\n"
        "    bad += [f'{name}.{n}' for n in listed if not hasattr(module, n)]\n"
        "print('\\n'.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
