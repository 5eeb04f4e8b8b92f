"""POST /v1/feedback: end users' thumbs up or down on a response, stored once per user."""

from __future__ import annotations

import asyncio
import uuid

from fastapi import APIRouter, Request
from sqlalchemy.exc import SQLAlchemyError

from app.gateway.errors import database_error, database_unavailable
from app.gateway.feedback import UnknownResponseError
from app.gateway.request_context import ApiKeyId, runtime_of
from app.gateway.routes_openai import INVALID_BODY_OPENAPI
from app.gateway.schemas import FeedbackRequest, FeedbackResponse
from app.openai_api.errors import ApiError

# Response ids are request UUIDs; accept them with an OpenAI-style prefix too.
ID_PREFIXES = ("chatcmpl-", "cmpl-")


def _parse_response_id(text: str) -> uuid.UUID | None:
    for prefix in ID_PREFIXES:
        text = text.removeprefix(prefix)
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def feedback_router() -> APIRouter:
    router = APIRouter()

    @router.post(
        "/v1/feedback",
        tags=["feedback"],
        summary="Rate a response (+1 / -1); a second vote by the same user updates the first",
        response_model=FeedbackResponse,
        responses={
            **INVALID_BODY_OPENAPI,
            404: {"description": "Unknown response id"},
            503: {"description": "Retry"},
        },
    )
    async def feedback(
        request: Request, body: FeedbackRequest, api_key_id: ApiKeyId
    ) -> FeedbackResponse:
        runtime = runtime_of(request)
        request_id = _parse_response_id(body.response_id)
        if request_id is None:
            raise ApiError(404, f"no response with id {body.response_id!r}", code="not_found")
        await runtime.log.ensure_written(request_id)
        try:
            row = await asyncio.to_thread(
                runtime.feedback.upsert, request_id, body.rating, body.comment, body.user or ""
            )
        except UnknownResponseError:
            if runtime.log.undelivered_rows:
                # The response may be among the rows still on their way (the database was
                # just away): a retry will find it, a 404 would tell the client to give up.
                raise database_unavailable(runtime.settings.gateway_retry_after_s) from None
            raise ApiError(
                404, f"no response with id {body.response_id!r}", code="not_found"
            ) from None
        except SQLAlchemyError as exc:
            raise database_error(exc, runtime.settings.gateway_retry_after_s) from None
        return FeedbackResponse(
            id=row.id,
            response_id=str(row.request_id),
            rating=row.rating,
            comment=row.comment,
            user=row.user_id or None,
            created_at=row.created_at.isoformat(),
            updated_at=row.updated_at.isoformat(),
        )

    return router
