"""The dependency rules of ARCHITECTURE.md, checked on the source.

- only ``agentos/http/`` imports Starlette or sse-starlette (and, with ``cli.py``, uvicorn);
- only ``agentos/backends/`` imports a database driver, SQLAlchemy or Alembic;
- only ``agentos/models/`` imports a model provider's SDK;
- only ``agentos/http/metrics.py`` imports prometheus_client; only ``cli.py`` click, rich and the
  Python client;
- the core (the flat modules of ``agentos/``) imports none of them, nor ``agentos.http``, and of
  ``backends/`` and ``models/`` only their contracts (``base.py``);
- no two modules of the package import each other, directly or through others.

Imports under ``if TYPE_CHECKING:`` are for the type checker only and do not count.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "agentos"

#: Third-party top-level modules, and the part of the package allowed to import them.
_ONLY_IN = {
    "starlette": ("agentos.http",),
    "sse_starlette": ("agentos.http",),
    "jwt": ("agentos.http",),
    "uvicorn": ("agentos.http", "agentos.cli"),
    "sqlalchemy": ("agentos.backends",),
    "alembic": ("agentos.backends",),
    "sqlmodel": ("agentos.backends",),
    "aiosqlite": ("agentos.backends",),
    "asyncpg": ("agentos.backends",),
    "redis": ("agentos.backends",),
    "openai": ("agentos.models",),
    "anthropic": ("agentos.models",),
    "prometheus_client": ("agentos.http.metrics",),
    "click": ("agentos.cli",),
    "rich": ("agentos.cli",),
    "agentos_client": ("agentos.cli",),
}
#: Modules outside the core that wire everything together.
_TOP = {"agentos", "agentos.__main__", "agentos.cli", "agentos.demo"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path) -> Iterator[str]:
    """Modules imported at run time (anywhere in the file but ``if TYPE_CHECKING:``)."""
    module = ast.parse(path.read_text(), str(path))
    stack: list[ast.AST] = [module]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level:
            yield "." * node.level + (node.module or "")  # relative: refused below
        elif isinstance(node, ast.ImportFrom) and node.module:
            # ``from package import module`` depends on that module; ``from module import name``
            # on the module (the graph keeps only names that are modules of the package).
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)
        stack.extend(ast.iter_child_nodes(node))


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _is_core(module: str) -> bool:
    return (
        module not in _TOP
        and module.count(".") == 1
        and not (PACKAGE / module.split(".")[1]).is_dir()
    )


def test_third_party_imports_stay_in_their_subpackage() -> None:
    wrong = []
    for module, path in _modules().items():
        for imported in _imports(path):
            top = imported.split(".")[0]
            allowed = _ONLY_IN.get(top)
            if allowed is not None and not _within(module, allowed):
                wrong.append(f"{module} imports {imported} (only {', '.join(allowed)} may)")
    assert not wrong, "\n".join(wrong)


def test_imports_are_absolute() -> None:
    relative = [
        f"{module}: {imported}"
        for module, path in _modules().items()
        for imported in _imports(path)
        if imported.startswith(".")
    ]
    assert not relative, "use absolute imports (the rules read them): " + ", ".join(relative)


def test_the_core_does_not_import_the_http_layer_or_a_backend() -> None:
    wrong = []
    for module, path in _modules().items():
        if not _is_core(module):
            continue
        for imported in _imports(path):
            contracts = ("agentos.backends.base", "agentos.models.base")
            if _within(imported, ("agentos.http",)) or (
                _within(imported, ("agentos.backends", "agentos.models"))
                and not _within(imported, contracts)
            ):
                wrong.append(f"{module} imports {imported}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    modules = _modules()
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        imported = [m for m in _imports(path) if m in modules and m != name]
        for dep in imported:
            # ``from agentos.http import forms`` names the package only to reach its module: the
            # edge goes to the module (a package's __init__ re-exports, it is not a dependency).
            if modules[dep].stem == "__init__" and any(m.startswith(dep + ".") for m in imported):
                continue
            graph[name].add(dep)
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in graph.get(node, ()):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_rules_catch_a_violation(tmp_path: Path) -> None:
    """The checks above can fail: a core module importing SQLAlchemy is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import sqlalchemy\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import starlette\n"
    )
    assert set(_imports(bad)) == {"sqlalchemy", "typing", "typing.TYPE_CHECKING"}
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    relative = tmp_path / "rel.py"
    relative.write_text("from . import x\nfrom ..y import z\n")
    assert set(_imports(relative)) == {".", "..y"}
    assert _is_core("agentos.runs") and not _is_core("agentos.http.app")
    assert not _is_core("agentos.cli") and not _is_core("agentos.http")
