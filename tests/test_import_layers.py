"""Imports run one way through app/: no cycle among its modules or its folders, no import from
a lower layer to a higher one, and streamlit only in app/ui and pages/.

The imports are read from the syntax tree of every file, TYPE_CHECKING blocks and imports
inside functions included: a deferred import still ties the two modules together.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app"

# Bottom to top; a module may import its own layer and the layers below. Each entry is a
# module or a package (with everything under it).
LAYERS: list[list[str]] = [
    ["app", "app.config", "app.common"],
    ["app.db", "app.engine"],
    ["app.store", "app.analytics", "app.openai_api"],
    ["app.control"],
    ["app.jobs", "app.processes"],
    ["app.compress", "app.evaluation", "app.datasets", "app.batches", "app.rollouts"],
    ["app.gateway", "app.worker", "app.supervisor"],
    ["app.ui"],
    ["app.cli"],
]
STREAMLIT_ALLOWED = ("app.ui",)


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the app module it reaches
    line: int
    text: str  # the import statement as written

    def __str__(self) -> str:
        return f"{self.source} ({module_path(self.source)}:{self.line}): {self.text}"


def modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of app/ (a package by its __init__)."""
    found = {}
    for path in sorted(APP.rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def module_path(name: str) -> str:
    path = modules().get(name)
    return str(path.relative_to(ROOT)) if path else name


def imported_names(node: ast.AST, package: str) -> Iterator[str]:
    """The dotted names an import statement reaches, relative imports resolved."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            parts = package.split(".")
            parts = parts[: len(parts) - node.level + 1]
            base = ".".join([*parts, base] if base else parts)
        yield base
        # `from app.x import y` runs app/x/__init__.py, and reaches app.x.y when y is a module
        yield from (f"{base}.{alias.name}" for alias in node.names)


def imports() -> list[Import]:
    """Every import from one app module to another (the nearest module a name resolves to)."""
    known = modules()

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    found: list[Import] = []
    for source, path in known.items():
        package = source if path.name == "__init__.py" else source.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            targets = set()
            for name in imported_names(node, package):
                if name.split(".")[0] == "app" and (target := resolve(name)) and target != source:
                    targets.add(target)
            found.extend(
                Import(source, target, node.lineno, ast.unparse(node)) for target in sorted(targets)
            )
    return found


def folder(module: str) -> str:
    """A sub-package of app is one node; a module at app's root is its own node."""
    return ".".join(module.split(".")[:2])


def layer(module: str) -> int:
    """The layer of the most specific entry of LAYERS that holds module."""
    best, depth = -1, -1
    for number, entries in enumerate(LAYERS):
        for entry in entries:
            holds = module == entry or (entry != "app" and module.startswith(entry + "."))
            if holds and entry.count(".") > depth:
                best, depth = number, entry.count(".")
    return best


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
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


def describe(component: list[str], found: list[Import], key: Callable[[str], str]) -> str:
    """A cycle with the imports that close it, so the message says what to cut."""
    members = set(component)
    through = [
        str(i)
        for i in found
        if key(i.source) in members and key(i.target) in members and key(i.source) != key(i.target)
    ]
    return " <-> ".join(component) + "\n      " + "\n      ".join(through)


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(m for m in modules() if layer(m) < 0)
    assert not unplaced, f"modules in no layer (add them to LAYERS): {unplaced}"


def test_no_file_cycle() -> None:
    found = imports()
    edges: dict[str, set[str]] = {m: set() for m in modules()}
    for i in found:
        edges[i.source].add(i.target)
    loops = [describe(c, found, lambda m: m) for c in cycles(edges)]
    assert not loops, "import cycles among app's modules:\n  " + "\n  ".join(loops)


def test_no_folder_cycle() -> None:
    found = imports()
    edges: dict[str, set[str]] = {}
    for i in found:
        if folder(i.source) != folder(i.target):
            edges.setdefault(folder(i.source), set()).add(folder(i.target))
    loops = [describe(c, found, folder) for c in cycles(edges)]
    assert not loops, "import cycles among app's folders:\n  " + "\n  ".join(loops)


def test_no_upward_import() -> None:
    upward = [
        f"{i} imports layer {layer(i.target)} ({i.target}) from layer {layer(i.source)}"
        for i in imports()
        if layer(i.target) > layer(i.source)
    ]
    assert not upward, "imports from a lower layer to a higher one:\n  " + "\n  ".join(upward)


def test_the_gateway_does_not_mount_the_admin_api() -> None:
    """The admin API is the control plane's: whoever assembles the gateway app (app/cli.py,
    the test harness) passes it in; app/gateway itself never reaches for it."""
    mounted = [
        str(i)
        for i in imports()
        if folder(i.source) == "app.gateway" and i.target == "app.control.admin_api"
    ]
    assert not mounted, "app/gateway imports the admin API:\n  " + "\n  ".join(mounted)


def test_only_the_ui_imports_streamlit() -> None:
    offenders = []
    for name, path in modules().items():
        if name == "app.ui" or name.startswith(STREAMLIT_ALLOWED[0] + "."):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                names.append(getattr(node, "module", None) or "")
                if any(n.split(".")[0] == "streamlit" for n in names):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert not offenders, "streamlit imported outside app/ui and pages/:\n  " + "\n  ".join(
        offenders
    )


def test_the_checks_see_what_they_guard() -> None:
    """The graph is not empty, TYPE_CHECKING and function-level imports are read, and the
    layers cover what LAYERS names (a renamed package must be renamed here too)."""
    found = imports()
    assert len(found) > 200, f"only {len(found)} imports found under {APP}"
    names = set(modules())
    stale = [e for entries in LAYERS for e in entries if e not in names]
    assert not stale, f"LAYERS names modules that do not exist: {stale}"
    tree = ast.parse("if TYPE_CHECKING:\n    from app.db import x\ndef f():\n    from . import y\n")
    reached = [n for node in ast.walk(tree) for n in imported_names(node, "app.gateway")]
    assert reached == ["app.db", "app.db.x", "app.gateway", "app.gateway.y"]
