"""The Chat page in headless Chromium: a question sent while an answer streams waits for it;
both answers stay in the conversation, and neither request is logged as cancelled. A real
`herd dashboard`, a real gateway, and a stub worker that streams slowly enough to ask in
between."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from app.db.database import Database
from tests.browser_harness import chromium_page, start_dashboard
from tests.conftest import stop_process
from tests.gateway_harness import (
    GatewayThread,
    Stubs,
    add_deployment,
    add_model,
    gateway_settings,
    wait_for,
)
from tests.test_browser import CHROMIUM, shot
from tests.test_chat_page import rows

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed"),
    pytest.mark.timeout(600),
]

# 40 pieces 0.15 s apart: an answer streams for about 6 s.
TOKENS, TOKEN_DELAY_MS = 40, 150
ANSWER = "stubby says:" + "".join(f" w{i}" for i in range(TOKENS - 1))


@pytest.fixture
def gateway(tmp_path: Path, db_url: str, database: Database) -> Iterator[GatewayThread]:
    """A gateway with one slow stub worker behind the alias `assistant`."""
    stubs = Stubs(db_url)
    model_id = add_model(database.engine, "assistant-v1.gguf")
    deployment_id = add_deployment(database.engine, "assistant", model_id)
    gw = GatewayThread(gateway_settings(tmp_path, db_url), db_url)
    try:
        stubs.start("assistant", "stubby", deployment_id=deployment_id, model_id=model_id,
                    tokens=TOKENS, token_delay_ms=TOKEN_DELAY_MS)  # fmt: skip
        gw.wait_workers(1)
        yield gw
    finally:
        gw.stop()
        stubs.stop_all()


@pytest.fixture
def page() -> Iterator[Page]:
    with chromium_page() as page:
        yield page


def _ask(page: Page, question: str) -> None:
    box = page.get_by_test_id("stChatInputTextArea")
    box.fill(question)
    box.press("Enter")


def test_a_second_question_mid_stream_keeps_both_answers(
    page: Page, gateway: GatewayThread, database: Database, herd_env: dict[str, str]
) -> None:
    dashboard, url = start_dashboard({**herd_env, "HERD_GATEWAY_URL": gateway.url})
    try:
        page.goto(f"{url}/chat")
        expect(page.get_by_role("heading", name="Chat", exact=True)).to_be_visible()
        _ask(page, "What is the first question?")
        messages = page.get_by_test_id("stChatMessage")
        # The first answer is streaming: some of it is shown, not all.
        expect(messages.nth(1)).to_contain_text("stubby says:")
        assert ANSWER not in messages.nth(1).inner_text()
        _ask(page, "And the second one?")
        # The question waits below the answer, which goes on streaming.
        expect(messages.nth(2)).to_contain_text("And the second one?")
        expect(messages.nth(2)).to_contain_text("answered next")
        expect(messages.nth(1)).to_contain_text("stubby says:")
        shot(page, "chat-1-asked-mid-stream")

        # The first answer finishes, then the second question is asked and answered.
        expect(messages).to_have_count(4)
        expect(messages.nth(3)).to_contain_text(ANSWER)
        shot(page, "chat-2-both-answers")
        texts = [m.inner_text() for m in messages.all()]
        assert "What is the first question?" in texts[0]
        assert ANSWER in texts[1] and "▌" not in texts[1]
        assert "And the second one?" in texts[2]
        assert ANSWER in texts[3]
    finally:
        shot(page, "chat-3-end")
        stop_process(dashboard)

    # Neither request was cut short; the second one saw the whole first exchange.
    wait_for(lambda: len(rows(database, "SELECT id FROM requests")) == 2, 20)
    logged = rows(database, "SELECT id, status FROM requests ORDER BY created_at")
    assert [r["status"] for r in logged] == ["ok", "ok"]
    [prompt] = rows(database, "SELECT prompt FROM messages WHERE request_id = :i",
                    i=logged[1]["id"])  # fmt: skip
    assert [m["content"] for m in prompt["prompt"]] == [
        "What is the first question?", ANSWER, "And the second one?"
    ]  # fmt: skip
