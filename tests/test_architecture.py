"""The import graph keeps data flowing one way: no cycles, models never reach up into
evaluation, bundles, pipelines or the front doors, and imports inside functions only where a
heavy dependency is deferred on purpose (and said so)."""

from __future__ import annotations

import ast
from pathlib import Path

import leader

SRC = Path(leader.__file__).parent
ABOVE_MODELS = ("leader.evaluation", "leader.bundle", "leader.pipelines", "leader.recommend",
                "leader.report", "leader.serve", "leader.commands", "leader.cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def leader_imports(tree: ast.AST, top_level: bool) -> list[tuple[int, str]]:
    """(line, module) of every ``leader`` import, at module level or inside functions."""
    out = []
    scopes = [tree] if top_level else [n for n in ast.walk(tree)
                                       if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    for scope in scopes:
        nodes = scope.body if top_level else ast.walk(scope)
        for node in nodes:
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            out += [(node.lineno, n) for n in names if n == "leader" or n.startswith("leader.")]
    return out


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for _, target in leader_imports(ast.parse(path.read_text()), top_level=True):
            if target in modules and target != name:
                edges[name].add(target)
    return edges


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, path: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle.extend([*path, node, nxt])
                return True
            if nxt not in state and visit(nxt, [*path, node]):
                return True
        state[node] = 2
        return False

    for node in sorted(edges):
        if node not in state and visit(node, []):
            break
    assert not cycle, " -> ".join(cycle)


def test_models_do_not_reach_up():
    for path in (SRC / "models").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for top in (True, False):
            for line, target in leader_imports(tree, top):
                assert not target.startswith(ABOVE_MODELS), f"{path}:{line} imports {target}"


def test_function_level_imports_say_why():
    for path in SRC.rglob("*.py"):
        lines = path.read_text().splitlines()
        for line, target in leader_imports(ast.parse("\n".join(lines)), top_level=False):
            assert "deferred" in lines[line - 1], f"{path}:{line}: {target} imported in a function"
