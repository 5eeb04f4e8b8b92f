"""The sizing table in docs/several-machines.md is what bench/sizing_table.py writes from the
figures in bench/RESULTS.md, and those figures are the ones RESULTS.md's sections record."""

from __future__ import annotations

import pytest

from bench.sizing_table import BEGIN, END, PAGE, RESULTS, figures, rewrite, slug, table

ENGINE = "Engine: continuous batching vs llama-server and llama-cpp-python's server"


def test_the_page_holds_the_table_results_md_gives() -> None:
    page = PAGE.read_text()
    assert page.count(BEGIN) == 1 and page.count(END) == 1
    assert rewrite(page, table(RESULTS.read_text())) == page, (
        "docs/several-machines.md's sizing table is out of date: run "
        "`python bench/sizing_table.py` (after changing the ```sizing block of bench/RESULTS.md)"
    )


def test_a_newer_figure_in_results_md_changes_the_table() -> None:
    results = RESULTS.read_text()
    figs = figures(results)
    old = figs["engine4_tps_1"]
    assert old.section in results and old.value > 0
    # A newer run recorded in the same section, and the block pointed at it.
    newer = results.replace(f"engine4_tps_1 = {old.text} |", "engine4_tps_1 = 151.2 |", 1).replace(
        "| 1 stream | decode tok/s | 157.9 |", "| 1 stream | decode tok/s | 151.2 |", 1
    )
    assert "151 tok/s for 1 stream" in table(newer)
    page = PAGE.read_text()
    assert rewrite(page, table(newer)) != page


def test_a_figure_not_in_its_section_is_refused() -> None:
    results = RESULTS.read_text()
    text = figures(results)["engine16_tps_1"].text
    with pytest.raises(ValueError, match="does not appear"):
        table(results.replace(f"engine16_tps_1 = {text} |", "engine16_tps_1 = 999.9 |", 1))
    # Part of a longer number is not the number: 58.3 is inside 158.3.
    with pytest.raises(ValueError, match="does not appear"):
        table(results.replace(f"engine16_tps_1 = {text} |", "engine16_tps_1 = 58.3 |", 1))
    with pytest.raises(ValueError, match="no section"):
        table(results.replace(f"{text} | {ENGINE}", f"{text} | No such section", 1))


def test_rewrite_changes_only_the_text_between_the_markers() -> None:
    page = f"intro\n{BEGIN}\nold table\n{END}\noutro\n"
    assert rewrite(page, "| a |") == f"intro\n{BEGIN}\n\n| a |\n\n{END}\noutro\n"
    with pytest.raises(ValueError):
        rewrite("no markers", "| a |")


def test_links_use_the_docs_site_anchors() -> None:
    assert slug("Gateway overhead: direct vs Herd vs LiteLLM (bench/gateway_bench.py)") == (
        "gateway-overhead-direct-vs-herd-vs-litellm-benchgateway_benchpy"
    )
    assert slug(f"{ENGINE} (bench/engine_bench.py)") == (
        "engine-continuous-batching-vs-llama-server-and-llama-cpp-pythons-server-benchengine_benchpy"
    )
