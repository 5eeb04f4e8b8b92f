"""The README stays short and points into docs/; the docs site's nav names every page.

The site itself is built by .ci/run (`mkdocs build --strict`), not here.
"""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"

RUN_COMMAND = 'pip install -e ".[demo]" && herd up --demo'
TEST_COMMAND = 'pip install -e ".[test]" && pytest'


def _readme_links() -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", README.read_text())


def test_readme_is_short_and_names_the_two_commands() -> None:
    text = README.read_text()
    assert len(text.splitlines()) < 250
    assert RUN_COMMAND in text
    assert TEST_COMMAND in text
    # .ci/run runs the README's test command after its install step.
    assert '"$PYTHON" -m pytest' in (ROOT / ".ci" / "run").read_text()


def test_readme_links_into_docs_exist() -> None:
    local = [link for link in _readme_links() if "://" not in link]
    into_docs = [link for link in local if link.startswith("docs/")]
    assert len(into_docs) >= 10
    for link in local:
        assert (ROOT / link.split("#", 1)[0]).is_file(), link


def _nav_pages(nav: list[object]) -> list[str]:
    pages: list[str] = []
    for entry in nav:
        if isinstance(entry, str):
            pages.append(entry)
        elif isinstance(entry, dict):
            for value in entry.values():
                pages.extend(_nav_pages(value) if isinstance(value, list) else [value])
    return pages


def test_every_docs_page_is_in_the_nav_and_exists() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = _nav_pages(config["nav"])
    on_disk = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert sorted(nav) == on_disk
    # The benchmark page is bench/RESULTS.md itself, not a copy.
    assert (DOCS / "bench" / "RESULTS.md").resolve() == (ROOT / "bench" / "RESULTS.md")
