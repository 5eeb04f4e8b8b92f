"""The Chat page (AppTest) against a real gateway in a thread and a real stub worker process:
answers stream in, votes and comments land in `feedback` through POST /v1/feedback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from streamlit.testing.v1 import AppTest

from app.control.aliases import AliasSettings, AliasStore
from app.control.keys import ApiKeys
from app.db.database import Database
from app.ui import chat_answers
from app.ui.chat import QUERY_PARAM
from app.ui.chat_client import ChatClient
from app.ui.conversations import ChatSession
from tests.conftest import REPO_ROOT, free_port
from tests.gateway_harness import (
    GatewayThread,
    Stubs,
    add_deployment,
    add_model,
    gateway_settings,
    wait_for,
)

PAGE = str(REPO_ROOT / "pages" / "chat.py")
TIMEOUT_S = 60


@pytest.fixture
def gateway(tmp_path: Path, db_url: str, database: Database) -> Iterator[GatewayThread]:
    """A gateway with one stub worker behind the alias `assistant`."""
    stubs = Stubs(db_url)
    model_id = add_model(database.engine, "assistant-v1.gguf")
    deployment_id = add_deployment(database.engine, "assistant", model_id)
    gw = GatewayThread(gateway_settings(tmp_path, db_url), db_url)
    try:
        stubs.start("assistant", "stubby", deployment_id=deployment_id, model_id=model_id)
        gw.wait_workers(1)
        yield gw
    finally:
        gw.stop()
        stubs.stop_all()


@pytest.fixture
def chat_env(monkeypatch: pytest.MonkeyPatch, db_url: str, tmp_path: Path) -> None:
    monkeypatch.setenv("HERD_DATABASE_URL", db_url)
    monkeypatch.setenv("HERD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HERD_CHAT_API_KEY", raising=False)


def _page(gateway_url: str, monkeypatch: pytest.MonkeyPatch, token: str | None = None) -> AppTest:
    monkeypatch.setenv("HERD_GATEWAY_URL", gateway_url)
    app = AppTest.from_file(PAGE, default_timeout=TIMEOUT_S)
    if token is not None:
        app.query_params[QUERY_PARAM] = token
    app.run()
    assert not app.exception, app.exception
    return app


def _say(app: AppTest, text_: str) -> None:
    app.chat_input(key="chat_prompt").set_value(text_).run()
    assert not app.exception, app.exception


def _bubbles(app: AppTest) -> list[tuple[str, str]]:
    return [(m.name, m.markdown[0].value) for m in app.chat_message]


def rows(database: Database, sql: str, **params: Any) -> list[dict[str, Any]]:
    with database.engine.connect() as conn:
        return [dict(r) for r in conn.execute(text(sql), params).mappings()]


def _request_rows(database: Database, n: int) -> list[dict[str, Any]]:
    wait_for(lambda: len(rows(database, "SELECT id FROM requests")) >= n, 20)
    return rows(database, "SELECT * FROM requests ORDER BY created_at")


def test_chat_streams_an_answer_and_stores_a_thumbs_down_with_comment(
    chat_env: None, gateway: GatewayThread, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = _page(gateway.url, monkeypatch)
    assert app.title[0].value == "Chat"
    assert app.selectbox(key="chat_alias").value == "assistant"
    assert not app.error

    _say(app, "Hello there")
    assert _bubbles(app) == [("user", "Hello there"), ("assistant", "stubby says: w0 w1 w2 w3")]
    [request] = _request_rows(database, 1)
    assert request["alias"] == "assistant" and request["status"] == "ok"
    user_id = request["user_id"]
    assert user_id.startswith("chat-")
    assert request["session_id"] and request["session_id"] != user_id

    app.feedback(key=f"chat_fb_{request['id']}").set_value(0).run()  # thumbs down
    assert not app.exception, app.exception
    assert not app.error, [e.value for e in app.error]
    [vote] = rows(database, "SELECT * FROM feedback")
    assert (vote["request_id"], vote["rating"], vote["comment"]) == (request["id"], -1, None)
    assert vote["user_id"] == user_id

    app.text_input(key=f"chat_comment_{request['id']}").input("Too vague")
    app.button(key=f"chat_comment_send_{request['id']}").click().run()
    assert not app.exception, app.exception
    [vote] = rows(database, "SELECT * FROM feedback")
    assert (vote["request_id"], vote["rating"], vote["comment"]) == (
        request["id"],
        -1,
        "Too vague",
    )


def test_regenerate_new_conversation_and_refresh(
    chat_env: None, gateway: GatewayThread, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = _page(gateway.url, monkeypatch)
    _say(app, "First question")
    [first] = _request_rows(database, 1)

    app.button(key="chat_regenerate").click().run()
    assert not app.exception, app.exception
    requests = _request_rows(database, 2)
    assert len(requests) == 2
    second = requests[1]
    # The same conversation (session) and user, the answer replaced by the new one.
    assert (second["session_id"], second["user_id"]) == (first["session_id"], first["user_id"])
    assert [name for name, _ in _bubbles(app)] == ["user", "assistant"]
    assert app.feedback(key=f"chat_fb_{second['id']}") is not None
    [prompt] = rows(database, "SELECT prompt FROM messages WHERE request_id = :i", i=second["id"])
    assert prompt["prompt"] == [{"role": "user", "content": "First question"}]

    # A refresh starts a new script session; the token in the URL finds the conversation.
    token = app.query_params[QUERY_PARAM]
    token = token[0] if isinstance(token, list) else token
    refreshed = _page(gateway.url, monkeypatch, token=token)
    assert _bubbles(refreshed) == _bubbles(app)
    # Another browser (no token) sees none of it.
    stranger = _page(gateway.url, monkeypatch)
    assert _bubbles(stranger) == []

    _say(refreshed, "Second question")
    assert len(_bubbles(refreshed)) == 4
    third = _request_rows(database, 3)[2]
    assert third["session_id"] == first["session_id"]

    refreshed.button(key="chat_new").click().run()
    assert not refreshed.exception, refreshed.exception
    assert _bubbles(refreshed) == []
    _say(refreshed, "Fresh start")
    fourth = _request_rows(database, 4)[3]
    assert fourth["session_id"] != first["session_id"]  # a new conversation is a new session
    assert fourth["user_id"] == first["user_id"]  # by the same user


def test_gateway_down_gives_a_clear_message(
    chat_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = _page(f"http://127.0.0.1:{free_port()}", monkeypatch)
    assert app.title[0].value == "Chat"
    [error] = app.error
    assert "not reachable" in error.value
    assert app.chat_input(key="chat_prompt").proto.disabled


def test_no_model_and_no_live_worker_are_explained(
    chat_env: None, tmp_path: Path, db_url: str, database: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    gw = GatewayThread(gateway_settings(tmp_path, db_url), db_url)
    try:
        app = _page(gw.url, monkeypatch)
        assert not app.error
        assert "No model is being served" in app.info[0].value

        # Deployed, but no worker is up: the gateway answers 503, the page says so.
        add_deployment(database.engine, "assistant", add_model(database.engine, "a.gguf"))
        wait_for(lambda: gw.health()["aliases"] == ["assistant"])
        app = _page(gw.url, monkeypatch)
        _say(app, "anyone there?")
        assert "not available right now" in app.error[0].value
        assert app.button(key="chat_regenerate").label == "Retry"
    finally:
        gw.stop()


def test_api_key_from_settings_is_sent(
    chat_env: None, gateway: GatewayThread, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = ApiKeys(database.engine).create("chat")
    wait_for(lambda: gateway.health()["routing_loaded"])
    # Keys exist now: without one the gateway refuses, and the page says what to set.
    wait_for(lambda: _page(gateway.url, monkeypatch).error != [], 10)
    app = _page(gateway.url, monkeypatch)
    assert "HERD_CHAT_API_KEY" in app.error[0].value

    monkeypatch.setenv("HERD_CHAT_API_KEY", created.key)
    app = _page(gateway.url, monkeypatch)
    assert not app.error
    _say(app, "with a key")
    [request] = _request_rows(database, 1)
    assert request["api_key_id"] == created.id


def test_rate_limited_answer_is_explained(
    chat_env: None, gateway: GatewayThread, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    AliasStore(database.engine).put(
        "assistant", AliasSettings(cache_enabled=False, cache_ttl_s=60, rate_limit_rpm=1)
    )
    body = {"model": "assistant", "messages": [{"role": "user", "content": "hi"}]}

    def limited() -> bool:
        # The alias's rate limit, not another 429 (a busy worker under a loaded machine).
        answer = httpx.post(f"{gateway.v1}/chat/completions", json=body, timeout=30)
        return answer.status_code == 429 and "rate limit" in answer.text

    # Once the gateway has loaded the limit, its one request per minute is used up.
    wait_for(limited, 20)
    app = _page(gateway.url, monkeypatch)
    _say(app, "anyone there?")
    [error] = app.error
    assert "busy right now" in error.value and "try again in" in error.value
    # The failure stays in view on the next run, however fast it came back.
    app.run()
    assert [e.value for e in app.error] == [error.value]
    # The question stays (with the error in the answer's place), ready to be retried.
    assert [m.name for m in app.chat_message] == ["user", "assistant"]
    assert app.chat_message[0].markdown[0].value == "anyone there?"
    assert app.button(key="chat_regenerate").label == "Retry"


@pytest.fixture
def slow_gateway(tmp_path: Path, db_url: str, database: Database) -> Iterator[GatewayThread]:
    """A gateway whose one stub worker streams 20 pieces 0.1 s apart (about 2 s)."""
    stubs = Stubs(db_url)
    model_id = add_model(database.engine, "assistant-v1.gguf")
    deployment_id = add_deployment(database.engine, "assistant", model_id)
    gw = GatewayThread(gateway_settings(tmp_path, db_url), db_url)
    try:
        stubs.start("assistant", "slow", deployment_id=deployment_id, model_id=model_id,
                    tokens=20, token_delay_ms=100)  # fmt: skip
        gw.wait_workers(1)
        yield gw
    finally:
        gw.stop()
        stubs.stop_all()


def test_a_question_asked_while_an_answer_streams_waits_its_turn(
    slow_gateway: GatewayThread, database: Database
) -> None:
    client = ChatClient(slow_gateway.url)
    session = ChatSession.new()
    assert chat_answers.ask(session, "first")
    chat_answers.answer(client, session, "assistant")
    first = session.pending
    assert first is not None and not first.done.is_set()
    assert not chat_answers.ask(session, "second")  # queued behind the streaming answer
    assert not chat_answers.ask(session, "third")
    chat_answers.answer(client, session, "assistant")  # one answer at a time
    wait_for(lambda: session.pending is None and len(session.messages) == 6, 30)
    full = "slow says:" + "".join(f" w{i}" for i in range(19))
    assert [(m.role, m.content) for m in session.messages] == [
        ("user", "first"), ("assistant", full), ("user", "second"), ("assistant", full),
        ("user", "third"), ("assistant", full),
    ]  # fmt: skip
    # Each answer saw the whole conversation before it; none was cut off.
    requests = _request_rows(database, 3)
    assert [r["status"] for r in requests] == ["ok", "ok", "ok"]
    prompts = [rows(database, "SELECT prompt FROM messages WHERE request_id = :i", i=r["id"])
               [0]["prompt"] for r in requests]  # fmt: skip
    assert [len(p) for p in prompts] == [1, 3, 5]

    # Starting over while an answer streams leaves that answer out of the new conversation.
    assert chat_answers.ask(session, "fourth")
    chat_answers.answer(client, session, "assistant")
    streaming = session.pending
    session.start_over()
    assert streaming is not None and streaming.done.wait(30)
    assert session.messages == [] and session.pending is None
    client.close()
