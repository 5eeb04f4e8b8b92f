"""OpenAI request bodies read and validated in the route itself (gateway and worker).

FastAPI's body parameter machinery (dependency solving, field embedding checks, query
parsing) cost more per call than the validation it wraps; the completion routes read the
body here instead, with the same outcomes: a RequestValidationError for bad JSON and bad
fields (400 naming the param, from the one error handler), 400 for a body that cannot be
decoded. OpenAPI still describes the bodies
(body_openapi, openapi_components).
"""

from __future__ import annotations

import email.message
import json
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException

REF_TEMPLATE = "#/components/schemas/{model}"
Model = TypeVar("Model", bound=BaseModel)


def _is_json(content_type: str | None) -> bool:
    # As FastAPI decides it: application/json or application/*+json, parameters allowed.
    # Without a Content-Type FastAPI (strict by default) does not parse the body either.
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


async def read_model(
    request: Request, schema: type[Model], defaults: dict[str, Any] | None = None
) -> Model:
    """The request's JSON body validated against schema; defaults fill fields it lacks."""
    raw = await request.body()
    if not raw:
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
        )
    value: Any = raw
    if _is_json(request.headers.get("content-type")):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise RequestValidationError(
                [
                    {
                        "type": "json_invalid",
                        "loc": ("body", exc.pos),
                        "msg": "JSON decode error",
                        "input": {},
                        "ctx": {"error": exc.msg},
                    }
                ]
            ) from exc
        except Exception as exc:
            # As FastAPI: a 400 for anything else (not UTF-8, nested too deep); the error
            # handler names the reason when it is the encoding.
            raise HTTPException(400, "There was an error parsing the body") from exc
    if defaults and isinstance(value, dict):
        value = {**defaults, **value}
    try:
        return schema.model_validate(value)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        ) from None


async def read_body(request: Request, schema: type[BaseModel]) -> dict[str, Any]:
    """The request's JSON body validated against schema, as the fields the client set."""
    model = await read_model(request, schema)
    return model.model_dump(exclude_unset=True, by_alias=True)


def body_openapi(schema: type[BaseModel]) -> dict[str, Any]:
    """The requestBody entry of a route that reads schema with read_body."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": REF_TEMPLATE.format(model=schema.__name__)}}
            },
        }
    }


def openapi_components(*schemas: type[BaseModel]) -> dict[str, Any]:
    """JSON schemas of the models (and the models they use) for components/schemas."""
    _, top = models_json_schema(
        [(schema, "validation") for schema in schemas], ref_template=REF_TEMPLATE
    )
    defs: dict[str, Any] = top.get("$defs", {})
    return defs
