"""Test helpers are imported under one name: `tests.<module>`.

pytest puts tests/ on sys.path too, so `from gateway_harness import ...` also works, but it
loads a second copy of the module: two copies of its classes (isinstance fails across them)
and of anything it keeps.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"


def test_helpers_are_imported_as_tests_modules() -> None:
    helpers = {p.stem for p in TESTS.glob("*.py")}
    bare = []
    for path in [*TESTS.glob("*.py"), *(ROOT / "bench").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            bare += [f"{path.name}:{node.lineno} {n}" for n in names if n in helpers]
    assert not bare, f"import these as tests.<module>: {bare}"
