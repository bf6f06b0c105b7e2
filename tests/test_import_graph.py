"""The import graph of edgedet, converters and runtime: no circles, and every arrow points the house's way.

The graph is read statically (every module ast-parsed, nothing imported), so a circle or a wrong-way import
fails here with the chain that makes it, whether or not some test happens to import the modules in the
order that would trip it.

What counts:
- Direction (`runtime <- edgedet <- converters`: runtime imports neither, and neither torch; edgedet never
  imports converters): EVERY import counts, at module level, inside functions, under `if TYPE_CHECKING:`,
  and dotted module names in string constants (what `importlib.import_module` and the registries'
  "module:attr" targets load). A lazy import is still a dependency: the package cannot ship without the other.
- Circles: every import statement counts, at module level AND inside functions. A function-level import
  that closes a circle is how two modules that need each other hide it; the circle is still there (each
  module's meaning depends on the other, and the import order decides what works), so the shared part
  belongs in a third module. Left out: `if TYPE_CHECKING:` imports (they never run), dotted names in strings
  (a registry that fills itself by importing a module named in a string is the plug-in point by design: the
  module it names registers into it), and implicit imports of parent packages (`import a.b.c` runs
  `a/__init__` first; Python has the parent in sys.modules before any child runs).
"""
from __future__ import annotations

import ast
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "edgedet", "converters")
# What each package must never import, at any depth or laziness.
FORBIDDEN: Dict[str, Tuple[str, ...]] = {
    "runtime": ("edgedet", "converters", "torch", "torchvision"),
    "edgedet": ("converters",),
    "converters": (),
}
_DOTTED = re.compile(r"^((?:runtime|edgedet|converters)(?:\.\w+)+)(?::\w+)?$")


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str  # a module of ours, or a top-level third-party name
    line: int
    kind: str  # "module" (runs at import time), "function", "type-checking" or "string"

    @property
    def makes_circles(self) -> bool:
        return self.kind in ("module", "function")

    def where(self) -> str:
        return f"{self.importer}:{self.line} ({self.kind})"


def module_files(repo: Path = REPO, packages: Iterable[str] = PACKAGES) -> Dict[str, Path]:
    """Dotted module name -> file, for every .py file under the packages."""
    modules: Dict[str, Path] = {}
    for package in packages:
        for path in sorted((repo / package).rglob("*.py")):
            parts = list(path.relative_to(repo).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _ImportCollector(ast.NodeVisitor):
    """Every import in one module, each with whether it runs at import time."""

    def __init__(self, name: str, is_package: bool, modules: Dict[str, Path]):
        self.name, self.modules = name, modules
        self.package = name if is_package else name.rpartition(".")[0]
        self.edges: List[Edge] = []
        self._kind = ["module"]

    def _add(self, target: str, line: int, kind: Optional[str] = None) -> None:
        edge = Edge(self.name, target, line, kind or self._kind[-1])
        if target != self.name and edge not in self.edges:
            self.edges.append(edge)

    def _ours(self, dotted: str) -> Optional[str]:
        """The longest prefix of `dotted` that is one of our modules (None for third-party names)."""
        parts = dotted.split(".")
        for n in range(len(parts), 0, -1):
            candidate = ".".join(parts[:n])
            if candidate in self.modules:
                return candidate
        return None

    def _target(self, dotted: str) -> str:
        return self._ours(dotted) or dotted.split(".")[0]

    def _nested(self, node: ast.AST, kind: str) -> None:
        # Once inside a function, everything below stays lazy; TYPE_CHECKING wins over module level only.
        outer = self._kind[-1]
        self._kind.append(outer if outer == "function" else kind)
        self.generic_visit(node)
        self._kind.pop()

    def visit_FunctionDef(self, node: ast.AST) -> None:
        self._nested(node, "function")

    visit_AsyncFunctionDef = visit_Lambda = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        self.visit(node.test)
        for stmt in node.body:
            self._kind.append(self._kind[-1] if self._kind[-1] == "function" else "type-checking")
            self.visit(stmt)
            self._kind.pop()
        for stmt in node.orelse:
            self.visit(stmt)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(self._target(alias.name), node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base_parts = self.package.split(".") if self.package else []
            if node.level - 1 > len(base_parts):
                raise AssertionError(f"{self.name}:{node.lineno}: relative import climbs above the top package")
            base_parts = base_parts[: len(base_parts) - (node.level - 1)]
            base = ".".join(base_parts + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            # `from pkg import sub` imports the submodule; `from mod import attr` the module.
            self._add(submodule if submodule in self.modules else self._target(base), node.lineno)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str):
            match = _DOTTED.match(node.value)
            if match and match.group(1) in self.modules:  # a whole module name, not an entry-point group
                self._add(match.group(1), node.lineno, "string")


def import_edges(modules: Dict[str, Path]) -> List[Edge]:
    edges: List[Edge] = []
    for name, path in modules.items():
        collector = _ImportCollector(name, path.name == "__init__.py", modules)
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        edges.extend(collector.edges)
    return edges


def _strongly_connected(graph: Dict[str, Dict[str, Edge]]) -> List[List[str]]:
    """Tarjan's components with more than one module (iterative: the graph may be deep)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, {})))))
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
    return found


def _shortest_cycle(graph: Dict[str, Dict[str, Edge]], inside: Set[str], start: str) -> List[Edge]:
    """The shortest chain from `start` back to itself, staying inside its component."""
    came_from: Dict[str, Edge] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child, edge in sorted(graph.get(node, {}).items()):
            if child not in inside:
                continue
            if child == start:
                chain = [edge]
                while chain[0].importer != start:
                    chain.insert(0, came_from[chain[0].importer])
                return chain
            if child not in came_from:
                came_from[child] = edge
                queue.append(child)
    raise AssertionError(f"no cycle through {start} in its own component")  # cannot happen for Tarjan's output


def circles(edges: Iterable[Edge]) -> List[List[Edge]]:
    """Circles of import statements (module or function level) among our modules: in each tangle, the
    shortest circle through each of its modules, each circle once, starting at its first module by name."""
    graph: Dict[str, Dict[str, Edge]] = {}
    for edge in edges:
        if edge.makes_circles and edge.imported.split(".")[0] in PACKAGES:
            graph.setdefault(edge.importer, {}).setdefault(edge.imported, edge)
    found: Dict[frozenset, List[Edge]] = {}
    for members in _strongly_connected(graph):
        for start in members:
            chain = _shortest_cycle(graph, set(members), start)
            first = min(range(len(chain)), key=lambda i: chain[i].importer)
            found.setdefault(frozenset((e.importer, e.imported) for e in chain), chain[first:] + chain[:first])
    return sorted(found.values(), key=lambda c: [e.importer for e in c])


def wrong_way(edges: Iterable[Edge]) -> List[Edge]:
    return [e for e in edges if e.imported.split(".")[0] in FORBIDDEN[e.importer.split(".")[0]]]


def describe_chain(chain: List[Edge]) -> str:
    steps = [f"{e.importer} (line {e.line}{', in a function' if e.kind == 'function' else ''})" for e in chain]
    return " -> ".join(steps) + f" -> {chain[-1].imported}"


# Circles known and owned elsewhere, by the module pair that closes them. Each entry must still be found
# (a stale one fails below), so the list only shrinks.
KNOWN_CIRCLES: set = set()  # circles allowed for now (none); the stale-entry check keeps this list shrinking


@pytest.fixture(scope="module")
def edges() -> List[Edge]:
    return import_edges(module_files())


def test_no_import_circles(edges):
    found = circles(edges)
    new = [c for c in found if frozenset(e.importer for e in c) not in KNOWN_CIRCLES]
    if new:
        pytest.fail("import circles (module (line of the import) -> ...; move what both need into a third module):\n"
                    + "\n".join(describe_chain(chain) for chain in new), pytrace=False)
    stale = KNOWN_CIRCLES - {frozenset(e.importer for e in c) for c in found}
    assert not stale, f"these circles are gone: remove them from KNOWN_CIRCLES: {sorted(sorted(s) for s in stale)}"


def test_imports_point_runtime_edgedet_converters(edges):
    bad = wrong_way(edges)
    if bad:
        pytest.fail("imports against runtime <- edgedet <- converters:\n"
                    + "\n".join(f"{e.where()} imports {e.imported}" for e in bad), pytrace=False)


def test_graph_reader_sees_what_it_must(edges):
    # The checks above are only as good as the graph: spot-check that it holds known arrows of each kind.
    by_pair = {(e.importer, e.imported): e for e in edges}
    assert by_pair[("edgedet.cli", "runtime.environment")].kind == "module"  # absolute
    assert by_pair[("runtime.backends.onnxruntime", "runtime.backends.base")].kind == "module"
    assert by_pair[("edgedet.registry", "edgedet.models")].kind == "string"  # filled on first lookup
    assert by_pair[("runtime.cli", "runtime.multistream_cli")].kind == "function"
    assert all(e.importer.split(".")[0] in PACKAGES for e in edges)
    assert len({e.importer for e in edges}) > 150


def _write_tree(root: Path, files: Dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_reader_finds_circles_and_wrong_way_imports(tmp_path):
    # A made-up tree: a circle of relative and absolute module-level imports, one closed inside a function,
    # a TYPE_CHECKING import and a registry string (neither makes a circle), and wrong-way imports that
    # count for direction however lazy they are.
    _write_tree(tmp_path, {
        "edgedet/__init__.py": "",
        "edgedet/a.py": "from .b import thing\n",
        "edgedet/b.py": "import edgedet.c\n",
        "edgedet/c.py": "from . import a\n\ndef late():\n    from edgedet import d\n",
        "edgedet/d.py": "from edgedet.c import late\n",
        "edgedet/e.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from edgedet.f import F\n",
        "edgedet/f.py": "import edgedet.e\nFILLED_BY = 'edgedet.g'\n",
        "edgedet/g.py": "from edgedet import f\n",
        "edgedet/sub/__init__.py": "from ..e import x\n",
        "edgedet/sub/h.py": "from .. import sub\nimport converters.api\n",
        "runtime/__init__.py": "def f():\n    import edgedet.a\n",
        "runtime/group.py": "GROUP = 'edgedet.plugins'\n",  # an entry-point group, not a module
        "converters/__init__.py": "",
        "converters/api.py": "import runtime\n",
    })
    found_edges = import_edges(module_files(tmp_path))
    assert ("edgedet.sub", "edgedet.e") in {(e.importer, e.imported) for e in found_edges}
    chains = [describe_chain(c) for c in circles(found_edges)]
    assert chains == [
        "edgedet.a (line 1) -> edgedet.b (line 1) -> edgedet.c (line 1) -> edgedet.a",
        "edgedet.c (line 4, in a function) -> edgedet.d (line 1) -> edgedet.c",
    ]
    assert sorted((e.importer, e.imported, e.kind) for e in wrong_way(found_edges)) == [
        ("edgedet.sub.h", "converters.api", "module"), ("runtime", "edgedet.a", "function")]
