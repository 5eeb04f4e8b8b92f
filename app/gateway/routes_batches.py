"""OpenAI's files and batches API on the gateway: /v1/files and /v1/batches.

A file upload is streamed (multipart) to disk under HERD_HOME/files, refused past
HERD_BATCH_FILE_MAX_BYTES and checked line by line before it is kept. A batch belongs to
the API key that created it: other keys do not see it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterator
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from app.batches.files import FileError, FileStore
from app.batches.jsonl import ENDPOINTS, FileInvalid, read_lines
from app.batches.launch import ensure_runner
from app.batches.owner import Owner
from app.batches.records import BatchError
from app.batches.runner import files_root
from app.batches.store import BatchStore
from app.control.audit import Actor, Via
from app.gateway.errors import database_error
from app.gateway.request_context import authenticate, runtime_of
from app.gateway.schemas import BatchCreateRequest
from app.openai_api.bodies import body_openapi, read_model
from app.openai_api.errors import ApiError, bad_param

# Room for the multipart framing and the purpose field around the file itself.
MULTIPART_SLACK_BYTES = 64 * 1024
MAX_LIST = 100
# The upload's multipart body, described for clients and the fuzz test (read by hand below).
UPLOAD_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["purpose", "file"],
                    "properties": {
                        "purpose": {"type": "string", "enum": ["batch"]},
                        "file": {"type": "string", "format": "binary"},
                    },
                }
            }
        },
    }
}


def _api_error(exc: FileError | BatchError) -> ApiError:
    return ApiError(exc.status, str(exc), code=exc.code)


async def _owner(request: Request) -> Owner:
    return Owner(api_key_id=await authenticate(request))


def _actor(request: Request, owner: Owner, route: str) -> Actor:
    """Who changes a batch through the API, for the audit log: the key, the route, the
    client's address."""
    who = f"key:{owner.api_key_id}" if owner.api_key_id else "anonymous"
    source = request.client.host if request.client else None
    return Actor(who=who, via=Via.API, source=source, origin=route)


async def _thread(call: Any, *args: Any, **kwargs: Any) -> Any:
    """call on a worker thread; its FileError/BatchError as the API's answer."""
    try:
        return await asyncio.to_thread(call, *args, **kwargs)
    except (FileError, BatchError) as exc:
        raise _api_error(exc) from None
    except FileInvalid as exc:
        # A file uploaded before a check it now fails was added: refused, line named.
        raise bad_param("input_file_id", str(exc)) from None
    except SQLAlchemyError as exc:
        raise database_error(exc, 1) from None


def _own_url(request: Request) -> str:
    """Where the batch runner reaches this gateway: the address this connection came in on
    (a wildcard bind answers on loopback)."""
    host, port = request.scope.get("server") or ("127.0.0.1", 8000)
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


async def _limited(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit + MULTIPART_SLACK_BYTES:
            raise ApiError(
                413,
                f"the file is larger than the limit of {limit} bytes (HERD_BATCH_FILE_MAX_BYTES)",
                code="file_too_large",
            )
        yield chunk


def _stores(request: Request) -> tuple[FileStore, BatchStore]:
    runtime = runtime_of(request)
    return FileStore(runtime.engine, files_root(runtime.settings)), BatchStore(runtime.engine)


# Route handlers carry no docstring: FastAPI would publish it as the route's description.
async def upload(request: Request) -> JSONResponse:
    owner = await _owner(request)
    settings = runtime_of(request).settings
    if "multipart/form-data" not in request.headers.get("content-type", ""):
        raise ApiError(400, "upload the file as multipart/form-data (fields purpose, file)")
    parser = MultiPartParser(
        request.headers, _limited(request, settings.batch_file_max_bytes),
        max_files=1, max_fields=8,
    )  # fmt: skip
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ApiError(400, f"unreadable multipart body: {exc.message}") from None
    try:
        upload = form.get("file")
        purpose = form.get("purpose")
        if not isinstance(upload, UploadFile):
            raise bad_param("file", "the multipart body has no `file` part")
        if not isinstance(purpose, str):
            raise bad_param("purpose", "the multipart body has no `purpose` field")
        files, _ = _stores(request)
        view = await _thread(
            files.save_upload, upload.file, filename=upload.filename or "batch.jsonl",
            purpose=purpose, owner=owner, max_bytes=settings.batch_file_max_bytes,
        )  # fmt: skip
    finally:
        await form.close()
    return JSONResponse(view.openai())


async def list_files(
    request: Request,
    purpose: str | None = None,
    limit: int = Query(default=MAX_LIST, ge=1, le=10_000),
) -> JSONResponse:
    owner = await _owner(request)
    files, _ = _stores(request)
    views = await _thread(files.recent, owner, purpose, limit)
    return JSONResponse({"object": "list", "data": [v.openai() for v in views], "has_more": False})


async def get_file(request: Request, file_id: str) -> JSONResponse:
    owner = await _owner(request)
    files, _ = _stores(request)
    view = await _thread(files.get, file_id, owner)
    return JSONResponse(view.openai())


async def file_content(request: Request, file_id: str) -> StreamingResponse:
    owner = await _owner(request)
    files, batches = _stores(request)
    view = await _thread(files.get, file_id, owner)
    body: Iterator[bytes]
    if view.batch_id is not None:
        body = iter(await _thread(batches.rendered, view.batch_id, view.purpose))
    else:
        if not files.path_of(file_id).exists():
            raise ApiError(404, f"the bytes of file {file_id!r} are not on this gateway's "
                           "disk (HERD_HOME/files)", code="file_not_found")  # fmt: skip
        body = files.chunks(file_id)
    return StreamingResponse(body, media_type="application/jsonl")


async def delete_file(request: Request, file_id: str) -> JSONResponse:
    owner = await _owner(request)
    files, _ = _stores(request)
    await _thread(files.delete, file_id, owner)
    return JSONResponse({"id": file_id, "object": "file", "deleted": True})


async def create_batch(request: Request) -> JSONResponse:
    owner = await _owner(request)
    # Unknown fields, wrong types and text PostgreSQL cannot store: 400 naming the field.
    body = await read_model(request, BatchCreateRequest)
    endpoint, file_id, metadata = body.endpoint, body.input_file_id, body.metadata
    if endpoint not in ENDPOINTS:
        raise bad_param("endpoint", f"endpoint must be one of {', '.join(ENDPOINTS)}")
    runtime = runtime_of(request)
    files, batches = _stores(request)
    view = await _thread(files.get, file_id, owner)
    if view.purpose != "batch":
        raise bad_param("input_file_id", f"file {file_id} has purpose {view.purpose!r}, "
                        "not 'batch'")  # fmt: skip
    path = files.path_of(file_id)
    if not path.exists():
        raise bad_param("input_file_id", f"the bytes of file {file_id} are not on this "
                        "gateway's disk (HERD_HOME/files)")  # fmt: skip
    actor = _actor(request, owner, "POST /v1/batches")
    batch = await _thread(
        lambda: batches.create(
            endpoint=endpoint, input_file_id=file_id,
            completion_window=body.completion_window,
            lines=read_lines(path), owner=owner, created_by=actor.who,
            gateway_url=_own_url(request), metadata=metadata, actor=actor,
        )
    )  # fmt: skip
    await _thread(ensure_runner, runtime.engine, runtime.settings, batch.id, None, 0)
    return JSONResponse((await _thread(batches.get, batch.id)).openai())


async def get_batch(request: Request, batch_id: str) -> JSONResponse:
    owner = await _owner(request)
    _, batches = _stores(request)
    return JSONResponse((await _thread(batches.get, batch_id, owner)).openai())


async def list_batches(
    request: Request,
    after: str | None = None,
    limit: int = Query(default=20, ge=1, le=MAX_LIST),
) -> JSONResponse:
    owner = await _owner(request)
    _, batches = _stores(request)
    views, more = await _thread(batches.page, owner, after=after, limit=limit)
    data = [v.openai() for v in views]
    return JSONResponse({
        "object": "list", "data": data, "has_more": more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    })  # fmt: skip


async def cancel_batch(request: Request, batch_id: str) -> JSONResponse:
    owner = await _owner(request)
    _, batches = _stores(request)
    actor = _actor(request, owner, "POST /v1/batches/{batch_id}/cancel")
    view = await _thread(batches.request_cancel, batch_id, owner, actor)
    return JSONResponse(view.openai())


def batches_router() -> APIRouter:
    """/v1/files and /v1/batches, in OpenAI's shapes."""
    router = APIRouter(tags=["batches"])
    route = router.add_api_route
    route(
        "/v1/files",
        upload,
        methods=["POST"],
        openapi_extra=UPLOAD_OPENAPI,
        summary="Upload a JSONL file of requests (purpose `batch`)",
    )
    route("/v1/files", list_files, summary="Files, newest first")
    route("/v1/files/{file_id}", get_file, summary="A file's metadata")
    route("/v1/files/{file_id}/content", file_content, summary="A file's bytes (JSONL)")
    route("/v1/files/{file_id}", delete_file, methods=["DELETE"], summary="Delete a file")
    route(
        "/v1/batches",
        create_batch,
        methods=["POST"],
        openapi_extra=body_openapi(BatchCreateRequest),
        summary="Run the requests of an uploaded file as a batch",
    )
    route("/v1/batches/{batch_id}", get_batch, summary="A batch: status and request counts")
    route("/v1/batches", list_batches, summary="Batches, newest first")
    route("/v1/batches/{batch_id}/cancel", cancel_batch, methods=["POST"], summary="Cancel a batch")
    return router
