"""The gateway's OpenAPI document describes the completion bodies the routes read
themselves (clients and the fuzz test generate requests from it)."""

from __future__ import annotations

from app.config import Settings
from app.gateway.app import create_app


def test_completion_bodies_are_described_and_their_references_resolve(
    settings: Settings,
) -> None:
    document = create_app(settings).openapi()
    schemas = document["components"]["schemas"]
    for path, field in (("/v1/chat/completions", "messages"), ("/v1/completions", "prompt")):
        operation = document["paths"][path]["post"]
        body = operation["requestBody"]
        assert body["required"] is True
        ref = body["content"]["application/json"]["schema"]["$ref"]
        schema = schemas[ref.rsplit("/", 1)[1]]
        assert {"model", field} <= set(schema["required"])
        assert schema["properties"]["temperature"]["anyOf"][0]["maximum"] == 2
        error = operation["responses"]["400"]["content"]["application/json"]["schema"]["$ref"]
        assert error.rsplit("/", 1)[1] in schemas
    # The message schema the chat body refers to is there too.
    assert "ChatMessage" in schemas
    assert "param" in schemas["ErrorDetail"]["properties"]
    assert {"X-Session-Id"} == {
        p["name"] for p in document["paths"]["/v1/chat/completions"]["post"]["parameters"]
    }
