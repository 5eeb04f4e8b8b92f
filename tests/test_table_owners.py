"""Each table is written by its one owner module: a change to how a row is written (a check,
a NOTIFY, an audit record) then has one place to go.

Every table declared under app/db/tables must be listed in OWNERS, and every write found in
app/, pages/ and dashboard.py must come from the owner. A write is found in the syntax tree:
SQLAlchemy `insert(X)` / `update(X)` / `delete(X)` (and `X.__table__.insert()`) on an ORM
class or its Table, building an ORM instance `X(...)` (it exists to be added), `add` /
`merge` / `delete` of, or an attribute assigned on, a row loaded as X (from `session.get(X)`,
`select(X)`, or an `X` annotation), and SQL text naming the table after INSERT INTO, UPDATE,
DELETE FROM, TRUNCATE or COPY. Migrations and tests are not writers.
"""

from __future__ import annotations

import ast
import builtins
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLES = ROOT / "app" / "db" / "tables"
TABLES_MODULE = "app.db.tables"

# Rollups filled by the database's own triggers (migrations 0005, 0008, 0016, 0019): no
# module of app/ may write them.
TRIGGERS = "migrations (triggers)"

# table -> the one module (path from the repository root) that writes it
OWNERS = {
    "api_key_usage": "app/gateway/key_limits.py",
    "api_keys": "app/control/keys.py",
    "aliases": "app/control/aliases.py",
    "audit_log": "app/control/audit.py",
    "batch_requests": "app/batches/store.py",
    "batches": "app/batches/store.py",
    "datasets": "app/datasets/store.py",
    "deployments": "app/control/deployments.py",
    "evaluation_answers": "app/evaluation/answers.py",
    "evaluations": "app/evaluation/store.py",
    "feedback": "app/gateway/feedback.py",
    "feedback_corrections": "app/analytics/review.py",
    "feedback_reviews": TRIGGERS,
    "feedback_tags": "app/analytics/review.py",
    "files": "app/batches/files.py",
    "gateway_demand": "app/gateway/demand.py",
    "jobs": "app/jobs/store.py",
    "latency_hourly": TRIGGERS,
    "login_attempts": "app/control/accounts.py",
    "messages": "app/gateway/request_log.py",
    "models": "app/store/catalog.py",
    "nodes": "app/supervisor/placement.py",
    "operators": "app/control/accounts.py",
    "placements": "app/supervisor/placement.py",
    "process_restarts": "app/db/process_restarts.py",
    "request_sessions": TRIGGERS,
    "requests": "app/gateway/request_log.py",
    "requests_hourly": TRIGGERS,
    "retraining_decisions": "app/analytics/decisions.py",
    "rollouts": "app/rollouts/actions.py",
    "semantic_cache": "app/gateway/vector_store.py",
    "sessions_hourly": TRIGGERS,
    "worker_processes": "app/supervisor/records.py",
    "workers": "app/worker/registration.py",
}

WRITE_CALLS = {"insert", "update", "delete"}
CONTAINERS = {"Optional", "list", "Sequence", "Iterator", "Iterable", "tuple"}
ROW_WRITE_METHODS = {"add", "merge", "delete"}
# Calls that hand back one loaded row, or the rows of a select, of the entity they are given.
SQL_WRITE = re.compile(
    r"\b(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM|TRUNCATE(?:\s+TABLE)?|COPY)\s+(?:ONLY\s+)?"
    r"((?:\"?\w+\"?|\x00)(?:\s*,\s*(?:\"?\w+\"?|\x00))*)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Write:
    table: str
    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line} {self.what}"


def orm_tables() -> dict[str, str]:
    """ORM class name -> table name, for every class declared under app/db/tables."""
    sources = sorted(TABLES.rglob("*.py")) if TABLES.is_dir() else [TABLES.with_suffix(".py")]
    found: dict[str, str] = {}
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ClassDef):
                continue
            for stmt in node.body:
                if (
                    isinstance(stmt, ast.Assign)
                    and any(
                        isinstance(t, ast.Name) and t.id == "__tablename__" for t in stmt.targets
                    )
                    and isinstance(stmt.value, ast.Constant)
                ):
                    found[node.name] = str(stmt.value.value)
    return found


def sources() -> Iterator[Path]:
    yield ROOT / "dashboard.py"
    for folder in ("app", "pages"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if not path.is_relative_to(TABLES) and path != TABLES.with_suffix(".py"):
                yield path


def docstrings(tree: ast.AST) -> set[int]:
    """ids of bare string statements (docstrings): prose, not SQL."""
    return {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }


class Finder:
    """Finds the writes in one file; names resolve only through imports of app.db.tables, so
    an unrelated class called Request or File is never taken for a table."""

    def __init__(
        self, path: str, source: str, classes: dict[str, str], returns: dict[str, str] | None = None
    ) -> None:
        self.path = path
        self.classes = classes
        self.returns = returns or {}  # function name -> the table whose rows it returns
        self.tree = ast.parse(source, path)
        self.entities: dict[str, str] = {}  # local name -> table (classes, their __table__)
        self.modules: set[str] = set()  # local names of the app.db.tables module
        self.writes: list[Write] = []
        for node in ast.walk(self.tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(TABLES_MODULE):
                for alias in node.names:
                    if alias.name in classes:
                        self.entities[alias.asname or alias.name] = classes[alias.name]
            elif isinstance(node, ast.ImportFrom) and node.module == "app.db":
                self.modules |= {a.asname or a.name for a in node.names if a.name == "tables"}
            elif isinstance(node, ast.Import):
                self.modules |= {
                    a.asname for a in node.names if a.name == TABLES_MODULE and a.asname
                }

    def entity(self, node: ast.AST) -> str | None:
        """The table an expression names as a whole: X, tables.X, X.__table__, or an alias."""
        if isinstance(node, ast.Name):
            return self.entities.get(node.id)
        if isinstance(node, ast.Attribute):
            if node.attr == "__table__":
                return self.entity(node.value)
            if isinstance(node.value, ast.Name) and node.value.id in self.modules:
                return self.classes.get(node.attr)
        return None

    def loaded(self, node: ast.AST, rows: dict[str, str]) -> str | None:
        """The table whose rows an expression hands back: a row variable, session.get(X, ...),
        X(...), or any call chain over select(X) with X its only column."""
        if isinstance(node, ast.Name):
            return rows.get(node.id)
        for sub in ast.walk(node):
            if not isinstance(sub, ast.Call):
                continue
            name = call_name(sub)
            if name == "get" and sub.args and (table := self.entity(sub.args[0])):
                return table
            if name == "select" and len(sub.args) == 1 and (table := self.entity(sub.args[0])):
                return table
            if (table := self.entity(sub.func)) is not None:
                return table
            method = isinstance(sub.func, ast.Attribute)
            if name in self.returns and (method or not hasattr(builtins, name or "")):
                return self.returns[name]
        return None

    def row_returns(self) -> Iterator[tuple[str, str | None]]:
        """(function name, the table whose rows its return annotation says it returns)."""
        for node in ast.walk(self.tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns:
                yield node.name, self.annotated(node.returns)

    def add(self, table: str, node: ast.AST, what: str) -> None:
        self.writes.append(Write(table, self.path, getattr(node, "lineno", 0), what))

    def scan(self) -> list[Write]:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Assign) and (table := self.entity(node.value)):
                # `requests = Request.__table__`: the alias names the table from here on.
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        self.entities[target.id] = table
        self.scope(self.tree)
        skip = docstrings(self.tree)
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Call):
                self.call(node)
            elif id(node) not in skip and isinstance(node, ast.Constant | ast.JoinedStr):
                self.sql(node)
        return self.writes

    def scope(self, tree: ast.AST) -> None:
        """Row variables are tracked per function: annotated parameters and names bound to
        loaded rows, then attribute assignments and add/merge/delete on them are writes."""
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef | ast.Module):
                continue
            rows: dict[str, str] = {}
            if not isinstance(func, ast.Module):
                for arg in [*func.args.args, *func.args.kwonlyargs, *func.args.posonlyargs]:
                    if arg.annotation is not None and (table := self.annotated(arg.annotation)):
                        rows[arg.arg] = table
            body = list(walk_scope(func))
            for node in body:  # bindings first, in source order, so later uses see them
                if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                    table = self.annotated(node.annotation)
                    if table is None and node.value is not None:
                        table = self.loaded(node.value, rows)
                    if table:
                        rows[node.target.id] = table
                elif isinstance(node, ast.Assign | ast.NamedExpr):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    if (table := self.loaded(node.value, rows)) is not None:
                        for target in targets:
                            for name in ast.walk(target):
                                if isinstance(name, ast.Name):
                                    rows[name.id] = table
                elif (
                    isinstance(node, ast.For | ast.AsyncFor | ast.comprehension)
                    and (table := self.loaded(node.iter, rows)) is not None
                ):
                    for name in ast.walk(node.target):
                        if isinstance(name, ast.Name):
                            rows[name.id] = table
            for node in body:
                targets: list[ast.expr] = []
                if isinstance(node, ast.Assign):
                    targets = node.targets
                elif isinstance(node, ast.AugAssign | ast.AnnAssign):
                    targets = [node.target]
                for target in targets:
                    if isinstance(target, ast.Attribute) and (table := rows_of(target.value, rows)):
                        self.add(table, node, f"sets {ast.unparse(target)}")
                if (
                    isinstance(node, ast.Call)
                    and call_name(node) == "setattr"
                    and node.args
                    and (table := rows_of(node.args[0], rows))
                ):
                    self.add(table, node, f"{ast.unparse(node)[:80]}")
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ROW_WRITE_METHODS | {"add_all"}
                    and node.args
                ):
                    for arg in ast.walk(node.args[0]):
                        if (table := rows_of(arg, rows)) is not None:
                            self.add(table, node, f"{ast.unparse(node)[:80]}")
                            break

    def annotated(self, annotation: ast.AST) -> str | None:
        """X, "X", X | None, Optional[X], list[X]: a name holding rows of X."""
        if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
            try:
                annotation = ast.parse(annotation.value, mode="eval").body
            except SyntaxError:
                return None
        if isinstance(annotation, ast.BinOp):
            return self.annotated(annotation.left) or self.annotated(annotation.right)
        if isinstance(annotation, ast.Subscript) and call_name(annotation.value) in CONTAINERS:
            return self.annotated(annotation.slice)
        return self.entity(annotation)

    def call(self, node: ast.Call) -> None:
        name = call_name(node)
        if name in WRITE_CALLS and node.args and (table := self.entity(node.args[0])):
            self.add(table, node, f"{name}({ast.unparse(node.args[0])})")
        elif (
            name in WRITE_CALLS
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Attribute)
            and node.func.value.attr == "__table__"
            and (table := self.entity(node.func.value))
        ):
            self.add(table, node, f"{ast.unparse(node.func)}()")
        elif (table := self.entity(node.func)) is not None:
            self.add(table, node, f"builds a row: {ast.unparse(node.func)}(...)")

    def sql(self, node: ast.Constant | ast.JoinedStr) -> None:
        if isinstance(node, ast.Constant):
            if not isinstance(node.value, str):
                return
            text = node.value
        else:  # an f-string: its literal parts, a NUL where a value is formatted in
            text = "".join(v.value if isinstance(v, ast.Constant) else "\x00" for v in node.values)
        tables = set(OWNERS) | set(self.classes.values())
        for match in SQL_WRITE.finditer(text):
            for name in re.split(r"\s*,\s*", match.group(1)):
                name = name.strip('"')
                if name in tables:
                    self.add(name, node, match.group(0).split("\n")[0][:80])
                elif name == "\x00" and not match.group(0).lower().startswith("update"):
                    # A table name formatted into the SQL cannot be checked: refuse it.
                    self.add("?", node, f"SQL with a formatted table name: {match.group(0)!r}")


def call_name(node: ast.AST) -> str | None:
    func = node.func if isinstance(node, ast.Call) else node
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def rows_of(node: ast.AST, rows: dict[str, str]) -> str | None:
    return rows.get(node.id) if isinstance(node, ast.Name) else None


def walk_scope(func: ast.AST) -> Iterator[ast.AST]:
    """The nodes of one function (or module) body, in source order, nested functions aside."""
    todo = list(ast.iter_child_nodes(func))
    todo.reverse()
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            continue
        children = list(ast.iter_child_nodes(node))
        children.reverse()
        todo.extend(children)


def all_writes() -> list[Write]:
    classes = orm_tables()
    files = [(str(p.relative_to(ROOT)), p.read_text()) for p in sources()]
    # Functions that return rows (by their annotation), by name, where the name is not also
    # used for functions that return something else: `row = store.get(name)` then loads rows.
    seen: dict[str, set[str | None]] = {}
    for path, text in files:
        for name, table in Finder(path, text, classes).row_returns():
            seen.setdefault(name, set()).add(table)
    returns = {
        name: t for name, tables in seen.items() if len(tables) == 1 and (t := next(iter(tables)))
    }
    return [w for path, text in files for w in Finder(path, text, classes, returns).scan()]


def test_every_table_names_its_owner() -> None:
    tables = set(orm_tables().values())
    assert len(tables) >= 33, f"found only {sorted(tables)} under {TABLES}"
    unlisted = sorted(tables - set(OWNERS))
    assert not unlisted, f"tables with no owner in OWNERS: {unlisted}"
    gone = sorted(set(OWNERS) - tables)
    assert not gone, f"OWNERS names tables that no longer exist: {gone}"
    missing = sorted(
        owner for owner in set(OWNERS.values()) - {TRIGGERS} if not (ROOT / owner).is_file()
    )
    assert not missing, f"owner modules that do not exist: {missing}"


# The one declared exception: demo traffic is generated inside PostgreSQL, one INSERT ...
# SELECT per chunk writing requests, messages and feedback together (a million rows in
# seconds, nothing over the wire), its rows marked `synthetic` and purged by the same module.
# Splitting that statement among the owners would cost the speed it exists for. Nothing
# else may be added here without the same kind of reason.
SYNTHETIC = ("app/analytics/demo_traffic.py", frozenset({"requests", "messages", "feedback"}))


def test_only_the_owner_writes() -> None:
    others = [
        w
        for w in all_writes()
        if OWNERS.get(w.table) != w.path
        and not (w.path == SYNTHETIC[0] and w.table in SYNTHETIC[1])
    ]
    assert not others, "tables written outside their owner module:\n" + "\n".join(
        f"  {w.table} (owner {OWNERS.get(w.table, 'none')}) written by {w}" for w in others
    )


def test_the_finder_sees_each_kind_of_write() -> None:
    """The finder is itself checked: each way of writing a row is found, reads are not."""
    source = '''
from app.db.tables import Request as R, Feedback
def f(session, conn, row: Feedback) -> None:
    """UPDATE requests in a docstring is prose."""
    conn.execute(insert(R).values(id=1))
    conn.execute(R.__table__.delete())
    session.add(R(id=1))
    loaded = session.get(R, 1)
    loaded.status = 200
    for each in session.scalars(select(R)):
        each.status += 1
    row.comment = "x"
    session.delete(row)
    conn.execute(text("UPDATE requests SET x = 1"))
    conn.execute(text(f"TRUNCATE {name}"))
    session.scalars(select(R).where(R.id == 1)).all()
    found = store.find(1)
    found.status = 1
    listed = list(rows)
    listed.status = 1
'''
    classes = {"Request": "requests", "Feedback": "feedback"}
    finder = Finder("app/probe.py", source, classes, {"find": "requests", "list": "requests"})
    lines = sorted((w.line, w.table) for w in finder.scan())
    assert lines == [
        (5, "requests"),
        (6, "requests"),
        (7, "requests"),
        (9, "requests"),
        (11, "requests"),
        (12, "feedback"),
        (13, "feedback"),
        (14, "requests"),
        (15, "?"),
        (18, "requests"),
    ]
