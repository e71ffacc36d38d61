"""Check hpsearch's import structure: no circle among its modules, and package arrows that
go one way (cli/api -> search -> {training, tracking, serving} -> {models, data_utils,
studies}). Every import counts, also one inside a function.

    python tools/import_graph.py        # exit 1 and a list of problems if there are any
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "hpsearch"
# Layer of each package (and top-level module): a module may import only from its own
# package or from packages of a lower layer.
LAYERS = {
    "__init__": 5,  # the root package: hpsearch.run
    "cli": 4, "api": 4,
    "search": 3,
    "training": 2, "tracking": 2, "serving": 2,
    "models": 1, "data_utils": 1, "studies": 1,
    "params": 0, "errors": 0, "redact": 0, "_imports": 0, "_testhooks": 0, "defaults": 0,
}
# Within a layer, the peers may import each other only this way (no circle between them).
PEER_ORDER = {"cli": 1, "api": 0, "serving": 2, "tracking": 1, "training": 0,
              "studies": 2, "models": 1, "data_utils": 0, "defaults": 1, "errors": 0}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str) -> set[str]:
    found = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("hpsearch")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            if base.startswith("hpsearch"):
                found |= {f"{base}.{a.name}" for a in node.names} | {base}
    return found


def main() -> int:
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {m: {i for i in imports_of(p, m) if i in modules and i != m}
             for m, p in modules.items()}
    problems = []
    for m, targets in graph.items():
        top = m.split(".")[1] if "." in m else "__init__"
        for t in targets:
            target_top = t.split(".")[1] if "." in t else "__init__"
            if top == target_top or t == "hpsearch":
                continue
            up = LAYERS[target_top] > LAYERS[top]
            same = LAYERS[target_top] == LAYERS[top]
            if up or (same and PEER_ORDER.get(target_top, 0) >= PEER_ORDER.get(top, 0)):
                problems.append(f"{m} imports {t}: an arrow that runs back up")
    # Circles: depth-first search over the module graph.
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                problems.append("import circle: " + " -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    for problem in problems:
        print(problem)
    print(f"{len(modules)} modules, {sum(map(len, graph.values()))} imports, "
          f"{len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
