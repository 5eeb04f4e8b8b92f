"""Request bodies of /v1/chat/completions and /v1/completions, for gateway and worker alike.

Every field OpenAI defines is listed: honoured, or refused with 400 naming it when the value
asks for what Herd cannot do (`refuse_unless`). Unknown fields are refused too, as OpenAI
does: a client must never believe a setting took effect when it did not. llama-server's
extensions Herd honours (top_k, min_p, repeat_penalty, ignore_eos, grammar) are listed too.
Every string is checked for text PostgreSQL and UTF-8 cannot hold (text.py).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from app.openai_api.text import JsonObject, Text

# llama.cpp counts tokens in C ints: a larger max_tokens can only be a mistake.
INT32_MAX = 2**31 - 1
# OpenAI's limits.
MAX_STOP_STRINGS = 4
MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS = 300


def refuse_unless(*allowed: object, why: str) -> AfterValidator:
    """A field accepted only at values that need nothing Herd lacks (its no-op values)."""

    def check(value: object) -> object:
        if value is not None and value not in allowed:
            raise ValueError(why)
        return value

    return AfterValidator(check)


# Longest alias or end-user id a client may send (aliases themselves are at most 128).
MAX_CLIENT_NAME = 256


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(Strict):
    """A content part; only text is understood (no images, audio or files)."""

    type: Literal["text"] = Field(description="Only 'text': this server runs text-only models.")
    text: Text


class FunctionCall(Strict):
    name: Text
    arguments: Text


class ToolCall(Strict):
    id: Text
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[TextPart] | None = None
    name: Text | None = None
    # An assistant turn that called tools, and a tool's answer to one call.
    tool_calls: list[ToolCall] | None = None
    tool_call_id: Text | None = None
    refusal: Text | None = None


class StreamOptions(Strict):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class JsonSchemaFormat(Strict):
    name: Text = Field(min_length=1, max_length=64)
    description: Text | None = None
    schema_: JsonObject | None = Field(default=None, alias="schema")
    strict: bool | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ResponseFormat(Strict):
    """text; json_object (any JSON object, or one matching `schema`, llama-server's
    extension); json_schema (output constrained to json_schema.schema by a grammar)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None
    schema_: JsonObject | None = Field(default=None, alias="schema")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class FunctionDefinition(Strict):
    name: Text = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: Text | None = None
    parameters: JsonObject | None = None
    strict: bool | None = None


class Tool(Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(Strict):
    name: Text


class NamedToolChoice(Strict):
    type: Literal["function"]
    function: NamedFunction


class CompletionParams(Strict):
    """What chat and text completions share; names and ranges as in the OpenAI API."""

    # Client strings are bounded: they reach logs, rows and (as "unknown") metric labels.
    model: Text = Field(
        min_length=1, max_length=MAX_CLIENT_NAME, description="An alias from GET /v1/models."
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    stop: Text | list[Text] | None = Field(
        default=None, description=f"Up to {MAX_STOP_STRINGS} strings that end the completion."
    )
    n: int | None = Field(
        default=None,
        ge=1,
        le=128,
        description="Choices to generate, in parallel (at most the worker's slots).",
    )
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = Field(
        default=None, description="Token id (as a string) -> bias added to its logit."
    )
    user: Text | None = Field(
        default=None,
        max_length=MAX_CLIENT_NAME,
        description="End-user id; also the session for worker affinity.",
    )
    response_format: ResponseFormat | None = None
    # Accepted, as OpenAI: Herd logs every request anyway; metadata is not used.
    store: bool | None = None
    metadata: dict[str, Annotated[Text, Field(max_length=512)]] | None = None
    service_tier: Literal["auto", "default"] | None = None
    # llama-server's extensions.
    top_k: int | None = Field(default=None, ge=0, le=INT32_MAX, description="0: all tokens.")
    min_p: float | None = Field(default=None, ge=0, le=1)
    repeat_penalty: float | None = Field(default=None, gt=0, le=10)
    ignore_eos: bool | None = Field(default=None, description="Keep going past end of text.")
    grammar: Text | None = Field(
        default=None, description="A GBNF grammar the output must match (llama.cpp's syntax)."
    )
    # Herd's extension: prompt-lookup drafts change the speed only, never the output.
    speculative: bool | None = Field(
        default=None,
        description="false: decode without prompt-lookup drafts (on by default where the "
        "worker allows them; the output is the same either way).",
    )

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is None:
            return value
        if len(value) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} tokens")
        for key in value:
            if not key.isascii() or not key.isdigit() or int(key) > INT32_MAX:
                raise ValueError(f"keys are token ids (non-negative integers); got {key!r}")
        return value


class ChatCompletionRequest(CompletionParams):
    messages: list[ChatMessage] = Field(min_length=1)
    # The newer OpenAI name for max_tokens; wins when both are given.
    max_completion_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    logprobs: bool | None = Field(default=None, description="Log probability of each output token.")
    top_logprobs: int | None = Field(
        default=None,
        ge=0,
        le=MAX_TOP_LOGPROBS,
        description="The likeliest alternatives per token (needs logprobs: true).",
    )
    tools: list[Tool] | None = Field(
        default=None, max_length=128, description="Functions the model may call."
    )
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        default=None,
        description="auto (default with tools), none, required or a named function; "
        "required and named calls are forced by a grammar, so they always parse.",
    )
    parallel_tool_calls: bool | None = Field(
        default=None, description="Allow several calls in one answer (default true)."
    )
    functions: Annotated[
        list[JsonObject] | None, refuse_unless([], why="deprecated: use tools")
    ] = None
    function_call: Annotated[
        Text | JsonObject | None, refuse_unless("none", "auto", why="deprecated: use tool_choice")
    ] = None
    modalities: Annotated[
        list[Text] | None, refuse_unless(["text"], why="only text output is supported")
    ] = None
    audio: Annotated[JsonObject | None, refuse_unless(why="audio output is not supported")] = None
    prediction: Annotated[
        JsonObject | None, refuse_unless(why="predicted outputs are not supported")
    ] = None
    reasoning_effort: Annotated[
        Text | None, refuse_unless(why="reasoning effort is not adjustable on these models")
    ] = None
    verbosity: Annotated[Text | None, refuse_unless(why="verbosity is not adjustable")] = None
    web_search_options: Annotated[
        JsonObject | None, refuse_unless(why="web search is not available")
    ] = None
    prompt_cache_key: Text | None = Field(
        default=None, description="Accepted; Herd reuses cached prompt prefixes by itself."
    )
    safety_identifier: Text | None = None


class CompletionRequest(CompletionParams):
    prompt: Text | Annotated[list[Text], Field(min_length=1, max_length=1)] = Field(
        description="One prompt (or a list holding exactly one)."
    )
    logprobs: int | None = Field(
        default=None, ge=0, le=5, description="Token log probabilities with this many alternatives."
    )
    echo: Annotated[bool | None, refuse_unless(False, why="echo is not supported")] = None
    best_of: Annotated[
        int | None, Field(ge=1, le=20), refuse_unless(1, why="only best_of=1 is supported")
    ] = None
    suffix: Annotated[Text | None, refuse_unless(why="suffix (insertion) is not supported")] = None
