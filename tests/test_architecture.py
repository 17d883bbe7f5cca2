"""The structure docs/architecture.md draws: no import circle, packages that depend one way."""

import ast

from conftest import ROOT

PACKAGES = ("toymodels", "sweeps", "analysis", "tms")
ALLOWED = {"toymodels": {"toymodels"}, "sweeps": {"sweeps", "toymodels"},
           "analysis": {"analysis", "toymodels.metrics"}, "tms": set(PACKAGES)}


def _graph() -> dict[str, set[str]]:
    """Module -> project modules it imports, at module level or inside functions."""
    modules = {f"{p}.{f.stem}" if f.stem != "__init__" else p: f
               for p in PACKAGES for f in (ROOT / p).glob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = package + (f".{base}" if base else "")
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            found |= {t for t in targets if t.split(".")[0] in PACKAGES and t != name}
        graph[name] = found
    return graph


def test_no_import_circles():
    graph = _graph()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_packages_depend_one_way():
    for module, targets in _graph().items():
        allowed = ALLOWED[module.split(".")[0]]
        for target in targets:
            assert target.split(".")[0] in allowed or target in allowed, f"{module} imports {target}"
    assert "analysis" not in {t.split(".")[0] for m, ts in _graph().items() if m.startswith("sweeps") for t in ts}


def test_the_sweep_service_names_its_parts_by_role():
    names = {p.stem for p in (ROOT / "sweeps").glob("*.py")}
    assert {"driver", "trial", "writer", "store", "lock", "plan"} <= names
