"""OpenAI request bodies (app/openai_api/schemas.py) turned into engine requests."""

from __future__ import annotations

import json

from app.engine.requests import ChatMessage, GenerationRequest, OutputConstraint, SamplingParams
from app.openai_api.errors import bad_param
from app.openai_api.schemas import (
    ChatCompletionRequest,
    CompletionParams,
    CompletionRequest,
)
from app.openai_api.schemas import (
    ChatMessage as MessageIn,
)


def flat_message(message: MessageIn) -> ChatMessage:
    """The message with its content as plain text (the schema admits text parts only)."""
    content = message.content
    text = (
        content or ""
        if content is None or isinstance(content, str)
        else "".join(part.text for part in content)
    )
    calls = None
    if message.tool_calls:
        calls = json.dumps([c.model_dump() for c in message.tool_calls])
    return ChatMessage(message.role, text, calls, message.tool_call_id, message.name)


def tool_mode(body: ChatCompletionRequest) -> str | None:
    """None (no tools in play), "auto", "required", or the name of the forced function."""
    choice = body.tool_choice
    if not body.tools:
        if choice not in (None, "none", "auto"):
            raise bad_param("tool_choice", "names a tool choice but no tools were given")
        return None
    if choice == "none":
        return None
    if choice is None or choice == "auto":
        return "auto"
    if choice == "required":
        return "required"
    assert not isinstance(choice, str)
    names = [t.function.name for t in body.tools]
    if choice.function.name not in names:
        raise bad_param(
            "tool_choice.function.name",
            f"{choice.function.name!r} is not one of the tools ({', '.join(names)})",
        )
    return choice.function.name


def tool_constraint(body: ChatCompletionRequest, mode: str) -> OutputConstraint | None:
    """The grammar forcing a call, for tool_choice required or a named function."""
    if mode == "auto":
        return None
    assert body.tools is not None
    functions = [
        {"name": t.function.name, "parameters": t.function.parameters}
        for t in body.tools
        if mode == "required" or t.function.name == mode
    ]
    parallel = body.parallel_tool_calls is not False and mode == "required"
    source = json.dumps({"tools": functions, "parallel": parallel})
    return OutputConstraint("tool_call", source, "tools")


def sampling(
    body: CompletionParams, max_tokens: int | None, logprobs: int | None = None
) -> SamplingParams:
    defaults = SamplingParams()
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    return SamplingParams(
        temperature=defaults.temperature if body.temperature is None else body.temperature,
        top_p=defaults.top_p if body.top_p is None else body.top_p,
        top_k=defaults.top_k if body.top_k is None else body.top_k,
        min_p=defaults.min_p if body.min_p is None else body.min_p,
        repeat_penalty=defaults.repeat_penalty
        if body.repeat_penalty is None
        else body.repeat_penalty,
        max_tokens=max_tokens,
        stop=stop,
        seed=body.seed,
        ignore_eos=bool(body.ignore_eos),
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        logit_bias=tuple((int(token), bias) for token, bias in (body.logit_bias or {}).items()),
        logprobs=logprobs,
        draft=body.speculative is not False,
    )


def constraint(body: CompletionParams) -> OutputConstraint | None:
    """The grammar the output must follow, from response_format or grammar (not both)."""
    fmt = body.response_format
    wanted = fmt is not None and fmt.type != "text"
    if wanted and body.grammar is not None:
        raise bad_param("grammar", "give either grammar or a JSON response_format, not both")
    if body.grammar is not None:
        return OutputConstraint("grammar", body.grammar, "grammar")
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        if fmt.schema_ is not None:
            return OutputConstraint(
                "json_schema", json.dumps(fmt.schema_), "response_format.schema"
            )
        return OutputConstraint("json_object", "{}", "response_format")
    if fmt.json_schema is None:
        raise bad_param(
            "response_format.json_schema", "required when response_format.type is json_schema"
        )
    schema = fmt.json_schema.schema_
    if schema is None:
        # OpenAI requires a schema; without one the output is constrained to a JSON object.
        return OutputConstraint("json_object", "{}", "response_format.json_schema")
    return OutputConstraint("json_schema", json.dumps(schema), "response_format.json_schema.schema")


def chat_logprobs(body: ChatCompletionRequest) -> int | None:
    if body.top_logprobs is not None and not body.logprobs:
        raise bad_param("top_logprobs", "needs logprobs: true")
    return (body.top_logprobs or 0) if body.logprobs else None


def chat_request(body: ChatCompletionRequest) -> GenerationRequest:
    max_tokens = body.max_completion_tokens or body.max_tokens
    mode = tool_mode(body)
    output = constraint(body)
    if mode is not None and mode != "auto":
        if output is not None:
            raise bad_param(
                "tool_choice", "a forced tool call cannot be combined with grammar or a JSON format"
            )
        output = tool_constraint(body, mode)
    tools = None
    if mode is not None and body.tools:
        tools = json.dumps([t.model_dump(exclude_none=True) for t in body.tools])
    return GenerationRequest(
        messages=tuple(flat_message(m) for m in body.messages),
        sampling=sampling(body, max_tokens, chat_logprobs(body)),
        constraint=output,
        tools=tools,
    )


def text_request(body: CompletionRequest) -> GenerationRequest:
    prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
    return GenerationRequest(
        prompt=prompt,
        sampling=sampling(body, body.max_tokens, body.logprobs),
        constraint=constraint(body),
    )
