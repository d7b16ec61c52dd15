"""The architecture's rules, checked: `python tests/architecture.py` (and `make lint`, and the
suite through tests/test_architecture.py) fails on

- an import circle between modules of core/ and webui/ (imports inside functions count:
  they only defer the circle);
- an import of another module's private name (`from core.x import _helper`);
- a function over MAX_FUNCTION_LINES lines in core/ or webui/;
- a folder of core/ or webui/ that docs/architecture.md does not describe, or a folder it
  describes that is gone.

Written with `ast` rather than a linter plugin: ruff has no import-cycle rule, and the
folder map is ours.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "webui")
MAX_FUNCTION_LINES = 80
MAP = "docs/architecture.md"


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the checked packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imported(node: ast.ImportFrom, here: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = here.split(".") if is_package else here.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(mods: dict[str, Path],
                 root: Path = ROOT) -> tuple[dict[str, set[str]], list[str]]:
    """(module -> modules it imports, private-name imports as messages)."""
    graph: dict[str, set[str]] = {m: set() for m in mods}
    private = []
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                graph[name] |= {a.name for a in node.names if a.name in mods}
            elif isinstance(node, ast.ImportFrom):
                source = _imported(node, name, path.name == "__init__.py")
                for alias in node.names:
                    if f"{source}.{alias.name}" in mods:  # a submodule
                        graph[name].add(f"{source}.{alias.name}")
                    elif source in mods:
                        graph[name].add(source)
                        if alias.name.startswith("_") and source != name:
                            private.append(f"{path.relative_to(root)}:{node.lineno}: imports "
                                           f"the private name {alias.name} of {source}")
        graph[name].discard(name)
    return graph, private


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def long_functions(mods: dict[str, Path], root: Path = ROOT) -> list[str]:
    out = []
    for path in mods.values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    out.append(f"{path.relative_to(root)}:{node.lineno}: {node.name} is "
                               f"{length} lines (at most {MAX_FUNCTION_LINES}); split it")
    return out


def unmapped_folders(root: Path = ROOT) -> list[str]:
    """Folders of the packages against the `core/x/` names docs/architecture.md gives."""
    doc = root / MAP
    if not doc.is_file():
        return [f"{MAP} is missing"]
    named = set(re.findall(r"`((?:core|webui)(?:/[a-z_]+)*/)`", doc.read_text("utf-8")))
    folders = {f"{p.relative_to(root).as_posix()}/" for package in PACKAGES
               for p in [root / package, *(root / package).rglob("*")]
               if p.is_dir() and (p / "__init__.py").is_file()}
    return ([f"{f} is not described in docs/architecture.md" for f in sorted(folders - named)]
            + [f"docs/architecture.md describes {f}, which does not exist"
               for f in sorted(named - folders)])


def problems(root: Path = ROOT) -> list[str]:
    mods = modules(root)
    graph, private = import_graph(mods, root)
    found = [f"import circle: {' -> '.join(group)}" for group in cycles(graph)]
    return found + private + long_functions(mods, root) + unmapped_folders(root)


def main() -> int:
    found = problems()
    for line in found:
        print(line, file=sys.stderr)
    print(f"architecture: {len(found)} problem(s)" if found else "architecture: ok")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
