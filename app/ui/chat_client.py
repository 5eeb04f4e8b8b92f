"""The Chat page's HTTP client for the gateway: models, streamed chat, feedback.

It talks to the gateway like any API client would (no SQL, no Streamlit), and turns every
failure into a ChatError whose message an end user can act on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from app.config import Settings


class ChatError(Exception):
    """A call to the gateway failed; str() is a message for the end user."""


class GatewayUnreachable(ChatError):
    """The gateway did not accept the connection or did not answer in time."""


@dataclass(frozen=True)
class ChatModel:
    """An alias the gateway serves."""

    alias: str
    versions: tuple[str, ...]
    live_workers: int


def _gateway_message(response: httpx.Response) -> str:
    """The gateway's own error message (OpenAI-shaped body), or the status line."""
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase or f"HTTP {response.status_code}"
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    return response.reason_phrase or f"HTTP {response.status_code}"


def error_for(response: httpx.Response) -> ChatError:
    """What an end user is told for an error answer from the gateway."""
    status = response.status_code
    message = _gateway_message(response)
    retry = response.headers.get("retry-after")
    later = f"please try again in {retry} s" if retry else "please try again shortly"
    if status == 401:
        return ChatError(
            "The chat service refused this page's API key. An operator needs to set "
            f"HERD_CHAT_API_KEY for the dashboard to a valid key ({message})."
        )
    if status == 429:
        return ChatError(f"The model is busy right now; {later}. ({message})")
    if status == 503:
        return ChatError(f"The model is not available right now; {later}. ({message})")
    if status == 404:
        return ChatError(f"That model is not served any more; pick another one. ({message})")
    return ChatError(f"The chat service answered with an error (HTTP {status}): {message}")


class ChatStream:
    """One streamed answer: iterate text pieces; afterwards response_id is known."""

    def __init__(self, client: httpx.Client, body: dict[str, Any], headers: dict[str, str]):
        self._client = client
        self._body = body
        self._headers = headers
        self.response_id: str | None = None
        self.model: str | None = None
        self.text = ""

    def __iter__(self) -> Iterator[str]:
        try:
            with self._client.stream(
                "POST", "/v1/chat/completions", json=self._body, headers=self._headers
            ) as response:
                if response.status_code != 200:
                    response.read()
                    raise error_for(response)
                for line in response.iter_lines():
                    piece = self._event(line)
                    if piece:
                        self.text += piece
                        yield piece
        except httpx.TimeoutException:
            raise GatewayUnreachable(
                "The model stopped answering (timed out). Please try again."
            ) from None
        except httpx.TransportError as exc:
            raise GatewayUnreachable(
                f"The connection to the chat service broke off ({type(exc).__name__}). "
                "Please try again."
            ) from None

    def _event(self, line: str) -> str:
        if not line.startswith("data:"):
            return ""
        data = line[5:].strip()
        if not data or data == "[DONE]":
            return ""
        try:
            event = json.loads(data)
        except ValueError:
            raise ChatError("The chat service sent an unreadable answer; try again.") from None
        if not isinstance(event, dict):
            return ""
        error = event.get("error")
        if isinstance(error, dict):
            # After the first token the gateway reports failures as an SSE error event.
            raise ChatError(f"The answer broke off: {error.get('message') or 'unknown error'}")
        self.response_id = event.get("id") or self.response_id
        self.model = event.get("model") or self.model
        pieces = [
            (choice.get("delta") or {}).get("content") or ""
            for choice in event.get("choices") or ()
        ]
        return "".join(pieces)


def client_options(settings: Settings) -> tuple[str, str | None, float]:
    """ChatClient's arguments from settings: base URL, API key, read timeout."""
    key = settings.chat_api_key.get_secret_value() if settings.chat_api_key else None
    # A little beyond the gateway's own first-token limit, so its error arrives first.
    return settings.gateway_base_url, key, settings.gateway_first_token_timeout_s + 5


class ChatClient:
    """Calls one gateway over pooled HTTP connections."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 300.0) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # Connecting is quick or the gateway is down; reading waits for the first token.
        timeout = httpx.Timeout(timeout_s, connect=3.0, pool=10.0)
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError:
            raise GatewayUnreachable(
                f"The chat service is not reachable (nothing answers at {self.base_url}). "
                "It may be starting or stopped; please try again in a moment."
            ) from None
        except httpx.TimeoutException:
            raise GatewayUnreachable(
                "The chat service did not answer in time; please try again."
            ) from None
        except httpx.TransportError as exc:
            raise GatewayUnreachable(
                f"The chat service could not be reached ({type(exc).__name__}); please try again."
            ) from None
        if response.status_code >= 400:
            raise error_for(response)
        return response

    def models(self) -> list[ChatModel]:
        """The aliases served now, with at least one deployment behind them."""
        data = self._call("GET", "/v1/models", timeout=10.0).json().get("data") or []
        return [
            ChatModel(
                alias=str(m["id"]),
                versions=tuple(m.get("versions") or ()),
                live_workers=int(m.get("live_workers") or 0),
            )
            for m in data
        ]

    def chat(
        self, alias: str, messages: list[dict[str, str]], *, user: str, session_id: str
    ) -> ChatStream:
        """A streamed chat completion; nothing is sent until the stream is iterated."""
        body = {"model": alias, "messages": messages, "stream": True, "user": user}
        return ChatStream(self._http, body, {"X-Session-Id": session_id})

    def feedback(
        self, response_id: str, rating: int, *, user: str, comment: str | None = None
    ) -> None:
        """Store a thumbs up (1) or down (-1) through POST /v1/feedback; a second call updates."""
        body: dict[str, Any] = {"response_id": response_id, "rating": rating, "user": user}
        if comment:
            body["comment"] = comment
        self._call("POST", "/v1/feedback", json=body, timeout=15.0)
