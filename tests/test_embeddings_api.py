"""POST /v1/embeddings and GET /v1/models/{id} on real parts: `herd worker --embeddings` and a
chat worker on the SmolLM2 demo model, `herd gateway` in front, the official openai client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from sqlalchemy import text

from app.db.database import Database
from app.openai_api.headers import PRIORITY_HEADER
from app.store.catalog import ModelStore
from app.store.demo import add_demo_model
from tests.gateway_harness import add_deployment, wait_for
from tests.test_gateway_e2e import gateway_url  # noqa: F401  (a fixture)
from tests.worker_process import WorkerLauncher, WorkerProcess

EMBED_ALIAS = "smol-embed"
CHAT_ALIAS = "smol"
N_CTX = 512


@pytest.fixture
def pair(
    worker_launcher: WorkerLauncher, database: Database, models_dir: Path
) -> Iterator[tuple[WorkerProcess, WorkerProcess]]:
    """An embedding worker and a chat worker on the same GGUF, each with its deployment."""
    model = add_demo_model(ModelStore(database.engine, models_dir))
    embed_id = add_deployment(database.engine, EMBED_ALIAS, model.id)
    chat_id = add_deployment(database.engine, CHAT_ALIAS, model.id)
    with database.engine.begin() as conn:
        conn.execute(
            text("UPDATE deployments SET embeddings = true, n_ctx = :n WHERE id = :id"),
            {"id": embed_id, "n": N_CTX},
        )
    common = ["--model", model.name, "--port", "0", "--n-ctx", str(N_CTX)]
    embed = worker_launcher.start(
        *common, "--alias", EMBED_ALIAS, "--deployment-id", str(embed_id), "--embeddings"
    )
    chat = worker_launcher.start(*common, "--alias", CHAT_ALIAS, "--deployment-id", str(chat_id))
    embed.wait_ready(timeout_s=120)
    chat.wait_ready(timeout_s=120)
    yield embed, chat


def _error(response: httpx.Response) -> dict[str, object]:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert isinstance(error, dict) and error["message"]
    return error


def test_worker_embeddings_with_the_openai_client(
    pair: tuple[WorkerProcess, WorkerProcess],
) -> None:
    embed, chat = pair
    assert embed.url is not None and chat.url is not None
    client = openai.OpenAI(base_url=f"{embed.url}/v1", api_key="none", max_retries=0)

    # The official client asks for base64 unless told otherwise; both decode alike.
    one = client.embeddings.create(model=EMBED_ALIAS, input="The cat sat on the mat.")
    floats = client.embeddings.create(
        model=EMBED_ALIAS, input="The cat sat on the mat.", encoding_format="float"
    )
    v64 = np.asarray(one.data[0].embedding)
    vfl = np.asarray(floats.data[0].embedding)
    assert v64.shape == (576,) and np.allclose(v64, vfl, atol=1e-6)
    assert abs(np.linalg.norm(v64) - 1) < 1e-5
    assert one.model == EMBED_ALIAS and one.usage.prompt_tokens > 0

    texts = ["A kitten sleeps on a rug.", "Stock markets fell sharply today.", "Hi"]
    batch = client.embeddings.create(model=EMBED_ALIAS, input=texts)
    assert [d.index for d in batch.data] == [0, 1, 2]
    vectors = np.asarray([d.embedding for d in batch.data])
    # A paraphrase is nearer than an unrelated sentence.
    assert float(vectors[0] @ v64) > float(vectors[1] @ v64)

    # Token arrays: usage counts exactly the tokens sent.
    tokens = client.embeddings.create(model=EMBED_ALIAS, input=[1, 2, 3, 4])
    assert tokens.usage.prompt_tokens == 4 and len(tokens.data) == 1
    arrays = client.embeddings.create(model=EMBED_ALIAS, input=[[5, 6], [7, 8, 9]])
    assert arrays.usage.prompt_tokens == 5 and len(arrays.data) == 2
    same = client.embeddings.create(
        model=EMBED_ALIAS, input="The cat sat on the mat.", dimensions=576
    )
    assert np.allclose(np.asarray(same.data[0].embedding), v64, atol=1e-5)

    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model=EMBED_ALIAS, input="x", dimensions=64)
    assert refused.value.param == "dimensions"

    url = f"{embed.url}/v1/embeddings"
    cases: list[tuple[object, str | None]] = [
        ({"model": EMBED_ALIAS, "input": ""}, "input"),
        ({"model": EMBED_ALIAS, "input": []}, "input"),
        ({"model": EMBED_ALIAS, "input": [[]]}, "input"),
        ({"model": EMBED_ALIAS, "input": [1, "a"]}, "input"),
        ({"model": EMBED_ALIAS, "input": [1, 2, 10**9]}, "input"),
        ({"model": EMBED_ALIAS, "input": "word " * 2000}, "input"),
        ({"model": EMBED_ALIAS, "input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"model": EMBED_ALIAS, "input": "x", "truncate": True}, "truncate"),
        ({"input": "x"}, "model"),
        ([1, 2], None),
    ]
    for body, param in cases:
        error = _error(httpx.post(url, json=body))
        assert error["param"] == param, (body, error)
    # The priority class as on chat: a value that names none is refused, naming the header.
    for value in ("urgent", "batch,interactive"):
        refused = httpx.post(url, json={"model": EMBED_ALIAS, "input": "x"},
                             headers={PRIORITY_HEADER: value})  # fmt: skip
        error = _error(refused)
        assert error["param"] == PRIORITY_HEADER and repr(value) in str(error["message"])
        assert error["code"] == "invalid_value", error
    as_batch = httpx.post(url, json={"model": EMBED_ALIAS, "input": "x"},
                          headers={PRIORITY_HEADER: "BATCH"})  # fmt: skip
    assert as_batch.status_code == 200 and len(as_batch.json()["data"]) == 1, as_batch.text
    # A lone surrogate is valid JSON but no text.
    surrogate = b'{"model": "smol-embed", "input": "a\\ud800b"}'
    error = _error(httpx.post(url, content=surrogate, headers={"Content-Type": "application/json"}))
    assert error["param"] == "input" and "surrogate" in str(error["message"])

    # Chat to the embedding worker, embeddings from the chat worker: 400s that say why.
    chat_answer = httpx.post(
        f"{embed.url}/v1/chat/completions",
        json={"model": EMBED_ALIAS, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert chat_answer.status_code == 400 and "embeddings only" in chat_answer.text
    error = _error(httpx.post(f"{chat.url}/v1/embeddings", json={"model": "smol", "input": "x"}))
    assert error["param"] == "model" and "not embeddings" in str(error["message"])
    # And it still serves after all that.
    assert client.embeddings.create(model=EMBED_ALIAS, input="still here").data


def test_embeddings_and_model_metadata_through_the_gateway(
    pair: tuple[WorkerProcess, WorkerProcess],
    gateway_url: str,  # noqa: F811
    database: Database,
) -> None:
    wait_for(lambda: httpx.get(f"{gateway_url}/health").json()["live_workers"] == 2, 30)
    client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key="none", max_retries=0)

    answer = client.embeddings.create(model=EMBED_ALIAS, input=["one", "two", "three"])
    assert len(answer.data) == 3 and len(answer.data[0].embedding) == 576
    direct = openai.OpenAI(base_url=f"{pair[0].url}/v1", api_key="none", max_retries=0)
    expected = direct.embeddings.create(model=EMBED_ALIAS, input=["one", "two", "three"])
    assert answer.usage.prompt_tokens == expected.usage.prompt_tokens
    assert np.allclose(answer.data[1].embedding, expected.data[1].embedding, atol=1e-5)

    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model=EMBED_ALIAS, input="x", dimensions=3)
    assert refused.value.param == "dimensions"
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model=CHAT_ALIAS, input="x")
    assert refused.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-alias", input="x")
    error = _error(httpx.post(f"{gateway_url}/v1/embeddings", json={"model": EMBED_ALIAS}))
    assert error["param"] == "input"

    def logged() -> list[dict[str, object]]:
        with database.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT endpoint, alias, status, http_status, prompt_tokens, worker_id "
                    "FROM requests WHERE endpoint = 'embeddings' ORDER BY created_at"
                )
            ).mappings()
            return [dict(r) for r in rows]

    wait_for(lambda: len(logged()) >= 4, 15)
    rows = logged()
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok[0]["alias"] == EMBED_ALIAS
    assert ok[0]["prompt_tokens"] == expected.usage.prompt_tokens
    assert ok[0]["worker_id"] == pair[0].row()["id"]  # type: ignore[index]
    assert {r["http_status"] for r in rows} >= {200, 400, 404}

    # Model metadata.
    meta = client.models.retrieve(EMBED_ALIAS).model_dump()
    assert meta["id"] == EMBED_ALIAS
    assert meta["capabilities"] == {
        "chat": False, "completions": False, "embeddings": True, "tools": False,
    }  # fmt: skip
    assert meta["architecture"] == "llama" and meta["quantization"]
    assert meta["context_length"] == N_CTX and meta["context_length_trained"] == 8192
    assert meta["pooling"] == "model" and meta["live_workers"] == 1
    chat_meta = httpx.get(f"{gateway_url}/v1/models/{CHAT_ALIAS}").json()
    assert chat_meta["capabilities"]["chat"] is True
    assert chat_meta["capabilities"]["embeddings"] is False
    missing = httpx.get(f"{gateway_url}/v1/models/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"
