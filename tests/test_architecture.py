"""The layout's rules, checked on the source: no import cycle between modules of `edgekit` and
`edgekit_agent` (every import counts: lazy ones inside functions, relative ones, and the package
``__init__`` modules an import runs), no module over 500 lines, and the agent never imports the host.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"edgekit": REPO / "edgekit", "edgekit_agent": REPO / "agent" / "edgekit_agent"}
MAX_LINES = 500


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for both packages (a package is its ``__init__``)."""
    found = {}
    for top, root in ROOTS.items():
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((top, *parts))] = path
    return found


def _imports(path: Path, name: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, absolute dotted name) of every import in the file, wherever it is."""
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield node.lineno, module
            yield from ((node.lineno, f"{module}.{a.name}") for a in node.names)


def _resolve(target: str, known: dict[str, Path]) -> str | None:
    while target and target not in known:
        target = target.rpartition(".")[0]
    return target or None


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules importing it runs (the target and its parent packages)."""
    known = modules()
    graph: dict[str, set[str]] = {m: set() for m in known}
    for name, path in known.items():
        is_package = path.name == "__init__.py"
        own_packages = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        for _, target in _imports(path, name, is_package):
            resolved = _resolve(target, known)
            if resolved is None:
                continue
            parts = resolved.split(".")
            for i in range(1, len(parts) + 1):
                step = ".".join(parts[:i])
                if step in known and step != name and step not in own_packages:
                    graph[name].add(step)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return sorted(found)


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_sees_lazy_relative_and_package_imports(tmp_path):
    assert cycles({"p": {"p.a"}, "p.a": {"p.b"}, "p.b": {"p"}, "q": set()}) == [["p", "p.a", "p.b"]]
    source = tmp_path / "daemon.py"
    source.write_text("def f():\n    from ..store import slots\n    import edgekit.ui\n")
    found = [t for _, t in _imports(source, "edgekit_agent.service.daemon", False)]
    assert found == ["edgekit_agent.store", "edgekit_agent.store.slots", "edgekit.ui"]


def test_no_module_over_500_lines():
    long = {name: n for name, path in modules().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def test_the_agent_never_imports_the_host():
    known = modules()
    offenders = [f"{path.relative_to(REPO)}:{line} imports {target}"
                 for name, path in known.items() if name.startswith("edgekit_agent")
                 for line, target in _imports(path, name, path.name == "__init__.py")
                 if target == "edgekit" or target.startswith("edgekit.")]
    assert offenders == []
